//! The offline benchmark report of `trtllm-bench throughput`/`latency`: the run's setup and the
//! caller-side timing of each measured request go in ([`Setup`], [`RequestRecord`]), a
//! serializable [`Report`] comes out ([`build_report`]) whose JSON keys are trtllm-bench's
//! (`--report-json`), with lumen's own figures under the extra key `lumen`. The text layout lives
//! in [`crate::render`].
//!
//! Per request, with `n` output tokens and times read by the caller:
//!
//! * latency = end − start; TTFT = first chunk − start (streaming only, else 0);
//! * TPOT = (end − first chunk) / (n − 1), and 0 when `n` is 1;
//! * GTPS = (n − 1) / (latency − TTFT), and 0 when `n` is 1;
//! * output throughput per user (with context) = n / latency.
//!
//! Over the run: total latency = last end − first start; request, output and total token
//! throughputs divide by it; per-GPU throughput divides the output throughput by the world size;
//! concurrent requests = Σ latency ÷ total latency; the issue rate is trtllm-bench's figure,
//! (last start − first start) ÷ requests in nanoseconds, times 10⁹. One-token outputs count as 0
//! in the TPOT and GTPS statistics, as they do there.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::dataset::DatasetEntry;
use crate::stats::{PercentileStats, Spread};

const NS_PER_MS: f64 = 1.0e6;
const NS_PER_S: f64 = 1.0e9;

/// What the engine itself stamped on a request, on the same clock as the caller's times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineTimes {
    pub arrival_ns: u64,
    pub first_token_ns: Option<u64>,
    pub end_ns: u64,
}

/// One measured request, timed from the caller's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Read just before the request was submitted.
    pub start_ns: u64,
    /// When the caller received the first streamed chunk (streaming runs only).
    pub first_token_ns: Option<u64>,
    /// When the caller received the final response.
    pub end_ns: u64,
    pub input_len: u32,
    pub output_len: u32,
    pub engine: EngineTimes,
}

/// `engine`: what was benchmarked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineDetails {
    pub model: String,
    pub model_path: String,
    pub version: String,
    pub backend: String,
    /// The type the model computes in.
    pub dtype: String,
    /// `FP8` or `None`, as trtllm-bench names `kv_cache_quant_algo`.
    pub kv_cache_dtype: String,
    /// `FP8` or `None`, as trtllm-bench names `quant_algo`.
    pub quantization: String,
    pub max_sequence_length: usize,
}

/// `machine`: the GPU, absent on the CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineDetails {
    pub name: String,
    /// GiB, which trtllm-bench prints as GB.
    #[serde(rename = "memory.total")]
    pub memory_total: f64,
    /// Memory clock in GHz, when known.
    #[serde(rename = "clocks.mem")]
    pub clocks_mem: Option<f64>,
}

/// The runtime settings of `world_info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldSettings {
    pub tp_size: usize,
    pub pp_size: usize,
    pub ep_size: Option<usize>,
    pub world_size: usize,
    pub max_batch_size: usize,
    pub max_num_tokens: usize,
    pub scheduling_policy: String,
    /// The KV cache's share of free GPU memory, when it was sized that way.
    pub kv_cache_percentage: Option<f64>,
}

/// `world_info`: the settings and the issue rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldInfo {
    #[serde(flatten)]
    pub settings: WorldSettings,
    pub issue_rate: f64,
}

/// How lumen ran the benchmark, beyond what trtllm-bench reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LumenSettings {
    pub hardware: String,
    pub threads: usize,
    pub kv_cache_blocks: usize,
    pub kv_block_size: usize,
    /// Latent attention: the tokens the same cache memory would hold as full keys and values of
    /// every head; `None` for other models.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expanded_kv_cache_tokens: Option<usize>,
    pub chunked_prefill: bool,
    /// Whether each step launched before the one before had finished (the overlap scheduler).
    #[serde(default)]
    pub overlap_scheduler: bool,
    pub warmup: usize,
    /// Most requests in flight; `None` is unlimited.
    pub concurrency: Option<usize>,
    pub streaming: bool,
    /// `None` when EOS was ignored and every request ran to its `output_tokens`.
    pub eos_id: Option<u32>,
    /// Mixture-of-experts models: whether balanced logits replaced the router's (the outputs are
    /// then not the model's); `None` for dense models.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub perfect_router: Option<bool>,
    /// FP8 weights on CUDA: how cuBLASLt's FP8 products accumulate, "fast" (the tensor cores'
    /// own accumulator, the default) or "promoted" (partial sums promoted to f32,
    /// `LUMEN_FP8_FAST_ACCUM=0`); `None` for other runs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fp8_accumulation: Option<String>,
}

