//! What one iteration moved and computed, counted from the model's shape and the scheduler's
//! decision: the bytes of weights and of cached K/V its forward pass reads, and its floating-point
//! operations. Divided by the iteration's device (or host) time they give the achieved GB/s and
//! TFLOP/s without GPU counters.
//!
//! The counts are what the scheduled batch needs: every weight read once per pass, every cached
//! K/V position once per layer and sequence, at the data type the model is held in on its device
//! (bf16 weights and KV cache on CUDA, f32 on the CPU; with `--quantization fp8` the layers'
//! projection matrices take one byte per weight on CUDA). Rows a CUDA graph pads the batch with,
//! activations, and re-reads that tiling causes are not counted. Element-wise work (norms, RoPE,
//! SiLU, softmax, sampling) is left out of the FLOPs. A mixture-of-experts layer reads its router,
//! its shared expert and the experts the step's tokens were routed to (from the step's expert
//! load), and computes the router, the shared expert and `top_k` experts per token; each layer
//! attends within its own window.
//!
//! [`WorkModel`] is built once per engine; [`WorkModel::iteration`] is a few multiplications per
//! scheduled sequence.

use crate::scheduler::ScheduledSeq;
use lumen_model::{Model, ModelConfig};

/// The element type of the weights and the KV cache where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Fp8,
    Bf16,
    F32,
}

impl Dtype {
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::Fp8 => 1,
            Dtype::Bf16 => 2,
            Dtype::F32 => 4,
        }
    }

    /// `fp8`, `bf16` or `f32`, as the trace's `meta.weight_dtype` (the layer projections') holds it.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Fp8 => "fp8",
            Dtype::Bf16 => "bf16",
            Dtype::F32 => "f32",
        }
    }
}

/// What one iteration read and computed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IterationWork {
    /// Every layer's weights and norms, the final norm, the output projection when a row is
    /// sampled, and the embedding rows gathered (one per token).
    pub weight_bytes: u64,
    /// Per sequence, the K and V of its context up to and including the iteration's tokens (the
    /// last `sliding_window + tokens - 1` positions at most), every layer.
    pub kv_bytes_read: u64,
    /// 2 · layer matmul weights · tokens, plus 2 · hidden · vocab per sampled row, plus
    /// 4 · layers · heads · head_dim per (new token, position it attends to).
    pub flops: f64,
    /// The layers' products' share of `flops` when they are FP8 (on FP8 tensor cores on a GPU
    /// that has them); zero otherwise. The head and attention stay 16-bit.
    pub fp8_flops: f64,
    /// The attention's share of `flops`: Q·Kᵀ and P·V over the positions each new token attends
    /// to.
    pub attention_flops: f64,
}

/// The model's shape, reduced to what the counts need.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkModel {
    dtype: Dtype,
    /// The layers' projection matrices' type: `dtype`, or FP8 when they were quantized.
    layer_dtype: Dtype,
    /// The KV cache's element type: `dtype`, or FP8.
    kv_dtype: Dtype,
    hidden: u64,
    vocab: u64,
    /// The weights every token passes through: all layers' q, k, v and o, and the dense layers'
    /// gate, up and down.
    layer_matmul_params: u64,
    /// The mixture-of-experts layers, when the model has them.
    moe: Option<MoeWork>,
    /// The rest a pass reads besides the output projection: every layer's two norms (plus
    /// attention biases, q/k norms and GPT-OSS's sinks) and the final norm.
    norm_params: u64,
    /// Whether the output projection is the embedding matrix.
    tied: bool,
    kv_bytes_per_token: u64,
    /// 4 · heads · head_dim: QKᵀ and PV for one query token and one attended position, one layer.
    attention_flops_per_layer_position: u64,
    /// The layers by attention window: (how many, window), `None` for full attention.
    windows: Vec<(u64, Option<u64>)>,
}

/// The mixture-of-experts layers' weights, which a token reads only in part: the router, its
/// `top_k` experts and the shared expert.
#[derive(Debug, Clone, Copy, PartialEq)]
struct MoeWork {
    layers: u64,
    num_experts: u64,
    top_k: u64,
    /// One layer's router and shared expert (with its gate): every token passes through them.
    always: u64,
    /// One routed expert's gate, up and down (and biases).
    expert: u64,
}

