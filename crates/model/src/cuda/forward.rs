//! The decoder's forward pass on one GPU: it walks the filled layer plan and queues every
//! kernel of one step on the device's stream. What the pass computes in belongs here too: the
//! activation buffers ([`Activations`]) and the paged KV cache's shape ([`KvCache`]). Where a
//! step's inputs lie ([`StepInputs`]) and its launch shape ([`StepShape`]) come from the caller,
//! which owns staging, graphs and sampling. A tensor-parallel rank's pass ([`RankCollectives`])
//! all-reduces the partial sums of its row-parallel products and gathers every rank's logits.
//!
//! A layer of multi-head latent attention (DeepSeek's MLA) runs absorbed in every step: the q
//! projection (through its LoRA and norm where the model has one) and the kv_a projection, then
//! `mla_rope_latent_write` stores each token's normed latent and rotated rotary key in the
//! latent cache, `mla_absorb_query` folds each head's W_UK into its query, `mla_attention`
//! attends every head to the shared latent rows, and `mla_value_heads` applies each head's W_UV
//! before the output projection.
//!
//! Each layer attends within its own sliding window (GPT-OSS alternates sliding and full layers),
//! with GPT-OSS's sinks in the softmax and its output projection's bias, where the model has them.
//!
//! A mixture-of-experts layer runs its gate GEMM to f32 router logits (replaced by the perfect
//! router's balanced ones when it is on), routes every token on the device (`moe_route`, or
//! `moe_route_ranked` for a short step, with GPT-OSS's router bias) and counts each expert's
//! slots there (in the routing kernel, the step's expert load, read back by [`expert_load`] once
//! the step is done). Then, for a step of at most
//! [`MOE_DEVICE_SLOTS`] routed slots (a decode step of a few tokens), each slot's two expert
//! products run as `moe_gemv`s that find the expert's weights through device tables. A larger
//! step lays its slots out expert by expert in tiles on the device (`moe_align`) and runs both
//! products as grouped GEMMs over those tiles (`moe_grouped_gemm`), through the same tables.
//! Either way nothing waits for the host, so any step can replay as a CUDA graph
//! ([`moe_graphable`]). SwiGLU, or GPT-OSS's clamped SwiGLU and biases, sit between and after
//! the products, and `moe_combine` sums every token's experts with their weights.

use super::weights::CudaWeights;
use crate::config::ModelConfig;
use crate::moe::{ExpertActivation, RoutingMethod};
use crate::perfect_router::{balanced_logits, BalancedKey};
use crate::plan::{Attention, FeedForward, LatentAttention, Moe, SelfAttention};
use anyhow::{bail, ensure, Result};
use lumen_backend::cuda::nccl::Communicator;
use lumen_backend::cuda::{
    moe_max_tiles, AttentionArgs, DType, DeviceBuffer, DeviceTensor, Fp8Rows, Gpu, Kernels, Linear, MlaShape, RopeArgs, RowScales, Tensor,
    MLA_BLOCK_ROWS, MOE_TILE_ROWS,
};
use lumen_trace::instrument::{span, Category};

/// The device buffers a step computes in, sized for `max_tokens` tokens and `max_rows` rows of
/// logits.
pub struct Activations {
    residual: DeviceBuffer,
    normed: DeviceBuffer,
    qkv: DeviceBuffer,
    q: DeviceBuffer,
    attn: DeviceBuffer,
    delta: DeviceBuffer,
    gate_up: DeviceBuffer,
    act: DeviceBuffer,
    last: DeviceBuffer,
    /// `[max_rows, vocab]` f32.
    pub logits: DeviceBuffer,
    part_acc: DeviceBuffer,
    part_ml: DeviceBuffer,
    /// Token-splits the attention partial buffers hold.
    pub part_capacity: usize,
    moe: Option<MoeBuffers>,
    mla: Option<MlaBuffers>,
}

/// What a latent-attention layer computes in (see the module doc), bf16 each.
struct MlaBuffers {
    /// The q LoRA's rows and their norm, `[tokens, q_lora_rank]` each, where the model has one.
    q_low: Option<(DeviceBuffer, DeviceBuffer)>,
    /// `[tokens, heads·(nope + rope)]`.
    q: DeviceBuffer,
    /// The kv_a projection, `[tokens, latent + rope]`.
    compressed: DeviceBuffer,
    /// The absorbed queries, `[tokens, heads, latent + rope]`.
    q_lat: DeviceBuffer,
    /// Each head's attention over the latents, `[tokens, heads, latent]`.
    o_lat: DeviceBuffer,
}

