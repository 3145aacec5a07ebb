//! Turns a model spec into a [`Model`]: finds the source, reads its config, loads and checks its
//! weights, builds its tokenizer, and refuses what would not fit in memory.

use crate::config::ModelConfig;
use crate::cuda::{CudaWeights, RankShard};
use crate::deepseek_config::{deinterleave_rope_rows, is_deepseek, rope_interleaved};
use crate::gguf::{GgufFile, MetaValue};
use crate::gpt_oss_checkpoint::fused_expert_weight;
use crate::llama::Decoder;
use crate::perfect_router::{perfect_router_from_env, PERFECT_ROUTER_ENV};
use crate::plan::{ModelPlan, Quantization};
use crate::presets::{is_preset, preset_config, random_tensor, PRESET_NAMES};
use crate::safetensors::SafetensorsDir;
use crate::tensor_parallel::{check_split, rank_config, rank_plan};
use crate::weights::{assemble_cpu, check_shape, Fetch};
use crate::{Executor, Model};
use anyhow::{bail, ensure, Context, Result};
use lumen_backend::cuda::Gpu;
use lumen_tokenizer::{ChatTemplate, PreTokenizer, Tokenizer, TokenizerSpec};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The GGUF that set-up fetches, and the command that fetches it.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SETUP_COMMAND: &str = "scripts/setup.sh";

/// Where the default model is looked for: `$LUMEN_MODEL`, then `./models/`, then the `models/`
/// folder of the checkout this binary was built from.
pub fn default_model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("LUMEN_MODEL") {
        return PathBuf::from(p);
    }
    let local = Path::new("models").join(DEFAULT_MODEL_FILE);
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models").join(DEFAULT_MODEL_FILE)
}

/// Where a model spec points.
enum Source<'a> {
    Preset(&'a str, u64),
    HfDir(&'a Path),
    Gguf(&'a Path),
}

fn resolve(spec: &str) -> Result<Source<'_>> {
    let (name, seed) = match spec.split_once('@') {
        Some((n, s)) => (n, Some(s)),
        None => (spec, None),
    };
    if is_preset(name) || (seed.is_some() && !Path::new(spec).exists()) {
        let seed = match seed {
            Some(s) => s.parse::<u64>().with_context(|| format!("model {spec:?}: seed {s:?} is not a non-negative integer"))?,
            None => 0,
        };
        preset_config(name)?;
        return Ok(Source::Preset(name, seed));
    }
    let path = Path::new(spec);
    if !path.exists() {
        if path.file_name().is_some_and(|f| f == DEFAULT_MODEL_FILE) {
            bail!("model file {} not found; run `{SETUP_COMMAND}` to fetch the default model, or pass --model", path.display());
        }
        bail!("model {spec:?} not found: expected a GGUF file, a Hugging Face model directory, or a preset ({})", PRESET_NAMES.join(", "));
    }
    Ok(if path.is_dir() { Source::HfDir(path) } else { Source::Gguf(path) })
}

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// The first CUDA GPU; an error when there is none.
    Cuda,
    /// The first CUDA GPU when one can be opened, else the CPU (with a log line saying why).
    Auto,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            "auto" => Ok(Device::Auto),
            other => Err(format!("unknown device {other:?}: expected cpu, cuda or auto")),
        }
    }
}

/// Opens the GPU the device choice asks for: `None` means the CPU.
fn open_device(device: Device) -> Result<Option<Arc<Gpu>>> {
    match device {
        Device::Cpu => Ok(None),
        Device::Cuda => Gpu::open(0).map(Some).context("--device cuda"),
        Device::Auto => match Gpu::open(0) {
            Ok(gpu) => Ok(Some(gpu)),
            Err(e) => {
                lumen_trace::status!("[lumen] --device auto: no usable GPU ({e:#}); running on the CPU");
                Ok(None)
            }
        },
    }
}

/// Loads a GGUF file, a Hugging Face directory, or a preset (`NAME` or `NAME@SEED`) on the CPU.
pub fn load_model(spec: &str) -> Result<Model> {
    load_model_on(spec, Device::Cpu)
}

/// Loads a model on `device`: f32 on the CPU, bf16 on a GPU.
pub fn load_model_on(spec: &str, device: Device) -> Result<Model> {
    load_model_with(spec, LoadOptions { device, quantization: Quantization::None })
}

