//! The layer plan: one device-neutral description of a model's weights and blocks, built once
//! from its config.
//!
//! [`Weights`] is the layer structure, generic over how a matrix (`M`) and a vector (`V`) are
//! held. The plan is `Weights<WeightSpec, WeightSpec>`: for every weight, the checkpoint tensors
//! (by their Hugging Face names) stacked into it, its shape and its data type. A backend fills the
//! plan through [`Fill`] (the CPU into packed f32 matrices, CUDA into bf16 device tensors), and
//! its forward pass walks the filled structure. A block kind (DeepSeek's latent attention, the
//! mixture-of-experts feed-forward) is a variant here plus one kernel path per backend; a new data
//! type (FP8) is a new [`WeightDtype`] plus its loader.

use crate::config::{MlaConfig, ModelConfig, MoeConfig};
use anyhow::Result;

/// What a weight is computed in, as far as the plan knows. Loaders convert what the checkpoint
/// holds to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    /// Floating point of any width (f32, f16, bf16, or GGUF blocks dequantised on load): f32 on
    /// the CPU, bf16 on CUDA.
    Float,
    /// FP8 E4M3 with one f32 scale for the weight, and activations quantized with one dynamic
    /// scale per product (`lumen_backend::fp8`): FP8 tensor cores on CUDA; on the CPU, f32
    /// products of the values the FP8 codes stand for.
    Fp8,
}

/// How the weights are quantized at load (`--quantization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantization {
    /// As the checkpoint holds them.
    #[default]
    None,
    /// The projection matrices of every layer (q/k/v, output, gate/up, down) in FP8 E4M3; the
    /// embedding, norms, biases and the output head stay as they are, as in vLLM and TensorRT-LLM.
    Fp8,
}

impl std::str::FromStr for Quantization {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Quantization::None),
            "fp8" => Ok(Quantization::Fp8),
            other => Err(format!("unknown quantization {other:?}; expected none or fp8")),
        }
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Quantization::None => "none",
            Quantization::Fp8 => "fp8",
        })
    }
}

/// One checkpoint tensor of a weight: its Hugging Face name and shape, and, for a
/// tensor-parallel rank, the block of it the rank keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub shape: Vec<usize>,
    pub slice: Option<PartSlice>,
}

/// A block of a checkpoint tensor: `len` rows (or, for a vector, elements) or `len` columns
/// from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartSlice {
    Rows { start: usize, len: usize },
    Cols { start: usize, len: usize },
}

impl Part {
    /// The shape of what the weight keeps of this part.
    pub fn kept_shape(&self) -> Vec<usize> {
        let mut shape = self.shape.clone();
        match self.slice {
            None => {}
            Some(PartSlice::Rows { len, .. }) => shape[0] = len,
            Some(PartSlice::Cols { len, .. }) => shape[1] = len,
        }
        shape
    }

    /// The kept block of `values`, this part's whole tensor (row-major).
    pub fn keep(&self, values: Vec<f32>) -> Vec<f32> {
        let cols = self.shape.get(1).copied().unwrap_or(1);
        match self.slice {
            None => values,
            Some(PartSlice::Rows { start, len }) => values[start * cols..(start + len) * cols].to_vec(),
            Some(PartSlice::Cols { start, len }) => values.chunks(cols).flat_map(|row| &row[start..start + len]).copied().collect(),
        }
    }
}

/// A weight the forward pass reads: its parts stacked along the first dimension (the q, k and v
/// projections into one matrix, say), and the stacked shape (`[rows, cols]` for a matrix,
/// `[len]` for a vector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightSpec {
    pub parts: Vec<Part>,
    pub shape: Vec<usize>,
    pub dtype: WeightDtype,
}

impl WeightSpec {
    fn stacked(parts: Vec<(String, Vec<usize>)>) -> Self {
        let parts: Vec<Part> = parts.into_iter().map(|(name, shape)| Part { name, shape, slice: None }).collect();
        let mut shape = parts[0].shape.clone();
        shape[0] = parts.iter().map(|p| p.shape[0]).sum();
        WeightSpec { parts, shape, dtype: WeightDtype::Float }
    }

