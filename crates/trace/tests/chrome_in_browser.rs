//! The Chrome trace export checked in a real browser: each test writes `trace.js`
//! (`window.TRACE = <export>;`) next to a copy of `tests/browser/check_trace.html` in a scratch
//! directory, loads the page in headless Chromium with `--dump-dom` and reads the page's verdict
//! (`OK <n> events` or `FAIL: <reason>`). A realistic trace, and one of two processes with CUDA API
//! calls, GPU ops and flows between them, must pass with the expected event count; a trace with
//! partially overlapping spans and hand-written malformed traces must fail, so the check itself is
//! shown able to fail. Needs `/usr/bin/chromium` (the apt package `chromium`, installed by
//! `scripts/setup.sh`).

use lumen_test_support::chromium;
use lumen_test_support::rows::Origin;
use lumen_test_support::scratch::Scratch;
use lumen_trace::export::chrome::to_chrome_json;
use lumen_trace::model::{CounterRow, GpuOpKind, GpuOpRow, MarkRow, ProcessRow, SpanRow, ThreadRow, TraceData};

const PAGE: &str = include_str!("browser/check_trace.html");

const ITERATIONS: u64 = 50;
const THREADS: [(u64, &str); 2] = [(101, "engine"), (102, "worker \"gpu\" ✓")];
const ITERATION_NS: u64 = 2_000_003;

/// Loads the check page on `trace_json` in headless Chromium and returns the page's verdict text.
fn verdict(case: &str, trace_json: &str) -> String {
    let scratch = Scratch::new(&format!("chrome-check-{case}"));
    let page = scratch.write("check_trace.html", PAGE);
    scratch.write("trace.js", format!("window.TRACE = {trace_json};\n"));
    let browser = chromium::dump_dom(&scratch, case, &page);
    let verdict = chromium::element(&browser.stdout, "pre", "verdict");
    let (_, text) = verdict.split_once('>').expect("the verdict's opening tag ends");
    text.to_string()
}

fn args(value: serde_json::Value) -> Option<String> {
    Some(value.to_string())
}

/// Two threads, each with 50 iterations of 6 phase spans nested up to two deep inside the iteration
/// span (children that share their parent's start or end, siblings that touch), rows in reverse
/// order so the exporter must sort them; marks; counters with and without a device. Returns the trace
/// and the number of events its export must hold.
fn realistic_trace() -> (TraceData, usize) {
    let mut trace = TraceData {
        meta: vec![("command".to_string(), "lumen bench --model smol".to_string()), ("pid".to_string(), "31337".to_string())],
        threads: THREADS.iter().map(|&(tid, name)| ThreadRow { pid: 31337, tid, name: name.to_string() }).collect(),
        ..TraceData::default()
    };
    for (t, &(tid, _)) in THREADS.iter().enumerate() {
        for iter in 0..ITERATIONS {
            let base = 1_000_000 + iter * ITERATION_NS + t as u64 * 333;
            let phases: [(&str, u64, u64, u32); 7] = [
                ("iteration", 0, 1_900_001, 0),
                ("schedule", 0, 100_007, 1),
                ("prepare_inputs", 100_007, 300_011, 1),
                ("forward", 300_011, 1_700_013, 1),
                ("attention", 300_011, 900_017, 2),
                ("mlp \"ffn\"\n", 900_017, 1_700_013, 2),
                ("sample", 1_700_013, 1_900_001, 1),
            ];
            for &(name, start, end, depth) in phases.iter().rev() {
                trace.spans.push(SpanRow {
                    start_ns: base + start,
                    end_ns: base + end,
                    tid,
                    name: name.to_string(),
                    category: if depth == 0 { "iteration" } else { "phase" }.to_string(),
                    depth,
                    iteration: Some(iter),
                    args: if depth == 0 { args(serde_json::json!({"batch": iter % 8 + 1, "ctx_tokens": iter * 3})) } else { None },
                });
            }
            if t == 0 {
                trace.marks.push(MarkRow {
                    ts_ns: base + 1_900_001,
                    tid,
                    name: "step_done".to_string(),
                    category: "engine".to_string(),
                    iteration: Some(iter),
                    args: None,
                });
                if iter % 10 == 0 {
                    trace.marks.push(MarkRow {
                        ts_ns: base + 50_000,
                        tid,
                        name: "request_arrived".to_string(),
                        category: "request".to_string(),
                        iteration: Some(iter),
                        args: args(serde_json::json!({"request": iter / 10, "prompt": "say \"hi\"\nünïcødé"})),
                    });
                }
                trace.counters.push(CounterRow { ts_ns: base, name: "kv_util".to_string(), device: None, value: iter as f64 / 50.0 });
                for device in 0..2 {
                    trace.counters.push(CounterRow {
                        ts_ns: base + 10,
                        name: "gpu_util".to_string(),
                        device: Some(device),
                        value: 40.0 + device as f64 + iter as f64 * 0.5,
                    });
                }
            }
        }
    }
    trace.counters.push(CounterRow { ts_ns: 5_000, name: "kv_util".to_string(), device: None, value: f64::NAN });
    let metadata = 1 + THREADS.len();
    let spans = THREADS.len() * ITERATIONS as usize * 7;
    let marks = ITERATIONS as usize + ITERATIONS as usize / 10;
    let counters = ITERATIONS as usize * 3;
    (trace, metadata + spans + marks + counters)
}