/// Loads a model on `options.device`, its layer projections quantized as `options.quantization`
/// says.
pub fn load_model_with(spec: &str, options: LoadOptions) -> Result<Model> {
    load(spec, options, None)
}

/// [`load_model_with`], split over `ranks` GPUs by tensor parallelism when above 1 (rank r on
/// GPU r, each holding only its shard; `tensor_parallel::rank_plan`). On the CPU the model loads
/// whole: the engine's CPU runner splits it over rank threads.
pub fn load_model_split(spec: &str, options: LoadOptions, ranks: usize) -> Result<Model> {
    load(spec, options, (ranks != 1).then_some(ranks))
}

/// [`load_model_split`], split into tensor-parallel ranks on the GPU even for one rank (whose
/// forward pass then runs through NCCL with itself, for checks).
pub fn load_model_ranks(spec: &str, options: LoadOptions, ranks: usize) -> Result<Model> {
    load(spec, options, Some(ranks))
}

/// Where the weights go.
enum Place {
    Cpu,
    Gpu(Arc<Gpu>),
    /// Rank r's shard on the r-th GPU.
    Ranks(Vec<Arc<Gpu>>),
}

fn load(spec: &str, options: LoadOptions, ranks: Option<usize>) -> Result<Model> {
    let LoadOptions { device, quantization } = options;
    ensure!(ranks != Some(0), "tensor parallelism needs at least one rank");
    let source = resolve(spec)?;
    if device == Device::Cuda {
        crate::cuda::weights::refuse_cpu_only_blocks(&describe_model(spec)?.0, spec)?;
    }
    let mut gpu = open_device(device)?;
    if gpu.is_some() && device == Device::Auto {
        let (config, _) = describe_model(spec)?;
        use lumen_backend::cuda::Kernels;
        if let Err(e) = crate::cuda::weights::refuse_cpu_only_blocks(&config, spec) {
            lumen_trace::status!("[lumen] --device auto: {e:#}; running on the CPU");
            gpu = None;
        } else if !crate::cuda::weights::head_dim_supported(&config) || !Kernels::supports_hidden_size(config.hidden_size) {
            lumen_trace::status!(
                "[lumen] --device auto: head_dim {} / hidden size {} is not supported on CUDA; running on the CPU",
                config.head_dim,
                config.hidden_size
            );
            gpu = None;
        }
    }
    let place = match (gpu, ranks) {
        (None, _) => Place::Cpu,
        (Some(gpu), None) => Place::Gpu(gpu),
        (Some(first), Some(ranks)) => {
            let (config, _) = describe_model(spec)?;
            check_split(&config, ranks).with_context(|| format!("--tp {ranks}"))?;
            ensure!(
                quantization == Quantization::None,
                "--tp {ranks}: tensor parallelism runs unquantized weights so far, not {quantization}"
            );
            let mut gpus = vec![first];
            for r in 1..ranks {
                gpus.push(Gpu::open(r).with_context(|| format!("--tp {ranks}: rank {r} needs GPU {r}"))?);
            }
            Place::Ranks(gpus)
        }
    };
    match source {
        Source::Preset(name, seed) => load_preset(name, seed, place, quantization),
        Source::HfDir(dir) => load_hf_dir(dir, place, quantization),
        Source::Gguf(path) => load_gguf(path, place, quantization),
    }
}

/// How a model is loaded: where it runs and how its weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    pub device: Device,
    pub quantization: Quantization,
}

