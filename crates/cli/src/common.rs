//! Options every engine-running command shares (model, threads, engine limits, the engine config
//! file) and their wiring into a loaded model and an engine; the file itself is
//! [`EngineConfigFile`]'s to read and apply.

use anyhow::{ensure, Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use lumen_engine::config::{EngineConfigFile, EngineOverrides};
use lumen_engine::{Engine, EngineConfig};
use lumen_model::{default_model_path, load_model_split, Device, LoadOptions, Model, Quantization};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// More CPU worker threads than this per core only slow the matmul down.
const MAX_THREADS_PER_CORE: usize = 4;

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// GGUF file, Hugging Face directory, or preset (NAME or NAME@SEED). Default: $LUMEN_MODEL or
    /// the SmolLM2 GGUF fetched by scripts/setup.sh.
    #[arg(long)]
    pub model: Option<String>,
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Where the model runs: cpu, cuda (the first GPU; an error without one), or auto (the GPU
    /// when there is one, else the CPU).
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// Quantize the layers' projection matrices at load: none, or fp8 (E4M3 weights with one
    /// scale each, activations quantized with a dynamic scale; embedding, norms and output head
    /// stay as they are).
    #[arg(long, default_value = "none", value_name = "none|fp8")]
    pub quantization: Quantization,
}

impl ModelArgs {
    pub fn spec(&self) -> String {
        self.model.clone().unwrap_or_else(|| default_model_path().display().to_string())
    }

    pub fn threads(&self) -> usize {
        self.threads.map_or_else(rayon::current_num_threads, |t| t as usize)
    }

    /// Sets up the thread pool and loads the model, saying how long it took. From the engine's
    /// flags and `--config` file: FP8 weights (`quant_config.quant_algo: FP8` quantizes as
    /// `--quantization fp8` does) and the tensor-parallel size (on CUDA the model loads split over
    /// that many GPUs; on the CPU it loads whole, and the engine splits it).
    pub fn load(&self, engine: &EngineArgs) -> Result<Arc<Model>> {
        let config_fp8 = engine.file_asks_fp8_weights()?;
        let ranks = engine.tensor_parallel_size()?;
        if let Some(t) = self.threads {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let most = MAX_THREADS_PER_CORE * cores;
            ensure!(
                (1..=most).contains(&(t as usize)),
                "--threads {t}: expected 1 to {most} ({MAX_THREADS_PER_CORE} per core, {cores} cores here)"
            );
            rayon::ThreadPoolBuilder::new().num_threads(t as usize).build_global().context("cannot configure the thread pool")?;
        }
        let spec = self.spec();
        let started = Instant::now();
        let quantization = if config_fp8 { Quantization::Fp8 } else { self.quantization };
        let model = load_model_split(&spec, LoadOptions { device: self.device, quantization }, ranks)?;
        let c = model.config();
        lumen_trace::status!(
            "[lumen] loaded {} ({}, {}, {} layers, hidden {}, vocab {}) in {:.2} s",
            model.name,
            model.format,
            model.device_description(),
            c.num_layers,
            c.hidden_size,
            c.vocab_size,
            started.elapsed().as_secs_f64()
        );
        Ok(Arc::new(model))
    }
}

/// Engine limits. Each comes from its flag when given on the command line, else from the
/// `--config` file, else from its default.
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    /// Engine config file, YAML (.yaml, .yml) or JSON (.json), with TensorRT-LLM's
    /// extra_llm_api_options keys: max_batch_size, max_num_tokens, kv_cache_config
    /// {free_gpu_memory_fraction, max_tokens, tokens_per_block} and cuda_graph_config
    /// {enable_padding, max_batch_size, batch_sizes} (null disables CUDA graphs), quant_config
    /// {quant_algo, kv_cache_quant_algo} and tensor_parallel_size. Flags win.
    #[arg(long = "config", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Most requests scheduled in one iteration [default: 64; `bench throughput` on CUDA tunes it to
    /// the model, dataset and GPU]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_size: Option<u32>,
    /// Most tokens (prefill chunks plus decode tokens) scheduled in one iteration [default: 2048;
    /// `bench throughput` on CUDA tunes it]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_num_tokens: Option<u32>,
    /// KV cache size in tokens (overrides --kv-cache-gib).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub kv_cache_tokens: Option<u64>,
    /// KV cache size in GiB of memory [default: 1 on the CPU; on CUDA --kv-cache-free-gpu-mem-fraction applies]
    #[arg(long, allow_negative_numbers = true)]
    pub kv_cache_gib: Option<f64>,
    /// Token slots per KV block [default: 16]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub kv_block_size: Option<u32>,
    /// Share of the GPU memory left free after weights and activations that the KV cache takes when
    /// no KV cache size is given (CUDA device only) [default: 0.9]
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub kv_cache_free_gpu_mem_fraction: Option<f64>,
    /// Replay decode-only iterations from captured CUDA graphs (CUDA device only) [default: on]
    #[arg(long, value_name = "on|off", value_parser = on_off())]
    pub cuda_graphs: Option<bool>,
    /// Pad a decode batch up to the next captured CUDA graph batch size [default: on]
    #[arg(long, value_name = "on|off", value_parser = on_off())]
    pub cuda_graph_padding: Option<bool>,
    /// Largest decode batch size to capture a CUDA graph for; 0 is --max-batch-size [default: 0]
    #[arg(long, value_name = "N")]
    pub cuda_graph_max_batch_size: Option<u32>,
    /// The KV cache's element type: auto (bf16 on CUDA, f32 on the CPU) or fp8 (E4M3, scale 1:
    /// twice the tokens; on the CPU, f32 values rounded as FP8) [default: auto, or the --config
    /// file's quant_config.kv_cache_quant_algo]
    #[arg(long, value_name = "auto|fp8", value_parser = PossibleValuesParser::new(["auto", "fp8"]).map(|v| v == "fp8"))]
    pub kv_cache_dtype: Option<bool>,
    /// Launch each step before the tokens of the one before reach the host, the new step taking
    /// them on the device (a stop on a token is seen one step later) [default: off, or the
    /// --config file's disable_overlap_scheduler]
    #[arg(long, value_name = "on|off", value_parser = on_off())]
    pub overlap_scheduler: Option<bool>,
    /// Exactly these decode batch sizes get a CUDA graph, comma-separated (e.g. 1,2,4,8)
    #[arg(long, value_name = "N,...", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub cuda_graph_batch_sizes: Option<Vec<u32>>,
    /// Split the model over N ranks by tensor parallelism (Megatron's sharding; a thread per
    /// rank): on CUDA over GPUs 0..N through NCCL, on the CPU over threads [default: 1]
    #[arg(long = "tp", alias = "tensor-parallel-size", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub tensor_parallel_size: Option<u32>,
}