#[test]
fn realistic_trace_passes_in_chromium() {
    let (trace, expected) = realistic_trace();
    assert_eq!(expected, 908);
    let verdict = verdict("realistic", &to_chrome_json(&trace));
    assert_eq!(verdict, format!("OK {expected} events"));
}

/// Two processes, each with a thread whose iterations hold CUDA API calls, and GPU work on two
/// streams of its own device: kernels, a pinned copy, a whole-graph launch and a stream
/// synchronisation, each launched by an API call with its correlation id. Returns the trace and the
/// number of events its export must hold.
fn gpu_trace() -> (TraceData, usize) {
    const PROCESSES: [(u32, u64, &str); 2] = [(31337, 31338, "python serve.py"), (31400, 31401, "lumen worker")];
    const ITERATIONS: u64 = 20;
    let mut trace = TraceData {
        meta: vec![("command".to_string(), "lumen profile -- python serve.py".to_string()), ("pid".to_string(), "31337".to_string())],
        processes: PROCESSES.iter().map(|&(pid, _, name)| ProcessRow { pid, name: name.to_string() }).collect(),
        threads: PROCESSES.iter().map(|&(pid, tid, _)| ThreadRow { pid, tid, name: format!("main {pid}") }).collect(),
        ..TraceData::default()
    };
    for (device, &(pid, tid, _)) in PROCESSES.iter().enumerate() {
        let device = device as u32;
        let process = Origin { pid, tid, device, stream: 7 };
        let op = |kind: GpuOpKind, stream: u64, start_ns: u64, end_ns: u64| {
            Origin { stream, ..process }.gpu_op(kind, kind.as_str(), start_ns, end_ns, 0)
        };
        let mut correlation = 0;
        let mut launch = |trace: &mut TraceData, name: &str, start_ns: u64, end_ns: u64, op: GpuOpRow| {
            correlation += 1;
            trace.api_calls.push(process.api(name, start_ns, end_ns, correlation));
            trace.gpu_ops.push(GpuOpRow { correlation: Some(correlation), ..op });
        };
        for iter in 0..ITERATIONS {
            let base = 1_000_000 + iter * 100_000 + u64::from(device) * 333;
            trace.spans.push(process.iteration_span(iter, base, base + 90_000));
            for k in 0..4 {
                let at = base + 1_000 + k * 10_000;
                let kernel = GpuOpRow {
                    name: format!("gemm_{k} \"bf16\""),
                    grid: Some([128, 1 + k as u32, 1]),
                    block: Some([256, 1, 1]),
                    registers: Some(64),
                    shared_mem_bytes: Some(16_384),
                    ..op(GpuOpKind::Kernel, 7 + k % 2, at + 3_000, at + 9_000)
                };
                launch(&mut trace, "cudaLaunchKernel", at, at + 2_000, kernel);
            }
            let copy = GpuOpRow {
                bytes: Some(1 << 20),
                copy_kind: Some("HtoD".to_string()),
                pinned: Some(true),
                ..op(GpuOpKind::Memcpy, 7, base + 52_500, base + 60_000)
            };
            launch(&mut trace, "cudaMemcpyAsync", base + 50_000, base + 52_000, copy);
            let graph = GpuOpRow { graph_id: Some(iter), ..op(GpuOpKind::Graph, 7, base + 62_500, base + 80_000) };
            launch(&mut trace, "cudaGraphLaunch", base + 61_000, base + 62_000, graph);
            let sync = op(GpuOpKind::Sync, 7, base + 63_000, base + 80_500);
            launch(&mut trace, "cudaStreamSynchronize", base + 63_000, base + 81_000, sync);
        }
    }
    // Per process: its name, its thread, and GPU tracks for streams 7 and 8 and stream 7's syncs.
    let metadata = PROCESSES.len() * (1 + 1 + 3);
    let per_iteration = 1 + 2 * 7 + 2 * 7;
    (trace, metadata + PROCESSES.len() * ITERATIONS as usize * per_iteration)
}