impl MoeWork {
    /// Experts a layer's `tokens` are expected to touch when each picks `top_k` of
    /// `num_experts` at random: E · (1 − (1 − k/E)^T).
    fn expected_touched(&self, tokens: u64) -> f64 {
        let e = self.num_experts as f64;
        e * (1.0 - (1.0 - self.top_k as f64 / e).powf(tokens as f64))
    }
}

impl WorkModel {
    /// The counts for `config` held in `dtype` (weights and KV cache alike, as both backends do).
    pub fn new(config: &ModelConfig, dtype: Dtype) -> Self {
        let c = config;
        let (h, layers, hd) = (c.hidden_size as u64, c.num_layers as u64, c.head_dim as u64);
        let (heads, kv_heads, f) = (c.num_heads as u64, c.num_kv_heads as u64, c.intermediate_size as u64);
        let attention = match &c.mla {
            Some(m) => m.num_params(c.hidden_size, c.num_heads) as u64,
            None => h * hd * (2 * heads + 2 * kv_heads),
        };
        let bias = if c.attention_bias { (heads + 2 * kv_heads) * hd } else { 0 } + if c.attention_output_bias { h } else { 0 };
        let qk_norm = match (c.qk_norm, c.qk_norm_full_width) {
            (false, _) => 0,
            (true, false) => 2 * hd,
            (true, true) => (heads + kv_heads) * hd,
        };
        let sinks = if c.attention_sinks { heads } else { 0 };
        let moe_layers = c.num_moe_layers() as u64;
        let moe = c.moe.as_ref().map(|m| {
            let (e, fe) = (m.num_experts as u64, m.expert_intermediate_size as u64);
            let expert = 3 * h * fe + if m.biases { 2 * fe + h } else { 0 };
            MoeWork {
                layers: moe_layers,
                num_experts: e,
                top_k: m.top_k as u64,
                always: m.num_params(c.hidden_size) as u64 - e * expert,
                expert,
            }
        });
        let dense_mlp_layers = layers - moe_layers;
        let mut windows: Vec<(u64, Option<u64>)> = Vec::new();
        for layer in 0..c.num_layers {
            let w = c.layer_window(layer).map(|w| w as u64);
            match windows.iter_mut().find(|(_, x)| *x == w) {
                Some((n, _)) => *n += 1,
                None => windows.push((1, w)),
            }
        }
        WorkModel {
            dtype,
            layer_dtype: dtype,
            kv_dtype: dtype,
            hidden: h,
            vocab: c.vocab_size as u64,
            layer_matmul_params: layers * attention + dense_mlp_layers * 3 * h * f,
            moe,
            norm_params: layers * (2 * h + bias + qk_norm + sinks) + h,
            tied: c.tie_word_embeddings,
            kv_bytes_per_token: layers * c.kv_values_per_token_per_layer() as u64 * dtype.bytes(),
            // QKᵀ over the query/key width and PV over the value width (MLA's expanded form).
            attention_flops_per_layer_position: match &c.mla {
                Some(m) => 2 * heads * (m.qk_head_dim() + m.v_head_dim) as u64,
                None => 4 * heads * hd,
            },
            windows,
        }
    }

    /// The counts for `model` where it is loaded: bf16 on a GPU, f32 on the CPU, the layer
    /// projections FP8 on a GPU when quantized (the CPU holds FP8 values in f32).
    pub fn for_model(model: &Model) -> Self {
        if model.cuda_weights().is_none() {
            return WorkModel::new(model.config(), Dtype::F32);
        }
        let fp8 = model.quantization() == lumen_model::Quantization::Fp8;
        WorkModel::new(model.config(), Dtype::Bf16).with_layer_dtype(if fp8 { Dtype::Fp8 } else { Dtype::Bf16 })
    }

    /// The same counts with the KV cache in FP8 (one byte per element), as on CUDA with
    /// `--kv-cache-dtype fp8`.
    pub fn with_fp8_kv_cache(self) -> Self {
        let bytes = self.kv_bytes_per_token / self.dtype.bytes();
        WorkModel { kv_bytes_per_token: bytes, kv_dtype: Dtype::Fp8, ..self }
    }

    /// The KV cache's element type.
    pub fn kv_dtype(&self) -> Dtype {
        self.kv_dtype
    }

    /// The same counts with the layers' projection matrices held in `dtype`.
    pub fn with_layer_dtype(self, layer_dtype: Dtype) -> Self {
        WorkModel { layer_dtype, ..self }
    }

