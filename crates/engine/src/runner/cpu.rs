//! The engine's step machinery on the CPU: the KV storage the decoder writes into (or, under
//! tensor parallelism, the rank threads that hold the shards and their stores), the forward pass
//! run to completion, sampling from its logits, and the step's expert load.

use crate::request::SamplingParams;
use crate::sampler;
use anyhow::{Context, Result};
use lumen_backend::KvStorage;
use lumen_model::tensor_parallel::TensorParallel;
use lumen_model::{Decoder, ForwardBatch};

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
    expert_load: Vec<Vec<u32>>,
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
        Ok(CpuRunner { placement, logits: Vec::new(), expert_load: Vec::new() })
    }

    pub fn forward(&mut self, decoder: &Decoder, batch: &ForwardBatch) -> Result<()> {
        match &mut self.placement {
            Placement::Whole(storage) => {
                let out = decoder.forward_step(batch, storage);
                self.logits = out.logits;
                self.expert_load = out.expert_load;
            }
            // `shard` takes dense models only: no expert load.
            Placement::Sharded(tp) => self.logits = tp.forward(batch)?,
        }
        Ok(())
    }

    /// The expert load of the last forward pass (see [`lumen_model::ForwardOutput`]), handed
    /// over once.
    pub fn take_expert_load(&mut self) -> Vec<Vec<u32>> {
        std::mem::take(&mut self.expert_load)
    }

    /// The logits of the last forward pass, `[rows, vocab]`.
    pub fn last_logits(&self) -> &[f32] {
        &self.logits
    }

    /// One token per logits row of the last forward pass, drawn with that row's parameters and
    /// output index.
    pub fn sample(&self, vocab: usize, rows: &[(SamplingParams, usize)]) -> Vec<u32> {
        self.logits.chunks(vocab).zip(rows).map(|(row, (params, index))| sampler::sample(row, params, *index)).collect()
    }
}
