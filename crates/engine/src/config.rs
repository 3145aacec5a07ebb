//! Engine limits: the per-iteration token budget and the KV-cache size.

use anyhow::{ensure, Context, Result};

/// How much KV cache to allocate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KvBudget {
    /// Room for this many tokens across all sequences.
    Tokens(usize),
    /// This many bytes of KV storage.
    Bytes(usize),
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { max_batch_size: 64, max_num_tokens: 2048, block_size: 16, kv_budget: KvBudget::Bytes(1 << 30) }
    }
}

impl EngineConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.max_batch_size > 0, "max batch size is 0, expected at least 1");
        ensure!(self.max_num_tokens > 0, "max num tokens is 0, expected at least 1");
        ensure!(self.block_size > 0, "KV block size is 0, expected at least 1");
        match self.kv_budget {
            KvBudget::Tokens(0) => anyhow::bail!("KV cache budget is 0 tokens, expected at least one block"),
            KvBudget::Bytes(0) => anyhow::bail!("KV cache budget is 0 bytes, expected at least one block"),
            _ => Ok(()),
        }
    }

    /// Number of KV blocks the budget buys (rounded up to whole blocks) for a model taking
    /// `bytes_per_token` per slot; fails when that storage would not fit in host memory.
    pub fn num_kv_blocks(&self, bytes_per_token: usize) -> Result<usize> {
        let tokens = match self.kv_budget {
            KvBudget::Tokens(t) => t,
            KvBudget::Bytes(b) => b / bytes_per_token.max(1),
        };
        let blocks = tokens.div_ceil(self.block_size).max(1);
        let bytes = (blocks as u64).checked_mul(self.block_size as u64).and_then(|t| t.checked_mul(bytes_per_token as u64));
        let requested = match self.kv_budget {
            KvBudget::Tokens(t) => format!("{t} tokens"),
            KvBudget::Bytes(b) => format!("{b} bytes"),
        };
        let what = format!("a KV cache of {requested} ({blocks} blocks x {} tokens)", self.block_size);
        let bytes = bytes.with_context(|| format!("{what} is too large to address"))?;
        lumen_backend::cpu::ensure_fits_in_memory(bytes, &what).map_err(anyhow::Error::msg)?;
        Ok(blocks)
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
}
