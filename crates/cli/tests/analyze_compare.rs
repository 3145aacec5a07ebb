//! End-to-end runs of `lumen analyze NEW --compare BASE`: two traces written through the store,
//! the new one 20% slower per iteration with a slower, a new and a vanished kernel and a longer
//! forward phase, give exactly those changes in the printed comparison and under `comparison` in
//! the JSON; two recorder traces of real runs compare figure for figure with their rows; a missing
//! or unreadable BASE is refused naming it.

mod common;

use common::{fixed_length_dataset, lumen, Scratch};
use lumen_test_support::rows::{iteration, write_trace, Origin};
use lumen_trace::model::{GpuOpKind, IterationRow, TraceData};
use lumen_trace::store::read_trace;
use serde_json::Value;
use std::path::Path;

const ENGINE: Origin = Origin { pid: 77, tid: 78, device: 0, stream: 7 };
const ITERATIONS: u64 = 25;
const BASE_KERNELS: &[(&str, u64)] = &[("sm90_xmma_gemm_bf16", 300_000), ("flash_fwd_kernel", 100_000), ("rope_kernel", 40_000)];
const NEW_KERNELS: &[(&str, u64)] = &[("sm90_xmma_gemm_bf16", 300_000), ("flash_fwd_kernel", 150_000), ("fused_rope_norm", 30_000)];

/// `ITERATIONS` iterations of about `iteration_ms` (the same ±2% pattern in both traces), each a
/// 1 ms schedule, a `forward_ns` forward and a 0.5 ms sample phase, its kernels launched one by
/// one from the forward's start.
fn write_run(path: &str, iteration_ms: f64, forward_ns: u64, kernels: &[(&str, u64)]) {
    let mut trace = TraceData {
        meta: vec![("gpu".into(), "NVIDIA H100 80GB HBM3".into())],
        processes: vec![ENGINE.process("lumen bench")],
        threads: vec![ENGINE.thread("engine")],
        ..TraceData::default()
    };
    let mut start = 1_000_000;
    for i in 0..ITERATIONS {
        let host_ms = iteration_ms * (1.0 + 0.01 * ((i * 7 % 5) as f64 - 2.0));
        let end = start + (host_ms * 1e6) as u64;
        let forward = start + 1_000_000;
        trace.spans.extend([
            ENGINE.phase("schedule", start, forward, i),
            ENGINE.phase("forward", forward, forward + forward_ns, i),
            ENGINE.phase("sample", forward + forward_ns, forward + forward_ns + 500_000, i),
        ]);
        trace.iterations.push(IterationRow {
            ctx_reqs: 0,
            gen_reqs: 4,
            ctx_tokens: 0,
            gen_tokens: 4,
            kv_used_blocks: 8,
            kv_total_blocks: 64,
            ..iteration(i, start, end, host_ms)
        });
        let mut at = forward;
        for (k, &(name, ns)) in kernels.iter().enumerate() {
            let correlation = i * 10 + k as u64;
            trace.api_calls.push(ENGINE.api("cuLaunchKernel", at - 8_000, at - 3_000, correlation));
            trace.gpu_ops.push(ENGINE.gpu_op(GpuOpKind::Kernel, name, at, at + ns, correlation));
            at += ns + 10_000;
        }
        start = end + 1_000_000;
    }
    write_trace(path, &trace);
}

fn json(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn figure<'a>(comparison: &'a Value, name: &str) -> &'a Value {
    let figures = comparison["figures"].as_array().expect("the comparison lists its figures");
    &figures.iter().find(|f| f["name"] == name).unwrap_or_else(|| panic!("no figure {name}: {comparison}"))["change"]
}

