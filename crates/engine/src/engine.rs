//! The executor loop's iteration: admit, schedule, prepare, launch; then, when the step has
//! run, sample and update.
//!
//! Without the overlap scheduler a call of [`Engine::step`] launches a step and finishes it. With
//! it (`EngineConfig::overlap_scheduler`), a call launches step k and then finishes step k − 1,
//! so the host schedules and prepares step k while the device runs step k − 1. Step k's
//! sequences then feed tokens the host has not read yet: each sequence's token list holds, from
//! the launch that draws it, a word marked [`SAMPLED_TOKEN`] naming its logits row, which the
//! runner resolves on the device; the word is replaced when its step finishes. A request that
//! stops on a token (EOS, a stop id) is seen to stop one step late, and the step it ran in vain
//! is discarded; one that reaches its length is not scheduled again. A step whose requests want
//! logprobs finishes before the next launch, which would overwrite its logits.

use crate::config::EngineConfig;
use crate::kv_cache::KvCacheManager;
use crate::profiling::Profiler;
use crate::request::{EventSender, FinishReason, Request, RequestEvent, RequestId, RequestLimits, RequestStream, RequestTimings};
use crate::runner::{self, Runner};
use crate::sampler;
use crate::scheduler::{Scheduler, SchedulerOutput, Sequence};
use crate::stats::IterationStats;
use crate::work::WorkModel;
use anyhow::Result;
use lumen_backend::{sampled_row, SAMPLED_TOKEN};
use lumen_model::Model;
use lumen_trace::alloc::AllocTotals;
use lumen_trace::instrument::{counter, mark, span, span_named, Category, Span};
use lumen_trace::model::RequestRow;
use lumen_trace::now_ns;
use lumen_trace::window::WindowEvent;
use std::collections::VecDeque;
use std::sync::mpsc::channel;
use std::sync::Arc;

/// What one call of [`Engine::step`] did.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The iteration this call finished: the one it launched, or with the overlap scheduler the
    /// one launched before (`None` when the call only launched).
    pub stats: Option<IterationStats>,
    /// Requests that ended in the iteration finished.
    pub finished: Vec<RequestId>,
    /// Requests scheduled for the first time in the iteration launched.
    pub started: Vec<RequestId>,
}

/// Host time, allocations and KV blocks handed out and returned over one part of a step's host
/// work (its launch, or its finish).
#[derive(Debug, Clone, Copy, Default)]
struct HostWork {
    ns: u64,
    allocs: AllocTotals,
    kv_allocated: u64,
    kv_freed: u64,
}

impl HostWork {
    fn plus(self, other: HostWork) -> HostWork {
        HostWork {
            ns: self.ns + other.ns,
            allocs: self.allocs.plus(other.allocs),
            kv_allocated: self.kv_allocated + other.kv_allocated,
            kv_freed: self.kv_freed + other.kv_freed,
        }
    }
}

/// The counters [`HostWork`] is measured from.
struct HostMark {
    ns: u64,
    allocs: AllocTotals,
    kv: (u64, u64),
}

impl HostMark {
    fn now(kv: &KvCacheManager) -> Self {
        HostMark { ns: now_ns(), allocs: AllocTotals::now(), kv: (kv.allocated_total, kv.freed_total) }
    }

    fn work(&self, kv: &KvCacheManager) -> HostWork {
        HostWork {
            ns: now_ns() - self.ns,
            allocs: AllocTotals::now().since(self.allocs),
            kv_allocated: kv.allocated_total - self.kv.0,
            kv_freed: kv.freed_total - self.kv.1,
        }
    }
}

/// A step launched and not yet finished.
struct InFlight {
    iter: u64,
    decision: SchedulerOutput,
    /// Per logits row: its request, and where in that request's tokens the row's token goes.
    rows: Vec<(RequestId, usize)>,
    /// A row wants logprobs: the step's logits are read when it finishes.
    wants_logits: bool,
    /// Tokens it ran (0: it scheduled nothing and nothing ran).
    num_tokens: usize,
    /// When the call that launched it began, and ended if it has: the iteration's window, as an
    /// executor loop's pass (the overlap scheduler finishes it in the next call).
    start_ns: u64,
    call_end_ns: Option<u64>,
    launch: HostWork,
}

