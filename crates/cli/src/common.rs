//! Options every engine-running command shares (model, threads, engine limits, the engine config
//! file) and the code that turns them into a loaded model and an engine.

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use lumen_engine::config::CudaGraphConfig;
use lumen_engine::{Engine, EngineConfig, KvBudget};
use lumen_model::{default_model_path, load_model_on, Device, Model};
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

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
}

impl ModelArgs {
    pub fn spec(&self) -> String {
        self.model.clone().unwrap_or_else(|| default_model_path().display().to_string())
    }

    pub fn threads(&self) -> usize {
        self.threads.map_or_else(rayon::current_num_threads, |t| t as usize)
    }

    /// Sets up the thread pool and loads the model, saying how long it took.
    pub fn load(&self) -> Result<Arc<Model>> {
        if let Some(t) = self.threads {
            rayon::ThreadPoolBuilder::new().num_threads(t as usize).build_global().context("cannot configure the thread pool")?;
        }
        let spec = self.spec();
        let started = Instant::now();
        let model = load_model_on(&spec, self.device)?;
        let c = model.config();
        eprintln!(
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

const DEFAULT_MAX_BATCH_SIZE: usize = 64;
const DEFAULT_MAX_NUM_TOKENS: usize = 2048;
const DEFAULT_KV_CACHE_GIB: f64 = 1.0;
const DEFAULT_KV_BLOCK_SIZE: usize = 16;
const DEFAULT_FREE_GPU_MEM_FRACTION: f64 = 0.9;

/// Engine limits. Each comes from its flag when given on the command line, else from the
/// `--config` file, else from its default.
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    /// Engine config file, YAML (.yaml, .yml) or JSON (.json), with TensorRT-LLM's
    /// extra_llm_api_options keys: max_batch_size, max_num_tokens, kv_cache_config
    /// {free_gpu_memory_fraction, max_tokens, tokens_per_block} and cuda_graph_config
    /// {enable_padding, max_batch_size, batch_sizes} (null disables CUDA graphs). Flags win.
    #[arg(long = "config", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Most requests scheduled in one iteration [default: 64]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_size: Option<u32>,
    /// Most tokens (prefill chunks plus decode tokens) scheduled in one iteration [default: 2048]
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
    /// Exactly these decode batch sizes get a CUDA graph, comma-separated (e.g. 1,2,4,8)
    #[arg(long, value_name = "N,...", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub cuda_graph_batch_sizes: Option<Vec<u32>>,
}

/// Parses `on`/`off` into a flag value.
fn on_off() -> impl TypedValueParser<Value = bool> {
    PossibleValuesParser::new(["on", "off"]).map(|v| v == "on")
}

impl EngineArgs {
    /// The engine configuration for the CPU (`device_is_cuda` false) or the CUDA device. Without
    /// an explicit KV cache size (`--kv-cache-tokens`, `--kv-cache-gib` or the file's
    /// `kv_cache_config.max_tokens`), the CUDA device takes a fraction of its free memory and the
    /// CPU 1 GiB.
    pub fn config(&self, device_is_cuda: bool) -> Result<EngineConfig> {
        let file = match &self.config_file {
            Some(path) => EngineConfigFile::load(path)?,
            None => EngineConfigFile::default(),
        };
        let kv = file.kv_cache_config.unwrap_or_default();
        let fraction = match self.kv_cache_free_gpu_mem_fraction {
            Some(f) => {
                ensure!(
                    f > 0.0 && f <= 1.0,
                    "--kv-cache-free-gpu-mem-fraction {f} is outside (0, 1], expected the share of free GPU memory to use, such as 0.9"
                );
                f
            }
            None => kv.free_gpu_memory_fraction.unwrap_or(DEFAULT_FREE_GPU_MEM_FRACTION),
        };
        let kv_budget = match (self.kv_cache_tokens, self.kv_cache_gib, kv.max_tokens) {
            (Some(t), _, _) => KvBudget::Tokens(t as usize),
            (None, Some(gib), _) => {
                ensure!(gib.is_finite() && gib > 0.0, "--kv-cache-gib {gib} is not a positive size");
                KvBudget::Bytes((gib * (1u64 << 30) as f64) as usize)
            }
            (None, None, Some(t)) => KvBudget::Tokens(t),
            (None, None, None) if device_is_cuda => KvBudget::GpuFraction(fraction),
            (None, None, None) => KvBudget::Bytes((DEFAULT_KV_CACHE_GIB * (1u64 << 30) as f64) as usize),
        };
        // `cuda_graph_config: null` in the file turns graphs off; an absent key leaves them on.
        let graphs_enabled = self.cuda_graphs.unwrap_or(!matches!(file.cuda_graph_config, Some(None)));
        let graphs = file.cuda_graph_config.flatten().unwrap_or_default();
        let config = EngineConfig {
            max_batch_size: self.max_batch_size.map(|b| b as usize).or(file.max_batch_size).unwrap_or(DEFAULT_MAX_BATCH_SIZE),
            max_num_tokens: self.max_num_tokens.map(|t| t as usize).or(file.max_num_tokens).unwrap_or(DEFAULT_MAX_NUM_TOKENS),
            block_size: self.kv_block_size.map(|b| b as usize).or(kv.tokens_per_block).unwrap_or(DEFAULT_KV_BLOCK_SIZE),
            kv_budget,
            cuda_graphs: CudaGraphConfig {
                enabled: graphs_enabled,
                enable_padding: self.cuda_graph_padding.or(graphs.enable_padding).unwrap_or(true),
                max_batch_size: self.cuda_graph_max_batch_size.map(|m| m as usize).or(graphs.max_batch_size).unwrap_or(0),
                batch_sizes: self.cuda_graph_batch_sizes.as_ref().map(|v| v.iter().map(|&b| b as usize).collect()).or(graphs.batch_sizes),
            },
        };
        config.validate()?;
        Ok(config)
    }

    pub fn engine(&self, model: Arc<Model>, device_is_cuda: bool) -> Result<Engine> {
        Engine::new(model, self.config(device_is_cuda)?)
    }
}

/// An engine config file (`--config`): the TensorRT-LLM extra_llm_api_options keys lumen uses.
/// Every field is optional; a key the file leaves out falls back to the default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of engine options")]
struct EngineConfigFile {
    max_batch_size: Option<usize>,
    max_num_tokens: Option<usize>,
    kv_cache_config: Option<KvCacheSection>,
    /// `None`: key absent; `Some(None)`: `null`, which disables CUDA graphs.
    #[serde(default, deserialize_with = "present")]
    cuda_graph_config: Option<Option<CudaGraphSection>>,
}

/// `kv_cache_config` of an engine config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of KV cache options")]
struct KvCacheSection {
    free_gpu_memory_fraction: Option<f64>,
    max_tokens: Option<usize>,
    tokens_per_block: Option<usize>,
}

/// `cuda_graph_config` of an engine config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of CUDA graph options, or null")]
struct CudaGraphSection {
    enable_padding: Option<bool>,
    max_batch_size: Option<usize>,
    batch_sizes: Option<Vec<usize>>,
}

/// Deserializes a key that is present (possibly `null`) as `Some`, so an absent key stays `None`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> std::result::Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl EngineConfigFile {
    /// Reads and checks `path`, YAML or JSON by its extension.
    fn load(path: &Path) -> Result<Self> {
        let shown = path.display();
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        let yaml = match ext.as_deref() {
            Some("yaml" | "yml") => true,
            Some("json") => false,
            _ => bail!("engine config file {shown} has neither a .yaml, .yml nor a .json extension, expected YAML or JSON"),
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read engine config file {shown}"))?;
        let file: EngineConfigFile = if yaml {
            serde_yaml::from_str(&text).map_err(|e| anyhow!("engine config file {shown}: {e}"))?
        } else {
            serde_json::from_str(&text).map_err(|e| anyhow!("engine config file {shown}: {e}"))?
        };
        file.check().with_context(|| format!("engine config file {shown}"))?;
        Ok(file)
    }

    /// Refuses values no engine can use, naming the key.
    fn check(&self) -> Result<()> {
        let kv = self.kv_cache_config.as_ref();
        for (key, value) in [
            ("max_batch_size", self.max_batch_size),
            ("max_num_tokens", self.max_num_tokens),
            ("kv_cache_config.max_tokens", kv.and_then(|k| k.max_tokens)),
            ("kv_cache_config.tokens_per_block", kv.and_then(|k| k.tokens_per_block)),
        ] {
            ensure!(value != Some(0), "{key} is 0, expected at least 1");
        }
        if let Some(f) = kv.and_then(|k| k.free_gpu_memory_fraction) {
            ensure!(
                f > 0.0 && f <= 1.0,
                "kv_cache_config.free_gpu_memory_fraction {f} is outside (0, 1], expected the share of free GPU memory to use, such as 0.9"
            );
        }
        if let Some(sizes) = self.cuda_graph_config.as_ref().and_then(|g| g.as_ref()).and_then(|g| g.batch_sizes.as_ref()) {
            ensure!(!sizes.contains(&0), "cuda_graph_config.batch_sizes {sizes:?} contains 0, expected batch sizes of at least 1");
        }
        Ok(())
    }
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    fn args(flags: &[&str]) -> EngineArgs {
        Cli::try_parse_from(std::iter::once("lumen").chain(flags.iter().copied())).unwrap_or_else(|e| panic!("{flags:?}: {e}")).engine
    }

    /// A directory of files for one test, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let dir = std::env::temp_dir().join(format!("lumen-common-test-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn write(&self, name: &str, contents: &str) -> String {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path.to_str().unwrap().to_string()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn error(flags: &[&str], device_is_cuda: bool) -> String {
        format!("{:#}", args(flags).config(device_is_cuda).unwrap_err())
    }

    const YAML: &str = "\
max_batch_size: 3
max_num_tokens: 100
kv_cache_config:
  free_gpu_memory_fraction: 0.5
  tokens_per_block: 8
cuda_graph_config:
  enable_padding: false
  max_batch_size: 16
  batch_sizes: [1, 2, 4]
";

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
    fn yaml_file_sets_every_key() {
        let d = Dir::new();
        for name in ["engine.yaml", "engine.YML"] {
            let path = d.write(name, YAML);
            for cuda in [false, true] {
                let c = args(&["--config", &path]).config(cuda).unwrap();
                assert_eq!((c.max_batch_size, c.max_num_tokens, c.block_size), (3, 100, 8));
                let want = if cuda { KvBudget::GpuFraction(0.5) } else { KvBudget::Bytes(1 << 30) };
                assert_eq!(c.kv_budget, want);
                let graphs = CudaGraphConfig { enabled: true, enable_padding: false, max_batch_size: 16, batch_sizes: Some(vec![1, 2, 4]) };
                assert_eq!(c.cuda_graphs, graphs);
            }
        }
        let tokens = d.write("tokens.yml", "kv_cache_config:\n  max_tokens: 4096\n  free_gpu_memory_fraction: 0.5\n");
        assert_eq!(args(&["--config", &tokens]).config(true).unwrap().kv_budget, KvBudget::Tokens(4096));
        assert_eq!(args(&["--config", &tokens]).config(false).unwrap().kv_budget, KvBudget::Tokens(4096));
    }

    #[test]
    fn json_file_sets_every_key() {
        let d = Dir::new();
        let path = d.write(
            "engine.json",
            r#"{"max_batch_size": 5, "max_num_tokens": 64,
                "kv_cache_config": {"max_tokens": 256, "tokens_per_block": 32},
                "cuda_graph_config": {"enable_padding": true, "max_batch_size": 4}}"#,
        );
        let c = args(&["--config", &path]).config(true).unwrap();
        assert_eq!((c.max_batch_size, c.max_num_tokens, c.block_size, c.kv_budget), (5, 64, 32, KvBudget::Tokens(256)));
        assert_eq!(c.cuda_graphs, CudaGraphConfig { max_batch_size: 4, ..CudaGraphConfig::default() });
    }

