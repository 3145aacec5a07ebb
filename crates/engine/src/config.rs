//! Engine limits: the per-iteration token budget and the KV-cache size.

use anyhow::{ensure, Result};

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

    /// Number of KV blocks the budget buys, for a model taking `bytes_per_token` per slot.
    pub fn num_kv_blocks(&self, bytes_per_token: usize) -> usize {
        let tokens = match self.kv_budget {
            KvBudget::Tokens(t) => t,
            KvBudget::Bytes(b) => b / bytes_per_token.max(1),
        };
        (tokens / self.block_size).max(1)
    }
}