pub struct Engine {
    pub model: Arc<Model>,
    pub config: EngineConfig,
    runner: Runner,
    kv: KvCacheManager,
    scheduler: Scheduler,
    next_id: RequestId,
    iteration: u64,
    eos_ids: Vec<u32>,
    /// Longest sequence (prompt + output) the engine accepts.
    max_seq_len: usize,
    /// Requests submitted since the last iteration, admitted at the start of the next one.
    incoming: Vec<Sequence>,
    profiler: Option<Profiler>,
    profile_error: Option<anyhow::Error>,
    /// Counts what each iteration reads and computes.
    work: WorkModel,
    /// Steps launched and not finished, oldest first: none between two calls of `step` without the
    /// overlap scheduler, at most one with it.
    in_flight: VecDeque<InFlight>,
    /// Whether the overlap scheduler runs (asked for, and the runner takes it).
    overlap: bool,
}

impl Engine {
    pub fn new(model: Arc<Model>, config: EngineConfig) -> Result<Self> {
        config.validate()?;
        let (runner, num_blocks) = Runner::new(&model, &config)?;
        let c = model.config();
        let kv = KvCacheManager::new(num_blocks, config.block_size);
        let mut eos_ids = c.eos_token_ids.clone();
        if let Some(e) = model.tokenizer.as_ref().and_then(|t| t.eos_id()) {
            if !eos_ids.contains(&e) {
                eos_ids.push(e);
            }
        }
        let max_seq_len = c.max_position_embeddings.min(num_blocks * config.block_size);
        let work = WorkModel::for_model(&model);
        // The CPU keeps an FP8 cache's values in f32; only the CUDA cache is one byte per element.
        let work = if config.kv_cache_fp8 && model.cuda_weights().is_some() { work.with_fp8_kv_cache() } else { work };
        let overlap = config.overlap_scheduler && runner.overlaps();
        if config.overlap_scheduler && !overlap {
            lumen_trace::status!(
                "[lumen] warning: the overlap scheduler is off over {} tensor-parallel GPUs: each rank would need the tokens rank 0 draws",
                config.tensor_parallel_size
            );
        }
        Ok(Engine {
            model,
            config,
            runner,
            kv,
            scheduler: Scheduler::default(),
            next_id: 0,
            iteration: 0,
            eos_ids,
            max_seq_len,
            incoming: Vec::new(),
            profiler: None,
            profile_error: None,
            work,
            in_flight: VecDeque::new(),
            overlap,
        })
    }

    pub fn kv_blocks(&self) -> usize {
        self.kv.num_blocks()
    }

    /// KV blocks on the free list.
    pub fn kv_free_blocks(&self) -> usize {
        self.kv.num_free()
    }

    /// Checks the KV block accounting: the free list and the block tables of every request
    /// (submitted, waiting or running) hold each block exactly once. Returns the blocks the
    /// requests hold, or what is wrong.
    pub fn audit_kv_blocks(&self) -> Result<usize, String> {
        let tables = self.incoming.iter().chain(&self.scheduler.waiting).chain(&self.scheduler.running);
        self.kv.audit(tables.map(|s| s.block_table.as_slice()))
    }

    /// What a request must satisfy to run on this engine.
    pub fn limits(&self) -> RequestLimits {
        RequestLimits {
            vocab_size: self.model.config().vocab_size,
            max_seq_len: self.max_seq_len,
            max_num_tokens: self.config.max_num_tokens,
            chunked_prefill: self.config.chunked_prefill,
        }
    }

    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn has_work(&self) -> bool {
        self.scheduler.has_work() || !self.incoming.is_empty() || !self.in_flight.is_empty()
    }

    /// Whether steps launch before the one before has finished (the overlap scheduler).
    pub fn overlaps(&self) -> bool {
        self.overlap
    }

    /// Records the iterations the profiler's windows name, counted from the next one, and writes
    /// the engine's limits and the model's size into the trace's meta (a failure to write them
    /// stops profiling, as a failed flush does).
    pub fn enable_profiling(&mut self, mut profiler: Profiler) {
        match self.limits_meta().iter().try_for_each(|(key, value)| profiler.set_meta(key, value)) {
            Ok(()) => self.profiler = Some(profiler),
            Err(e) => self.profile_error = Some(e),
        }
    }