/// Assembles the weights where `place` says, after checking they fit. A preset's weights
/// (`preset_seed`) are drawn on the GPU rather than fetched.
fn executor(
    config: &ModelConfig,
    place: Place,
    quantization: Quantization,
    what: &str,
    fetch: &mut Fetch,
    preset_seed: Option<u64>,
) -> Result<Executor> {
    let plan = ModelPlan::for_config(config).quantized(quantization);
    let perfect_router = config.moe.is_some() && perfect_router_from_env()?;
    if let (true, Some(m)) = (perfect_router, &config.moe) {
        let key = crate::perfect_router::BalancedKey {
            tokens: 1,
            num_experts: m.num_experts,
            top_k: m.top_k,
            method: m.routing,
            ep_ranks: 1,
            groups: m.groups,
        };
        crate::perfect_router::group_chunk(&key).with_context(|| format!("{what}: {PERFECT_ROUTER_ENV}"))?;
        lumen_trace::status!(
            "[lumen] warning: {PERFECT_ROUTER_ENV} is on: {what}'s router logits are replaced by perfectly balanced ones, \
             so its outputs are wrong by design (the gate GEMM still runs)"
        );
    }
    Ok(match place {
        Place::Cpu => {
            check_memory(config, what)?;
            let (weights, tied_head) = assemble_cpu(config, &plan, fetch)?;
            Executor::Cpu(Decoder::new(config.clone(), weights, tied_head, quantization).with_perfect_router(perfect_router))
        }
        Place::Gpu(gpu) => {
            Executor::Cuda(CudaWeights::assemble(config, &plan, quantization, gpu, what, fetch, preset_seed, perfect_router)?)
        }
        Place::Ranks(gpus) => {
            let n = gpus.len();
            let mut ranks = Vec::with_capacity(n);
            for (r, gpu) in gpus.into_iter().enumerate() {
                let rank = rank_config(config, n);
                // The embedding stays whole on every rank (TensorRT-LLM's default); the head is split.
                let rank_plan = rank_plan(config, &plan, r, n, false)?;
                let what = format!("{what} (tensor-parallel rank {r} of {n})");
                let weights = CudaWeights::assemble(&rank, &rank_plan, quantization, gpu, &what, fetch, preset_seed, false)?;
                ranks.push(RankShard { config: rank, weights });
            }
            Executor::CudaRanks(ranks)
        }
    })
}

/// The config and tokenizer of a model spec, without loading its weights.
pub fn describe_model(spec: &str) -> Result<(ModelConfig, Option<Tokenizer>)> {
    match resolve(spec)? {
        Source::Preset(name, _) => Ok((preset_config(name)?, None)),
        Source::HfDir(dir) => Ok((hf_config(dir)?, hf_tokenizer(dir)?)),
        Source::Gguf(path) => {
            let g = GgufFile::open(path)?;
            Ok((gguf_config(&g)?, gguf_tokenizer(&g)?))
        }
    }
}

fn check_memory(config: &ModelConfig, what: &str) -> Result<()> {
    let need = config.num_params() as u64 * 4;
    lumen_backend::cpu::ensure_fits_in_memory(need, &format!("{what}: f32 weights"))
}

fn load_preset(name: &str, seed: u64, place: Place, quantization: Quantization) -> Result<Model> {
    let config = preset_config(name)?;
    let executor =
        executor(&config, place, quantization, &format!("preset {name}"), &mut |n, shape| Ok(random_tensor(seed, n, shape)), Some(seed))?;
    Ok(Model { name: format!("{name}@{seed}"), format: "preset", config, executor, tokenizer: None, chat_template: None })
}

fn hf_config(dir: &Path) -> Result<ModelConfig> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    ModelConfig::from_hf_json(&text, &config_path.display().to_string())
}

fn hf_config_json(dir: &Path) -> Result<serde_json::Value> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config_path.display()))
}

fn hf_tokenizer(dir: &Path) -> Result<Option<Tokenizer>> {
    let path = dir.join("tokenizer.json");
    Ok(if path.exists() { Some(Tokenizer::from_hf_json(&path)?) } else { None })
}

/// The quantization a Hugging Face checkpoint was saved in: FP8 when `config.json`'s
/// `quantization_config.quant_method` is `fp8` or `hf_quant_config.json`'s
/// `quantization.quant_algo` is `FP8`; a GPT-OSS checkpoint's `mxfp4` experts are dequantized at
/// load, so it runs as an unquantized one; any other method is refused by name.
fn checkpoint_quantization(dir: &Path, arch: &str) -> Result<Quantization> {
    let read = |file: &str| -> Result<Option<serde_json::Value>> {
        let path = dir.join(file);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).map(Some).with_context(|| format!("{} is not JSON", path.display()))
    };
    let config_method = read("config.json")?.and_then(|c| c["quantization_config"]["quant_method"].as_str().map(str::to_ascii_lowercase));
    let modelopt_algo = read("hf_quant_config.json")?.and_then(|c| c["quantization"]["quant_algo"].as_str().map(str::to_ascii_lowercase));
    match (config_method.as_deref(), modelopt_algo.as_deref()) {
        (None, None) => Ok(Quantization::None),
        (Some("fp8"), _) | (_, Some("fp8")) => Ok(Quantization::Fp8),
        (Some("mxfp4"), None) if arch == "gpt_oss" => {
            lumen_trace::status!("[lumen] {}: dequantizing the MXFP4 experts to f32 at load", dir.display());
            Ok(Quantization::None)
        }
        (Some(other), _) | (None, Some(other)) => bail!(
            "{}: the checkpoint is quantized with {other:?}; lumen loads FP8 checkpoints (quant_method fp8, or quant_algo FP8 in \
             hf_quant_config.json), GPT-OSS's MXFP4 experts, and unquantized ones",
            dir.display()
        ),
    }
}

