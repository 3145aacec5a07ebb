//! Profiling inside the engine: opens and closes the profiling windows at iteration boundaries
//! (the engine starts and stops the CUDA profiler there, for an outside collector), and, when
//! there is a trace output, hands what was recorded to it (a `.lumen` store, or Chrome JSON when
//! the path ends in `.json`), flushing in batches so a crash loses at most the last one.

use crate::stats::IterationStats;
use anyhow::{Context, Result};
use lumen_trace::export::chrome::to_chrome_json;
use lumen_trace::instrument;
use lumen_trace::model::{AllocationRow, ExpertLoadRow, IterationRow, RequestRow, ThreadRow, TraceData};
use lumen_trace::now_ns;
use lumen_trace::output::write_atomically;
use lumen_trace::store::{Batch, TraceWriter};
use lumen_trace::window::{ProfileWindows, WindowEvent, WindowState};
use std::path::{Path, PathBuf};

/// Flush after this many recorded iterations, or after this long, whichever comes first.
const FLUSH_ITERATIONS: usize = 1_250;
const FLUSH_NS: u64 = 500_000_000;

enum Output {
    Store(TraceWriter),
    /// Rows gathered in memory and written as Chrome JSON at the end.
    ChromeJson(PathBuf, TraceData),
}

pub struct Profiler {
    state: WindowState,
    /// `None`: the windows only start and stop the CUDA profiler; nothing is recorded here.
    output: Option<Output>,
    iterations: Vec<IterationRow>,
    allocations: Vec<AllocationRow>,
    expert_loads: Vec<ExpertLoadRow>,
    requests: Vec<RequestRow>,
    last_flush_ns: u64,
    recorded_iterations: u64,
}

impl Profiler {
    /// Records the iterations of `windows` (every iteration when `None`) into `path`.
    pub fn new(path: &Path, windows: Option<ProfileWindows>, meta: Vec<(String, String)>) -> Result<Self> {
        let windows = windows.unwrap_or_else(ProfileWindows::all);
        let mut meta = meta;
        meta.push(("windows".into(), windows.to_string()));
        meta.push(("pid".into(), std::process::id().to_string()));
        let output = if path.extension().is_some_and(|e| e == "json") {
            Output::ChromeJson(path.to_path_buf(), TraceData { meta, ..TraceData::default() })
        } else {
            Output::Store(TraceWriter::create(path, &meta)?)
        };
        Ok(Self::with_output(windows, Some(output)))
    }

    /// Opens and closes `windows` without recording anything: the engine still starts and stops
    /// the CUDA profiler at their edges, for `lumen profile -c cudaProfilerApi` or nsys.
    pub fn windows_only(windows: ProfileWindows) -> Self {
        Self::with_output(windows, None)
    }

    fn with_output(windows: ProfileWindows, output: Option<Output>) -> Self {
        Profiler {
            state: WindowState::new(windows),
            output,
            iterations: Vec::new(),
            allocations: Vec::new(),
            expert_loads: Vec::new(),
            requests: Vec::new(),
            last_flush_ns: now_ns(),
            recorded_iterations: 0,
        }
    }