    /// What bounds an iteration, as trace meta: the batch limits, the KV cache's size, and what one
    /// forward pass reads.
    pub fn limits_meta(&self) -> Vec<(&'static str, String)> {
        let mut meta = vec![
            ("max_batch_size", self.config.max_batch_size.to_string()),
            ("max_num_tokens", self.config.max_num_tokens.to_string()),
            ("kv_block_size", self.kv.block_size().to_string()),
            ("kv_total_blocks", self.kv.num_blocks().to_string()),
            ("kv_bytes_per_token", self.work.kv_bytes_per_token().to_string()),
            ("weight_bytes", self.work.pass_weight_bytes().to_string()),
            ("weight_dtype", self.work.layer_dtype().name().to_string()),
            ("kv_cache_dtype", self.work.kv_dtype().name().to_string()),
            ("tensor_parallel_size", self.config.tensor_parallel_size.to_string()),
            ("overlap_scheduler", if self.overlap { "on" } else { "off" }.to_string()),
            ("model_params", self.work.model_params().to_string()),
        ];
        if self.model.config().moe.is_some() {
            // Balanced logits replace the router's: the outputs are not the model's.
            meta.push(("perfect_router", if self.model.perfect_router() { "on" } else { "off" }.to_string()));
        }
        meta
    }

    /// Restarts iteration numbering at 0, so profiling windows and logs skip warm-up.
    pub fn reset_iterations(&mut self) {
        self.iteration = 0;
    }

    /// Ends profiling: writes the remaining rows (the requests that ended inside a window among
    /// them), closes the trace, and returns its path and the number of iterations
    /// recorded (`None` when nothing was recorded).
    pub fn finish_profiling(&mut self) -> Result<Option<(std::path::PathBuf, u64)>> {
        if let Some(e) = self.profile_error.take() {
            return Err(e.context("profiling stopped"));
        }
        match self.profiler.take() {
            Some(p) => p.finish(),
            None => Ok(None),
        }
    }

    /// Queues a request; its tokens arrive on the returned stream.
    pub fn submit(&mut self, request: Request) -> RequestStream {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = channel();
        self.add_request(id, request, tx);
        RequestStream { id, events: rx }
    }

    /// Queues a request under a caller-chosen id (the handle assigns ids across threads); false
    /// when it was rejected at once.
    pub(crate) fn add_request(&mut self, id: RequestId, request: Request, events: EventSender) -> bool {
        let timings = RequestTimings { arrival_ns: now_ns(), ..Default::default() };
        let problem = self.limits().problem(&request);
        if let Some(why) = problem {
            let end = RequestTimings { end_ns: now_ns(), ..timings };
            let _ = events.send(RequestEvent::Finished {
                reason: FinishReason::Rejected(why),
                prompt_tokens: request.prompt.len(),
                output_tokens: 0,
                timings: end,
            });
            return false;
        }
        let prompt_len = request.prompt.len();
        mark(Category::Api, "enqueue", || Some(format!("{{\"request\":{id},\"flow\":{id},\"prompt_tokens\":{prompt_len}}}")));
        self.incoming.push(Sequence {
            id,
            tokens: request.prompt,
            prompt_len,
            num_computed: 0,
            block_table: Vec::new(),
            sampling: request.sampling,
            stop: request.stop,
            events,
            timings,
            length_reached: false,
        });
        true
    }

    /// Stops a request wherever it is, freeing its blocks at once; its stream gets
    /// `Finished { reason: Aborted }`. False when no such request is in the engine.
    pub fn abort(&mut self, id: RequestId) -> bool {
        let queued = self.incoming.iter().position(|s| s.id == id).map(|i| self.incoming.remove(i));
        match queued.or_else(|| self.scheduler.remove(id)) {
            Some(seq) => {
                self.finish(seq, FinishReason::Aborted);
                true
            }
            None => false,
        }
    }

    /// Requests admitted to the batch (scheduled at least once and not preempted since).
    pub fn num_running(&self) -> usize {
        self.scheduler.running.len()
    }

