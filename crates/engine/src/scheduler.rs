//! The scheduler: which sequences run this iteration, and how many tokens each.
//!
//! Running sequences go first (decode tokens and unfinished prefill chunks), then waiting ones,
//! within `max_batch_size` sequences and `max_num_tokens` tokens. A prompt longer than the
//! remaining budget is split into chunks over several iterations. When KV blocks run out, the
//! most recently admitted running sequence is preempted: its blocks are freed and it goes back to
//! the front of the queue, to be recomputed from its prompt and the tokens it already produced.

use crate::config::EngineConfig;
use crate::kv_cache::KvCacheManager;
use crate::request::{EventSender, RequestId, RequestTimings, SamplingParams, StopConditions};
use lumen_trace::instrument::{mark, span, Category};
use std::collections::VecDeque;

/// A request inside the engine.
pub struct Sequence {
    pub id: RequestId,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the cache.
    pub num_computed: usize,
    pub block_table: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: StopConditions,
    pub events: EventSender,
    pub timings: RequestTimings,
}

impl Sequence {
    pub fn num_generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
    /// Tokens still to be fed to the model: a prefill remainder, or the last sampled token.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.num_computed
    }
}

/// One sequence's share of an iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledSeq {
    pub id: RequestId,
    /// Tokens fed this iteration, starting at position `first_pos`.
    pub num_tokens: usize,
    pub first_pos: usize,
    /// True when this chunk reaches the end of the sequence, so a token is sampled.
    pub samples: bool,
    /// True when the sequence is still in its prompt (or recomputing after preemption).
    pub is_context: bool,
}

/// The scheduler's decision for one iteration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerOutput {
    pub seqs: Vec<ScheduledSeq>,
    /// Requests preempted (blocks freed, to be recomputed) during this decision.
    pub preempted: Vec<RequestId>,
}

impl SchedulerOutput {
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.num_tokens).sum()
    }
}

#[derive(Default)]
pub struct Scheduler {
    pub waiting: VecDeque<Sequence>,
    pub running: Vec<Sequence>,
}

