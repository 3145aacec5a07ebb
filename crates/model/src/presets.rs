//! Random-weight models of real shapes, named and seeded, for speed work and tests.
//!
//! A mixture-of-experts preset takes options after its name, each `+KEY=VALUE`, before the seed:
//! `qwen3-30b-a3b+zipf=1.2@7`. `zipf=S` adds the Zipf-shaped gate bias of exponent `S`
//! ([`crate::moe::zipf_gate_bias`]) to every layer's router logits, planting the load imbalance a
//! trained router shows; `routing=METHOD` routes with another method (`Default`, `Renormalize`,
//! `RenormalizeNaive`, `Llama4`). The OLMoE presets have its full-width q/k norms, and the GPT-OSS
//! presets its attention: sinks, biases on q/k/v and the output, sliding-window layers alternating
//! with full ones (even layers slide), and YaRN RoPE. The DeepSeek presets (`deepseek-v3`,
//! `deepseek-v2-lite`, `moonlight-16b-a3b`, and the tiny ones) have multi-head latent attention,
//! dense first layers, shared experts and, but for V2-Lite's softmax, DeepSeekV3 routing.
//!
//! Any preset takes `+layers=N`: the first `N` layers of the model, its dense first layers (at
//! most `N`) and its pattern of sliding layers kept, so `deepseek-v3+layers=8` is 3 dense and 5
//! MoE layers of the real width.
//!
//! A weight is a pure function of (seed, tensor name, index), so any tool can regenerate it:
//! `base = splitmix64(seed ^ fnv1a64(name))`, `u_i = (splitmix64(base + i) >> 40) / 2^24`,
//! `r_i = 2·u_i − 1`; matrices are `r_i / sqrt(fan_in)`, embeddings and attention sinks `r_i`,
//! biases (DeepSeek's score correction bias too) `0.1·r_i` and norm weights `1 + 0.1·r_i`, all in f32. `scripts/reference_logits.py` implements the same rule,
//! and on CUDA the `preset_fill` kernel draws the weights on the device, so a large preset loads
//! without passing through host memory.

use crate::config::{MlaConfig, ModelConfig, MoeConfig, RopeScaling};
use crate::moe::{ExpertActivation, GroupLimit, RoutingMethod};
use crate::yarn::{yarn_mscale, Yarn};
use anyhow::{bail, Context, Result};
use lumen_backend::rng::splitmix64;
use rayon::prelude::*;

pub const PRESET_NAMES: [&str; 26] = [
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
    "mixtral-8x7b",
    "qwen3-30b-a3b",
    "qwen1.5-moe-a2.7b",
    "olmoe-1b-7b",
    "gpt-oss-20b",
    "tiny-mixtral",
    "tiny-qwen2-moe",
    "tiny-qwen3-moe",
    "tiny-olmoe",
    "tiny-gpt-oss",
    "deepseek-v3",
    "deepseek-v2-lite",
    "moonlight-16b-a3b",
    "tiny-deepseek-v3",
    "tiny-deepseek-v2-lite",
];

/// Presets whose output layer reuses the embedding predict the last input token: with random
/// weights its logit, the embedding's squared norm, outweighs every other by far. The `-untied`
/// variants have an output layer of their own, so their next token varies with the input and
/// their sampled distributions are broad; token-level tests use them.
const UNTIED_SUFFIX: &str = "-untied";

fn llama3_scaling(factor: f64, original: f64) -> Option<RopeScaling> {
    Some(RopeScaling { factor, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: original })
}

fn moe(num_experts: usize, top_k: usize, expert_intermediate_size: usize, routing: RoutingMethod) -> Option<MoeConfig> {
    Some(MoeConfig::new(num_experts, top_k, expert_intermediate_size, routing))
}

/// DeepSeek's YaRN: transformers' defaults (beta_fast 32, beta_slow 1, truncated ramp ends), the attention factor
/// `mscale(factor, mscale) / mscale(factor, mscale_all_dim)` and MLA's softmax scale from
/// `mscale_all_dim`.
fn deepseek_yarn(factor: f64, original_context: f64, mscale: f64, mscale_all_dim: f64) -> Option<Yarn> {
    let yarn = Yarn::new(factor, original_context, 32.0, 1.0, true);
    let attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim);
    Some(Yarn { attention_factor, mscale_all_dim: Some(mscale_all_dim), ..yarn })
}

