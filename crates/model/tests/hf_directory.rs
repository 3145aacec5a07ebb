//! Loading a Hugging Face model directory: `config.json` plus sharded `*.safetensors` in f32, f16
//! and bf16, or an FP8 checkpoint (F8_E4M3 projections with their `weight_scale`). The directory
//! is written from a preset's weights, so the loaded model must give the preset's logits: exactly
//! for f32 shards, within half-precision rounding for f16/bf16, within FP8's error for FP8.

mod common;

use common::{one_pass, write_safetensors, StoredTensor};
use half::{bf16, f16};
use lumen_model::presets::{preset_config, random_tensor};
use lumen_model::{load_model, Model};
use std::path::{Path, PathBuf};

const PRESET: &str = "tiny-qwen2";

fn tensor_names(layers: usize) -> Vec<(String, Vec<usize>)> {
    let c = preset_config(PRESET).unwrap();
    let (h, hd, f) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (qd, kd) = (c.num_heads * hd, c.num_kv_heads * hd);
    let mut names = vec![("model.embed_tokens.weight".to_string(), vec![c.vocab_size, h]), ("model.norm.weight".into(), vec![h])];
    names.push(("lm_head.weight".into(), vec![c.vocab_size, h]));
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for (n, s) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![qd, h]),
            ("self_attn.k_proj.weight", vec![kd, h]),
            ("self_attn.v_proj.weight", vec![kd, h]),
            ("self_attn.q_proj.bias", vec![qd]),
            ("self_attn.k_proj.bias", vec![kd]),
            ("self_attn.v_proj.bias", vec![kd]),
            ("self_attn.o_proj.weight", vec![h, qd]),
            ("mlp.gate_proj.weight", vec![f, h]),
            ("mlp.up_proj.weight", vec![f, h]),
            ("mlp.down_proj.weight", vec![h, f]),
        ] {
            names.push((format!("{p}.{n}"), s));
        }
    }
    names
}

/// Whether an FP8 checkpoint stores `name` in F8_E4M3: the layers' projection matrices.
fn fp8_in_checkpoint(name: &str) -> bool {
    name.ends_with("_proj.weight")
}

fn write_shard(path: &Path, tensors: &[(String, Vec<usize>)], dtype: &str) {
    let mut stored = Vec::new();
    for (name, shape) in tensors {
        let values = random_tensor(0, name, shape);
        if dtype == "F8_E4M3" && fp8_in_checkpoint(name) {
            // Attention projections get one scale (amax / 448, as checkpoints store it), the MLP
            // one per output row.
            let rows = if name.contains(".mlp.") { shape[0] } else { 1 };
            let per_row = values.len() / rows;
            let scales: Vec<f32> =
                values.chunks(per_row).map(|r| r.iter().fold(0f32, |m, v| m.max(v.abs())) / lumen_backend::fp8::E4M3_MAX).collect();
            let codes =
                values.chunks(per_row).zip(&scales).flat_map(|(row, s)| row.iter().map(move |v| lumen_backend::fp8::to_e4m3(v / s)));
            stored.push(StoredTensor { name: name.clone(), dtype: "F8_E4M3".into(), shape: shape.clone(), bytes: codes.collect() });
            let scale_shape = if rows == 1 { vec![] } else { vec![rows, 1] };
            stored.push(StoredTensor::f32(format!("{}_scale", name), scale_shape, &scales));
            continue;
        }
        let bytes = match dtype {
            "F32" | "F8_E4M3" => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            "F16" => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
            _ => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        };
        let kept = if dtype == "F8_E4M3" { "F32" } else { dtype };
        stored.push(StoredTensor { name: name.clone(), dtype: kept.into(), shape: shape.clone(), bytes });
    }
    write_safetensors(path, &stored);
}

fn write_dir(tag: &str, dtypes: [&str; 2]) -> PathBuf {
    let c = preset_config(PRESET).unwrap();
    let dir = std::env::temp_dir().join(format!("lumen-hf-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "model_type": "qwen2", "hidden_size": c.hidden_size, "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads, "num_hidden_layers": c.num_layers, "intermediate_size": c.intermediate_size,
        "vocab_size": c.vocab_size, "rope_theta": c.rope_theta, "rms_norm_eps": c.rms_eps, "tie_word_embeddings": false,
        "max_position_embeddings": c.max_position_embeddings, "eos_token_id": 2
    });
    let mut config = config;
    if dtypes.contains(&"F8_E4M3") {
        config["quantization_config"] = serde_json::json!({"quant_method": "fp8", "activation_scheme": "dynamic"});
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let names = tensor_names(c.num_layers);
    let (first, second) = names.split_at(names.len() / 2);
    write_shard(&dir.join("model-00001-of-00002.safetensors"), first, dtypes[0]);
    write_shard(&dir.join("model-00002-of-00002.safetensors"), second, dtypes[1]);
    dir
}

/// The last token's logits of `tokens` in one pass.
fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    one_pass(model, tokens, &[tokens.len() - 1]).logits
}

