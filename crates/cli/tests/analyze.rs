//! End-to-end runs of `lumen analyze` on traces lumen itself recorded: the figures it prints and
//! writes as JSON come from the trace's rows, sections without data say why, and bad input is
//! refused with a message naming it.

mod common;

use common::{fixed_length_dataset, lumen, Scratch};
use lumen_trace::store::read_trace;
use std::path::Path;

/// A recorder trace of a real benchmark run on the `tiny` preset.
fn recorded_run(s: &Scratch) -> String {
    let data = fixed_length_dataset(s, "tiny", "12", "24", "8");
    let trace = s.path("run.lumen");
    lumen(&["bench", "throughput", "--model", "tiny", "--dataset", &data, "--trace", &trace, "--warmup", "0"]).ok();
    trace
}

#[test]
fn a_recorder_trace_gives_its_iterations_and_phases_and_says_what_it_lacks() {
    let s = Scratch::new("analyze-recorder");
    let trace = recorded_run(&s);
    let json = s.path("analysis.json");
    let run = lumen(&["analyze", &trace, "--json", &json]).ok();
    assert!(run.stdout.starts_with("== Diagnosis =="), "{}", run.stdout);
    for heading in ["== Overview ==", "== GPU utilisation ==", "== Kernels ==", "== Iterations ==", "== CPU phases ==", "== Memory =="] {
        assert!(run.stdout.contains(heading), "{heading} missing:\n{}", run.stdout);
    }
    assert!(run.stdout.contains("not available: the trace has no GPU operations"), "{}", run.stdout);

    let rows = read_trace(Path::new(&trace)).unwrap();
    let a: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let per_iteration = a["iterations"]["available"]["per_iteration"].as_array().expect("iterations are available");
    assert_eq!(per_iteration.len(), rows.iterations.len());
    for (row, figure) in rows.iterations.iter().zip(per_iteration) {
        assert_eq!(figure["iter"], row.iter);
        assert_eq!(figure["gen_tokens"], row.gen_tokens);
        assert!((figure["host_ms"].as_f64().unwrap() - row.host_ms).abs() < 1e-9);
    }
    let phases = a["phases"]["phases"]["available"]["phases"].as_array().expect("phases are available");
    let forward = phases.iter().find(|p| p["name"] == "forward").expect("the forward phase is measured");
    let recorded: u64 = rows.spans.iter().filter(|s| s.category == "phase" && s.name == "forward").map(|s| s.end_ns - s.start_ns).sum();
    assert_eq!(forward["total_ns"], recorded);
    assert_eq!(forward["count"], rows.iterations.len());
    assert!(a["gpu"]["not_available"].as_str().is_some_and(|why| why.contains("lumen profile")), "{}", a["gpu"]);
    assert_eq!(a["overview"]["requests"]["available"]["count"], 12, "{}", a["overview"]);
    let unavailable = a["diagnosis"]["not_available"].as_array().expect("the diagnosis is in the JSON");
    assert!(unavailable.iter().any(|u| u["pattern"] == "low GPU utilisation"), "{}", a["diagnosis"]);
}

#[test]
fn explain_prints_every_pattern_and_threshold_after_the_report() {
    let s = Scratch::new("analyze-explain");
    let trace = recorded_run(&s);
    let run = lumen(&["analyze", &trace, "--explain"]).ok();
    let (report, explained) = run.stdout.split_once("== Diagnosis thresholds ==").expect("the thresholds follow the report");
    assert!(run.stdout.lines().all(|l| l.chars().count() <= 100), "the report and the tables fit 100 columns:\n{}", run.stdout);
    // Long cells wrap onto continuation lines: compare with the line breaks taken out.
    let explained = explained.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(report.starts_with("== Diagnosis ==") && report.contains("== Memory =="), "{report}");
    for t in lumen_analyze::diagnose::THRESHOLDS {
        assert!(explained.contains(t.name) && explained.contains(&t.value.to_string()), "{} missing:\n{explained}", t.name);
    }
    for p in lumen_analyze::diagnose::PATTERNS {
        assert!(explained.contains(p.name) && explained.contains(p.fires_when), "{} missing:\n{explained}", p.name);
    }
    for flag in ["--max-batch-size", "--cuda-graph-max-batch-size N", "LOW_BUSY", "0.5", "SHORT_KERNEL_NS", "10000", "MoE imbalance"] {
        assert!(explained.contains(flag), "{flag} missing:\n{explained}");
    }
}

#[test]
fn a_reader_that_stops_early_ends_lumen_quietly() {
    let s = Scratch::new("analyze-pipe");
    let trace = recorded_run(&s);
    for command in [format!("analyze {trace}"), format!("trace info {trace}")] {
        // The reader exits at once; lumen's report, written after reading the trace, meets a
        // closed pipe.
        let script = format!("{} {command} | true; echo \"status ${{PIPESTATUS[0]}}\"", common::lumen_bin());
        let out = std::process::Command::new("bash").args(["-c", &script]).output().expect("run bash");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "lumen {command}: {stderr}");
        assert!(stdout.trim() == "status 0" || stdout.trim() == "status 141", "lumen {command} ended with {stdout}: {stderr}");
    }
}

