//! End-to-end GPU traces through the `lumen` binary, without a GPU: two per-process traces written
//! with the trace crate (an engine process that finished, a worker whose writer was cut short, both
//! with CUDA API calls and GPU ops) are joined by `lumen trace merge`, described by `lumen trace
//! info` and exported by `lumen trace export` to Chrome JSON and Perfetto, whose GPU tracks and
//! API-call-to-GPU-op flows are checked; bad merges fail with one error line naming the input.

mod common;

use common::{lumen, Scratch};
use lumen_test_support::rows::{iteration, write_trace, write_unfinished_trace, Origin};
use lumen_trace::export::perfetto::{decode_packets, EventType};
use lumen_trace::model::{ApiCallRow, GpuOpKind, GpuOpRow, IterationRow, TraceData};
use lumen_trace::store::read_trace;
use std::collections::HashMap;
use std::path::Path;

const ENGINE: Origin = Origin { pid: 4242, tid: 4243, device: 0, stream: 7 };
const WORKER: Origin = Origin { pid: 5000, tid: 5001, device: 0, stream: 3 };

/// An op of 800 ns on `process`'s stream, with the fields its kind has set.
fn op(kind: GpuOpKind, process: Origin, correlation: u64, start_ns: u64) -> GpuOpRow {
    let name = match kind {
        GpuOpKind::Kernel => format!("gemm_{}", correlation % 2),
        other => other.to_string(),
    };
    GpuOpRow {
        grid: (kind == GpuOpKind::Kernel).then_some([64, 1, 1]),
        block: (kind == GpuOpKind::Kernel).then_some([128, 1, 1]),
        registers: (kind == GpuOpKind::Kernel).then_some(72),
        bytes: (kind == GpuOpKind::Memcpy).then_some(4096),
        copy_kind: (kind == GpuOpKind::Memcpy).then(|| "DtoH".to_string()),
        pinned: (kind == GpuOpKind::Memcpy).then_some(false),
        graph_id: (kind == GpuOpKind::Graph).then_some(1),
        ..process.gpu_op(kind, &name, start_ns, start_ns + 800, correlation)
    }
}

fn call(process: Origin, name: &str, correlation: u64, start_ns: u64) -> ApiCallRow {
    process.api(name, start_ns, start_ns + 100, correlation)
}

/// An iteration that prefills one request of 16 tokens: 9 µs, every 10 µs.
fn prefill(iter: u64) -> IterationRow {
    IterationRow {
        gen_reqs: 0,
        ctx_tokens: 16,
        gen_tokens: 0,
        kv_used_blocks: 1,
        kv_total_blocks: 8,
        ..iteration(iter, iter * 10_000, iter * 10_000 + 9_000, 0.009)
    }
}

/// The engine process: 3 iterations, each a span with 2 kernel launches and a copy (9 GPU ops, 9
/// API calls). Finished.
fn engine_trace(path: &Path) {
    let mut trace = TraceData {
        meta: vec![("pid".to_string(), ENGINE.pid.to_string()), ("command".to_string(), "lumen bench throughput".to_string())],
        threads: vec![ENGINE.thread("lumen-engine")],
        iterations: (0..3).map(prefill).collect(),
        ..TraceData::default()
    };
    for iter in 0..3 {
        let base = iter * 10_000;
        trace.spans.push(ENGINE.iteration_span(iter, base, base + 9_000));
        for (k, kind) in [GpuOpKind::Kernel, GpuOpKind::Kernel, GpuOpKind::Memcpy].into_iter().enumerate() {
            let correlation = iter * 3 + k as u64 + 1;
            let at = base + 100 + k as u64 * 1_000;
            let name = if kind == GpuOpKind::Memcpy { "cudaMemcpyAsync" } else { "cudaLaunchKernel" };
            trace.api_calls.push(call(ENGINE, name, correlation, at));
            trace.gpu_ops.push(op(kind, ENGINE, correlation, at + 200));
        }
    }
    write_trace(path, &trace);
}