/// DeepSeek's mixture: `shared` plain shared experts of the routed experts' size, the first
/// `dense` layers dense, and either DeepSeekV3 routing (groups, correction bias, `scaling`) or
/// V2's softmax.
fn deepseek_moe(experts: usize, top_k: usize, f: usize, shared: usize, dense: usize, routing: DeepSeekRouting) -> Option<MoeConfig> {
    let (method, groups, correction, scaling) = match routing {
        DeepSeekRouting::Grouped { groups, scaling } => (RoutingMethod::DeepSeekV3, groups, true, scaling),
        DeepSeekRouting::Softmax => (RoutingMethod::Default, GroupLimit::NONE, false, 1.0),
    };
    Some(MoeConfig {
        shared_expert_intermediate_size: Some(shared * f),
        groups,
        score_correction_bias: correction,
        routed_scaling_factor: scaling,
        first_dense_layers: dense,
        ..MoeConfig::new(experts, top_k, f, method)
    })
}

enum DeepSeekRouting {
    Grouped { groups: GroupLimit, scaling: f32 },
    Softmax,
}

/// MLA on `base` (whose `head_dim` and KV heads it sets), DeepSeek's tensor naming and no RoPE
/// scaling of Llama 3's kind.
fn deepseek(base: ModelConfig, mla: MlaConfig, arch: &str) -> ModelConfig {
    ModelConfig {
        arch: arch.into(),
        head_dim: mla.qk_rope_head_dim,
        num_kv_heads: base.num_heads,
        rope_scaling: None,
        mla: Some(mla),
        ..base
    }
}

fn mla(q_lora_rank: Option<usize>, kv_lora_rank: usize, qk_nope_head_dim: usize, qk_rope_head_dim: usize, v_head_dim: usize) -> MlaConfig {
    MlaConfig { q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim }
}

/// GPT-OSS's attention on `base`: sinks, q/k/v and output biases, even layers sliding over
/// `window` positions, YaRN (factor 32, not truncated) over `original_context` positions.
fn gpt_oss_attention(base: ModelConfig, window: usize, original_context: f64) -> ModelConfig {
    ModelConfig {
        arch: "gpt_oss".into(),
        attention_bias: true,
        attention_output_bias: true,
        attention_sinks: true,
        sliding_window: Some(window),
        sliding_layers: Some((0..base.num_layers).map(|i| i % 2 == 0).collect()),
        rope_theta: 150000.0,
        rope_scaling: None,
        yarn: Some(Yarn::new(32.0, original_context, 32.0, 1.0, false)),
        ..base
    }
}

fn gpt_oss_moe(num_experts: usize, top_k: usize, expert_intermediate_size: usize) -> Option<MoeConfig> {
    let base = moe(num_experts, top_k, expert_intermediate_size, RoutingMethod::Renormalize)?;
    Some(MoeConfig { activation: ExpertActivation::GPT_OSS, biases: true, ..base })
}

/// Whether `name` (options included) names a preset.
pub fn is_preset(name: &str) -> bool {
    PRESET_NAMES.contains(&name.split('+').next().unwrap_or(name))
}

/// The configuration of a preset, options applied, or an error listing the presets.
pub fn preset_config(name: &str) -> Result<ModelConfig> {
    let mut parts = name.split('+');
    let mut config = base_preset_config(parts.next().unwrap_or(name))?;
    for option in parts {
        if let Some(("layers", n)) = option.split_once('=') {
            let layers = n.parse::<usize>().ok().filter(|&l| l >= 1 && l <= config.num_layers);
            let layers = layers.with_context(|| format!("preset {name:?}: layers={n}: expected 1 to {} layers", config.num_layers))?;
            config.num_layers = layers;
            if let Some(sliding) = config.sliding_layers.as_mut() {
                sliding.truncate(layers);
            }
            if let Some(moe) = config.moe.as_mut() {
                moe.first_dense_layers = moe.first_dense_layers.min(layers);
            }
            continue;
        }
        let Some(moe) = config.moe.as_mut() else {
            bail!("preset {name:?}: option {option:?} applies to mixture-of-experts presets only");
        };
        match option.split_once('=') {
            Some(("zipf", s)) => {
                let exponent = s.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0);
                moe.gate_zipf_exponent =
                    Some(exponent.with_context(|| format!("preset {name:?}: zipf={s}: expected a non-negative number"))?);
            }
            Some(("routing", m)) => {
                moe.routing = *RoutingMethod::ALL.iter().find(|r| r.name() == m).with_context(|| {
                    format!("preset {name:?}: routing={m}: expected one of {:?}", RoutingMethod::ALL.map(RoutingMethod::name))
                })?;
            }
            _ => bail!("preset {name:?}: unknown option {option:?}; expected layers=N, zipf=EXPONENT or routing=METHOD"),
        }
    }
    config.validate().with_context(|| format!("preset {name:?}"))?;
    Ok(config)
}

