//! The llama-family decoder's forward pass on the CPU backend, over a flattened batch that mixes
//! prefill chunks and decode tokens. It walks the filled layer plan ([`crate::plan`]): optional
//! Qwen2/GPT-OSS biases, Qwen3's per-head or OLMoE's full-width q/k norms, GPT-OSS's attention
//! sinks, DeepSeek's latent attention (run by [`crate::mla_cpu`]), the feed-forward variant (dense,
//! or a mixture of experts run by `moe_cpu`), a tied or own head; each layer's sliding window (Mistral's on every layer, GPT-OSS's on
//! alternate ones) and the RoPE table (YaRN's included) come from the config. With FP8 weights,
//! each product's input is quantized with one dynamic scale first, as the CUDA path quantizes it.

use crate::config::ModelConfig;
use crate::mla_cpu::{mla_attention, AbsorbedHeads, MlaForm, MlaStep};
use crate::moe_cpu::moe_forward;
use crate::plan::{Attention, FeedForward, Head, Quantization, SelfAttention};
use crate::weights::CpuWeights;
use lumen_backend::cpu::{self, LayerAttention, PackedMatrix, RopeTable};
use lumen_backend::{AttentionSeq, KvStorage};
use lumen_trace::instrument::{span, span_named, Category};

/// One forward step's inputs: the flattened tokens and where each one's K/V goes.
pub struct ForwardBatch<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [usize],
    /// KV-cache slot of each token (`block * block_size + offset`).
    pub slots: &'a [usize],
    pub seqs: &'a [AttentionSeq<'a>],
    /// Flattened-batch rows whose logits are wanted, in output order.
    pub logit_rows: &'a [usize],
}

/// A [`ForwardBatch`] that owns its inputs, to hand one step to other threads (the ranks of a
/// tensor-parallel model).
pub struct OwnedBatch {
    tokens: Vec<u32>,
    positions: Vec<usize>,
    slots: Vec<usize>,
    /// Per sequence: start row, length, first position, block table.
    seqs: Vec<(usize, usize, usize, Vec<u32>)>,
    logit_rows: Vec<usize>,
}

impl OwnedBatch {
    pub fn of(batch: &ForwardBatch) -> Self {
        OwnedBatch {
            tokens: batch.tokens.to_vec(),
            positions: batch.positions.to_vec(),
            slots: batch.slots.to_vec(),
            seqs: batch.seqs.iter().map(|s| (s.start, s.len, s.first_pos, s.block_table.to_vec())).collect(),
            logit_rows: batch.logit_rows.to_vec(),
        }
    }

    /// Runs `f` on the batch, borrowed.
    pub fn with<T>(&self, f: impl FnOnce(&ForwardBatch) -> T) -> T {
        let seqs: Vec<AttentionSeq> = self
            .seqs
            .iter()
            .map(|(start, len, first_pos, table)| AttentionSeq { start: *start, len: *len, first_pos: *first_pos, block_table: table })
            .collect();
        f(&ForwardBatch { tokens: &self.tokens, positions: &self.positions, slots: &self.slots, seqs: &seqs, logit_rows: &self.logit_rows })
    }
}

pub struct Decoder {
    pub config: ModelConfig,
    pub weights: CpuWeights,
    /// The embedding packed as a matrix, when the output head is tied to it.
    tied_head: Option<PackedMatrix>,
    rope: RopeTable,
    /// How the layers' projection matrices were quantized at load.
    pub quantization: Quantization,
    /// Whether the MoE layers route with the perfect router's balanced logits.
    pub perfect_router: bool,
    /// Each latent-attention layer's up-projection split per head, for the absorbed form.
    absorbed: Vec<Option<AbsorbedHeads>>,
    /// Which form latent attention runs sequences in.
    pub mla_form: MlaForm,
}

/// The grouped-query attention's buffers for a step of `t` tokens, reused layer after layer.
pub(crate) struct GroupedScratch {
    qkv: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
}

impl GroupedScratch {
    pub(crate) fn new(c: &ModelConfig, t: usize) -> Self {
        let (qd, kd) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        GroupedScratch {
            qkv: vec![0.0; t * (qd + 2 * kd)],
            q: vec![0.0; t * qd],
            k: vec![0.0; t * kd],
            v: vec![0.0; t * kd],
            attn: vec![0.0; t * qd],
        }
    }
}

/// What one forward step returns.
pub struct ForwardOutput {
    /// `[logit_rows.len(), vocab]`.
    pub logits: Vec<f32>,
    /// For each MoE layer in layer order, the (token, expert) assignments each expert received;
    /// empty for a dense model.
    pub expert_load: Vec<Vec<u32>>,
}

