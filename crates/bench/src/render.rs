//! The benchmark report as text, laid out as `trtllm-bench` prints it: ENGINE DETAILS, MACHINE
//! DETAILS, REQUEST DETAILS, WORLD + RUNTIME INFORMATION, PERFORMANCE OVERVIEW (with the streaming
//! breakdowns and the request latency breakdown) and DATASET DETAILS, with its labels, spacing
//! and number formats (Python's `.4f`, `.4E` and `9.2e`). lumen's own lines come after, in a
//! section whose title says they are lumen's. JSON is the [`Report`] itself.

use std::fmt::Write as _;

use anyhow::{Context, Result};

use crate::report::Report;
use crate::stats::PercentileStats;

const RULE: &str = "===========================================================";

/// The title of the section that holds lumen's own lines.
pub const LUMEN_SECTION: &str = "LUMEN DETAILS (lumen's own figures, not in trtllm-bench's report)";

/// How the report names a perfect-router run, in its header and in lumen's section.
pub const PERFECT_ROUTER_ON: &str = "on: balanced routing logits replaced the router's; the outputs are not the model's";

/// Renders the report as `trtllm-bench`-style text, lumen's section last; a perfect-router run is
/// announced above everything.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    if report.lumen.settings.perfect_router == Some(true) {
        let _ = writeln!(out, "WARNING: perfect router {PERFECT_ROUTER_ON}.");
    }
    engine_details(&mut out, report);
    machine_details(&mut out, report);
    request_details(&mut out, report);
    world_details(&mut out, report);
    performance(&mut out, report);
    dataset_details(&mut out, report);
    lumen_details(&mut out, report);
    out
}

/// The report as pretty-printed JSON.
pub fn render_json(report: &Report) -> Result<String> {
    serde_json::to_string_pretty(report).context("serializing the benchmark report")
}

fn header(out: &mut String, title: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{RULE}\n= {title}\n{RULE}");
}

fn engine_details(out: &mut String, report: &Report) {
    let e = &report.engine;
    out.push_str("\n\n");
    header(out, "ENGINE DETAILS");
    let _ = writeln!(out, "Model:\t\t\t{}", e.model);
    let _ = writeln!(out, "Model Path:\t\t{}", e.model_path);
    let _ = writeln!(out, "lumen Version:\t\t{}", e.version);
    let _ = writeln!(out, "Dtype:\t\t\t{}", e.dtype);
    let _ = writeln!(out, "KV Cache Dtype:\t\t{}", e.kv_cache_dtype);
    let _ = writeln!(out, "Quantization:\t\t{}", e.quantization);
    let _ = writeln!(out, "Max Sequence Length:\t{}", e.max_sequence_length);
    out.push('\n');
}

fn machine_details(out: &mut String, report: &Report) {
    header(out, "MACHINE DETAILS ");
    match &report.machine {
        None => out.push_str("No GPU info available\n\n"),
        Some(m) => {
            let clock = m.clocks_mem.map_or_else(|| "N/A".to_owned(), |c| format!("{c:.2} GHz"));
            let _ = writeln!(out, "{}, memory {:.2} GB, {clock}\n", m.name, m.memory_total);
        }
    }
}

fn request_details(out: &mut String, report: &Report) {
    let r = &report.request_info;
    header(out, "REQUEST DETAILS ");
    let _ = writeln!(out, "Number of requests:             {}", r.num_requests);
    let _ = writeln!(out, "Number of concurrent requests:  {:.4}", r.avg_num_concurrent_requests);
    let _ = writeln!(out, "Average Input Length (tokens):  {:.4}", r.avg_input_length);
    let _ = writeln!(out, "Average Output Length (tokens): {:.4}", r.avg_output_length);
}

fn world_details(out: &mut String, report: &Report) {
    let w = &report.world_info.settings;
    let optional = |v: Option<usize>| v.map_or_else(|| "None".to_owned(), |v| v.to_string());
    let kv_percentage = w.kv_cache_percentage.map_or_else(|| "None".to_owned(), |f| format!("{:.2}%", f * 100.0));
    header(out, "WORLD + RUNTIME INFORMATION ");
    let _ = writeln!(out, "TP Size:                {}", w.tp_size);
    let _ = writeln!(out, "PP Size:                {}", w.pp_size);
    let _ = writeln!(out, "EP Size:                {}", optional(w.ep_size));
    let _ = writeln!(out, "Max Runtime Batch Size: {}", w.max_batch_size);
    let _ = writeln!(out, "Max Runtime Tokens:     {}", w.max_num_tokens);
    let _ = writeln!(out, "Scheduling Policy:      {}", w.scheduling_policy);
    let _ = writeln!(out, "KV Memory Percentage:   {kv_percentage}");
    let _ = writeln!(out, "Issue Rate (req/sec):   {}\n", python_sci(report.world_info.issue_rate, 4));
}

