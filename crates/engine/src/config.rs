//! Engine limits: the per-iteration token budget, the KV-cache size and the CUDA graph batch sizes,
//! and the engine config file (`--config`, TensorRT-LLM's extra_llm_api_options keys) that sets
//! them under explicit settings such as command-line flags.

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Deserializer};
use std::path::Path;

/// Most sequences scheduled in one iteration when nothing says otherwise.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 64;
/// Most tokens scheduled in one iteration when nothing says otherwise.
pub const DEFAULT_MAX_NUM_TOKENS: usize = 2048;
/// KV cache size in GiB in host memory when nothing says otherwise.
pub const DEFAULT_KV_CACHE_GIB: f64 = 1.0;
/// Token slots per KV block when nothing says otherwise.
pub const DEFAULT_KV_BLOCK_SIZE: usize = 16;
/// Share of the free GPU memory the KV cache takes when no size is given.
pub const DEFAULT_FREE_GPU_MEM_FRACTION: f64 = 0.9;

/// `gib` GiB in bytes (truncated; a negative or NaN size gives 0).
fn gib_bytes(gib: f64) -> usize {
    (gib * (1u64 << 30) as f64) as usize
}

/// How much KV cache to allocate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KvBudget {
    /// Room for this many tokens across all sequences.
    Tokens(usize),
    /// This many bytes of KV storage.
    Bytes(usize),
    /// This fraction of the GPU memory left free after weights and activations (CUDA backend only;
    /// the CUDA runner turns it into blocks with [`EngineConfig::blocks_for_bytes`]).
    GpuFraction(f64),
}

impl KvBudget {
    /// The budget as the user gave it, for messages.
    fn describe(&self) -> String {
        match self {
            KvBudget::Tokens(t) => format!("{t} tokens"),
            KvBudget::Bytes(b) => format!("{b} bytes"),
            KvBudget::GpuFraction(f) => format!("a fraction {f} of the free GPU memory"),
        }
    }
}

/// Which decode batch sizes get a captured CUDA graph, after TensorRT-LLM's `cuda_graph_config`.
/// A decode-only iteration whose batch size has a graph (or, with padding, is padded up to one)
/// replays it; any other iteration runs eagerly.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CudaGraphConfig {
    /// Capture and replay graphs at all.
    pub enabled: bool,
    /// Pad a decode batch up to the next captured size, so a few sizes cover every batch.
    pub enable_padding: bool,
    /// Largest batch size to capture; 0 means the engine's `max_batch_size`.
    pub max_batch_size: usize,
    /// Exactly these batch sizes (then `max_batch_size` only drops those above it).
    pub batch_sizes: Option<Vec<usize>>,
}

impl Default for CudaGraphConfig {
    fn default() -> Self {
        CudaGraphConfig { enabled: true, enable_padding: true, max_batch_size: 0, batch_sizes: None }
    }
}

impl CudaGraphConfig {
    /// The batch sizes to capture, sorted and deduplicated, for an engine scheduling at most
    /// `engine_max_batch_size` sequences. The cap is `max_batch_size` (the engine's when 0), never
    /// above the engine's. Explicit `batch_sizes` are kept up to the cap. Otherwise, with padding:
    /// 1, 2, 4, 8, every multiple of 8 up to 128, then steps of 64; without padding: 1 to 32, 64,
    /// 128, then powers of two; either way only sizes up to the cap, and the cap itself. Empty
    /// when graphs are disabled.
    pub fn capture_sizes(&self, engine_max_batch_size: usize) -> Vec<usize> {
        if !self.enabled {
            return Vec::new();
        }
        let cap = match self.max_batch_size {
            0 => engine_max_batch_size,
            m => m.min(engine_max_batch_size),
        };
        let mut sizes: Vec<usize> = match &self.batch_sizes {
            Some(given) => given.iter().copied().filter(|&b| b >= 1 && b <= cap).collect(),
            None if cap == 0 => Vec::new(),
            None => {
                let mut s: Vec<usize> = if self.enable_padding {
                    let mut s = vec![1, 2, 4, 8];
                    s.extend((16..=128).step_by(8));
                    s.extend((192..=cap).step_by(64));
                    s
                } else {
                    let mut s: Vec<usize> = (1..=32).collect();
                    s.extend([64, 128]);
                    s.extend((8..usize::BITS).map(|p| 1usize << p).take_while(|&b| b <= cap));
                    s
                };
                s.retain(|&b| b <= cap);
                s.push(cap);
                s
            }
        };
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences scheduled in one iteration.
    pub max_batch_size: usize,
    /// Most tokens (prefill chunks plus decode tokens) scheduled in one iteration.
    pub max_num_tokens: usize,
    /// Token slots per KV block.
    pub block_size: usize,
    pub kv_budget: KvBudget,
    /// Decode batch sizes replayed from CUDA graphs (ignored by the CPU backend).
    pub cuda_graphs: CudaGraphConfig,
    /// Choose only split-K-free GEMMs and fixed attention splits, so a row's result does not
    /// depend on its batch; CUDA only (the CPU backend is batch-invariant always).
    pub batch_invariant: bool,
    /// Keep K and V in FP8 E4M3 (scale 1): twice the tokens in the same memory; on the CPU, f32
    /// values rounded as the CUDA cache rounds them.
    pub kv_cache_fp8: bool,
    /// Which requests the scheduler admits, and whether it may preempt (see [`SchedulerPolicy`]).
    pub scheduler_policy: SchedulerPolicy,
    /// Split a prompt longer than the iteration's remaining token budget over several iterations;
    /// off, a prompt is prefilled in one iteration (and must fit `max_num_tokens`).
    pub chunked_prefill: bool,
    /// Ranks the model is split over by tensor parallelism (1: not split).
    pub tensor_parallel_size: usize,
    /// Launch each step before reading the tokens of the one before, which the new step takes on
    /// the device, so the host's work between steps overlaps the GPU's (TensorRT-LLM's overlap
    /// scheduler). A request that stops on a token runs one step more than it needs, and its
    /// stop is seen a step later. Steps whose requests want logprobs finish before the next one
    /// launches; tensor-parallel GPUs run without it.
    pub overlap_scheduler: bool,
}

/// The capacity scheduler's policy, after TensorRT-LLM's `CapacitySchedulerPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedulerPolicy {
    /// Admit a request only when the KV cache can hold every running request and it to their
    /// full length (prompt + max_tokens), so no request is ever preempted.
    #[default]
    GuaranteedNoEvict,
    /// Admit while the blocks for this iteration's tokens are free; when they run out, preempt the
    /// newest running request and recompute it later.
    MaxUtilization,
}