    #[test]
    fn empty_files_and_sections_keep_the_defaults() {
        let d = Dir::new();
        let default = args(&[]).config(true).unwrap();
        for (name, text) in
            [("empty.yaml", ""), ("comments.yaml", "# nothing yet\n"), ("empty.json", "{}"), ("sections.yaml", "kv_cache_config: {}\n")]
        {
            let c = args(&["--config", &d.write(name, text)]).config(true).unwrap();
            assert_eq!(
                (c.max_batch_size, c.max_num_tokens, c.block_size, c.kv_budget),
                (64, 2048, 16, KvBudget::GpuFraction(0.9)),
                "{name}"
            );
            assert_eq!(c.cuda_graphs, default.cuda_graphs, "{name}");
        }
    }

    #[test]
    fn flags_given_on_the_command_line_win_over_the_file() {
        let d = Dir::new();
        let path = d.write("engine.yaml", YAML);
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
    }

    #[test]
    fn null_cuda_graph_config_disables_graphs_unless_the_flag_says_on() {
        let d = Dir::new();
        let yaml = d.write("null.yaml", "max_batch_size: 8\ncuda_graph_config: null\n");
        let json = d.write("null.json", r#"{"cuda_graph_config": null}"#);
        for path in [&yaml, &json] {
            let c = args(&["--config", path]).config(true).unwrap();
            assert!(!c.cuda_graphs.enabled, "{path}");
            assert!(c.cuda_graphs.capture_sizes(c.max_batch_size).is_empty());
            assert!(args(&["--config", path, "--cuda-graphs", "on"]).config(true).unwrap().cuda_graphs.enabled, "{path}");
        }
        let absent = d.write("absent.yaml", "max_batch_size: 8\n");
        assert!(args(&["--config", &absent]).config(true).unwrap().cuda_graphs.enabled);
        assert!(!args(&["--config", &absent, "--cuda-graphs", "off"]).config(true).unwrap().cuda_graphs.enabled);
        assert!(!args(&["--cuda-graphs", "off"]).config(true).unwrap().cuda_graphs.enabled);
        assert!(!args(&["--cuda-graph-padding", "off"]).config(true).unwrap().cuda_graphs.enable_padding);
    }

    #[test]
    fn unknown_keys_name_the_key_the_file_and_the_accepted_keys() {
        let d = Dir::new();
        let yaml = d.write("typo.yaml", "max_batch_size: 8\nmax_batch_sise: 4\n");
        let json = d.write("typo.json", r#"{"max_batch_sise": 4}"#);
        for path in [&yaml, &json] {
            let e = error(&["--config", path], true);
            for needle in [path.as_str(), "max_batch_sise", "max_batch_size", "max_num_tokens", "kv_cache_config", "cuda_graph_config"] {
                assert!(e.contains(needle), "{needle:?} missing from: {e}");
            }
        }
        let nested = d.write("nested.yaml", "kv_cache_config:\n  free_gpu_mem_fraction: 0.5\n");
        let e = error(&["--config", &nested], true);
        for needle in [nested.as_str(), "free_gpu_mem_fraction", "free_gpu_memory_fraction", "max_tokens", "tokens_per_block"] {
            assert!(e.contains(needle), "{needle:?} missing from: {e}");
        }
        let graphs = d.write("graphs.json", r#"{"cuda_graph_config": {"padding": true}}"#);
        let e = error(&["--config", &graphs], true);
        for needle in [graphs.as_str(), "`padding`", "enable_padding", "batch_sizes"] {
            assert!(e.contains(needle), "{needle:?} missing from: {e}");
        }
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
        let d = Dir::new();
        let path = d.write("fraction.yaml", "kv_cache_config:\n  free_gpu_memory_fraction: 1.5\n");
        let e = error(&["--config", &path], true);
        assert!(e.contains(&path) && e.contains("kv_cache_config.free_gpu_memory_fraction 1.5") && e.contains("(0, 1]"), "{e}");
    }

    #[test]
    fn bad_files_are_refused_with_their_name() {
        let d = Dir::new();
        let cases = [
            (d.write("engine.toml", "max_batch_size = 3\n"), "expected YAML or JSON"),
            (d.0.join("missing.yaml").to_str().unwrap().to_string(), "cannot read engine config file"),
            (d.write("broken.json", "{\"max_batch_size\": "), "EOF"),
            (d.write("list.yaml", "- 1\n- 2\n"), "expected a map of engine options"),
            (d.write("negative.yaml", "max_batch_size: -1\n"), "max_batch_size"),
            (d.write("zero.yaml", "max_num_tokens: 0\n"), "max_num_tokens is 0, expected at least 1"),
            (d.write("block.yaml", "kv_cache_config:\n  tokens_per_block: 0\n"), "kv_cache_config.tokens_per_block is 0"),
            (d.write("sizes.json", r#"{"cuda_graph_config": {"batch_sizes": [1, 0]}}"#), "cuda_graph_config.batch_sizes [1, 0] contains 0"),
        ];
        for (path, needle) in &cases {
            let e = error(&["--config", path], true);
            assert!(e.contains(path.as_str()) && e.contains(needle), "{needle:?} or {path} missing from: {e}");
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
            format!("[default: {DEFAULT_MAX_BATCH_SIZE}]"),
            format!("[default: {DEFAULT_MAX_NUM_TOKENS}]"),
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
}
