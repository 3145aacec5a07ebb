//! Options every engine-running command shares (model, threads, engine limits) and the code that
//! turns them into a loaded model and an engine.

use anyhow::{Context, Result};
use clap::Args;
use lumen_engine::{Engine, EngineConfig, KvBudget};
use lumen_model::{default_model_path, load_model, Model};
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
        let model = load_model(&spec)?;
        let c = model.config();
        eprintln!(
            "[lumen] loaded {} ({}, {} layers, hidden {}, vocab {}) in {:.2} s",
            model.name,
            model.format,
            c.num_layers,
            c.hidden_size,
            c.vocab_size,
            started.elapsed().as_secs_f64()
        );
        Ok(Arc::new(model))
    }
}

#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Most requests scheduled in one iteration.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_size: u32,
    /// Most tokens (prefill chunks plus decode tokens) scheduled in one iteration.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_num_tokens: u32,
    /// KV cache size in tokens (overrides --kv-cache-gib).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub kv_cache_tokens: Option<u64>,
    /// KV cache size in GiB of memory.
    #[arg(long, default_value_t = 1.0)]
    pub kv_cache_gib: f64,
    /// Token slots per KV block.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub kv_block_size: u32,
}

impl EngineArgs {
    pub fn config(&self) -> Result<EngineConfig> {
        let kv_budget = match self.kv_cache_tokens {
            Some(t) => KvBudget::Tokens(t as usize),
            None => {
                anyhow::ensure!(
                    self.kv_cache_gib.is_finite() && self.kv_cache_gib > 0.0,
                    "--kv-cache-gib {} is not a positive size",
                    self.kv_cache_gib
                );
                KvBudget::Bytes((self.kv_cache_gib * (1u64 << 30) as f64) as usize)
            }
        };
        Ok(EngineConfig {
            max_batch_size: self.max_batch_size as usize,
            max_num_tokens: self.max_num_tokens as usize,
            block_size: self.kv_block_size as usize,
            kv_budget,
        })
    }

    pub fn engine(&self, model: Arc<Model>) -> Result<Engine> {
        Engine::new(model, self.config()?)
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
