//! The scheduler: which sequences run this iteration, and how many tokens each.
//!
//! Running sequences go first (decode tokens and unfinished prefill chunks), then waiting ones,
//! within `max_batch_size` sequences and `max_num_tokens` tokens. With chunked prefill a prompt
//! longer than the remaining budget is split over several iterations; without it a prompt waits
//! for an iteration whose budget holds it whole.
//!
//! The policy decides what happens to KV blocks. Under guaranteed-no-evict a waiting sequence is
//! admitted only when the free blocks cover, besides the blocks the running sequences still need
//! to reach their full length (prompt + max_tokens), its own full length, so a running sequence
//! always finds its next block and nothing is ever preempted. Under max-utilization a sequence
//! takes only the blocks of this iteration's tokens; when blocks run out, the most recently
//! admitted running sequence is preempted: its blocks are freed and it goes back to the front of
//! the queue, to be recomputed from its prompt and the tokens it already produced.

use crate::config::{EngineConfig, SchedulerPolicy};
use crate::kv_cache::KvCacheManager;
use crate::request::{EventSender, RequestId, RequestTimings, SamplingParams, StopConditions};
use lumen_trace::instrument::{mark, span, Category};
use std::collections::{HashMap, HashSet, VecDeque};

/// A request inside the engine.
pub struct Sequence {
    pub id: RequestId,
    /// Prompt followed by the generated tokens. A token a launched step draws is there from the
    /// launch, as a word marked [`lumen_backend::SAMPLED_TOKEN`] naming its logits row, until the
    /// step finishes.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the cache.
    pub num_computed: usize,
    pub block_table: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: StopConditions,
    pub events: EventSender,
    pub timings: RequestTimings,
    /// Its last token, drawn by a step still in flight, is the last it may have (its max tokens,
    /// or the engine's longest sequence): it is not scheduled again.
    pub length_reached: bool,
}

