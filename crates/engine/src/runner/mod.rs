//! The model runner: turns a scheduler decision into the model's flattened batch (tokens,
//! positions, KV slots, per-sequence block tables, rows that need logits), launches it, and,
//! when the engine finishes the step, hands back one sampled token per sampling sequence with the
//! step's expert load and device time, on the CPU ([`cpu`]), one GPU ([`cuda`]) or the GPUs of a
//! tensor-parallel model ([`cuda_ranks`]). The runner owns the device-side KV storage; the
//! engine's KV manager decides which blocks hold what.
//!
//! Steps finish in the order they were launched. The CPU runner and one GPU's take a step while
//! the one before is still in flight (the overlap scheduler's), whose tokens the new step's
//! token words marked [`lumen_backend::SAMPLED_TOKEN`] name; tensor-parallel ranks take one step
//! at a time.

pub mod cpu;
pub mod cuda;
pub mod cuda_ranks;

use crate::config::EngineConfig;
use crate::kv_cache::KvCacheManager;
use crate::request::SamplingParams;
use crate::scheduler::{Scheduler, SchedulerOutput};
use anyhow::Result;
use cpu::CpuRunner;
use cuda::{CudaRunner, RunnerConfig, SampleParams};
use cuda_ranks::CudaRanks;
use lumen_backend::{AttentionSeq, KvStorage};
use lumen_model::{Executor, ForwardBatch, Model};
use std::sync::Arc;

/// One scheduled sequence's part of the flattened batch.
pub struct SeqSpan {
    /// Its first row in the batch.
    pub start: usize,
    pub len: usize,
    /// Position of its first token.
    pub first_pos: usize,
    /// Its block table's place in [`ModelInput::block_tables`].
    pub table: std::ops::Range<usize>,
}

/// The inputs of one forward step, owned so the batch can borrow them.
pub struct ModelInput {
    pub tokens: Vec<u32>,
    pub positions: Vec<usize>,
    pub slots: Vec<usize>,
    pub seqs: Vec<SeqSpan>,
    /// Every sequence's block table, one after another.
    pub block_tables: Vec<u32>,
    pub logit_rows: Vec<usize>,
    /// Per logits row: its request's sampling parameters and which output token it draws.
    pub sampling: Vec<(SamplingParams, usize)>,
}

pub fn prepare(out: &SchedulerOutput, scheduler: &Scheduler, kv: &KvCacheManager) -> ModelInput {
    let (tokens, seqs) = (out.num_tokens(), out.seqs.len());
    let mut input = ModelInput {
        tokens: Vec::with_capacity(tokens),
        positions: Vec::with_capacity(tokens),
        slots: Vec::with_capacity(tokens),
        seqs: Vec::with_capacity(seqs),
        block_tables: Vec::new(),
        logit_rows: Vec::with_capacity(seqs),
        sampling: Vec::with_capacity(seqs),
    };
    for (s, &i) in out.seqs.iter().zip(&scheduler.running_indices(out)) {
        let seq = &scheduler.running[i];
        let start = input.tokens.len();
        for pos in s.first_pos..s.first_pos + s.num_tokens {
            input.tokens.push(seq.tokens[pos]);
            input.positions.push(pos);
            input.slots.push(kv.slot(&seq.block_table, pos));
        }
        let table = input.block_tables.len()..input.block_tables.len() + seq.block_table.len();
        input.block_tables.extend_from_slice(&seq.block_table);
        input.seqs.push(SeqSpan { start, len: s.num_tokens, first_pos: s.first_pos, table });
        if s.samples {
            input.logit_rows.push(start + s.num_tokens - 1);
            input.sampling.push((seq.sampling.clone(), seq.num_generated()));
        }
    }
    input
}

/// What a finished step hands back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepResult {
    /// One sampled token per logits row, in order.
    pub tokens: Vec<u32>,
    /// Per MoE layer, the assignments each expert received; empty for a dense model.
    pub expert_load: Vec<Vec<u32>>,
    /// The step's device time, where the device measures it.
    pub device_ms: Option<f64>,
}

/// The device-side half of the engine: owns the KV storage and runs steps on the CPU or a GPU.
/// An engine holds one, so its variants' sizes cost nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Runner {
    Cpu(CpuRunner),
    Cuda(Box<CudaRunner>),
    CudaRanks(CudaRanks),
}

