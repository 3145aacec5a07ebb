//! The executor loop's iteration: admit, schedule, prepare, forward, sample, update.

use crate::config::EngineConfig;
use crate::kv_cache::KvCacheManager;
use crate::profiling::Profiler;
use crate::request::{EventSender, FinishReason, Request, RequestEvent, RequestId, RequestLimits, RequestStream, RequestTimings};
use crate::runner::{self, Runner};
use crate::sampler;
use crate::scheduler::{Scheduler, Sequence};
use crate::stats::IterationStats;
use crate::work::WorkModel;
use anyhow::Result;
use lumen_model::Model;
use lumen_trace::alloc::AllocTotals;
use lumen_trace::instrument::{counter, mark, span, span_named, Category};
use lumen_trace::model::RequestRow;
use lumen_trace::now_ns;
use lumen_trace::window::WindowEvent;
use std::sync::mpsc::channel;
use std::sync::Arc;

/// What one iteration did.
#[derive(Debug, Clone)]
pub struct StepOutput {
    pub stats: IterationStats,
    pub finished: Vec<RequestId>,
    /// Requests scheduled for the first time in this iteration.
    pub started: Vec<RequestId>,
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
        self.scheduler.has_work() || !self.incoming.is_empty()
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

    /// Ends every request with an error after a failed step.
    pub fn fail_all(&mut self, why: &str) {
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

    /// Runs one iteration of the executor loop. An error means the device failed; the engine
    /// cannot go on.
    pub fn step(&mut self) -> Result<StepOutput> {
        let iter = self.iteration;
        if let Some(p) = &mut self.profiler {
            if p.before_iteration(iter) == Some(WindowEvent::Open) {
                self.runner.set_profiler(true)?;
            }
        }
        let start = now_ns();
        let allocs_before = AllocTotals::now();
        let kv_before = (self.kv.allocated_total, self.kv.freed_total);
        let mut iteration_span = span_named(Category::Iteration, || format!("iter {iter}"));
        {
            let _s = span(Category::Phase, "admit");
            self.scheduler.waiting.extend(self.incoming.drain(..));
        }
        let decision = {
            let _s = span(Category::Phase, "schedule");
            self.scheduler.schedule(&self.config, &mut self.kv)
        };
        iteration_span.rename(|| {
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
                self.runner.forward(&self.model, &input)?;
            }
        }
        let sample_span = span(Category::Phase, "sample");
        let sampled = if input.tokens.is_empty() { Vec::new() } else { self.runner.sample(self.model.config().vocab_size, &input)? };
        let wants_logprobs = input.sampling.iter().any(|(p, _)| p.logprobs.is_some());
        let logits = if wants_logprobs { self.runner.last_logits()? } else { Vec::new() };
        let vocab = self.model.config().vocab_size;
        let mut rows = logits.chunks(vocab);
        let mut sampled = sampled.into_iter();
        let mut done: Vec<(RequestId, FinishReason)> = Vec::new();
        let mut started = Vec::new();
        let now = now_ns();
        for s in &decision.seqs {
            let seq = self.scheduler.running_mut(s.id).expect("scheduled sequences are running");
            seq.num_computed += s.num_tokens;
            if seq.timings.first_scheduled_ns.is_none() {
                seq.timings.first_scheduled_ns = Some(start);
                started.push(s.id);
            }
            if !s.samples {
                continue;
            }
            let token = sampled.next().expect("one sampled token per sampling sequence");
            let row = rows.next();
            let logprobs = seq.sampling.logprobs.zip(row).map(|(top, row)| sampler::logprobs(row, token, top));
            seq.tokens.push(token);
            if seq.timings.first_token_ns.is_none() {
                seq.timings.first_token_ns = Some(now);
                mark(Category::Api, "first token", || Some(format!("{{\"request\":{0},\"flow\":{0}}}", seq.id)));
            }
            mark(Category::Api, "stream chunk", || Some(format!("{{\"request\":{},\"token\":{token}}}", seq.id)));
            let delivered = seq.events.send(RequestEvent::Token { id: token, logprobs }).is_ok();
            let eos = !seq.stop.ignore_eos && self.eos_ids.contains(&token);
            let reason = if !delivered {
                Some(FinishReason::Aborted)
            } else if eos || seq.stop.stop_ids.contains(&token) {
                Some(FinishReason::Stop)
            } else if seq.num_generated() >= seq.stop.max_tokens || seq.tokens.len() >= self.max_seq_len {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = reason {
                done.push((s.id, reason));
            }
        }
        drop(sample_span);
        let update_span = span(Category::Phase, "update");
        let finished: Vec<RequestId> = done.iter().map(|(id, _)| *id).collect();
        for (id, reason) in done {
            let seq = self.scheduler.remove(id).expect("finished sequences are running");
            self.finish(seq, reason);
        }
        drop(update_span);
        counter("kv_used_blocks", || self.kv.num_used() as f64);
        counter("batch_tokens", || input.tokens.len() as f64);
        drop(iteration_span);

        let end = now_ns();
        let allocs = AllocTotals::now().since(allocs_before);
        let expert_load = self.runner.take_expert_load()?;
        let work = self.work.iteration(&decision.seqs, &expert_load);
        let ctx: Vec<_> = decision.seqs.iter().filter(|s| s.is_context).collect();
        let gen: Vec<_> = decision.seqs.iter().filter(|s| !s.is_context).collect();
        let mut stats = IterationStats {
            iter: self.iteration,
            start_ns: start,
            end_ns: end,
            iter_latency_ms: (end - start) as f64 / 1e6,
            host_step_ms: (end - start) as f64 / 1e6,
            device_step_ms: if input.tokens.is_empty() { None } else { self.runner.device_ms() },
            num_queued_requests: self.scheduler.waiting.len(),
            num_active_requests: self.scheduler.running.len(),
            num_completed_requests: finished.len(),
            num_preempted_requests: decision.preempted.len(),
            num_ctx_requests: ctx.len(),
            num_ctx_tokens: ctx.iter().map(|s| s.num_tokens).sum(),
            num_gen_requests: gen.len(),
            num_gen_tokens: gen.iter().map(|s| s.num_tokens).sum(),
            max_num_blocks: self.kv.num_blocks(),
            used_num_blocks: self.kv.num_used(),
            free_num_blocks: self.kv.num_free(),
            tokens_per_block: self.kv.block_size(),
            kv_blocks_allocated: self.kv.allocated_total - kv_before.0,
            kv_blocks_freed: self.kv.freed_total - kv_before.1,
            host_allocations: allocs.allocations,
            host_frees: allocs.frees,
            host_alloc_bytes: allocs.bytes,
            weight_bytes: work.weight_bytes,
            kv_bytes_read: work.kv_bytes_read,
            flops: work.flops,
            fp8_flops: work.fp8_flops,
            attention_flops: work.attention_flops,
            expert_load,
            expert_max_over_mean: Vec::new(),
        };
        stats.expert_balance();
        if let Some(p) = &mut self.profiler {
            match p.after_iteration(iter, &stats) {
                Ok(Some(WindowEvent::Close)) => self.runner.set_profiler(false)?,
                Ok(_) => {}
                Err(e) => {
                    self.profiler = None;
                    self.profile_error = Some(e);
                }
            }
        }
        self.iteration += 1;
        Ok(StepOutput { stats, finished, started })
    }
}