fn load_hf_dir(dir: &Path, place: Place, quantization: Quantization) -> Result<Model> {
    let mut config = hf_config(dir)?;
    let tensors = SafetensorsDir::open(dir)?;
    if !config.tie_word_embeddings && !tensors.contains("lm_head.weight") {
        config.tie_word_embeddings = true;
    }
    let source = dir.display().to_string();
    let rope_interleaved = is_deepseek(&config.arch) && rope_interleaved(&hf_config_json(dir)?, &config.arch);
    let quantization = match checkpoint_quantization(dir, &config.arch)? {
        Quantization::Fp8 => {
            if quantization == Quantization::None {
                lumen_trace::status!("[lumen] {source} holds FP8 weights: running it in FP8");
            }
            Quantization::Fp8
        }
        Quantization::None => quantization,
    };
    let executor = executor(
        &config,
        place,
        quantization,
        &source,
        &mut |name, want| {
            let fused = (config.arch == "gpt_oss").then(|| fused_expert_weight(&tensors, &config, name)).flatten();
            let (shape, mut values) = match fused {
                Some(read) => read.with_context(|| source.clone())?,
                None => tensors.get(name).with_context(|| source.clone())?,
            };
            check_shape(&source, name, &shape, want)?;
            if tensors.dtype(name) == Some("F8_E4M3") {
                apply_weight_scale(&tensors, &source, name, &shape, &mut values)?;
            }
            Ok(if rope_interleaved { deinterleave_rope_rows(name, &shape, &config, values) } else { values })
        },
        None,
    )?;
    let tokenizer = hf_tokenizer(dir)?;
    let chat_template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["chat_template"].as_str().map(str::to_string))
        .map(|t| ChatTemplate::new(&t))
        .transpose()?;
    Ok(Model { name: source, format: "safetensors", config, executor, tokenizer, chat_template })
}

/// Multiplies an FP8 checkpoint tensor's code values by its `weight_scale`: one value for the
/// tensor, or one per output row. (The loader then quantizes again with lumen's own scale, which
/// rounds: a fused q/k/v with three checkpoint scales has to share one, as in vLLM.)
fn apply_weight_scale(tensors: &SafetensorsDir, source: &str, name: &str, shape: &[usize], values: &mut [f32]) -> Result<()> {
    let stem = name.strip_suffix(".weight").unwrap_or(name);
    let scale_name = format!("{stem}.weight_scale");
    if tensors.contains(&format!("{stem}.weight_scale_inv")) {
        bail!("{source}: tensor {name} has block-wise scales ({stem}.weight_scale_inv), which lumen does not load; expected per-tensor or per-channel weight_scale");
    }
    let (_, scale) = tensors.get(&scale_name).with_context(|| format!("{source}: FP8 tensor {name} has no {scale_name}"))?;
    let rows = shape.first().copied().unwrap_or(1);
    let cols = values.len() / rows.max(1);
    match scale.len() {
        1 => values.iter_mut().for_each(|v| *v *= scale[0]),
        n if n == rows => values.chunks_mut(cols).zip(&scale).for_each(|(row, s)| row.iter_mut().for_each(|v| *v *= s)),
        n => bail!("{source}: {scale_name} has {n} values; expected 1 (per tensor) or {rows} (per output row of {name})"),
    }
    Ok(())
}

