//! The decoder's weights on the GPU, in bf16: fetched tensor by tensor through the same
//! [`Fetch`] the CPU assembly uses, converted, and uploaded, so host memory never holds more than
//! one fused matrix. Refuses a model that would not fit before uploading anything.

use crate::config::ModelConfig;
use crate::weights::Fetch;
use anyhow::{bail, ensure, Result};
use lumen_backend::cuda::{to_bf16, DeviceBuffer, Gpu, Kernels};
use rayon::prelude::*;
use std::sync::Arc;

pub struct CudaLayer {
    pub attn_norm: DeviceBuffer,
    /// `[(heads + 2·kv_heads)·head_dim, hidden]`.
    pub wqkv: DeviceBuffer,
    pub bqkv: Option<DeviceBuffer>,
    pub q_norm: Option<DeviceBuffer>,
    pub k_norm: Option<DeviceBuffer>,
    pub wo: DeviceBuffer,
    pub ffn_norm: DeviceBuffer,
    /// `[2·intermediate, hidden]`: gate rows, then up rows.
    pub w_gate_up: DeviceBuffer,
    pub w_down: DeviceBuffer,
}

pub struct CudaWeights {
    pub gpu: Arc<Gpu>,
    pub kernels: Kernels,
    pub embed: DeviceBuffer,
    pub layers: Vec<CudaLayer>,
    pub final_norm: DeviceBuffer,
    /// `None` when tied to the embedding.
    pub lm_head: Option<DeviceBuffer>,
    /// Rotary inverse frequencies, f64.
    pub inv_freq: DeviceBuffer,
    /// Bytes of device memory the weights take.
    pub bytes: usize,
}

impl CudaWeights {
    pub fn lm_head(&self) -> u64 {
        self.lm_head.as_ref().unwrap_or(&self.embed).ptr
    }

    pub fn assemble(c: &ModelConfig, gpu: Arc<Gpu>, source: &str, fetch: &mut Fetch) -> Result<Self> {
        ensure!(
            Kernels::supports_head_dim(c.head_dim),
            "{source}: head_dim {} is not supported by the CUDA backend (expected 32, 64 or 128); use --device cpu",
            c.head_dim
        );
        ensure!(
            c.intermediate_size.is_multiple_of(8),
            "{source}: intermediate size {} is not supported by the CUDA backend (expected a multiple of 8); use --device cpu",
            c.intermediate_size
        );
        ensure!(
            Kernels::supports_hidden_size(c.hidden_size),
            "{source}: hidden size {} is not supported by the CUDA backend (expected a multiple of 8 up to 16384); use --device cpu",
            c.hidden_size
        );
        let need = c.num_params() as u64 * 2;
        let (free, total) = gpu.memory()?;
        if need > free as u64 {
            bail!(
                "{source}: bf16 weights need {:.2} GiB but {} has {:.2} GiB free of {:.2} GiB; the model does not fit on this GPU",
                need as f64 / (1u64 << 30) as f64,
                gpu.info.name,
                free as f64 / (1u64 << 30) as f64,
                total as f64 / (1u64 << 30) as f64
            );
        }
        let kernels = Kernels::load(&gpu)?;
        let mut bytes = 0usize;
        let mut upload = |parts: &[Vec<f32>], what: &str| -> Result<DeviceBuffer> {
            let host: Vec<u16> = parts.iter().flat_map(|p| p.par_iter().map(|&x| to_bf16(x)).collect::<Vec<u16>>()).collect();
            bytes += host.len() * 2;
            gpu.upload(&host, what)
        };
        let (h, hd, f) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (qd, kd) = (c.num_heads * hd, c.num_kv_heads * hd);
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let mut get = |name: &str, shape: &[usize]| fetch(&format!("{p}.{name}"), shape);
            let wqkv = [
                get("self_attn.q_proj.weight", &[qd, h])?,
                get("self_attn.k_proj.weight", &[kd, h])?,
                get("self_attn.v_proj.weight", &[kd, h])?,
            ];
            let bqkv = if c.attention_bias {
                Some([get("self_attn.q_proj.bias", &[qd])?, get("self_attn.k_proj.bias", &[kd])?, get("self_attn.v_proj.bias", &[kd])?])
            } else {
                None
            };
            let norms =
                if c.qk_norm { Some((get("self_attn.q_norm.weight", &[hd])?, get("self_attn.k_norm.weight", &[hd])?)) } else { None };
            let gate_up = [get("mlp.gate_proj.weight", &[f, h])?, get("mlp.up_proj.weight", &[f, h])?];
            let wo = get("self_attn.o_proj.weight", &[h, qd])?;
            let w_down = get("mlp.down_proj.weight", &[h, f])?;
            let attn_norm = get("input_layernorm.weight", &[h])?;
            let ffn_norm = get("post_attention_layernorm.weight", &[h])?;
            let what = |name: &str| format!("layer {i} {name}");
            layers.push(CudaLayer {
                attn_norm: upload(&[attn_norm], &what("input norm"))?,
                wqkv: upload(&wqkv, &what("qkv projection"))?,
                bqkv: bqkv.map(|b| upload(&b, &what("qkv bias"))).transpose()?,
                q_norm: norms.as_ref().map(|n| upload(std::slice::from_ref(&n.0), &what("q norm"))).transpose()?,
                k_norm: norms.as_ref().map(|n| upload(std::slice::from_ref(&n.1), &what("k norm"))).transpose()?,
                wo: upload(&[wo], &what("output projection"))?,
                ffn_norm: upload(&[ffn_norm], &what("post-attention norm"))?,
                w_gate_up: upload(&gate_up, &what("gate/up projection"))?,
                w_down: upload(&[w_down], &what("down projection"))?,
            });
        }
        let embed = upload(&[fetch("model.embed_tokens.weight", &[c.vocab_size, h])?], "the embedding")?;
        let lm_head = if c.tie_word_embeddings { None } else { Some(upload(&[fetch("lm_head.weight", &[c.vocab_size, h])?], "lm_head")?) };
        let final_norm = upload(&[fetch("model.norm.weight", &[h])?], "the final norm")?;
        let inv_freq = gpu.upload(&c.rope_inv_freq(), "rotary frequencies")?;
        Ok(CudaWeights { gpu, kernels, embed, layers, final_norm, lm_head, inv_freq, bytes })
    }
}
