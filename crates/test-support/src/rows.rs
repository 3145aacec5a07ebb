//! Trace rows and `.lumen` files for tests: builders for the rows a test names by their times,
//! and a writer that stores a whole [`TraceData`] through the trace store.
//!
//! The free builders put their rows in [`Origin::DEFAULT`]: process 1, thread 1, device 0,
//! stream 7.

use std::path::Path;

use lumen_trace::model::{ApiCallRow, GpuOpKind, GpuOpRow, IterationRow, ProcessRow, SpanRow, ThreadRow, TraceData};
use lumen_trace::store::{read_trace, Batch, GpuBatch, TraceWriter};

use crate::scratch::Scratch;

/// Where a test's rows come from: a process, the thread that makes its API calls and runs its
/// phases, and the device and stream its GPU work runs on.
#[derive(Clone, Copy, Debug)]
pub struct Origin {
    pub pid: u32,
    pub tid: u64,
    pub device: u32,
    pub stream: u64,
}

impl Origin {
    pub const DEFAULT: Origin = Origin { pid: 1, tid: 1, device: 0, stream: 7 };

    pub fn process(&self, name: &str) -> ProcessRow {
        ProcessRow { pid: self.pid, name: name.into() }
    }

    pub fn thread(&self, name: &str) -> ThreadRow {
        ThreadRow { pid: self.pid, tid: self.tid, name: name.into() }
    }

    /// A CUDA API call that succeeded, correlated with the GPU work it launched.
    pub fn api(&self, name: &str, start_ns: u64, end_ns: u64, correlation: u64) -> ApiCallRow {
        ApiCallRow { start_ns, end_ns, pid: self.pid, tid: self.tid, name: name.into(), correlation: Some(correlation), result: Some(0) }
    }

    /// A GPU operation launched by the API call with `correlation`; its optional fields unset.
    pub fn gpu_op(&self, kind: GpuOpKind, name: &str, start_ns: u64, end_ns: u64, correlation: u64) -> GpuOpRow {
        GpuOpRow {
            kind,
            start_ns,
            end_ns,
            pid: self.pid,
            device: self.device,
            stream: Some(self.stream),
            correlation: Some(correlation),
            name: name.into(),
            ..GpuOpRow::default()
        }
    }

    /// The span of iteration `iter` itself, `iter N` at depth 0.
    pub fn iteration_span(&self, iter: u64, start_ns: u64, end_ns: u64) -> SpanRow {
        SpanRow { name: format!("iter {iter}"), category: "iteration".into(), depth: 0, ..self.phase("", start_ns, end_ns, iter) }
    }

    /// An engine phase (schedule, forward, sample...) one level inside iteration `iter`.
    pub fn phase(&self, name: &str, start_ns: u64, end_ns: u64, iter: u64) -> SpanRow {
        SpanRow {
            start_ns,
            end_ns,
            tid: self.tid,
            name: name.into(),
            category: "phase".into(),
            depth: 1,
            iteration: Some(iter),
            args: None,
        }
    }
}

/// A GPU operation named after its kind.
pub fn op(kind: GpuOpKind, start_ns: u64, end_ns: u64, correlation: u64) -> GpuOpRow {
    Origin::DEFAULT.gpu_op(kind, kind.as_str(), start_ns, end_ns, correlation)
}

pub fn kernel(start_ns: u64, end_ns: u64, correlation: u64) -> GpuOpRow {
    op(GpuOpKind::Kernel, start_ns, end_ns, correlation)
}

pub fn named(name: &str, start_ns: u64, end_ns: u64, correlation: u64) -> GpuOpRow {
    GpuOpRow { name: name.into(), ..kernel(start_ns, end_ns, correlation) }
}

pub fn api(name: &str, start_ns: u64, end_ns: u64, correlation: u64) -> ApiCallRow {
    Origin::DEFAULT.api(name, start_ns, end_ns, correlation)
}

/// A top-level span on thread `tid`, outside any iteration.
pub fn span(start_ns: u64, end_ns: u64, tid: u64, name: &str, category: &str) -> SpanRow {
    SpanRow { start_ns, end_ns, tid, name: name.into(), category: category.into(), depth: 0, iteration: None, args: None }
}

