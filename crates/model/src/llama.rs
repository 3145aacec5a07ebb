//! The llama-family decoder's forward pass on the CPU backend, over a flattened batch that mixes
//! prefill chunks and decode tokens. It walks the filled layer plan ([`crate::plan`]): optional
//! Qwen2/GPT-OSS biases, Qwen3's per-head or OLMoE's full-width q/k norms, GPT-OSS's attention
//! sinks, the feed-forward variant (dense, or a mixture of experts run by [`crate::moe_cpu`]), a
//! tied or own head; each layer's sliding window (Mistral's on every layer, GPT-OSS's on
//! alternate ones) and the RoPE table (YaRN's included) come from the config. With FP8 weights,
//! each product's input is quantized with one dynamic scale first, as the CUDA path quantizes it.

use crate::config::ModelConfig;
use crate::moe_cpu::moe_forward;
use crate::plan::{FeedForward, Head, Quantization};
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
        Decoder { config, weights, tied_head, rope, quantization, perfect_router: false }
    }

    /// The decoder with the perfect router on or off.
    pub fn with_perfect_router(self, perfect_router: bool) -> Self {
        Decoder { perfect_router, ..self }
    }

    /// `out = x · wᵀ` for a layer projection: with FP8 weights, of `x` quantized to FP8 with one
    /// scale (bf16 first, the type CUDA holds activations in).
    fn project(&self, x: &[f32], t: usize, w: &PackedMatrix, out: &mut [f32]) {
        match self.quantization {
            Quantization::None => cpu::matmul(x, t, w, out),
            Quantization::Fp8 => {
                let mut quantized: Vec<f32> = x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
                lumen_backend::fp8::fake_quantize(&mut quantized);
                cpu::matmul(&quantized, t, w, out)
            }
        }
    }

    fn head(&self) -> &PackedMatrix {
        match &self.weights.head {
            Head::Own(m) => m,
            Head::Tied => self.tied_head.as_ref().expect("a tied head is packed at load"),
        }
    }

    /// A KV store of `num_blocks` blocks of `block_size` slots shaped for this model.
    pub fn new_kv_storage(&self, num_blocks: usize, block_size: usize) -> KvStorage {
        let c = &self.config;
        KvStorage::new(c.num_layers, num_blocks, block_size, c.num_kv_heads, c.head_dim)
    }

    /// Runs the batch, writing every token's K/V into `kv`; returns `[logit_rows.len(), vocab]`.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut KvStorage) -> Vec<f32> {
        self.forward_step(batch, kv).logits
    }

    /// Runs the batch, writing every token's K/V into `kv`; returns the logits and the expert
    /// load of every MoE layer.
    pub fn forward_step(&self, batch: &ForwardBatch, kv: &mut KvStorage) -> ForwardOutput {
        let c = &self.config;
        let w = &self.weights;
        let t = batch.tokens.len();
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (qd, kd) = (c.num_heads * hd, c.num_kv_heads * hd);
        let qkv_width = qd + 2 * kd;
        let f = c.intermediate_size;

        let mut residual = vec![0.0f32; t * h];
        for (row, &tok) in residual.chunks_mut(h).zip(batch.tokens) {
            row.copy_from_slice(&w.embed[tok as usize * h..(tok as usize + 1) * h]);
        }
        let mut normed = vec![0.0f32; t * h];
        cpu::rms_norm(&residual, &w.layers[0].input_norm, c.rms_eps, &mut normed);

        let mut qkv = vec![0.0f32; t * qkv_width];
        let (mut q, mut k, mut v) = (vec![0.0f32; t * qd], vec![0.0f32; t * kd], vec![0.0f32; t * kd]);
        let mut attn = vec![0.0f32; t * qd];
        let mut delta = vec![0.0f32; t * h];
        let mut gate_up = vec![0.0f32; t * 2 * f];
        let mut act = vec![0.0f32; t * f];
        let mut expert_load = Vec::new();

        for (li, layer) in w.layers.iter().enumerate() {
            let _layer = span_named(Category::Debug, || format!("layer {li}"));
            let a = &layer.attention;
            let op = span(Category::Debug, "qkv_proj");
            self.project(&normed, t, &a.qkv, &mut qkv);
            for (i, row) in qkv.chunks_mut(qkv_width).enumerate() {
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
                cpu::rms_norm_heads(&mut q, qn, c.rms_eps);
                cpu::rms_norm_heads(&mut k, kn, c.rms_eps);
            }
            cpu::apply_rope(&mut q, c.num_heads, batch.positions, &self.rope);
            cpu::apply_rope(&mut k, c.num_kv_heads, batch.positions, &self.rope);
            kv.write(li, batch.slots, &k, &v);
            drop(op);
            let op = span(Category::Debug, "attention");
            let variant = LayerAttention { window: c.layer_window(li), sinks: a.sinks.as_deref() };
            cpu::paged_attention(&q, c.num_heads, kv, li, batch.seqs, variant, &mut attn);
            drop(op);
            let op = span(Category::Debug, "o_proj + norm");
            self.project(&attn, t, &a.output, &mut delta);
            if let Some(b) = &a.output_bias {
                delta.chunks_mut(h).for_each(|row| row.iter_mut().zip(b).for_each(|(x, b)| *x += b));
            }
            cpu::add_rms_norm(&mut residual, &delta, &layer.post_attention_norm, c.rms_eps, &mut normed);
            drop(op);
            let op = span(Category::Debug, "mlp");
            match &layer.feed_forward {
                FeedForward::Dense { gate_up: w_gate_up, down } => {
                    self.project(&normed, t, w_gate_up, &mut gate_up);
                    cpu::silu_mul(&gate_up, f, &mut act);
                    self.project(&act, t, down, &mut delta);
                }
                FeedForward::Moe(moe) => {
                    let config = c.moe.as_ref().expect("a MoE layer is planned from a MoE config");
                    let project = |x: &[f32], rows: usize, w: &PackedMatrix, out: &mut [f32]| self.project(x, rows, w, out);
                    expert_load.push(moe_forward(moe, config, self.perfect_router, &normed, t, &project, &mut delta));
                }
            }
            let next_norm = w.layers.get(li + 1).map_or(&w.final_norm, |l| &l.input_norm);
            cpu::add_rms_norm(&mut residual, &delta, next_norm, c.rms_eps, &mut normed);
            drop(op);
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