    fn single(name: String, shape: Vec<usize>) -> Self {
        Self::stacked(vec![(name, shape)])
    }

    /// Rows and columns of a matrix weight.
    pub fn rows_cols(&self) -> (usize, usize) {
        (self.shape[0], self.shape.get(1).copied().unwrap_or(1))
    }
}

/// Self-attention with grouped K/V heads: fused q/k/v projection (with Qwen2's and GPT-OSS's
/// biases, and Qwen3's per-head or OLMoE's full-width q/k norms, where the model has them), the
/// output projection (with GPT-OSS's bias) and GPT-OSS's attention sinks. Heads, head size, RoPE
/// and each layer's sliding window come from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Attention<M, V> {
    /// `[(heads + 2·kv_heads)·head_dim, hidden]`: q rows, then k rows, then v rows.
    pub qkv: M,
    pub qkv_bias: Option<V>,
    /// `[head_dim]`, or `[heads·head_dim]` when the norm covers the whole projection.
    pub q_norm: Option<V>,
    /// `[head_dim]`, or `[kv_heads·head_dim]` when the norm covers the whole projection.
    pub k_norm: Option<V>,
    /// `[hidden, heads·head_dim]`.
    pub output: M,
    /// `[hidden]`.
    pub output_bias: Option<V>,
    /// `[heads]`: one logit per query head that joins its softmax's denominator.
    pub sinks: Option<V>,
}

/// DeepSeek's multi-head latent attention ([`MlaConfig`] holds the sizes): queries straight from
/// the hidden state or through a low-rank `q_a` and its norm; one down-projection to the latent
/// and the rotary key, the latent's norm, and the up-projection of the latent to every head's
/// key (no-RoPE part) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentAttention<M, V> {
    /// `[q_lora_rank, hidden]`, with a query rank.
    pub q_a: Option<M>,
    /// `[q_lora_rank]`.
    pub q_a_norm: Option<V>,
    /// `[heads·(qk_nope + qk_rope), q_lora_rank or hidden]`: each head's no-RoPE then RoPE part.
    pub q: M,
    /// `[kv_lora_rank + qk_rope, hidden]`: the latent, then the rotary key.
    pub kv_a: M,
    /// `[kv_lora_rank]`.
    pub kv_a_norm: V,
    /// `[heads·(qk_nope + v_head), kv_lora_rank]`: per head, its key rows then its value rows.
    pub kv_b: M,
    /// `[hidden, heads·v_head]`.
    pub output: M,
}

/// A layer's attention block.
#[derive(Debug, Clone, PartialEq)]
pub enum SelfAttention<M, V> {
    /// Grouped-query attention over full keys and values.
    Grouped(Attention<M, V>),
    /// Multi-head latent attention over a cache of compressed latents.
    Latent(LatentAttention<M, V>),
}

/// The feed-forward block of a layer.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedForward<M, V> {
    /// SwiGLU: `down(silu(gate(x)) · up(x))`, gate and up fused as `[2·intermediate, hidden]`
    /// (gate rows first), down `[hidden, intermediate]`.
    Dense { gate_up: M, down: M },
    /// A mixture of experts; the routing method and the activation come from the config.
    Moe(Moe<M, V>),
}

/// One expert: gate and up fused as `[2·f, hidden]` (gate rows first), down `[hidden, f]`, with
/// GPT-OSS's biases where the model has them.
#[derive(Debug, Clone, PartialEq)]
pub struct Expert<M, V> {
    pub gate_up: M,
    pub gate_up_bias: Option<V>,
    pub down: M,
    pub down_bias: Option<V>,
}

/// A mixture-of-experts block: the gate GEMM to router logits, the routed experts, and the shared
/// expert (Qwen2-MoE's gated one, DeepSeek's plain one).
#[derive(Debug, Clone, PartialEq)]
pub struct Moe<M, V> {
    /// `[experts, hidden]`.
    pub router: M,
    /// GPT-OSS: `[experts]`.
    pub router_bias: Option<V>,
    /// DeepSeek-V3: `[experts]`, added to the scores that choose the experts.
    pub score_correction_bias: Option<V>,
    pub experts: Vec<Expert<M, V>>,
    pub shared: Option<SharedExpert<M, V>>,
}