impl SchedulerPolicy {
    /// The name TensorRT-LLM's reports print (`GUARANTEED_NO_EVICT`, `MAX_UTILIZATION`).
    pub fn report_name(&self) -> &'static str {
        match self {
            SchedulerPolicy::GuaranteedNoEvict => "GUARANTEED_NO_EVICT",
            SchedulerPolicy::MaxUtilization => "MAX_UTILIZATION",
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch_size: DEFAULT_MAX_BATCH_SIZE,
            max_num_tokens: DEFAULT_MAX_NUM_TOKENS,
            block_size: DEFAULT_KV_BLOCK_SIZE,
            kv_budget: KvBudget::Bytes(gib_bytes(DEFAULT_KV_CACHE_GIB)),
            cuda_graphs: CudaGraphConfig::default(),
            batch_invariant: false,
            kv_cache_fp8: false,
            scheduler_policy: SchedulerPolicy::default(),
            chunked_prefill: true,
            tensor_parallel_size: 1,
            overlap_scheduler: false,
        }
    }
}

/// A byte count for messages: GiB, MiB or KiB with two decimals, or plain bytes.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    match UNITS.iter().find(|(size, _)| bytes >= *size) {
        Some((size, unit)) => format!("{:.2} {unit}", bytes as f64 / *size as f64),
        None => format!("{bytes} bytes"),
    }
}

/// Checks that a GPU memory fraction lies in (0, 1].
fn check_fraction(fraction: f64) -> Result<()> {
    ensure!(
        fraction > 0.0 && fraction <= 1.0,
        "KV cache GPU memory fraction {fraction} is outside (0, 1], expected the share of free GPU memory to use, such as 0.9"
    );
    Ok(())
}