impl Runner {
    /// Builds the runner for where the model lives; returns it with the number of KV blocks.
    pub fn new(model: &Arc<Model>, config: &EngineConfig) -> Result<(Runner, usize)> {
        let c = model.config();
        match &model.executor {
            Executor::Cpu(decoder) => {
                let bytes_per_token = KvStorage::bytes_per_token(c.num_layers, c.kv_values_per_token_per_layer());
                let blocks = config.num_kv_blocks(bytes_per_token)?;
                let ranks = config.tensor_parallel_size;
                Ok((Runner::Cpu(CpuRunner::new(decoder, blocks, config.block_size, config.kv_cache_fp8, ranks)?), blocks))
            }
            Executor::Cuda(_) if config.tensor_parallel_size > 1 => anyhow::bail!(
                "--tp {}: the model was loaded on one GPU; load it split over {0} GPUs (lumen's --tp does, at load)",
                config.tensor_parallel_size
            ),
            Executor::Cuda(_) => {
                let blocks_for = |free, bytes_per_token| config.blocks_for_bytes(free, bytes_per_token);
                let runner = CudaRunner::new(model.clone(), runner_config(config), None, blocks_for)?;
                let blocks = runner.num_blocks();
                Ok((Runner::Cuda(Box::new(runner)), blocks))
            }
            Executor::CudaRanks(ranks) => {
                anyhow::ensure!(
                    ranks.len() == config.tensor_parallel_size,
                    "the model is split over {} GPUs but the engine asks for --tp {}",
                    ranks.len(),
                    config.tensor_parallel_size
                );
                let engine = config.clone();
                let runner = CudaRanks::new(model, runner_config(config), move |free, bytes_per_token| {
                    engine.blocks_for_bytes(free, bytes_per_token)
                })?;
                let blocks = runner.num_blocks();
                Ok((Runner::CudaRanks(runner), blocks))
            }
        }
    }

    /// Whether a step may be launched while the one before is in flight, its tokens named by
    /// marked token words: not over tensor-parallel GPUs, whose ranks would each need the tokens
    /// only rank 0 draws.
    pub fn overlaps(&self) -> bool {
        !matches!(self, Runner::CudaRanks(_))
    }

    /// Launches the forward pass and the sampling of its logits rows (on the CPU both run to
    /// completion here).
    pub fn launch(&mut self, model: &Model, input: &ModelInput) -> Result<()> {
        let seqs: Vec<AttentionSeq> = input
            .seqs
            .iter()
            .map(|s| AttentionSeq { start: s.start, len: s.len, first_pos: s.first_pos, block_table: &input.block_tables[s.table.clone()] })
            .collect();
        let batch = ForwardBatch {
            tokens: &input.tokens,
            positions: &input.positions,
            slots: &input.slots,
            seqs: &seqs,
            logit_rows: &input.logit_rows,
        };
        let sampling = || -> Vec<SampleParams> {
            input
                .sampling
                .iter()
                .map(|(p, index)| SampleParams {
                    temperature: p.temperature,
                    top_k: p.top_k as u32,
                    top_p: p.top_p,
                    seed: p.seed,
                    index: *index as u32,
                })
                .collect()
        };
        match self {
            Runner::Cpu(r) => r.launch(model.cpu_decoder()?, &batch, model.config().vocab_size, &input.sampling),
            Runner::Cuda(r) => r.launch(&batch, &sampling()),
            Runner::CudaRanks(r) => r.launch(&batch, &sampling()),
        }
    }

    /// Waits for the oldest step launched and not finished, and hands back what it drew.
    pub fn finish(&mut self) -> Result<StepResult> {
        match self {
            Runner::Cpu(r) => r.finish(),
            Runner::Cuda(r) => r.finish(),
            Runner::CudaRanks(r) => r.finish(),
        }
    }

    /// The `[rows, vocab]` f32 logits the step finished last sampled from, one row per sampled
    /// token; only while no later step has been launched.
    pub fn last_logits(&mut self) -> Result<Vec<f32>> {
        match self {
            Runner::Cpu(r) => Ok(r.last_logits().to_vec()),
            Runner::Cuda(r) => r.last_logits(),
            Runner::CudaRanks(r) => r.last_logits(),
        }
    }

    /// Opens or closes the CUDA profiler's collection window (nothing on the CPU).
    pub fn set_profiler(&self, on: bool) -> Result<()> {
        match self {
            Runner::Cpu(_) => Ok(()),
            Runner::Cuda(r) => r.gpu().profiler(on),
            Runner::CudaRanks(r) => r.profiler(on),
        }
    }
}

/// The CUDA runner's limits from the engine's.
fn runner_config(config: &EngineConfig) -> RunnerConfig {
    RunnerConfig {
        max_tokens: config.max_num_tokens,
        max_seqs: config.max_batch_size,
        block_size: config.block_size,
        graph_sizes: config.cuda_graphs.capture_sizes(config.max_batch_size),
        graph_padding: config.cuda_graphs.enable_padding,
        batch_invariant: config.batch_invariant,
        kv_fp8: config.kv_cache_fp8,
    }
}