/// An expert every token runs; with a `gate` (`[1, hidden]`, Qwen2-MoE) its output is scaled by
/// `sigmoid(gate · x)`.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedExpert<M, V> {
    pub expert: Expert<M, V>,
    pub gate: Option<M>,
}

/// One decoder layer: pre-norm attention, then pre-norm feed-forward, each added to the residual.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer<M, V> {
    pub input_norm: V,
    pub attention: SelfAttention<M, V>,
    pub post_attention_norm: V,
    pub feed_forward: FeedForward<M, V>,
}

/// The output projection: the embedding itself, or a matrix of its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Head<M> {
    Tied,
    Own(M),
}

/// The whole model: token embedding (`[vocab, hidden]`), layers, final norm, output head.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights<M, V> {
    pub embed: V,
    pub layers: Vec<Layer<M, V>>,
    pub final_norm: V,
    pub head: Head<M>,
}

/// The plan: every weight as a [`WeightSpec`].
pub type ModelPlan = Weights<WeightSpec, WeightSpec>;

/// What a backend does with each planned weight.
pub trait Fill {
    type Matrix;
    type Vector;
    fn matrix(&mut self, spec: &WeightSpec) -> Result<Self::Matrix>;
    fn vector(&mut self, spec: &WeightSpec) -> Result<Self::Vector>;
}