impl EngineConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.max_batch_size > 0, "max batch size is 0, expected at least 1");
        ensure!(self.max_num_tokens > 0, "max num tokens is 0, expected at least 1");
        ensure!(self.block_size > 0, "KV block size is 0, expected at least 1");
        ensure!(self.tensor_parallel_size > 0, "tensor parallel size is 0, expected at least 1");
        if let Some(sizes) = &self.cuda_graphs.batch_sizes {
            if let Some(bad) = sizes.iter().find(|&&b| b == 0) {
                bail!("CUDA graph batch size {bad} in {sizes:?} is invalid, expected batch sizes of at least 1");
            }
        }
        match self.kv_budget {
            KvBudget::Tokens(0) => bail!("KV cache budget is 0 tokens, expected at least one block"),
            KvBudget::Bytes(0) => bail!("KV cache budget is 0 bytes, expected at least one block"),
            KvBudget::GpuFraction(f) => check_fraction(f),
            _ => Ok(()),
        }
    }

    /// Bytes of one KV block for a model taking `bytes_per_token` per slot.
    fn block_bytes(&self, bytes_per_token: usize) -> Result<u64> {
        ensure!(self.block_size > 0, "KV block size is 0, expected at least 1");
        (bytes_per_token.max(1) as u64)
            .checked_mul(self.block_size as u64)
            .with_context(|| format!("a KV block of {} tokens x {bytes_per_token} bytes is too large to address", self.block_size))
    }

    /// Blocks a token or byte budget buys (rounded up to whole blocks), their bytes, and the
    /// budget described for messages. Fails for a GPU fraction, which only free memory resolves.
    fn sized_budget(&self, bytes_per_token: usize) -> Result<(usize, u64, String)> {
        let tokens = match self.kv_budget {
            KvBudget::Tokens(t) => t,
            KvBudget::Bytes(b) => b / bytes_per_token.max(1),
            KvBudget::GpuFraction(f) => bail!(
                "a KV cache budget of a fraction {f} of the free GPU memory applies to the CUDA backend only, expected a size \
                 in tokens or bytes for a cache in host memory"
            ),
        };
        ensure!(self.block_size > 0, "KV block size is 0, expected at least 1");
        let blocks = tokens.div_ceil(self.block_size).max(1);
        let what = format!("a KV cache of {} ({blocks} blocks x {} tokens)", self.kv_budget.describe(), self.block_size);
        let bytes =
            (blocks as u64).checked_mul(self.block_bytes(bytes_per_token)?).with_context(|| format!("{what} is too large to address"))?;
        Ok((blocks, bytes, what))
    }

    /// Number of KV blocks a host-memory budget buys (rounded up to whole blocks) for a model
    /// taking `bytes_per_token` per slot; fails when that storage would not fit in host memory,
    /// and for a [`KvBudget::GpuFraction`], which only the CUDA backend resolves.
    pub fn num_kv_blocks(&self, bytes_per_token: usize) -> Result<usize> {
        let (blocks, bytes, what) = self.sized_budget(bytes_per_token)?;
        lumen_backend::cpu::ensure_fits_in_memory(bytes, &what)?;
        Ok(blocks)
    }

    /// Number of KV blocks to allocate on a GPU with `free_bytes` free after weights and
    /// activations, for a model taking `bytes_per_token` per slot. A [`KvBudget::GpuFraction`]
    /// gets `floor(free_bytes * fraction / block bytes)` blocks and fails when that is none; a
    /// token or byte budget gets what it buys (as in [`EngineConfig::num_kv_blocks`]) and fails
    /// when that exceeds `free_bytes`.
    pub fn blocks_for_bytes(&self, free_bytes: u64, bytes_per_token: usize) -> Result<usize> {
        let KvBudget::GpuFraction(fraction) = self.kv_budget else {
            let (blocks, bytes, what) = self.sized_budget(bytes_per_token)?;
            ensure!(
                bytes <= free_bytes,
                "{what} needs {}, more than the {} of free GPU memory",
                human_bytes(bytes),
                human_bytes(free_bytes)
            );
            return Ok(blocks);
        };
        check_fraction(fraction)?;
        let block_bytes = self.block_bytes(bytes_per_token)?;
        let budget = (free_bytes as f64 * fraction).floor() as u64;
        let blocks = budget / block_bytes;
        ensure!(
            blocks > 0,
            "a fraction {fraction} of the {} of free GPU memory is {}, less than one KV block ({} tokens x {bytes_per_token} bytes \
             = {}); expected room for at least one block (raise the fraction or free GPU memory)",
            human_bytes(free_bytes),
            human_bytes(budget),
            self.block_size,
            human_bytes(block_bytes)
        );
        usize::try_from(blocks).with_context(|| format!("{blocks} KV blocks are too many to address"))
    }
}

/// Engine settings given explicitly, such as command-line flags: each one set wins over the
/// config file's key, which wins over the default. Sizes are taken as given; the caller checks
/// values it wants to refuse under its own names (a flag's, say) before applying them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineOverrides {
    pub max_batch_size: Option<usize>,
    pub max_num_tokens: Option<usize>,
    /// KV cache size in tokens; wins over `kv_cache_gib`.
    pub kv_cache_tokens: Option<usize>,
    /// KV cache size in GiB.
    pub kv_cache_gib: Option<f64>,
    pub kv_block_size: Option<usize>,
    /// Share of the free GPU memory the KV cache takes when no size is given.
    pub kv_cache_free_gpu_mem_fraction: Option<f64>,
    /// Capture and replay CUDA graphs at all.
    pub cuda_graphs: Option<bool>,
    pub cuda_graph_padding: Option<bool>,
    /// 0 is the engine's max batch size.
    pub cuda_graph_max_batch_size: Option<usize>,
    pub cuda_graph_batch_sizes: Option<Vec<usize>>,
    /// Keep the KV cache in FP8.
    pub kv_cache_fp8: Option<bool>,
    pub tensor_parallel_size: Option<usize>,
    pub overlap_scheduler: Option<bool>,
}

/// An engine config file, YAML or JSON, with the TensorRT-LLM extra_llm_api_options keys lumen
/// uses. Every field is optional; a key the file leaves out falls back to the default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of engine options")]
pub struct EngineConfigFile {
    pub max_batch_size: Option<usize>,
    pub max_num_tokens: Option<usize>,
    pub kv_cache_config: Option<KvCacheSection>,
    /// `None`: key absent; `Some(None)`: `null`, which disables CUDA graphs.
    #[serde(default, deserialize_with = "present")]
    pub cuda_graph_config: Option<Option<CudaGraphSection>>,
    pub quant_config: Option<QuantSection>,
    pub tensor_parallel_size: Option<usize>,
    /// TensorRT-LLM's key: `false` turns the overlap scheduler on.
    pub disable_overlap_scheduler: Option<bool>,
}

/// `quant_config` of an engine config file: `quant_algo` (the weights: `FP8`, or absent) and
/// `kv_cache_quant_algo` (the KV cache: `FP8`, or absent).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map with quant_algo and kv_cache_quant_algo")]
pub struct QuantSection {
    pub quant_algo: Option<String>,
    pub kv_cache_quant_algo: Option<String>,
}

