//! The engine's step machinery on the CPU: the KV storage the decoder writes into, the forward
//! pass run to completion, and sampling from its logits.

use crate::request::SamplingParams;
use crate::sampler;
use lumen_backend::KvStorage;
use lumen_model::{Decoder, ForwardBatch};

pub struct CpuRunner {
    storage: KvStorage,
    logits: Vec<f32>,
}

impl CpuRunner {
    /// A runner whose KV store holds `blocks` blocks, rounding as an FP8 cache does with `kv_fp8`.
    pub fn new(decoder: &Decoder, blocks: usize, block_size: usize, kv_fp8: bool) -> Self {
        let storage = decoder.new_kv_storage(blocks, block_size);
        CpuRunner { storage: if kv_fp8 { storage.storing_fp8() } else { storage }, logits: Vec::new() }
    }

    pub fn forward(&mut self, decoder: &Decoder, batch: &ForwardBatch) {
        self.logits = decoder.forward(batch, &mut self.storage);
    }

    /// One token per logits row of the last forward pass, drawn with that row's parameters and
    /// output index.
    pub fn sample(&self, vocab: usize, rows: &[(SamplingParams, usize)]) -> Vec<u32> {
        self.logits.chunks(vocab).zip(rows).map(|(row, (params, index))| sampler::sample(row, params, *index)).collect()
    }
}