impl Scheduler {
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn schedule(&mut self, config: &EngineConfig, kv: &mut KvCacheManager) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = config.max_num_tokens;
        let running_span = span(Category::Debug, "schedule running");
        let mut i = 0;
        while i < self.running.len() && out.seqs.len() < config.max_batch_size && budget > 0 {
            let n = self.running[i].pending().min(budget);
            let target = self.running[i].num_computed + n;
            let mut scheduled_self = true;
            loop {
                let seq = &mut self.running[i];
                if kv.grow(&mut seq.block_table, target) {
                    break;
                }
                let victim_index = self.running.len() - 1;
                let mut victim = self.running.remove(victim_index);
                kv.release(&mut victim.block_table);
                victim.num_computed = 0;
                victim.timings.preemptions += 1;
                mark(Category::Debug, "preempt", || Some(format!("{{\"request\":{},\"tokens\":{}}}", victim.id, victim.tokens.len())));
                out.preempted.push(victim.id);
                self.waiting.push_front(victim);
                if victim_index == i {
                    scheduled_self = false;
                    break;
                }
            }
            if !scheduled_self {
                break;
            }
            let seq = &self.running[i];
            out.seqs.push(ScheduledSeq {
                id: seq.id,
                num_tokens: n,
                first_pos: seq.num_computed,
                samples: target == seq.tokens.len(),
                is_context: seq.num_computed < seq.tokens.len() - 1 || seq.num_generated() == 0,
            });
            budget -= n;
            i += 1;
        }
        drop(running_span);
        let _waiting_span = span(Category::Debug, "schedule waiting");
        if out.preempted.is_empty() {
            while out.seqs.len() < config.max_batch_size && budget > 0 {
                let Some(seq) = self.waiting.front_mut() else { break };
                let n = seq.pending().min(budget);
                let target = seq.num_computed + n;
                if !kv.grow(&mut seq.block_table, target) {
                    break;
                }
                let seq = self.waiting.pop_front().expect("front exists");
                out.seqs.push(ScheduledSeq {
                    id: seq.id,
                    num_tokens: n,
                    first_pos: seq.num_computed,
                    samples: target == seq.tokens.len(),
                    is_context: true,
                });
                budget -= n;
                self.running.push(seq);
            }
        }
        out
    }

    pub fn running_mut(&mut self, id: RequestId) -> Option<&mut Sequence> {
        self.running.iter_mut().find(|s| s.id == id)
    }

    /// Removes a sequence wherever it is, returning it.
    pub fn remove(&mut self, id: RequestId) -> Option<Sequence> {
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            return Some(self.running.remove(i));
        }
        let i = self.waiting.iter().position(|s| s.id == id)?;
        self.waiting.remove(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn seq(id: u64, prompt: usize) -> Sequence {
        Sequence {
            id,
            tokens: vec![5; prompt],
            prompt_len: prompt,
            num_computed: 0,
            block_table: Vec::new(),
            sampling: SamplingParams::default(),
            stop: StopConditions::default(),
            events: channel().0,
            timings: RequestTimings::default(),
        }
    }

    fn config(batch: usize, tokens: usize) -> EngineConfig {
        EngineConfig { max_batch_size: batch, max_num_tokens: tokens, block_size: 4, ..EngineConfig::default() }
    }

    #[test]
    fn long_prompts_are_chunked_under_the_token_budget() {
        let mut s = Scheduler::default();
        let mut kv = KvCacheManager::new(100, 4);
        s.waiting.push_back(seq(1, 10));
        s.waiting.push_back(seq(2, 3));
        let out = s.schedule(&config(8, 8), &mut kv);
        assert_eq!(out.seqs.len(), 1);
        assert_eq!((out.seqs[0].num_tokens, out.seqs[0].samples), (8, false));
        s.running[0].num_computed = 8;
        let out = s.schedule(&config(8, 8), &mut kv);
        assert_eq!(out.seqs.iter().map(|x| (x.id, x.num_tokens, x.first_pos)).collect::<Vec<_>>(), vec![(1, 2, 8), (2, 3, 0)]);
        assert!(out.seqs.iter().all(|x| x.samples));
    }

    #[test]
    fn running_requests_come_first_and_batch_size_is_respected() {
        let mut s = Scheduler::default();
        let mut kv = KvCacheManager::new(100, 4);
        let mut r = seq(1, 4);
        r.tokens.push(9);
        r.num_computed = 4;
        s.running.push(r);
        s.waiting.push_back(seq(2, 4));
        s.waiting.push_back(seq(3, 4));
        let out = s.schedule(&config(2, 100), &mut kv);
        assert_eq!(out.seqs.iter().map(|x| (x.id, x.num_tokens, x.is_context)).collect::<Vec<_>>(), vec![(1, 1, false), (2, 4, true)]);
        assert_eq!(s.waiting.len(), 1);
    }

    #[test]
    fn running_out_of_blocks_preempts_the_newest() {
        let mut s = Scheduler::default();
        let mut kv = KvCacheManager::new(2, 4);
        s.waiting.push_back(seq(1, 4));
        s.waiting.push_back(seq(2, 4));
        s.schedule(&config(8, 100), &mut kv);
        assert_eq!(kv.num_free(), 0);
        for (r, t) in s.running.iter_mut().zip([7, 8]) {
            r.num_computed = 4;
            r.tokens.push(t);
        }
        let out = s.schedule(&config(8, 100), &mut kv);
        assert_eq!(out.preempted, vec![2]);
        assert_eq!(out.seqs.iter().map(|x| x.id).collect::<Vec<_>>(), vec![1]);
        let back = s.waiting.front().unwrap();
        assert_eq!((back.id, back.num_computed, back.pending(), back.timings.preemptions), (2, 0, 5, 1));
    }
}