/// A weight of a filled structure, as [`Weights::visit`] hands it over.
pub enum Entry<'a, M, V> {
    Matrix(&'a M),
    Vector(&'a V),
}

impl ModelPlan {
    /// The plan of a llama-family model: Llama, Mistral, Qwen2 (q/k/v biases), Qwen3 (q/k norms).
    pub fn for_config(c: &ModelConfig) -> Self {
        let (h, hd, f) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (qd, kd) = (c.num_heads * hd, c.num_kv_heads * hd);
        let layers = (0..c.num_layers)
            .map(|i| {
                let name = |part: &str| format!("model.layers.{i}.{part}");
                let vector = |part: &str, len: usize| WeightSpec::single(name(part), vec![len]);
                let qkv_parts = |suffix: &str, shape: fn(usize, usize) -> Vec<usize>| {
                    WeightSpec::stacked(vec![
                        (name(&format!("self_attn.q_proj.{suffix}")), shape(qd, h)),
                        (name(&format!("self_attn.k_proj.{suffix}")), shape(kd, h)),
                        (name(&format!("self_attn.v_proj.{suffix}")), shape(kd, h)),
                    ])
                };
                let attention = match &c.mla {
                    Some(m) => SelfAttention::Latent(latent_plan(m, c.num_heads, h, &name)),
                    None => SelfAttention::Grouped(Attention {
                        qkv: qkv_parts("weight", |rows, cols| vec![rows, cols]),
                        qkv_bias: c.attention_bias.then(|| qkv_parts("bias", |rows, _| vec![rows])),
                        q_norm: c.qk_norm.then(|| vector("self_attn.q_norm.weight", if c.qk_norm_full_width { qd } else { hd })),
                        k_norm: c.qk_norm.then(|| vector("self_attn.k_norm.weight", if c.qk_norm_full_width { kd } else { hd })),
                        output: WeightSpec::single(name("self_attn.o_proj.weight"), vec![h, qd]),
                        output_bias: c.attention_output_bias.then(|| vector("self_attn.o_proj.bias", h)),
                        sinks: c.attention_sinks.then(|| vector("self_attn.sinks", c.num_heads)),
                    }),
                };
                Layer {
                    input_norm: vector("input_layernorm.weight", h),
                    attention,
                    post_attention_norm: vector("post_attention_layernorm.weight", h),
                    feed_forward: match c.moe.as_ref().filter(|_| c.is_moe_layer(i)) {
                        None => FeedForward::Dense {
                            gate_up: WeightSpec::stacked(vec![
                                (name("mlp.gate_proj.weight"), vec![f, h]),
                                (name("mlp.up_proj.weight"), vec![f, h]),
                            ]),
                            down: WeightSpec::single(name("mlp.down_proj.weight"), vec![h, f]),
                        },
                        Some(moe) => FeedForward::Moe(moe_plan(&c.arch, moe, h, &name)),
                    },
                }
            })
            .collect();
        Weights {
            embed: WeightSpec::single("model.embed_tokens.weight".into(), vec![c.vocab_size, h]),
            layers,
            final_norm: WeightSpec::single("model.norm.weight".into(), vec![h]),
            head: if c.tie_word_embeddings {
                Head::Tied
            } else {
                Head::Own(WeightSpec::single("lm_head.weight".into(), vec![c.vocab_size, h]))
            },
        }
    }

    /// The plan with its layers' projection matrices in the data type `quantization` asks for.
    pub fn quantized(mut self, quantization: Quantization) -> Self {
        let dtype = match quantization {
            Quantization::None => return self,
            Quantization::Fp8 => WeightDtype::Fp8,
        };
        for l in &mut self.layers {
            // MLA's kv_b stays as it is: the CPU's absorbed decode reads its values back.
            let mut projections = match &mut l.attention {
                SelfAttention::Grouped(a) => vec![&mut a.qkv, &mut a.output],
                SelfAttention::Latent(a) => {
                    let mut p: Vec<&mut WeightSpec> = a.q_a.iter_mut().collect();
                    p.extend([&mut a.q, &mut a.kv_a, &mut a.output]);
                    p
                }
            };
            match &mut l.feed_forward {
                FeedForward::Dense { gate_up, down } => projections.extend([gate_up, down]),
                FeedForward::Moe(moe) => {
                    let shared = moe.shared.iter_mut().map(|s| &mut s.expert);
                    for e in moe.experts.iter_mut().chain(shared) {
                        projections.extend([&mut e.gate_up, &mut e.down]);
                    }
                }
            }
            for spec in projections {
                spec.dtype = dtype;
            }
        }
        self
    }

    /// Fills every weight, layer by layer in order, so a backend that uploads as it goes holds
    /// one weight in host memory at a time.
    pub fn fill<F: Fill>(&self, backend: &mut F) -> Result<Weights<F::Matrix, F::Vector>> {
        let opt = |spec: &Option<WeightSpec>, backend: &mut F| spec.as_ref().map(|s| backend.vector(s)).transpose();
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let input_norm = backend.vector(&l.input_norm)?;
            let attention = match &l.attention {
                SelfAttention::Grouped(a) => SelfAttention::Grouped(Attention {
                    qkv: backend.matrix(&a.qkv)?,
                    qkv_bias: opt(&a.qkv_bias, backend)?,
                    q_norm: opt(&a.q_norm, backend)?,
                    k_norm: opt(&a.k_norm, backend)?,
                    output: backend.matrix(&a.output)?,
                    output_bias: opt(&a.output_bias, backend)?,
                    sinks: opt(&a.sinks, backend)?,
                }),
                SelfAttention::Latent(a) => SelfAttention::Latent(LatentAttention {
                    q_a: a.q_a.as_ref().map(|m| backend.matrix(m)).transpose()?,
                    q_a_norm: opt(&a.q_a_norm, backend)?,
                    q: backend.matrix(&a.q)?,
                    kv_a: backend.matrix(&a.kv_a)?,
                    kv_a_norm: backend.vector(&a.kv_a_norm)?,
                    kv_b: backend.matrix(&a.kv_b)?,
                    output: backend.matrix(&a.output)?,
                }),
            };
            layers.push(Layer {
                input_norm,
                attention,
                post_attention_norm: backend.vector(&l.post_attention_norm)?,
                feed_forward: match &l.feed_forward {
                    FeedForward::Dense { gate_up, down } => {
                        FeedForward::Dense { gate_up: backend.matrix(gate_up)?, down: backend.matrix(down)? }
                    }
                    FeedForward::Moe(moe) => FeedForward::Moe(Moe {
                        router: backend.matrix(&moe.router)?,
                        router_bias: opt(&moe.router_bias, backend)?,
                        score_correction_bias: opt(&moe.score_correction_bias, backend)?,
                        experts: moe.experts.iter().map(|e| fill_expert(e, backend)).collect::<Result<_>>()?,
                        shared: match &moe.shared {
                            None => None,
                            Some(s) => Some(SharedExpert {
                                expert: fill_expert(&s.expert, backend)?,
                                gate: s.gate.as_ref().map(|g| backend.matrix(g)).transpose()?,
                            }),
                        },
                    }),
                },
            });
        }
        Ok(Weights {
            embed: backend.vector(&self.embed)?,
            layers,
            final_norm: backend.vector(&self.final_norm)?,
            head: match &self.head {
                Head::Tied => Head::Tied,
                Head::Own(spec) => Head::Own(backend.matrix(spec)?),
            },
        })
    }
}