impl Sequence {
    pub fn num_generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
    /// Tokens still to be fed to the model: a prefill remainder, or the last sampled token.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.num_computed
    }
    /// Prompt plus every token the request may produce: the most KV slots it can need.
    pub fn full_len(&self) -> usize {
        self.prompt_len + self.stop.max_tokens
    }
    /// Tokens to feed this iteration under `budget`, or None when the sequence must wait. A prompt
    /// without chunked prefill goes whole; a recompute longer than the whole budget is chunked
    /// anyway, or it could never run.
    fn chunk(&self, budget: usize, config: &EngineConfig) -> Option<usize> {
        let pending = self.pending();
        if config.chunked_prefill || pending > config.max_num_tokens {
            Some(pending.min(budget))
        } else {
            (pending <= budget).then_some(pending)
        }
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

/// Where a sequence sits in the scheduler's queues (see [`Scheduler::locate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Running(usize),
    Waiting(usize),
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
            if self.running[i].length_reached {
                i += 1;
                continue;
            }
            let Some(n) = self.running[i].chunk(budget, config) else { break };
            let target = self.running[i].num_computed + n;
            if !self.grow_running(i, target, config.scheduler_policy, kv, &mut out.preempted) {
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
        if !out.preempted.is_empty() {
            return out;
        }
        // Blocks the running sequences may still take; guaranteed-no-evict keeps them free.
        let mut reserved = match config.scheduler_policy {
            SchedulerPolicy::GuaranteedNoEvict => self.running.iter().map(|s| kv.blocks_needed(s.block_table.len(), s.full_len())).sum(),
            SchedulerPolicy::MaxUtilization => 0,
        };
        while out.seqs.len() < config.max_batch_size && budget > 0 {
            let Some(seq) = self.waiting.front_mut() else { break };
            let Some(n) = seq.chunk(budget, config) else { break };
            let target = seq.num_computed + n;
            let full_need = kv.blocks_needed(seq.block_table.len(), seq.full_len());
            if config.scheduler_policy == SchedulerPolicy::GuaranteedNoEvict && reserved + full_need > kv.num_free() {
                break;
            }
            if !kv.grow(&mut seq.block_table, target) {
                break;
            }
            reserved += kv.blocks_needed(seq.block_table.len(), seq.full_len());
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
        out
    }

    /// Gives running sequence `i` the blocks for `target` tokens. Under max-utilization, when
    /// blocks run out it preempts from the newest running sequence back, recording each in
    /// `preempted`; under guaranteed-no-evict it preempts nothing. Returns false when sequence `i`
    /// cannot run this iteration (it was preempted itself, or no blocks were free).
    fn grow_running(
        &mut self,
        i: usize,
        target: usize,
        policy: SchedulerPolicy,
        kv: &mut KvCacheManager,
        preempted: &mut Vec<RequestId>,
    ) -> bool {
        loop {
            if kv.grow(&mut self.running[i].block_table, target) {
                return true;
            }
            if policy == SchedulerPolicy::GuaranteedNoEvict {
                return false;
            }
            let victim_index = self.running.len() - 1;
            let mut victim = self.running.remove(victim_index);
            kv.release(&mut victim.block_table);
            victim.num_computed = 0;
            victim.timings.preemptions += 1;
            mark(Category::Debug, "preempt", || Some(format!("{{\"request\":{},\"tokens\":{}}}", victim.id, victim.tokens.len())));
            preempted.push(victim.id);
            self.waiting.push_front(victim);
            if victim_index == i {
                return false;
            }
        }
    }

    /// Where each sequence of `decision`, the latest decision, sits in `running`, in one pass:
    /// the decision lists running sequences in running order and then the ones it admitted,
    /// which it appended to `running` in the same order, and a preemption removes sequences it
    /// did not schedule, so the decision is a subsequence of `running`.
    pub fn running_indices(&self, decision: &SchedulerOutput) -> Vec<usize> {
        let mut at = 0;
        decision
            .seqs
            .iter()
            .map(|s| {
                at += self.running[at..].iter().position(|r| r.id == s.id).expect("a scheduled sequence is running, in decision order");
                at += 1;
                at - 1
            })
            .collect()
    }

    /// A function from request id to sequence, running or preempted and waiting, for many
    /// look-ups at once (one pass to build, then a hash look-up each).
    pub fn locate(&self) -> HashMap<RequestId, Place> {
        let running = self.running.iter().enumerate().map(|(i, s)| (s.id, Place::Running(i)));
        running.chain(self.waiting.iter().enumerate().map(|(i, s)| (s.id, Place::Waiting(i)))).collect()
    }

    pub fn at_mut(&mut self, place: Place) -> &mut Sequence {
        match place {
            Place::Running(i) => &mut self.running[i],
            Place::Waiting(i) => &mut self.waiting[i],
        }
    }

    /// Removes the sequences `ids` names wherever they are, in one pass over each queue.
    pub fn take(&mut self, ids: &HashSet<RequestId>) -> HashMap<RequestId, Sequence> {
        let mut taken: HashMap<RequestId, Sequence> = self.running.extract_if(.., |s| ids.contains(&s.id)).map(|s| (s.id, s)).collect();
        if taken.len() < ids.len() {
            let (gone, kept): (VecDeque<Sequence>, VecDeque<Sequence>) = self.waiting.drain(..).partition(|s| ids.contains(&s.id));
            self.waiting = kept;
            taken.extend(gone.into_iter().map(|s| (s.id, s)));
        }
        taken
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
            length_reached: false,
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

    fn max_utilization(batch: usize, tokens: usize) -> EngineConfig {
        EngineConfig { scheduler_policy: SchedulerPolicy::MaxUtilization, ..config(batch, tokens) }
    }

    #[test]
    fn max_utilization_preempts_the_newest_when_blocks_run_out() {
        let mut s = Scheduler::default();
        let mut kv = KvCacheManager::new(2, 4);
        s.waiting.push_back(seq(1, 4));
        s.waiting.push_back(seq(2, 4));
        s.schedule(&max_utilization(8, 100), &mut kv);
        assert_eq!(kv.num_free(), 0);
        for (r, t) in s.running.iter_mut().zip([7, 8]) {
            r.num_computed = 4;
            r.tokens.push(t);
        }
        let out = s.schedule(&max_utilization(8, 100), &mut kv);
        assert_eq!(out.preempted, vec![2]);
        assert_eq!(out.seqs.iter().map(|x| x.id).collect::<Vec<_>>(), vec![1]);
        let back = s.waiting.front().unwrap();
        assert_eq!((back.id, back.num_computed, back.pending(), back.timings.preemptions), (2, 0, 5, 1));
    }

    /// After a decision that skips a sequence at its length and preempts the newest, each
    /// scheduled sequence is found where it sits, the queues' look-up finds running and waiting
    /// ones, and `take` removes from both.
    #[test]
    fn scheduled_sequences_are_found_in_one_pass_and_taken_from_either_queue() {
        let mut s = Scheduler::default();
        let mut kv = KvCacheManager::new(4, 4);
        for id in 1..=3 {
            s.waiting.push_back(seq(id, 4));
        }
        s.schedule(&max_utilization(8, 100), &mut kv);
        for r in s.running.iter_mut() {
            r.num_computed = 4;
            r.tokens.push(9);
        }
        s.running[0].length_reached = true;
        s.waiting.push_back(seq(4, 3));
        let out = s.schedule(&max_utilization(8, 100), &mut kv);
        assert_eq!((out.seqs.iter().map(|x| x.id).collect::<Vec<_>>(), out.preempted.clone()), (vec![2], vec![3]));
        let ids: Vec<_> = s.running_indices(&out).iter().map(|&i| s.running[i].id).collect();
        assert_eq!(ids, vec![2]);
        let places = s.locate();
        assert_eq!(places.len(), 4);
        for (&id, &place) in &places {
            assert_eq!(s.at_mut(place).id, id);
        }
        assert_eq!((places[&1], places[&3]), (Place::Running(0), Place::Waiting(0)));
        let taken = s.take(&[1, 3].into_iter().collect());
        assert_eq!(taken.keys().copied().collect::<HashSet<_>>(), [1, 3].into_iter().collect());
        assert_eq!(s.running.iter().chain(&s.waiting).map(|r| r.id).collect::<Vec<_>>(), vec![2, 4]);
    }

    /// Two requests of 4 prompt tokens and up to 8 output tokens each need 3 blocks of 4 at their
    /// full length; 4 blocks hold one such request, not two.
    fn two_requests_of_twelve() -> Scheduler {
        let mut s = Scheduler::default();
        for id in [1, 2] {
            let mut r = seq(id, 4);
            r.stop.max_tokens = 8;
            s.waiting.push_back(r);
        }
        s
    }

    #[test]
    fn guaranteed_no_evict_admits_only_what_the_cache_can_finish() {
        let mut s = two_requests_of_twelve();
        let mut kv = KvCacheManager::new(4, 4);
        let out = s.schedule(&config(8, 100), &mut kv);
        assert_eq!(out.seqs.iter().map(|x| x.id).collect::<Vec<_>>(), vec![1], "the second request's 3 blocks are not free");
        assert_eq!((s.waiting.len(), kv.num_free()), (1, 3));
        // Max-utilization takes only this iteration's block for each.
        let mut s = two_requests_of_twelve();
        let mut kv = KvCacheManager::new(4, 4);
        let out = s.schedule(&max_utilization(8, 100), &mut kv);
        assert_eq!(out.seqs.iter().map(|x| x.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(kv.num_free(), 2);
    }

    #[test]
    fn guaranteed_no_evict_never_preempts_and_the_admitted_request_always_grows() {
        let mut s = two_requests_of_twelve();
        let mut kv = KvCacheManager::new(4, 4);
        // Decode request 1 to its full 12 tokens: every iteration schedules it, none preempts.
        for step in 0..8 {
            let out = s.schedule(&config(8, 100), &mut kv);
            assert!(out.preempted.is_empty(), "step {step}: {out:?}");
            let r = s.running.iter_mut().find(|r| r.id == 1).expect("request 1 stays running");
            assert!(out.seqs.iter().any(|x| x.id == 1), "step {step}: request 1 not scheduled");
            r.num_computed = r.tokens.len();
            r.tokens.push(9);
        }
        assert_eq!(s.running.len(), 1, "request 2 waits until request 1 finishes");
    }

    /// A sequence whose last token is still being drawn and is its last is left out, and the
    /// running sequences after it are still scheduled.
    #[test]
    fn a_sequence_at_its_length_is_not_scheduled_again() {
        let mut s = Scheduler::default();
        let mut kv = KvCacheManager::new(100, 4);
        for id in [1, 2] {
            let mut r = seq(id, 4);
            r.tokens.push(lumen_backend::SAMPLED_TOKEN);
            r.num_computed = 4;
            s.running.push(r);
        }
        s.running[0].length_reached = true;
        let out = s.schedule(&config(8, 100), &mut kv);
        assert_eq!(out.seqs.iter().map(|x| (x.id, x.first_pos, x.is_context)).collect::<Vec<_>>(), vec![(2, 4, false)]);
    }

    #[test]
    fn without_chunked_prefill_a_prompt_waits_for_a_budget_that_holds_it_whole() {
        for (chunked, expected) in [(true, vec![(1, 6), (2, 4)]), (false, vec![(1, 6)])] {
            let mut s = Scheduler::default();
            let mut kv = KvCacheManager::new(100, 4);
            s.waiting.push_back(seq(1, 6));
            s.waiting.push_back(seq(2, 6));
            let out = s.schedule(&EngineConfig { chunked_prefill: chunked, ..config(8, 10) }, &mut kv);
            assert_eq!(out.seqs.iter().map(|x| (x.id, x.num_tokens)).collect::<Vec<_>>(), expected, "chunked {chunked}");
        }
    }
}