/// `lumen`: lumen's settings and its own figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LumenDetails {
    #[serde(flatten)]
    pub settings: LumenSettings,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    /// (requests − 1) ÷ (last start − first start), `None` when all started at once.
    pub submission_rate_req_s: Option<f64>,
    /// Per request, the caller's latency minus the engine's (arrival to end).
    pub caller_overhead_ms: PercentileStats,
    /// Mixture-of-experts models: each MoE layer's expert load over the run; empty for dense ones.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub expert_load: Vec<LayerBalance>,
    /// Where the device times its steps: how much of a decode step's period it spent in the step;
    /// `None` on the CPU or without two consecutive timed decode-only steps.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub decode_steps: Option<DecodeStepTiming>,
}

/// Decode-only steps (no prompt tokens) followed by another step: the medians of the time from
/// such a step's start to the next step's start and of the device's time in the step (CUDA events
/// around it). The difference is what the host adds between steps while the device waits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecodeStepTiming {
    pub steps: usize,
    pub period_ms: f64,
    pub device_ms: f64,
}

/// [`DecodeStepTiming`] over a run's `iterations`, in order.
pub fn decode_step_timing(iterations: &[lumen_engine::IterationStats]) -> Option<DecodeStepTiming> {
    let (periods, device): (Vec<f64>, Vec<f64>) = iterations
        .windows(2)
        .filter(|w| w[0].num_ctx_tokens == 0 && w[0].num_gen_tokens > 0)
        .filter_map(|w| Some((w[1].start_ns.checked_sub(w[0].start_ns)? as f64 / 1e6, w[0].device_step_ms?)))
        .unzip();
    let median = |v: &[f64]| Spread::of(v).percentile(50.0);
    (!periods.is_empty()).then(|| DecodeStepTiming { steps: periods.len(), period_ms: median(&periods), device_ms: median(&device) })
}

/// One MoE layer's expert load over a run: per iteration the busiest expert's load over the mean,
/// averaged with the iterations' assignments as weights, and the worst iteration's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerBalance {
    pub layer: usize,
    pub max_over_mean: f64,
    pub worst_max_over_mean: f64,
}

/// Each MoE layer's [`LayerBalance`] over `iterations` (their `expert_load`); empty for a dense
/// model.
pub fn expert_balance(iterations: &[lumen_engine::IterationStats]) -> Vec<LayerBalance> {
    let layers = iterations.iter().map(|i| i.expert_load.len()).max().unwrap_or(0);
    (0..layers)
        .filter_map(|layer| {
            let (mut weight, mut sum, mut worst) = (0.0, 0.0, 0.0f64);
            for loads in iterations.iter().filter_map(|i| i.expert_load.get(layer)) {
                let Some(ratio) = lumen_trace::model::max_over_mean(loads) else { continue };
                let assignments = loads.iter().map(|&l| l as f64).sum::<f64>();
                weight += assignments;
                sum += ratio * assignments;
                worst = worst.max(ratio);
            }
            (weight > 0.0).then(|| LayerBalance { layer, max_over_mean: sum / weight, worst_max_over_mean: worst })
        })
        .collect()
}

/// Everything about a run except its timings.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    pub engine: EngineDetails,
    pub machine: Option<MachineDetails>,
    pub world: WorldSettings,
    pub lumen: LumenSettings,
}

/// `request_info`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RequestInfo {
    pub num_requests: usize,
    pub avg_num_concurrent_requests: f64,
    pub avg_input_length: f64,
    pub avg_output_length: f64,
}

