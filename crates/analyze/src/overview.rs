//! What the trace covers: its time span, the iterations profiled, requests and tokens, the GPU
//! and GPU-metric source named in its meta, and the processes it merged.

use lumen_trace::model::{ProcessRow, TraceData};
use serde::Serialize;

use crate::measured::Measured;
use crate::text;
use crate::view::{fact, measured, Block};

/// Meta keys that may name the GPU, in the order they are looked up.
pub const GPU_NAME_KEYS: [&str; 4] = ["gpu", "gpu_name", "device", "device_name"];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overview {
    /// Why the figures may be partial: the trace says it was never finished (meta `complete` is
    /// `false`: still being written, or its process died).
    pub incomplete: Option<String>,
    /// Rows the reader left out because their times or values cannot be (meta `rows_skipped`).
    pub rows_skipped: Option<String>,
    pub command: Option<String>,
    pub model: Option<String>,
    pub span: Measured<TimeSpan>,
    pub iterations: Measured<IterationRange>,
    pub requests: Measured<Requests>,
    pub tokens: Measured<Tokens>,
    pub gpu: Measured<String>,
    pub gpu_metrics_source: Measured<String>,
    pub processes: Measured<Vec<ProcessRow>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeSpan {
    pub start_ns: u64,
    pub end_ns: u64,
    pub duration_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IterationRange {
    pub count: usize,
    pub first: u64,
    pub last: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Requests {
    pub count: usize,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// Tokens processed by the profiled iterations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tokens {
    pub prefill: u64,
    pub decode: u64,
    /// Prefill and decode tokens over the time from the first iteration's start to the last one's end.
    pub per_second: f64,
}

pub fn analyze(trace: &TraceData) -> Overview {
    let meta = |key: &str| trace.meta(key).map(str::to_string);
    Overview {
        incomplete: (trace.meta("complete") == Some("false")).then(|| {
            "the trace was never finished (meta complete=false): it is still being written, or its process ended before \
             closing it; the figures cover only what was flushed"
                .to_string()
        }),
        rows_skipped: meta("rows_skipped").map(|what| format!("the reader left out {what}")),
        command: meta("command"),
        model: meta("model"),
        span: Measured::from_option(time_span(trace), || {
            "the trace has no timed rows (spans, iterations, GPU operations, API calls)".into()
        }),
        iterations: Measured::from_option(iteration_range(trace), || "the trace has no iteration rows".into()),
        requests: Measured::from_option(requests(trace), || "the trace has no request rows".into()),
        tokens: Measured::from_option(tokens(trace), || "the trace has no iteration rows".into()),
        gpu: Measured::from_option(GPU_NAME_KEYS.iter().find_map(|key| meta(key)), || {
            format!("the trace's meta names no GPU (keys {})", GPU_NAME_KEYS.join(", "))
        }),
        gpu_metrics_source: Measured::from_option(meta("gpu_metrics_source"), || {
            "the trace's meta has no gpu_metrics_source; record with `lumen profile --gpu-metrics`".into()
        }),
        processes: Measured::from_option((!trace.processes.is_empty()).then(|| trace.processes.clone()), || {
            "the trace has no process rows; a `lumen profile` trace lists the processes it merged".into()
        }),
    }
}

/// The first start and last end over spans, iterations, GPU operations and API calls.
fn time_span(trace: &TraceData) -> Option<TimeSpan> {
    let spans = trace.spans.iter().map(|s| (s.start_ns, s.end_ns));
    let iterations = trace.iterations.iter().map(|i| (i.start_ns, i.end_ns));
    let gpu = trace.gpu_ops.iter().map(|g| (g.start_ns, g.end_ns));
    let api = trace.api_calls.iter().map(|a| (a.start_ns, a.end_ns));
    let (start_ns, end_ns) = spans.chain(iterations).chain(gpu).chain(api).reduce(|(a, b), (start, end)| (a.min(start), b.max(end)))?;
    Some(TimeSpan { start_ns, end_ns, duration_ns: end_ns.saturating_sub(start_ns) })
}

fn iteration_range(trace: &TraceData) -> Option<IterationRange> {
    let first = trace.iterations.iter().map(|i| i.iter).min()?;
    let last = trace.iterations.iter().map(|i| i.iter).max()?;
    Some(IterationRange { count: trace.iterations.len(), first, last })
}

fn requests(trace: &TraceData) -> Option<Requests> {
    (!trace.requests.is_empty()).then(|| Requests {
        count: trace.requests.len(),
        input_tokens: trace.requests.iter().map(|r| r.input_len).sum(),
        output_tokens: trace.requests.iter().map(|r| r.output_len).sum(),
    })
}

fn tokens(trace: &TraceData) -> Option<Tokens> {
    let start = trace.iterations.iter().map(|i| i.start_ns).min()?;
    let end = trace.iterations.iter().map(|i| i.end_ns).max()?;
    let prefill: u64 = trace.iterations.iter().map(|i| i.ctx_tokens).sum();
    let decode: u64 = trace.iterations.iter().map(|i| i.gen_tokens).sum();
    let seconds = end.saturating_sub(start) as f64 / 1e9;
    Some(Tokens { prefill, decode, per_second: if seconds > 0.0 { (prefill + decode) as f64 / seconds } else { 0.0 } })
}

/// The section's blocks, for the terminal and the page.
pub fn view(o: &Overview) -> Vec<Block> {
    let mut rows: Vec<(String, Measured<String>)> =
        [("incomplete", &o.incomplete), ("rows skipped", &o.rows_skipped), ("command", &o.command), ("model", &o.model)]
            .into_iter()
            .filter_map(|(label, value)| Some(fact(label, value.clone()?)))
            .collect();
    rows.extend([
        measured("time span", &o.span, |s| text::duration(s.duration_ns as f64)),
        measured("iterations profiled", &o.iterations, |i| format!("{} ({}..={})", i.count, i.first, i.last)),
        measured("requests", &o.requests, |r| format!("{} ({} input, {} output tokens)", r.count, r.input_tokens, r.output_tokens)),
        measured("tokens", &o.tokens, |t| format!("{} prefill, {} decode ({:.1} tokens/s)", t.prefill, t.decode, t.per_second)),
        measured("GPU", &o.gpu, String::clone),
        measured("GPU metrics source", &o.gpu_metrics_source, String::clone),
        measured("processes", &o.processes, |p| {
            let names: Vec<String> = p.iter().map(|p| format!("{} {}", p.pid, p.name)).collect();
            format!("{} ({})", p.len(), names.join(", "))
        }),
    ]);
    vec![Block::Facts(rows)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_test_support::rows::{iteration, kernel, span};
    use lumen_trace::model::RequestRow;

    #[test]
    fn overview_spans_every_timed_row_and_reads_meta() {
        let trace = TraceData {
            meta: vec![("gpu".into(), "NVIDIA H100".into()), ("gpu_metrics_source".into(), "cupti-pm".into())],
            spans: vec![span(100, 400, 1, "forward", "phase")],
            gpu_ops: vec![kernel(300, 900, 1)],
            iterations: vec![iteration(7, 200, 500, 2.0), iteration(8, 500, 1_000_000_200, 3.0)],
            requests: vec![RequestRow { id: 1, arrival_ns: 0, first_token_ns: None, end_ns: 10, input_len: 5, output_len: 3 }],
            ..TraceData::default()
        };
        let o = analyze(&trace);
        assert_eq!(o.span, Measured::Available(TimeSpan { start_ns: 100, end_ns: 1_000_000_200, duration_ns: 1_000_000_100 }));
        assert_eq!(o.iterations, Measured::Available(IterationRange { count: 2, first: 7, last: 8 }));
        assert_eq!(o.requests, Measured::Available(Requests { count: 1, input_tokens: 5, output_tokens: 3 }));
        assert_eq!(o.tokens, Measured::Available(Tokens { prefill: 8, decode: 2, per_second: 10.0 }));
        assert_eq!((o.gpu.get().unwrap().as_str(), o.gpu_metrics_source.get().unwrap().as_str()), ("NVIDIA H100", "cupti-pm"));
        assert!(matches!(&o.processes, Measured::NotAvailable(why) if why.contains("no process rows")));
        assert_eq!(o.incomplete, None);
        let unfinished = TraceData { meta: vec![("complete".into(), "false".into())], ..trace };
        assert!(analyze(&unfinished).incomplete.is_some_and(|w| w.contains("never finished")));
    }
}
