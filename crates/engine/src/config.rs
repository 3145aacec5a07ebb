//! Engine limits: the per-iteration token budget, the KV-cache size and the CUDA graph batch sizes.

use anyhow::{bail, ensure, Context, Result};

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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch_size: 64,
            max_num_tokens: 2048,
            block_size: 16,
            kv_budget: KvBudget::Bytes(1 << 30),
            cuda_graphs: CudaGraphConfig::default(),
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
        lumen_backend::cpu::ensure_fits_in_memory(bytes, &what).map_err(anyhow::Error::msg)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