/// `performance`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Performance {
    pub total_latency_ms: f64,
    pub avg_request_latency_ms: f64,
    pub request_throughput_req_s: f64,
    pub system_output_throughput_tok_s: f64,
    pub system_total_throughput_tok_s: f64,
    pub output_throughput_per_user_tok_s: f64,
    pub output_throughput_per_gpu_tok_s: f64,
    pub request_latency_percentiles_ms: PercentileStats,
}

/// `streaming_metrics`, present in streaming runs only.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StreamingMetrics {
    /// The average GTPS.
    pub token_output_speed_tok_s: f64,
    pub avg_ttft_ms: f64,
    pub avg_tpot_ms: f64,
    pub tpot_percentiles: PercentileStats,
    pub ttft_percentiles: PercentileStats,
    pub gen_tps_percentiles: PercentileStats,
}

/// `dataset`: lengths as the dataset gives them (output lengths are the requested ones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetDetails {
    pub isl_stats: PercentileStats,
    pub osl_stats: PercentileStats,
    pub seq_len_stats: PercentileStats,
    pub num_requests: usize,
    pub dataset_path: String,
    pub max_isl: u64,
    pub max_osl: u64,
    pub max_sequence_length: u64,
    pub avg_isl: u64,
    pub avg_osl: u64,
    pub avg_sequence_length: u64,
}

impl DatasetDetails {
    /// The details of the measured `entries` of the dataset at `path`; `None` when there are none.
    pub fn of(entries: &[DatasetEntry], path: &str) -> Option<DatasetDetails> {
        let isl: Vec<f64> = entries.iter().map(|e| e.input_ids.len() as f64).collect();
        let osl: Vec<f64> = entries.iter().map(|e| f64::from(e.output_tokens)).collect();
        let seq: Vec<f64> = isl.iter().zip(&osl).map(|(i, o)| i + o).collect();
        let (isl_stats, osl_stats, seq_len_stats) =
            (PercentileStats::from_values(&isl)?, PercentileStats::from_values(&osl)?, PercentileStats::from_values(&seq)?);
        Some(DatasetDetails {
            num_requests: entries.len(),
            dataset_path: path.to_owned(),
            max_isl: isl_stats.maximum as u64,
            max_osl: osl_stats.maximum as u64,
            max_sequence_length: seq_len_stats.maximum as u64,
            avg_isl: isl_stats.average as u64,
            avg_osl: osl_stats.average as u64,
            avg_sequence_length: seq_len_stats.average as u64,
            isl_stats,
            osl_stats,
            seq_len_stats,
        })
    }
}

/// A complete benchmark report, keyed as trtllm-bench's `--report_json` plus `lumen`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub engine: EngineDetails,
    pub machine: Option<MachineDetails>,
    pub world_info: WorldInfo,
    pub request_info: RequestInfo,
    pub performance: Performance,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub streaming_metrics: Option<StreamingMetrics>,
    pub dataset: DatasetDetails,
    pub lumen: LumenDetails,
}

/// One request's figures, in nanoseconds and tokens per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestFigures {
    pub latency_ns: f64,
    pub ttft_ns: f64,
    pub tpot_ns: f64,
    pub gtps: f64,
    pub output_tps: f64,
}

impl RequestFigures {
    /// The figures of `r`; `streaming` says whether its first-chunk time counts.
    pub fn of(r: &RequestRecord, streaming: bool) -> RequestFigures {
        let latency_ns = (r.end_ns - r.start_ns) as f64;
        let first = r.first_token_ns.filter(|_| streaming);
        let ttft_ns = first.map_or(0.0, |f| (f - r.start_ns) as f64);
        let generated = f64::from(r.output_len.saturating_sub(1));
        let tpot_ns = match first {
            Some(f) if generated > 0.0 => (r.end_ns - f) as f64 / generated,
            _ => 0.0,
        };
        let generation_ns = latency_ns - ttft_ns;
        let gtps = if generated > 0.0 && generation_ns > 0.0 { generated / (generation_ns / NS_PER_S) } else { 0.0 };
        RequestFigures { latency_ns, ttft_ns, tpot_ns, gtps, output_tps: f64::from(r.output_len) / (latency_ns / NS_PER_S) }
    }
}

