//! The offline benchmark report in the style of `trtllm-bench throughput`:
//! per-request timing records go in ([`RequestRecord`]), a serializable
//! [`Report`] comes out ([`build_report`]), rendered as text
//! ([`render_text`]) or JSON ([`render_json`]).
//!
//! Metric definitions follow TensorRT-LLM:
//!
//! * total latency = last end − first start over the measured requests;
//! * request / total output / total token throughput = requests, output
//!   tokens, input + output tokens divided by the total latency;
//! * average request latency = mean of end − start;
//! * per user output throughput (with context) = mean of output_len / (end − start);
//! * streaming only: TTFT = first_token − start; TPOT = (end − first_token) /
//!   (output_len − 1); GTPS = (output_len − 1) / (end − first_token); TPOT
//!   and GTPS cover only requests with more than one output token, and the
//!   per user output speed (mean of 1/TPOT) therefore equals the GTPS average;
//! * percentile p of n values = sorted[min(floor(n * p), n − 1)].

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Timing of one measured request, in nanoseconds on a common clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub start_ns: u64,
    /// Arrival of the first output token; needed only for streaming runs.
    pub first_token_ns: Option<u64>,
    pub end_ns: u64,
    pub input_len: u32,
    pub output_len: u32,
}

/// What was benchmarked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    pub model: String,
    pub model_path: String,
    pub backend: String,
    pub dtype: String,
    pub max_batch_size: usize,
    pub max_num_tokens: usize,
    pub kv_cache_blocks: usize,
    pub kv_block_size: usize,
    pub threads: usize,
    pub hardware: String,
    pub version: String,
}

/// How the benchmark was run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Measured requests (warm-up excluded); must equal the record count.
    pub num_requests: usize,
    pub warmup: usize,
    /// Maximum requests in flight; `<= 0` means unlimited.
    pub concurrency: i64,
    pub streaming: bool,
    /// `< 0` means EOS was ignored (generation ran to `output_tokens`).
    pub eos_id: i64,
    pub dataset: String,
}

/// Summary statistics of one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub min: f64,
    pub max: f64,
    pub average: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Stats {
    /// Statistics of `values`, or `None` when there are none.
    pub fn from_values(values: &[f64]) -> Option<Stats> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (&min, &max) = (sorted.first()?, sorted.last()?);
        let at = |p| sorted[percentile_index(sorted.len(), p)];
        Some(Stats {
            min,
            max,
            average: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: at(0.50),
            p90: at(0.90),
            p95: at(0.95),
            p99: at(0.99),
        })
    }
}

/// Index of percentile `p` in a sorted list of `n` values:
/// `min(floor(n * p), n - 1)` (0 when `n` is 0).
pub fn percentile_index(n: usize, p: f64) -> usize {
    ((n as f64 * p) as usize).min(n.saturating_sub(1))
}

/// Token totals and averages of the measured requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RequestSummary {
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub avg_input_len: f64,
    pub avg_output_len: f64,
}

/// The `PERFORMANCE OVERVIEW` figures every run has.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Performance {
    pub request_throughput_req_s: f64,
    pub total_output_throughput_tok_s: f64,
    pub total_token_throughput_tok_s: f64,
    pub total_latency_ms: f64,
    pub avg_request_latency_ms: f64,
    pub per_user_output_throughput_tps: f64,
}

/// Figures only a streaming run has. TPOT and GTPS are `None` when no
/// request produced more than one output token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StreamingMetrics {
    pub avg_ttft_ms: f64,
    pub avg_tpot_ms: Option<f64>,
    pub per_user_output_speed_tps: Option<f64>,
    pub ttft_ms: Stats,
    pub tpot_ms: Option<Stats>,
    pub gtps: Option<Stats>,
}

/// A complete benchmark report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub engine: EngineInfo,
    pub run: RunInfo,
    pub requests: RequestSummary,
    pub performance: Performance,
    pub streaming: Option<StreamingMetrics>,
    pub request_latency_ms: Stats,
}

const NS_PER_MS: f64 = 1.0e6;
const NS_PER_S: f64 = 1.0e9;