impl QuantSection {
    /// Whether `key`'s algorithm is FP8; an error for any other named algorithm.
    fn fp8(key: &str, value: Option<&str>) -> Result<bool> {
        match value {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("fp8") => Ok(true),
            Some(other) => bail!("quant_config.{key} {other:?} is not supported, expected FP8 (or no key)"),
        }
    }

    /// Whether the file asks for FP8 weights.
    pub fn weights_fp8(&self) -> Result<bool> {
        Self::fp8("quant_algo", self.quant_algo.as_deref())
    }

    /// Whether the file asks for an FP8 KV cache.
    pub fn kv_cache_fp8(&self) -> Result<bool> {
        Self::fp8("kv_cache_quant_algo", self.kv_cache_quant_algo.as_deref())
    }
}

/// `kv_cache_config` of an engine config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of KV cache options")]
pub struct KvCacheSection {
    pub free_gpu_memory_fraction: Option<f64>,
    pub max_tokens: Option<usize>,
    pub tokens_per_block: Option<usize>,
}

/// `cuda_graph_config` of an engine config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of CUDA graph options, or null")]
pub struct CudaGraphSection {
    pub enable_padding: Option<bool>,
    pub max_batch_size: Option<usize>,
    pub batch_sizes: Option<Vec<usize>>,
}