/// What a mixture-of-experts layer computes in, for `slots` = tokens × top-k (token, expert)
/// pairs.
struct MoeBuffers {
    /// `[tokens, experts]` f32: the gate's logits, and the perfect router's for this step.
    logits: DeviceBuffer,
    balanced: DeviceBuffer,
    /// Per slot (token-major): the chosen expert (u32) and its weight (f32).
    experts: DeviceBuffer,
    weights: DeviceBuffer,
    /// The grouped GEMM's layout (`Kernels::moe_align`), u32 each: per slot its padded row in
    /// expert order; per tile its expert; per padded row its slot; and the step's tile count.
    position: DeviceBuffer,
    tile_expert: DeviceBuffer,
    rows: DeviceBuffer,
    num_tiles: DeviceBuffer,
    /// Rows in expert order, padded to whole tiles (in slot order for `moe_gemv` steps): gate/up
    /// `[rows, 2·f]`, activations `[rows, f]` and outputs `[rows, hidden]`, bf16.
    gate_up: DeviceBuffer,
    act: DeviceBuffer,
    y: DeviceBuffer,
    /// The shared expert's gate/up `[tokens, 2·fs]`, activations `[tokens, fs]` and output
    /// `[tokens, hidden]` (bf16), and its gate's logits (`[tokens]` f32), where the model has one.
    shared: Option<(DeviceBuffer, DeviceBuffer, DeviceBuffer, DeviceBuffer)>,
    /// `[moe layers, experts]` u32: the step's slots per expert, zeroed at its start.
    load: DeviceBuffer,
    moe_layers: usize,
}

/// Most routed slots (tokens × top-k) a MoE layer runs on the device alone with `moe_gemv`: each
/// slot reads its expert's weights, so beyond a few tokens grouping rows by expert for GEMMs
/// reads less.
pub const MOE_DEVICE_SLOTS: usize = 32;

/// Rows one launch of an expert activation kernel takes: the grid's y axis holds the rows.
const ACTIVATION_ROWS_PER_LAUNCH: usize = 65_535;

/// The MLA kernels' shape of a latent-attention model.
pub fn mla_shape(c: &ModelConfig) -> Option<MlaShape> {
    c.mla.as_ref().map(|m| MlaShape {
        heads: c.num_heads,
        nope: m.qk_nope_head_dim,
        rope: m.qk_rope_head_dim,
        v_dim: m.v_head_dim,
        latent: m.kv_lora_rank,
    })
}

/// Attention blocks one tile of one decode token takes in a KV split: one per KV head, or for
/// latent attention one per `MLA_BLOCK_ROWS` heads.
pub fn attention_blocks_per_token(c: &ModelConfig) -> usize {
    match &c.mla {
        Some(_) => c.num_heads.div_ceil(MLA_BLOCK_ROWS),
        None => c.num_kv_heads,
    }
}

/// Whether a step can replay as a CUDA graph on a MoE model: no balanced logits need uploading
/// from the host (the perfect router is off). Dense models always can.
pub fn moe_graphable(c: &ModelConfig, perfect_router: bool) -> bool {
    c.moe.is_none() || !perfect_router
}

/// u32 words of a step's expert-load counters (every MoE layer's experts, layer after layer); 0
/// for a dense model.
pub fn expert_load_words(act: &Activations) -> usize {
    act.moe.as_ref().map_or(0, |b| b.load.bytes / 4)
}

/// Queues, behind the step's work, the copy of its expert-load counters into `dst` (pinned, at
/// least [`expert_load_words`] long); nothing for a dense model.
pub fn queue_expert_load(act: &Activations, gpu: &Gpu, dst: &mut [u32]) -> Result<()> {
    let Some(b) = &act.moe else { return Ok(()) };
    let words = b.load.bytes / 4;
    ensure!(dst.len() >= words, "{} words hold no expert load of {words}", dst.len());
    gpu.copy_to_host(&mut dst[..words], b.load.ptr)
}

/// A step's expert load from its counters' words (see [`queue_expert_load`]): per MoE layer, the
/// slots each expert received. Empty for a dense model.
pub fn expert_load(act: &Activations, words: &[u32]) -> Vec<Vec<u32>> {
    let Some(b) = &act.moe else { return Vec::new() };
    let experts = b.load.bytes / 4 / b.moe_layers.max(1);
    words[..b.moe_layers * experts].chunks(experts.max(1)).map(<[u32]>::to_vec).collect()
}

