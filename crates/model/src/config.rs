//! The llama-family decoder's configuration: sizes plus the switches that make it Llama 2/3,
//! SmolLM, Mistral, Qwen2 or Qwen3, OLMoE's full-width q/k norms, GPT-OSS's attention (sinks,
//! output bias, alternating sliding window, YaRN), DeepSeek's multi-head latent attention, and the
//! mixture-of-experts feed-forward of Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GPT-OSS and DeepSeek
//! (grouped routing, shared experts, dense first layers), read from GGUF metadata or a Hugging
//! Face `config.json` (crates/model/src/deepseek_config.rs reads DeepSeek's).

use crate::deepseek_config::{deepseek_config, is_deepseek};
use crate::moe::{ExpertActivation, GroupLimit, RoutingMethod};
use crate::yarn::{yarn_mscale, Yarn};
use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Llama-3 style RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// The mixture-of-experts feed-forward the layers run in place of the dense one (all of them,
/// or all after the first `first_dense_layers`).
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Each routed expert's intermediate size.
    pub expert_intermediate_size: usize,
    pub routing: RoutingMethod,
    pub activation: ExpertActivation,
    /// GPT-OSS: biases on the router and on every expert's projections.
    pub biases: bool,
    /// A shared expert of this intermediate size that every token runs (DeepSeek's
    /// `n_shared_experts` experts are one of `n_shared · moe_intermediate_size`).
    pub shared_expert_intermediate_size: Option<usize>,
    /// Qwen2-MoE: the shared expert's output is scaled by `sigmoid(gate · x)`; DeepSeek's is not.
    pub shared_expert_gated: bool,
    /// A preset's planted imbalance: the exponent of the Zipf-shaped gate bias
    /// ([`crate::moe::zipf_gate_bias`]) added to the router logits.
    pub gate_zipf_exponent: Option<f64>,
    /// DeepSeekV3 routing: the experts' groups and how many of them a token may use.
    pub groups: GroupLimit,
    /// DeepSeek-V3: a per-expert bias (`e_score_correction_bias`) added to the scores that
    /// choose the experts, not to their weights.
    pub score_correction_bias: bool,
    /// DeepSeek: every routed expert's weight is multiplied by this (1 elsewhere).
    pub routed_scaling_factor: f32,
    /// DeepSeek's `first_k_dense_replace`: the first layers keep a dense feed-forward of the
    /// model's `intermediate_size`.
    pub first_dense_layers: usize,
}

impl MoeConfig {
    /// Weights of one layer's block: router, experts, shared expert and its gate, biases.
    pub fn num_params(&self, hidden: usize) -> usize {
        let (e, f) = (self.num_experts, self.expert_intermediate_size);
        let biases = if self.biases { e + e * (2 * f + hidden) } else { 0 };
        let gate = if self.shared_expert_gated { hidden } else { 0 };
        let shared = self.shared_expert_intermediate_size.map_or(0, |fs| 3 * hidden * fs + gate);
        let correction = if self.score_correction_bias { e } else { 0 };
        e * hidden + e * 3 * hidden * f + shared + biases + correction
    }

    /// The plain settings: ungrouped, unscaled, every layer a mixture, no shared expert.
    pub fn new(num_experts: usize, top_k: usize, expert_intermediate_size: usize, routing: RoutingMethod) -> Self {
        MoeConfig {
            num_experts,
            top_k,
            expert_intermediate_size,
            routing,
            activation: ExpertActivation::SwiGlu,
            biases: false,
            shared_expert_intermediate_size: None,
            shared_expert_gated: false,
            gate_zipf_exponent: None,
            groups: GroupLimit::NONE,
            score_correction_bias: false,
            routed_scaling_factor: 1.0,
            first_dense_layers: 0,
        }
    }

    fn validate(&self, num_layers: usize) -> Result<()> {
        crate::moe::check_top_k(self.num_experts, self.top_k).context("model config: mixture of experts")?;
        self.groups.check(self.num_experts, self.top_k).context("model config: mixture of experts")?;
        if !(self.routed_scaling_factor.is_finite() && self.routed_scaling_factor > 0.0) {
            bail!("model config: routed_scaling_factor {} is not a positive finite number", self.routed_scaling_factor);
        }
        if self.first_dense_layers > num_layers {
            bail!("model config: {} dense first layers of {num_layers}: expected at most the layer count", self.first_dense_layers);
        }
        if self.expert_intermediate_size == 0 || self.shared_expert_intermediate_size == Some(0) {
            bail!("model config: an expert's intermediate size is 0, expected a positive size");
        }
        if let Some(s) = self.gate_zipf_exponent.filter(|s| !(s.is_finite() && *s >= 0.0)) {
            bail!("model config: Zipf gate exponent {s} is not a non-negative finite number");
        }
        Ok(())
    }
}