impl Decoder {
    pub fn new(config: ModelConfig, weights: CpuWeights, tied_head: Option<PackedMatrix>, quantization: Quantization) -> Self {
        let rope = RopeTable { inv_freq: config.rope_inv_freq(), attention_factor: config.rope_attention_factor() };
        let absorbed = weights
            .layers
            .iter()
            .map(|l| match (&l.attention, &config.mla) {
                (SelfAttention::Latent(a), Some(m)) => Some(AbsorbedHeads::from_kv_b(&a.kv_b, m, config.num_heads)),
                _ => None,
            })
            .collect();
        Decoder { config, weights, tied_head, rope, quantization, perfect_router: false, absorbed, mla_form: MlaForm::ByPhase }
    }

    /// The decoder with the perfect router on or off.
    pub fn with_perfect_router(self, perfect_router: bool) -> Self {
        Decoder { perfect_router, ..self }
    }

    /// `out = x · wᵀ` for a layer projection: with FP8 weights, of `x` quantized to FP8 with one
    /// scale a row (bf16 first, the type CUDA holds activations in).
    fn project(&self, x: &[f32], t: usize, w: &PackedMatrix, out: &mut [f32]) {
        match self.quantization {
            Quantization::None => cpu::matmul(x, t, w, out),
            Quantization::Fp8 => {
                let mut quantized: Vec<f32> = x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
                lumen_backend::fp8::fake_quantize_rows(&mut quantized, w.k);
                cpu::matmul(&quantized, t, w, out)
            }
        }
    }

    pub(crate) fn head(&self) -> &PackedMatrix {
        match &self.weights.head {
            Head::Own(m) => m,
            Head::Tied => self.tied_head.as_ref().expect("a tied head is packed at load"),
        }
    }

    /// A KV store of `num_blocks` blocks of `block_size` slots shaped for this model: keys and
    /// values, or latent rows.
    pub fn new_kv_storage(&self, num_blocks: usize, block_size: usize) -> KvStorage {
        let c = &self.config;
        match &c.mla {
            Some(m) => KvStorage::latent(c.num_layers, num_blocks, block_size, m.latent_width()),
            None => KvStorage::new(c.num_layers, num_blocks, block_size, c.num_kv_heads, c.head_dim),
        }
    }

