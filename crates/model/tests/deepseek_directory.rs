//! Loading DeepSeek Hugging Face directories (`deepseek_v3`, `deepseek_v2`): their config.json
//! (latent attention, routing, shared experts, dense first layers, YaRN with mscale) and their
//! rotary rows, stored interleaved unless `rope_interleave` is false. Each directory is written
//! from a tiny DeepSeek preset's weights, its rotary rows interleaved where the config says so,
//! so the loaded model must give the preset's logits exactly; settings lumen does not run are
//! refused by name.

mod common;

use common::{one_pass, write_safetensors, StoredTensor};
use lumen_model::plan::{Entry, ModelPlan};
use lumen_model::presets::{preset_config, random_tensor};
use lumen_model::{load_model, Model, ModelConfig};
use serde_json::{json, Value};
use std::path::PathBuf;

/// The preset's tensors under their checkpoint names: `(name, shape, values)`.
fn preset_tensors(preset: &str) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut tensors = Vec::new();
    ModelPlan::for_config(&preset_config(preset).unwrap()).visit(&mut |_, entry| {
        let spec = match entry {
            Entry::Matrix(s) | Entry::Vector(s) => s,
        };
        for part in &spec.parts {
            tensors.push((part.name.clone(), part.shape.clone(), random_tensor(0, &part.name, &part.shape)));
        }
    });
    tensors
}

/// The checkpoint's order of a block of rows whose last `rope` rows lumen rotates by halves:
/// row `2i` of the checkpoint is lumen's row `i`, row `2i + 1` lumen's `rope/2 + i`.
fn interleave(values: &[f32], block: usize, rope: usize, cols: usize) -> Vec<f32> {
    let mut out = values.to_vec();
    for (o, v) in out.chunks_mut(block * cols).zip(values.chunks(block * cols)) {
        let first = block - rope;
        for i in 0..rope / 2 {
            for (to, from) in [(2 * i, i), (2 * i + 1, rope / 2 + i)] {
                o[(first + to) * cols..(first + to + 1) * cols].copy_from_slice(&v[(first + from) * cols..(first + from + 1) * cols]);
            }
        }
    }
    out
}

/// config.json of the tiny DeepSeek presets: tiny-deepseek-v3 under `deepseek_v3`,
/// tiny-deepseek-v2-lite under `deepseek_v2`.
fn config_json(preset: &str) -> Value {
    let c = preset_config(preset).unwrap();
    let (m, moe) = (c.mla.clone().unwrap(), c.moe.clone().unwrap());
    let yarn = c.yarn.clone().unwrap();
    let v3 = preset == "tiny-deepseek-v3";
    let mut config = json!({
        "model_type": if v3 { "deepseek_v3" } else { "deepseek_v2" },
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "moe_intermediate_size": moe.expert_intermediate_size, "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_heads, "n_routed_experts": moe.num_experts,
        "n_shared_experts": moe.shared_expert_intermediate_size.unwrap() / moe.expert_intermediate_size,
        "num_experts_per_tok": moe.top_k, "first_k_dense_replace": moe.first_dense_layers, "moe_layer_freq": 1,
        "q_lora_rank": m.q_lora_rank, "kv_lora_rank": m.kv_lora_rank, "qk_nope_head_dim": m.qk_nope_head_dim,
        "qk_rope_head_dim": m.qk_rope_head_dim, "v_head_dim": m.v_head_dim, "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope_theta, "max_position_embeddings": c.max_position_embeddings, "tie_word_embeddings": false,
        "attention_bias": false,
        "rope_scaling": {"type": "yarn", "factor": yarn.factor, "original_max_position_embeddings": yarn.original_max_position_embeddings,
                         "beta_fast": 32, "beta_slow": 1, "mscale": if v3 { 1.0 } else { 0.707 },
                         "mscale_all_dim": yarn.mscale_all_dim.unwrap()}
    });
    if v3 {
        config["n_group"] = json!(moe.groups.n_group);
        config["topk_group"] = json!(moe.groups.topk_group);
        config["routed_scaling_factor"] = json!(moe.routed_scaling_factor);
        config["norm_topk_prob"] = json!(true);
        config["topk_method"] = json!("noaux_tc");
        config["scoring_func"] = json!("sigmoid");
    } else {
        config["topk_method"] = json!("greedy");
        config["scoring_func"] = json!("softmax");
        config["norm_topk_prob"] = json!(false);
        config["routed_scaling_factor"] = json!(1.0);
    }
    config
}

