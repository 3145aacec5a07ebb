//! Random-weight models of real shapes, named and seeded, for speed work and tests.
//!
//! A weight is a pure function of (seed, tensor name, index), so any tool can regenerate it:
//! `base = splitmix64(seed ^ fnv1a64(name))`, `u_i = (splitmix64(base + i) >> 40) / 2^24`,
//! `r_i = 2·u_i − 1`; matrices are `r_i / sqrt(fan_in)`, embeddings `r_i`, biases `0.1·r_i` and
//! norm weights `1 + 0.1·r_i`, all in f32. `scripts/reference_logits.py` implements the same rule,
//! and on CUDA the `preset_fill` kernel draws the weights on the device, so a large preset loads
//! without passing through host memory.

use crate::config::{ModelConfig, RopeScaling};
use anyhow::{bail, Result};
use lumen_backend::rng::splitmix64;
use rayon::prelude::*;

pub const PRESET_NAMES: [&str; 11] = [
    "llama-3.1-70b",
    "llama-3.1-8b",
    "llama-3.2-1b",
    "llama-3.2-1b-untied",
    "smollm2-135m",
    "smollm2-135m-untied",
    "tiny",
    "tiny-untied",
    "tiny-qwen2",
    "tiny-qwen3",
    "tiny-mistral",
];

/// Presets whose output layer reuses the embedding predict the last input token: with random
/// weights its logit, the embedding's squared norm, outweighs every other by far. The `-untied`
/// variants have an output layer of their own, so their next token varies with the input and
/// their sampled distributions are broad; token-level tests use them.
const UNTIED_SUFFIX: &str = "-untied";

fn llama3_scaling(factor: f64, original: f64) -> Option<RopeScaling> {
    Some(RopeScaling { factor, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: original })
}

/// The configuration of a preset, or an error listing the presets.
pub fn preset_config(name: &str) -> Result<ModelConfig> {
    let base = ModelConfig {
        arch: "llama".into(),
        vocab_size: 512,
        hidden_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        intermediate_size: 160,
        rms_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: llama3_scaling(8.0, 64.0),
        rope_freq_divisors: None,
        max_position_embeddings: 4096,
        tie_word_embeddings: true,
        attention_bias: false,
        qk_norm: false,
        sliding_window: None,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    };
    if let Some(tied) = name.strip_suffix(UNTIED_SUFFIX).filter(|_| PRESET_NAMES.contains(&name)) {
        return Ok(ModelConfig { tie_word_embeddings: false, ..preset_config(tied)? });
    }
    let c = match name {
        "tiny" => base,
        "tiny-qwen2" => ModelConfig {
            arch: "qwen2".into(),
            attention_bias: true,
            rope_scaling: None,
            tie_word_embeddings: false,
            rope_theta: 1e6,
            ..base
        },
        "tiny-qwen3" => ModelConfig { arch: "qwen3".into(), head_dim: 32, qk_norm: true, rope_scaling: None, rope_theta: 1e6, ..base },
        "tiny-mistral" => ModelConfig {
            arch: "mistral".into(),
            num_kv_heads: 1,
            sliding_window: Some(16),
            rope_scaling: None,
            tie_word_embeddings: false,
            ..base
        },
        "smollm2-135m" => ModelConfig {
            vocab_size: 49152,
            hidden_size: 576,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            intermediate_size: 1536,
            rope_theta: 100000.0,
            rope_scaling: None,
            max_position_embeddings: 8192,
            eos_token_ids: vec![2],
            ..base
        },
        "llama-3.2-1b" => ModelConfig {
            vocab_size: 128256,
            hidden_size: 2048,
            num_layers: 16,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 64,
            intermediate_size: 8192,
            rope_theta: 500000.0,
            rope_scaling: llama3_scaling(32.0, 8192.0),
            max_position_embeddings: 131072,
            bos_token_id: Some(128000),
            eos_token_ids: vec![128001, 128008, 128009],
            ..base
        },
        "llama-3.1-8b" => ModelConfig {
            vocab_size: 128256,
            hidden_size: 4096,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            intermediate_size: 14336,
            rope_theta: 500000.0,
            rope_scaling: llama3_scaling(8.0, 8192.0),
            max_position_embeddings: 131072,
            tie_word_embeddings: false,
            bos_token_id: Some(128000),
            eos_token_ids: vec![128001, 128008, 128009],
            ..base
        },
        "llama-3.1-70b" => ModelConfig {
            vocab_size: 128256,
            hidden_size: 8192,
            num_layers: 80,
            num_heads: 64,
            num_kv_heads: 8,
            head_dim: 128,
            intermediate_size: 28672,
            rope_theta: 500000.0,
            rope_scaling: llama3_scaling(8.0, 8192.0),
            max_position_embeddings: 131072,
            tie_word_embeddings: false,
            bos_token_id: Some(128000),
            eos_token_ids: vec![128001, 128008, 128009],
            ..base
        },
        other => bail!("unknown preset {other:?}; expected one of {}", PRESET_NAMES.join(", ")),
    };
    Ok(c)
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// How the preset draws one weight: `base` seeds its stream, and value `i` is
/// `offset + scale * r_i` (or `scale * r_i` when `offset` is 0), `r_i` in [-1, 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PresetRule {
    pub base: u64,
    pub scale: f32,
    pub offset: f32,
}