/// Deserializes a key that is present (possibly `null`) as `Some`, so an absent key stays `None`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> std::result::Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl EngineConfigFile {
    /// Reads and checks `path`, YAML (.yaml, .yml) or JSON (.json) by its extension. Errors name
    /// the file, and an unknown key names the accepted ones.
    pub fn load(path: &Path) -> Result<Self> {
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
    pub fn check(&self) -> Result<()> {
        let kv = self.kv_cache_config.as_ref();
        for (key, value) in [
            ("max_batch_size", self.max_batch_size),
            ("max_num_tokens", self.max_num_tokens),
            ("kv_cache_config.max_tokens", kv.and_then(|k| k.max_tokens)),
            ("kv_cache_config.tokens_per_block", kv.and_then(|k| k.tokens_per_block)),
            ("tensor_parallel_size", self.tensor_parallel_size),
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
        if let Some(q) = &self.quant_config {
            q.weights_fp8()?;
            q.kv_cache_fp8()?;
        }
        Ok(())
    }

    /// The engine configuration for the CPU (`device_is_cuda` false) or the CUDA device: each
    /// setting from `overrides` when given, else from this file, else its default. Without an
    /// explicit KV cache size (`kv_cache_tokens`, `kv_cache_gib` or the file's
    /// `kv_cache_config.max_tokens`), the CUDA device takes a fraction of its free memory and the
    /// CPU [`DEFAULT_KV_CACHE_GIB`]. `batch_invariant` is left off.
    pub fn apply(&self, overrides: &EngineOverrides, device_is_cuda: bool) -> Result<EngineConfig> {
        self.check()?;
        let kv = self.kv_cache_config.clone().unwrap_or_default();
        let fraction = overrides.kv_cache_free_gpu_mem_fraction.or(kv.free_gpu_memory_fraction).unwrap_or(DEFAULT_FREE_GPU_MEM_FRACTION);
        let kv_budget = match (overrides.kv_cache_tokens, overrides.kv_cache_gib, kv.max_tokens) {
            (Some(t), _, _) => KvBudget::Tokens(t),
            (None, Some(gib), _) => KvBudget::Bytes(gib_bytes(gib)),
            (None, None, Some(t)) => KvBudget::Tokens(t),
            (None, None, None) if device_is_cuda => KvBudget::GpuFraction(fraction),
            (None, None, None) => KvBudget::Bytes(gib_bytes(DEFAULT_KV_CACHE_GIB)),
        };
        // `cuda_graph_config: null` in the file turns graphs off; an absent key leaves them on.
        let graphs_enabled = overrides.cuda_graphs.unwrap_or(!matches!(self.cuda_graph_config, Some(None)));
        let graphs = self.cuda_graph_config.clone().flatten().unwrap_or_default();
        let config = EngineConfig {
            max_batch_size: overrides.max_batch_size.or(self.max_batch_size).unwrap_or(DEFAULT_MAX_BATCH_SIZE),
            max_num_tokens: overrides.max_num_tokens.or(self.max_num_tokens).unwrap_or(DEFAULT_MAX_NUM_TOKENS),
            block_size: overrides.kv_block_size.or(kv.tokens_per_block).unwrap_or(DEFAULT_KV_BLOCK_SIZE),
            kv_budget,
            cuda_graphs: CudaGraphConfig {
                enabled: graphs_enabled,
                enable_padding: overrides.cuda_graph_padding.or(graphs.enable_padding).unwrap_or(true),
                max_batch_size: overrides.cuda_graph_max_batch_size.or(graphs.max_batch_size).unwrap_or(0),
                batch_sizes: overrides.cuda_graph_batch_sizes.clone().or(graphs.batch_sizes),
            },
            batch_invariant: false,
            kv_cache_fp8: match overrides.kv_cache_fp8 {
                Some(fp8) => fp8,
                None => self.quant_config.as_ref().map(QuantSection::kv_cache_fp8).transpose()?.unwrap_or(false),
            },
            tensor_parallel_size: overrides.tensor_parallel_size.or(self.tensor_parallel_size).unwrap_or(1),
            overlap_scheduler: overrides.overlap_scheduler.or(self.disable_overlap_scheduler.map(|off| !off)).unwrap_or(false),
            ..EngineConfig::default()
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_test_support::scratch::Scratch;

    /// The configuration `path` gives under `overrides`.
    fn from_file(path: &str, overrides: &EngineOverrides, device_is_cuda: bool) -> Result<EngineConfig> {
        EngineConfigFile::load(Path::new(path))?.apply(overrides, device_is_cuda)
    }

    fn file_config(path: &str, device_is_cuda: bool) -> EngineConfig {
        from_file(path, &EngineOverrides::default(), device_is_cuda).unwrap_or_else(|e| panic!("{path}: {e:#}"))
    }

    fn file_error(path: &str) -> String {
        format!("{:#}", from_file(path, &EngineOverrides::default(), true).unwrap_err())
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
    fn no_file_and_no_overrides_give_the_defaults() {
        let none = EngineOverrides::default();
        let cpu = EngineConfigFile::default().apply(&none, false).unwrap();
        assert_eq!((cpu.max_batch_size, cpu.max_num_tokens, cpu.block_size), (64, 2048, 16));
        assert_eq!(cpu.kv_budget, KvBudget::Bytes(1 << 30));
        assert_eq!(cpu.cuda_graphs, CudaGraphConfig::default());
        assert!(!cpu.batch_invariant);
        assert_eq!(EngineConfigFile::default().apply(&none, true).unwrap().kv_budget, KvBudget::GpuFraction(0.9));
        let d = EngineConfig::default();
        assert_eq!((d.max_batch_size, d.max_num_tokens, d.block_size, d.kv_budget), (64, 2048, 16, KvBudget::Bytes(1 << 30)));
    }

    #[test]
    fn yaml_file_sets_every_key() {
        let d = Scratch::new("engine-config-yaml");
        for name in ["engine.yaml", "engine.YML"] {
            let path = d.write(name, YAML);
            for cuda in [false, true] {
                let c = file_config(&path, cuda);
                assert_eq!((c.max_batch_size, c.max_num_tokens, c.block_size), (3, 100, 8));
                let want = if cuda { KvBudget::GpuFraction(0.5) } else { KvBudget::Bytes(1 << 30) };
                assert_eq!(c.kv_budget, want);
                let graphs = CudaGraphConfig { enabled: true, enable_padding: false, max_batch_size: 16, batch_sizes: Some(vec![1, 2, 4]) };
                assert_eq!(c.cuda_graphs, graphs);
            }
        }
        let tokens = d.write("tokens.yml", "kv_cache_config:\n  max_tokens: 4096\n  free_gpu_memory_fraction: 0.5\n");
        assert_eq!(file_config(&tokens, true).kv_budget, KvBudget::Tokens(4096));
        assert_eq!(file_config(&tokens, false).kv_budget, KvBudget::Tokens(4096));
    }

    #[test]
    fn json_file_sets_every_key() {
        let d = Scratch::new("engine-config-json");
        let path = d.write(
            "engine.json",
            r#"{"max_batch_size": 5, "max_num_tokens": 64,
                "kv_cache_config": {"max_tokens": 256, "tokens_per_block": 32},
                "cuda_graph_config": {"enable_padding": true, "max_batch_size": 4}}"#,
        );
        let c = file_config(&path, true);
        assert_eq!((c.max_batch_size, c.max_num_tokens, c.block_size, c.kv_budget), (5, 64, 32, KvBudget::Tokens(256)));
        assert_eq!(c.cuda_graphs, CudaGraphConfig { max_batch_size: 4, ..CudaGraphConfig::default() });
    }

    #[test]
    fn empty_files_and_sections_keep_the_defaults() {
        let d = Scratch::new("engine-config-empty");
        let default = EngineConfigFile::default().apply(&EngineOverrides::default(), true).unwrap();
        for (name, text) in
            [("empty.yaml", ""), ("comments.yaml", "# nothing yet\n"), ("empty.json", "{}"), ("sections.yaml", "kv_cache_config: {}\n")]
        {
            let c = file_config(&d.write(name, text), true);
            assert_eq!(
                (c.max_batch_size, c.max_num_tokens, c.block_size, c.kv_budget),
                (64, 2048, 16, KvBudget::GpuFraction(0.9)),
                "{name}"
            );
            assert_eq!(c.cuda_graphs, default.cuda_graphs, "{name}");
        }
    }

    #[test]
    fn quant_config_asks_for_fp8_weights_and_kv_cache_and_refuses_other_algorithms() {
        let d = Scratch::new("engine-config-quant");
        let fp8 = d.write("fp8.yaml", "quant_config:\n  quant_algo: FP8\n  kv_cache_quant_algo: FP8\n");
        let file = EngineConfigFile::load(Path::new(&fp8)).unwrap();
        assert!(file.quant_config.as_ref().unwrap().weights_fp8().unwrap());
        assert!(file_config(&fp8, true).kv_cache_fp8);
        let off = EngineOverrides { kv_cache_fp8: Some(false), ..EngineOverrides::default() };
        assert!(!from_file(&fp8, &off, true).unwrap().kv_cache_fp8, "the flag wins over the file");
        let weights_only = d.write("w.json", r#"{"quant_config": {"quant_algo": "fp8"}}"#);
        assert!(!file_config(&weights_only, true).kv_cache_fp8);
        let int4 = d.write("int4.yaml", "quant_config:\n  quant_algo: W4A16_AWQ\n");
        let e = file_error(&int4);
        assert!(e.contains("quant_config.quant_algo") && e.contains("W4A16_AWQ") && e.contains("expected FP8"), "{e}");
        let typo = d.write("typo.yaml", "quant_config:\n  kv_algo: FP8\n");
        assert!(file_error(&typo).contains("kv_algo"), "{}", file_error(&typo));
    }

    #[test]
    fn overrides_win_over_the_file_key_by_key() {
        let d = Scratch::new("engine-config-overrides");
        let path = d.write("engine.yaml", YAML);
        let all = EngineOverrides {
            max_batch_size: Some(7),
            max_num_tokens: Some(512),
            kv_block_size: Some(4),
            kv_cache_free_gpu_mem_fraction: Some(0.25),
            cuda_graph_padding: Some(true),
            cuda_graph_max_batch_size: Some(0),
            cuda_graph_batch_sizes: Some(vec![8, 16]),
            ..EngineOverrides::default()
        };
        let c = from_file(&path, &all, true).unwrap();
        assert_eq!((c.max_batch_size, c.max_num_tokens, c.block_size, c.kv_budget), (7, 512, 4, KvBudget::GpuFraction(0.25)));
        assert_eq!(c.cuda_graphs, CudaGraphConfig { batch_sizes: Some(vec![8, 16]), ..CudaGraphConfig::default() });
        let one = EngineOverrides { max_batch_size: Some(7), ..EngineOverrides::default() };
        let c = from_file(&path, &one, true).unwrap();
        assert_eq!((c.max_batch_size, c.max_num_tokens, c.block_size), (7, 100, 8), "the keys not overridden come from the file");
        let tokens = d.write("tokens.yaml", "kv_cache_config:\n  max_tokens: 4096\n");
        let gib = EngineOverrides { kv_cache_gib: Some(0.5), ..EngineOverrides::default() };
        assert_eq!(from_file(&tokens, &gib, true).unwrap().kv_budget, KvBudget::Bytes(1 << 29));
        let both = EngineOverrides { kv_cache_tokens: Some(64), ..gib };
        assert_eq!(from_file(&tokens, &both, true).unwrap().kv_budget, KvBudget::Tokens(64), "tokens win over GiB");
    }

    #[test]
    fn null_cuda_graph_config_disables_graphs_unless_overridden() {
        let d = Scratch::new("engine-config-null");
        let yaml = d.write("null.yaml", "max_batch_size: 8\ncuda_graph_config: null\n");
        let json = d.write("null.json", r#"{"cuda_graph_config": null}"#);
        let graphs = |on: bool| EngineOverrides { cuda_graphs: Some(on), ..EngineOverrides::default() };
        for path in [&yaml, &json] {
            let c = file_config(path, true);
            assert!(!c.cuda_graphs.enabled, "{path}");
            assert!(c.cuda_graphs.capture_sizes(c.max_batch_size).is_empty());
            assert!(from_file(path, &graphs(true), true).unwrap().cuda_graphs.enabled, "{path}");
        }
        let absent = d.write("absent.yaml", "max_batch_size: 8\n");
        assert!(file_config(&absent, true).cuda_graphs.enabled);
        assert!(!from_file(&absent, &graphs(false), true).unwrap().cuda_graphs.enabled);
        let unpadded = EngineOverrides { cuda_graph_padding: Some(false), ..EngineOverrides::default() };
        assert!(!EngineConfigFile::default().apply(&unpadded, true).unwrap().cuda_graphs.enable_padding);
    }

    #[test]
    fn disable_overlap_scheduler_false_turns_the_overlap_scheduler_on_unless_overridden() {
        let d = Scratch::new("engine-config-overlap");
        let on = d.write("on.yaml", "disable_overlap_scheduler: false\n");
        let off = d.write("off.json", r#"{"disable_overlap_scheduler": true}"#);
        let absent = d.write("absent.yaml", "max_batch_size: 8\n");
        assert!(file_config(&on, true).overlap_scheduler);
        assert!(!file_config(&off, true).overlap_scheduler);
        assert!(!file_config(&absent, false).overlap_scheduler, "off by default");
        let flag = |on: bool| EngineOverrides { overlap_scheduler: Some(on), ..EngineOverrides::default() };
        assert!(!from_file(&on, &flag(false), true).unwrap().overlap_scheduler, "the flag wins over the file");
        assert!(from_file(&off, &flag(true), false).unwrap().overlap_scheduler);
    }

    #[test]
    fn unknown_keys_name_the_key_the_file_and_the_accepted_keys() {
        let d = Scratch::new("engine-config-unknown");
        let yaml = d.write("typo.yaml", "max_batch_size: 8\nmax_batch_sise: 4\n");
        let json = d.write("typo.json", r#"{"max_batch_sise": 4}"#);
        for path in [&yaml, &json] {
            let e = file_error(path);
            for needle in [path.as_str(), "max_batch_sise", "max_batch_size", "max_num_tokens", "kv_cache_config", "cuda_graph_config"] {
                assert!(e.contains(needle), "{needle:?} missing from: {e}");
            }
        }
        let nested = d.write("nested.yaml", "kv_cache_config:\n  free_gpu_mem_fraction: 0.5\n");
        let e = file_error(&nested);
        for needle in [nested.as_str(), "free_gpu_mem_fraction", "free_gpu_memory_fraction", "max_tokens", "tokens_per_block"] {
            assert!(e.contains(needle), "{needle:?} missing from: {e}");
        }
        let graphs = d.write("graphs.json", r#"{"cuda_graph_config": {"padding": true}}"#);
        let e = file_error(&graphs);
        for needle in [graphs.as_str(), "`padding`", "enable_padding", "batch_sizes"] {
            assert!(e.contains(needle), "{needle:?} missing from: {e}");
        }
    }

    #[test]
    fn bad_files_are_refused_with_their_name() {
        let d = Scratch::new("engine-config-bad");
        let cases = [
            (d.write("engine.toml", "max_batch_size = 3\n"), "expected YAML or JSON"),
            (d.path("missing.yaml"), "cannot read engine config file"),
            (d.write("broken.json", "{\"max_batch_size\": "), "EOF"),
            (d.write("list.yaml", "- 1\n- 2\n"), "expected a map of engine options"),
            (d.write("negative.yaml", "max_batch_size: -1\n"), "max_batch_size"),
            (d.write("zero.yaml", "max_num_tokens: 0\n"), "max_num_tokens is 0, expected at least 1"),
            (d.write("block.yaml", "kv_cache_config:\n  tokens_per_block: 0\n"), "kv_cache_config.tokens_per_block is 0"),
            (d.write("sizes.json", r#"{"cuda_graph_config": {"batch_sizes": [1, 0]}}"#), "cuda_graph_config.batch_sizes [1, 0] contains 0"),
            (
                d.write("fraction.yaml", "kv_cache_config:\n  free_gpu_memory_fraction: 1.5\n"),
                "kv_cache_config.free_gpu_memory_fraction 1.5",
            ),
        ];
        for (path, needle) in &cases {
            let e = file_error(path);
            assert!(e.contains(path.as_str()) && e.contains(needle), "{needle:?} or {path} missing from: {e}");
        }
        assert!(file_error(&cases[8].0).contains("(0, 1]"));
    }

    #[test]
    fn kv_budget_rounds_up_to_blocks_and_refuses_impossible_sizes() {
        let c = EngineConfig { kv_budget: KvBudget::Tokens(20), block_size: 16, ..EngineConfig::default() };
        assert_eq!(c.num_kv_blocks(100).unwrap(), 2);
        let huge = EngineConfig { kv_budget: KvBudget::Tokens(usize::MAX), ..c.clone() };
        let e = huge.num_kv_blocks(46080).unwrap_err().to_string();
        assert!(e.contains("KV cache"), "{e}");
        let big = EngineConfig { kv_budget: KvBudget::Bytes(1 << 60), ..c };
        let e = big.num_kv_blocks(46080).unwrap_err().to_string();
        assert!(e.contains("available memory"), "{e}");
    }

    fn graphs(enable_padding: bool, max_batch_size: usize, batch_sizes: Option<Vec<usize>>) -> CudaGraphConfig {
        CudaGraphConfig { enabled: true, enable_padding, max_batch_size, batch_sizes }
    }

    #[test]
    fn padded_capture_sizes_step_by_8_then_64_and_end_at_the_cap() {
        let want = [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 192, 256];
        assert_eq!(graphs(true, 0, None).capture_sizes(256), want);
        assert_eq!(graphs(true, 256, None).capture_sizes(512), want, "the graph cap applies below the engine's");
        assert_eq!(graphs(true, 1024, None).capture_sizes(256), want, "the engine's max batch size caps the graph cap");
        assert_eq!(graphs(true, 0, None).capture_sizes(100), [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 100]);
        assert_eq!(graphs(true, 0, None).capture_sizes(300), [&want[..], &[300]].concat());
        assert_eq!(graphs(true, 0, None).capture_sizes(3), [1, 2, 3]);
        assert_eq!(graphs(true, 0, None).capture_sizes(1), [1]);
        assert_eq!(CudaGraphConfig::default().capture_sizes(64), [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]);
    }

    #[test]
    fn unpadded_capture_sizes_cover_1_to_32_then_powers_of_two() {
        let small: Vec<usize> = (1..=32).collect();
        assert_eq!(graphs(false, 0, None).capture_sizes(256), [&small[..], &[64, 128, 256]].concat());
        assert_eq!(graphs(false, 0, None).capture_sizes(100), [&small[..], &[64, 100]].concat());
        assert_eq!(graphs(false, 0, None).capture_sizes(1000), [&small[..], &[64, 128, 256, 512, 1000]].concat());
        assert_eq!(graphs(false, 20, None).capture_sizes(64), (1..=20).collect::<Vec<_>>());
    }

    #[test]
    fn explicit_batch_sizes_are_sorted_deduplicated_and_capped() {
        assert_eq!(graphs(true, 0, Some(vec![8, 1, 4, 4, 2])).capture_sizes(64), [1, 2, 4, 8]);
        assert_eq!(graphs(true, 0, Some(vec![1, 16, 200])).capture_sizes(64), [1, 16], "above the engine's max batch size");
        assert_eq!(graphs(true, 8, Some(vec![1, 4, 16])).capture_sizes(64), [1, 4], "above the graph max batch size");
        assert_eq!(graphs(false, 0, Some(vec![3])).capture_sizes(64), [3], "the cap itself is not added to explicit sizes");
    }

    #[test]
    fn disabled_graphs_capture_nothing() {
        let off = CudaGraphConfig { enabled: false, ..CudaGraphConfig::default() };
        assert!(off.capture_sizes(64).is_empty());
    }

    #[test]
    fn validate_rejects_zero_graph_batch_sizes_and_bad_fractions() {
        let zero = EngineConfig { cuda_graphs: graphs(true, 0, Some(vec![1, 0, 4])), ..EngineConfig::default() };
        let e = zero.validate().unwrap_err().to_string();
        assert!(e.contains("CUDA graph batch size 0") && e.contains("[1, 0, 4]"), "{e}");
        for bad in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            let c = EngineConfig { kv_budget: KvBudget::GpuFraction(bad), ..EngineConfig::default() };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("fraction {bad}")) && e.contains("(0, 1]"), "{e}");
        }
        for good in [1.0, 0.9, 1e-6] {
            EngineConfig { kv_budget: KvBudget::GpuFraction(good), ..EngineConfig::default() }.validate().unwrap();
        }
    }

    #[test]
    fn gpu_fraction_is_for_the_cuda_backend_only() {
        let c = EngineConfig { kv_budget: KvBudget::GpuFraction(0.9), ..EngineConfig::default() };
        let e = c.num_kv_blocks(1024).unwrap_err().to_string();
        assert!(e.contains("CUDA backend only") && e.contains("0.9"), "{e}");
    }

    #[test]
    fn gpu_fraction_takes_whole_blocks_of_free_memory() {
        // One block: 16 tokens x 1024 bytes = 16 KiB.
        let c = EngineConfig { kv_budget: KvBudget::GpuFraction(0.5), block_size: 16, ..EngineConfig::default() };
        assert_eq!(c.blocks_for_bytes(1 << 30, 1024).unwrap(), (1 << 29) / (16 * 1024));
        assert_eq!(c.blocks_for_bytes(16 * 1024 * 2 + 16 * 1024 - 1, 1024).unwrap(), 1, "rounded down");
        let full = EngineConfig { kv_budget: KvBudget::GpuFraction(1.0), ..c.clone() };
        assert_eq!(full.blocks_for_bytes(16 * 1024 * 3, 1024).unwrap(), 3);
        let e = c.blocks_for_bytes(16 * 1024, 1024).unwrap_err().to_string();
        assert!(e.contains("fraction 0.5") && e.contains("16.00 KiB of free GPU memory") && e.contains("16 tokens x 1024 bytes"), "{e}");
        let e = c.blocks_for_bytes(0, 1024).unwrap_err().to_string();
        assert!(e.contains("0 bytes of free GPU memory"), "{e}");
        let bad = EngineConfig { kv_budget: KvBudget::GpuFraction(2.0), ..c };
        let e = bad.blocks_for_bytes(1 << 30, 1024).unwrap_err().to_string();
        assert!(e.contains("fraction 2") && e.contains("(0, 1]"), "{e}");
    }

    #[test]
    fn sized_budgets_ignore_free_memory_unless_they_exceed_it() {
        let tokens = EngineConfig { kv_budget: KvBudget::Tokens(40), block_size: 16, ..EngineConfig::default() };
        assert_eq!(tokens.blocks_for_bytes(1 << 30, 1024).unwrap(), 3);
        assert_eq!(tokens.blocks_for_bytes(3 * 16 * 1024, 1024).unwrap(), 3, "exactly fits");
        let e = tokens.blocks_for_bytes(3 * 16 * 1024 - 1, 1024).unwrap_err().to_string();
        assert!(e.contains("40 tokens") && e.contains("48.00 KiB") && e.contains("free GPU memory"), "{e}");
        let bytes = EngineConfig { kv_budget: KvBudget::Bytes(1 << 20), ..tokens };
        assert_eq!(bytes.blocks_for_bytes(1 << 30, 1024).unwrap(), 64);
        let e = bytes.blocks_for_bytes(1 << 19, 1024).unwrap_err().to_string();
        assert!(e.contains("1048576 bytes") && e.contains("1.00 MiB") && e.contains("512.00 KiB of free GPU memory"), "{e}");
    }

    #[test]
    fn cuda_graph_config_deserializes_with_defaults_and_rejects_unknown_keys() {
        let c: CudaGraphConfig = serde_json::from_str(r#"{"batch_sizes": [1, 2]}"#).unwrap();
        assert_eq!(c, CudaGraphConfig { batch_sizes: Some(vec![1, 2]), ..CudaGraphConfig::default() });
        let e = serde_json::from_str::<CudaGraphConfig>(r#"{"padding": true}"#).unwrap_err().to_string();
        assert!(e.contains("padding") && e.contains("enable_padding"), "{e}");
    }
}