#[test]
fn bad_input_is_refused_with_what_was_expected() {
    let s = Scratch::new("analyze-bad");
    lumen(&["analyze", &s.path("missing.lumen")]).fails_with(1, &["missing.lumen", "does not exist"]);
    let not_a_trace = s.write("text.lumen", "not a trace");
    lumen(&["analyze", &not_a_trace]).fails_with(1, &["text.lumen"]);
    let trace = recorded_run(&s);
    let rules = s.write("rules.txt", "attention=my_attn\nthis line has no equals sign\n");
    lumen(&["analyze", &trace, "--kernel-classes", &rules]).fails_with(1, &["line 2", "CLASS=PATTERN"]);
    lumen(&["analyze", &trace, "--buckets", "0"]).fails_with(2, &["--buckets"]);
}

#[test]
fn an_unfinished_trace_is_analysed_with_a_warning() {
    let s = Scratch::new("analyze-unfinished");
    let path = s.path("cut.lumen");
    let rows = lumen_trace::model::TraceData {
        gpu_ops: vec![lumen_test_support::rows::kernel(1_000, 2_000, 1), lumen_test_support::rows::kernel(3_000, 5_000, 1)],
        ..Default::default()
    };
    lumen_test_support::rows::write_unfinished_trace(&path, &rows);
    let run = lumen(&["analyze", &path]).ok();
    assert!(run.stdout.starts_with("WARNING: the trace was never finished (meta complete=false)"), "{}", run.stdout);
    lumen_test_support::rows::write_trace(s.path("whole.lumen"), &rows);
    let whole = lumen(&["analyze", &s.path("whole.lumen")]).ok();
    assert!(!whole.stdout.contains("never finished"), "{}", whole.stdout);
}

#[test]
fn rows_with_impossible_times_are_left_out_with_a_warning() {
    let s = Scratch::new("analyze-impossible");
    let path = s.path("odd.lumen");
    let backwards = lumen_trace::model::GpuOpRow { end_ns: 1_000, ..lumen_test_support::rows::kernel(9_000, 10_000, 1) };
    let rows =
        lumen_trace::model::TraceData { gpu_ops: vec![lumen_test_support::rows::kernel(1_000, 2_000, 1), backwards], ..Default::default() };
    lumen_test_support::rows::write_trace(&path, &rows);
    let run = lumen(&["analyze", &path]).ok();
    assert!(run.stdout.starts_with("WARNING: the reader left out 1 GPU operations with impossible times or values"), "{}", run.stdout);
}

/// A real run's iteration rows (attention FLOPs among their FLOPs) with kernels placed in each
/// iteration as a profile of it on an H200 would hold them: attention half of each window, the
/// products three tenths, a norm the rest. `tiny`'s work is a few MFLOP an iteration, so both
/// classes run far below their ceilings, and attention, with the most time above its speed of
/// light, is named.
#[test]
fn the_engine_work_by_kernel_class_names_the_class_furthest_from_its_ceiling() {
    let s = Scratch::new("analyze-class-work");
    let mut rows = read_trace(Path::new(&recorded_run(&s))).unwrap();
    rows.meta.push(("gpu".into(), "NVIDIA H200".into()));
    let mut correlation = 0;
    for it in rows.iterations.clone() {
        let tenth = (it.end_ns - it.start_ns) / 10;
        let kernels = [("attention_prefill_hd64", 0, 5), ("nvjet_sm90_tst_128x128", 5, 8), ("add_rms_norm", 8, 10)];
        for (name, from, to) in kernels {
            correlation += 1;
            let (start, end) = (it.start_ns + from * tenth, it.start_ns + to * tenth);
            rows.gpu_ops.push(lumen_test_support::rows::named(name, start, end, correlation));
        }
    }
    let path = s.path("with-kernels.lumen");
    lumen_test_support::rows::write_trace(&path, &rows);
    let json = s.path("analysis.json");
    let run = lumen(&["analyze", &path, "--json", &json]).ok();
    assert!(run.stdout.lines().all(|l| l.chars().count() <= 100), "the report fits 100 columns:\n{}", run.stdout);
    for want in ["kernel class far from its ceiling", "attention kernels: 50.0% of the kernel time", "engine work: attention"] {
        assert!(run.stdout.contains(want), "{want} missing:\n{}", run.stdout);
    }
    let a: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let classes = a["speed_of_light"]["class_work"]["available"].as_array().expect("the engine's work by kernel class");
    let names: Vec<_> = classes.iter().map(|c| (c["name"].as_str().unwrap(), c["kernels"].as_u64().unwrap())).collect();
    let n = rows.iterations.len() as u64;
    assert_eq!(names, [("attention", n), ("products", n), ("the rest", n)]);
    let attention_flops: f64 = rows.iterations.iter().map(|r| r.attention_flops.unwrap()).sum();
    let attention_s = classes[0]["busy_ns"].as_f64().unwrap() / 1e9;
    assert!((classes[0]["tflops"].as_f64().unwrap() - attention_flops / attention_s / 1e12).abs() < 1e-12, "{}", classes[0]);
}
