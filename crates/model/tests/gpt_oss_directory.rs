//! Loading a GPT-OSS Hugging Face directory: its config.json (alternating `layer_types`, YaRN
//! `rope_scaling`, `swiglu_limit`) and its fused experts (`gate_up_proj` with gate and up
//! interleaved, `down_proj`, their biases), in f32 or as MXFP4 blocks and scales. The directory is
//! written from the `tiny-gpt-oss` preset's weights, so an f32 one must give the preset's logits
//! exactly, and an MXFP4 one exactly the logits of an f32 one holding the values its codes stand
//! for, worked out here from the format's definition.

mod common;

use common::{one_pass, write_safetensors, StoredTensor};
use lumen_model::presets::{preset_config, random_tensor};
use lumen_model::{load_model, Model};
use std::path::PathBuf;

const PRESET: &str = "tiny-gpt-oss";

/// How the test stores the experts' two matrices.
#[derive(Clone, Copy, PartialEq)]
enum Experts {
    F32,
    /// MXFP4 blocks and scales.
    Mxfp4,
    /// f32 holding the values of the MXFP4 codes.
    Mxfp4Values,
}

/// The 16 FP4 E2M1 values, from the format: sign, two exponent bits (bias 1), one mantissa bit.
fn e2m1(code: u8) -> f32 {
    let sign = if code & 8 != 0 { -1.0 } else { 1.0 };
    let (exponent, mantissa) = ((code >> 1) & 3, (code & 1) as f32);
    sign * if exponent == 0 { mantissa * 0.5 } else { (1.0 + mantissa * 0.5) * 2f32.powi(exponent as i32 - 1) }
}

/// Rows of `[out, in]` values as MXFP4: per block of 32, the scale `2^e` with `e` the least that
/// brings the block's largest magnitude within 6, and each value's nearest code. Returns the
/// blocks, the scales and the values the codes stand for.
fn to_mxfp4(values: &[f32]) -> (Vec<u8>, Vec<u8>, Vec<f32>) {
    let (mut blocks, mut scales, mut decoded) = (Vec::new(), Vec::new(), Vec::new());
    for block in values.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = ((amax / 6.0).log2().ceil() as i32).clamp(-127, 127);
        scales.push((e + 127) as u8);
        let codes: Vec<u8> = block
            .iter()
            .map(|v| (0..16u8).min_by(|&a, &b| (e2m1(a) * 2f32.powi(e) - v).abs().total_cmp(&(e2m1(b) * 2f32.powi(e) - v).abs())).unwrap())
            .collect();
        decoded.extend(codes.iter().map(|&c| e2m1(c) * 2f32.powi(e)));
        blocks.extend(codes.chunks(2).map(|pair| pair[0] | pair[1] << 4));
    }
    (blocks, scales, decoded)
}

/// The preset's weights as a GPT-OSS checkpoint names and lays them out.
fn checkpoint(experts: Experts) -> Vec<StoredTensor> {
    let c = preset_config(PRESET).unwrap();
    let moe = c.moe.clone().unwrap();
    let (h, hd, f, e) = (c.hidden_size, c.head_dim, moe.expert_intermediate_size, moe.num_experts);
    let (qd, kd) = (c.num_heads * hd, c.num_kv_heads * hd);
    let plain = |name: String, shape: Vec<usize>| {
        let values = random_tensor(0, &name, &shape);
        StoredTensor::f32(name, shape, &values)
    };
    let mut tensors = vec![
        plain("model.embed_tokens.weight".into(), vec![c.vocab_size, h]),
        plain("model.norm.weight".into(), vec![h]),
        plain("lm_head.weight".into(), vec![c.vocab_size, h]),
    ];
    for i in 0..c.num_layers {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        for (n, shape) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![qd, h]),
            ("self_attn.k_proj.weight", vec![kd, h]),
            ("self_attn.v_proj.weight", vec![kd, h]),
            ("self_attn.o_proj.weight", vec![h, qd]),
            ("self_attn.q_proj.bias", vec![qd]),
            ("self_attn.k_proj.bias", vec![kd]),
            ("self_attn.v_proj.bias", vec![kd]),
            ("self_attn.o_proj.bias", vec![h]),
            ("self_attn.sinks", vec![c.num_heads]),
            ("mlp.router.weight", vec![e, h]),
            ("mlp.router.bias", vec![e]),
        ] {
            tensors.push(plain(p(n), shape));
        }
        let expert = |j: usize, part: &str, shape: &[usize]| random_tensor(0, &p(&format!("mlp.experts.{j}.{part}")), shape);
        // Linear-layer order `[out, in]`: gate and up rows interleaved, then down.
        let (mut gate_up, mut gate_up_bias, mut down, mut down_bias) = (vec![], vec![], vec![], vec![]);
        for j in 0..e {
            let (gate, up) = (expert(j, "gate_proj.weight", &[f, h]), expert(j, "up_proj.weight", &[f, h]));
            let (gate_b, up_b) = (expert(j, "gate_proj.bias", &[f]), expert(j, "up_proj.bias", &[f]));
            for r in 0..f {
                gate_up.extend(&gate[r * h..(r + 1) * h]);
                gate_up.extend(&up[r * h..(r + 1) * h]);
                gate_up_bias.extend([gate_b[r], up_b[r]]);
            }
            down.extend(expert(j, "down_proj.weight", &[h, f]));
            down_bias.extend(expert(j, "down_proj.bias", &[h]));
        }
        tensors.push(StoredTensor::f32(p("mlp.experts.gate_up_proj_bias"), vec![e, 2 * f], &gate_up_bias));
        tensors.push(StoredTensor::f32(p("mlp.experts.down_proj_bias"), vec![e, h], &down_bias));
        for (name, linear, (rows, cols)) in [("gate_up_proj", gate_up, (2 * f, h)), ("down_proj", down, (h, f))] {
            let (blocks, scales, decoded) = to_mxfp4(&linear);
            let values = match experts {
                Experts::F32 => linear,
                Experts::Mxfp4Values => decoded,
                Experts::Mxfp4 => {
                    let base = p(&format!("mlp.experts.{name}"));
                    tensors.push(StoredTensor {
                        name: format!("{base}_blocks"),
                        shape: vec![e, rows, cols / 32, 16],
                        dtype: "U8".into(),
                        bytes: blocks,
                    });
                    tensors.push(StoredTensor {
                        name: format!("{base}_scales"),
                        shape: vec![e, rows, cols / 32],
                        dtype: "U8".into(),
                        bytes: scales,
                    });
                    continue;
                }
            };
            // The bf16 layout: `[experts, in, out]`.
            let stored: Vec<f32> = (0..e)
                .flat_map(|j| (0..cols).flat_map(move |k| (0..rows).map(move |r| (j, k, r))))
                .map(|(j, k, r)| values[(j * rows + r) * cols + k])
                .collect();
            tensors.push(StoredTensor::f32(p(&format!("mlp.experts.{name}")), vec![e, cols, rows], &stored));
        }
    }
    tensors
}