/// Builds the report. Fails when there are no records, when the record count
/// differs from `run.num_requests`, when a record ends at or before its
/// start, or, for streaming runs, when a first-token time is missing, lies
/// outside `[start, end]`, or leaves no decode time for a multi-token output.
pub fn build_report(engine: &EngineInfo, run: &RunInfo, records: &[RequestRecord]) -> Result<Report> {
    if records.is_empty() {
        bail!("no request records to report; expected at least one measured request");
    }
    if records.len() != run.num_requests {
        bail!(
            "run.num_requests is {} but {} request records were given; expected one record per measured request",
            run.num_requests,
            records.len()
        );
    }
    for (index, record) in records.iter().enumerate() {
        check_record(index, record, run.streaming)?;
    }
    let n = records.len() as f64;
    // Non-empty, checked above.
    let first_start = records.iter().map(|r| r.start_ns).min().unwrap_or_default();
    let last_end = records.iter().map(|r| r.end_ns).max().unwrap_or_default();
    // Every record has end > start, so the span is positive.
    let total_s = (last_end - first_start) as f64 / NS_PER_S;
    let total_input_tokens: u64 = records.iter().map(|r| u64::from(r.input_len)).sum();
    let total_output_tokens: u64 = records.iter().map(|r| u64::from(r.output_len)).sum();

    let latencies_ms: Vec<f64> = records.iter().map(|r| (r.end_ns - r.start_ns) as f64 / NS_PER_MS).collect();
    let request_latency_ms = summarize(&latencies_ms, "request latency")?;
    let per_user_tps = records.iter().map(|r| f64::from(r.output_len) / ((r.end_ns - r.start_ns) as f64 / NS_PER_S)).sum::<f64>() / n;

    let performance = Performance {
        request_throughput_req_s: n / total_s,
        total_output_throughput_tok_s: total_output_tokens as f64 / total_s,
        total_token_throughput_tok_s: (total_input_tokens + total_output_tokens) as f64 / total_s,
        total_latency_ms: (last_end - first_start) as f64 / NS_PER_MS,
        avg_request_latency_ms: request_latency_ms.average,
        per_user_output_throughput_tps: per_user_tps,
    };
    let streaming = if run.streaming { Some(streaming_metrics(records)?) } else { None };
    Ok(Report {
        engine: engine.clone(),
        run: run.clone(),
        requests: RequestSummary {
            total_input_tokens,
            total_output_tokens,
            avg_input_len: total_input_tokens as f64 / n,
            avg_output_len: total_output_tokens as f64 / n,
        },
        performance,
        streaming,
        request_latency_ms,
    })
}

fn check_record(index: usize, r: &RequestRecord, streaming: bool) -> Result<()> {
    if r.end_ns <= r.start_ns {
        bail!("request record {index}: end_ns {} <= start_ns {}; expected the request to end after it starts", r.end_ns, r.start_ns);
    }
    if !streaming {
        return Ok(());
    }
    let Some(first) = r.first_token_ns else {
        bail!("request record {index}: first_token_ns is missing; expected it for a streaming run");
    };
    if first < r.start_ns || first > r.end_ns {
        bail!("request record {index}: first_token_ns {first} is outside [start_ns {}, end_ns {}]", r.start_ns, r.end_ns);
    }
    if r.output_len > 1 && first == r.end_ns {
        bail!(
            "request record {index}: first_token_ns equals end_ns {first} with output_len {}; \
             expected decode time > 0 for more than one output token",
            r.output_len
        );
    }
    Ok(())
}

fn streaming_metrics(records: &[RequestRecord]) -> Result<StreamingMetrics> {
    let mut ttft_ms = Vec::with_capacity(records.len());
    let mut tpot_ms = Vec::new();
    let mut gtps = Vec::new();
    for r in records {
        // Presence and ordering were checked by `check_record`.
        let first = r.first_token_ns.unwrap_or(r.start_ns);
        ttft_ms.push((first - r.start_ns) as f64 / NS_PER_MS);
        if r.output_len > 1 {
            let decode_ns = (r.end_ns - first) as f64;
            let steps = f64::from(r.output_len - 1);
            tpot_ms.push(decode_ns / steps / NS_PER_MS);
            gtps.push(steps / (decode_ns / NS_PER_S));
        }
    }
    let ttft_ms = summarize(&ttft_ms, "time to first token")?;
    let tpot_ms = Stats::from_values(&tpot_ms);
    let gtps = Stats::from_values(&gtps);
    Ok(StreamingMetrics {
        avg_ttft_ms: ttft_ms.average,
        avg_tpot_ms: tpot_ms.map(|s| s.average),
        per_user_output_speed_tps: gtps.map(|s| s.average),
        ttft_ms,
        tpot_ms,
        gtps,
    })
}