/// One context request of 4 tokens and one generation request; no KV cache, device time or
/// work figures.
pub fn iteration(iter: u64, start_ns: u64, end_ns: u64, host_ms: f64) -> IterationRow {
    IterationRow {
        iter,
        start_ns,
        end_ns,
        ctx_reqs: 1,
        gen_reqs: 1,
        ctx_tokens: 4,
        gen_tokens: 1,
        kv_used_blocks: 0,
        kv_total_blocks: 0,
        host_ms,
        device_ms: None,
        queued_reqs: None,
        weight_bytes: None,
        kv_bytes_read: None,
        flops: None,
        fp8_flops: None,
        attention_flops: None,
    }
}

/// Writes `trace` to a new `.lumen` file at `path` through the trace store and finishes it.
pub fn write_trace(path: impl AsRef<Path>, trace: &TraceData) {
    append_all(path.as_ref(), trace).finish().expect("finish the trace");
}

/// Writes `trace` like [`write_trace`], then drops the writer as a process cut short would: the
/// file stays marked incomplete.
pub fn write_unfinished_trace(path: impl AsRef<Path>, trace: &TraceData) {
    drop(append_all(path.as_ref(), trace));
}

/// `trace` as a reader of its `.lumen` file sees it: written into a scratch directory named after
/// `case`, read back, and removed.
pub fn read_back(case: &str, trace: &TraceData) -> TraceData {
    let scratch = Scratch::new(case);
    let path = scratch.path("trace.lumen");
    write_trace(&path, trace);
    read_trace(Path::new(&path)).expect("the written trace reads back")
}

fn append_all(path: &Path, trace: &TraceData) -> TraceWriter {
    let mut w = TraceWriter::create(path, &trace.meta).expect("create the trace");
    w.append(&Batch {
        threads: &[],
        spans: &trace.spans,
        marks: &trace.marks,
        counters: &trace.counters,
        iterations: &trace.iterations,
        requests: &trace.requests,
        allocations: &trace.allocations,
        expert_loads: &trace.expert_loads,
    })
    .expect("append the recorder rows");
    w.append_gpu(&GpuBatch { processes: &trace.processes, threads: &trace.threads, gpu_ops: &trace.gpu_ops, api_calls: &trace.api_calls })
        .expect("append the GPU rows");
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_trace_reads_back_row_for_row() {
        let origin = Origin { pid: 40, tid: 41, device: 1, stream: 3 };
        let trace = TraceData {
            meta: vec![("command".into(), "lumen bench".into())],
            processes: vec![origin.process("lumen")],
            threads: vec![origin.thread("engine")],
            // In start order, as the store reads spans back.
            spans: vec![origin.iteration_span(0, 0, 100), span(0, 5, 9, "load", "setup"), origin.phase("forward", 10, 90, 0)],
            iterations: vec![iteration(0, 0, 100, 0.1)],
            gpu_ops: vec![origin.gpu_op(GpuOpKind::Kernel, "gemm", 20, 80, 1), named("norm", 80, 85, 2)],
            api_calls: vec![origin.api("cuLaunchKernel", 10, 15, 1), api("cuLaunchKernel", 16, 18, 2)],
            ..TraceData::default()
        };
        let read = read_back("rows-round-trip", &trace);
        assert_eq!((read.meta("command"), read.meta("complete")), (Some("lumen bench"), Some("true")));
        assert_eq!((&read.processes, &read.threads, &read.iterations), (&trace.processes, &trace.threads, &trace.iterations));
        assert_eq!((&read.spans, &read.gpu_ops, &read.api_calls), (&trace.spans, &trace.gpu_ops, &trace.api_calls));
    }

    #[test]
    fn an_unfinished_trace_stays_incomplete() {
        let scratch = Scratch::new("rows-unfinished");
        let path = scratch.path("cut.lumen");
        write_unfinished_trace(&path, &TraceData { iterations: vec![iteration(3, 0, 10, 0.01)], ..TraceData::default() });
        let read = read_trace(Path::new(&path)).expect("an unfinished trace still reads");
        assert_eq!((read.meta("complete"), read.iterations.len()), (Some("false"), 1));
    }
}