/// Builds the report. Fails when there are no records, when the dataset details count other
/// requests, or when a record's times are out of order (see [`check_record`]).
pub fn build_report(setup: &Setup, dataset: &DatasetDetails, records: &[RequestRecord]) -> Result<Report> {
    if records.is_empty() {
        bail!("no request records to report; expected at least one measured request");
    }
    if records.len() != dataset.num_requests {
        bail!(
            "the dataset details count {} requests but {} request records were given; expected one record per measured request",
            dataset.num_requests,
            records.len()
        );
    }
    let streaming = setup.lumen.streaming;
    for (index, record) in records.iter().enumerate() {
        check_record(index, record, streaming)?;
    }
    let n = records.len() as f64;
    let first_start = records.iter().map(|r| r.start_ns).min().unwrap_or_default();
    let last_start = records.iter().map(|r| r.start_ns).max().unwrap_or_default();
    let last_end = records.iter().map(|r| r.end_ns).max().unwrap_or_default();
    // Every record ends after it starts, so the span is positive.
    let total_ns = (last_end - first_start) as f64;
    let total_s = total_ns / NS_PER_S;
    let total_input: u64 = records.iter().map(|r| u64::from(r.input_len)).sum();
    let total_output: u64 = records.iter().map(|r| u64::from(r.output_len)).sum();
    let figures: Vec<RequestFigures> = records.iter().map(|r| RequestFigures::of(r, streaming)).collect();
    let stats = |f: &dyn Fn(&RequestFigures) -> f64, scale: f64| {
        let values: Vec<f64> = figures.iter().map(f).collect();
        // `figures` is not empty, checked above.
        PercentileStats::from_values(&values).map(|s| s.scaled(scale)).unwrap_or_else(|| unreachable!("records are not empty"))
    };
    let latency_ms = stats(&|f| f.latency_ns, 1.0 / NS_PER_MS);
    let output_per_user = stats(&|f| f.output_tps, 1.0);
    let output_tok_s = total_output as f64 / total_s;
    let issue_window_ns = (last_start - first_start) as f64;
    let streaming_metrics = streaming.then(|| {
        let (tpot, ttft, gtps) = (stats(&|f| f.tpot_ns, 1.0 / NS_PER_MS), stats(&|f| f.ttft_ns, 1.0 / NS_PER_MS), stats(&|f| f.gtps, 1.0));
        StreamingMetrics {
            token_output_speed_tok_s: gtps.average,
            avg_ttft_ms: ttft.average,
            avg_tpot_ms: tpot.average,
            tpot_percentiles: tpot,
            ttft_percentiles: ttft,
            gen_tps_percentiles: gtps,
        }
    });
    let overhead: Vec<f64> =
        records.iter().map(|r| ((r.end_ns - r.start_ns) as f64 - (r.engine.end_ns - r.engine.arrival_ns) as f64) / NS_PER_MS).collect();
    Ok(Report {
        engine: setup.engine.clone(),
        machine: setup.machine.clone(),
        world_info: WorldInfo { settings: setup.world.clone(), issue_rate: issue_window_ns / n * NS_PER_S },
        request_info: RequestInfo {
            num_requests: records.len(),
            avg_num_concurrent_requests: latency_ms.average * n * NS_PER_MS / total_ns,
            avg_input_length: total_input as f64 / n,
            avg_output_length: total_output as f64 / n,
        },
        performance: Performance {
            total_latency_ms: total_ns / NS_PER_MS,
            avg_request_latency_ms: latency_ms.average,
            request_throughput_req_s: n / total_s,
            system_output_throughput_tok_s: output_tok_s,
            system_total_throughput_tok_s: (total_input + total_output) as f64 / total_s,
            output_throughput_per_user_tok_s: output_per_user.average,
            output_throughput_per_gpu_tok_s: output_tok_s / setup.world.world_size.max(1) as f64,
            request_latency_percentiles_ms: latency_ms,
        },
        streaming_metrics,
        dataset: dataset.clone(),
        lumen: LumenDetails {
            settings: setup.lumen.clone(),
            total_input_tokens: total_input,
            total_output_tokens: total_output,
            submission_rate_req_s: (records.len() > 1 && issue_window_ns > 0.0).then(|| (n - 1.0) / (issue_window_ns / NS_PER_S)),
            caller_overhead_ms: PercentileStats::from_values(&overhead).unwrap_or_else(|| unreachable!("records are not empty")),
            expert_load: Vec::new(),
            decode_steps: None,
        },
    })
}