/// The GGUF name of a tensor given by its Hugging Face name.
fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap_or(hf);
    let (layer, part) = rest.split_once('.').unwrap_or(("", rest));
    let part = part
        .replace("input_layernorm", "attn_norm")
        .replace("post_attention_layernorm", "ffn_norm")
        .replace("self_attn.q_proj", "attn_q")
        .replace("self_attn.k_proj", "attn_k")
        .replace("self_attn.v_proj", "attn_v")
        .replace("self_attn.o_proj", "attn_output")
        .replace("self_attn.q_norm", "attn_q_norm")
        .replace("self_attn.k_norm", "attn_k_norm")
        .replace("mlp.gate_proj", "ffn_gate")
        .replace("mlp.up_proj", "ffn_up")
        .replace("mlp.down_proj", "ffn_down");
    format!("blk.{layer}.{part}")
}

/// Undoes llama.cpp's Q/K row permutation (made for its interleaved RoPE) so rotate-half applies:
/// within each head, GGUF row `2i + a` holds Hugging Face row `a·(head_dim/2) + i`.
fn unpermute_rows(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let hd = w.len() / cols / heads;
    let half = hd / 2;
    let mut out = vec![0.0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for a in 0..2 {
                let src = (h * hd + 2 * i + a) * cols;
                let dst = (h * hd + a * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

fn gguf_config(g: &GgufFile) -> Result<ModelConfig> {
    let arch = g.meta_str("general.architecture")?.to_string();
    const SUPPORTED: [&str; 4] = ["llama", "mistral", "qwen2", "qwen3"];
    ensure!(
        SUPPORTED.contains(&arch.as_str()),
        "{}: architecture {arch:?} is not supported; expected one of {SUPPORTED:?}",
        g.path.display()
    );
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| g.meta_u64(&key(k)).map(|v| v as usize);
    let hidden_size = int("embedding_length")?;
    let num_heads = int("attention.head_count")?;
    let vocab_size = match int("vocab_size") {
        Ok(v) => v,
        Err(_) => match g.meta("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(a)) => a.len(),
            _ => g.tensor("token_embd.weight").map(|t| t.dims[1] as usize).context("GGUF has no vocabulary size")?,
        },
    };
    let rope_freq_divisors = match g.tensor("rope_freqs.weight") {
        Some(t) => Some(g.dequantize(t)?.into_iter().map(f64::from).collect()),
        None => None,
    };
    let config = ModelConfig {
        vocab_size,
        hidden_size,
        num_layers: int("block_count")?,
        num_heads,
        num_kv_heads: int("attention.head_count_kv").unwrap_or(num_heads),
        head_dim: int("attention.key_length").unwrap_or(hidden_size / num_heads.max(1)),
        intermediate_size: int("feed_forward_length")?,
        rms_eps: g.meta(&key("attention.layer_norm_rms_epsilon")).and_then(MetaValue::as_f64).unwrap_or(1e-5) as f32,
        rope_theta: g.meta(&key("rope.freq_base")).and_then(MetaValue::as_f64).unwrap_or(10000.0),
        rope_scaling: None,
        rope_freq_divisors,
        max_position_embeddings: int("context_length").unwrap_or(4096),
        tie_word_embeddings: g.tensor("output.weight").is_none(),
        attention_bias: g.tensor("blk.0.attn_q.bias").is_some(),
        attention_output_bias: false,
        qk_norm: g.tensor("blk.0.attn_q_norm.weight").is_some(),
        qk_norm_full_width: false,
        attention_sinks: false,
        sliding_window: int("attention.sliding_window").ok(),
        sliding_layers: None,
        yarn: None,
        mla: None,
        bos_token_id: g.meta("tokenizer.ggml.bos_token_id").and_then(MetaValue::as_u64).map(|v| v as u32),
        eos_token_ids: g.meta("tokenizer.ggml.eos_token_id").and_then(MetaValue::as_u64).map(|v| vec![v as u32]).unwrap_or_default(),
        moe: None,
        arch,
    };
    config.validate().with_context(|| format!("{}: inconsistent model metadata", g.path.display()))?;
    Ok(config)
}

fn strings(g: &GgufFile, key: &str) -> Result<Vec<String>> {
    match g.meta(key) {
        Some(MetaValue::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).with_context(|| format!("{}: {key} holds a non-string", g.path.display())))
            .collect(),
        _ => bail!("{}: metadata {key} is missing or not an array", g.path.display()),
    }
}

fn gguf_tokenizer(g: &GgufFile) -> Result<Option<Tokenizer>> {
    let Some(model) = g.meta("tokenizer.ggml.model").and_then(MetaValue::as_str) else {
        return Ok(None);
    };
    ensure!(model == "gpt2", "{}: tokenizer model {model:?} is not supported; expected \"gpt2\" (byte-level BPE)", g.path.display());
    let token_types = match g.meta("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(a)) => a.iter().map(|v| v.as_f64().unwrap_or(1.0) as i32).collect(),
        _ => Vec::new(),
    };
    let pre = g.meta("tokenizer.ggml.pre").and_then(MetaValue::as_str).unwrap_or("default");
    let spec = TokenizerSpec {
        tokens: strings(g, "tokenizer.ggml.tokens")?,
        token_types,
        merges: strings(g, "tokenizer.ggml.merges")?,
        pre: PreTokenizer::from_gguf_name(pre).with_context(|| g.path.display().to_string())?,
        bos_id: g.meta("tokenizer.ggml.bos_token_id").and_then(MetaValue::as_u64).map(|v| v as u32),
        eos_id: g.meta("tokenizer.ggml.eos_token_id").and_then(MetaValue::as_u64).map(|v| v as u32),
        add_bos: g.meta("tokenizer.ggml.add_bos_token").and_then(MetaValue::as_bool).unwrap_or(false),
    };
    Ok(Some(Tokenizer::new(spec).with_context(|| format!("{}: bad tokenizer metadata", g.path.display()))?))
}

fn load_gguf(path: &Path, place: Place, quantization: Quantization) -> Result<Model> {
    let g = GgufFile::open(path)?;
    let config = gguf_config(&g)?;
    let permuted = config.arch == "llama" || config.arch == "mistral";
    let source = path.display().to_string();
    let executor = executor(
        &config,
        place,
        quantization,
        &source,
        &mut |hf, want| {
            let name = gguf_name(hf);
            let t = g.tensor(&name).with_context(|| format!("{source}: tensor {name} ({hf}) is missing"))?;
            let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
            check_shape(&source, &name, &shape, want)?;
            let values = g.dequantize(t)?;
            Ok(match (permuted, hf.ends_with("q_proj.weight"), hf.ends_with("k_proj.weight")) {
                (true, true, _) => unpermute_rows(&values, config.num_heads, want[1]),
                (true, _, true) => unpermute_rows(&values, config.num_kv_heads, want[1]),
                _ => values,
            })
        },
        None,
    )?;
    let tokenizer = gguf_tokenizer(&g)?;
    let chat_template = g.meta("tokenizer.chat_template").and_then(MetaValue::as_str).map(ChatTemplate::new).transpose()?;
    Ok(Model { name: source, format: "gguf", config, executor, tokenizer, chat_template })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_follow_llama_cpp() {
        assert_eq!(gguf_name("model.layers.12.self_attn.k_proj.weight"), "blk.12.attn_k.weight");
        assert_eq!(gguf_name("model.layers.0.post_attention_layernorm.weight"), "blk.0.ffn_norm.weight");
        assert_eq!(gguf_name("model.layers.3.self_attn.q_norm.weight"), "blk.3.attn_q_norm.weight");
        assert_eq!(gguf_name("model.layers.3.self_attn.q_proj.bias"), "blk.3.attn_q.bias");
        assert_eq!(gguf_name("lm_head.weight"), "output.weight");
    }

    #[test]
    fn unpermute_inverts_the_llama_cpp_permutation() {
        // One head of dim 4, one column: HF rows [0,1,2,3] are stored by llama.cpp as [0,2,1,3].
        assert_eq!(unpermute_rows(&[0.0, 2.0, 1.0, 3.0], 1, 1), vec![0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn moe_variants_the_cuda_backend_lacks_are_refused_by_name() {
        let refusal = |c: &ModelConfig, what: &str| format!("{:#}", crate::cuda::weights::refuse_cpu_only_blocks(c, what).unwrap_err());
        let gpt_oss = crate::presets::preset_config("gpt-oss-20b").unwrap();
        let mut plain_biased = gpt_oss.clone();
        plain_biased.moe.as_mut().unwrap().activation = crate::moe::ExpertActivation::SwiGlu;
        let e = refusal(&plain_biased, "plain-biased");
        assert!(e.contains("plain-biased: the CUDA backend's mixture-of-experts layers lack expert biases around a plain SwiGLU"), "{e}");
        let mut shared = gpt_oss.clone();
        shared.moe.as_mut().unwrap().shared_expert_intermediate_size = Some(2880);
        let e = refusal(&shared, "shared");
        assert!(e.contains("lack a shared expert beside clamped SwiGLU or biased experts"), "{e}");
        let mut grouped = crate::presets::preset_config("qwen3-30b-a3b").unwrap();
        grouped.moe.as_mut().unwrap().routing = crate::moe::RoutingMethod::DeepSeekV3;
        grouped.moe.as_mut().unwrap().groups = crate::moe::GroupLimit { n_group: 64, topk_group: 4 };
        let e = refusal(&grouped, "grouped");
        assert!(e.contains("grouped: the CUDA backend's mixture-of-experts layers lack more than 32 expert groups"), "{e}");
        for preset in ["tiny-mixtral", "tiny-olmoe", "tiny-qwen3-moe", "tiny-qwen2-moe", "qwen3-30b-a3b", "qwen1.5-moe-a2.7b"] {
            let config = crate::presets::preset_config(preset).unwrap();
            assert!(crate::cuda::weights::refuse_cpu_only_blocks(&config, preset).is_ok(), "{preset}: SwiGLU experts run on CUDA");
        }
        for preset in ["gpt-oss-20b", "tiny-gpt-oss"] {
            let config = crate::presets::preset_config(preset).unwrap();
            let refused = crate::cuda::weights::refuse_cpu_only_blocks(&config, preset);
            assert!(refused.is_ok(), "{preset}: GPT-OSS's sinks, biases and clamped experts run on CUDA: {refused:?}");
        }
    }

    #[test]
    fn deepseek_runs_on_cuda_and_latent_shapes_its_kernels_lack_are_refused_by_name() {
        for preset in ["tiny-deepseek-v3", "tiny-deepseek-v2-lite", "deepseek-v3", "deepseek-v2-lite", "moonlight-16b-a3b"] {
            let config = crate::presets::preset_config(preset).unwrap();
            let verdict = crate::cuda::weights::refuse_cpu_only_blocks(&config, preset);
            assert!(verdict.is_ok(), "{preset}: MLA, DeepSeekV3 routing and plain shared experts run on CUDA: {verdict:?}");
        }
        let refusal = |change: &dyn Fn(&mut crate::config::MlaConfig)| {
            let mut c = crate::presets::preset_config("deepseek-v3").unwrap();
            change(c.mla.as_mut().unwrap());
            format!("{:#}", crate::cuda::weights::refuse_cpu_only_blocks(&c, "wide").unwrap_err())
        };
        let e = refusal(&|m| m.kv_lora_rank = 1024);
        assert!(e.contains("wide: multi-head latent attention of this shape does not run on the CUDA backend"), "{e}");
        assert!(e.contains("kv_lora_rank 1024 and qk_rope_head_dim 64") && e.ends_with("use --device cpu"), "{e}");
        // 500 + 60 is a cache row of 560, a multiple of 8, but the value heads read the latent 8 at a time.
        let e = refusal(&|m| (m.kv_lora_rank, m.qk_rope_head_dim) = (500, 60));
        assert!(e.contains("kv_lora_rank 500 and qk_rope_head_dim 60") && e.contains("a multiple of 8"), "{e}");
        let e = refusal(&|m| m.qk_nope_head_dim = 512);
        assert!(e.contains("qk_nope_head_dim 512: the CUDA MLA kernels expect 1 to 256"), "{e}");
        let e = refusal(&|m| m.q_lora_rank = Some(1540));
        assert!(e.contains("wide: q_lora_rank 1540 is not supported by the CUDA backend"), "{e}");
    }

    #[test]
    fn missing_default_model_names_the_setup_command() {
        let e = load_model(&format!("/nonexistent/{DEFAULT_MODEL_FILE}")).err().unwrap().to_string();
        assert!(e.contains(SETUP_COMMAND), "{e}");
        let e = load_model("/nonexistent/model.gguf").err().unwrap().to_string();
        assert!(e.contains("not found") && e.contains("tiny"), "{e}");
        let e = load_model("tiny@x").err().unwrap().to_string();
        assert!(e.contains("seed \"x\""), "{e}");
    }
}