    /// Adds or replaces a `meta` entry of the trace output (none without an output). The engine
    /// keeps an error until profiling ends.
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        match &mut self.output {
            None => Ok(()),
            Some(Output::Store(w)) => w.set_meta(key, value),
            Some(Output::ChromeJson(_, t)) => {
                t.meta.retain(|(k, _)| k != key);
                t.meta.push((key.to_string(), value.to_string()));
                Ok(())
            }
        }
    }

    /// Whether a window is open now.
    pub fn is_window_open(&self) -> bool {
        self.state.is_open()
    }

    /// Whether every window has closed by iteration `next_iter`.
    pub fn windows_over(&self, next_iter: u64) -> bool {
        !self.state.is_open() && self.state.windows.last().is_none_or(|last| last < next_iter)
    }

    /// Called before iteration `iter`: opens a window that starts here (and says so, for the
    /// caller to start the CUDA profiler).
    pub fn before_iteration(&mut self, iter: u64) -> Option<WindowEvent> {
        let event = self.state.before(iter);
        if event == Some(WindowEvent::Open) && self.output.is_some() {
            instrument::start_recording();
        }
        instrument::set_iteration(Some(iter));
        event
    }

    /// Called after iteration `iter` with its statistics: records it, flushes when due, and closes
    /// a window that ends here (returning `Close`, for the caller to stop the CUDA profiler). The
    /// engine keeps an error until profiling ends. With the overlap scheduler an iteration ends
    /// after the next one has begun, so the one before a window ends inside it, unrecorded.
    pub fn after_iteration(&mut self, iter: u64, stats: &IterationStats) -> Result<Option<WindowEvent>> {
        instrument::set_iteration(None);
        if !self.state.is_open() {
            return Ok(None);
        }
        if self.output.is_none() || !self.state.windows.contains(iter) {
            return Ok(self.state.after(iter));
        }
        self.recorded_iterations += 1;
        self.iterations.push(IterationRow {
            iter,
            start_ns: stats.start_ns,
            end_ns: stats.end_ns,
            ctx_reqs: stats.num_ctx_requests as u64,
            gen_reqs: stats.num_gen_requests as u64,
            ctx_tokens: stats.num_ctx_tokens as u64,
            gen_tokens: stats.num_gen_tokens as u64,
            kv_used_blocks: stats.used_num_blocks as u64,
            kv_total_blocks: stats.max_num_blocks as u64,
            host_ms: stats.host_step_ms,
            device_ms: stats.device_step_ms,
            queued_reqs: Some(stats.num_queued_requests as u64),
            weight_bytes: Some(stats.weight_bytes),
            kv_bytes_read: Some(stats.kv_bytes_read),
            flops: Some(stats.flops),
            fp8_flops: Some(stats.fp8_flops),
            attention_flops: Some(stats.attention_flops),
        });
        self.allocations.push(AllocationRow {
            iteration: iter,
            count: stats.host_allocations,
            bytes: stats.host_alloc_bytes,
            frees: stats.host_frees,
            kv_blocks_allocated: stats.kv_blocks_allocated,
            kv_blocks_freed: stats.kv_blocks_freed,
        });
        self.expert_loads.extend(stats.expert_load.iter().enumerate().map(|(layer, loads)| ExpertLoadRow {
            iteration: iter,
            layer: layer as u32,
            tokens: loads.iter().map(|&l| l as u64).collect(),
        }));
        let closing = self.state.after(iter) == Some(WindowEvent::Close);
        if closing {
            instrument::stop_recording();
        }
        if closing || self.iterations.len() >= FLUSH_ITERATIONS || now_ns() - self.last_flush_ns > FLUSH_NS {
            self.flush()?;
        }
        Ok(closing.then_some(WindowEvent::Close))
    }

    /// Keeps a request that ended while a window is open, for the trace's `requests` table
    /// (nothing without an output).
    pub fn record_request(&mut self, row: RequestRow) {
        if self.output.is_some() && self.state.is_open() {
            self.requests.push(row);
        }
    }

    /// Writes what the recorder and the profiler hold.
    fn flush(&mut self) -> Result<()> {
        let recorded = instrument::drain();
        let iterations = std::mem::take(&mut self.iterations);
        let requests = std::mem::take(&mut self.requests);
        let allocations = std::mem::take(&mut self.allocations);
        let expert_loads = std::mem::take(&mut self.expert_loads);
        self.last_flush_ns = now_ns();
        match &mut self.output {
            None => Ok(()),
            Some(Output::Store(w)) => w.append(&Batch {
                threads: &recorded.threads,
                spans: &recorded.spans,
                marks: &recorded.marks,
                counters: &recorded.counters,
                iterations: &iterations,
                requests: &requests,
                allocations: &allocations,
                expert_loads: &expert_loads,
            }),
            Some(Output::ChromeJson(_, t)) => {
                let pid = std::process::id();
                for (tid, name) in recorded.threads {
                    if !t.threads.iter().any(|x| x.tid == tid) {
                        t.threads.push(ThreadRow { pid, tid, name });
                    }
                }
                t.spans.extend(recorded.spans);
                t.marks.extend(recorded.marks);
                t.counters.extend(recorded.counters);
                t.iterations.extend(iterations);
                t.allocations.extend(allocations);
                t.expert_loads.extend(expert_loads);
                t.requests.extend(requests);
                Ok(())
            }
        }
    }

    /// Flushes the rest and closes the output; returns its path and the iterations recorded
    /// (`None` without an output).
    pub fn finish(mut self) -> Result<Option<(PathBuf, u64)>> {
        instrument::stop_recording();
        self.flush()?;
        let n = self.recorded_iterations;
        match self.output {
            None => Ok(None),
            Some(Output::Store(w)) => w.finish().map(|p| Some((p, n))),
            Some(Output::ChromeJson(path, t)) => {
                write_atomically(&path, to_chrome_json(&t).as_bytes())
                    .with_context(|| format!("trace {}: cannot write", path.display()))?;
                Ok(Some((path, n)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_without_an_output_still_open_and_close_and_record_nothing() {
        let windows = ProfileWindows::parse("2-3,5-5", "test").unwrap();
        let mut p = Profiler::windows_only(windows);
        let stats = IterationStats::default();
        let mut events = Vec::new();
        for iter in 0..7 {
            if let Some(e) = p.before_iteration(iter) {
                events.push((iter, e));
            }
            if let Some(e) = p.after_iteration(iter, &stats).unwrap() {
                events.push((iter, e));
            }
        }
        use WindowEvent::{Close, Open};
        assert_eq!(events, [(2, Open), (3, Close), (5, Open), (5, Close)]);
        assert!(!instrument::is_recording(), "nothing is recorded without an output");
        assert_eq!(p.finish().unwrap(), None);
    }

    /// With the overlap scheduler iteration k ends after iteration k + 1 has begun: the windows
    /// still open and close on their own iterations, and only those are recorded.
    #[test]
    fn iterations_that_end_after_the_next_began_record_only_the_windows() {
        let dir = lumen_test_support::scratch::Scratch::new("profiler-overlap");
        let path = std::path::PathBuf::from(dir.path("overlap.lumen"));
        let windows = ProfileWindows::parse("2-3,5-5", "test").unwrap();
        let mut p = Profiler::new(&path, Some(windows), Vec::new()).unwrap();
        let stats = IterationStats::default();
        let mut events = Vec::new();
        for iter in 0..8 {
            if let Some(e) = p.before_iteration(iter) {
                events.push((iter, e));
            }
            if let Some(e) = iter.checked_sub(1).and_then(|done| p.after_iteration(done, &stats).unwrap()) {
                events.push((iter - 1, e));
            }
        }
        use WindowEvent::{Close, Open};
        assert_eq!(events, [(2, Open), (3, Close), (5, Open), (5, Close)]);
        assert_eq!(p.finish().unwrap().map(|(_, n)| n), Some(3), "iterations 2, 3 and 5");
    }
}