/// Parses `on`/`off` into a flag value.
fn on_off() -> impl TypedValueParser<Value = bool> {
    PossibleValuesParser::new(["on", "off"]).map(|v| v == "on")
}

impl EngineArgs {
    /// The engine configuration for the CPU (`device_is_cuda` false) or the CUDA device: the
    /// `--config` file under the flags given (see [`EngineConfigFile::apply`]), batch-invariant
    /// when `LUMEN_BATCH_INVARIANT=1`.
    pub fn config(&self, device_is_cuda: bool) -> Result<EngineConfig> {
        self.config_with_limits(device_is_cuda, None)
    }

    /// [`EngineArgs::config`], with `limits` (max batch size, max num tokens) in place of the
    /// defaults: each applies where neither its flag nor the file sets it.
    pub fn config_with_limits(&self, device_is_cuda: bool, limits: Option<(usize, usize)>) -> Result<EngineConfig> {
        let file = self.file()?;
        if let Some(f) = self.kv_cache_free_gpu_mem_fraction {
            ensure!(
                f > 0.0 && f <= 1.0,
                "--kv-cache-free-gpu-mem-fraction {f} is outside (0, 1], expected the share of free GPU memory to use, such as 0.9"
            );
        }
        if let (None, Some(gib)) = (self.kv_cache_tokens, self.kv_cache_gib) {
            ensure!(gib.is_finite() && gib > 0.0, "--kv-cache-gib {gib} is not a positive size");
        }
        let mut overrides = self.overrides();
        if let Some((batch, tokens)) = limits {
            overrides.max_batch_size = overrides.max_batch_size.or(file.max_batch_size).or(Some(batch));
            overrides.max_num_tokens = overrides.max_num_tokens.or(file.max_num_tokens).or(Some(tokens));
        }
        let mut config = file.apply(&overrides, device_is_cuda)?;
        config.batch_invariant = batch_invariant(std::env::var("LUMEN_BATCH_INVARIANT").ok().as_deref());
        Ok(config)
    }