    /// Requests submitted or preempted and waiting to be scheduled.
    pub fn num_waiting(&self) -> usize {
        self.scheduler.waiting.len() + self.incoming.len()
    }

    /// KV blocks held by requests.
    pub fn kv_used_blocks(&self) -> usize {
        self.kv.num_used()
    }

    /// The number the next iteration will carry (profiling windows count these).
    pub fn next_iteration(&self) -> u64 {
        self.iteration
    }

    /// Whether a profiler is attached (its windows pending, open, or closed but not finished).
    pub fn is_profiling(&self) -> bool {
        self.profiler.is_some()
    }

    /// Whether the attached profiler's windows have all closed, so it can be finished.
    pub fn profile_windows_over(&self) -> bool {
        self.profiler.as_ref().is_some_and(|p| p.windows_over(self.iteration))
    }

    /// Closes an open profiling window here, at an iteration boundary (stopping the CUDA
    /// profiler), and finishes the trace, as [`Engine::finish_profiling`] does.
    pub fn stop_profiling(&mut self) -> Result<Option<(std::path::PathBuf, u64)>> {
        if self.profiler.as_ref().is_some_and(Profiler::is_window_open) {
            self.runner.set_profiler(false)?;
        }
        self.finish_profiling()
    }

    /// Ends every request with an error after a failed step; steps still in flight are dropped.
    pub fn fail_all(&mut self, why: &str) {
        self.in_flight.clear();
        self.end_all(FinishReason::Rejected(format!("engine failed: {why}")));
    }

    /// Ends every request with `reason`, freeing all their blocks.
    pub fn end_all(&mut self, reason: FinishReason) {
        let mut all: Vec<Sequence> = self.incoming.drain(..).collect();
        all.extend(self.scheduler.waiting.drain(..));
        all.append(&mut self.scheduler.running);
        for seq in all {
            self.finish(seq, reason.clone());
        }
    }

    fn finish(&mut self, mut seq: Sequence, reason: FinishReason) {
        // Tokens of steps still in flight are not the request's.
        if let Some(drawn) = seq.tokens.iter().position(|&t| sampled_row(t).is_some()) {
            seq.tokens.truncate(drawn);
        }
        mark(Category::Api, "finish", || {
            Some(format!("{{\"request\":{0},\"flow\":{0},\"output_tokens\":{1}}}", seq.id, seq.num_generated()))
        });
        self.kv.release(&mut seq.block_table);
        seq.timings.end_ns = now_ns();
        if let Some(p) = &mut self.profiler {
            p.record_request(RequestRow {
                id: seq.id,
                arrival_ns: seq.timings.arrival_ns,
                first_token_ns: seq.timings.first_token_ns,
                end_ns: seq.timings.end_ns,
                input_len: seq.prompt_len as u64,
                output_len: seq.num_generated() as u64,
            });
        }
        let _ = seq.events.send(RequestEvent::Finished {
            reason,
            prompt_tokens: seq.prompt_len,
            output_tokens: seq.num_generated(),
            timings: seq.timings,
        });
    }

    /// Runs one call of the executor loop: launches the next step, and finishes it or, with the
    /// overlap scheduler, the one launched before it. An error means the device failed; the
    /// engine cannot go on.
    pub fn step(&mut self) -> Result<StepOutput> {
        // The window opens (and its recording starts) before the call's first span.
        if let Some(p) = &mut self.profiler {
            if p.before_iteration(self.iteration) == Some(WindowEvent::Open) {
                self.runner.set_profiler(true)?;
            }
        }
        let mut finished = Vec::new();
        let mut call_span = span_named(Category::Iteration, || format!("iter {}", self.iteration));
        // A step whose logits are read finishes before another launch overwrites them.
        let mut stats = match self.in_flight.front() {
            Some(s) if s.wants_logits => Some(self.finish_oldest(&mut finished)?),
            _ => None,
        };
        let (launched, started) = self.launch_next(&mut call_span)?;
        let keep = usize::from(self.overlap && launched);
        if stats.is_none() && self.in_flight.len() > keep {
            stats = Some(self.finish_oldest(&mut finished)?);
        }
        let end = now_ns();
        for step in self.in_flight.iter_mut().filter(|s| s.call_end_ns.is_none()) {
            step.call_end_ns = Some(end);
        }
        drop(call_span);
        if let Some(s) = &stats {
            self.after_iteration(s)?;
        }
        Ok(StepOutput { stats, finished, started })
    }