/// DeepSeek's multi-head latent attention: queries through an optional low-rank `q_lora_rank`,
/// keys and values through one compressed latent of `kv_lora_rank` (RMS-normed) plus a
/// `qk_rope_head_dim` rotary key shared by every head. Each head's query and key are
/// `qk_nope_head_dim + qk_rope_head_dim` wide, its value `v_head_dim`. The KV cache holds the
/// latent and the rotary key only.
#[derive(Debug, Clone, PartialEq)]
pub struct MlaConfig {
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
}

impl MlaConfig {
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// What one token's cache row holds per layer: the latent, then the rotary key.
    pub fn latent_width(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }

    /// One layer's attention weights for `heads` heads of a model of width `hidden`, norms included.
    pub fn num_params(&self, hidden: usize, heads: usize) -> usize {
        let q = match self.q_lora_rank {
            None => heads * self.qk_head_dim() * hidden,
            Some(r) => r * hidden + r + heads * self.qk_head_dim() * r,
        };
        let kv = self.latent_width() * hidden + self.kv_lora_rank + heads * (self.qk_nope_head_dim + self.v_head_dim) * self.kv_lora_rank;
        q + kv + hidden * heads * self.v_head_dim
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Architecture family as named by its source (`llama`, `mistral`, `qwen2`, `qwen3`, ...).
    pub arch: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub rms_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// Per-frequency divisors that GGUF files store (`rope_freqs.weight`) in place of Llama-3 scaling.
    pub rope_freq_divisors: Option<Vec<f64>>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Qwen2, GPT-OSS: biases on the q/k/v projections.
    pub attention_bias: bool,
    /// GPT-OSS: a bias on the attention's output projection too.
    pub attention_output_bias: bool,
    /// Qwen3: RMSNorm of each query and key head before RoPE.
    pub qk_norm: bool,
    /// OLMoE: the q/k norms cover the whole projection (`[heads·head_dim]`, `[kv_heads·head_dim]`)
    /// rather than each head.
    pub qk_norm_full_width: bool,
    /// GPT-OSS: a learned logit per query head that joins every softmax's denominator.
    pub attention_sinks: bool,
    /// Mistral, GPT-OSS: attend to at most this many most recent positions.
    pub sliding_window: Option<usize>,
    /// GPT-OSS's `layer_types`: whether each layer uses the sliding window (the others attend to
    /// every position); `None`: every layer does.
    pub sliding_layers: Option<Vec<bool>>,
    /// GPT-OSS, DeepSeek: YaRN RoPE scaling (in place of Llama-3's).
    pub yarn: Option<Yarn>,
    /// DeepSeek: multi-head latent attention in place of grouped-query attention; `head_dim` is
    /// then its rotary part, `qk_rope_head_dim`, and `num_kv_heads` equals `num_heads`.
    pub mla: Option<MlaConfig>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The mixture of experts the layers' feed-forward is; `None` for a dense model.
    pub moe: Option<MoeConfig>,
}

impl ModelConfig {
    /// Whether layer `layer` runs the mixture of experts (not one of the dense first layers).
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| layer >= m.first_dense_layers)
    }

    /// The layers that run the mixture of experts.
    pub fn num_moe_layers(&self) -> usize {
        (0..self.num_layers).filter(|&l| self.is_moe_layer(l)).count()
    }

    /// Values one token keeps in one layer's KV cache: keys and values of every KV head, or
    /// MLA's latent and rotary key.
    pub fn kv_values_per_token_per_layer(&self) -> usize {
        match &self.mla {
            Some(m) => m.latent_width(),
            None => 2 * self.num_kv_heads * self.head_dim,
        }
    }

    /// For latent attention, the values one token would keep in one layer as full keys and values
    /// of every head (`heads × (qk_nope + qk_rope + v_head)`): the cache MLA compresses.
    pub fn expanded_kv_values_per_token_per_layer(&self) -> Option<usize> {
        self.mla.as_ref().map(|m| self.num_heads * (m.qk_head_dim() + m.v_head_dim))
    }

    /// MLA's softmax scale: `1/sqrt(qk_head_dim)`, times `mscale(factor, mscale_all_dim)²` under
    /// YaRN with DeepSeek's `mscale_all_dim`.
    pub fn mla_softmax_scale(&self) -> Option<f64> {
        let m = self.mla.as_ref()?;
        let scale = 1.0 / (m.qk_head_dim() as f64).sqrt();
        let mscale = self.yarn.as_ref().and_then(|y| y.mscale_all_dim.map(|all| yarn_mscale(y.factor, all))).unwrap_or(1.0);
        Some(scale * mscale * mscale)
    }

    /// The sliding window of layer `layer`, `None` where it attends to every position.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        match &self.sliding_layers {
            Some(sliding) if !sliding[layer] => None,
            _ => self.sliding_window,
        }
    }

    /// The factor on RoPE's cosines and sines: YaRN's attention factor, else 1.
    pub fn rope_attention_factor(&self) -> f64 {
        self.yarn.as_ref().map_or(1.0, |y| y.attention_factor)
    }

    /// RoPE inverse frequencies, Llama-3 or YaRN scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        if let Some(yarn) = &self.yarn {
            return yarn.inv_freq(self.rope_theta, self.head_dim);
        }
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let divisor = self.rope_freq_divisors.as_ref().map_or(1.0, |d| d[i]);
                let f = self.rope_theta.powf(-(2.0 * i as f64) / self.head_dim as f64) / divisor;
                match &self.rope_scaling {
                    None => f,
                    Some(s) => {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
                        let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / s.factor
                        } else {
                            let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }

    /// Number of weights, for memory estimates.
    pub fn num_params(&self) -> usize {
        let (h, hd, f) = (self.hidden_size, self.head_dim, self.intermediate_size);
        let attn = match &self.mla {
            Some(m) => m.num_params(h, self.num_heads),
            None => h * hd * (2 * self.num_heads + 2 * self.num_kv_heads),
        };
        let moe_layers = self.num_moe_layers();
        let feed_forward = (self.num_layers - moe_layers) * 3 * h * f + self.moe.as_ref().map_or(0, |m| moe_layers * m.num_params(h));
        let lm_head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        self.vocab_size * h + self.num_layers * (attn + 2 * h) + feed_forward + h + lm_head
    }

    /// Checks the sizes are coherent; every loader calls it.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.intermediate_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                bail!("model config: {name} is 0, expected a positive size");
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            bail!("model config: {} attention heads is not a multiple of {} KV heads", self.num_heads, self.num_kv_heads);
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!("model config: head_dim {} is odd, RoPE needs an even head dimension", self.head_dim);
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            bail!("model config: RMS norm epsilon {} is not a positive finite number", self.rms_eps);
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            bail!("model config: RoPE base {} is not a positive finite number", self.rope_theta);
        }
        if let Some(r) = &self.rope_scaling {
            let fields = [("factor", r.factor), ("low_freq_factor", r.low_freq_factor), ("high_freq_factor", r.high_freq_factor)];
            if let Some((name, v)) = fields.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
                bail!("model config: RoPE scaling {name} {v} is not a positive finite number");
            }
            if !(r.original_max_position_embeddings.is_finite() && r.original_max_position_embeddings > 0.0)
                || r.high_freq_factor <= r.low_freq_factor
            {
                bail!("model config: RoPE scaling needs a positive original context and high_freq_factor > low_freq_factor: {r:?}");
            }
        }
        if let Some(d) = self.rope_freq_divisors.as_ref().and_then(|d| d.iter().find(|v| !(v.is_finite() && **v > 0.0))) {
            bail!("model config: a RoPE frequency divisor is {d}, not a positive finite number");
        }
        if let Some(y) = &self.yarn {
            let fields = [
                ("factor", y.factor),
                ("original_max_position_embeddings", y.original_max_position_embeddings),
                ("beta_fast", y.beta_fast),
                ("beta_slow", y.beta_slow),
                ("attention_factor", y.attention_factor),
            ];
            if let Some((name, v)) = fields.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
                bail!("model config: YaRN {name} {v} is not a positive finite number");
            }
            if self.rope_scaling.is_some() || self.rope_freq_divisors.is_some() {
                bail!("model config: YaRN and Llama-3 RoPE scaling are both given; expected one");
            }
        }
        if self.max_position_embeddings == 0 || self.sliding_window == Some(0) {
            bail!("model config: the context length and the sliding window must be positive");
        }
        if let Some(sliding) = &self.sliding_layers {
            if sliding.len() != self.num_layers {
                bail!("model config: layer_types names {} layers, the model has {}", sliding.len(), self.num_layers);
            }
            if self.sliding_window.is_none() && sliding.contains(&true) {
                bail!("model config: layer_types has sliding_attention layers but no sliding_window is given");
            }
        }
        if let Some(moe) = &self.moe {
            moe.validate(self.num_layers)?;
        }
        if let Some(m) = &self.mla {
            let sizes = [
                ("q_lora_rank", m.q_lora_rank.unwrap_or(1)),
                ("kv_lora_rank", m.kv_lora_rank),
                ("qk_nope_head_dim", m.qk_nope_head_dim),
                ("qk_rope_head_dim", m.qk_rope_head_dim),
                ("v_head_dim", m.v_head_dim),
            ];
            if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
                bail!("model config: MLA {name} is 0, expected a positive size");
            }
            if self.head_dim != m.qk_rope_head_dim || self.num_kv_heads != self.num_heads {
                bail!(
                    "model config: MLA expects head_dim = qk_rope_head_dim ({}) and one KV head per head ({}), got {} and {}",
                    m.qk_rope_head_dim,
                    self.num_heads,
                    self.head_dim,
                    self.num_kv_heads
                );
            }
            if self.attention_bias || self.qk_norm || self.attention_sinks || self.sliding_window.is_some() {
                bail!("model config: MLA has no attention biases, q/k norms, sinks or sliding window");
            }
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json` of a llama-family model.
    pub fn from_hf_json(text: &str, source: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).with_context(|| format!("{source}: not valid JSON"))?;
        let arch = v["model_type"].as_str().unwrap_or("llama").to_string();
        const SUPPORTED: [&str; 12] = [
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "smollm",
            "mixtral",
            "qwen2_moe",
            "qwen3_moe",
            "olmoe",
            "gpt_oss",
            "deepseek_v3",
            "deepseek_v2",
        ];
        if !SUPPORTED.contains(&arch.as_str()) {
            bail!("{source}: model_type {arch:?} is not supported; expected one of {SUPPORTED:?}");
        }
        if !v["clip_qkv"].is_null() {
            bail!("{source}: clip_qkv {} clamps the q/k/v projections, which lumen does not do; expected null", v["clip_qkv"]);
        }
        let int = |key: &str| -> Result<usize> {
            v[key].as_u64().map(|x| x as usize).with_context(|| format!("{source}: missing or non-integer {key:?}"))
        };
        let hidden_size = int("hidden_size")?;
        let num_heads = int("num_attention_heads")?;
        // transformers 5 writes `rope_parameters` (the base and the scaling in one object) where
        // earlier versions wrote `rope_theta` and `rope_scaling`.
        let rope = if v["rope_parameters"].is_object() { &v["rope_parameters"] } else { &v["rope_scaling"] };
        let (rope_scaling, yarn) = hf_rope_scaling(rope, source)?;
        let rope_theta = match (&v["rope_parameters"]["rope_theta"], &v["rope_theta"]) {
            (Value::Null, Value::Null) => 10000.0,
            (Value::Null, theta) | (theta, _) => {
                theta.as_f64().with_context(|| format!("{source}: rope_theta is {theta}, expected a number"))?
            }
        };
        let eos_token_ids = match &v["eos_token_id"] {
            Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Value::Array(a) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
            _ => Vec::new(),
        };
        let use_sliding = v["use_sliding_window"].as_bool().unwrap_or(arch == "mistral" || arch == "gpt_oss");
        let sliding_window = if use_sliding { v["sliding_window"].as_u64().map(|x| x as usize) } else { None };
        let sliding_layers = match (&v["layer_types"], sliding_window) {
            (Value::Array(types), Some(_)) => Some(
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        _ => bail!("{source}: layer_types holds {t}; expected \"sliding_attention\" or \"full_attention\""),
                    })
                    .collect::<Result<Vec<bool>>>()?,
            ),
            _ => None,
        };
        let attention_bias = v["attention_bias"].as_bool().unwrap_or(arch == "qwen2" || arch == "qwen2_moe");
        let config = ModelConfig {
            vocab_size: int("vocab_size")?,
            hidden_size,
            num_layers: int("num_hidden_layers")?,
            num_heads,
            num_kv_heads: v["num_key_value_heads"].as_u64().map_or(num_heads, |x| x as usize),
            head_dim: v["head_dim"].as_u64().map_or(hidden_size / num_heads.max(1), |x| x as usize),
            intermediate_size: int("intermediate_size")?,
            rms_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-5) as f32,
            rope_theta,
            rope_scaling,
            rope_freq_divisors: None,
            max_position_embeddings: v["max_position_embeddings"].as_u64().unwrap_or(4096) as usize,
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            attention_bias,
            // Llama's attention_bias covers o_proj too; Qwen2's covers q/k/v only.
            attention_output_bias: attention_bias && matches!(arch.as_str(), "gpt_oss" | "llama"),
            qk_norm: matches!(arch.as_str(), "qwen3" | "qwen3_moe" | "olmoe"),
            qk_norm_full_width: arch == "olmoe",
            attention_sinks: arch == "gpt_oss",
            sliding_window,
            sliding_layers,
            yarn,
            mla: None,
            bos_token_id: v["bos_token_id"].as_u64().map(|x| x as u32),
            eos_token_ids,
            moe: hf_moe(&v, &arch, source)?,
            arch,
        };
        let config = if is_deepseek(&config.arch) { deepseek_config(&v, &config.arch.clone(), source, config)? } else { config };
        config.validate().with_context(|| format!("{source}: inconsistent config"))?;
        Ok(config)
    }
}

/// The RoPE scaling of a Hugging Face `config.json`'s `rope_scaling` (or transformers 5's
/// `rope_parameters`, whose `rope_type` may be `default`: none): Llama-3's, or YaRN's with
/// transformers' defaults (beta_fast 32, beta_slow 1, truncate true, the attention factor from
/// `attention_factor`, else `mscale`/`mscale_all_dim`, else the factor).
fn hf_rope_scaling(s: &Value, source: &str) -> Result<(Option<RopeScaling>, Option<Yarn>)> {
    if s.is_null() {
        return Ok((None, None));
    }
    let num = |k: &str| s[k].as_f64().with_context(|| format!("{source}: rope_scaling.{k} is missing or not a number"));
    let optional = |k: &str| -> Result<Option<f64>> {
        match &s[k] {
            Value::Null => Ok(None),
            x => x.as_f64().map(Some).with_context(|| format!("{source}: rope_scaling.{k} is {x}, expected a number")),
        }
    };
    match s["rope_type"].as_str().or(s["type"].as_str()).unwrap_or("") {
        "default" => Ok((None, None)),
        "llama3" => Ok((
            Some(RopeScaling {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            }),
            None,
        )),
        "yarn" => {
            let factor = num("factor")?;
            let beta_fast = optional("beta_fast")?.filter(|b| *b != 0.0).unwrap_or(32.0);
            let beta_slow = optional("beta_slow")?.filter(|b| *b != 0.0).unwrap_or(1.0);
            let truncate = match &s["truncate"] {
                Value::Null => true,
                t => t.as_bool().with_context(|| format!("{source}: rope_scaling.truncate is {t}, expected true or false"))?,
            };
            let mut yarn = Yarn::new(factor, num("original_max_position_embeddings")?, beta_fast, beta_slow, truncate);
            let mscales = (optional("mscale")?.filter(|m| *m != 0.0), optional("mscale_all_dim")?.filter(|m| *m != 0.0));
            yarn.mscale_all_dim = mscales.1;
            yarn.attention_factor = match (optional("attention_factor")?, mscales) {
                (Some(given), _) => given,
                (None, (Some(m), Some(all))) => yarn_mscale(factor, m) / yarn_mscale(factor, all),
                (None, _) => yarn.attention_factor,
            };
            Ok((None, Some(yarn)))
        }
        kind => bail!("{source}: rope_scaling type {kind:?} is not supported; expected \"llama3\" or \"yarn\""),
    }
}

/// The mixture of experts of a Hugging Face `config.json`: Mixtral (`num_local_experts`,
/// RenormalizeNaive), Qwen2-MoE and Qwen3-MoE (`num_experts`, `moe_intermediate_size`,
/// `norm_topk_prob` choosing RenormalizeNaive or Default, Qwen2-MoE's shared expert).
fn hf_moe(v: &Value, arch: &str, source: &str) -> Result<Option<MoeConfig>> {
    let int = |key: &str| -> Result<usize> {
        v[key].as_u64().map(|x| x as usize).with_context(|| format!("{source}: {arch} needs an integer {key:?}"))
    };
    // transformers 5 saves some configs' `num_experts` under its alias `num_local_experts`.
    let experts = || match v["num_experts"].as_u64() {
        Some(n) => Ok(n as usize),
        None => v["num_local_experts"]
            .as_u64()
            .map(|n| n as usize)
            .with_context(|| format!("{source}: {arch} needs an integer \"num_experts\" or \"num_local_experts\"")),
    };
    let (num_experts, expert_intermediate_size, routing) = match arch {
        "mixtral" => (experts()?, int("intermediate_size")?, RoutingMethod::RenormalizeNaive),
        "qwen2_moe" | "qwen3_moe" => {
            for key in ["mlp_only_layers", "decoder_sparse_step"] {
                let dense_layers = match key {
                    "mlp_only_layers" => v[key].as_array().is_some_and(|a| !a.is_empty()),
                    _ => v[key].as_u64().is_some_and(|step| step != 1),
                };
                if dense_layers {
                    bail!("{source}: {key} makes some layers dense; lumen runs models whose every layer is a mixture of experts");
                }
            }
            let renormalize = v["norm_topk_prob"].as_bool().unwrap_or(arch == "qwen3_moe");
            let routing = if renormalize { RoutingMethod::RenormalizeNaive } else { RoutingMethod::Default };
            (experts()?, int("moe_intermediate_size")?, routing)
        }
        "olmoe" => {
            let routing =
                if v["norm_topk_prob"].as_bool().unwrap_or(false) { RoutingMethod::RenormalizeNaive } else { RoutingMethod::Default };
            (experts()?, int("intermediate_size")?, routing)
        }
        "gpt_oss" => (experts()?, int("intermediate_size")?, RoutingMethod::Renormalize),
        _ => return Ok(None),
    };
    let activation = match arch {
        "gpt_oss" => match &v["swiglu_limit"] {
            Value::Null => ExpertActivation::GPT_OSS,
            l => {
                let limit = l.as_f64().filter(|l| l.is_finite() && *l > 0.0);
                let limit = limit.with_context(|| format!("{source}: swiglu_limit is {l}, expected a positive number"))?;
                ExpertActivation::ClampedSwiGlu { alpha: 1.702, limit: limit as f32 }
            }
        },
        _ => ExpertActivation::SwiGlu,
    };
    let shared_expert_intermediate_size = match arch {
        "qwen2_moe" => Some(int("shared_expert_intermediate_size")?),
        _ => None,
    };
    Ok(Some(MoeConfig {
        activation,
        biases: arch == "gpt_oss",
        shared_expert_intermediate_size,
        shared_expert_gated: shared_expert_intermediate_size.is_some(),
        ..MoeConfig::new(num_experts, int("num_experts_per_tok")?, expert_intermediate_size, routing)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_qwen3_config() {
        let text = r#"{"model_type":"qwen3","hidden_size":64,"num_attention_heads":4,"num_key_value_heads":2,
            "head_dim":32,"num_hidden_layers":2,"intermediate_size":128,"vocab_size":100,"rope_theta":1000000,
            "eos_token_id":[5,6],"tie_word_embeddings":true}"#;
        let c = ModelConfig::from_hf_json(text, "config.json").unwrap();
        assert!(c.qk_norm && !c.attention_bias && c.tie_word_embeddings);
        assert_eq!((c.head_dim, c.num_kv_heads, c.eos_token_ids.clone()), (32, 2, vec![5, 6]));
    }

    #[test]
    fn reads_transformers_5_rope_parameters() {
        let base = r#"{"model_type":"mixtral","hidden_size":64,"num_attention_heads":4,"num_hidden_layers":2,
            "intermediate_size":96,"vocab_size":100,"num_local_experts":8,"num_experts_per_tok":2,"#;
        let plain = format!(r#"{base}"rope_parameters":{{"rope_type":"default","rope_theta":1000000.0}}}}"#);
        let c = ModelConfig::from_hf_json(&plain, "config.json").unwrap();
        assert_eq!((c.rope_theta, c.rope_scaling.clone(), c.yarn.is_none()), (1e6, None, true));
        let yarn = format!(
            r#"{base}"rope_parameters":{{"rope_type":"yarn","rope_theta":150000,"factor":32.0,"original_max_position_embeddings":4096,"beta_fast":32.0,"beta_slow":1.0,"truncate":false}}}}"#
        );
        let c = ModelConfig::from_hf_json(&yarn, "config.json").unwrap();
        assert_eq!(c.rope_theta, 150000.0);
        assert!(c.yarn.as_ref().is_some_and(|y| !y.truncate), "{:?}", c.yarn);
        let older = format!(r#"{base}"rope_theta":500000,"rope_scaling":null}}"#);
        assert_eq!(ModelConfig::from_hf_json(&older, "config.json").unwrap().rope_theta, 5e5);
        let bad = format!(r#"{base}"rope_parameters":{{"rope_type":"default","rope_theta":"big"}}}}"#);
        let e = format!("{:#}", ModelConfig::from_hf_json(&bad, "m/config.json").unwrap_err());
        assert!(e.contains("m/config.json") && e.contains("rope_theta"), "{e}");
    }

    #[test]
    fn reads_mixture_of_experts_configs() {
        let mixtral = r#"{"model_type":"mixtral","hidden_size":64,"num_attention_heads":4,"num_key_value_heads":2,
            "num_hidden_layers":2,"intermediate_size":96,"vocab_size":100,"num_local_experts":8,"num_experts_per_tok":2}"#;
        let moe = ModelConfig::from_hf_json(mixtral, "config.json").unwrap().moe.unwrap();
        assert_eq!((moe.num_experts, moe.top_k, moe.expert_intermediate_size, moe.routing), (8, 2, 96, RoutingMethod::RenormalizeNaive));
        let qwen2 = r#"{"model_type":"qwen2_moe","hidden_size":64,"num_attention_heads":4,"num_hidden_layers":2,
            "intermediate_size":96,"moe_intermediate_size":32,"shared_expert_intermediate_size":48,"vocab_size":100,
            "num_experts":16,"num_experts_per_tok":4,"norm_topk_prob":false}"#;
        let c = ModelConfig::from_hf_json(qwen2, "config.json").unwrap();
        let moe = c.moe.unwrap();
        assert!(c.attention_bias && moe.routing == RoutingMethod::Default);
        assert_eq!((moe.expert_intermediate_size, moe.shared_expert_intermediate_size), (32, Some(48)));
    }

    #[test]
    fn bad_mixture_of_experts_configs_are_named() {
        let base = r#"{"model_type":"qwen3_moe","hidden_size":64,"num_attention_heads":4,"num_hidden_layers":2,
            "intermediate_size":96,"moe_intermediate_size":32,"vocab_size":100,"num_experts":4,"num_experts_per_tok":8}"#;
        let e = format!("{:#}", ModelConfig::from_hf_json(base, "m/config.json").unwrap_err());
        assert!(e.contains("m/config.json") && e.contains("8 experts per token out of 4"), "{e}");
        let e = format!("{:#}", ModelConfig::from_hf_json(&base.replace(r#""num_experts":4,"#, ""), "m/config.json").unwrap_err());
        assert!(e.contains("qwen3_moe needs an integer \"num_experts\" or \"num_local_experts\""), "{e}");
        // transformers 5 writes the alias.
        let aliased = base.replace(r#""num_experts":4,"num_experts_per_tok":8"#, r#""num_local_experts":16,"num_experts_per_tok":8"#);
        assert_eq!(ModelConfig::from_hf_json(&aliased, "m/config.json").unwrap().moe.unwrap().num_experts, 16);
        let e = format!("{:#}", ModelConfig::from_hf_json(&base.replace("{", r#"{"mlp_only_layers":[1],"#), "m/config.json").unwrap_err());
        assert!(e.contains("mlp_only_layers makes some layers dense"), "{e}");
    }

    #[test]
    fn llama_s_attention_bias_covers_the_output_projection_and_qwen2_s_does_not() {
        let config = |model_type: &str| {
            let json = format!(
                r#"{{"model_type":"{model_type}","hidden_size":64,"num_attention_heads":4,"num_hidden_layers":1,
                "intermediate_size":32,"vocab_size":100,"attention_bias":true}}"#
            );
            ModelConfig::from_hf_json(&json, "config.json").unwrap()
        };
        let (llama, qwen2) = (config("llama"), config("qwen2"));
        assert!(llama.attention_bias && llama.attention_output_bias);
        assert!(qwen2.attention_bias && !qwen2.attention_output_bias);
    }

    #[test]
    fn reads_gpt_oss_attention_and_refuses_what_it_cannot_run() {
        let gpt_oss = r#"{"model_type":"gpt_oss","hidden_size":64,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,
            "num_hidden_layers":3,"intermediate_size":32,"vocab_size":100,"num_local_experts":8,"num_experts_per_tok":2,
            "attention_bias":true,"sliding_window":128,"swiglu_limit":5.0,"rope_theta":150000,
            "layer_types":["sliding_attention","full_attention","sliding_attention"],
            "rope_scaling":{"rope_type":"yarn","factor":32.0,"original_max_position_embeddings":4096,"beta_fast":32.0,"beta_slow":1.0,"truncate":false}}"#;
        let c = ModelConfig::from_hf_json(gpt_oss, "config.json").unwrap();
        assert_eq!((c.layer_window(0), c.layer_window(1), c.layer_window(2)), (Some(128), None, Some(128)));
        assert_eq!(c.yarn, Some(Yarn::new(32.0, 4096.0, 32.0, 1.0, false)));
        assert!(c.attention_sinks && c.attention_output_bias && c.moe.as_ref().unwrap().biases);
        assert_eq!(c.moe.unwrap().activation, ExpertActivation::ClampedSwiGlu { alpha: 1.702, limit: 5.0 });
        let cases = [
            (gpt_oss.replace(r#""full_attention","#, r#""chunked_attention","#), "layer_types holds \"chunked_attention\""),
            (gpt_oss.replace(r#","sliding_attention"]"#, "]"), "layer_types names 2 layers, the model has 3"),
            (gpt_oss.replace("yarn", "dynamic"), "rope_scaling type \"dynamic\" is not supported"),
            (gpt_oss.replace(r#""factor":32.0"#, r#""factor":-1"#), "YaRN factor -1"),
            (gpt_oss.replace(r#""model_type":"gpt_oss","#, r#""model_type":"olmoe","clip_qkv":8,"#), "clip_qkv 8"),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", ModelConfig::from_hf_json(&text, "m/config.json").unwrap_err());
            assert!(e.contains("m/config.json") && e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn rejects_unknown_model_type_and_missing_fields() {
        let e = ModelConfig::from_hf_json(r#"{"model_type":"gpt2"}"#, "x/config.json").unwrap_err();
        assert!(format!("{e:#}").contains("model_type \"gpt2\" is not supported"), "{e:#}");
        let e = ModelConfig::from_hf_json(r#"{"model_type":"llama","hidden_size":8}"#, "x/config.json").unwrap_err();
        assert!(format!("{e:#}").contains("num_attention_heads"), "{e:#}");
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let c = ModelConfig {
            arch: "llama".into(),
            vocab_size: 1,
            hidden_size: 128,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 128,
            intermediate_size: 1,
            rms_eps: 1e-5,
            rope_theta: 500000.0,
            rope_scaling: Some(RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            }),
            rope_freq_divisors: None,
            max_position_embeddings: 131072,
            tie_word_embeddings: false,
            attention_bias: false,
            attention_output_bias: false,
            qk_norm: false,
            qk_norm_full_width: false,
            attention_sinks: false,
            sliding_window: None,
            sliding_layers: None,
            yarn: None,
            mla: None,
            bos_token_id: None,
            eos_token_ids: vec![],
            moe: None,
        };
        let f = c.rope_inv_freq();
        assert_eq!(f[0], 1.0);
        let plain = 500000f64.powf(-126.0 / 128.0);
        assert!((f[63] - plain / 8.0).abs() < 1e-15);
    }

    #[test]
    fn impossible_numbers_in_a_config_are_refused() {
        let base = crate::presets::preset_config("tiny").unwrap();
        assert!(base.validate().is_ok());
        let cases: Vec<(ModelConfig, &str)> = vec![
            (ModelConfig { rms_eps: f32::NAN, ..base.clone() }, "RMS norm epsilon NaN"),
            (ModelConfig { rms_eps: 0.0, ..base.clone() }, "RMS norm epsilon 0"),
            (ModelConfig { rope_theta: -1.0, ..base.clone() }, "RoPE base -1"),
            (ModelConfig { rope_theta: f64::INFINITY, ..base.clone() }, "RoPE base inf"),
            (
                ModelConfig { rope_scaling: Some(RopeScaling { factor: 0.0, ..base.rope_scaling.clone().unwrap() }), ..base.clone() },
                "RoPE scaling factor 0",
            ),
            (ModelConfig { rope_freq_divisors: Some(vec![1.0, f64::NAN]), ..base.clone() }, "divisor is NaN"),
            (ModelConfig { max_position_embeddings: 0, ..base.clone() }, "context length"),
            (ModelConfig { num_kv_heads: 3, ..base.clone() }, "not a multiple of 3 KV heads"),
        ];
        for (c, want) in cases {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
