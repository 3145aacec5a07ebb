//! The engine's step machinery on the CPU: the KV storage the decoder writes into, the forward
//! pass run to completion, sampling from its logits, and the step's expert load.

use crate::request::SamplingParams;
use crate::sampler;
use lumen_backend::KvStorage;
use lumen_model::{Decoder, ForwardBatch};

pub struct CpuRunner {
    storage: KvStorage,
    logits: Vec<f32>,
    expert_load: Vec<Vec<u32>>,
}

impl CpuRunner {
    /// A runner whose KV store holds `blocks` blocks, rounding as an FP8 cache does with `kv_fp8`.
    pub fn new(decoder: &Decoder, blocks: usize, block_size: usize, kv_fp8: bool) -> Self {
        let storage = decoder.new_kv_storage(blocks, block_size);
        CpuRunner { storage: if kv_fp8 { storage.storing_fp8() } else { storage }, logits: Vec::new(), expert_load: Vec::new() }
    }

    pub fn forward(&mut self, decoder: &Decoder, batch: &ForwardBatch) {
        let out = decoder.forward_step(batch, &mut self.storage);
        self.logits = out.logits;
        self.expert_load = out.expert_load;
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