#[test]
fn gpu_trace_with_flows_passes_in_chromium() {
    let (trace, expected) = gpu_trace();
    assert_eq!(expected, 1170);
    let verdict = verdict("gpu", &to_chrome_json(&trace));
    assert_eq!(verdict, format!("OK {expected} events"));
}

#[test]
fn partial_overlap_fails_in_chromium() {
    let (mut trace, _) = realistic_trace();
    let base = 1_000_000 + 10 * ITERATION_NS;
    trace.spans.push(SpanRow {
        start_ns: base + 1_000_000,
        end_ns: base + 2_000_000,
        tid: THREADS[0].0,
        name: "straddle".to_string(),
        category: "phase".to_string(),
        depth: 1,
        iteration: Some(10),
        args: None,
    });
    let verdict = verdict("overlap", &to_chrome_json(&trace));
    assert!(verdict.starts_with("FAIL: X 'straddle' tid 101") && verdict.contains("overlaps X 'mlp"), "{verdict}");
    assert!(verdict.ends_with("partially"), "{verdict}");
}

#[test]
fn malformed_traces_fail_in_chromium() {
    let named = r#"{"ph":"M","name":"process_name","pid":1,"tid":0,"args":{"name":"p"}},
        {"ph":"M","name":"thread_name","pid":1,"tid":1,"args":{"name":"t"}}"#;
    let cases = [
        ("unnamed", format!(r#"{named},{{"ph":"X","name":"a","pid":1,"tid":2,"ts":1,"dur":1}}"#), "tid 2 (used by X 'a'"),
        ("negative", format!(r#"{named},{{"ph":"X","name":"a","pid":1,"tid":1,"ts":1,"dur":-1}}"#), "negative dur -1"),
        ("counter", format!(r#"{named},{{"ph":"C","name":"c","pid":1,"ts":1,"args":{{"value":"7"}}}}"#), "non-numeric value"),
        (
            "unsorted",
            format!(
                r#"{named},{{"ph":"i","s":"t","name":"b","pid":1,"tid":1,"ts":5}},{{"ph":"i","s":"t","name":"a","pid":1,"tid":1,"ts":2}}"#
            ),
            "comes after ts 5",
        ),
    ];
    let slice = r#"{"ph":"X","name":"a","pid":1,"tid":1,"ts":1,"dur":10}"#;
    let flow =
        |ph: &str, id: u64, ts: u64| format!(r#"{{"ph":"{ph}","bp":"e","id":{id},"name":"launch","cat":"c","pid":1,"tid":1,"ts":{ts}}}"#);
    let flow_cases = [
        ("flow-no-start", format!("{named},{slice},{}", flow("f", 1, 2)), "has no start"),
        ("flow-no-end", format!("{named},{slice},{}", flow("s", 1, 2)), "has no f event"),
        ("flow-outside", format!("{named},{slice},{},{}", flow("s", 1, 2), flow("f", 1, 20)), "is not inside a slice"),
        ("flow-twice", format!("{named},{slice},{},{},{}", flow("s", 1, 2), flow("f", 1, 3), flow("f", 1, 4)), "ends twice"),
    ];
    let cases = cases.into_iter().chain(flow_cases);
    for (case, events, reason) in cases {
        let verdict = verdict(case, &format!(r#"{{"traceEvents":[{events}]}}"#));
        assert!(verdict.starts_with("FAIL: ") && verdict.contains(reason), "case {case}: expected FAIL with {reason:?}, got {verdict}");
    }
}