fn performance(out: &mut String, report: &Report) {
    let p = &report.performance;
    header(out, "PERFORMANCE OVERVIEW ");
    let line = |out: &mut String, label: &str, value: f64| {
        let _ = writeln!(out, "{label:<50}{value:.4}");
    };
    line(out, "Request Throughput (req/sec):", p.request_throughput_req_s);
    line(out, "Total Output Throughput (tokens/sec):", p.system_output_throughput_tok_s);
    line(out, "Total Token Throughput (tokens/sec):", p.system_total_throughput_tok_s);
    line(out, "Total Latency (ms):", p.total_latency_ms);
    line(out, "Average request latency (ms):", p.avg_request_latency_ms);
    line(out, "Per User Output Throughput [w/ ctx] (tps/user):", p.output_throughput_per_user_tok_s);
    line(out, "Per GPU Output Throughput (tps/gpu):", p.output_throughput_per_gpu_tok_s);
    const SPREAD: [&str; 7] = ["minimum", "maximum", "average", "p50", "p90", "p95", "p99"];
    if let Some(s) = &report.streaming_metrics {
        line(out, "Average time-to-first-token [TTFT] (ms):", s.avg_ttft_ms);
        line(out, "Average time-per-output-token [TPOT] (ms):", s.avg_tpot_ms);
        line(out, "Per User Output Speed (tps/user):", s.token_output_speed_tok_s);
        out.push_str("\n-- Per-Request Time-per-Output-Token [TPOT] Breakdown (ms)\n\n");
        stats_lines(out, "TPOT", &s.tpot_percentiles, &SPREAD);
        out.push_str("\n-- Per-Request Time-to-First-Token [TTFT] Breakdown (ms) \n\n");
        stats_lines(out, "TTFT", &s.ttft_percentiles, &SPREAD);
        out.push_str("\n-- Per-Request Generation Throughput [GTPS] Breakdown (tps/user)\n\n");
        stats_lines(out, "GTPS", &s.gen_tps_percentiles, &SPREAD);
    }
    out.push_str("\n-- Request Latency Breakdown (ms) -----------------------\n\n");
    stats_lines(out, "Latency", &p.request_latency_percentiles_ms, &["p50", "p90", "p95", "p99", "minimum", "maximum", "average"]);
}

/// `[TAG] NAME   : value` lines for `keys`, names upper-cased and padded to 7 as trtllm-bench does.
fn stats_lines(out: &mut String, tag: &str, stats: &PercentileStats, keys: &[&str]) {
    for key in keys {
        let value = match *key {
            "minimum" => stats.minimum,
            "maximum" => stats.maximum,
            "average" => stats.average,
            "p50" => stats.p50,
            "p90" => stats.p90,
            "p95" => stats.p95,
            _ => stats.p99,
        };
        let _ = writeln!(out, "[{tag}] {:<7}: {value:.4}", key.to_uppercase());
    }
}