    /// Hands a finished iteration to the profiler, which records it and may close its window.
    fn after_iteration(&mut self, stats: &IterationStats) -> Result<()> {
        if let Some(p) = &mut self.profiler {
            match p.after_iteration(stats.iter, stats) {
                Ok(Some(WindowEvent::Close)) => self.runner.set_profiler(false)?,
                Ok(_) => {}
                Err(e) => {
                    self.profiler = None;
                    self.profile_error = Some(e);
                }
            }
        }
        Ok(())
    }

    /// Admits, schedules and launches the next step, naming `call_span` after it. Returns whether
    /// it ran tokens, and the requests it scheduled for the first time. An iteration that
    /// schedules nothing is counted (and finished at once) only when no step is in flight; else
    /// the call only finishes that step, and its span says so.
    fn launch_next(&mut self, call_span: &mut Span) -> Result<(bool, Vec<RequestId>)> {
        let iter = self.iteration;
        let mark_start = HostMark::now(&self.kv);
        {
            let _s = span(Category::Phase, "admit");
            self.scheduler.waiting.extend(self.incoming.drain(..));
        }
        let decision = {
            let _s = span(Category::Phase, "schedule");
            self.scheduler.schedule(&self.config, &mut self.kv)
        };
        if decision.seqs.is_empty() && decision.preempted.is_empty() && !self.in_flight.is_empty() {
            let oldest = self.in_flight.front().map_or(iter, |s| s.iter);
            call_span.rename(|| format!("finish iter {oldest}"));
            return Ok((false, Vec::new()));
        }
        call_span.rename(|| {
            let ctx = decision.seqs.iter().filter(|s| s.is_context).count();
            format!("iter {iter}: {ctx} ctx reqs, {} gen reqs", decision.seqs.len() - ctx)
        });
        let input = {
            let _s = span(Category::Phase, "prepare inputs");
            runner::prepare(&decision, &self.scheduler, &self.kv)
        };
        {
            let _s = span(Category::Phase, "forward");
            if !input.tokens.is_empty() {
                self.runner.launch(&self.model, &input)?;
            }
        }
        // Each sampling sequence's next token is the one this step draws for its row.
        let mut rows = Vec::new();
        let mut started = Vec::new();
        for (s, i) in decision.seqs.iter().zip(self.scheduler.running_indices(&decision)) {
            let seq = &mut self.scheduler.running[i];
            seq.num_computed += s.num_tokens;
            if seq.timings.first_scheduled_ns.is_none() {
                seq.timings.first_scheduled_ns = Some(mark_start.ns);
                started.push(s.id);
            }
            if s.samples {
                rows.push((s.id, seq.tokens.len()));
                seq.tokens.push(SAMPLED_TOKEN | (rows.len() - 1) as u32);
                seq.length_reached = seq.num_generated() >= seq.stop.max_tokens || seq.tokens.len() >= self.max_seq_len;
            }
        }
        self.iteration += 1;
        let ran = !input.tokens.is_empty();
        self.in_flight.push_back(InFlight {
            iter,
            wants_logits: input.sampling.iter().any(|(p, _)| p.logprobs.is_some()),
            num_tokens: input.tokens.len(),
            decision,
            rows,
            start_ns: mark_start.ns,
            call_end_ns: None,
            launch: mark_start.work(&self.kv),
        });
        Ok((ran, started))
    }