#[test]
fn f32_shards_load_to_the_preset_exactly() {
    let dir = write_dir("f32", ["F32", "F32"]);
    let loaded = load_model(dir.to_str().unwrap()).unwrap();
    assert_eq!(loaded.format, "safetensors");
    assert!(loaded.config().attention_bias && !loaded.config().tie_word_embeddings);
    let tokens = [5, 17, 300, 2, 44, 9, 100];
    assert_eq!(logits(&loaded, &tokens), logits(&load_model(PRESET).unwrap(), &tokens));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn half_precision_shards_round_to_the_preset() {
    let dir = write_dir("half", ["F16", "BF16"]);
    let loaded = load_model(dir.to_str().unwrap()).unwrap();
    let tokens = [5, 17, 300, 2, 44, 9, 100];
    let want = logits(&load_model(PRESET).unwrap(), &tokens);
    let got = logits(&loaded, &tokens);
    let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst > 0.0, "half-precision weights cannot give bitwise-identical logits");
    assert!(worst < 0.05, "logits moved by {worst} from rounding the weights to 16 bits");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_fp8_checkpoint_loads_in_fp8_near_the_preset() {
    let dir = write_dir("fp8", ["F8_E4M3", "F8_E4M3"]);
    let loaded = load_model(dir.to_str().unwrap()).unwrap();
    assert_eq!(loaded.cpu_decoder().unwrap().quantization, lumen_model::Quantization::Fp8, "the checkpoint's FP8 is kept");
    let tokens = [5, 17, 300, 2, 44, 9, 100];
    let want = logits(&load_model(PRESET).unwrap(), &tokens);
    let got = logits(&loaded, &tokens);
    let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
    let error = want.iter().zip(&got).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt() / norm;
    assert!(error > 0.0 && error < 0.1, "FP8 logits are {error:.3} (relative) from the preset's");
    // A checkpoint quantized some other way is refused by name; an FP8 tensor needs its scale.
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"fp8\"", "\"awq\"")).unwrap();
    let e = format!("{:#}", load_model(dir.to_str().unwrap()).err().unwrap());
    assert!(e.contains("\"awq\"") && e.contains("FP8 checkpoints"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_truncated_shard_is_named() {
    let dir = write_dir("trunc", ["F32", "F32"]);
    let shard = dir.join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 64]).unwrap();
    let e = format!("{:#}", load_model(dir.to_str().unwrap()).err().unwrap());
    assert!(e.contains("model-00002-of-00002.safetensors") && e.contains("truncated"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_hugging_face_directory_fills_its_plan() {
    let dir = write_dir("plan", ["BF16", "F32"]);
    let model = load_model(dir.to_str().unwrap()).unwrap();
    let filled = model.cpu_decoder().unwrap().weights.shapes(|m| vec![m.n, m.k], |v| vec![v.len()]);
    assert_eq!(filled, lumen_model::plan::ModelPlan::for_config(model.config()).planned_shapes());
}

/// The checkpoint tensors of a tiny mixture-of-experts preset as its architecture names them:
/// Mixtral's `block_sparse_moe` with `w1`/`w3`/`w2` experts, Qwen's `mlp.gate` and
/// `mlp.experts.J.{gate,up,down}_proj`, Qwen2-MoE's shared expert and its gate, Qwen2's q/k/v
/// biases, Qwen3's per-head and OLMoE's full-width q/k norms.
fn moe_tensor_names(preset: &str) -> Vec<(String, Vec<usize>)> {
    let c = preset_config(preset).unwrap();
    let moe = c.moe.clone().unwrap();
    let (h, hd, f) = (c.hidden_size, c.head_dim, moe.expert_intermediate_size);
    let (qd, kd) = (c.num_heads * hd, c.num_kv_heads * hd);
    let mut names = vec![
        ("model.embed_tokens.weight".to_string(), vec![c.vocab_size, h]),
        ("model.norm.weight".into(), vec![h]),
        ("lm_head.weight".into(), vec![c.vocab_size, h]),
    ];
    for i in 0..c.num_layers {
        let mut layer: Vec<(String, Vec<usize>)> = vec![
            ("input_layernorm.weight".into(), vec![h]),
            ("post_attention_layernorm.weight".into(), vec![h]),
            ("self_attn.q_proj.weight".into(), vec![qd, h]),
            ("self_attn.k_proj.weight".into(), vec![kd, h]),
            ("self_attn.v_proj.weight".into(), vec![kd, h]),
            ("self_attn.o_proj.weight".into(), vec![h, qd]),
        ];
        if c.attention_bias {
            layer.extend([
                ("self_attn.q_proj.bias".into(), vec![qd]),
                ("self_attn.k_proj.bias".into(), vec![kd]),
                ("self_attn.v_proj.bias".into(), vec![kd]),
            ]);
        }
        if c.qk_norm {
            let (q_width, k_width) = if c.qk_norm_full_width { (qd, kd) } else { (hd, hd) };
            layer.extend([("self_attn.q_norm.weight".into(), vec![q_width]), ("self_attn.k_norm.weight".into(), vec![k_width])]);
        }
        let expert = |prefix: String, f: usize, [gate, up, down]: [&str; 3]| {
            [
                (format!("{prefix}.{gate}.weight"), vec![f, h]),
                (format!("{prefix}.{up}.weight"), vec![f, h]),
                (format!("{prefix}.{down}.weight"), vec![h, f]),
            ]
        };
        if c.arch == "mixtral" {
            layer.push(("block_sparse_moe.gate.weight".into(), vec![moe.num_experts, h]));
            for j in 0..moe.num_experts {
                layer.extend(expert(format!("block_sparse_moe.experts.{j}"), f, ["w1", "w3", "w2"]));
            }
        } else {
            layer.push(("mlp.gate.weight".into(), vec![moe.num_experts, h]));
            for j in 0..moe.num_experts {
                layer.extend(expert(format!("mlp.experts.{j}"), f, ["gate_proj", "up_proj", "down_proj"]));
            }
        }
        if let Some(fs) = moe.shared_expert_intermediate_size {
            layer.extend(expert("mlp.shared_expert".into(), fs, ["gate_proj", "up_proj", "down_proj"]));
            layer.push(("mlp.shared_expert_gate.weight".into(), vec![1, h]));
        }
        names.extend(layer.into_iter().map(|(n, s)| (format!("model.layers.{i}.{n}"), s)));
    }
    names
}

/// A directory holding `preset`'s weights under its architecture's names, with its config.json.
fn write_moe_dir(preset: &str) -> PathBuf {
    let c = preset_config(preset).unwrap();
    let moe = c.moe.clone().unwrap();
    let dir = std::env::temp_dir().join(format!("lumen-hf-{}-{preset}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = serde_json::json!({
        "model_type": c.arch, "hidden_size": c.hidden_size, "num_attention_heads": c.num_heads, "head_dim": c.head_dim,
        "num_key_value_heads": c.num_kv_heads, "num_hidden_layers": c.num_layers, "intermediate_size": c.intermediate_size,
        "vocab_size": c.vocab_size, "rope_theta": c.rope_theta, "rms_norm_eps": c.rms_eps, "tie_word_embeddings": false,
        "max_position_embeddings": c.max_position_embeddings, "num_experts_per_tok": moe.top_k
    });
    if c.arch == "mixtral" {
        config["num_local_experts"] = moe.num_experts.into();
        config["intermediate_size"] = moe.expert_intermediate_size.into();
    } else if c.arch == "olmoe" {
        config["num_experts"] = moe.num_experts.into();
        config["intermediate_size"] = moe.expert_intermediate_size.into();
        config["norm_topk_prob"] = false.into();
    } else {
        config["num_experts"] = moe.num_experts.into();
        config["moe_intermediate_size"] = moe.expert_intermediate_size.into();
        config["norm_topk_prob"] = (moe.routing == lumen_model::moe::RoutingMethod::RenormalizeNaive).into();
        if let Some(fs) = moe.shared_expert_intermediate_size {
            config["shared_expert_intermediate_size"] = fs.into();
        }
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    write_shard(&dir.join("model.safetensors"), &moe_tensor_names(preset), "F32");
    dir
}

#[test]
fn mixture_of_experts_directories_load_to_their_presets_exactly() {
    for preset in ["tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-olmoe"] {
        let dir = write_moe_dir(preset);
        let loaded = load_model(dir.to_str().unwrap()).unwrap();
        let (got, want) = (loaded.config(), preset_config(preset).unwrap());
        assert_eq!((&got.moe, got.qk_norm, got.qk_norm_full_width), (&want.moe, want.qk_norm, want.qk_norm_full_width), "{preset}");
        let tokens = [5, 17, 300, 2, 44, 9, 100];
        assert_eq!(logits(&loaded, &tokens), logits(&load_model(preset).unwrap(), &tokens), "{preset}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn a_missing_expert_tensor_is_named() {
    let dir = write_moe_dir("tiny-mixtral");
    let without: Vec<_> =
        moe_tensor_names("tiny-mixtral").into_iter().filter(|(n, _)| !n.contains("layers.1.block_sparse_moe.experts.5.w2")).collect();
    write_shard(&dir.join("model.safetensors"), &without, "F32");
    let e = format!("{:#}", load_model(dir.to_str().unwrap()).err().unwrap());
    assert!(e.contains("model.layers.1.block_sparse_moe.experts.5.w2.weight"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}
