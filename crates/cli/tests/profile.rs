//! End-to-end runs of `lumen profile`. Without a GPU the command must still run, with its
//! environment and exit status, and leave a loadable trace that says why nothing was collected.
//! On the GPU machine (docs/gpu.md) it profiles `lumen bench throughput` inside a window of
//! iterations and checks that every collected kernel belongs to exactly one of them, and that a
//! profiled process stopped by SIGTERM leaves whole, finished traces.

mod common;

use common::server::Server;
use common::{fixed_length_dataset, gpu_present, lumen, lumen_bin, lumen_env, Scratch};
use lumen_trace::model::GpuOpKind;
use lumen_trace::store::read_trace;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_command_runs_with_its_environment_and_exit_status() {
    let s = Scratch::new("profile-run");
    let out = s.path("run.lumen");
    let run = lumen(&["profile", "-o", &out, "-e", "LUMEN_TEST_VALUE=42", "--", "sh", "-c", "test \"$LUMEN_TEST_VALUE\" = 42 && exit 3"]);
    assert_eq!(run.code, Some(3), "lumen exits with the command's status: {}", run.stderr);
    let trace = read_trace(Path::new(&out)).expect("the trace loads");
    let meta = |k: &str| trace.meta.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(meta("exit_status").as_deref(), Some("3"));
    assert!(meta("command").is_some_and(|c| c.contains("LUMEN_TEST_VALUE")), "{:?}", trace.meta);
    if gpu_machine() {
        assert_eq!(meta("collector").as_deref(), Some("cupti"), "a GPU machine collects: {}", run.stderr);
    } else {
        assert!(run.stderr.contains("cannot collect") && run.stderr.contains("untraced"), "{}", run.stderr);
        assert_eq!(meta("collector").as_deref(), Some("none"));
    }
}

/// Whether this run must behave as on a GPU machine: a CUDA driver is present, or
/// `LUMEN_REQUIRE_GPU=1` says one has to be (so a broken driver fails instead of passing as
/// "no GPU").
fn gpu_machine() -> bool {
    lumen_backend::cuda::driver_present() || lumen_test_support::gpu::gpu_required()
}

