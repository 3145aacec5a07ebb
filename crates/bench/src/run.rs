//! The offline benchmark driver behind `bench throughput` and `bench latency`: it feeds dataset
//! requests to the engine under a concurrency limit, steps the executor loop itself, and collects
//! every iteration's statistics and each request's timings as its caller sees them: the clock is
//! read just before the request is submitted, when a streamed chunk is taken off its stream, and
//! when its final response is. The engine's own timestamps travel with each record (and into the
//! trace), so the report can state what delivery to the caller adds.

use crate::dataset::DatasetEntry;
use crate::progress::Progress;
use crate::report::{EngineTimes, RequestRecord};
use crate::sampling::pick_with_replacement;
use anyhow::{bail, Context, Result};
use lumen_engine::interrupt::{self, Interrupted};
use lumen_engine::{Engine, FinishReason, IterationStats, Profiler, Request, RequestEvent, RequestStream, SamplingParams, StopConditions};
use lumen_trace::now_ns;
use std::io::Write;
use std::path::PathBuf;

pub struct RunOptions {
    /// Requests drawn at random (with replacement, from `warmup_seed`) from the dataset and run,
    /// not streamed, before measuring; left out of the report.
    pub warmup: usize,
    pub warmup_seed: u64,
    /// Take tokens off each stream as they come and time the first chunk.
    pub streaming: bool,
    /// Most requests in flight; `None` submits everything at once.
    pub concurrency: Option<usize>,
    /// `None` ignores EOS so every request yields exactly its `output_tokens`; `Some(id)` stops at `id`.
    pub eos_id: Option<u32>,
}

pub struct RunResult {
    pub records: Vec<RequestRecord>,
    pub iterations: Vec<IterationStats>,
    /// The trace written and the iterations it holds, when profiling was on.
    pub trace: Option<(PathBuf, u64)>,
}

fn request_for(entry: &DatasetEntry, eos_id: Option<u32>) -> Request {
    Request {
        prompt: entry.input_ids.clone(),
        sampling: SamplingParams::default(),
        stop: StopConditions { max_tokens: entry.output_tokens as usize, stop_ids: eos_id.into_iter().collect(), ignore_eos: true },
    }
}

/// Runs `entries` through the engine; when `iteration_log` is given, each iteration's statistics
/// are written to it as one JSON object per line as they happen. Warm-up runs first; iteration
/// numbers, and so profiling windows, count from the first measured iteration.
pub fn run_benchmark(
    engine: &mut Engine,
    entries: &[DatasetEntry],
    options: &RunOptions,
    iteration_log: Option<&mut dyn Write>,
    profiler: Option<Profiler>,
) -> Result<RunResult> {
    let limit = engine.max_seq_len();
    if let Some((i, e)) = entries.iter().enumerate().find(|(_, e)| e.input_ids.len() + e.output_tokens as usize > limit) {
        bail!(
            "dataset request {i} (task_id {}) needs {} tokens ({} in + {} out) but the engine holds at most {limit} per sequence (model context or KV cache); nothing was run",
            e.task_id,
            e.input_ids.len() + e.output_tokens as usize,
            e.input_ids.len(),
            e.output_tokens
        );
    }
    if options.warmup > 0 {
        let warm: Vec<DatasetEntry> =
            pick_with_replacement(entries.len(), options.warmup, options.warmup_seed).into_iter().map(|i| entries[i].clone()).collect();
        if let Err(e) = drive(engine, &warm, options, false, None, "warm-up") {
            if let (true, Some(p)) = (e.is::<Interrupted>(), profiler) {
                // Stopped before any recorded iteration: the trace is written, empty and whole.
                engine.enable_profiling(p);
                engine.finish_profiling()?;
            }
            return Err(e);
        }
    }
    engine.reset_iterations();
    if let Some(p) = profiler {
        engine.enable_profiling(p);
    }
    let (records, iterations) = match drive(engine, entries, options, options.streaming, iteration_log, "requests") {
        Ok(driven) => driven,
        Err(e) if e.is::<Interrupted>() => {
            // The iterations that ran and the requests that ended in them are the trace's.
            if let Some((path, iterations)) = engine.finish_profiling()? {
                lumen_trace::status!("[lumen] trace {}: {iterations} iterations recorded before the signal", path.display());
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let trace = engine.finish_profiling()?;
    Ok(RunResult { records, iterations, trace })
}

/// A submitted request as its caller tracks it.
struct InFlight {
    index: usize,
    stream: RequestStream,
    start_ns: u64,
    first_chunk_ns: Option<u64>,
    produced: u32,
}

fn drive(
    engine: &mut Engine,
    entries: &[DatasetEntry],
    options: &RunOptions,
    streaming: bool,
    mut log: Option<&mut dyn Write>,
    label: &str,
) -> Result<(Vec<RequestRecord>, Vec<IterationStats>)> {
    let limit = options.concurrency.unwrap_or(usize::MAX).max(1);
    let mut progress = Progress::new(entries.len() as u64, label);
    let mut in_flight: Vec<InFlight> = Vec::new();
    let mut records: Vec<Option<RequestRecord>> = vec![None; entries.len()];
    let mut iterations = Vec::new();
    let mut next = 0;
    let mut done = 0;
    // With the overlap scheduler a step may still be in flight once every request has ended.
    while done < entries.len() || engine.has_work() {
        interrupt::check()?;
        while in_flight.len() < limit && next < entries.len() {
            let start_ns = now_ns();
            let stream = engine.submit(request_for(&entries[next], options.eos_id));
            in_flight.push(InFlight { index: next, stream, start_ns, first_chunk_ns: None, produced: 0 });
            next += 1;
        }
        if let Some(stats) = engine.step()?.stats {
            if let Some(w) = log.as_mut() {
                serde_json::to_writer(&mut *w, &stats).context("cannot write the iteration log")?;
                writeln!(w).context("cannot write the iteration log")?;
            }
            iterations.push(stats);
        }
        let mut still = Vec::with_capacity(in_flight.len());
        for mut request in in_flight.drain(..) {
            let mut finished = None;
            while let Ok(ev) = request.stream.events.try_recv() {
                match ev {
                    RequestEvent::Token { .. } => {
                        request.produced += 1;
                        if streaming && request.first_chunk_ns.is_none() {
                            request.first_chunk_ns = Some(now_ns());
                        }
                    }
                    RequestEvent::Finished { reason, timings, .. } => finished = Some((reason, timings, now_ns())),
                }
            }
            let index = request.index;
            match finished {
                None => still.push(request),
                Some((FinishReason::Rejected(why), _, _)) => {
                    bail!("dataset request {index} (task_id {}) was rejected: {why}", entries[index].task_id)
                }
                Some((_, t, end_ns)) => {
                    records[index] = Some(RequestRecord {
                        start_ns: request.start_ns,
                        first_token_ns: request.first_chunk_ns,
                        end_ns,
                        input_len: entries[index].input_ids.len() as u32,
                        output_len: request.produced,
                        engine: EngineTimes { arrival_ns: t.arrival_ns, first_token_ns: t.first_token_ns, end_ns: t.end_ns },
                    });
                    done += 1;
                    progress.inc(1);
                }
            }
        }
        in_flight = still;
    }
    progress.finish();
    Ok((records.into_iter().map(|r| r.expect("every request finished")).collect(), iterations))
}