fn write_dir(tag: &str, experts: Experts, tensors: &[StoredTensor]) -> PathBuf {
    let c = preset_config(PRESET).unwrap();
    let moe = c.moe.clone().unwrap();
    let dir = std::env::temp_dir().join(format!("lumen-gpt-oss-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = serde_json::json!({
        "model_type": "gpt_oss", "hidden_size": c.hidden_size, "num_attention_heads": c.num_heads, "head_dim": c.head_dim,
        "num_key_value_heads": c.num_kv_heads, "num_hidden_layers": c.num_layers, "intermediate_size": moe.expert_intermediate_size,
        "vocab_size": c.vocab_size, "rope_theta": 150000, "rms_norm_eps": c.rms_eps, "tie_word_embeddings": false,
        "max_position_embeddings": c.max_position_embeddings, "num_local_experts": moe.num_experts,
        "num_experts_per_tok": moe.top_k, "experts_per_token": moe.top_k, "attention_bias": true, "swiglu_limit": 7.0,
        "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"],
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 64, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": false}
    });
    if experts == Experts::Mxfp4 {
        config["quantization_config"] =
            serde_json::json!({"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]});
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    write_safetensors(&dir.join("model.safetensors"), tensors);
    dir
}

/// Every row's logits of `tokens` in one pass.
fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    one_pass(model, tokens, &(0..tokens.len()).collect::<Vec<_>>()).logits
}

/// 40 tokens: past the 16-position window of the sliding layer.
fn prompt() -> Vec<u32> {
    (0..40u32).map(|i| (i * 53 + 7) % 512).collect()
}

#[test]
fn a_gpt_oss_directory_loads_to_the_preset_exactly() {
    let dir = write_dir("f32", Experts::F32, &checkpoint(Experts::F32));
    let loaded = load_model(dir.to_str().unwrap()).unwrap();
    let (got, want) = (loaded.config(), preset_config(PRESET).unwrap());
    assert_eq!(
        (&got.yarn, &got.sliding_window, &got.sliding_layers, &got.moe),
        (&want.yarn, &want.sliding_window, &want.sliding_layers, &want.moe)
    );
    assert!(got.attention_sinks && got.attention_bias && got.attention_output_bias);
    assert_eq!(logits(&loaded, &prompt()), logits(&load_model(PRESET).unwrap(), &prompt()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_mxfp4_directory_dequantizes_its_experts_exactly() {
    let quantized = write_dir("mxfp4", Experts::Mxfp4, &checkpoint(Experts::Mxfp4));
    let values = write_dir("mxfp4-values", Experts::Mxfp4Values, &checkpoint(Experts::Mxfp4Values));
    let (quantized_model, values_model) = (load_model(quantized.to_str().unwrap()).unwrap(), load_model(values.to_str().unwrap()).unwrap());
    let got = logits(&quantized_model, &prompt());
    assert_eq!(got, logits(&values_model, &prompt()));
    assert_ne!(got, logits(&load_model(PRESET).unwrap(), &prompt()), "FP4 codes round the preset's weights");
    std::fs::remove_dir_all(quantized).unwrap();
    std::fs::remove_dir_all(values).unwrap();
}

#[test]
fn missing_or_misshapen_expert_tensors_are_named() {
    let without: Vec<StoredTensor> =
        checkpoint(Experts::F32).into_iter().filter(|t| t.name != "model.layers.1.mlp.experts.down_proj").collect();
    let dir = write_dir("missing", Experts::F32, &without);
    let e = format!("{:#}", load_model(dir.to_str().unwrap()).err().unwrap());
    assert!(e.contains("neither model.layers.1.mlp.experts.down_proj (bf16) nor model.layers.1.mlp.experts.down_proj_blocks"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();

    let mut tensors = checkpoint(Experts::F32);
    let bias = tensors.iter_mut().find(|t| t.name == "model.layers.0.mlp.experts.gate_up_proj_bias").unwrap();
    bias.shape = vec![16, 32];
    let dir = write_dir("misshapen", Experts::F32, &tensors);
    let e = format!("{:#}", load_model(dir.to_str().unwrap()).err().unwrap());
    assert!(e.contains("gate_up_proj_bias has shape [16, 32], the config implies [8, 64]"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}
