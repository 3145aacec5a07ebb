//! Trace rows for the unit tests: process 1, thread 1, device 0, stream 7 unless a test says otherwise.

use lumen_trace::model::{ApiCallRow, GpuOpKind, GpuOpRow, IterationRow, SpanRow};

pub fn op(kind: GpuOpKind, start_ns: u64, end_ns: u64, correlation: u64) -> GpuOpRow {
    GpuOpRow {
        kind,
        start_ns,
        end_ns,
        pid: 1,
        device: 0,
        stream: Some(7),
        correlation: Some(correlation),
        name: kind.as_str().into(),
        ..GpuOpRow::default()
    }
}

pub fn kernel(start_ns: u64, end_ns: u64, correlation: u64) -> GpuOpRow {
    op(GpuOpKind::Kernel, start_ns, end_ns, correlation)
}

pub fn named(name: &str, start_ns: u64, end_ns: u64, correlation: u64) -> GpuOpRow {
    GpuOpRow { name: name.into(), ..kernel(start_ns, end_ns, correlation) }
}

pub fn api(name: &str, start_ns: u64, end_ns: u64, correlation: u64) -> ApiCallRow {
    ApiCallRow { start_ns, end_ns, pid: 1, tid: 1, name: name.into(), correlation: Some(correlation), result: Some(0) }
}

pub fn span(start_ns: u64, end_ns: u64, tid: u64, name: &str, category: &str) -> SpanRow {
    SpanRow { start_ns, end_ns, tid, name: name.into(), category: category.into(), depth: 0, iteration: None, args: None }
}

/// One context request of 4 tokens and one generation request.
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
    }
}