/// Where an architecture's checkpoint keeps a layer's MoE tensors: the router, and expert `j`'s
/// gate, up and down projections.
struct MoeNames {
    router: &'static str,
    expert: fn(usize, &str) -> String,
    gate: &'static str,
    up: &'static str,
    down: &'static str,
}

impl MoeNames {
    fn for_arch(arch: &str) -> Self {
        match arch {
            "mixtral" => MoeNames {
                router: "block_sparse_moe.gate",
                expert: |j, part| format!("block_sparse_moe.experts.{j}.{part}"),
                gate: "w1",
                up: "w3",
                down: "w2",
            },
            "gpt_oss" => MoeNames { router: "mlp.router", ..Self::for_arch("qwen3_moe") },
            _ => MoeNames {
                router: "mlp.gate",
                expert: |j, part| format!("mlp.experts.{j}.{part}"),
                gate: "gate_proj",
                up: "up_proj",
                down: "down_proj",
            },
        }
    }
}

/// The plan of one layer's MoE block; `name` prefixes a layer-relative tensor name.
fn moe_plan(arch: &str, c: &MoeConfig, h: usize, name: &dyn Fn(&str) -> String) -> Moe<WeightSpec, WeightSpec> {
    let names = MoeNames::for_arch(arch);
    let expert = |prefix: &dyn Fn(&str) -> String, f: usize| {
        let part = |p: &str, suffix: &str| name(&format!("{}.{suffix}", prefix(p)));
        Expert {
            gate_up: WeightSpec::stacked(vec![(part(names.gate, "weight"), vec![f, h]), (part(names.up, "weight"), vec![f, h])]),
            gate_up_bias: c
                .biases
                .then(|| WeightSpec::stacked(vec![(part(names.gate, "bias"), vec![f]), (part(names.up, "bias"), vec![f])])),
            down: WeightSpec::single(part(names.down, "weight"), vec![h, f]),
            down_bias: c.biases.then(|| WeightSpec::single(part(names.down, "bias"), vec![h])),
        }
    };
    let shared_prefix = if c.shared_expert_gated { "mlp.shared_expert" } else { "mlp.shared_experts" };
    Moe {
        router: WeightSpec::single(name(&format!("{}.weight", names.router)), vec![c.num_experts, h]),
        router_bias: c.biases.then(|| WeightSpec::single(name(&format!("{}.bias", names.router)), vec![c.num_experts])),
        score_correction_bias: c
            .score_correction_bias
            .then(|| WeightSpec::single(name(&format!("{}.e_score_correction_bias", names.router)), vec![c.num_experts])),
        experts: (0..c.num_experts).map(|j| expert(&|p: &str| (names.expert)(j, p), c.expert_intermediate_size)).collect(),
        shared: c.shared_expert_intermediate_size.map(|f| SharedExpert {
            expert: expert(&|p: &str| format!("{shared_prefix}.{p}"), f),
            gate: c.shared_expert_gated.then(|| WeightSpec::single(name("mlp.shared_expert_gate.weight"), vec![1, h])),
        }),
    }
}