#[test]
fn a_slower_trace_shows_what_changed_in_the_report_and_the_json() {
    let s = Scratch::new("analyze-compare");
    let (base, new, out) = (s.path("base.lumen"), s.path("new.lumen"), s.path("out.json"));
    write_run(&base, 10.0, 5_000_000, BASE_KERNELS);
    write_run(&new, 12.0, 7_000_000, NEW_KERNELS);
    let run = lumen(&["analyze", &new, "--compare", &base, "--json", &out]).ok();

    let (report, comparison) = run.stdout.split_once("== Comparison: verdict ==").expect("the comparison follows the report");
    assert!(report.starts_with("== Diagnosis ==") && report.contains("== Memory =="), "{report}");
    for expected in [
        "slower by 20.0% (95% CI ",
        // 10 and 12 ms iterations of 4 requests each, per request.
        "25 iterations (iteration rows), median 2.500 ms",
        "25 iterations (iteration rows), median 3.000 ms",
        "high: at least 20 iterations in each trace",
        "== Comparison: headline figures ==",
        "2 in both (1 unchanged); 1 appeared, 1 disappeared, 1 slower, 0 faster",
        "== Comparison: CPU phases ==",
        "per iteration, over      25 base and 25 new iterations",
    ] {
        assert!(comparison.contains(expected), "{expected:?} missing:\n{comparison}");
    }
    let words = |prefix: &str| -> Vec<String> {
        let row = comparison.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no row {prefix:?}:\n{comparison}"));
        row[prefix.len()..].split_whitespace().map(str::to_string).collect()
    };
    assert_eq!(words("  iteration host time, median "), ["10.000", "ms", "12.000", "ms", "+2.000", "ms", "+20.0%", "worse"]);
    assert_eq!(words("  forward "), ["5.000", "ms", "7.000", "ms", "+2.000", "ms", "+40.0%"]);
    assert_eq!(words("  slower "), ["25→25", "100.0", "µs", "150.0", "µs", "+50.0%", "+1.250", "ms", "flash_fwd_kernel"]);
    assert_eq!(words("  appeared "), ["-→25", "-", "30.0", "µs", "-", "+750.0", "µs", "fused_rope_norm"]);
    assert_eq!(words("  disappeared "), ["25→-", "40.0", "µs", "-", "-", "-1.000", "ms", "rope_kernel"]);
    for l in comparison.lines() {
        assert!(l.chars().count() <= 100, "wider than 100 columns: {l}");
    }

    let a = json(&out);
    assert_eq!(a["overview"]["iterations"]["available"]["count"], ITERATIONS, "the analysis of NEW is still there");
    let c = &a["comparison"];
    let v = &c["verdict"]["available"];
    assert_eq!(
        (v["outcome"].as_str(), v["confidence"].as_str(), v["metric"].as_str()),
        (Some("slower"), Some("high"), Some("host_time_per_request"))
    );
    assert!((v["median_change"].as_f64().unwrap() - 0.2).abs() < 1e-9, "{v}");
    let (low, high) = (v["interval_low"].as_f64().unwrap(), v["interval_high"].as_f64().unwrap());
    assert!((0.15..=0.2).contains(&low) && (0.2..0.25).contains(&high), "{v}");
    let median = &figure(c, "iteration host time, median")["available"];
    assert_eq!((median["base"].as_f64(), median["new"].as_f64(), median["assessment"].as_str()), (Some(10.0), Some(12.0), Some("worse")));
    let kernel_time = &figure(c, "kernel time")["available"];
    let total = |kernels: &[(&str, u64)]| (kernels.iter().map(|k| k.1).sum::<u64>() * ITERATIONS) as f64;
    assert_eq!((kernel_time["base"].as_f64(), kernel_time["new"].as_f64()), (Some(total(BASE_KERNELS)), Some(total(NEW_KERNELS))));
    assert_eq!(figure(c, "requests")["not_available"], "both traces: the trace has no request rows");
    let changes: Vec<(&str, &str, f64)> = c["kernels"]["available"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap(), k["change"].as_str().unwrap(), k["impact_ns"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        changes,
        [
            ("flash_fwd_kernel", "slower", 1_250_000.0),
            ("rope_kernel", "disappeared", -1_000_000.0),
            ("fused_rope_norm", "appeared", 750_000.0)
        ]
    );
    let forward = &c["phases"]["available"]["phases"][0];
    assert_eq!((forward["name"].as_str(), forward["delta_ns"].as_f64()), (Some("forward"), Some(2e6)));
}

#[test]
fn two_recorded_runs_compare_figure_for_figure_with_their_rows() {
    let s = Scratch::new("analyze-compare-recorded");
    let data = fixed_length_dataset(&s, "tiny", "12", "24", "8");
    let (base, new, out) = (s.path("base.lumen"), s.path("new.lumen"), s.path("out.json"));
    for trace in [&base, &new] {
        lumen(&["bench", "throughput", "--model", "tiny", "--dataset", &data, "--trace", trace, "--warmup", "0"]).ok();
    }
    let run = lumen(&["analyze", &new, "--compare", &base, "--json", &out]).ok();
    let c = &json(&out)["comparison"];
    let (base_rows, new_rows) = (read_trace(Path::new(&base)).unwrap(), read_trace(Path::new(&new)).unwrap());

    let iterations = &figure(c, "iterations")["available"];
    let count = |rows: &TraceData| Some(rows.iterations.len() as f64);
    assert_eq!((iterations["base"].as_f64(), iterations["new"].as_f64()), (count(&base_rows), count(&new_rows)));
    let requests = &figure(c, "requests")["available"];
    assert_eq!(
        (requests["base"].as_f64(), requests["new"].as_f64(), requests["assessment"].as_str()),
        (Some(12.0), Some(12.0), Some("same"))
    );
    let decode = &figure(c, "decode tokens")["available"];
    let decoded = |rows: &TraceData| Some(rows.iterations.iter().map(|i| i.gen_tokens).sum::<u64>() as f64);
    assert_eq!((decode["base"].as_f64(), decode["new"].as_f64()), (decoded(&base_rows), decoded(&new_rows)));
    assert!(figure(c, "kernel time")["not_available"]
        .as_str()
        .is_some_and(|why| why.starts_with("both traces: the trace has no GPU operations")));
    assert!(c["kernels"]["not_available"].as_str().is_some_and(|why| why.contains("lumen profile")), "{}", c["kernels"]);

    let v = &c["verdict"]["available"];
    let median = |rows: &TraceData| {
        let mut host: Vec<f64> = rows.iterations.iter().map(|i| i.host_ms / (i.ctx_reqs + i.gen_reqs) as f64).collect();
        host.sort_by(f64::total_cmp);
        let n = host.len();
        if n % 2 == 1 {
            host[n / 2]
        } else {
            (host[n / 2 - 1] + host[n / 2]) / 2.0
        }
    };
    assert_eq!(v["base"]["iterations"], base_rows.iterations.len());
    assert_eq!(v["new"]["iterations"], new_rows.iterations.len());
    assert!((v["base"]["median_ms"].as_f64().unwrap() - median(&base_rows)).abs() < 1e-9, "{v}");
    assert!((v["new"]["median_ms"].as_f64().unwrap() - median(&new_rows)).abs() < 1e-9, "{v}");
    let summary = v["summary"].as_str().unwrap();
    let expected_start = match v["outcome"].as_str().unwrap() {
        "slower" => "slower by ",
        "faster" => "faster by ",
        _ => "no significant difference (median ",
    };
    assert!(summary.starts_with(expected_start), "{summary} for {}", v["outcome"]);
    let printed = run.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(printed.contains(&format!("verdict {summary}")), "{}", run.stdout);
    let phases = c["phases"]["available"]["phases"].as_array().expect("both runs record their phases");
    assert!(phases.iter().any(|p| p["name"] == "forward"), "{phases:?}");
}

#[test]
fn a_missing_or_unreadable_base_is_refused_naming_it() {
    let s = Scratch::new("analyze-compare-bad");
    let new = s.path("new.lumen");
    write_run(&new, 10.0, 5_000_000, BASE_KERNELS);
    lumen(&["analyze", &new, "--compare", &s.path("missing.lumen")])
        .fails_with(1, &["base trace", "missing.lumen", "--compare", "does not exist"]);
    let text = s.write("text.lumen", "not a trace");
    lumen(&["analyze", &new, "--compare", &text]).fails_with(1, &["base trace (--compare)", "text.lumen", "not a lumen trace"]);
}
