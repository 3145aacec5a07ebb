//! The layer plan filled on one GPU, in bf16: each weight fetched through the same [`Fetch`] the
//! CPU uses, converted and uploaded as a typed tensor, so host memory never holds more than one
//! fused matrix; a random-weight preset's weights are instead drawn on the device by the preset
//! rule, bit for bit the host's. A matrix the plan marks FP8 is then quantized on the device
//! (`Kernels::quantize_fp8`: E4M3 codes and one scale) and its bf16 copy freed. Refuses a model
//! that would not fit before uploading anything.

use super::forward::mla_shape;
use crate::config::ModelConfig;
use crate::moe::{zipf_gate_bias, ExpertActivation};
use crate::plan::{Entry, FeedForward, Fill, Head, ModelPlan, PartSlice, Quantization, SelfAttention, WeightDtype, WeightSpec, Weights};
use crate::presets::preset_rule;
use crate::weights::{stacked, Fetch};
use anyhow::{bail, ensure, Result};
use lumen_backend::cuda::kernels::{MOE_MAX_GROUPS, MOE_MAX_TOP_K};
use lumen_backend::cuda::{to_bf16, DType, DeviceBuffer, DeviceTensor, Gpu, Kernels, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// The model's weights on one GPU, bf16.
pub type DeviceWeights = Weights<DeviceTensor, DeviceTensor>;

pub struct CudaWeights {
    pub gpu: Arc<Gpu>,
    pub kernels: Kernels,
    pub weights: DeviceWeights,
    /// Rotary inverse frequencies, f64.
    pub inv_freq: DeviceBuffer,
    /// Bytes of device memory the weights take.
    pub bytes: usize,
    /// How the layers' projection matrices were quantized at load.
    pub quantization: Quantization,
    /// The planted Zipf skew added to every MoE layer's router logits (`+zipf=S`), `[experts]`
    /// f32.
    pub gate_bias: Option<DeviceBuffer>,
    /// Whether the MoE layers route with the perfect router's balanced logits.
    pub perfect_router: bool,
    /// Per layer, for a MoE layer, its experts' weights and biases as device tables of pointers
    /// (what `moe_gemv` reads to run a few tokens' experts without the host).
    pub expert_tables: Vec<Option<ExpertTables>>,
}

/// One MoE layer's experts as tables of device pointers, one u64 per expert; a bias table is
/// absent when no expert has that bias.
pub struct ExpertTables {
    pub gate_up: DeviceBuffer,
    pub gate_up_bias: Option<DeviceBuffer>,
    pub down: DeviceBuffer,
    pub down_bias: Option<DeviceBuffer>,
}

impl ExpertTables {
    fn upload(gpu: &Gpu, moe: &crate::plan::Moe<DeviceTensor, DeviceTensor>) -> Result<Self> {
        let table = |ptrs: Vec<u64>, what: &str| gpu.upload(&ptrs, what);
        let optional = |ptrs: Vec<u64>, what: &str| -> Result<Option<DeviceBuffer>> {
            Ok(if ptrs.iter().any(|&p| p != 0) { Some(table(ptrs, what)?) } else { None })
        };
        let e = &moe.experts;
        Ok(ExpertTables {
            gate_up: table(e.iter().map(|x| x.gate_up.ptr()).collect(), "expert gate/up pointers")?,
            gate_up_bias: optional(
                e.iter().map(|x| x.gate_up_bias.as_ref().map_or(0, |b| b.ptr())).collect(),
                "expert gate/up bias pointers",
            )?,
            down: table(e.iter().map(|x| x.down.ptr()).collect(), "expert down pointers")?,
            down_bias: optional(e.iter().map(|x| x.down_bias.as_ref().map_or(0, |b| b.ptr())).collect(), "expert down bias pointers")?,
        })
    }
}

struct CudaFill<'f, 'a> {
    gpu: &'f Gpu,
    kernels: &'f Kernels,
    fetch: &'f mut Fetch<'a>,
    /// The seed of a random-weight preset, drawn on the device instead of fetched.
    preset_seed: Option<u64>,
    /// The largest magnitude of a matrix being quantized (a device u32).
    amax: DeviceBuffer,
    bytes: usize,
}

impl CudaFill<'_, '_> {
    /// Fetches `spec`'s parts, converts them to bf16 and uploads them as one tensor; a preset's
    /// parts are drawn in place on the device.
    fn upload(&mut self, spec: &WeightSpec) -> Result<DeviceTensor> {
        let what = match spec.parts.len() {
            1 => spec.parts[0].name.clone(),
            n => format!("{} and {} more fused", spec.parts[0].name, n - 1),
        };
        let (rows, cols) = spec.rows_cols();
        let buffer = match self.preset_seed {
            Some(seed) => {
                let buffer = self.gpu.alloc(rows * cols * 2, &what)?;
                let mut at = 0;
                for part in &spec.parts {
                    let n: usize = part.shape.iter().product();
                    let rule = preset_rule(seed, &part.name, &part.shape);
                    let Some(slice) = part.slice else {
                        self.kernels.preset_fill(self.gpu, buffer.at(at * 2), n, rule.base, rule.scale, rule.offset)?;
                        at += n;
                        continue;
                    };
                    // A tensor-parallel rank's block: the whole part drawn, its rows or columns copied.
                    let whole = self.gpu.alloc(n * 2, &format!("{} (whole, to slice)", part.name))?;
                    self.kernels.preset_fill(self.gpu, whole.ptr, n, rule.base, rule.scale, rule.offset)?;
                    let cols = part.shape.get(1).copied().unwrap_or(1);
                    let (src, width, height) = match slice {
                        PartSlice::Rows { start, len } => (whole.at(start * cols * 2), cols * 2, len),
                        PartSlice::Cols { start, len } => (whole.at(start * 2), len * 2, part.shape[0]),
                    };
                    self.gpu.copy_2d(buffer.at(at * 2), width, src, cols * 2, width, height)?;
                    self.gpu.synchronize()?;
                    at += part.kept_shape().iter().product::<usize>();
                }
                buffer
            }
            None => {
                let parts = stacked(self.fetch, spec)?;
                let host: Vec<u16> = parts.iter().flat_map(|p| p.par_iter().map(|&x| to_bf16(x)).collect::<Vec<u16>>()).collect();
                self.gpu.upload(&host, &what)?
            }
        };
        let tensor = DeviceTensor { buffer, dtype: DType::Bf16, rows, cols, scale: None };
        if spec.dtype != WeightDtype::Fp8 {
            self.bytes += rows * cols * 2;
            return Ok(tensor);
        }
        let codes = self.gpu.alloc(rows * cols, &format!("{what} (FP8)"))?;
        let scale = self.gpu.alloc(4, &format!("{what} (FP8 scale)"))?;
        let quantized = DeviceTensor { buffer: codes, dtype: DType::Fp8E4M3, rows, cols, scale: Some(scale) };
        self.kernels.quantize_fp8(self.gpu, tensor.view(), quantized.view(), self.amax.ptr)?;
        // The bf16 copy is freed once the quantization has read it.
        self.gpu.synchronize()?;
        self.bytes += rows * cols + 4;
        Ok(quantized)
    }
}

/// Bytes the filled plan takes on the device: 1 per FP8 element, 2 per bf16 one.
fn device_bytes(plan: &ModelPlan) -> u64 {
    let mut bytes = 0;
    plan.visit(&mut |_, entry| {
        let (Entry::Matrix(spec) | Entry::Vector(spec)) = entry;
        let per = if spec.dtype == WeightDtype::Fp8 { 1 } else { 2 };
        bytes += spec.shape.iter().product::<usize>() as u64 * per;
    });
    bytes
}

impl Fill for CudaFill<'_, '_> {
    type Matrix = DeviceTensor;
    type Vector = DeviceTensor;

    fn matrix(&mut self, spec: &WeightSpec) -> Result<DeviceTensor> {
        self.upload(spec)
    }

    fn vector(&mut self, spec: &WeightSpec) -> Result<DeviceTensor> {
        self.upload(spec)
    }
}

/// Refuses a model with blocks the CUDA backend lacks, naming what is missing: latent attention
/// of sizes its kernels do not take, and the mixture-of-experts variants beyond SwiGLU experts
/// (with or without a shared expert, gated or not) and GPT-OSS's biased, clamped SwiGLU experts,
/// routed by TensorRT-LLM's Default, Renormalize, RenormalizeNaive, Llama4 or DeepSeekV3
/// methods: expert biases around a plain SwiGLU, a shared expert beside GPT-OSS's experts, more
/// expert groups than `moe_route` takes.
pub fn refuse_cpu_only_blocks(c: &ModelConfig, source: &str) -> Result<()> {
    if let Some(shape) = mla_shape(c) {
        if let Err(e) = shape.check() {
            bail!("{source}: multi-head latent attention of this shape does not run on the CUDA backend: {e:#}; use --device cpu");
        }
        if let Some(r) = c.mla.as_ref().and_then(|m| m.q_lora_rank).filter(|&r| !Kernels::supports_hidden_size(r)) {
            bail!(
                "{source}: q_lora_rank {r} is not supported by the CUDA backend (expected a multiple of 8 up to 16384); use --device cpu"
            );
        }
    }
    if let Some(moe) = &c.moe {
        let plain = moe.activation == ExpertActivation::SwiGlu;
        let missing = if plain && moe.biases {
            Some("expert biases around a plain SwiGLU")
        } else if moe.shared_expert_intermediate_size.is_some() && (!plain || moe.biases) {
            Some("a shared expert beside clamped SwiGLU or biased experts")
        } else if moe.shared_expert_intermediate_size.is_some_and(|fs| !fs.is_multiple_of(8)) {
            Some("a shared expert intermediate size that is not a multiple of 8")
        } else if moe.groups.n_group > MOE_MAX_GROUPS {
            Some("more than 32 expert groups")
        } else if moe.top_k > MOE_MAX_TOP_K {
            Some("more than 16 experts per token")
        } else if !moe.expert_intermediate_size.is_multiple_of(8) {
            Some("an expert intermediate size that is not a multiple of 8")
        } else {
            None
        };
        if let Some(missing) = missing {
            bail!("{source}: the CUDA backend's mixture-of-experts layers lack {missing} so far; use --device cpu");
        }
    }
    Ok(())
}

/// Whether the CUDA attention kernels take the model's head size; latent attention has kernels of
/// its own, which take its shape (see [`refuse_cpu_only_blocks`]).
pub fn head_dim_supported(c: &ModelConfig) -> bool {
    c.mla.is_some() || Kernels::supports_head_dim(c.head_dim)
}

impl CudaWeights {
    /// The output head: its own matrix, or the embedding when tied.
    pub fn head(&self) -> Tensor {
        match &self.weights.head {
            Head::Own(m) => m.view(),
            Head::Tied => self.weights.embed.view(),
        }
    }

    /// The weights of every product the forward pass runs through [`lumen_backend::cuda::Linear`], grouped by shape in
    /// the order first seen: each layer's projections (attention, the dense feed-forward, a MoE
    /// layer's router and shared expert) and the head.
    pub fn product_weights(&self) -> Vec<Vec<Tensor>> {
        let mut groups: Vec<Vec<Tensor>> = Vec::new();
        let mut add = |v: Tensor| match groups.iter_mut().find(|g| (g[0].rows, g[0].cols, g[0].dtype) == (v.rows, v.cols, v.dtype)) {
            Some(group) => group.push(v),
            None => groups.push(vec![v]),
        };
        for l in &self.weights.layers {
            match &l.attention {
                SelfAttention::Grouped(a) => [&a.qkv, &a.output].into_iter().for_each(|w| add(w.view())),
                SelfAttention::Latent(a) => a.q_a.iter().chain([&a.q, &a.kv_a, &a.output]).for_each(|w| add(w.view())),
            }
            match &l.feed_forward {
                FeedForward::Dense { gate_up, down } => [gate_up, down].into_iter().for_each(|w| add(w.view())),
                FeedForward::Moe(moe) => {
                    add(moe.router.view());
                    if let Some(shared) = &moe.shared {
                        [&shared.expert.gate_up, &shared.expert.down].into_iter().chain(&shared.gate).for_each(|w| add(w.view()));
                    }
                }
            }
        }
        add(self.head());
        groups
    }

    /// Fills `plan` on `gpu` from `fetch`, or, for a random-weight preset (`preset_seed`), by
    /// drawing its weights on the device.
    #[allow(clippy::too_many_arguments)]
    pub fn assemble(
        c: &ModelConfig,
        plan: &ModelPlan,
        quantization: Quantization,
        gpu: Arc<Gpu>,
        source: &str,
        fetch: &mut Fetch,
        preset_seed: Option<u64>,
        perfect_router: bool,
    ) -> Result<Self> {
        refuse_cpu_only_blocks(c, source)?;
        ensure!(
            c.moe.is_none() || quantization == Quantization::None,
            "{source}: FP8 mixture-of-experts layers do not run on the CUDA backend yet; use bf16 (no --quantization)"
        );
        ensure!(
            head_dim_supported(c),
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
        let need = device_bytes(plan);
        let (free, total) = gpu.memory()?;
        if need > free as u64 {
            bail!(
                "{source}: the weights need {:.2} GiB but {} has {:.2} GiB free of {:.2} GiB; the model does not fit on this GPU",
                need as f64 / (1u64 << 30) as f64,
                gpu.info.name,
                free as f64 / (1u64 << 30) as f64,
                total as f64 / (1u64 << 30) as f64
            );
        }
        let kernels = Kernels::load(&gpu)?;
        let amax = gpu.alloc(4, "FP8 weight amax")?;
        let mut filler = CudaFill { gpu: &gpu, kernels: &kernels, fetch, preset_seed, amax, bytes: 0 };
        let weights = plan.fill(&mut filler)?;
        let bytes = filler.bytes;
        gpu.synchronize()?;
        let inv_freq = gpu.upload(&c.rope_inv_freq(), "rotary frequencies")?;
        let gate_bias = match c.moe.as_ref().and_then(|m| Some((m.num_experts, m.gate_zipf_exponent?))) {
            Some((experts, exponent)) => Some(gpu.upload(&zipf_gate_bias(experts, exponent), "the planted gate skew")?),
            None => None,
        };
        let expert_tables = weights
            .layers
            .iter()
            .map(|l| match &l.feed_forward {
                FeedForward::Moe(moe) => ExpertTables::upload(&gpu, moe).map(Some),
                FeedForward::Dense { .. } => Ok(None),
            })
            .collect::<Result<_>>()?;
        Ok(CudaWeights { gpu, kernels, weights, inv_freq, bytes, quantization, gate_bias, perfect_router, expert_tables })
    }
}