/// Writes `preset` as a directory under `config`, its rotary rows interleaved when `interleaved`.
fn write_dir(preset: &str, tag: &str, config: &Value, interleaved: bool) -> PathBuf {
    let c = preset_config(preset).unwrap();
    let m = c.mla.clone().unwrap();
    let tensors: Vec<_> = preset_tensors(preset)
        .into_iter()
        .map(|(name, shape, values)| {
            let block = if name.ends_with("q_proj.weight") || name.ends_with("q_b_proj.weight") {
                Some(m.qk_head_dim())
            } else if name.ends_with("kv_a_proj_with_mqa.weight") {
                Some(m.latent_width())
            } else {
                None
            };
            let values = match block.filter(|_| interleaved) {
                Some(block) => interleave(&values, block, m.qk_rope_head_dim, shape[1]),
                None => values,
            };
            (name, shape, values)
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("lumen-{preset}-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let stored: Vec<StoredTensor> = tensors.into_iter().map(|(name, shape, values)| StoredTensor::f32(name, shape, &values)).collect();
    write_safetensors(&dir.join("model.safetensors"), &stored);
    dir
}

/// Every row's logits of `tokens` in one pass.
fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    one_pass(model, tokens, &(0..tokens.len()).collect::<Vec<_>>()).logits
}

fn prompt() -> Vec<u32> {
    (0..24u32).map(|i| (i * 53 + 7) % 512).collect()
}

#[test]
fn deepseek_directories_load_to_the_presets_logits_exactly() {
    for (preset, interleave_key) in
        [("tiny-deepseek-v3", Some(true)), ("tiny-deepseek-v3", Some(false)), ("tiny-deepseek-v3", None), ("tiny-deepseek-v2-lite", None)]
    {
        let mut config = config_json(preset);
        if let Some(flag) = interleave_key {
            config["rope_interleave"] = json!(flag);
        }
        let dir = write_dir(preset, &format!("{interleave_key:?}"), &config, interleave_key != Some(false));
        let loaded = load_model(dir.to_str().unwrap()).unwrap();
        let want = preset_config(preset).unwrap();
        let got = loaded.config();
        assert_eq!((&got.mla, &got.moe, &got.yarn, got.head_dim), (&want.mla, &want.moe, &want.yarn, want.head_dim), "{preset}");
        let same = logits(&loaded, &prompt()) == logits(&load_model(preset).unwrap(), &prompt());
        assert!(same, "{preset}, rope_interleave {interleave_key:?}: the directory's logits differ from the preset's");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn deepseek_settings_lumen_does_not_run_are_refused_by_name() {
    let base = config_json("tiny-deepseek-v2-lite");
    for (key, value, expected) in [
        (
            "topk_method",
            json!("group_limited_greedy"),
            "topk_method \"group_limited_greedy\" (DeepSeek-V2's softmax routing within expert groups) is not supported",
        ),
        ("moe_layer_freq", json!(2), "moe_layer_freq 2 interleaves dense and MoE layers; expected 1"),
        ("scoring_func", json!("sigmoid"), "topk_method \"greedy\" with scoring_func \"sigmoid\" is not supported"),
        ("kv_lora_rank", Value::Null, "deepseek_v2 needs an integer \"kv_lora_rank\""),
    ] {
        let mut config = base.clone();
        config[key] = value;
        let e = format!("{:#}", ModelConfig::from_hf_json(&config.to_string(), "dir/config.json").unwrap_err());
        assert!(e.starts_with("dir/config.json: ") && e.contains(expected), "{key}: {e}");
    }
}