#[test]
fn gpu_metrics_name_their_source_or_why_there_are_none() {
    let s = Scratch::new("profile-metrics");
    let out = s.path("metrics.lumen");
    let run = lumen(&["profile", "-o", &out, "--gpu-metrics", "2000", "--", "sh", "-c", "sleep 0.2"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let trace = read_trace(Path::new(&out)).expect("the trace loads");
    let source = trace.meta.iter().find(|(k, _)| k == "gpu_metrics_source").map(|(_, v)| v.clone()).expect("meta names the source");
    if gpu_machine() {
        assert!(
            source.starts_with("nvml") || source.starts_with("cupti-pm-sampling"),
            "a GPU machine samples metrics: {source}\n{}",
            run.stderr
        );
        let names: std::collections::BTreeSet<&str> = trace.counters.iter().map(|c| c.name.as_str()).collect();
        assert!(!names.is_empty(), "{source}: sampled counters expected over 0.2 s at 2 ms");
    } else {
        assert!(source.starts_with("none (") && run.stderr.contains("GPU metrics unavailable"), "{source}\n{}", run.stderr);
    }
}

#[test]
fn bad_options_are_refused_before_the_command_runs() {
    let s = Scratch::new("profile-bad");
    let marker = s.path("ran");
    let touch = format!("touch {marker}");
    lumen(&["profile", "-o", &s.path("a"), "-e", "NOVALUE", "--", "sh", "-c", &touch]).fails_with(1, &["NOVALUE", "NAME=VALUE"]);
    lumen(&["profile", "-o", &s.path("b"), "-t", "cuda,osrt", "--", "sh", "-c", &touch]).fails_with(2, &["osrt"]);
    assert!(!Path::new(&marker).exists(), "a refused profile must not run the command");
    lumen(&["profile", "-o", &s.path("d"), "--gpu-metrics", "5", "--", "sh", "-c", &touch]).fails_with(2, &["--gpu-metrics"]);
    let existing = s.write("c.lumen", "x");
    lumen(&["profile", "-o", &existing, "--", "true"]).fails_with(1, &["exists"]);
}

/// Profiles `lumen bench throughput` with iterations 3-6 as the capture window, tracing CUDA
/// graphs as `mode`; returns the merged trace and the iteration ranges (number, start, end) in it.
fn profile_window(mode: &str) -> (lumen_trace::model::TraceData, Vec<(u64, u64, u64)>, String, lumen_trace::model::TraceData) {
    let s = Scratch::new(&format!("profile-window-{mode}"));
    let data = fixed_length_dataset(&s, "smollm2-135m", "24", "64", "16");
    let out = s.path("window.lumen");
    let bin = lumen_bin();
    let bench = [
        "bench",
        "throughput",
        "--device",
        "cuda",
        "--model",
        "smollm2-135m",
        "--dataset",
        &data,
        "--eos-id",
        "-1",
        "--max-batch-size",
        "8",
    ];
    let mut args = vec!["profile", "-o", &out, "-c", "cudaProfilerApi", "--cuda-graph-trace", mode, "--gpu-metrics", "500", "--", &bin];
    args.extend(bench);
    let recorded = s.path("recorder.lumen");
    let run = lumen_env(&args, &[("LUMEN_PROFILE_START_STOP", "3-6"), ("LUMEN_TRACE", &recorded)]).ok();
    let trace = read_trace(Path::new(&out)).expect("the merged trace loads");
    let recorder = read_trace(Path::new(&recorded)).expect("lumen's own recorder trace loads");
    let iterations: Vec<(u64, u64, u64)> = trace
        .spans
        .iter()
        .filter_map(|s| s.name.strip_prefix("lumen: iter ").map(|rest| (s, rest)))
        .filter_map(|(s, rest)| rest.split(':').next()?.parse().ok().map(|n| (n, s.start_ns, s.end_ns)))
        .collect();
    (trace, iterations, run.stderr, recorder)
}

/// Every GPU operation in the trace was launched inside exactly one of `iterations`: its launch
/// call (same process and correlation id) lies within that iteration's NVTX range.
fn assert_each_op_projects_onto_one_iteration(trace: &lumen_trace::model::TraceData, iterations: &[(u64, u64, u64)]) {
    for op in &trace.gpu_ops {
        let launch = trace
            .api_calls
            .iter()
            .find(|a| a.pid == op.pid && a.correlation == op.correlation)
            .unwrap_or_else(|| panic!("{:?} {} has no API call with correlation {:?}", op.kind, op.name, op.correlation));
        let owners: Vec<&(u64, u64, u64)> = iterations.iter().filter(|(_, s, e)| *s <= launch.start_ns && launch.end_ns <= *e).collect();
        assert_eq!(
            owners.len(),
            1,
            "{:?} {} launched by {} at {} belongs to iterations {owners:?}",
            op.kind,
            op.name,
            launch.name,
            launch.start_ns
        );
        // Each step synchronises before its iteration range ends, so its GPU work ends inside it.
        let (n, _, end) = owners[0];
        assert!(
            launch.start_ns <= op.start_ns && op.start_ns <= op.end_ns && op.end_ns <= *end,
            "{:?} {} of iteration {n} runs {}..{} ns, outside its launch at {} and its iteration's end {end}",
            op.kind,
            op.name,
            op.start_ns,
            op.end_ns,
            launch.start_ns
        );
    }
}

#[test]
fn a_window_of_lumen_iterations_holds_exactly_its_kernels() {
    if !gpu_present() {
        return;
    }
    let (trace, iterations, stderr, recorder) = profile_window("node");
    let numbers: Vec<u64> = iterations.iter().map(|i| i.0).collect();
    assert_eq!(numbers, [3, 4, 5, 6], "NVTX iteration ranges of the window: {stderr}");
    let engine_tid = recorder.spans.iter().find(|s| s.category == "iteration").expect("the recorder has iteration spans").tid;
    assert!(
        trace.spans.iter().all(|s| s.tid == engine_tid) && trace.api_calls.iter().any(|a| a.tid == engine_tid),
        "the collector's NVTX ranges and API calls carry the recorder's OS thread id {engine_tid}"
    );
    let named = trace.threads.iter().find(|t| t.tid == engine_tid).map(|t| t.name.as_str());
    assert!(named.is_some_and(|n| !n.starts_with("thread ")), "the engine thread is named from /proc: {named:?}");
    for (n, start, end) in &iterations {
        let own =
            recorder.spans.iter().find(|s| s.category == "iteration" && s.iteration == Some(*n)).expect("the recorder has the iteration");
        let apart = own.start_ns.abs_diff(*start).max(own.end_ns.abs_diff(*end));
        assert!(apart < 50_000, "iteration {n}: the NVTX range and the recorder's span are {apart} ns apart; one clock expected");
    }
    let kernels: Vec<_> = trace.gpu_ops.iter().filter(|k| k.kind == GpuOpKind::Kernel).collect();
    assert!(kernels.iter().any(|k| k.graph_id.is_some()), "node tracing reports the kernels of graph launches, with their graph ids");
    assert!(!trace.gpu_ops.iter().any(|k| k.kind == GpuOpKind::Graph), "node tracing has no whole-graph records");
    assert_each_op_projects_onto_one_iteration(&trace, &iterations);
    assert!(trace.meta("gpu").is_some_and(|g| g.ends_with("(cuda:0)")), "the collector names the GPU: {:?}", trace.meta("gpu"));
    // The capture window opens at cuProfilerStart, before the window's first iteration range
    // (a cold first run has put more than a millisecond between them), and closes after its last.
    let window = trace.meta("capture_window_times").expect("the merged trace states the capture window");
    let (open, close) = window
        .split_once('-')
        .and_then(|(open, close)| Some((open.parse::<u64>().ok()?, close.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("one capture window as open-close ns expected, got {window:?}"));
    let (first, last) = (iterations[0].1, iterations[iterations.len() - 1].2);
    assert!(open <= first && last <= close, "the capture window {open}..{close} holds the iterations {first}..{last}");
    assert!(!trace.counters.is_empty(), "--gpu-metrics 500 gives metric samples in the window: {stderr}");
    let outside: Vec<u64> = trace.counters.iter().map(|c| c.ts_ns).filter(|&ts| ts < open || ts > close).collect();
    assert!(outside.is_empty(), "GPU metric samples outside the capture window {open}..{close}: {outside:?}; {stderr}");
}

#[test]
fn graph_tracing_in_a_window_gives_one_record_per_graph_launch() {
    if !gpu_present() {
        return;
    }
    let (trace, iterations, stderr, _) = profile_window("graph");
    let numbers: Vec<u64> = iterations.iter().map(|i| i.0).collect();
    assert_eq!(numbers, [3, 4, 5, 6], "NVTX iteration ranges of the window: {stderr}");
    let graphs = trace.gpu_ops.iter().filter(|k| k.kind == GpuOpKind::Graph).count();
    assert_eq!(graphs, 4, "the four decode iterations each replay one graph: {stderr}");
    assert!(!trace.gpu_ops.iter().any(|k| k.kind == GpuOpKind::Kernel && k.graph_id.is_some()), "graph tracing hides node kernels");
    assert_each_op_projects_onto_one_iteration(&trace, &iterations);
}

#[test]
fn a_killed_process_leaves_what_was_flushed_marked_incomplete() {
    if !gpu_present() {
        return;
    }
    let s = Scratch::new("profile-crash");
    let data = fixed_length_dataset(&s, "smollm2-135m", "2000", "128", "512");
    let out = s.path("crash.lumen");
    let log = s.path("iterations.jsonl");
    // Killed once 300 iterations are logged (at most a minute from now) and two flushes passed.
    let bench = format!(
        "{} bench throughput --device cuda --model smollm2-135m --dataset {data} --eos-id -1 --max-batch-size 64 --iteration-log {log} & pid=$!; \
         i=0; while [ \"$(cat {log} 2>/dev/null | wc -l)\" -lt 300 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done; \
         sleep 1.5; kill -KILL $pid; wait $pid",
        lumen_bin()
    );
    let run = lumen(&["profile", "-o", &out, "--cuda-graph-trace", "node", "--", "sh", "-c", &bench]);
    assert_eq!(run.code, Some(128 + 9), "lumen exits as the killed command did: {}", run.stderr);
    assert!(run.stderr.contains("incomplete"), "{}", run.stderr);
    let trace = read_trace(Path::new(&out)).expect("the trace of a crashed process loads");
    assert_eq!(trace.meta("complete"), Some("false"));
    let kernels = trace.gpu_ops.iter().filter(|k| k.kind == GpuOpKind::Kernel).count();
    assert!(kernels > 0 && !trace.api_calls.is_empty(), "what was flushed before the crash is kept ({kernels} kernels)");
}

/// The device fills a buffer and reads it back. With `LUMEN_TEST_CUDA_SECONDS` it goes on for that
/// long: the CUDA program, with every signal at its default action, that the SIGTERM test profiles.
#[test]
fn device_memory_fills_and_reads_back() {
    let Some(gpu) = lumen_test_support::gpu::device_or_skip(lumen_backend::cuda::Gpu::open(0)) else { return };
    let seconds: f64 = std::env::var("LUMEN_TEST_CUDA_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    const BYTES: usize = 1 << 20;
    let buffer = gpu.alloc(BYTES, "test buffer").unwrap();
    let mut host = vec![0u8; BYTES];
    let started = Instant::now();
    for round in 0u64.. {
        let value = (round % 251) as u8;
        gpu.fill(buffer.at(0), value, BYTES).unwrap();
        gpu.download(&mut host, buffer.at(0)).unwrap();
        assert!(host.iter().all(|&b| b == value), "round {round}: the buffer reads back as filled");
        if round >= 3 && started.elapsed().as_secs_f64() >= seconds {
            break;
        }
    }
}

/// Runs `lumen profile -o OUT -- COMMAND` with `env`, sends it SIGTERM once `ready` says so (or
/// after a minute), and returns its exit status and standard error.
/// `lumen profile -c cudaProfilerApi -- lumen serve`: the window that `/start_profile` opens and
/// `/stop_profile` closes is all the collector captures, however many requests run around it.
#[test]
fn a_server_window_from_start_profile_holds_exactly_its_kernels() {
    if !gpu_present() {
        return;
    }
    let s = Scratch::new("profile-serve");
    let out = s.path("serve.lumen");
    let bin = lumen_bin();
    let wrapper = ["profile", "-o", &out, "-c", "cudaProfilerApi", "--cuda-graph-trace", "node", "--", &bin];
    let server = Server::start_under(&wrapper, &["--device", "cuda", "--model", "smollm2-135m"], &[]);
    let request = r#"{"prompt": [1, 2, 3], "max_tokens": 6, "ignore_eos": true}"#;
    let send = |n: usize| (0..n).for_each(|_| assert_eq!(server.post("/v1/completions", request).status, 200));
    send(3);
    let started = server.post("/start_profile", &format!(r#"{{"output_dir": "{}"}}"#, s.path(""))).json();
    let first = started["first_iteration"].as_u64().expect("the window's first iteration");
    send(2);
    let stopped = server.post("/stop_profile", "").json();
    let recorded = stopped["iterations"].as_u64().expect("the window's length");
    assert_eq!(recorded, 12, "two requests of six tokens, one at a time: {stopped}");
    send(2);
    let (code, log) = server.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log}");
    let trace = read_trace(Path::new(&out)).expect("the merged trace loads");
    let iterations: Vec<(u64, u64, u64)> = trace
        .spans
        .iter()
        .filter_map(|s| s.name.strip_prefix("lumen: iter ").map(|rest| (s, rest)))
        .filter_map(|(s, rest)| rest.split(':').next()?.parse().ok().map(|n| (n, s.start_ns, s.end_ns)))
        .collect();
    let numbers: Vec<u64> = iterations.iter().map(|i| i.0).collect();
    assert_eq!(numbers, (first..first + recorded).collect::<Vec<_>>(), "exactly the window's iterations: {log}");
    assert!(trace.gpu_ops.iter().any(|k| k.kind == GpuOpKind::Kernel), "the window's kernels were collected: {log}");
    assert_each_op_projects_onto_one_iteration(&trace, &iterations);
}

fn profile_until_sigterm(out: &str, command: &[&str], env: &[(&str, &str)], ready: impl Fn() -> bool) -> (Option<i32>, String) {
    let mut cmd = Command::new(lumen_bin());
    cmd.args(["profile", "-o", out, "--"]).args(command).env_remove("LUMEN_MODEL").stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("lumen starts");
    let started = Instant::now();
    while !ready() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let run = child.wait_with_output().unwrap();
    (run.status.code(), String::from_utf8_lossy(&run.stderr).into_owned())
}

/// A CUDA program that leaves SIGTERM at its default action would die without running `atexit`:
/// the collector catches the signal, finishes the process's trace and ends it by the same signal.
#[test]
fn a_program_without_signal_handlers_finishes_its_trace_on_sigterm() {
    if !gpu_present() {
        return;
    }
    let s = Scratch::new("profile-sigterm-plain");
    let out = s.path("plain.lumen");
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let command = [exe.to_str().unwrap(), "device_memory_fills_and_reads_back", "--exact", "--nocapture"];
    let (code, stderr) =
        profile_until_sigterm(&out, &command, &[("LUMEN_TEST_CUDA_SECONDS", "120")], || started.elapsed() > Duration::from_secs(4));
    assert_eq!(code, Some(128 + libc::SIGTERM), "the program ends by SIGTERM: {stderr}");
    assert!(!stderr.contains("incomplete"), "{stderr}");
    let trace = read_trace(Path::new(&out)).expect("the trace loads");
    assert_eq!(trace.meta("complete"), Some("true"), "the collector finished the trace: {stderr}");
    let memsets = trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Memset).count();
    assert!(memsets > 3, "the fills ran up to the signal are kept ({memsets}): {stderr}");
}

/// `lumen profile` of a benchmark with `LUMEN_TRACE`, stopped by SIGTERM: the benchmark stops at an
/// iteration boundary, its own trace (JSON, or `.lumen` standing alone) holds the iterations that
/// ran, and the collector's trace is finished.
#[test]
fn a_profiled_benchmark_stopped_by_sigterm_leaves_whole_traces() {
    if !gpu_present() {
        return;
    }
    for name in ["bench.json", "bench.lumen"] {
        let s = Scratch::new("profile-sigterm-bench");
        let data = fixed_length_dataset(&s, "smollm2-135m", "4000", "128", "512");
        let (out, log, own) = (s.path("profiled.lumen"), s.path("iterations.jsonl"), s.path(name));
        let lumen = lumen_bin();
        let bench = [lumen.as_str(), "bench", "throughput", "--device", "cuda", "--model", "smollm2-135m", "--dataset", &data];
        let bench: Vec<&str> = bench.into_iter().chain(["--eos-id", "-1", "--max-batch-size", "64", "--iteration-log", &log]).collect();
        let logged = || std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() >= 50);
        let (code, stderr) = profile_until_sigterm(&out, &bench, &[("LUMEN_TRACE", &own)], logged);
        assert_eq!(code, Some(128 + libc::SIGTERM), "{name}: {stderr}");
        assert!(stderr.contains("stopped by SIGTERM at an iteration boundary"), "{stderr}");
        assert!(!stderr.contains("incomplete"), "{stderr}");
        let iterations = if name.ends_with(".json") {
            let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&own).unwrap()).expect("whole JSON");
            json["traceEvents"].as_array().unwrap().iter().filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with("iter "))).count()
        } else {
            let alone = s.path("copy.lumen");
            std::fs::copy(&own, &alone).unwrap();
            let t = read_trace(Path::new(&alone)).expect("the .lumen file alone opens");
            assert_eq!(t.meta("complete"), Some("true"));
            t.iterations.len()
        };
        assert!(iterations >= 50, "{name}: the iterations that ran are in the benchmark's trace ({iterations}): {stderr}");
        let profiled = read_trace(Path::new(&out)).expect("the profile loads");
        assert_eq!(profiled.meta("complete"), Some("true"), "{stderr}");
        assert!(profiled.gpu_ops.iter().any(|op| op.kind == GpuOpKind::Kernel), "kernels collected: {stderr}");
    }
}