/// The plan of one layer's latent attention under DeepSeek's checkpoint names.
fn latent_plan(m: &MlaConfig, heads: usize, h: usize, name: &dyn Fn(&str) -> String) -> LatentAttention<WeightSpec, WeightSpec> {
    let matrix = |part: &str, rows: usize, cols: usize| WeightSpec::single(name(&format!("self_attn.{part}.weight")), vec![rows, cols]);
    let q_rows = heads * m.qk_head_dim();
    LatentAttention {
        q_a: m.q_lora_rank.map(|r| matrix("q_a_proj", r, h)),
        q_a_norm: m.q_lora_rank.map(|r| WeightSpec::single(name("self_attn.q_a_layernorm.weight"), vec![r])),
        q: match m.q_lora_rank {
            Some(r) => matrix("q_b_proj", q_rows, r),
            None => matrix("q_proj", q_rows, h),
        },
        kv_a: matrix("kv_a_proj_with_mqa", m.latent_width(), h),
        kv_a_norm: WeightSpec::single(name("self_attn.kv_a_layernorm.weight"), vec![m.kv_lora_rank]),
        kv_b: matrix("kv_b_proj", heads * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank),
        output: matrix("o_proj", h, heads * m.v_head_dim),
    }
}

fn fill_expert<F: Fill>(e: &Expert<WeightSpec, WeightSpec>, backend: &mut F) -> Result<Expert<F::Matrix, F::Vector>> {
    Ok(Expert {
        gate_up: backend.matrix(&e.gate_up)?,
        gate_up_bias: e.gate_up_bias.as_ref().map(|b| backend.vector(b)).transpose()?,
        down: backend.matrix(&e.down)?,
        down_bias: e.down_bias.as_ref().map(|b| backend.vector(b)).transpose()?,
    })
}

fn visit_expert<'a, M, V>(e: &'a Expert<M, V>, label: &str, f: &mut dyn FnMut(&str, Entry<'a, M, V>)) {
    f(&format!("{label}.gate_up"), Entry::Matrix(&e.gate_up));
    if let Some(b) = &e.gate_up_bias {
        f(&format!("{label}.gate_up_bias"), Entry::Vector(b));
    }
    f(&format!("{label}.down"), Entry::Matrix(&e.down));
    if let Some(b) = &e.down_bias {
        f(&format!("{label}.down_bias"), Entry::Vector(b));
    }
}

impl<M, V> Weights<M, V> {
    /// Hands every weight to `f` with a label (`layer 3 attention.qkv`), in the order
    /// [`ModelPlan::fill`] fills them; the entries borrow the weights, so `f` may keep them.
    pub fn visit<'a>(&'a self, f: &mut dyn FnMut(&str, Entry<'a, M, V>)) {
        for (i, l) in self.layers.iter().enumerate() {
            let label = |what: &str| format!("layer {i} {what}");
            f(&label("input_norm"), Entry::Vector(&l.input_norm));
            match &l.attention {
                SelfAttention::Grouped(a) => {
                    f(&label("attention.qkv"), Entry::Matrix(&a.qkv));
                    for (what, v) in [("attention.qkv_bias", &a.qkv_bias), ("attention.q_norm", &a.q_norm), ("attention.k_norm", &a.k_norm)]
                    {
                        if let Some(v) = v {
                            f(&label(what), Entry::Vector(v));
                        }
                    }
                    f(&label("attention.output"), Entry::Matrix(&a.output));
                    for (what, v) in [("attention.output_bias", &a.output_bias), ("attention.sinks", &a.sinks)] {
                        if let Some(v) = v {
                            f(&label(what), Entry::Vector(v));
                        }
                    }
                }
                SelfAttention::Latent(a) => {
                    if let (Some(q_a), Some(norm)) = (&a.q_a, &a.q_a_norm) {
                        f(&label("attention.q_a"), Entry::Matrix(q_a));
                        f(&label("attention.q_a_norm"), Entry::Vector(norm));
                    }
                    f(&label("attention.q"), Entry::Matrix(&a.q));
                    f(&label("attention.kv_a"), Entry::Matrix(&a.kv_a));
                    f(&label("attention.kv_a_norm"), Entry::Vector(&a.kv_a_norm));
                    f(&label("attention.kv_b"), Entry::Matrix(&a.kv_b));
                    f(&label("attention.output"), Entry::Matrix(&a.output));
                }
            }
            f(&label("post_attention_norm"), Entry::Vector(&l.post_attention_norm));
            match &l.feed_forward {
                FeedForward::Dense { gate_up, down } => {
                    f(&label("feed_forward.gate_up"), Entry::Matrix(gate_up));
                    f(&label("feed_forward.down"), Entry::Matrix(down));
                }
                FeedForward::Moe(moe) => {
                    f(&label("feed_forward.router"), Entry::Matrix(&moe.router));
                    if let Some(b) = &moe.router_bias {
                        f(&label("feed_forward.router_bias"), Entry::Vector(b));
                    }
                    if let Some(b) = &moe.score_correction_bias {
                        f(&label("feed_forward.score_correction_bias"), Entry::Vector(b));
                    }
                    for (j, e) in moe.experts.iter().enumerate() {
                        visit_expert(e, &label(&format!("feed_forward.expert{j}")), f);
                    }
                    if let Some(s) = &moe.shared {
                        visit_expert(&s.expert, &label("feed_forward.shared_expert"), f);
                        if let Some(gate) = &s.gate {
                            f(&label("feed_forward.shared_expert.gate"), Entry::Matrix(gate));
                        }
                    }
                }
            }
        }
        f("embed", Entry::Vector(&self.embed));
        f("final_norm", Entry::Vector(&self.final_norm));
        if let Head::Own(m) = &self.head {
            f("head", Entry::Matrix(m));
        }
    }
}