impl Activations {
    /// Buffers for steps of up to `max_tokens` tokens and `max_rows` logit rows, with attention
    /// split partials for `max_tokens.max(split_rows)` rows.
    pub fn new(gpu: &Gpu, c: &ModelConfig, max_tokens: usize, max_rows: usize, split_rows: usize) -> Result<Self> {
        let (t, s) = (max_tokens, max_rows);
        let (h, hd, f) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (qd, kd) = (c.num_heads * hd, c.num_kv_heads * hd);
        let alloc = |elems: usize, size: usize, what: &str| gpu.alloc(elems * size, what);
        let part_capacity = t.max(split_rows);
        let mla = mla_shape(c);
        // Each head's attention output: its values, or for latent attention its latent (the
        // partial sums) and, after W_UV, its values.
        let (head_out, head_partial) = mla.map_or((hd, hd), |shape| (shape.v_dim, shape.latent));
        Ok(Activations {
            residual: alloc(t * h, 4, "the residual stream")?,
            normed: alloc(t * h, 2, "normed activations")?,
            qkv: alloc(t * (qd + 2 * kd), 2, "qkv activations")?,
            q: alloc(t * qd, 2, "rotated queries")?,
            attn: alloc(t * c.num_heads * head_out, 2, "attention output")?,
            delta: alloc(t * h, 2, "projection output")?,
            gate_up: alloc(t * 2 * f, 2, "gate/up activations")?,
            act: alloc(t * f, 2, "MLP activations")?,
            last: alloc(s * h, 2, "last-position rows")?,
            logits: alloc(s * c.vocab_size, 4, "logits")?,
            part_acc: alloc(part_capacity * c.num_heads * head_partial, 4, "attention split partials")?,
            part_ml: alloc(part_capacity * c.num_heads * 2, 4, "attention split maxima")?,
            part_capacity,
            moe: match &c.moe {
                None => None,
                Some(m) => {
                    let (e, slots, fe) = (m.num_experts, t * m.top_k, m.expert_intermediate_size);
                    let max_tiles = moe_max_tiles(slots, e);
                    let rows = max_tiles * MOE_TILE_ROWS;
                    Some(MoeBuffers {
                        logits: alloc(t * e, 4, "router logits")?,
                        balanced: alloc(t * e, 4, "balanced router logits")?,
                        experts: alloc(slots, 4, "chosen experts")?,
                        weights: alloc(slots, 4, "routing weights")?,
                        position: alloc(slots, 4, "expert-order positions")?,
                        tile_expert: alloc(max_tiles, 4, "expert tiles")?,
                        rows: alloc(rows, 4, "expert-order slots")?,
                        num_tiles: alloc(1, 4, "expert tile count")?,
                        gate_up: alloc(rows * 2 * fe, 2, "expert gate/up")?,
                        act: alloc(rows * fe, 2, "expert activations")?,
                        y: alloc(rows * h, 2, "expert outputs")?,
                        shared: match m.shared_expert_intermediate_size {
                            None => None,
                            Some(fs) => Some((
                                alloc(t * 2 * fs, 2, "shared expert gate/up")?,
                                alloc(t * fs, 2, "shared expert activations")?,
                                alloc(t * h, 2, "shared expert output")?,
                                alloc(t, 4, "shared expert gate")?,
                            )),
                        },
                        load: alloc(c.num_moe_layers().max(1) * e, 4, "expert load")?,
                        moe_layers: c.num_moe_layers(),
                    })
                }
            },
            mla: match (mla, &c.mla) {
                (Some(shape), Some(m)) => Some(MlaBuffers {
                    q_low: match m.q_lora_rank {
                        Some(r) => Some((alloc(t * r, 2, "q LoRA rows")?, alloc(t * r, 2, "normed q LoRA rows")?)),
                        None => None,
                    },
                    q: alloc(t * shape.heads * (shape.nope + shape.rope), 2, "latent-attention queries")?,
                    compressed: alloc(t * shape.width(), 2, "compressed keys and values")?,
                    q_lat: alloc(t * shape.heads * shape.width(), 2, "absorbed queries")?,
                    o_lat: alloc(t * shape.heads * shape.latent, 2, "latent attention output")?,
                }),
                _ => None,
            },
        })
    }

    /// Scratch buffers large enough for the input and output of any of the model's products on
    /// a few rows (for timing them).
    pub fn scratch(&self) -> (&DeviceBuffer, &DeviceBuffer) {
        (&self.gate_up, &self.logits)
    }

    /// Fills every buffer with NaN bytes, so an element a kernel leaves unwritten surfaces as NaN
    /// in the logits.
    pub fn poison(&self, gpu: &Gpu) -> Result<()> {
        for b in [
            &self.residual,
            &self.normed,
            &self.qkv,
            &self.q,
            &self.attn,
            &self.delta,
            &self.gate_up,
            &self.act,
            &self.last,
            &self.logits,
            &self.part_acc,
            &self.part_ml,
        ] {
            gpu.fill(b.ptr, 0xff, b.bytes)?;
        }
        if let Some(m) = &self.mla {
            let low = m.q_low.iter().flat_map(|(a, b)| [a, b]);
            for b in low.chain([&m.q, &m.compressed, &m.q_lat, &m.o_lat]) {
                gpu.fill(b.ptr, 0xff, b.bytes)?;
            }
        }
        Ok(())
    }
}

/// The paged KV cache of every layer: `blocks` blocks of `block_size` slots, K and V in bf16 or,
/// with `fp8`, in FP8 E4M3 codes of scale 1 (TensorRT-LLM's default KV scale without
/// calibration; values beyond ±448 saturate), which holds twice the tokens. A latent-attention
/// model's cache holds instead one bf16 row per token and layer, its normed latent and rotated
/// rotary key, in `k` (`[block][slot in block][latent + rope]` per layer), and no V.
pub struct KvCache {
    k: DeviceBuffer,
    v: Option<DeviceBuffer>,
    /// Elements of one layer's K (or V, or latent) cache.
    layer_elems: usize,
    pub block_size: usize,
    pub fp8: bool,
}

impl KvCache {
    /// Bytes one token's K and V (or latent row) take over all layers.
    pub fn bytes_per_token(c: &ModelConfig, fp8: bool) -> usize {
        c.num_layers * c.kv_values_per_token_per_layer() * Self::element_bytes(fp8)
    }

    fn element_bytes(fp8: bool) -> usize {
        if fp8 {
            DType::Fp8E4M3.size()
        } else {
            DType::Bf16.size()
        }
    }