fn summarize(values: &[f64], metric: &str) -> Result<Stats> {
    Stats::from_values(values).with_context(|| format!("no {metric} values; expected at least one request"))
}

/// Serializes the report as pretty-printed JSON.
pub fn render_json(report: &Report) -> Result<String> {
    serde_json::to_string_pretty(report).context("serializing the benchmark report to JSON")
}

const RULE: &str = "===========================================================";
const DETAIL_WIDTH: usize = 32;
const PERF_WIDTH: usize = 50;

/// Renders the report as `trtllm-bench`-style text.
pub fn render_text(report: &Report) -> String {
    let engine = &report.engine;
    let run = &report.run;
    let perf = &report.performance;
    let kv_cache = format!(
        "{} blocks x {} tokens ({} tokens)",
        engine.kv_cache_blocks,
        engine.kv_block_size,
        engine.kv_cache_blocks.saturating_mul(engine.kv_block_size)
    );
    let mut out = String::new();

    section(&mut out, "ENGINE DETAILS");
    field(&mut out, DETAIL_WIDTH, "Model:", &engine.model);
    field(&mut out, DETAIL_WIDTH, "Model Path:", &engine.model_path);
    field(&mut out, DETAIL_WIDTH, "Backend:", &engine.backend);
    field(&mut out, DETAIL_WIDTH, "Dtype:", &engine.dtype);
    field(&mut out, DETAIL_WIDTH, "Version:", &engine.version);
    field(&mut out, DETAIL_WIDTH, "Max Batch Size:", &engine.max_batch_size.to_string());
    field(&mut out, DETAIL_WIDTH, "Max Num Tokens:", &engine.max_num_tokens.to_string());
    field(&mut out, DETAIL_WIDTH, "KV Cache:", &kv_cache);
    field(&mut out, DETAIL_WIDTH, "Threads:", &engine.threads.to_string());
    field(&mut out, DETAIL_WIDTH, "Hardware:", &engine.hardware);

    section(&mut out, "REQUEST DETAILS");
    field(&mut out, DETAIL_WIDTH, "Number of requests:", &run.num_requests.to_string());
    field(&mut out, DETAIL_WIDTH, "Number of warm-up requests:", &run.warmup.to_string());
    field(&mut out, DETAIL_WIDTH, "Average Input Length (tokens):", &fixed(report.requests.avg_input_len));
    field(&mut out, DETAIL_WIDTH, "Average Output Length (tokens):", &fixed(report.requests.avg_output_len));
    let concurrency = if run.concurrency <= 0 { "unlimited".to_owned() } else { run.concurrency.to_string() };
    field(&mut out, DETAIL_WIDTH, "Concurrency:", &concurrency);
    field(&mut out, DETAIL_WIDTH, "Dataset:", &run.dataset);

    section(&mut out, "RUNTIME INFORMATION");
    field(&mut out, DETAIL_WIDTH, "Backend:", &engine.backend);
    field(&mut out, DETAIL_WIDTH, "Threads:", &engine.threads.to_string());
    field(&mut out, DETAIL_WIDTH, "KV Cache:", &kv_cache);
    field(&mut out, DETAIL_WIDTH, "Streaming:", if run.streaming { "on" } else { "off" });
    let eos = if run.eos_id < 0 { "ignored".to_owned() } else { run.eos_id.to_string() };
    field(&mut out, DETAIL_WIDTH, "EOS ID:", &eos);

    section(&mut out, "PERFORMANCE OVERVIEW");
    field(&mut out, PERF_WIDTH, "Request Throughput (req/sec):", &fixed(perf.request_throughput_req_s));
    field(&mut out, PERF_WIDTH, "Total Output Throughput (tokens/sec):", &fixed(perf.total_output_throughput_tok_s));
    field(&mut out, PERF_WIDTH, "Total Token Throughput (tokens/sec):", &fixed(perf.total_token_throughput_tok_s));
    field(&mut out, PERF_WIDTH, "Total Latency (ms):", &fixed(perf.total_latency_ms));
    field(&mut out, PERF_WIDTH, "Average request latency (ms):", &fixed(perf.avg_request_latency_ms));
    field(&mut out, PERF_WIDTH, "Per User Output Throughput [w/ ctx] (tps/user):", &fixed(perf.per_user_output_throughput_tps));
    if let Some(s) = &report.streaming {
        field(&mut out, PERF_WIDTH, "Average time-to-first-token [TTFT] (ms):", &fixed(s.avg_ttft_ms));
        field(&mut out, PERF_WIDTH, "Average time-per-output-token [TPOT] (ms):", &optional(s.avg_tpot_ms));
        field(&mut out, PERF_WIDTH, "Per User Output Speed (tps/user):", &optional(s.per_user_output_speed_tps));
        stats_block(&mut out, "[TTFT] TIME-TO-FIRST-TOKEN (ms)", "TTFT", Some(&s.ttft_ms));
        stats_block(&mut out, "[TPOT] TIME-PER-OUTPUT-TOKEN (ms)", "TPOT", s.tpot_ms.as_ref());
        stats_block(&mut out, "[GTPS] GENERATION TOKENS PER SECOND (tps/user)", "GTPS", s.gtps.as_ref());
    }
    stats_block(&mut out, "REQUEST LATENCY BREAKDOWN (ms)", "Latency", Some(&report.request_latency_ms));
    out.push('\n');
    out.push_str(RULE);
    out.push('\n');
    out
}