impl<M, V> Weights<M, V> {
    /// Every weight's label and shape, as `matrix` and `vector` read them, in fill order: what
    /// a loader filled can be compared with the plan it filled.
    pub fn shapes(&self, mut matrix: impl FnMut(&M) -> Vec<usize>, mut vector: impl FnMut(&V) -> Vec<usize>) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        self.visit(&mut |label, entry| {
            let shape = match entry {
                Entry::Matrix(m) => matrix(m),
                Entry::Vector(v) => vector(v),
            };
            out.push((label.to_string(), shape));
        });
        out
    }
}

impl ModelPlan {
    /// [`Weights::shapes`] of the plan itself: matrices by `[rows, cols]`, vectors (the
    /// embedding too, which backends hold as a table) by their element count.
    pub fn planned_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.shapes(|s| s.shape.clone(), |s| vec![s.shape.iter().product()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::preset_config;

    #[test]
    fn the_plan_follows_the_config_switches() {
        let plan = ModelPlan::for_config(&preset_config("tiny-qwen2").unwrap());
        let SelfAttention::Grouped(a) = &plan.layers[1].attention else { panic!("tiny-qwen2 has grouped-query attention") };
        assert_eq!(a.qkv.shape, vec![(4 + 2 * 2) * 16, 64]);
        let names: Vec<&str> = a.qkv.parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight"]
        );
        assert_eq!(a.qkv_bias.as_ref().map(|b| b.shape.clone()), Some(vec![128]));
        assert!(a.q_norm.is_none() && matches!(plan.head, Head::Own(_)));
        let qwen3 = ModelPlan::for_config(&preset_config("tiny-qwen3").unwrap());
        let SelfAttention::Grouped(a) = &qwen3.layers[0].attention else { panic!("tiny-qwen3 has grouped-query attention") };
        assert_eq!(a.q_norm.as_ref().map(|n| n.shape.clone()), Some(vec![32]));
        assert!(a.qkv_bias.is_none() && qwen3.head == Head::Tied);
        let FeedForward::Dense { gate_up, down } = &qwen3.layers[0].feed_forward else { panic!("tiny-qwen3 is dense") };
        assert_eq!((gate_up.rows_cols(), down.rows_cols()), ((320, 64), (64, 160)));
    }

    #[test]
    fn moe_plans_name_each_architectures_tensors() {
        let plan = ModelPlan::for_config(&preset_config("tiny-mixtral").unwrap());
        let FeedForward::Moe(moe) = &plan.layers[1].feed_forward else { panic!("tiny-mixtral is a mixture of experts") };
        assert_eq!(
            (moe.router.parts[0].name.as_str(), moe.router.shape.clone()),
            ("model.layers.1.block_sparse_moe.gate.weight", vec![8, 64])
        );
        let names: Vec<&str> = moe.experts[7].gate_up.parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["model.layers.1.block_sparse_moe.experts.7.w1.weight", "model.layers.1.block_sparse_moe.experts.7.w3.weight"]);
        assert_eq!(moe.experts[7].down.shape, vec![64, 32]);
        assert!(moe.router_bias.is_none() && moe.shared.is_none() && moe.experts[0].gate_up_bias.is_none());

        let plan = ModelPlan::for_config(&preset_config("tiny-gpt-oss").unwrap());
        let FeedForward::Moe(moe) = &plan.layers[0].feed_forward else { panic!("tiny-gpt-oss is a mixture of experts") };
        assert_eq!(moe.router_bias.as_ref().map(|b| b.parts[0].name.as_str()), Some("model.layers.0.mlp.router.bias"));
        let bias = moe.experts[3].gate_up_bias.as_ref().unwrap();
        assert_eq!((bias.parts[1].name.as_str(), bias.shape.clone()), ("model.layers.0.mlp.experts.3.up_proj.bias", vec![64]));

        let plan = ModelPlan::for_config(&preset_config("tiny-qwen2-moe").unwrap());
        let FeedForward::Moe(moe) = &plan.layers[0].feed_forward else { panic!("tiny-qwen2-moe is a mixture of experts") };
        let shared = moe.shared.as_ref().unwrap();
        assert_eq!(shared.expert.down.parts[0].name, "model.layers.0.mlp.shared_expert.down_proj.weight");
        assert_eq!(
            (shared.gate.as_ref().unwrap().parts[0].name.as_str(), shared.gate.as_ref().unwrap().shape.clone()),
            ("model.layers.0.mlp.shared_expert_gate.weight", vec![1, 64])
        );
    }