    pub fn new(gpu: &Gpu, c: &ModelConfig, blocks: usize, block_size: usize, fp8: bool) -> Result<Self> {
        if let Some(m) = &c.mla {
            ensure!(!fp8, "an FP8 KV cache for multi-head latent attention is not built on the CUDA backend yet; use a bf16 cache (no --kv-cache-dtype fp8)");
            let layer_elems = blocks * block_size * m.latent_width();
            let k = gpu.alloc(layer_elems * c.num_layers * Self::element_bytes(false), "the latent KV cache")?;
            return Ok(KvCache { k, v: None, layer_elems, block_size, fp8 });
        }
        let layer_elems = blocks * c.num_kv_heads * block_size * c.head_dim;
        let bytes = layer_elems * c.num_layers * Self::element_bytes(fp8);
        let k = gpu.alloc(bytes, "the K cache")?;
        let v = gpu.alloc(bytes, "the V cache")?;
        Ok(KvCache { k, v: Some(v), layer_elems, block_size, fp8 })
    }

    /// K and V cache addresses of `layer` (V 0 in a latent cache).
    fn layer(&self, layer: usize) -> (u64, u64) {
        let offset = layer * self.layer_elems * Self::element_bytes(self.fp8);
        (self.k.at(offset), self.v.as_ref().map_or(0, |v| v.at(offset)))
    }
}

/// Device addresses of a step's inputs (u32 arrays, laid out by the caller): token ids,
/// positions, KV slots, logits rows, attention tiles (sequence, first row, rows, first
/// position), block-table offsets and entries, and the one u32 of KV positions per split.
#[derive(Debug, Clone, Copy)]
pub struct StepInputs {
    pub tokens: u64,
    pub positions: u64,
    pub slots: u64,
    pub logit_rows: u64,
    pub tiles: u64,
    pub table_offsets: u64,
    pub table_data: u64,
    pub split_tokens: u64,
    /// The step's real token count (one u32): a replayed graph pads its batch beyond it.
    pub real_tokens: u64,
    /// The tokens the step before drew (u32 a logits row), which the token words marked
    /// [`lumen_backend::SAMPLED_TOKEN`] take.
    pub sampled: u64,
}

/// What a tensor-parallel rank's pass adds: its communicator, and the buffers its head's rows of
/// the logits (`[rows, vocab / ranks]`) and every rank's (rank after rank) are held in before
/// they are laid out as `[rows, vocab]` in the activations' logits.
pub struct RankCollectives {
    pub comm: Communicator,
    local_logits: DeviceBuffer,
    gathered: DeviceBuffer,
}

impl RankCollectives {
    /// Buffers for up to `max_rows` rows of a rank's `vocab_rows` logits.
    pub fn new(gpu: &Gpu, comm: Communicator, max_rows: usize, vocab_rows: usize) -> Result<Self> {
        let local_logits = gpu.alloc(max_rows * vocab_rows * 4, "this rank's logits")?;
        let gathered = gpu.alloc(comm.ranks * max_rows * vocab_rows * 4, "every rank's logits")?;
        Ok(RankCollectives { comm, local_logits, gathered })
    }
}

/// Where a norm writes its output `normed`: the bf16 rows, and their FP8 codes where an FP8 product
/// of them comes next ([`Linear::input_codes`]). Where that product is their only reader
/// (`product_only`: a grouped attention's fused QKV product, a dense feed-forward's gate/up) and
/// takes the codes, the bf16 rows are not written (a null address); the others (the router and
/// experts of a MoE layer, latent attention's two down products, the gather of the logits rows)
/// read the bf16 rows.
fn norm_outputs(linear: &mut Linear, normed: Tensor, product_only: bool) -> (u64, Fp8Rows) {
    let codes = linear.input_codes(normed);
    let rows = if product_only && codes.codes != 0 { 0 } else { normed.ptr };
    (rows, codes)
}

/// One step's shape, as the launches see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepShape {
    pub tokens: usize,
    /// Attention tiles of decode tokens and short chunks (the CUDA-core kernel, or the
    /// tensor-core decode kernel for one-token tiles where `Kernels::attention` chooses it).
    pub tiles: usize,
    /// Most query rows (tokens × heads of a GQA group) in one of those.
    pub tile_rows: usize,
    /// Attention tiles for the tensor-core prefill kernel, after the others.
    pub prefill_tiles: usize,
    /// Rows of logits.
    pub rows: usize,
    /// Attention splits in the grid of the decode tiles.
    pub splits: usize,
    /// Attention splits in the grid of the prefill tiles: `splits`, or one where the decode tiles
    /// alone are split.
    pub prefill_splits: usize,
    /// The first tokens whose split partials are merged (`AttentionArgs::merged_tokens`).
    pub merged_tokens: usize,
    /// Batch-invariant mode: kernels keep each row's bits whatever the step.
    pub batch_invariant: bool,
}

