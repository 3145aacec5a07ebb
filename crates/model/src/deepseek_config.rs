//! DeepSeek's Hugging Face checkpoints (`model_type` `deepseek_v3` and `deepseek_v2`): their
//! `config.json` (latent attention, routing, shared experts, dense first layers, YaRN), the
//! settings lumen refuses by name, and the order of their rotary rows, which checkpoints store
//! interleaved (pairs `2i, 2i+1`) where lumen rotates halves (`i, i + rope/2`).

use crate::config::{MlaConfig, ModelConfig, MoeConfig};
use crate::moe::{GroupLimit, RoutingMethod};
use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Whether `arch` is one of DeepSeek's, read by [`deepseek_config`].
pub fn is_deepseek(arch: &str) -> bool {
    matches!(arch, "deepseek_v2" | "deepseek_v3")
}

/// Whether the checkpoint's rotary rows are interleaved: always for `deepseek_v2`, and for
/// `deepseek_v3` unless `rope_interleave` is false.
pub fn rope_interleaved(v: &Value, arch: &str) -> bool {
    arch == "deepseek_v2" || v["rope_interleave"].as_bool().unwrap_or(true)
}

/// `base` (read as for any llama-family config) with DeepSeek's latent attention and mixture.
pub fn deepseek_config(v: &Value, arch: &str, source: &str, base: ModelConfig) -> Result<ModelConfig> {
    let int = |key: &str| -> Result<usize> {
        v[key].as_u64().map(|x| x as usize).with_context(|| format!("{source}: {arch} needs an integer {key:?}"))
    };
    let mla = MlaConfig {
        q_lora_rank: match &v["q_lora_rank"] {
            Value::Null => None,
            r => Some(r.as_u64().with_context(|| format!("{source}: q_lora_rank is {r}, expected an integer or null"))? as usize),
        },
        kv_lora_rank: int("kv_lora_rank")?,
        qk_nope_head_dim: int("qk_nope_head_dim")?,
        qk_rope_head_dim: int("qk_rope_head_dim")?,
        v_head_dim: int("v_head_dim")?,
    };
    if let Some(freq) = v["moe_layer_freq"].as_u64().filter(|&f| f != 1) {
        bail!("{source}: moe_layer_freq {freq} interleaves dense and MoE layers; expected 1 (every layer after first_k_dense_replace a mixture)");
    }
    let scoring = v["scoring_func"].as_str().unwrap_or(if arch == "deepseek_v3" { "sigmoid" } else { "softmax" });
    let method = v["topk_method"].as_str().unwrap_or(if arch == "deepseek_v3" { "noaux_tc" } else { "greedy" });
    let norm_topk_prob = v["norm_topk_prob"].as_bool().unwrap_or(arch == "deepseek_v3");
    let scaling = v["routed_scaling_factor"].as_f64().unwrap_or(1.0) as f32;
    let (routing, groups, correction, routed_scaling_factor) = match (method, scoring) {
        ("noaux_tc", "sigmoid") => {
            if !norm_topk_prob {
                bail!("{source}: norm_topk_prob false under noaux_tc routing is not supported; expected true");
            }
            let groups = GroupLimit { n_group: int("n_group")?, topk_group: int("topk_group")? };
            (RoutingMethod::DeepSeekV3, groups, true, scaling)
        }
        ("greedy", "softmax") if norm_topk_prob => (RoutingMethod::RenormalizeNaive, GroupLimit::NONE, false, 1.0),
        ("greedy", "softmax") => (RoutingMethod::Default, GroupLimit::NONE, false, scaling),
        ("group_limited_greedy", _) => bail!(
            "{source}: topk_method \"group_limited_greedy\" (DeepSeek-V2's softmax routing within expert groups) is not supported; \
             expected \"noaux_tc\" with scoring_func \"sigmoid\", or \"greedy\" with \"softmax\""
        ),
        (method, scoring) => bail!(
            "{source}: topk_method {method:?} with scoring_func {scoring:?} is not supported; expected \"noaux_tc\" with \
             \"sigmoid\", or \"greedy\" with \"softmax\""
        ),
    };
    let expert_size = int("moe_intermediate_size")?;
    let moe = MoeConfig {
        shared_expert_intermediate_size: match v["n_shared_experts"].as_u64() {
            Some(0) | None => None,
            Some(n) => Some(n as usize * expert_size),
        },
        groups,
        score_correction_bias: correction,
        routed_scaling_factor,
        first_dense_layers: v["first_k_dense_replace"].as_u64().unwrap_or(0) as usize,
        ..MoeConfig::new(int("n_routed_experts")?, int("num_experts_per_tok")?, expert_size, routing)
    };
    Ok(ModelConfig { head_dim: mla.qk_rope_head_dim, num_kv_heads: base.num_heads, mla: Some(mla), moe: Some(moe), ..base })
}

/// The rows of tensor `name` in lumen's rotary order, where the checkpoint interleaves them:
/// each head's last `qk_rope_head_dim` rows of `q_proj`/`q_b_proj`, and the last ones of
/// `kv_a_proj_with_mqa` (of `shape`, rows by columns). Other tensors are returned as they are.
pub fn deinterleave_rope_rows(name: &str, shape: &[usize], c: &ModelConfig, values: Vec<f32>) -> Vec<f32> {
    let Some(m) = &c.mla else { return values };
    let block = if name.ends_with("self_attn.q_proj.weight") || name.ends_with("self_attn.q_b_proj.weight") {
        m.qk_head_dim()
    } else if name.ends_with("self_attn.kv_a_proj_with_mqa.weight") {
        m.latent_width()
    } else {
        return values;
    };
    let rope = m.qk_rope_head_dim;
    let row = shape.last().copied().unwrap_or(1);
    let mut out = values.clone();
    for (block_out, block_in) in out.chunks_mut(block * row).zip(values.chunks(block * row)) {
        let first = (block - rope) * row;
        for i in 0..rope {
            let from = if i < rope / 2 { 2 * i } else { 2 * (i - rope / 2) + 1 };
            block_out[first + i * row..first + (i + 1) * row].copy_from_slice(&block_in[first + from * row..first + (from + 1) * row]);
        }
    }
    out
}