    /// The `--config` file, or an empty one.
    fn file(&self) -> Result<EngineConfigFile> {
        match &self.config_file {
            Some(path) => EngineConfigFile::load(path),
            None => Ok(EngineConfigFile::default()),
        }
    }

    /// Whether the flags or the `--config` file set both the max batch size and the max num tokens.
    pub fn batch_limits_given(&self) -> Result<bool> {
        let file = self.file()?;
        Ok(self.max_batch_size.or(file.max_batch_size.map(|b| b as u32)).is_some()
            && self.max_num_tokens.or(file.max_num_tokens.map(|t| t as u32)).is_some())
    }

    /// The KV cache's share of the free GPU memory: the flag, else the file's, else the default.
    pub fn kv_fraction(&self) -> Result<f64> {
        let file = self.file()?.kv_cache_config.and_then(|k| k.free_gpu_memory_fraction);
        Ok(self.kv_cache_free_gpu_mem_fraction.or(file).unwrap_or(lumen_engine::config::DEFAULT_FREE_GPU_MEM_FRACTION))
    }

    /// The flags given, as settings that win over the file.
    fn overrides(&self) -> EngineOverrides {
        let size = |v: Option<u32>| v.map(|v| v as usize);
        EngineOverrides {
            max_batch_size: size(self.max_batch_size),
            max_num_tokens: size(self.max_num_tokens),
            kv_cache_tokens: self.kv_cache_tokens.map(|t| t as usize),
            kv_cache_gib: self.kv_cache_gib,
            kv_block_size: size(self.kv_block_size),
            kv_cache_free_gpu_mem_fraction: self.kv_cache_free_gpu_mem_fraction,
            cuda_graphs: self.cuda_graphs,
            cuda_graph_padding: self.cuda_graph_padding,
            cuda_graph_max_batch_size: size(self.cuda_graph_max_batch_size),
            cuda_graph_batch_sizes: self.cuda_graph_batch_sizes.as_ref().map(|v| v.iter().map(|&b| b as usize).collect()),
            kv_cache_fp8: self.kv_cache_dtype,
            tensor_parallel_size: size(self.tensor_parallel_size),
            overlap_scheduler: self.overlap_scheduler,
        }
    }

    /// Ranks the model is split over: `--tp`, else the file's `tensor_parallel_size`, else 1.
    pub fn tensor_parallel_size(&self) -> Result<usize> {
        let file = self.file()?.tensor_parallel_size;
        let n = self.tensor_parallel_size.map(|n| n as usize).or(file).unwrap_or(1);
        ensure!(n > 0, "tensor_parallel_size is 0, expected at least 1");
        Ok(n)
    }

    /// Whether the `--config` file's `quant_config.quant_algo` asks for FP8 weights.
    pub fn file_asks_fp8_weights(&self) -> Result<bool> {
        self.file()?.quant_config.map_or(Ok(false), |q| q.weights_fp8())
    }

    pub fn engine(&self, model: Arc<Model>, device_is_cuda: bool) -> Result<Engine> {
        Engine::new(model, self.config(device_is_cuda)?)
    }
}

/// Whether `LUMEN_BATCH_INVARIANT` (`value`, when set) asks for batch-invariant GPU kernels: only
/// the value `1` does.
fn batch_invariant(value: Option<&str>) -> bool {
    value == Some("1")
}