/// A record is usable when it ends after it starts, has at least one output token, its engine
/// times lie inside the caller's (arrival not before the start, end not after the end), and, for
/// streaming runs, its first chunk arrived between start and end (strictly before the end when
/// more tokens followed).
pub fn check_record(index: usize, r: &RequestRecord, streaming: bool) -> Result<()> {
    if r.end_ns <= r.start_ns {
        bail!("request record {index}: end_ns {} <= start_ns {}; expected the request to end after it starts", r.end_ns, r.start_ns);
    }
    if r.output_len == 0 {
        bail!("request record {index}: output_len is 0; expected at least one output token");
    }
    if r.engine.arrival_ns < r.start_ns || r.engine.end_ns > r.end_ns || r.engine.end_ns < r.engine.arrival_ns {
        bail!(
            "request record {index}: engine times {}..{} are not inside the caller's {}..{}; expected the engine to see the request \
             after it was submitted and finish it before the caller received it",
            r.engine.arrival_ns,
            r.engine.end_ns,
            r.start_ns,
            r.end_ns
        );
    }
    if !streaming {
        return Ok(());
    }
    let Some(first) = r.first_token_ns else {
        bail!("request record {index}: first_token_ns is missing; expected it in a streaming run");
    };
    if first < r.start_ns || first > r.end_ns {
        bail!(
            "request record {index}: first_token_ns {first} is outside [{}, {}]; expected start <= first token <= end",
            r.start_ns,
            r.end_ns
        );
    }
    if first == r.end_ns && r.output_len > 1 {
        bail!(
            "request record {index}: first_token_ns equals end_ns {} with output_len {}; expected time between the first and last token",
            r.end_ns,
            r.output_len
        );
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    pub(crate) fn setup(streaming: bool) -> Setup {
        Setup {
            engine: EngineDetails {
                model: "tiny-llama".into(),
                model_path: "/models/tiny".into(),
                version: "0.1.0".into(),
                backend: "cpu".into(),
                dtype: "float32".into(),
                kv_cache_dtype: "None".into(),
                quantization: "None".into(),
                max_sequence_length: 1600,
            },
            machine: None,
            world: WorldSettings {
                tp_size: 1,
                pp_size: 1,
                ep_size: None,
                world_size: 1,
                max_batch_size: 8,
                max_num_tokens: 2048,
                scheduling_policy: "GUARANTEED_NO_EVICT".into(),
                kv_cache_percentage: None,
            },
            lumen: LumenSettings {
                hardware: "test-cpu".into(),
                threads: 2,
                kv_cache_blocks: 100,
                kv_block_size: 16,
                expanded_kv_cache_tokens: None,
                chunked_prefill: true,
                overlap_scheduler: false,
                warmup: 2,
                concurrency: None,
                streaming,
                eos_id: None,
                perfect_router: None,
                fp8_accumulation: None,
            },
        }
    }

    /// A record whose engine saw it 1 ms after the start and finished it 2 ms before the end.
    pub(crate) fn record(start_ms: u64, first_ms: u64, end_ms: u64, input_len: u32, output_len: u32) -> RequestRecord {
        RequestRecord {
            start_ns: start_ms * MS,
            first_token_ns: Some(first_ms * MS),
            end_ns: end_ms * MS,
            input_len,
            output_len,
            engine: EngineTimes { arrival_ns: (start_ms + 1) * MS, first_token_ns: Some(first_ms * MS), end_ns: (end_ms - 2) * MS },
        }
    }

    /// r0: 0..1000 ms, first chunk at 100, 10 in / 10 out.
    /// r1: 500..2000 ms, first chunk at 700, 20 in / 4 out.
    /// r2: 1000..2500 ms, first chunk at 1500, 30 in / 1 out (TPOT and GTPS 0).
    pub(crate) fn records() -> Vec<RequestRecord> {
        vec![record(0, 100, 1000, 10, 10), record(500, 700, 2000, 20, 4), record(1000, 1500, 2500, 30, 1)]
    }

    pub(crate) fn dataset(n: usize) -> DatasetDetails {
        let entries: Vec<DatasetEntry> = [(10, 10), (20, 4), (30, 1)]
            .iter()
            .cycle()
            .take(n)
            .map(|&(i, o)| DatasetEntry { task_id: 0, input_ids: vec![1; i], output_tokens: o })
            .collect();
        DatasetDetails::of(&entries, "data.jsonl").unwrap()
    }

    fn close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() <= 1e-9 * expected.abs().max(1.0), "{actual} != {expected}");
    }

    #[test]
    fn decode_step_timing_takes_decode_only_steps_to_the_next_start() {
        let step = |start_ms: u64, ctx: usize, gen: usize, device_ms: Option<f64>| lumen_engine::IterationStats {
            start_ns: start_ms * MS,
            num_ctx_tokens: ctx,
            num_gen_tokens: gen,
            device_step_ms: device_ms,
            ..Default::default()
        };
        let iterations = [
            // A prefill step (left out), three decode steps 4, 3 and 5 ms apart on the device for
            // 3.5, 2.5 and 4.5 ms, and a last one that has no next start.
            step(0, 128, 0, Some(20.0)),
            step(30, 0, 1, Some(3.5)),
            step(34, 0, 1, Some(2.5)),
            step(37, 0, 1, Some(4.5)),
            step(42, 0, 1, Some(3.0)),
        ];
        let t = decode_step_timing(&iterations).unwrap();
        assert_eq!(t.steps, 3);
        close(t.period_ms, 4.0);
        close(t.device_ms, 3.5);
        let untimed: Vec<_> = iterations.iter().map(|i| lumen_engine::IterationStats { device_step_ms: None, ..i.clone() }).collect();
        assert_eq!(decode_step_timing(&untimed), None, "the CPU times no device steps");
        assert_eq!(decode_step_timing(&iterations[..2]), None, "no decode step followed by another");
    }

    #[test]
    fn expert_balance_weights_each_iteration_by_its_assignments() {
        let step = |loads: Vec<Vec<u32>>| lumen_engine::IterationStats { expert_load: loads, ..Default::default() };
        let iterations = [
            // Layer 0: 12 assignments at 2.0× (6 of a mean 3), then 4 at 4.0×; layer 1 even.
            step(vec![vec![6, 3, 3, 0], vec![3, 3, 3, 3]]),
            step(vec![vec![4, 0, 0, 0], vec![1, 1, 1, 1]]),
            // No tokens: no weight. A dense step: nothing.
            step(vec![vec![0, 0, 0, 0], vec![0, 0, 0, 0]]),
            step(vec![]),
        ];
        let b = expert_balance(&iterations);
        // (2.0·12 + 4.0·4) / 16 = 2.5.
        assert_eq!(
            b,
            [
                LayerBalance { layer: 0, max_over_mean: 2.5, worst_max_over_mean: 4.0 },
                LayerBalance { layer: 1, max_over_mean: 1.0, worst_max_over_mean: 1.0 }
            ]
        );
        assert!(expert_balance(&[step(vec![])]).is_empty());
    }

    #[test]
    fn run_wide_formulas() {
        let report = build_report(&setup(false), &dataset(3), &records()).unwrap();
        let p = report.performance;
        close(p.total_latency_ms, 2500.0);
        close(p.request_throughput_req_s, 3.0 / 2.5);
        close(p.system_output_throughput_tok_s, 15.0 / 2.5);
        close(p.system_total_throughput_tok_s, 75.0 / 2.5);
        close(p.output_throughput_per_gpu_tok_s, 15.0 / 2.5);
        close(p.avg_request_latency_ms, (1000.0 + 1500.0 + 1500.0) / 3.0);
        close(p.output_throughput_per_user_tok_s, (10.0 / 1.0 + 4.0 / 1.5 + 1.0 / 1.5) / 3.0);
        let lat = p.request_latency_percentiles_ms;
        assert_eq!((lat.minimum, lat.maximum, lat.p50, lat.p99), (1000.0, 1500.0, 1500.0, 1500.0));
        let r = report.request_info;
        // Σ latency 4000 ms over a total of 2500 ms.
        close(r.avg_num_concurrent_requests, 4000.0 / 2500.0);
        close(r.avg_input_length, 20.0);
        close(r.avg_output_length, 5.0);
        assert_eq!((report.lumen.total_input_tokens, report.lumen.total_output_tokens), (60, 15));
        // Starts at 0, 500 and 1000 ms: a 1e9 ns window over 3 requests, times 1e9.
        close(report.world_info.issue_rate, 1.0e9 / 3.0 * 1.0e9);
        close(report.lumen.submission_rate_req_s.unwrap(), 2.0 / 1.0);
        // The engine saw each request 1 ms late and finished it 2 ms early.
        assert_eq!((report.lumen.caller_overhead_ms.minimum, report.lumen.caller_overhead_ms.maximum), (3.0, 3.0));
        assert!(report.streaming_metrics.is_none());
    }

    #[test]
    fn world_size_divides_the_per_gpu_throughput() {
        let mut s = setup(false);
        s.world.world_size = 4;
        let report = build_report(&s, &dataset(3), &records()).unwrap();
        close(report.performance.output_throughput_per_gpu_tok_s, 15.0 / 2.5 / 4.0);
    }

    #[test]
    fn streaming_formulas_count_one_token_outputs_as_zero() {
        let report = build_report(&setup(true), &dataset(3), &records()).unwrap();
        let s = report.streaming_metrics.unwrap();
        close(s.avg_ttft_ms, (100.0 + 200.0 + 500.0) / 3.0);
        assert_eq!((s.ttft_percentiles.minimum, s.ttft_percentiles.maximum, s.ttft_percentiles.p50), (100.0, 500.0, 200.0));
        // TPOT: r0 (1000 - 100) / 9 = 100 ms; r1 (2000 - 700) / 3 ms; r2 one token: 0.
        let tpot = s.tpot_percentiles;
        assert_eq!(tpot.minimum, 0.0);
        close(tpot.maximum, 1300.0 / 3.0);
        close(tpot.average, (100.0 + 1300.0 / 3.0 + 0.0) / 3.0);
        close(tpot.p50, 100.0);
        close(s.avg_tpot_ms, tpot.average);
        // GTPS: r0 9 / 0.9 s = 10; r1 3 / 1.3 s; r2 0.
        let gtps = s.gen_tps_percentiles;
        assert_eq!(gtps.minimum, 0.0);
        close(gtps.maximum, 10.0);
        close(gtps.average, (10.0 + 3.0 / 1.3 + 0.0) / 3.0);
        close(s.token_output_speed_tok_s, gtps.average);
    }

    #[test]
    fn only_one_token_outputs_give_zero_tpot_and_gtps() {
        let records = vec![record(0, 5, 10, 4, 1), record(0, 10, 10, 4, 1)];
        let report = build_report(&setup(true), &dataset(2), &records).unwrap();
        let s = report.streaming_metrics.unwrap();
        assert_eq!(
            (s.avg_tpot_ms, s.token_output_speed_tok_s, s.tpot_percentiles.maximum, s.gen_tps_percentiles.maximum),
            (0.0, 0.0, 0.0, 0.0)
        );
        close(s.avg_ttft_ms, 7.5);
    }

    #[test]
    fn dataset_details_of_the_entries() {
        let d = dataset(3);
        assert_eq!((d.isl_stats.minimum, d.isl_stats.maximum, d.isl_stats.average), (10.0, 30.0, 20.0));
        assert_eq!((d.osl_stats.minimum, d.osl_stats.p50, d.osl_stats.average), (1.0, 4.0, 5.0));
        assert_eq!((d.seq_len_stats.minimum, d.seq_len_stats.maximum), (20.0, 31.0));
        assert_eq!((d.max_isl, d.max_osl, d.max_sequence_length, d.avg_isl, d.avg_osl, d.avg_sequence_length), (30, 10, 31, 20, 5, 25));
        assert_eq!(DatasetDetails::of(&[], "x"), None);
    }

    #[test]
    fn bad_records_are_rejected() {
        let inside = |r: RequestRecord| RequestRecord {
            engine: EngineTimes { arrival_ns: r.start_ns, first_token_ns: None, end_ns: r.end_ns },
            ..r
        };
        let cases = [
            (vec![], 0, false, "no request records to report"),
            (records(), 4, false, "the dataset details count 4 requests but 3 request records were given"),
            (
                vec![inside(RequestRecord { end_ns: 5 * MS, ..record(5, 5, 6, 1, 1) })],
                1,
                false,
                "request record 0: end_ns 5000000 <= start_ns 5000000",
            ),
            (vec![RequestRecord { output_len: 0, ..record(0, 1, 5, 1, 1) }], 1, false, "request record 0: output_len is 0"),
            (
                vec![RequestRecord { start_ns: 2 * MS, ..record(0, 3, 5, 1, 1) }],
                1,
                false,
                "engine times 1000000..3000000 are not inside the caller's",
            ),
            (
                vec![record(0, 1, 5, 1, 1), RequestRecord { first_token_ns: None, ..record(0, 1, 5, 1, 1) }],
                2,
                true,
                "request record 1: first_token_ns is missing",
            ),
            (
                vec![RequestRecord { first_token_ns: Some(0), ..record(10, 11, 20, 1, 2) }],
                1,
                true,
                "request record 0: first_token_ns 0 is outside",
            ),
            (vec![record(10, 20, 20, 1, 2)], 1, true, "first_token_ns equals end_ns 20000000 with output_len 2"),
        ];
        for (records, n, streaming, expected) in cases {
            let mut d = dataset(n.max(1));
            d.num_requests = n;
            let text = format!("{:#}", build_report(&setup(streaming), &d, &records).unwrap_err());
            assert!(text.contains(expected), "{text:?} should contain {expected:?}");
        }
    }

    #[test]
    fn json_keys_are_trtllm_bench_s() {
        let report = build_report(&setup(true), &dataset(3), &records()).unwrap();
        let value: serde_json::Value = serde_json::to_value(&report).unwrap();
        for (section, keys) in [
            ("engine", &["model", "model_path", "version", "backend", "dtype", "kv_cache_dtype", "quantization"][..]),
            (
                "world_info",
                &[
                    "tp_size",
                    "pp_size",
                    "ep_size",
                    "world_size",
                    "max_batch_size",
                    "max_num_tokens",
                    "scheduling_policy",
                    "kv_cache_percentage",
                    "issue_rate",
                ],
            ),
            ("request_info", &["num_requests", "avg_num_concurrent_requests", "avg_input_length", "avg_output_length"]),
            (
                "performance",
                &[
                    "total_latency_ms",
                    "avg_request_latency_ms",
                    "request_throughput_req_s",
                    "system_output_throughput_tok_s",
                    "system_total_throughput_tok_s",
                    "output_throughput_per_user_tok_s",
                    "output_throughput_per_gpu_tok_s",
                    "request_latency_percentiles_ms",
                ],
            ),
            (
                "streaming_metrics",
                &["token_output_speed_tok_s", "avg_ttft_ms", "avg_tpot_ms", "tpot_percentiles", "ttft_percentiles", "gen_tps_percentiles"],
            ),
            (
                "dataset",
                &[
                    "isl_stats",
                    "osl_stats",
                    "seq_len_stats",
                    "num_requests",
                    "dataset_path",
                    "max_isl",
                    "max_osl",
                    "max_sequence_length",
                    "avg_isl",
                    "avg_osl",
                    "avg_sequence_length",
                ],
            ),
        ] {
            for key in keys {
                assert!(
                    !value[section][key].is_null() || *key == "ep_size" || *key == "kv_cache_percentage",
                    "{section}.{key} missing: {value}"
                );
                assert!(value[section].get(key).is_some(), "{section}.{key} missing: {value}");
            }
        }
        assert_eq!(value["performance"]["request_latency_percentiles_ms"]["minimum"], 1000.0);
        assert!(value.get("machine").is_some(), "machine is null on the CPU, as trtllm-bench writes it without a GPU");
        let back: Report = serde_json::from_value(value).unwrap();
        assert_eq!(back, report);
    }
}
