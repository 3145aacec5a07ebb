//! The engine's step machinery on the CPU: the KV storage the decoder writes into (or, under
//! tensor parallelism, the rank threads that hold the shards and their stores), the forward pass
//! run to completion, sampling from its logits, and the step's expert load, kept until the
//! engine finishes the step.

use super::StepResult;
use crate::request::SamplingParams;
use crate::sampler;
use anyhow::{Context, Result};
use lumen_backend::{sampled_row, KvStorage};
use lumen_model::tensor_parallel::TensorParallel;
use lumen_model::{Decoder, ForwardBatch};
use std::collections::VecDeque;

/// Where the model runs: whole on this thread, or split over rank threads. A runner holds one,
/// so its variants' sizes cost nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Placement {
    Whole(KvStorage),
    Sharded(TensorParallel),
}

pub struct CpuRunner {
    placement: Placement,
    logits: Vec<f32>,
    /// Steps run and not yet handed to the engine, oldest first.
    finished: VecDeque<StepResult>,
    /// The tokens the step launched last drew, which the next step's marked token words name.
    last_tokens: Vec<u32>,
}

impl CpuRunner {
    /// A runner whose KV store holds `blocks` blocks, rounding as an FP8 cache does with `kv_fp8`;
    /// with `ranks` above 1 the decoder is split over that many rank threads, each with a store
    /// of `blocks` blocks of its own KV heads.
    pub fn new(decoder: &Decoder, blocks: usize, block_size: usize, kv_fp8: bool, ranks: usize) -> Result<Self> {
        let placement = if ranks > 1 {
            let tp = TensorParallel::shard(decoder, ranks).with_context(|| format!("--tp {ranks}"))?;
            tp.allocate_kv(blocks, block_size, kv_fp8)?;
            Placement::Sharded(tp)
        } else {
            let storage = decoder.new_kv_storage(blocks, block_size);
            Placement::Whole(if kv_fp8 { storage.storing_fp8() } else { storage })
        };
        Ok(CpuRunner { placement, logits: Vec::new(), finished: VecDeque::new(), last_tokens: Vec::new() })
    }

    /// Runs the step to completion: its marked token words take the tokens the step before drew,
    /// then the forward pass, then one token per logits row, drawn with that row's parameters and
    /// output index. The engine collects the result with [`CpuRunner::finish`].
    pub fn launch(&mut self, decoder: &Decoder, batch: &ForwardBatch, vocab: usize, rows: &[(SamplingParams, usize)]) -> Result<()> {
        let tokens = resolve_sampled_tokens(batch.tokens, &self.last_tokens)?;
        let batch = ForwardBatch { tokens: &tokens, ..*batch };
        let expert_load = match &mut self.placement {
            Placement::Whole(storage) => {
                let out = decoder.forward_step(&batch, storage);
                self.logits = out.logits;
                out.expert_load
            }
            // `shard` takes dense models only: no expert load.
            Placement::Sharded(tp) => {
                self.logits = tp.forward(&batch)?;
                Vec::new()
            }
        };
        let tokens: Vec<u32> =
            self.logits.chunks(vocab).zip(rows).map(|(row, (params, index))| sampler::sample(row, params, *index)).collect();
        self.last_tokens.clone_from(&tokens);
        self.finished.push_back(StepResult { tokens, expert_load, device_ms: None });
        Ok(())
    }

    /// The oldest step run and not yet handed over.
    pub fn finish(&mut self) -> Result<StepResult> {
        self.finished.pop_front().context("no step is in flight to finish")
    }

    /// The logits of the last forward pass, `[rows, vocab]`.
    pub fn last_logits(&self) -> &[f32] {
        &self.logits
    }
}

/// `tokens` with each word marked [`lumen_backend::SAMPLED_TOKEN`] replaced by the token of the row of `sampled`
/// (the step before's) it names.
fn resolve_sampled_tokens(tokens: &[u32], sampled: &[u32]) -> Result<Vec<u32>> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, &tok)| {
            let Some(row) = sampled_row(tok) else { return Ok(tok) };
            sampled.get(row).copied().with_context(|| {
                format!("row {i} takes the token sampled for row {row} of the step before, which drew {} tokens", sampled.len())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_backend::SAMPLED_TOKEN;

    #[test]
    fn marked_token_words_take_the_rows_they_name() {
        let tokens = [7, SAMPLED_TOKEN | 2, 9, SAMPLED_TOKEN];
        assert_eq!(resolve_sampled_tokens(&tokens, &[40, 41, 42]).unwrap(), vec![7, 42, 9, 40]);
        let e = resolve_sampled_tokens(&tokens, &[40]).unwrap_err().to_string();
        assert!(e.contains("row 1") && e.contains("row 2 of the step before") && e.contains("drew 1 tokens"), "{e}");
    }
}