/// A statistic's row label and how to read it off a column's percentiles.
type StatisticRow = (&'static str, fn(&PercentileStats) -> f64);

fn dataset_details(out: &mut String, report: &Report) {
    let d = &report.dataset;
    out.push('\n');
    header(out, "DATASET DETAILS");
    let _ = writeln!(out, "Dataset Path:         {}", d.dataset_path);
    let _ = writeln!(out, "Number of Sequences:  {}", d.num_requests);
    out.push_str("\n-- Percentiles statistics ---------------------------------\n\n");
    out.push_str("        Input              Output           Seq. Length\n");
    let _ = writeln!(out, "{}", "-".repeat(RULE.len()));
    let rows: [StatisticRow; 7] = [
        ("MIN", |s| s.minimum),
        ("MAX", |s| s.maximum),
        ("AVG", |s| s.average),
        ("P50", |s| s.p50),
        ("P90", |s| s.p90),
        ("P95", |s| s.p95),
        ("P99", |s| s.p99),
    ];
    for (name, pick) in rows {
        let [i, o, s] = [&d.isl_stats, &d.osl_stats, &d.seq_len_stats].map(|stats| dataset_number(pick(stats)));
        let _ = writeln!(out, "{name}:  {i}          {o}          {s}");
    }
    let _ = writeln!(out, "{RULE}");
}

fn lumen_details(out: &mut String, report: &Report) {
    let l = &report.lumen;
    let s = &l.settings;
    out.push('\n');
    header(out, LUMEN_SECTION);
    let line = |out: &mut String, label: &str, value: &str| {
        let _ = writeln!(out, "{label:<40}{value}");
    };
    line(out, "Backend:", &report.engine.backend);
    line(out, "Hardware:", &s.hardware);
    line(out, "Threads:", &s.threads.to_string());
    let tokens = s.kv_cache_blocks.saturating_mul(s.kv_block_size);
    let kv = format!("{} blocks x {} tokens ({tokens} tokens)", s.kv_cache_blocks, s.kv_block_size);
    line(out, "KV Cache:", &kv);
    if let Some(expanded) = s.expanded_kv_cache_tokens {
        let ratio = tokens as f64 / expanded.max(1) as f64;
        line(out, "KV Cache as full K/V:", &format!("{expanded} tokens (latent rows hold {ratio:.1}x as many)"));
    }
    line(out, "Chunked Prefill:", if s.chunked_prefill { "on" } else { "off" });
    line(out, "Overlap Scheduler:", if s.overlap_scheduler { "on" } else { "off" });
    line(out, "Number of warm-up requests:", &s.warmup.to_string());
    line(out, "Concurrency:", &s.concurrency.map_or_else(|| "unlimited".to_owned(), |c| c.to_string()));
    line(out, "Streaming:", if s.streaming { "on" } else { "off" });
    line(out, "EOS ID:", &s.eos_id.map_or_else(|| "ignored".to_owned(), |id| id.to_string()));
    line(out, "Submission Rate (req/sec):", &l.submission_rate_req_s.map_or_else(|| "N/A".to_owned(), |r| format!("{r:.4}")));
    line(out, "Average caller-side overhead (ms):", &format!("{:.4}", l.caller_overhead_ms.average));
    if let Some(on) = s.perfect_router {
        line(out, "Perfect Router:", if on { PERFECT_ROUTER_ON } else { "off (the model's router)" });
    }
    if let Some(mode) = &s.fp8_accumulation {
        line(out, "FP8 GEMM Accumulation:", mode);
    }
    if let Some(t) = l.decode_steps {
        let busy = 100.0 * t.device_ms / t.period_ms.max(f64::MIN_POSITIVE);
        let text = format!("device {:.3} of {:.3} start to start ({busy:.1}% busy; median of {} steps)", t.device_ms, t.period_ms, t.steps);
        line(out, "Decode Step (ms):", &text);
    }
    out.push_str("\n-- Caller-side overhead per request (ms): the caller's latency minus the engine's\n\n");
    stats_lines(out, "Overhead", &l.caller_overhead_ms, &["minimum", "maximum", "average", "p50", "p90", "p95", "p99"]);
    if !l.expert_load.is_empty() {
        out.push_str("\n-- MoE expert load per layer: the busiest expert's load over the mean (1.00 is balanced)\n\n");
        for b in &l.expert_load {
            line(
                out,
                &format!("[Layer {}] max/mean:", b.layer),
                &format!("{:.4} (worst iteration {:.4})", b.max_over_mean, b.worst_max_over_mean),
            );
        }
    }
    let _ = writeln!(out, "{RULE}");
}

/// Python's `format(value, ".{digits}E")`: a mantissa, `E`, a sign and at least two exponent
/// digits (`5.0689E+14`); `INF` and `NAN` for the non-finite.
pub fn python_sci(value: f64, digits: usize) -> String {
    python_exp(value, digits, 'E')
}

fn python_exp(value: f64, digits: usize, marker: char) -> String {
    if value.is_nan() {
        return if marker == 'E' { "NAN" } else { "nan" }.to_owned();
    }
    if value.is_infinite() {
        let inf = if marker == 'E' { "INF" } else { "inf" };
        return if value < 0.0 { format!("-{inf}") } else { inf.to_owned() };
    }
    let rust = format!("{value:.digits$e}");
    let (mantissa, exponent) = rust.split_once('e').unwrap_or((&rust, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}{marker}{sign}{:02}", exponent.abs())
}

/// A dataset table cell as trtllm-bench formats it: `9.2e` from 100000 up, else `9.4f`.
pub fn dataset_number(value: f64) -> String {
    if value >= 100_000.0 {
        format!("{:>9}", python_exp(value, 2, 'e'))
    } else {
        format!("{value:9.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::build_report;
    use crate::report::tests::{dataset, records, setup};

    #[test]
    fn python_number_formats() {
        assert_eq!(python_sci(5.0689e14, 4), "5.0689E+14");
        assert_eq!(python_sci(1.4117e17, 4), "1.4117E+17");
        assert_eq!(python_sci(0.0, 4), "0.0000E+00");
        assert_eq!(python_sci(1.5e-7, 4), "1.5000E-07");
        assert_eq!(python_sci(2.0e123, 1), "2.0E+123");
        assert_eq!(python_sci(f64::INFINITY, 4), "INF");
        assert_eq!(dataset_number(167.0), " 167.0000");
        assert_eq!(dataset_number(1059.0), "1059.0000");
        assert_eq!(dataset_number(123456.0), " 1.23e+05");
        assert_eq!(dataset_number(99999.5), "99999.5000");
    }

    #[test]
    fn sections_in_trtllm_bench_s_order_and_lumen_s_last() {
        let text = render_text(&build_report(&setup(true), &dataset(3), &records()).unwrap());
        let mut from = 0;
        for heading in [
            "= ENGINE DETAILS",
            "= MACHINE DETAILS \n",
            "= REQUEST DETAILS \n",
            "= WORLD + RUNTIME INFORMATION \n",
            "= PERFORMANCE OVERVIEW \n",
            "Request Throughput (req/sec):                     1.2000\n",
            "Total Output Throughput (tokens/sec):             6.0000\n",
            "Total Token Throughput (tokens/sec):              30.0000\n",
            "Total Latency (ms):                               2500.0000\n",
            "Average request latency (ms):                     1333.3333\n",
            "Per User Output Throughput [w/ ctx] (tps/user):",
            "Per GPU Output Throughput (tps/gpu):              6.0000\n",
            "Average time-to-first-token [TTFT] (ms):          266.6667\n",
            "Average time-per-output-token [TPOT] (ms):",
            "Per User Output Speed (tps/user):",
            "-- Per-Request Time-per-Output-Token [TPOT] Breakdown (ms)\n\n[TPOT] MINIMUM: 0.0000\n",
            "-- Per-Request Time-to-First-Token [TTFT] Breakdown (ms) \n\n[TTFT] MINIMUM: 100.0000\n[TTFT] MAXIMUM: 500.0000\n",
            "-- Per-Request Generation Throughput [GTPS] Breakdown (tps/user)\n\n[GTPS] MINIMUM: 0.0000\n",
            "-- Request Latency Breakdown (ms) -----------------------\n\n[Latency] P50    : 1500.0000\n[Latency] P90    : 1500.0000\n",
            "[Latency] MINIMUM: 1000.0000\n[Latency] MAXIMUM: 1500.0000\n[Latency] AVERAGE: 1333.3333\n",
            "= DATASET DETAILS\n",
            "Dataset Path:         data.jsonl\nNumber of Sequences:  3\n",
            "MIN:    10.0000             1.0000            20.0000\n",
            "P99:    30.0000            10.0000            31.0000\n",
            LUMEN_SECTION,
            "Concurrency:                            unlimited\n",
            "[Overhead] AVERAGE: 3.0000\n",
        ] {
            let at = text[from..].find(heading).unwrap_or_else(|| panic!("{heading:?} missing or out of order in\n{text}"));
            from += at + heading.len();
        }
        assert!(!text.contains("FP8 GEMM Accumulation"), "a run without FP8 products names no accumulation:\n{text}");
        assert!(!text.contains("Decode Step"), "a run without device step times has no decode step line:\n{text}");
        for line in [
            "Model:\t\t\ttiny-llama\n",
            "KV Cache Dtype:\t\tNone\n",
            "No GPU info available\n",
            "Number of requests:             3\n",
            "Number of concurrent requests:  1.6000\n",
            "EP Size:                None\n",
            "Scheduling Policy:      GUARANTEED_NO_EVICT\n",
            "KV Memory Percentage:   None\n",
            "Issue Rate (req/sec):   3.3333E+17\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
    }

    #[test]
    fn non_streaming_text_omits_streaming_lines_and_names_the_gpu() {
        let mut s = setup(false);
        s.machine = Some(crate::report::MachineDetails { name: "NVIDIA H200".into(), memory_total: 139.8, clocks_mem: None });
        s.world.kv_cache_percentage = Some(0.9);
        s.lumen.fp8_accumulation = Some("promoted".into());
        s.lumen.overlap_scheduler = true;
        let mut report = build_report(&s, &dataset(3), &records()).unwrap();
        report.lumen.decode_steps = Some(crate::report::DecodeStepTiming { steps: 12, period_ms: 3.36, device_ms: 3.192 });
        let text = render_text(&report);
        let decode = text.lines().find_map(|l| l.strip_prefix("Decode Step (ms):"));
        assert_eq!(decode.map(str::trim), Some("device 3.192 of 3.360 start to start (95.0% busy; median of 12 steps)"), "{text}");
        let accumulation = text.lines().find_map(|l| l.strip_prefix("FP8 GEMM Accumulation:"));
        assert_eq!(accumulation.map(str::trim), Some("promoted"), "{text}");
        let overlap = text.lines().find_map(|l| l.strip_prefix("Overlap Scheduler:"));
        assert_eq!(overlap.map(str::trim), Some("on"), "{text}");
        assert!(!text.contains("TTFT") && !text.contains("GTPS"), "{text}");
        assert!(text.contains("NVIDIA H200, memory 139.80 GB, N/A\n"), "{text}");
        assert!(text.contains("KV Memory Percentage:   90.00%\n"), "{text}");
        assert!(text.contains("[Latency] P99    : 1500.0000\n"), "{text}");
    }
}
