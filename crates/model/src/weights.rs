//! The decoder's weights in the layout the forward pass wants: f32, linear layers packed for the
//! CPU matmul, with the q/k/v projections fused into one matrix and gate/up into another. Every loader (GGUF,
//! safetensors, presets) hands tensors over by their Hugging Face names through one fetch
//! function, so the assembly and its shape checks live only here.

use crate::config::ModelConfig;
use anyhow::{ensure, Result};
use lumen_backend::cpu::PackedMatrix;

pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    /// `[(heads + 2·kv_heads)·head_dim, hidden]`: q rows, then k rows, then v rows.
    pub wqkv: PackedMatrix,
    pub bqkv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub wo: PackedMatrix,
    pub ffn_norm: Vec<f32>,
    /// `[2·intermediate, hidden]`: gate rows, then up rows.
    pub w_gate_up: PackedMatrix,
    pub w_down: PackedMatrix,
}

pub struct Weights {
    /// `[vocab, hidden]` row-major, for the token gather.
    pub embed: Vec<f32>,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// The output projection (the embedding again when tied).
    pub lm_head: PackedMatrix,
}

/// Returns the f32 values of the tensor with this Hugging Face name, checked against `shape`.
pub type Fetch<'a> = dyn FnMut(&str, &[usize]) -> Result<Vec<f32>> + 'a;

impl Weights {
    pub fn assemble(c: &ModelConfig, fetch: &mut Fetch) -> Result<Self> {
        let (h, hd, f) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (qd, kd) = (c.num_heads * hd, c.num_kv_heads * hd);
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let mut wqkv = fetch(&format!("{p}.self_attn.q_proj.weight"), &[qd, h])?;
            wqkv.extend(fetch(&format!("{p}.self_attn.k_proj.weight"), &[kd, h])?);
            wqkv.extend(fetch(&format!("{p}.self_attn.v_proj.weight"), &[kd, h])?);
            let bqkv = if c.attention_bias {
                let mut b = fetch(&format!("{p}.self_attn.q_proj.bias"), &[qd])?;
                b.extend(fetch(&format!("{p}.self_attn.k_proj.bias"), &[kd])?);
                b.extend(fetch(&format!("{p}.self_attn.v_proj.bias"), &[kd])?);
                Some(b)
            } else {
                None
            };
            let (q_norm, k_norm) = if c.qk_norm {
                (Some(fetch(&format!("{p}.self_attn.q_norm.weight"), &[hd])?), Some(fetch(&format!("{p}.self_attn.k_norm.weight"), &[hd])?))
            } else {
                (None, None)
            };
            let mut w_gate_up = fetch(&format!("{p}.mlp.gate_proj.weight"), &[f, h])?;
            w_gate_up.extend(fetch(&format!("{p}.mlp.up_proj.weight"), &[f, h])?);
            layers.push(LayerWeights {
                attn_norm: fetch(&format!("{p}.input_layernorm.weight"), &[h])?,
                wqkv: PackedMatrix::pack(&wqkv, qd + 2 * kd, h),
                bqkv,
                q_norm,
                k_norm,
                wo: PackedMatrix::pack(&fetch(&format!("{p}.self_attn.o_proj.weight"), &[h, qd])?, h, qd),
                ffn_norm: fetch(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                w_gate_up: PackedMatrix::pack(&w_gate_up, 2 * f, h),
                w_down: PackedMatrix::pack(&fetch(&format!("{p}.mlp.down_proj.weight"), &[h, f])?, h, f),
            });
        }
        let embed = fetch("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let lm_head = if c.tie_word_embeddings {
            PackedMatrix::pack(&embed, c.vocab_size, h)
        } else {
            PackedMatrix::pack(&fetch("lm_head.weight", &[c.vocab_size, h])?, c.vocab_size, h)
        };
        Ok(Weights { embed, layers, final_norm: fetch("model.norm.weight", &[h])?, lm_head })
    }
}

/// Checks a loaded tensor's shape against the one the config implies.
pub fn check_shape(source: &str, name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    ensure!(got == want, "{source}: tensor {name} has shape {got:?}, the config implies {want:?}");
    Ok(())
}