    /// Runs the batch, writing every token's K/V into `kv`; returns `[logit_rows.len(), vocab]`.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut KvStorage) -> Vec<f32> {
        self.forward_step(batch, kv).logits
    }

    /// Layer `li`'s grouped-query attention of the `t` rows of `normed`, its output projection
    /// (and bias) into `delta`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn grouped_attention(
        &self,
        a: &Attention<PackedMatrix, Vec<f32>>,
        li: usize,
        batch: &ForwardBatch,
        kv: &mut KvStorage,
        normed: &[f32],
        scratch: &mut GroupedScratch,
        delta: &mut [f32],
    ) {
        let c = &self.config;
        let t = batch.tokens.len();
        let GroupedScratch { qkv, q, k, v, attn } = scratch;
        let (qd, kd) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let op = span(Category::Debug, "qkv_proj");
        self.project(normed, t, &a.qkv, qkv);
        for (i, row) in qkv.chunks_mut(qd + 2 * kd).enumerate() {
            if let Some(b) = &a.qkv_bias {
                row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
            }
            q[i * qd..(i + 1) * qd].copy_from_slice(&row[..qd]);
            k[i * kd..(i + 1) * kd].copy_from_slice(&row[qd..qd + kd]);
            v[i * kd..(i + 1) * kd].copy_from_slice(&row[qd + kd..]);
        }
        drop(op);
        let op = span(Category::Debug, "rope + kv write");
        if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
            // Each norm covers chunks of its own width: one head, or OLMoE's whole projection.
            cpu::rms_norm_heads(q, qn, c.rms_eps);
            cpu::rms_norm_heads(k, kn, c.rms_eps);
        }
        cpu::apply_rope(q, c.num_heads, batch.positions, &self.rope);
        cpu::apply_rope(k, c.num_kv_heads, batch.positions, &self.rope);
        kv.write(li, batch.slots, k, v);
        drop(op);
        let op = span(Category::Debug, "attention");
        let variant = LayerAttention { window: c.layer_window(li), sinks: a.sinks.as_deref() };
        cpu::paged_attention(q, c.num_heads, kv, li, batch.seqs, variant, attn);
        drop(op);
        let _op = span(Category::Debug, "o_proj + norm");
        self.project(attn, t, &a.output, delta);
        if let Some(b) = &a.output_bias {
            delta.chunks_mut(c.hidden_size).for_each(|row| row.iter_mut().zip(b).for_each(|(x, b)| *x += b));
        }
    }

    /// Layer `li`'s feed-forward of the `t` rows of `normed` into `delta` (`gate_up` and `act`
    /// are a dense layer's scratch); returns a MoE layer's expert load.
    pub(crate) fn feed_forward(
        &self,
        li: usize,
        normed: &[f32],
        t: usize,
        delta: &mut [f32],
        gate_up: &mut [f32],
        act: &mut [f32],
    ) -> Option<Vec<u32>> {
        let _op = span(Category::Debug, "mlp");
        match &self.weights.layers[li].feed_forward {
            FeedForward::Dense { gate_up: w_gate_up, down } => {
                let f = down.k;
                self.project(normed, t, w_gate_up, &mut gate_up[..t * 2 * f]);
                cpu::silu_mul(&gate_up[..t * 2 * f], f, &mut act[..t * f]);
                self.project(&act[..t * f], t, down, delta);
                None
            }
            FeedForward::Moe(moe) => {
                let config = self.config.moe.as_ref().expect("a MoE layer is planned from a MoE config");
                let project = |x: &[f32], rows: usize, w: &PackedMatrix, out: &mut [f32]| self.project(x, rows, w, out);
                Some(moe_forward(moe, config, self.perfect_router, normed, t, &project, delta))
            }
        }
    }

    /// Runs the batch, writing every token's K/V into `kv`; returns the logits and the expert
    /// load of every MoE layer.
    pub fn forward_step(&self, batch: &ForwardBatch, kv: &mut KvStorage) -> ForwardOutput {
        let c = &self.config;
        let w = &self.weights;
        let t = batch.tokens.len();
        let h = c.hidden_size;
        let f = c.intermediate_size;

        let mut residual = vec![0.0f32; t * h];
        for (row, &tok) in residual.chunks_mut(h).zip(batch.tokens) {
            row.copy_from_slice(&w.embed[tok as usize * h..(tok as usize + 1) * h]);
        }
        let mut normed = vec![0.0f32; t * h];
        cpu::rms_norm(&residual, &w.layers[0].input_norm, c.rms_eps, &mut normed);

        let mut scratch = GroupedScratch::new(c, t);
        let mut delta = vec![0.0f32; t * h];
        let mut gate_up = vec![0.0f32; t * 2 * f];
        let mut act = vec![0.0f32; t * f];
        let mut expert_load = Vec::new();

        for (li, layer) in w.layers.iter().enumerate() {
            let _layer = span_named(Category::Debug, || format!("layer {li}"));
            match &layer.attention {
                SelfAttention::Grouped(a) => self.grouped_attention(a, li, batch, kv, &normed, &mut scratch, &mut delta),
                SelfAttention::Latent(a) => {
                    let _op = span(Category::Debug, "mla");
                    let absorbed = self.absorbed[li].as_ref().expect("absorbed heads are split at load");
                    let m = c.mla.as_ref().expect("latent attention is planned from an MLA config");
                    let mut heads_out = vec![0.0f32; t * c.num_heads * m.v_head_dim];
                    let form = self.mla_form;
                    let step = MlaStep { positions: batch.positions, slots: batch.slots, seqs: batch.seqs, rope: &self.rope, form };
                    let project = |x: &[f32], rows: usize, w: &PackedMatrix, out: &mut [f32]| self.project(x, rows, w, out);
                    mla_attention(a, absorbed, c, &normed, t, &step, kv, li, &project, &mut heads_out);
                    self.project(&heads_out, t, &a.output, &mut delta);
                }
            }
            cpu::add_rms_norm(&mut residual, &delta, &layer.post_attention_norm, c.rms_eps, &mut normed);
            expert_load.extend(self.feed_forward(li, &normed, t, &mut delta, &mut gate_up, &mut act));
            let next_norm = w.layers.get(li + 1).map_or(&w.final_norm, |l| &l.input_norm);
            cpu::add_rms_norm(&mut residual, &delta, next_norm, c.rms_eps, &mut normed);
        }
        let _head = span(Category::Debug, "lm_head");

        let rows = batch.logit_rows;
        let mut last = Vec::with_capacity(rows.len() * h);
        for &r in rows {
            last.extend_from_slice(&normed[r * h..(r + 1) * h]);
        }
        let mut logits = vec![0.0f32; rows.len() * c.vocab_size];
        cpu::matmul(&last, rows.len(), self.head(), &mut logits);
        ForwardOutput { logits, expert_load }
    }
}