/// The processor's name and the number of threads, for reports.
pub fn hardware_description(threads: usize) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu} ({cores} cores, {threads} threads used)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use lumen_engine::config::{
        CudaGraphConfig, DEFAULT_FREE_GPU_MEM_FRACTION, DEFAULT_KV_BLOCK_SIZE, DEFAULT_KV_CACHE_GIB, DEFAULT_MAX_BATCH_SIZE,
        DEFAULT_MAX_NUM_TOKENS,
    };
    use lumen_engine::KvBudget;
    use lumen_test_support::scratch::Scratch;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    fn args(flags: &[&str]) -> EngineArgs {
        Cli::try_parse_from(std::iter::once("lumen").chain(flags.iter().copied())).unwrap_or_else(|e| panic!("{flags:?}: {e}")).engine
    }

    fn error(flags: &[&str], device_is_cuda: bool) -> String {
        format!("{:#}", args(flags).config(device_is_cuda).unwrap_err())
    }

    /// An engine config file setting every key the flags can override.
    const JSON: &str = r#"{"max_batch_size": 3, "max_num_tokens": 100,
        "kv_cache_config": {"free_gpu_memory_fraction": 0.5, "tokens_per_block": 8},
        "cuda_graph_config": {"enable_padding": false, "max_batch_size": 16, "batch_sizes": [1, 2, 4]}}"#;

    #[test]
    fn defaults_without_flags_or_file() {
        let cpu = args(&[]).config(false).unwrap();
        assert_eq!((cpu.max_batch_size, cpu.max_num_tokens, cpu.block_size), (64, 2048, 16));
        assert_eq!(cpu.kv_budget, KvBudget::Bytes(1 << 30));
        assert_eq!(cpu.cuda_graphs, CudaGraphConfig::default());
        let cuda = args(&[]).config(true).unwrap();
        assert_eq!(cuda.kv_budget, KvBudget::GpuFraction(0.9));
        assert_eq!(args(&["--kv-cache-free-gpu-mem-fraction", "0.8"]).config(true).unwrap().kv_budget, KvBudget::GpuFraction(0.8));
        assert_eq!(args(&["--kv-cache-free-gpu-mem-fraction", "0.8"]).config(false).unwrap().kv_budget, KvBudget::Bytes(1 << 30));
    }

    #[test]
    fn explicit_kv_sizes_win_over_the_gpu_fraction() {
        assert_eq!(args(&["--kv-cache-tokens", "500"]).config(true).unwrap().kv_budget, KvBudget::Tokens(500));
        assert_eq!(args(&["--kv-cache-gib", "2"]).config(true).unwrap().kv_budget, KvBudget::Bytes(2 << 30));
        assert_eq!(args(&["--kv-cache-tokens", "500", "--kv-cache-gib", "2"]).config(false).unwrap().kv_budget, KvBudget::Tokens(500));
        let e = error(&["--kv-cache-gib", "-1"], true);
        assert!(e.contains("--kv-cache-gib -1"), "{e}");
    }

    #[test]
    fn flags_given_on_the_command_line_win_over_the_file() {
        let d = Scratch::new("cli-engine-flags");
        let path = d.write("engine.json", JSON);
        let c = args(&[
            "--config",
            &path,
            "--max-batch-size",
            "7",
            "--max-num-tokens",
            "512",
            "--kv-block-size",
            "4",
            "--kv-cache-free-gpu-mem-fraction",
            "0.25",
            "--cuda-graph-padding",
            "on",
            "--cuda-graph-max-batch-size",
            "0",
            "--cuda-graph-batch-sizes",
            "8,16",
        ])
        .config(true)
        .unwrap();
        assert_eq!((c.max_batch_size, c.max_num_tokens, c.block_size, c.kv_budget), (7, 512, 4, KvBudget::GpuFraction(0.25)));
        assert_eq!(c.cuda_graphs, CudaGraphConfig { batch_sizes: Some(vec![8, 16]), ..CudaGraphConfig::default() });
        // Flags the command line leaves out still come from the file.
        let c = args(&["--config", &path, "--max-batch-size", "7"]).config(true).unwrap();
        assert_eq!((c.max_batch_size, c.max_num_tokens, c.block_size), (7, 100, 8));
        // A size flag wins over the file's max_tokens.
        let tokens = d.write("tokens.yaml", "kv_cache_config:\n  max_tokens: 4096\n");
        assert_eq!(args(&["--config", &tokens, "--kv-cache-gib", "0.5"]).config(true).unwrap().kv_budget, KvBudget::Bytes(1 << 29));
        assert_eq!(args(&["--config", &tokens, "--kv-cache-tokens", "64"]).config(true).unwrap().kv_budget, KvBudget::Tokens(64));
        // The graph switches reach the engine, over a file's `cuda_graph_config: null` too.
        let null = d.write("null.yaml", "cuda_graph_config: null\n");
        assert!(!args(&["--config", &null]).config(true).unwrap().cuda_graphs.enabled);
        assert!(args(&["--config", &null, "--cuda-graphs", "on"]).config(true).unwrap().cuda_graphs.enabled);
        assert!(!args(&["--cuda-graphs", "off"]).config(true).unwrap().cuda_graphs.enabled);
        assert!(!args(&["--cuda-graph-padding", "off"]).config(true).unwrap().cuda_graphs.enable_padding);
    }

    #[test]
    fn bad_fractions_are_refused_from_the_flag_and_the_file() {
        for bad in ["0", "1.5", "-0.1", "NaN"] {
            for cuda in [false, true] {
                let e = error(&["--kv-cache-free-gpu-mem-fraction", bad], cuda);
                assert!(e.contains("--kv-cache-free-gpu-mem-fraction") && e.contains("(0, 1]"), "{e}");
            }
        }
        assert_eq!(args(&["--kv-cache-free-gpu-mem-fraction", "1"]).config(true).unwrap().kv_budget, KvBudget::GpuFraction(1.0));
        let d = Scratch::new("cli-engine-fraction");
        let path = d.write("fraction.yaml", "kv_cache_config:\n  free_gpu_memory_fraction: 1.5\n");
        let e = error(&["--config", &path], true);
        assert!(e.contains(&path) && e.contains("kv_cache_config.free_gpu_memory_fraction 1.5") && e.contains("(0, 1]"), "{e}");
    }

    #[test]
    fn only_lumen_batch_invariant_1_turns_batch_invariance_on() {
        assert!(batch_invariant(Some("1")));
        for off in [None, Some("0"), Some(""), Some("true"), Some(" 1")] {
            assert!(!batch_invariant(off), "{off:?}");
        }
    }

    #[test]
    fn flag_values_are_checked_by_the_parser() {
        let parse = |flags: &[&str]| Cli::try_parse_from(std::iter::once("lumen").chain(flags.iter().copied())).map(|c| c.engine);
        assert!(parse(&["--cuda-graphs", "maybe"]).unwrap_err().to_string().contains("maybe"));
        assert!(parse(&["--cuda-graph-batch-sizes", "1,0"]).is_err());
        assert!(parse(&["--max-batch-size", "0"]).is_err());
        assert_eq!(parse(&["--cuda-graph-batch-sizes", "4,1,2"]).unwrap().cuda_graph_batch_sizes, Some(vec![4, 1, 2]));
    }

    #[test]
    fn help_shows_the_defaults() {
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            format!("[default: {DEFAULT_MAX_BATCH_SIZE}; `bench throughput` on CUDA tunes it"),
            format!("[default: {DEFAULT_MAX_NUM_TOKENS};"),
            "--kv-cache-dtype <auto|fp8>".to_string(),
            format!("[default: {DEFAULT_KV_CACHE_GIB} on the CPU"),
            format!("[default: {DEFAULT_KV_BLOCK_SIZE}]"),
            format!("[default: {DEFAULT_FREE_GPU_MEM_FRACTION}]"),
            "--kv-cache-free-gpu-mem-fraction <F>".to_string(),
            "--cuda-graphs <on|off>".to_string(),
            "--config <FILE>".to_string(),
        ] {
            assert!(help.contains(&needle), "{needle:?} missing from:\n{help}");
        }
    }

    #[test]
    fn tuned_limits_apply_only_where_neither_a_flag_nor_the_file_sets_one() {
        let d = Scratch::new("cli-engine-tuned");
        let tuned = Some((3840, 7680));
        let limits = |flags: &[&str]| {
            let c = args(flags).config_with_limits(true, tuned).unwrap();
            (c.max_batch_size, c.max_num_tokens)
        };
        assert_eq!(limits(&[]), (3840, 7680));
        assert_eq!(limits(&["--max-batch-size", "100"]), (100, 7680));
        let file = d.write("tokens.yaml", "max_num_tokens: 500\nkv_cache_config:\n  free_gpu_memory_fraction: 0.5\n");
        assert_eq!(limits(&["--config", &file]), (3840, 500));
        assert_eq!(limits(&["--config", &file, "--max-num-tokens", "600"]), (3840, 600));
        assert!(!args(&["--config", &file]).batch_limits_given().unwrap());
        assert!(args(&["--config", &file, "--max-batch-size", "8"]).batch_limits_given().unwrap());
        assert!(!args(&["--max-batch-size", "8"]).batch_limits_given().unwrap());
        assert_eq!(args(&["--config", &file]).kv_fraction().unwrap(), 0.5);
        assert_eq!(args(&["--config", &file, "--kv-cache-free-gpu-mem-fraction", "0.7"]).kv_fraction().unwrap(), 0.7);
        let c = args(&[]).config(true).unwrap();
        assert_eq!((c.max_batch_size, c.max_num_tokens), (DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_NUM_TOKENS), "without tuning: the defaults");
    }
}