    #[test]
    fn the_plan_holds_every_parameter_once() {
        for name in crate::presets::PRESET_NAMES.iter().filter(|n| !n.contains("70b")) {
            let c = preset_config(name).unwrap();
            let mut params = 0;
            ModelPlan::for_config(&c).visit(&mut |_, entry| {
                let spec = match entry {
                    Entry::Matrix(s) | Entry::Vector(s) => s,
                };
                assert_eq!(spec.shape[0], spec.parts.iter().map(|p| p.shape[0]).sum::<usize>());
                params += spec.shape.iter().product::<usize>();
            });
            // The config's count leaves out attention biases, q/k norms and sinks (MLA's norms are in it).
            let (qd, kd) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
            let qk_norms = match (c.qk_norm, c.qk_norm_full_width) {
                (false, _) => 0,
                (true, false) => 2 * c.head_dim,
                (true, true) => qd + kd,
            };
            let extra = c.num_layers
                * (if c.attention_bias { qd + 2 * kd } else { 0 }
                    + if c.attention_output_bias { c.hidden_size } else { 0 }
                    + if c.attention_sinks { c.num_heads } else { 0 }
                    + qk_norms);
            assert_eq!(params, c.num_params() + extra, "{name}");
        }
    }

    #[test]
    fn fp8_quantizes_the_layer_projections_and_nothing_else() {
        let plan = ModelPlan::for_config(&preset_config("tiny-untied").unwrap()).quantized(Quantization::Fp8);
        let mut fp8 = Vec::new();
        plan.visit(&mut |label, entry| {
            let (Entry::Matrix(s) | Entry::Vector(s)) = entry;
            if s.dtype == WeightDtype::Fp8 {
                fp8.push(label.split_once(' ').map_or(label.to_string(), |(_, rest)| rest.split_once(' ').unwrap().1.to_string()));
            }
        });
        let per_layer = ["attention.qkv", "attention.output", "feed_forward.gate_up", "feed_forward.down"];
        assert_eq!(fp8.len(), 4 * plan.layers.len(), "{fp8:?}");
        assert!(fp8.iter().all(|l| per_layer.contains(&l.as_str())), "{fp8:?}");
        assert_eq!(
            ModelPlan::for_config(&preset_config("tiny").unwrap()).quantized(Quantization::None),
            ModelPlan::for_config(&preset_config("tiny").unwrap())
        );
        assert_eq!(("fp8".parse(), "none".parse()), (Ok(Quantization::Fp8), Ok(Quantization::None)));
        assert!("int4".parse::<Quantization>().unwrap_err().contains("expected none or fp8"));
    }
}