/// Queues the forward pass of one step: embedding, every layer, the final norm, the gather of
/// the logits rows and the output head into `act.logits` (f32); each MoE layer counts its expert
/// load on the device ([`expert_load`]). For a tensor-parallel rank
/// (`rank`), `c` is the rank's config: the output and down products are partial sums, summed over
/// the ranks in place, and the head's rows of the logits are gathered from every rank.
#[allow(clippy::too_many_arguments)]
pub fn enqueue_forward(
    w: &CudaWeights,
    c: &ModelConfig,
    linear: &mut Linear,
    act: &Activations,
    kv: &KvCache,
    inputs: &StepInputs,
    shape: StepShape,
    rank: Option<&RankCollectives>,
) -> Result<()> {
    let (k, gpu) = (&w.kernels, &*w.gpu);
    let t = shape.tokens;
    let (h, eps) = (c.hidden_size, c.rms_eps);
    let layers = &w.weights.layers;
    let Some(first) = layers.first() else { bail!("the model has no layers") };
    let all_reduce = |b: &DeviceBuffer| rank.map_or(Ok(()), |r| r.comm.all_reduce_sum(gpu, b.ptr, t * h, DType::Bf16));
    if let Some(b) = &act.moe {
        gpu.fill(b.load.ptr, 0, b.load.bytes)?;
    }
    let mut moe_layer = 0;
    let pass = Pass { w, c, act, kv, inputs, shape };
    // The norms write their output's FP8 codes for an FP8 product of it (Linear::input_codes),
    // and no bf16 rows where that product is their only reader (norm_outputs).
    let normed = act.normed.tensor(DType::Bf16, t, h);
    let (normed_rows, codes) = norm_outputs(linear, normed, matches!(first.attention, SelfAttention::Grouped(_)));
    k.embed_rms_norm(
        gpu,
        inputs.tokens,
        inputs.sampled,
        t,
        w.weights.embed.ptr(),
        first.input_norm.ptr(),
        eps,
        h,
        // The embedding's own rows: the whole vocabulary, also on a tensor-parallel rank.
        w.weights.embed.rows,
        act.residual.ptr,
        normed_rows,
        codes,
    )?;
    // A product's output rows may leave their FP8 activation scales to the norm that adds them
    // (RowScales), except where a sum over ranks comes first.
    let leave_row_scales = rank.is_none();
    for (li, layer) in layers.iter().enumerate() {
        let delta_scale = match &layer.attention {
            SelfAttention::Grouped(a) => pass.grouped_attention(linear, a, li, &all_reduce, leave_row_scales)?,
            SelfAttention::Latent(a) => {
                ensure!(rank.is_none(), "layer {li}: latent attention does not run tensor-parallel on CUDA");
                pass.latent_attention(linear, a, li)?;
                RowScales::default()
            }
        };
        let (normed_rows, codes) = norm_outputs(linear, normed, matches!(layer.feed_forward, FeedForward::Dense { .. }));
        let post_attention_norm = layer.post_attention_norm.ptr();
        k.add_rms_norm(gpu, t, act.residual.ptr, act.delta.ptr, delta_scale, post_attention_norm, eps, h, normed_rows, codes)?;
        let delta_scale = pass.feed_forward(linear, &layer.feed_forward, li, &mut moe_layer, &all_reduce, leave_row_scales)?;
        let next = layers.get(li + 1);
        let next_norm = next.map_or(w.weights.final_norm.ptr(), |n| n.input_norm.ptr());
        // After the last layer the rows that need logits are gathered from the bf16 rows.
        let grouped_next = next.is_some_and(|n| matches!(n.attention, SelfAttention::Grouped(_)));
        let (normed_rows, codes) = norm_outputs(linear, normed, grouped_next);
        k.add_rms_norm(gpu, t, act.residual.ptr, act.delta.ptr, delta_scale, next_norm, eps, h, normed_rows, codes)?;
    }
    k.gather_rows(gpu, act.normed.ptr, inputs.logit_rows, shape.rows, h, act.last.ptr)?;
    let last = act.last.tensor(DType::Bf16, shape.rows, h);
    let Some(rank) = rank else {
        return linear.run(gpu, k, last, w.head(), act.logits.tensor(DType::F32, shape.rows, c.vocab_size));
    };
    // This rank's rows of the vocabulary, then everyone's, laid out row by row.
    let (rows, part) = (shape.rows, c.vocab_size);
    linear.run(gpu, k, last, w.head(), rank.local_logits.tensor(DType::F32, rows, part))?;
    rank.comm.all_gather(gpu, rank.local_logits.ptr, rank.gathered.ptr, rows * part, DType::F32)?;
    let vocab = part * rank.comm.ranks;
    for r in 0..rank.comm.ranks {
        gpu.copy_2d(act.logits.at(r * part * 4), vocab * 4, rank.gathered.at(r * rows * part * 4), part * 4, part * 4, rows)?;
    }
    Ok(())
}

/// The routing method's index in `moe_route`.
fn route_method(method: RoutingMethod) -> u32 {
    match method {
        RoutingMethod::Default => 0,
        RoutingMethod::Renormalize => 1,
        RoutingMethod::RenormalizeNaive => 2,
        RoutingMethod::Llama4 => 3,
        RoutingMethod::DeepSeekV3 => 4,
    }
}

/// One step's forward pass as each layer's launches see it: the weights, the config, the buffers,
/// the cache, where the step's inputs lie, and its shape.
#[derive(Clone, Copy)]
struct Pass<'a> {
    w: &'a CudaWeights,
    c: &'a ModelConfig,
    act: &'a Activations,
    kv: &'a KvCache,
    inputs: &'a StepInputs,
    shape: StepShape,
}