/// A worker process whose writer never finished, whose meta alone names the GPU: a whole-graph launch and a memset on stream 3,
/// a sync on stream 3, an iteration whose id collides with the engine's.
fn worker_trace(path: &Path) {
    let trace = TraceData {
        meta: vec![("pid".to_string(), WORKER.pid.to_string()), ("gpu".to_string(), "NVIDIA H100 80GB HBM3 (cuda:0)".to_string())],
        processes: vec![WORKER.process("python worker.py")],
        threads: vec![WORKER.thread("python")],
        api_calls: vec![
            call(WORKER, "cudaGraphLaunch", 1, 1_000),
            call(WORKER, "cudaMemsetAsync", 2, 2_000),
            call(WORKER, "cudaStreamSynchronize", 3, 3_000),
        ],
        gpu_ops: vec![
            op(GpuOpKind::Graph, WORKER, 1, 1_200),
            op(GpuOpKind::Memset, WORKER, 2, 2_200),
            op(GpuOpKind::Sync, WORKER, 3, 3_000),
        ],
        iterations: vec![prefill(0)],
        ..TraceData::default()
    };
    write_unfinished_trace(path, &trace);
}

fn line_with<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
}

#[test]
fn merged_process_traces_show_gpu_work_in_info_and_exports() {
    let s = Scratch::new("trace-gpu");
    let (engine, worker, merged) = (s.path("engine.lumen"), s.path("worker.lumen"), s.path("merged.lumen"));
    engine_trace(Path::new(&engine));
    worker_trace(Path::new(&worker));

    let run = lumen(&["trace", "merge", "-o", &merged, &engine, &worker]).ok();
    let headline = line_with(&run.stderr, "[lumen] merged");
    assert_eq!(headline, format!("[lumen] merged 2 trace(s) into {merged} (2 processes; incomplete: an input's writer did not finish)"));
    assert!(
        run.stderr.contains(&format!("{worker} (incomplete): processes 1, threads 1, gpu_ops 3, api_calls 3, iterations 1")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&format!("dropped 1 iterations; those of {engine} are kept")), "{}", run.stderr);

    let t = read_trace(Path::new(&merged)).unwrap();
    assert_eq!((t.gpu_ops.len(), t.api_calls.len(), t.processes.len(), t.iterations.len()), (12, 12, 2, 3));
    assert_eq!(t.meta("command"), Some("lumen bench throughput"), "the first input's meta heads the merged trace");
    assert_eq!(t.meta("pid"), Some(ENGINE.pid.to_string().as_str()), "a key both inputs have keeps the first input's value");
    assert_eq!(t.meta("gpu"), Some("NVIDIA H100 80GB HBM3 (cuda:0)"), "keys only a later input has are added");

    let info = lumen(&["trace", "info", &merged]).ok().stdout;
    assert_eq!(line_with(&info, "complete"), "complete   false");
    assert_eq!(line_with(&info, "merged"), "merged     from 2 traces");
    assert_eq!(line_with(&info, "processes"), "processes  2 (4242 lumen bench throughput, 5000 python worker.py)");
    assert_eq!(line_with(&info, "gpu ops"), "gpu ops    12 (kernel 6, memcpy 3, memset 1, sync 1, graph 1)");
    assert_eq!(line_with(&info, "api calls"), "api calls  12");
    assert_eq!(line_with(&info, "iterations"), "iterations 3 (0..=2)");
    assert_eq!(line_with(&info, "  gpu_ops").split_whitespace().collect::<Vec<_>>(), ["gpu_ops", "12"]);
    assert_eq!(line_with(&info, "  api_calls").split_whitespace().collect::<Vec<_>>(), ["api_calls", "12"]);

    let chrome = s.path("merged.json");
    let run = lumen(&["trace", "export", &merged, "--format", "chrome", "-o", &chrome]).ok();
    assert!(run.stderr.contains("12 GPU ops, 12 API calls"), "{}", run.stderr);
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&chrome).unwrap()).expect("the Chrome export is JSON");
    let events = doc["traceEvents"].as_array().unwrap();
    let mut tracks: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e["name"] == "thread_name" && e["args"]["name"].as_str().unwrap().starts_with("GPU"))
        .map(|e| (e["pid"].as_u64().unwrap(), e["args"]["name"].as_str().unwrap().to_string()))
        .collect();
    tracks.sort();
    let want = [(4242, "GPU 0 · stream 7"), (5000, "GPU 0 · stream 3"), (5000, "GPU 0 · stream 3 · sync")];
    assert_eq!(tracks, want.map(|(pid, name)| (pid, name.to_string())));
    let count = |ph: &str, cat: Option<&str>| events.iter().filter(|e| e["ph"] == ph && cat.is_none_or(|c| e["cat"] == c)).count();
    assert_eq!((count("X", Some("kernel")), count("X", Some("memcpy")), count("X", Some("graph"))), (6, 3, 1));
    assert_eq!((count("X", Some("cuda_api")), count("s", None), count("f", None)), (12, 12, 12));
    let gemm = events.iter().find(|e| e["ph"] == "X" && e["name"] == "gemm_1").unwrap();
    assert_eq!((&gemm["args"]["grid"], &gemm["args"]["registers"]), (&serde_json::json!("64,1,1"), &serde_json::json!(72)));

    let perfetto = s.path("merged.pftrace");
    lumen(&["trace", "export", &merged, "--format", "perfetto", "-o", &perfetto]).ok();
    let packets = decode_packets(&std::fs::read(&perfetto).unwrap()).expect("the Perfetto export decodes");
    let mut names: Vec<String> =
        packets.iter().filter_map(|p| p.track.as_ref()).filter_map(|t| t.name.clone()).filter(|n| n.starts_with("GPU")).collect();
    names.sort();
    assert_eq!(names, ["GPU 0 · stream 3", "GPU 0 · stream 3 · sync", "GPU 0 · stream 7"]);
    let mut flows: HashMap<u64, Vec<String>> = HashMap::new();
    for e in packets.iter().filter_map(|p| p.event.as_ref()) {
        assert!(e.flow_ids.is_empty() || e.event_type == Some(EventType::SliceBegin));
        for &id in &e.flow_ids {
            flows.entry(id).or_default().push(e.name.clone().unwrap());
        }
    }
    assert_eq!(flows.len(), 12);
    let mut graph = flows.values().find(|ends| ends.contains(&"cudaGraphLaunch".to_string())).unwrap().clone();
    graph.sort();
    assert_eq!(graph, ["cudaGraphLaunch", "graph"]);
    assert!(flows.values().all(|ends| ends.len() == 2));
}

#[test]
fn bad_merges_fail_naming_the_input() {
    let s = Scratch::new("trace-merge-bad");
    let (good, merged) = (s.path("good.lumen"), s.path("merged.lumen"));
    engine_trace(Path::new(&good));
    let garbage = s.write("garbage.lumen", "not a trace, only text long enough to look like a file header");
    lumen(&["trace", "merge", "-o", &merged, &good, &garbage]).fails_with(1, &[&garbage, "not a lumen trace"]);
    let missing = s.path("missing.lumen");
    lumen(&["trace", "merge", "-o", &merged, &good, &missing]).fails_with(1, &[&missing, "no such file"]);
    assert!(!Path::new(&merged).exists(), "a failed merge writes nothing");
    lumen(&["trace", "merge", "-o", &good, &good]).fails_with(1, &["-o", "same file as input"]);
    assert!(read_trace(Path::new(&good)).is_ok(), "the input survives");
    lumen(&["trace", "merge", "-o", &merged]).fails_with(2, &["required"]);
}