    /// The type of the layers' projection matrices, the bulk of the weights.
    pub fn layer_dtype(&self) -> Dtype {
        self.layer_dtype
    }

    /// Bytes of weights one forward pass reads at most, without the embedding gather: every
    /// layer's weights (all experts of a mixture-of-experts layer) and norms, the final norm and
    /// the output projection.
    pub fn pass_weight_bytes(&self) -> u64 {
        (self.layer_matmul_params + self.all_expert_params()) * self.layer_dtype.bytes()
            + (self.norm_params + self.vocab * self.hidden) * self.dtype.bytes()
    }

    /// Every MoE layer's router, shared expert and routed experts.
    fn all_expert_params(&self) -> u64 {
        self.moe.map_or(0, |m| m.layers * (m.always + m.num_experts * m.expert))
    }

    /// The model's parameters: the pass's weights plus the embedding matrix when it is not the
    /// output projection.
    pub fn model_params(&self) -> u64 {
        let embedding = if self.tied { 0 } else { self.vocab * self.hidden };
        self.layer_matmul_params + self.all_expert_params() + self.norm_params + self.vocab * self.hidden + embedding
    }

    /// Bytes of K and V one token takes in the cache, over all layers.
    pub fn kv_bytes_per_token(&self) -> u64 {
        self.kv_bytes_per_token
    }