fn base_preset_config(name: &str) -> Result<ModelConfig> {
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
        attention_output_bias: false,
        qk_norm: false,
        qk_norm_full_width: false,
        attention_sinks: false,
        sliding_window: None,
        sliding_layers: None,
        yarn: None,
        mla: None,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        moe: None,
    };
    if let Some(tied) = name.strip_suffix(UNTIED_SUFFIX).filter(|_| PRESET_NAMES.contains(&name)) {
        return Ok(ModelConfig { tie_word_embeddings: false, ..base_preset_config(tied)? });
    }
    let tiny_moe = ModelConfig { rope_scaling: None, tie_word_embeddings: false, ..base.clone() };
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
        "tiny-mixtral" => ModelConfig { arch: "mixtral".into(), moe: moe(8, 2, 32, RoutingMethod::RenormalizeNaive), ..tiny_moe },
        "tiny-qwen2-moe" => ModelConfig {
            arch: "qwen2_moe".into(),
            attention_bias: true,
            moe: Some(MoeConfig {
                shared_expert_intermediate_size: Some(48),
                shared_expert_gated: true,
                ..MoeConfig::new(8, 2, 32, RoutingMethod::Default)
            }),
            ..tiny_moe
        },
        "tiny-qwen3-moe" => ModelConfig {
            arch: "qwen3_moe".into(),
            head_dim: 32,
            qk_norm: true,
            moe: moe(16, 4, 24, RoutingMethod::RenormalizeNaive),
            ..tiny_moe
        },
        "tiny-olmoe" => ModelConfig {
            arch: "olmoe".into(),
            qk_norm: true,
            qk_norm_full_width: true,
            moe: moe(16, 4, 24, RoutingMethod::Default),
            ..tiny_moe
        },
        "tiny-gpt-oss" => gpt_oss_attention(ModelConfig { moe: gpt_oss_moe(8, 2, 32), ..tiny_moe }, 16, 64.0),
        "mixtral-8x7b" => ModelConfig {
            arch: "mixtral".into(),
            vocab_size: 32000,
            hidden_size: 4096,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            intermediate_size: 14336,
            rope_theta: 1e6,
            rope_scaling: None,
            max_position_embeddings: 32768,
            tie_word_embeddings: false,
            moe: moe(8, 2, 14336, RoutingMethod::RenormalizeNaive),
            ..base
        },
        "qwen3-30b-a3b" => ModelConfig {
            arch: "qwen3_moe".into(),
            vocab_size: 151936,
            hidden_size: 2048,
            num_layers: 48,
            num_heads: 32,
            num_kv_heads: 4,
            head_dim: 128,
            intermediate_size: 6144,
            rms_eps: 1e-6,
            rope_theta: 1e6,
            rope_scaling: None,
            max_position_embeddings: 40960,
            tie_word_embeddings: false,
            qk_norm: true,
            bos_token_id: Some(151643),
            eos_token_ids: vec![151645],
            moe: moe(128, 8, 768, RoutingMethod::RenormalizeNaive),
            ..base
        },
        "qwen1.5-moe-a2.7b" => ModelConfig {
            arch: "qwen2_moe".into(),
            vocab_size: 151936,
            hidden_size: 2048,
            num_layers: 24,
            num_heads: 16,
            num_kv_heads: 16,
            head_dim: 128,
            intermediate_size: 5632,
            rms_eps: 1e-6,
            rope_theta: 1e6,
            rope_scaling: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: false,
            attention_bias: true,
            bos_token_id: Some(151643),
            eos_token_ids: vec![151643],
            moe: Some(MoeConfig {
                shared_expert_intermediate_size: Some(5632),
                shared_expert_gated: true,
                ..MoeConfig::new(60, 4, 1408, RoutingMethod::Default)
            }),
            ..base
        },
        "olmoe-1b-7b" => ModelConfig {
            arch: "olmoe".into(),
            vocab_size: 50304,
            hidden_size: 2048,
            num_layers: 16,
            num_heads: 16,
            num_kv_heads: 16,
            head_dim: 128,
            intermediate_size: 1024,
            rope_scaling: None,
            tie_word_embeddings: false,
            qk_norm: true,
            qk_norm_full_width: true,
            bos_token_id: None,
            eos_token_ids: vec![50279],
            moe: moe(64, 8, 1024, RoutingMethod::Default),
            ..base
        },
        "gpt-oss-20b" => gpt_oss_attention(
            ModelConfig {
                vocab_size: 201088,
                hidden_size: 2880,
                num_layers: 24,
                num_heads: 64,
                num_kv_heads: 8,
                head_dim: 64,
                intermediate_size: 2880,
                max_position_embeddings: 131072,
                tie_word_embeddings: false,
                bos_token_id: Some(199998),
                eos_token_ids: vec![200002, 199999],
                moe: gpt_oss_moe(32, 4, 2880),
                ..base
            },
            128,
            4096.0,
        ),
        "tiny-deepseek-v3" => deepseek(
            ModelConfig {
                num_layers: 3,
                yarn: deepseek_yarn(4.0, 64.0, 1.0, 0.8),
                moe: deepseek_moe(
                    16,
                    4,
                    24,
                    1,
                    1,
                    DeepSeekRouting::Grouped { groups: GroupLimit { n_group: 4, topk_group: 2 }, scaling: 2.5 },
                ),
                ..tiny_moe
            },
            mla(Some(32), 32, 16, 8, 16),
            "deepseek_v3",
        ),
        "tiny-deepseek-v2-lite" => deepseek(
            ModelConfig {
                num_layers: 3,
                yarn: deepseek_yarn(4.0, 64.0, 0.707, 0.707),
                moe: deepseek_moe(16, 4, 24, 2, 1, DeepSeekRouting::Softmax),
                ..tiny_moe
            },
            mla(None, 32, 16, 8, 16),
            "deepseek_v2",
        ),
        "deepseek-v3" => deepseek(
            ModelConfig {
                vocab_size: 129280,
                hidden_size: 7168,
                num_layers: 61,
                num_heads: 128,
                intermediate_size: 18432,
                rms_eps: 1e-6,
                max_position_embeddings: 163840,
                tie_word_embeddings: false,
                yarn: deepseek_yarn(40.0, 4096.0, 1.0, 1.0),
                bos_token_id: Some(0),
                eos_token_ids: vec![1],
                moe: deepseek_moe(
                    256,
                    8,
                    2048,
                    1,
                    3,
                    DeepSeekRouting::Grouped { groups: GroupLimit { n_group: 8, topk_group: 4 }, scaling: 2.5 },
                ),
                ..base
            },
            mla(Some(1536), 512, 128, 64, 128),
            "deepseek_v3",
        ),
        "deepseek-v2-lite" => deepseek(
            ModelConfig {
                vocab_size: 102400,
                hidden_size: 2048,
                num_layers: 27,
                num_heads: 16,
                intermediate_size: 10944,
                rms_eps: 1e-6,
                max_position_embeddings: 163840,
                tie_word_embeddings: false,
                yarn: deepseek_yarn(40.0, 4096.0, 0.707, 0.707),
                bos_token_id: Some(100000),
                eos_token_ids: vec![100001],
                moe: deepseek_moe(64, 6, 1408, 2, 1, DeepSeekRouting::Softmax),
                ..base
            },
            mla(None, 512, 128, 64, 128),
            "deepseek_v2",
        ),
        "moonlight-16b-a3b" => deepseek(
            ModelConfig {
                vocab_size: 163840,
                hidden_size: 2048,
                num_layers: 27,
                num_heads: 16,
                intermediate_size: 11264,
                rope_theta: 50000.0,
                max_position_embeddings: 8192,
                tie_word_embeddings: false,
                bos_token_id: Some(163584),
                eos_token_ids: vec![163585],
                moe: deepseek_moe(64, 6, 1408, 2, 1, DeepSeekRouting::Grouped { groups: GroupLimit::NONE, scaling: 2.446 }),
                ..base
            },
            mla(None, 512, 128, 64, 128),
            "deepseek_v3",
        ),
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
    } else if name.ends_with(".bias") || name.ends_with(".e_score_correction_bias") {
        (0.1, 0.0)
    } else if name == "model.embed_tokens.weight" || name.ends_with(".sinks") {
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
    fn moe_preset_options_apply_and_bad_ones_are_named() {
        let c = preset_config("tiny-mixtral+zipf=1.2+routing=Llama4").unwrap();
        let moe = c.moe.unwrap();
        assert_eq!((moe.gate_zipf_exponent, moe.routing), (Some(1.2), RoutingMethod::Llama4));
        assert!(is_preset("qwen3-30b-a3b+zipf=1") && !is_preset("qwen9+zipf=1"));
        for (name, want) in [
            ("tiny-mixtral+zipf=-1", "zipf=-1: expected a non-negative number"),
            ("tiny-mixtral+routing=Greedy", "routing=Greedy: expected one of"),
            ("tiny-mixtral+depth=3", "unknown option \"depth=3\""),
            ("tiny+zipf=1", "applies to mixture-of-experts presets only"),
        ] {
            let e = format!("{:#}", preset_config(name).unwrap_err());
            assert!(e.contains(want), "{name}: {e}");
        }
    }

    #[test]
    fn the_layer_option_keeps_the_dense_and_sliding_pattern() {
        let c = preset_config("deepseek-v3+layers=8").unwrap();
        assert_eq!((c.num_layers, c.num_moe_layers(), c.is_moe_layer(2), c.is_moe_layer(3)), (8, 5, false, true));
        assert_eq!(preset_config("tiny-deepseek-v3+layers=1").unwrap().num_moe_layers(), 0);
        assert_eq!(preset_config("tiny-gpt-oss+layers=1").unwrap().sliding_layers, Some(vec![true]));
        for name in ["tiny+layers=0", "tiny+layers=3", "tiny+layers=two"] {
            let e = format!("{:#}", preset_config(name).unwrap_err());
            assert!(e.contains("expected 1 to 2 layers"), "{name}: {e}");
        }
    }

    #[test]
    fn preset_sizes_are_the_real_ones() {
        let p = preset_config("llama-3.1-8b").unwrap().num_params();
        assert!((8_000_000_000..8_100_000_000).contains(&p), "{p}");
        let p = preset_config("llama-3.1-70b").unwrap().num_params();
        assert!((70_000_000_000..71_000_000_000).contains(&p), "{p}");
        let p = preset_config("smollm2-135m").unwrap().num_params();
        assert!((134_000_000..136_000_000).contains(&p), "{p}");
        // The model cards' totals: Mixtral 46.7B, Qwen3-30B-A3B 30.5B, Qwen1.5-MoE-A2.7B 14.3B,
        // OLMoE 6.9B, GPT-OSS 20.9B.
        // DeepSeek-V3 671B (without its multi-token-prediction layer), V2-Lite 15.7B, Moonlight 16.0B.
        for (name, billions) in [
            ("mixtral-8x7b", 46.7),
            ("qwen3-30b-a3b", 30.5),
            ("qwen1.5-moe-a2.7b", 14.3),
            ("olmoe-1b-7b", 6.9),
            ("gpt-oss-20b", 20.9),
            ("deepseek-v3", 671.0),
            ("deepseek-v2-lite", 15.7),
            ("moonlight-16b-a3b", 16.0),
        ] {
            let p = preset_config(name).unwrap().num_params() as f64 / 1e9;
            assert!((p - billions).abs() < 0.1, "{name}: {p:.2}B parameters, the model has {billions}B");
        }
    }
}