/// The rule of weight `name` of `shape` for `seed`, as the module doc states it.
pub fn preset_rule(seed: u64, name: &str, shape: &[usize]) -> PresetRule {
    let base = splitmix64(seed ^ fnv1a64(name.as_bytes()));
    let (scale, offset) = if name.ends_with("norm.weight") {
        (0.1f32, 1.0f32)
    } else if name.ends_with(".bias") {
        (0.1, 0.0)
    } else if name == "model.embed_tokens.weight" {
        (1.0, 0.0)
    } else {
        (1.0 / (shape[shape.len() - 1] as f32).sqrt(), 0.0)
    };
    PresetRule { base, scale, offset }
}

/// The preset weight `name` of `shape` for `seed`, following the rule in the module doc.
pub fn random_tensor(seed: u64, name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let PresetRule { base, scale, offset } = preset_rule(seed, name, shape);
    (0..n)
        .into_par_iter()
        .map(|i| {
            let u = (splitmix64(base.wrapping_add(i as u64)) >> 40) as f32 / 16777216.0;
            let r = u * 2.0 - 1.0;
            if offset == 0.0 {
                r * scale
            } else {
                offset + scale * r
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_reproducible_and_scaled() {
        let a = random_tensor(0, "model.layers.0.mlp.up_proj.weight", &[8, 100]);
        assert_eq!(a, random_tensor(0, "model.layers.0.mlp.up_proj.weight", &[8, 100]));
        assert_ne!(a, random_tensor(1, "model.layers.0.mlp.up_proj.weight", &[8, 100]));
        assert!(a.iter().all(|v| v.abs() <= 0.1), "matrix weights are bounded by 1/sqrt(100)");
        let n = random_tensor(0, "model.norm.weight", &[64]);
        assert!(n.iter().all(|v| (0.9..=1.1).contains(v)));
    }

    #[test]
    fn unknown_preset_lists_the_names() {
        let e = preset_config("llama-9000").unwrap_err().to_string();
        assert!(e.contains("unknown preset \"llama-9000\"") && e.contains("llama-3.1-8b"), "{e}");
    }

    #[test]
    fn untied_presets_differ_from_their_base_only_in_the_output_layer() {
        for name in ["tiny", "smollm2-135m", "llama-3.2-1b"] {
            let (tied, untied) = (preset_config(name).unwrap(), preset_config(&format!("{name}-untied")).unwrap());
            assert!(tied.tie_word_embeddings && !untied.tie_word_embeddings, "{name}");
            assert_eq!(ModelConfig { tie_word_embeddings: true, ..untied }, tied, "{name}");
        }
        assert!(preset_config("nothing-untied").is_err() && preset_config("tiny-qwen2-untied").is_err());
    }

    #[test]
    fn preset_sizes_are_the_real_ones() {
        let p = preset_config("llama-3.1-8b").unwrap().num_params();
        assert!((8_000_000_000..8_100_000_000).contains(&p), "{p}");
        let p = preset_config("llama-3.1-70b").unwrap().num_params();
        assert!((70_000_000_000..71_000_000_000).contains(&p), "{p}");
        let p = preset_config("smollm2-135m").unwrap().num_params();
        assert!((134_000_000..136_000_000).contains(&p), "{p}");
    }
}
