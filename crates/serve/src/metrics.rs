//! `/metrics`: Prometheus text through the `metrics` facade and its Prometheus exporter, under
//! vLLM's metric names with the prefix `lumen:` instead of `vllm:`, labelled with the model name,
//! so a vLLM dashboard works after a rename. Gauges are read from the engine's load at each
//! scrape; counters and histograms are fed per request and per iteration.

use lumen_engine::{EngineLoad, IterationStats, RequestTimings};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

pub const RUNNING: &str = "lumen:num_requests_running";
pub const WAITING: &str = "lumen:num_requests_waiting";
pub const KV_USAGE: &str = "lumen:kv_cache_usage_perc";
/// lumen's own: KV blocks held, which is exactly 0 when no request holds any.
pub const KV_USED_BLOCKS: &str = "lumen:kv_cache_used_blocks";
pub const PROMPT_TOKENS: &str = "lumen:prompt_tokens_total";
pub const GENERATION_TOKENS: &str = "lumen:generation_tokens_total";
pub const PREEMPTIONS: &str = "lumen:num_preemptions_total";
pub const REQUEST_SUCCESS: &str = "lumen:request_success_total";
pub const TTFT: &str = "lumen:time_to_first_token_seconds";
pub const ITL: &str = "lumen:inter_token_latency_seconds";
pub const E2E: &str = "lumen:e2e_request_latency_seconds";
pub const QUEUE: &str = "lumen:request_queue_time_seconds";
pub const PREFILL: &str = "lumen:request_prefill_time_seconds";
pub const DECODE: &str = "lumen:request_decode_time_seconds";
pub const ITERATION_TOKENS: &str = "lumen:iteration_tokens_total";

/// vLLM's buckets for request latencies, in seconds.
const LATENCY_BUCKETS: [f64; 20] =
    [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0];
const TOKEN_BUCKETS: [f64; 12] = [1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];

/// Installs the exporter as the process's recorder and describes every metric.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let mut builder = PrometheusBuilder::new();
    for name in [TTFT, ITL, E2E, QUEUE, PREFILL, DECODE] {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_string()), &LATENCY_BUCKETS)?;
    }
    let handle = builder.set_buckets_for_metric(Matcher::Full(ITERATION_TOKENS.to_string()), &TOKEN_BUCKETS)?.install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(RUNNING, "Requests in the batch.");
    describe_gauge!(WAITING, "Requests waiting to be scheduled.");
    describe_gauge!(KV_USAGE, "KV-cache usage: 1 means every block is held.");
    describe_gauge!(KV_USED_BLOCKS, "KV-cache blocks held by requests.");
    describe_counter!(PROMPT_TOKENS, "Prompt tokens of finished requests.");
    describe_counter!(GENERATION_TOKENS, "Generated tokens of finished requests.");
    describe_counter!(PREEMPTIONS, "Preemptions of running requests.");
    describe_counter!(REQUEST_SUCCESS, "Finished requests, by finish reason.");
    describe_histogram!(TTFT, Unit::Seconds, "Time to first token.");
    describe_histogram!(ITL, Unit::Seconds, "Time between consecutive output tokens.");
    describe_histogram!(E2E, Unit::Seconds, "End-to-end request latency.");
    describe_histogram!(QUEUE, Unit::Seconds, "Time a request waited before it was first scheduled.");
    describe_histogram!(PREFILL, Unit::Seconds, "Time from first scheduled to first token.");
    describe_histogram!(DECODE, Unit::Seconds, "Time from first token to the last.");
    describe_histogram!(ITERATION_TOKENS, "Tokens per engine iteration.");
}

/// Sets the gauges from the engine's load, before a scrape.
pub fn record_load(model: &str, load: EngineLoad) {
    let label = [("model_name", model.to_string())];
    gauge!(RUNNING, &label).set(load.running as f64);
    gauge!(WAITING, &label).set(load.waiting as f64);
    gauge!(KV_USED_BLOCKS, &label).set(load.kv_used_blocks as f64);
    gauge!(KV_USAGE, &label).set(load.kv_used_blocks as f64 / load.kv_total_blocks.max(1) as f64);
}

/// Counts one engine iteration.
pub fn record_iteration(model: &str, stats: &IterationStats) {
    let label = [("model_name", model.to_string())];
    histogram!(ITERATION_TOKENS, &label).record((stats.num_ctx_tokens + stats.num_gen_tokens) as f64);
    counter!(PREEMPTIONS, &label).increment(stats.num_preempted_requests as u64);
}

/// What the server saw of one finished request.
pub struct FinishedRequest<'a> {
    pub finish_reason: &'a str,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub timings: &'a RequestTimings,
    /// Seconds between consecutive tokens as the server received them.
    pub inter_token_s: &'a [f64],
}

pub fn record_request(model: &str, r: &FinishedRequest) {
    let label = [("model_name", model.to_string())];
    let seconds = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e9;
    let t = r.timings;
    counter!(PROMPT_TOKENS, &label).increment(r.prompt_tokens as u64);
    counter!(GENERATION_TOKENS, &label).increment(r.output_tokens as u64);
    counter!(REQUEST_SUCCESS, &[("model_name", model.to_string()), ("finished_reason", r.finish_reason.to_string())]).increment(1);
    histogram!(E2E, &label).record(seconds(t.arrival_ns, t.end_ns));
    if let Some(scheduled) = t.first_scheduled_ns {
        histogram!(QUEUE, &label).record(seconds(t.arrival_ns, scheduled));
        if let Some(first) = t.first_token_ns {
            histogram!(PREFILL, &label).record(seconds(scheduled, first));
        }
    }
    if let Some(first) = t.first_token_ns {
        histogram!(TTFT, &label).record(seconds(t.arrival_ns, first));
        histogram!(DECODE, &label).record(seconds(first, t.end_ns));
    }
    let itl = histogram!(ITL, &label);
    for &gap in r.inter_token_s {
        itl.record(gap);
    }
}