    /// Finishes the oldest step in flight: reads its tokens, hands them to their requests, ends
    /// the requests that stop, and returns the iteration's statistics.
    fn finish_oldest(&mut self, finished: &mut Vec<RequestId>) -> Result<IterationStats> {
        let step = self.in_flight.pop_front().expect("a step is in flight");
        let mark_start = HostMark::now(&self.kv);
        let sample_span = span(Category::Phase, "sample");
        let result = if step.num_tokens > 0 { self.runner.finish()? } else { Default::default() };
        let logits = if step.wants_logits { self.runner.last_logits()? } else { Vec::new() };
        let vocab = self.model.config().vocab_size;
        let mut done: Vec<(RequestId, FinishReason)> = Vec::new();
        let now = now_ns();
        let places = self.scheduler.locate();
        for (row, (&(id, at), &token)) in step.rows.iter().zip(&result.tokens).enumerate() {
            // A request that ended after the launch (a stop seen a step late, an abort) drops
            // what it drew.
            let Some(&place) = places.get(&id) else { continue };
            let seq = self.scheduler.at_mut(place);
            seq.tokens[at] = token;
            let logprobs = seq.sampling.logprobs.zip(logits.chunks(vocab).nth(row)).map(|(top, row)| sampler::logprobs(row, token, top));
            if seq.timings.first_token_ns.is_none() {
                seq.timings.first_token_ns = Some(now);
                mark(Category::Api, "first token", || Some(format!("{{\"request\":{0},\"flow\":{0}}}", seq.id)));
            }
            mark(Category::Api, "stream chunk", || Some(format!("{{\"request\":{},\"token\":{token}}}", seq.id)));
            let delivered = seq.events.send(RequestEvent::Token { id: token, logprobs }).is_ok();
            let eos = !seq.stop.ignore_eos && self.eos_ids.contains(&token);
            let generated = at + 1 - seq.prompt_len;
            let reason = if !delivered {
                Some(FinishReason::Aborted)
            } else if eos || seq.stop.stop_ids.contains(&token) {
                Some(FinishReason::Stop)
            } else if generated >= seq.stop.max_tokens || at + 1 >= self.max_seq_len {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = reason {
                done.push((id, reason));
            }
        }
        drop(sample_span);
        let update_span = span(Category::Phase, "update");
        let first_finished = finished.len();
        let mut ending = self.scheduler.take(&done.iter().map(|(id, _)| *id).collect());
        for (id, reason) in done {
            let seq = ending.remove(&id).expect("a request that stops is in the scheduler");
            self.finish(seq, reason);
            finished.push(id);
        }
        drop(update_span);
        counter("kv_used_blocks", || self.kv.num_used() as f64);
        counter("batch_tokens", || step.num_tokens as f64);

        let finished_ns = now_ns();
        let host = step.launch.plus(mark_start.work(&self.kv));
        let work = self.work.iteration(&step.decision.seqs, &result.expert_load);
        let ctx: Vec<_> = step.decision.seqs.iter().filter(|s| s.is_context).collect();
        let gen: Vec<_> = step.decision.seqs.iter().filter(|s| !s.is_context).collect();
        let mut stats = IterationStats {
            iter: step.iter,
            start_ns: step.start_ns,
            end_ns: step.call_end_ns.unwrap_or(finished_ns),
            iter_latency_ms: (finished_ns - step.start_ns) as f64 / 1e6,
            host_step_ms: host.ns as f64 / 1e6,
            device_step_ms: result.device_ms,
            num_queued_requests: self.scheduler.waiting.len(),
            num_active_requests: self.scheduler.running.len(),
            num_completed_requests: finished.len() - first_finished,
            num_preempted_requests: step.decision.preempted.len(),
            num_ctx_requests: ctx.len(),
            num_ctx_tokens: ctx.iter().map(|s| s.num_tokens).sum(),
            num_gen_requests: gen.len(),
            num_gen_tokens: gen.iter().map(|s| s.num_tokens).sum(),
            max_num_blocks: self.kv.num_blocks(),
            used_num_blocks: self.kv.num_used(),
            free_num_blocks: self.kv.num_free(),
            tokens_per_block: self.kv.block_size(),
            kv_blocks_allocated: host.kv_allocated,
            kv_blocks_freed: host.kv_freed,
            host_allocations: host.allocs.allocations,
            host_frees: host.allocs.frees,
            host_alloc_bytes: host.allocs.bytes,
            weight_bytes: work.weight_bytes,
            kv_bytes_read: work.kv_bytes_read,
            flops: work.flops,
            fp8_flops: work.fp8_flops,
            attention_flops: work.attention_flops,
            expert_load: result.expert_load,
            expert_max_over_mean: Vec::new(),
        };
        stats.expert_balance();
        Ok(stats)
    }
}