    /// What an iteration running `seqs` reads and computes (nothing when no token is scheduled:
    /// no forward pass runs). `expert_load`, the step's per-MoE-layer expert loads, says which
    /// experts' weights were read; without it (or for a layer it lacks) the experts a random
    /// router would touch are counted.
    pub fn iteration(&self, seqs: &[ScheduledSeq], expert_load: &[Vec<u32>]) -> IterationWork {
        let (mut tokens, mut rows) = (0u64, 0u64);
        let (mut context, mut attended) = (0u64, 0u64);
        for s in seqs {
            let (first, n) = (s.first_pos as u64, s.num_tokens as u64);
            if n == 0 {
                continue;
            }
            let end = first + n;
            tokens += n;
            rows += s.samples as u64;
            for &(layers, window) in &self.windows {
                // Token p attends to positions max(0, p + 1 - window) ..= p: min(p + 1, window) of them.
                let window = window.unwrap_or(u64::MAX);
                context += layers * end.min((n - 1).saturating_add(window));
                let full = window.clamp(first, end);
                attended += layers * ((full * (full + 1) - first * (first + 1)) / 2 + (end - full) * window.min(end));
            }
        }
        if tokens == 0 {
            return IterationWork::default();
        }
        let (mut expert_weights, mut expert_flops) = (0u64, 0u128);
        if let Some(m) = self.moe {
            let touched: f64 = (0..m.layers as usize)
                .map(|layer| match expert_load.get(layer) {
                    Some(loads) => loads.iter().filter(|&&l| l > 0).count() as f64,
                    None => m.expected_touched(tokens),
                })
                .sum();
            expert_weights = m.layers * m.always + (touched * m.expert as f64).round() as u64;
            expert_flops = 2 * (m.layers * (m.always + m.top_k * m.expert)) as u128 * tokens as u128;
        }
        let head = if rows > 0 { self.vocab * self.hidden } else { 0 };
        let weight_bytes = (self.layer_matmul_params + expert_weights) * self.layer_dtype.bytes()
            + (self.norm_params + head + tokens * self.hidden) * self.dtype.bytes();
        let layer_flops = 2 * self.layer_matmul_params as u128 * tokens as u128 + expert_flops;
        let attention_flops = self.attention_flops_per_layer_position as u128 * attended as u128;
        let flops = layer_flops + 2 * (self.hidden * self.vocab) as u128 * rows as u128 + attention_flops;
        let fp8_flops = if self.layer_dtype == Dtype::Fp8 { layer_flops as f64 } else { 0.0 };
        let kv_bytes_per_layer = self.kv_bytes_per_token / self.windows.iter().map(|(n, _)| n).sum::<u64>().max(1);
        IterationWork {
            weight_bytes,
            kv_bytes_read: context * kv_bytes_per_layer,
            flops: flops as f64,
            fp8_flops,
            attention_flops: attention_flops as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_model::presets::preset_config;

    fn seq(first_pos: usize, num_tokens: usize, samples: bool) -> ScheduledSeq {
        ScheduledSeq { id: first_pos as u64, num_tokens, first_pos, samples, is_context: num_tokens > 1 }
    }

    /// `tiny-mixtral`: `tiny`'s attention (q, k, v, o: 12,288 a layer, 2 layers), untied; 8 experts
    /// of intermediate 32, top 2: a router of 8·64 = 512 and experts of 3·64·32 = 6,144 a layer.
    #[test]
    fn mixture_of_experts_counts_the_experts_a_step_touched() {
        let config = preset_config("tiny-mixtral").unwrap();
        let w = WorkModel::new(&config, Dtype::F32);
        assert_eq!(w.model_params(), config.num_params() as u64, "all experts count in the model's size");
        // The real shapes too, DeepSeek's MLA attention and dense first layers included.
        for name in ["mixtral-8x7b", "deepseek-v3", "deepseek-v2-lite", "tiny-deepseek-v3"] {
            let c = preset_config(name).unwrap();
            assert_eq!(WorkModel::new(&c, Dtype::Bf16).model_params(), c.num_params() as u64, "{name}");
        }
        // A decode step at position 9; layer 0 sent its token to experts 1 and 6, layer 1 to 0 and 1.
        let loads = [vec![0, 1, 0, 0, 0, 0, 1, 0], vec![1, 1, 0, 0, 0, 0, 0, 0]];
        let decode = w.iteration(&[seq(9, 1, true)], &loads);
        // Weights: 24,576 + 2·512 + 4 experts·6,144 = 50,176; norms 320, lm_head 32,768, one
        // embedding row 64 = 33,152; f32.
        assert_eq!(decode.weight_bytes, (50_176 + 33_152) * 4);
        // 2·24,576 + 2·2·(512 + 2·6,144) + 2·64·512 + 256 per layer-position · 2 layers · 10.
        assert_eq!(decode.flops, (49_152 + 51_200 + 65_536 + 5_120) as f64);
        // Without the loads, a random router's expectation: 8·(1 − (1 − 2/8)^1) = 2 experts a layer.
        assert_eq!(w.iteration(&[seq(9, 1, true)], &[]), decode);
        // 16 prompt tokens are expected to touch 8·(1 − 0.75^16) ≈ 7.92 experts a layer.
        let prefill = w.iteration(&[seq(0, 16, false)], &[]);
        let touched = 2.0 * 8.0 * (1.0 - 0.75f64.powi(16));
        assert_eq!(prefill.weight_bytes, (24_576 + 1_024 + (touched * 6_144.0).round() as u64 + 320 + 16 * 64) * 4);
        // With the step's loads, only the experts they name are read; every token still runs its
        // top 2 whatever the experts touched.
        let routed = w.iteration(&[seq(0, 16, false)], &loads);
        assert_eq!(routed.weight_bytes, (24_576 + 1_024 + 4 * 6_144 + 320 + 16 * 64) * 4);
        assert_eq!(routed.flops, prefill.flops);
    }

    /// Alternating windows (GPT-OSS): layer 0 slides over 4 positions, layer 1 attends to all.
    #[test]
    fn each_layer_attends_within_its_own_window() {
        let mut config = preset_config("tiny").unwrap();
        config.sliding_window = Some(4);
        config.sliding_layers = Some(vec![true, false]);
        let w = WorkModel::new(&config, Dtype::F32);
        let decode = w.iteration(&[seq(9, 1, true)], &[]);
        // Position 9 reads 4 positions in layer 0 and 10 in layer 1: 14 of 256 bytes (K and V,
        // 2 KV heads of 16, f32, one layer).
        assert_eq!(decode.kv_bytes_read, 14 * 256);
        let full = WorkModel::new(&preset_config("tiny").unwrap(), Dtype::F32).iteration(&[seq(9, 1, true)], &[]);
        assert_eq!(full.kv_bytes_read, 20 * 256);
        // Attention: 256 FLOPs per layer and position.
        assert_eq!(full.flops - decode.flops, (6 * 256) as f64);
    }

    /// The `tiny` preset: hidden 64, 2 layers, 4 heads, 2 KV heads, head_dim 16, intermediate 160,
    /// vocabulary 512, tied embeddings.
    #[test]
    fn tiny_counts_by_hand() {
        let w = WorkModel::new(&preset_config("tiny").unwrap(), Dtype::F32);
        // Per layer: q, k, v, o = 64·16·(2·4 + 2·2) = 12,288; gate, up, down = 3·64·160 = 30,720.
        assert_eq!(w.layer_matmul_params, 2 * (12_288 + 30_720));
        // Two norms of 64 per layer, the final norm.
        assert_eq!(w.norm_params, 2 * 128 + 64);
        // 86,016 + 320 + lm_head 512·64 = 32,768 → 119,104 weights of 4 bytes.
        assert_eq!(w.pass_weight_bytes(), 119_104 * 4);
        assert_eq!(w.model_params(), 119_104, "tied: the embedding is the output projection");
        assert_eq!(w.model_params(), preset_config("tiny").unwrap().num_params() as u64);
        // K and V, 2 layers, 2 KV heads, 16 wide, f32.
        assert_eq!(w.kv_bytes_per_token(), 2 * 2 * 2 * 16 * 4);

        // A 5-token prefill chunk that does not reach its end (no row sampled) and a decode step
        // at position 9.
        let work = w.iteration(&[seq(0, 5, false), seq(9, 1, true)], &[]);
        assert_eq!(work.weight_bytes, 476_416 + 6 * 64 * 4, "the pass plus 6 embedding rows");
        assert_eq!(work.kv_bytes_read, (5 + 10) * 512);
        // Matmuls 2·86,016·6 = 1,032,192; lm_head 2·64·512·1 = 65,536; attention
        // 4·2·4·16 = 512 per attended position, (1 + 2 + 3 + 4 + 5) + 10 = 25 of them: 12,800.
        assert_eq!(work.flops, 1_110_528.0);
        assert_eq!(work.attention_flops, 12_800.0);

        // Without a sampled row the output projection is not read or multiplied.
        let chunk = w.iteration(&[seq(0, 5, false)], &[]);
        assert_eq!(chunk.weight_bytes, (119_104 - 32_768 + 5 * 64) * 4);
        assert_eq!(chunk.flops, (2 * 86_016 * 5 + 512 * 15) as f64);
        assert_eq!(chunk.attention_flops, (512 * 15) as f64);
        assert_eq!(w.iteration(&[], &[]), IterationWork::default(), "no tokens, no pass");

        let bf16 = WorkModel::new(&preset_config("tiny").unwrap(), Dtype::Bf16);
        assert_eq!((bf16.pass_weight_bytes(), bf16.kv_bytes_per_token()), (119_104 * 2, 256));
        assert_eq!((Dtype::Bf16.name(), Dtype::F32.name()), ("bf16", "f32"));

        // FP8 layer projections: 86,016 weights of 1 byte, the rest (320 norms, 32,768 of lm_head)
        // still bf16; the KV cache stays bf16.
        let fp8 = bf16.clone().with_layer_dtype(Dtype::Fp8);
        assert_eq!((fp8.pass_weight_bytes(), fp8.kv_bytes_per_token(), fp8.layer_dtype().name()), (86_016 + 33_088 * 2, 256, "fp8"));
        let step = fp8.iteration(&[seq(9, 1, true)], &[]);
        assert_eq!(step.weight_bytes, 86_016 + (33_088 + 64) * 2);
        // The FP8 share of the FLOPs is the layers' products; the head and attention are not.
        assert_eq!(step.fp8_flops, (2 * 86_016) as f64);
        assert_eq!((step.flops, bf16.iteration(&[seq(9, 1, true)], &[]).fp8_flops), (bf16.iteration(&[seq(9, 1, true)], &[]).flops, 0.0));
        assert_eq!(fp8.clone().with_fp8_kv_cache().kv_bytes_per_token(), 128, "an FP8 cache: one byte per element");
        assert_eq!((fp8.kv_dtype(), fp8.with_fp8_kv_cache().kv_dtype()), (Dtype::Bf16, Dtype::Fp8));
    }

    #[test]
    fn biases_qk_norms_and_untied_heads_are_weights_too() {
        // tiny-qwen2: q/k/v biases of (4 + 2·2)·16 = 128 per layer, lm_head of its own.
        let qwen2 = WorkModel::new(&preset_config("tiny-qwen2").unwrap(), Dtype::F32);
        assert_eq!(qwen2.pass_weight_bytes(), (119_104 + 2 * 128) * 4);
        assert_eq!(qwen2.model_params(), 119_104 + 2 * 128 + 32_768);
        // tiny-qwen3: head_dim 32, q and k norms of 32 each per layer.
        let qwen3 = WorkModel::new(&preset_config("tiny-qwen3").unwrap(), Dtype::F32);
        let matmul = 2 * (64 * 32 * 12 + 30_720);
        assert_eq!(qwen3.pass_weight_bytes(), (matmul + 2 * (128 + 64) + 64 + 32_768) * 4);
    }

    /// tiny-mistral: 1 KV head, a sliding window of 16.
    #[test]
    fn the_sliding_window_bounds_attention_and_kv_reads() {
        let w = WorkModel::new(&preset_config("tiny-mistral").unwrap(), Dtype::F32);
        assert_eq!(w.kv_bytes_per_token(), 2 * 2 * 16 * 4);
        let per_position = 4 * 2 * 4 * 16;
        // Decode at position 40 sees positions 25..=40: 16 of them.
        let decode = w.iteration(&[seq(40, 1, true)], &[]);
        assert_eq!(decode.kv_bytes_read, 16 * 256);
        // A chunk of positions 10..=19: token p sees min(p + 1, 16): 11+12+13+14+15+16·5 = 145;
        // position 10 still sees position 0, so they read all 20.
        let chunk = w.iteration(&[seq(10, 10, false)], &[]);
        let matmul = 2 * (64 * 16 * (8 + 2) + 30_720) as u64;
        assert_eq!(chunk.flops, (2 * matmul * 10 + per_position * 145) as f64);
        assert_eq!(chunk.kv_bytes_read, 20 * 256);
        // Positions 30..=39 see 16 each, together positions 15..=39: 25.
        let later = w.iteration(&[seq(30, 10, false)], &[]);
        assert_eq!(later.flops, (2 * matmul * 10 + per_position * 160) as f64);
        assert_eq!(later.kv_bytes_read, 25 * 256);
        // Shorter than the window: every position.
        let short = w.iteration(&[seq(0, 3, true)], &[]);
        assert_eq!(short.kv_bytes_read, 3 * 256);
        assert_eq!(short.flops, (2 * matmul * 3 + 2 * 64 * 512 + per_position * 6) as f64);
    }

    /// The Llama-3.1-8B shape in bf16 (hidden 4096, 32 layers, 32 heads, 8 KV heads, head_dim 128,
    /// intermediate 14336, vocabulary 128256, its own lm_head).
    #[test]
    fn llama_3_1_8b_in_bf16() {
        let config = preset_config("llama-3.1-8b").unwrap();
        let w = WorkModel::new(&config, Dtype::Bf16);
        // Per layer 4096·128·80 = 41,943,040 attention + 3·4096·14336 = 176,160,768 MLP weights.
        assert_eq!(w.layer_matmul_params, 32 * 218_103_808);
        // 8,030,261,248 parameters: 16.06 GB in bf16.
        assert_eq!(w.model_params(), 8_030_261_248);
        assert_eq!(w.model_params(), config.num_params() as u64);
        assert_eq!(w.model_params() * 2, 16_060_522_496);
        // A pass reads all of it but the embedding matrix (128256·4096·2 = 1.05 GB), of which it
        // gathers one row per token.
        assert_eq!(w.pass_weight_bytes(), 15_009_849_344);
        assert_eq!(w.kv_bytes_per_token(), 131_072, "128 KiB of K and V per token");

        // One 128-token prefill that samples its first token.
        let prefill = w.iteration(&[seq(0, 128, true)], &[]);
        assert_eq!(prefill.weight_bytes, 15_009_849_344 + 128 * 4096 * 2);
        assert_eq!(prefill.kv_bytes_read, 128 * 131_072);
        // 2·6,979,321,856·128 = 1,786,706,395,136 in the layers, 2·4096·128256 = 1,050,673,152
        // in lm_head, 4·32·32·128 = 524,288 per attended position over 1 + 2 + ... + 128 = 8,256
        // positions = 4,328,521,728 in attention: 1.792 TFLOP.
        assert_eq!(prefill.flops, 1_792_085_590_016.0);

        // 64 decode steps at context 1024 (positions 1023) read the weights once and 64 contexts.
        let decode: Vec<ScheduledSeq> = (0..64).map(|_| seq(1023, 1, true)).collect();
        let work = w.iteration(&decode, &[]);
        assert_eq!(work.weight_bytes, 15_009_849_344 + 64 * 8192);
        assert_eq!(work.kv_bytes_read, 64 * 1024 * 131_072);
        assert_eq!(work.flops, (64 * 2 * 6_979_321_856u64 + 64 * 1_050_673_152 + 64 * 1024 * 524_288) as f64);
    }
}