impl Pass<'_> {
    /// The attention launch's fields that come from the step rather than the layer; the layer's
    /// (queries, caches, window, sinks, output) are left empty.
    fn attention_args(&self) -> AttentionArgs {
        let Pass { c, act, kv, inputs, shape, .. } = *self;
        AttentionArgs {
            q: 0,
            k_cache: 0,
            v_cache: 0,
            kv_fp8: false,
            tiles: inputs.tiles,
            num_tiles: shape.tiles,
            max_tile_rows: shape.tile_rows,
            prefill_tiles: shape.prefill_tiles,
            table_offsets: inputs.table_offsets,
            table_data: inputs.table_data,
            positions: inputs.positions,
            num_tokens: shape.tokens,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            block_size: kv.block_size,
            window: 0,
            sinks: 0,
            split_tokens: inputs.split_tokens,
            splits: shape.splits,
            prefill_splits: shape.prefill_splits,
            merged_tokens: shape.merged_tokens,
            batch_invariant: shape.batch_invariant,
            out: 0,
            part_acc: act.part_acc.ptr,
            part_ml: act.part_ml.ptr,
        }
    }

    /// A layer's feed-forward block on `act.normed` into `act.delta`: the dense SwiGLU (its down
    /// product summed over tensor-parallel ranks by `all_reduce`) or the `moe_layer`-th MoE block,
    /// which advances the count. Returns delta's row scales still to apply, which the dense
    /// block's FP8 down product leaves to the reader with `leave_row_scales`.
    fn feed_forward(
        &self,
        linear: &mut Linear,
        feed_forward: &FeedForward<DeviceTensor, DeviceTensor>,
        layer: usize,
        moe_layer: &mut usize,
        all_reduce: &dyn Fn(&DeviceBuffer) -> Result<()>,
        leave_row_scales: bool,
    ) -> Result<RowScales> {
        let Pass { w, c, act, .. } = *self;
        let (k, gpu, t) = (&w.kernels, &*w.gpu, self.shape.tokens);
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let bf16 = |b: &DeviceBuffer, cols: usize| b.tensor(DType::Bf16, t, cols);
        match feed_forward {
            FeedForward::Dense { gate_up, down } => {
                let (x, act_out, scratch) = (bf16(&act.normed, h), bf16(&act.act, f), bf16(&act.gate_up, 2 * f));
                let delta = bf16(&act.delta, h);
                let scales = linear.run_feed_forward(gpu, k, x, gate_up.view(), down.view(), act_out, scratch, delta, leave_row_scales)?;
                all_reduce(&act.delta)?;
                Ok(scales)
            }
            FeedForward::Moe(moe) => {
                self.moe(linear, moe, layer, *moe_layer)?;
                *moe_layer += 1;
                Ok(RowScales::default())
            }
        }
    }

    /// Layer `layer`'s grouped-query attention on `act.normed` into `act.delta`: the fused qkv
    /// product, RoPE and the cache write, attention, and the output product (with its bias, summed
    /// over tensor-parallel ranks by `all_reduce`).
    fn grouped_attention(
        &self,
        linear: &mut Linear,
        a: &Attention<DeviceTensor, DeviceTensor>,
        layer: usize,
        all_reduce: &dyn Fn(&DeviceBuffer) -> Result<()>,
        leave_row_scales: bool,
    ) -> Result<RowScales> {
        let Pass { w, c, act, kv, inputs, shape } = *self;
        let (k, gpu) = (&w.kernels, &*w.gpu);
        let (t, h, hd) = (shape.tokens, c.hidden_size, c.head_dim);
        let (qd, kd) = (c.num_heads * hd, c.num_kv_heads * hd);
        let bf16 = |b: &DeviceBuffer, cols: usize| b.tensor(DType::Bf16, t, cols);
        let (k_cache, v_cache) = kv.layer(layer);
        let qkv_scale = linear.run_leaving_row_scales(gpu, k, bf16(&act.normed, h), a.qkv.view(), bf16(&act.qkv, qd + 2 * kd))?;
        let rope = RopeArgs {
            qkv: act.qkv.ptr,
            row_scale: qkv_scale,
            bias: a.qkv_bias.as_ref().map_or(0, |b| b.ptr()),
            q_norm: a.q_norm.as_ref().map_or(0, |b| b.ptr()),
            k_norm: a.k_norm.as_ref().map_or(0, |b| b.ptr()),
            norm_full_width: c.qk_norm_full_width,
            eps: c.rms_eps,
            positions: inputs.positions,
            slots: inputs.slots,
            inv_freq: w.inv_freq.ptr,
            attention_factor: c.rope_attention_factor() as f32,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: hd,
            block_size: kv.block_size,
            q_out: act.q.ptr,
            k_cache,
            v_cache,
            kv_fp8: kv.fp8,
        };
        k.rope_kv_write(gpu, t, &rope)?;
        let attention = AttentionArgs {
            q: act.q.ptr,
            k_cache,
            v_cache,
            kv_fp8: kv.fp8,
            window: c.layer_window(layer).unwrap_or(0),
            sinks: a.sinks.as_ref().map_or(0, |s| s.ptr()),
            out: act.attn.ptr,
            ..self.attention_args()
        };
        k.attention(gpu, &attention)?;
        let delta = bf16(&act.delta, h);
        let pending = linear.run_leaving_row_scales(gpu, k, bf16(&act.attn, qd), a.output.view(), delta)?;
        // The row scales go to the norm only where no bias is added first.
        let scales = k.settle_row_scales(gpu, delta, pending, leave_row_scales && a.output_bias.is_none())?;
        // Before the sum over ranks: a rank's plan keeps the bias on rank 0 only.
        if let Some(bias) = &a.output_bias {
            k.add_bias(gpu, t, h, act.delta.ptr, bias.ptr())?;
        }
        all_reduce(&act.delta)?;
        Ok(scales)
    }

    /// Layer `layer`'s latent attention on `act.normed` into `act.delta` (see the module doc).
    fn latent_attention(&self, linear: &mut Linear, a: &LatentAttention<DeviceTensor, DeviceTensor>, layer: usize) -> Result<()> {
        let Pass { w, c, act, kv, inputs, shape } = *self;
        let (k, gpu) = (&w.kernels, &*w.gpu);
        let (Some(mla), Some(b), Some(scale)) = (mla_shape(c), act.mla.as_ref(), c.mla_softmax_scale()) else {
            bail!("layer {layer}: latent attention without the model's MLA config");
        };
        ensure!(a.kv_b.dtype == DType::Bf16, "layer {layer}: the MLA kernels read kv_b in bf16, not {:?}", a.kv_b.dtype);
        let (t, h) = (shape.tokens, c.hidden_size);
        let bf16 = |b: &DeviceBuffer, cols: usize| b.tensor(DType::Bf16, t, cols);
        let x = bf16(&act.normed, h);
        let q = bf16(&b.q, mla.heads * (mla.nope + mla.rope));
        match (&a.q_a, &a.q_a_norm, &b.q_low) {
            (Some(q_a), Some(norm), Some((low, normed))) => {
                let r = q_a.rows;
                linear.run(gpu, k, x, q_a.view(), bf16(low, r))?;
                k.rms_norm_rows(gpu, t, low.ptr, norm.ptr(), c.rms_eps, r, normed.ptr)?;
                linear.run(gpu, k, bf16(normed, r), a.q.view(), q)?;
            }
            _ => linear.run(gpu, k, x, a.q.view(), q)?,
        }
        linear.run(gpu, k, x, a.kv_a.view(), bf16(&b.compressed, mla.width()))?;
        let (cache, _) = kv.layer(layer);
        let attention_factor = c.rope_attention_factor() as f32;
        let (positions, slots) = (inputs.positions, inputs.slots);
        let (compressed, kv_norm, kv_b) = (b.compressed.ptr, a.kv_a_norm.ptr(), a.kv_b.ptr());
        k.mla_rope_latent_write(
            gpu,
            t,
            mla,
            compressed,
            kv_norm,
            c.rms_eps,
            b.q.ptr,
            positions,
            slots,
            w.inv_freq.ptr,
            attention_factor,
            b.q_lat.ptr,
            cache,
        )?;
        k.mla_absorb_query(gpu, t, mla, b.q.ptr, kv_b, b.q_lat.ptr)?;
        let attention = AttentionArgs { q: b.q_lat.ptr, k_cache: cache, head_dim: mla.latent, out: b.o_lat.ptr, ..self.attention_args() };
        k.mla_attention(gpu, &attention, mla, scale)?;
        k.mla_value_heads(gpu, t, mla, b.o_lat.ptr, kv_b, act.attn.ptr)?;
        linear.run(gpu, k, bf16(&act.attn, mla.heads * mla.v_dim), a.output.view(), bf16(&act.delta, h))
    }

    /// One mixture-of-experts layer (layer `layer`, the `moe_layer`-th with experts) on `act.normed`
    /// into `act.delta`, for `t` tokens (see the module doc). The first MoE layer uploads this step's
    /// balanced logits when the perfect router is on.
    fn moe(&self, linear: &mut Linear, moe: &Moe<DeviceTensor, DeviceTensor>, layer: usize, moe_layer: usize) -> Result<()> {
        let Pass { w, c, act, .. } = *self;
        let (t, real_tokens) = (self.shape.tokens, self.inputs.real_tokens);
        let (k, gpu): (&Kernels, &Gpu) = (&w.kernels, &w.gpu);
        let m = c.moe.as_ref().expect("a MoE layer has the MoE config");
        let b = act.moe.as_ref().expect("MoE buffers for a MoE model");
        let (h, e, top, fe) = (c.hidden_size, m.num_experts, m.top_k, m.expert_intermediate_size);
        let slots = t * top;
        let stage = span(Category::Debug, "moe gate");
        linear.run(gpu, k, act.normed.tensor(DType::Bf16, t, h), moe.router.view(), b.logits.tensor(DType::F32, t, e))?;
        if w.perfect_router {
            if moe_layer == 0 {
                let key = BalancedKey { tokens: t, num_experts: e, top_k: top, method: m.routing, ep_ranks: 1, groups: m.groups };
                gpu.copy_to_device(b.balanced.ptr, &balanced_logits(key)?[..])?;
            }
            // The gate GEMM ran; its logits give way to the balanced ones.
            gpu.copy_2d(b.logits.ptr, t * e * 4, b.balanced.ptr, t * e * 4, t * e * 4, 1)?;
        }
        drop(stage);
        let stage = span(Category::Debug, "moe route");
        // The perfect router's logits replace the biased ones (the router's bias and the planted
        // skew), as on the CPU.
        let zipf = w.gate_bias.as_ref().filter(|_| !w.perfect_router).map_or(0, |g| g.ptr);
        let router_bias = moe.router_bias.as_ref().filter(|_| !w.perfect_router).map_or(0, |b| b.ptr());
        // DeepSeek-V3's correction bias is left out under the perfect router too, as on the CPU.
        let correction = moe.score_correction_bias.as_ref().filter(|_| !w.perfect_router).map_or(0, |b| b.ptr());
        let groups = (m.groups.n_group, m.groups.topk_group);
        let method = route_method(m.routing);
        k.moe_route(
            gpu,
            b.logits.ptr,
            router_bias,
            zipf,
            correction,
            groups,
            t,
            e,
            top,
            method,
            m.routed_scaling_factor,
            real_tokens,
            b.experts.ptr,
            b.weights.ptr,
            b.load.at(moe_layer * e * 4),
        )?;
        drop(stage);
        let tables = w.expert_tables[layer].as_ref().expect("a MoE layer has its expert tables");
        let bias_table = |table: &Option<DeviceBuffer>| table.as_ref().map_or(0, |t| t.ptr);
        let (gate_up_bias, down_bias) = (bias_table(&tables.gate_up_bias), bias_table(&tables.down_bias));
        let positions = if slots <= MOE_DEVICE_SLOTS {
            // Every slot's products straight from the routing, in slot order.
            let _experts = span(Category::Debug, "moe experts");
            let (experts, activation) = (b.experts.ptr, Some(m.activation));
            let (normed, gate_up) = (act.normed.ptr, tables.gate_up.ptr);
            k.moe_gemv(gpu, normed, top, experts, gate_up, gate_up_bias, slots, fe, h, activation, false, None, b.act.ptr)?;
            // The routing was written two launches back: the down rows may start early.
            k.moe_gemv(gpu, b.act.ptr, 1, experts, tables.down.ptr, down_bias, slots, h, fe, None, true, None, b.y.ptr)?;
            0
        } else {
            // The slots laid out by expert in whole tiles, then both products as grouped GEMMs.
            let tiles = moe_max_tiles(slots, e);
            let permute = span(Category::Debug, "moe permute");
            k.moe_align(gpu, b.experts.ptr, slots, e, b.tile_expert.ptr, b.rows.ptr, b.position.ptr, b.num_tiles.ptr)?;
            drop(permute);
            let _experts = span(Category::Debug, "moe experts");
            let (rows, tile_expert, num_tiles) = (b.rows.ptr, b.tile_expert.ptr, b.num_tiles.ptr);
            k.moe_grouped_gemm(
                gpu,
                act.normed.ptr,
                top,
                rows,
                tile_expert,
                num_tiles,
                tiles,
                tables.gate_up.ptr,
                gate_up_bias,
                2 * fe,
                h,
                b.gate_up.ptr,
            )?;
            // The activation kernels take rows on the grid's y axis (at most 65,535 a launch).
            let rows_total = tiles * MOE_TILE_ROWS;
            for first in (0..rows_total).step_by(ACTIVATION_ROWS_PER_LAUNCH) {
                let n = ACTIVATION_ROWS_PER_LAUNCH.min(rows_total - first);
                let (gate_up, out) = (b.gate_up.at(first * 2 * fe * 2), b.act.at(first * fe * 2));
                match m.activation {
                    ExpertActivation::SwiGlu => k.silu_mul(gpu, n, fe, gate_up, RowScales::default(), out)?,
                    ExpertActivation::ClampedSwiGlu { alpha, limit } => k.clamped_swiglu(gpu, n, fe, gate_up, alpha, limit, out)?,
                }
            }
            k.moe_grouped_gemm(gpu, b.act.ptr, 1, 0, tile_expert, num_tiles, tiles, tables.down.ptr, down_bias, h, fe, b.y.ptr)?;
            b.position.ptr
        };
        let (mut shared_out, mut shared_gate) = (0, 0);
        if let (Some(shared), Some((gate_up, sact, out, gate))) = (&moe.shared, &b.shared) {
            let _shared = span(Category::Debug, "moe shared expert");
            let fs = shared.expert.down.cols;
            let x = act.normed.tensor(DType::Bf16, t, h);
            let (scratch, activated) = (gate_up.tensor(DType::Bf16, t, 2 * fs), sact.tensor(DType::Bf16, t, fs));
            let (gate_up_w, down_w) = (shared.expert.gate_up.view(), shared.expert.down.view());
            linear.run_feed_forward(gpu, k, x, gate_up_w, down_w, activated, scratch, out.tensor(DType::Bf16, t, h), false)?;
            shared_out = out.ptr;
            if let Some(g) = &shared.gate {
                linear.run(gpu, k, x, g.view(), gate.tensor(DType::F32, t, 1))?;
                shared_gate = gate.ptr;
            }
        }
        let _unpermute = span(Category::Debug, "moe unpermute");
        k.moe_combine(gpu, b.y.ptr, positions, b.weights.ptr, t, top, h, shared_out, shared_gate, act.delta.ptr)
    }
}