fn section(out: &mut String, title: &str) {
    if !out.is_empty() {
        out.push('\n');
    }
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{RULE}\n= {title}\n{RULE}");
}

fn field(out: &mut String, width: usize, label: &str, value: &str) {
    let _ = writeln!(out, "{label:<width$}{value}");
}

fn stats_block(out: &mut String, title: &str, tag: &str, stats: Option<&Stats>) {
    let _ = writeln!(out, "\n{:-<width$}\n", format!("-- {title} "), width = RULE.len());
    let Some(s) = stats else {
        let _ = writeln!(out, "[{tag}] N/A (no request produced more than one output token)");
        return;
    };
    for (name, value) in
        [("MIN", s.min), ("MAX", s.max), ("AVERAGE", s.average), ("P50", s.p50), ("P90", s.p90), ("P95", s.p95), ("P99", s.p99)]
    {
        let _ = writeln!(out, "[{tag}] {name:<7}: {value:.4}");
    }
}

fn fixed(value: f64) -> String {
    format!("{value:.4}")
}

fn optional(value: Option<f64>) -> String {
    value.map_or_else(|| "N/A".to_owned(), fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn engine() -> EngineInfo {
        EngineInfo {
            model: "tiny-llama".into(),
            model_path: "/models/tiny".into(),
            backend: "cpu".into(),
            dtype: "bf16".into(),
            max_batch_size: 8,
            max_num_tokens: 2048,
            kv_cache_blocks: 100,
            kv_block_size: 16,
            threads: 2,
            hardware: "test-cpu".into(),
            version: "0.1.0".into(),
        }
    }

    fn run(num_requests: usize, streaming: bool) -> RunInfo {
        RunInfo { num_requests, warmup: 2, concurrency: -1, streaming, eos_id: -1, dataset: "data.jsonl".into() }
    }

    fn record(start_ms: u64, first_ms: u64, end_ms: u64, input_len: u32, output_len: u32) -> RequestRecord {
        RequestRecord { start_ns: start_ms * MS, first_token_ns: Some(first_ms * MS), end_ns: end_ms * MS, input_len, output_len }
    }

    /// r0: 0..1000 ms, first token at 100, 10 in / 10 out.
    /// r1: 500..2000 ms, first token at 700, 20 in / 4 out.
    /// r2: 1000..2500 ms, first token at 1500, 30 in / 1 out (no TPOT/GTPS).
    fn records() -> Vec<RequestRecord> {
        vec![record(0, 100, 1000, 10, 10), record(500, 700, 2000, 20, 4), record(1000, 1500, 2500, 30, 1)]
    }

    fn close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() <= 1e-9 * expected.abs().max(1.0), "{actual} != {expected}");
    }

    #[test]
    fn percentile_index_rule() {
        assert_eq!(percentile_index(1, 0.99), 0);
        assert_eq!(percentile_index(3, 0.50), 1);
        assert_eq!(percentile_index(3, 0.90), 2);
        assert_eq!(percentile_index(10, 0.50), 5);
        assert_eq!(percentile_index(10, 0.90), 9);
        assert_eq!(percentile_index(10, 0.95), 9);
        assert_eq!(percentile_index(100, 0.95), 95);
        assert_eq!(percentile_index(100, 0.99), 99);
        assert_eq!(percentile_index(4, 1.0), 3);
        assert_eq!(percentile_index(0, 0.5), 0);
    }

    #[test]
    fn stats_of_shuffled_values() {
        let values = [7.0, 3.0, 10.0, 1.0, 9.0, 2.0, 8.0, 4.0, 6.0, 5.0];
        let s = Stats::from_values(&values).unwrap();
        assert_eq!((s.min, s.max, s.average), (1.0, 10.0, 5.5));
        // Sorted 1..=10: indices 5, 9, 9, 9.
        assert_eq!((s.p50, s.p90, s.p95, s.p99), (6.0, 10.0, 10.0, 10.0));
        let hundred: Vec<f64> = (0..100).rev().map(f64::from).collect();
        let s = Stats::from_values(&hundred).unwrap();
        assert_eq!((s.p50, s.p90, s.p95, s.p99), (50.0, 90.0, 95.0, 99.0));
        assert_eq!(Stats::from_values(&[]), None);
    }

    #[test]
    fn non_streaming_formulas() {
        let report = build_report(&engine(), &run(3, false), &records()).unwrap();
        let p = report.performance;
        close(p.total_latency_ms, 2500.0);
        close(p.request_throughput_req_s, 3.0 / 2.5);
        close(p.total_output_throughput_tok_s, 15.0 / 2.5);
        close(p.total_token_throughput_tok_s, 75.0 / 2.5);
        close(p.avg_request_latency_ms, (1000.0 + 1500.0 + 1500.0) / 3.0);
        close(p.per_user_output_throughput_tps, (10.0 / 1.0 + 4.0 / 1.5 + 1.0 / 1.5) / 3.0);
        assert_eq!(report.requests.total_input_tokens, 60);
        assert_eq!(report.requests.total_output_tokens, 15);
        close(report.requests.avg_input_len, 20.0);
        close(report.requests.avg_output_len, 5.0);
        let lat = report.request_latency_ms;
        assert_eq!((lat.min, lat.max, lat.p50, lat.p99), (1000.0, 1500.0, 1500.0, 1500.0));
        assert!(report.streaming.is_none());
    }

    #[test]
    fn streaming_formulas() {
        let report = build_report(&engine(), &run(3, true), &records()).unwrap();
        let s = report.streaming.unwrap();
        close(s.avg_ttft_ms, (100.0 + 200.0 + 500.0) / 3.0);
        assert_eq!((s.ttft_ms.min, s.ttft_ms.max, s.ttft_ms.p50), (100.0, 500.0, 200.0));
        // TPOT: r0 (1000-100)/9 = 100 ms; r1 (2000-700)/3 ms; r2 excluded.
        let tpot = s.tpot_ms.unwrap();
        close(tpot.min, 100.0);
        close(tpot.max, 1300.0 / 3.0);
        close(tpot.average, (100.0 + 1300.0 / 3.0) / 2.0);
        close(tpot.p50, 1300.0 / 3.0);
        close(s.avg_tpot_ms.unwrap(), tpot.average);
        // GTPS: r0 9 / 0.9 s = 10; r1 3 / 1.3 s.
        let gtps = s.gtps.unwrap();
        close(gtps.min, 3.0 / 1.3);
        close(gtps.max, 10.0);
        close(gtps.average, (10.0 + 3.0 / 1.3) / 2.0);
        // Per user output speed: mean of 1/TPOT in tokens per second.
        close(s.per_user_output_speed_tps.unwrap(), (1000.0 / 100.0 + 3000.0 / 1300.0) / 2.0);
    }

    #[test]
    fn single_token_outputs_leave_tpot_empty() {
        let records = vec![record(0, 5, 10, 4, 1), record(0, 10, 10, 4, 1)];
        let report = build_report(&engine(), &run(2, true), &records).unwrap();
        let s = report.streaming.unwrap();
        assert_eq!((s.tpot_ms, s.gtps, s.avg_tpot_ms), (None, None, None));
        let text = render_text(&report);
        assert!(text.contains("Average time-per-output-token [TPOT] (ms):        N/A\n"), "{text}");
        assert!(text.contains("[TPOT] N/A"), "{text}");
    }

    #[test]
    fn bad_records_are_rejected() {
        let cases = [
            (vec![], run(0, false), "no request records to report"),
            (records(), run(4, false), "run.num_requests is 4 but 3 request records were given"),
            (vec![record(5, 5, 5, 1, 1)], run(1, false), "request record 0: end_ns 5000000 <= start_ns 5000000"),
            (
                vec![record(0, 1, 2, 1, 1), RequestRecord { first_token_ns: None, ..record(0, 1, 2, 1, 1) }],
                run(2, true),
                "request record 1: first_token_ns is missing",
            ),
            (vec![record(10, 5, 20, 1, 2)], run(1, true), "request record 0: first_token_ns 5000000 is outside"),
            (vec![record(10, 20, 20, 1, 2)], run(1, true), "first_token_ns equals end_ns 20000000 with output_len 2"),
        ];
        for (records, run, expected) in cases {
            let text = format!("{:#}", build_report(&engine(), &run, &records).unwrap_err());
            assert!(text.contains(expected), "{text:?} should contain {expected:?}");
        }
    }

    #[test]
    fn text_sections_in_order() {
        let report = build_report(&engine(), &run(3, true), &records()).unwrap();
        let text = render_text(&report);
        let headings = [
            "= ENGINE DETAILS",
            "= REQUEST DETAILS",
            "= RUNTIME INFORMATION",
            "= PERFORMANCE OVERVIEW",
            "Request Throughput (req/sec):",
            "Total Output Throughput (tokens/sec):",
            "Total Token Throughput (tokens/sec):",
            "Total Latency (ms):",
            "Average request latency (ms):",
            "Per User Output Throughput [w/ ctx] (tps/user):",
            "Average time-to-first-token [TTFT] (ms):",
            "Average time-per-output-token [TPOT] (ms):",
            "Per User Output Speed (tps/user):",
            "[TTFT] TIME-TO-FIRST-TOKEN (ms)",
            "[TPOT] TIME-PER-OUTPUT-TOKEN (ms)",
            "[GTPS] GENERATION TOKENS PER SECOND (tps/user)",
            "REQUEST LATENCY BREAKDOWN (ms)",
        ];
        let mut from = 0;
        for heading in headings {
            let at = text[from..].find(heading).unwrap_or_else(|| panic!("{heading:?} missing or out of order in\n{text}"));
            from += at + heading.len();
        }
        assert!(text.contains("Request Throughput (req/sec):                     1.2000\n"), "{text}");
        assert!(text.contains("Total Latency (ms):                               2500.0000\n"), "{text}");
        assert!(text.contains("KV Cache:                       100 blocks x 16 tokens (1600 tokens)\n"), "{text}");
        assert!(text.contains("Concurrency:                    unlimited\n"), "{text}");
        assert!(text.contains("EOS ID:                         ignored\n"), "{text}");
        assert!(text.contains("Streaming:                      on\n"), "{text}");
        assert!(text.contains("[Latency] P50    : 1500.0000\n"), "{text}");
        assert!(text.contains("[TTFT] AVERAGE: 266.6667\n"), "{text}");
        for name in ["MIN", "MAX", "AVERAGE", "P50", "P90", "P95", "P99"] {
            assert_eq!(text.matches(&format!("[TTFT] {name:<7}:")).count(), 1, "{name}");
            assert_eq!(text.matches(&format!("[Latency] {name:<7}:")).count(), 1, "{name}");
        }
    }

    #[test]
    fn non_streaming_text_omits_streaming_lines() {
        let report = build_report(&engine(), &RunInfo { concurrency: 4, eos_id: 2, ..run(3, false) }, &records()).unwrap();
        let text = render_text(&report);
        assert!(!text.contains("TTFT"), "{text}");
        assert!(!text.contains("GTPS"), "{text}");
        assert!(text.contains("REQUEST LATENCY BREAKDOWN (ms)"));
        assert!(text.contains("Concurrency:                    4\n"), "{text}");
        assert!(text.contains("EOS ID:                         2\n"), "{text}");
        assert!(text.contains("Streaming:                      off\n"), "{text}");
    }

    #[test]
    fn json_round_trips() {
        let report = build_report(&engine(), &run(3, true), &records()).unwrap();
        let json = render_json(&report).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["performance"]["total_latency_ms"], 2500.0);
        assert_eq!(value["engine"]["model"], "tiny-llama");
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }
}
