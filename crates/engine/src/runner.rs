//! The model runner: turns a scheduler decision into the model's flattened batch (tokens,
//! positions, KV slots, per-sequence block tables, rows that need logits), runs it, and hands
//! back one logits row per sampling sequence.

use crate::kv_cache::KvCacheManager;
use crate::scheduler::{Scheduler, SchedulerOutput};
use lumen_backend::{AttentionSeq, KvStorage};
use lumen_model::{Decoder, ForwardBatch};

/// The inputs of one forward step, owned so the batch can borrow them.
pub struct ModelInput {
    pub tokens: Vec<u32>,
    pub positions: Vec<usize>,
    pub slots: Vec<usize>,
    /// Per scheduled sequence: start in the flat batch, length, first position, block table.
    pub seqs: Vec<(usize, usize, usize, Vec<u32>)>,
    pub logit_rows: Vec<usize>,
}

pub fn prepare(out: &SchedulerOutput, scheduler: &Scheduler, kv: &KvCacheManager) -> ModelInput {
    let mut input = ModelInput { tokens: Vec::new(), positions: Vec::new(), slots: Vec::new(), seqs: Vec::new(), logit_rows: Vec::new() };
    for s in &out.seqs {
        let seq = scheduler.running.iter().find(|r| r.id == s.id).expect("scheduled sequences are running");
        let start = input.tokens.len();
        for pos in s.first_pos..s.first_pos + s.num_tokens {
            input.tokens.push(seq.tokens[pos]);
            input.positions.push(pos);
            input.slots.push(kv.slot(&seq.block_table, pos));
        }
        input.seqs.push((start, s.num_tokens, s.first_pos, seq.block_table.clone()));
        if s.samples {
            input.logit_rows.push(start + s.num_tokens - 1);
        }
    }
    input
}

/// Runs the model; returns `[logit_rows.len(), vocab]` logits.
pub fn execute(decoder: &Decoder, input: &ModelInput, storage: &mut KvStorage) -> Vec<f32> {
    let seqs: Vec<AttentionSeq> = input
        .seqs
        .iter()
        .map(|(start, len, first_pos, table)| AttentionSeq { start: *start, len: *len, first_pos: *first_pos, block_table: table })
        .collect();
    let batch = ForwardBatch {
        tokens: &input.tokens,
        positions: &input.positions,
        slots: &input.slots,
        seqs: &seqs,
        logit_rows: &input.logit_rows,
    };
    decoder.forward(&batch, storage)
}
