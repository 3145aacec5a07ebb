//! `lumen trace import` end to end: a torch.profiler (Kineto) trace of a decode loop
//! (tests/data/kineto_decode.json, written by `scripts/gen_kineto_trace.py 240 OUT --step 40
//! --rich`: 240 kernels with their cudaLaunchKernel calls, copies, memsets, cpu_ops, instant
//! events, flows, metadata and profiler bookkeeping) is imported by the real binary, then read by
//! `lumen trace info` and `lumen analyze --json`. Every figure checked is computed here again
//! from the JSON itself: kernel count and per-name totals, the ProfilerStep iterations with their
//! host and device times, kernels per iteration, launch queue time and GPU idle time. Bad inputs
//! fail with one error line naming the file.

mod common;

use common::{lumen, Scratch};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kineto_decode.json").to_str().unwrap().to_string()
}

/// A time in the fixture (microseconds with three decimals) in nanoseconds.
fn ns(v: &Value) -> i64 {
    (v.as_f64().expect("a number") * 1000.0).round() as i64
}

/// What the fixture holds, read with serde_json.
struct Expected {
    events: Vec<Value>,
}

impl Expected {
    fn load() -> Expected {
        let text = std::fs::read_to_string(fixture()).unwrap();
        let mut doc: Value = serde_json::from_str(&text).unwrap();
        Expected { events: doc["traceEvents"].as_array_mut().map(std::mem::take).unwrap() }
    }

    fn of(&self, ph: &str, cat: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["ph"] == ph && e["cat"] == cat).collect()
    }

    /// (start, end) in ns.
    fn window(e: &Value) -> (i64, i64) {
        (ns(&e["ts"]), ((e["ts"].as_f64().unwrap() + e["dur"].as_f64().unwrap()) * 1000.0).round() as i64)
    }
}

fn available<'a>(v: &'a Value, what: &str) -> &'a Value {
    v.get("available").unwrap_or_else(|| panic!("{what} is not available: {v}"))
}

#[test]
fn an_imported_kineto_trace_analyses_to_what_the_json_holds() {
    let x = Expected::load();
    let kernels = x.of("X", "kernel");
    let launches = x.of("X", "cuda_runtime");
    let steps = x.of("X", "user_annotation");
    let gpu_steps = x.of("X", "gpu_user_annotation");
    let flows = x.events.iter().filter(|e| e["ph"] == "s" || e["ph"] == "f").count();
    assert_eq!((kernels.len(), steps.len(), gpu_steps.len()), (240, 6, 6), "the fixture is the one described above");

    let s = Scratch::new("kineto-import");
    let out = s.path("decode.lumen");
    let run = lumen(&["trace", "import", &fixture(), "-o", &out]).ok();
    let counts = format!(
        "240 kernels, {} memcpys, {} memsets, 0 syncs, {} API calls, {} spans, {} marks, 6 iterations (ProfilerStep)",
        x.of("X", "gpu_memcpy").len(),
        x.of("X", "gpu_memset").len(),
        launches.len(),
        steps.len() + x.of("X", "cpu_op").len(),
        x.of("i", "cpu_instant_event").len()
    );
    assert!(run.stderr.contains(&counts), "expected {counts:?} in\n{}", run.stderr);
    let ignored = flows + gpu_steps.len() + 2;
    assert!(run.stderr.contains(&format!("ignored {ignored} events")) && run.stderr.contains("skipped 0 events"), "{}", run.stderr);

    let info = lumen(&["trace", "info", &out]).ok();
    assert!(info.stdout.contains("gpu ops    252 (kernel 240, memcpy 6, memset 6)"), "{}", info.stdout);
    assert!(info.stdout.contains(&format!("api calls  {}", launches.len())), "{}", info.stdout);

    let json = s.path("analysis.json");
    lumen(&["analyze", &out, "--json", &json]).ok();
    let a: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();

    // Kernels: count, and every name's count and total time, most time first.
    let mut by_name: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    for k in &kernels {
        let (start, end) = Expected::window(k);
        let entry = by_name.entry(k["name"].as_str().unwrap()).or_default();
        *entry = (entry.0 + 1, entry.1 + end - start);
    }
    let mut want: Vec<(&str, u64, i64)> = by_name.iter().map(|(name, (n, total))| (*name, *n, *total)).collect();
    want.sort_by_key(|w| std::cmp::Reverse(w.2));
    let k = available(&a["kernels"], "kernels");
    assert_eq!(k["count"], 240);
    assert_eq!(k["total_ns"].as_i64(), Some(want.iter().map(|w| w.2).sum()));
    let top: Vec<(&str, u64, i64)> = k["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["count"].as_u64().unwrap(), t["total_ns"].as_i64().unwrap()))
        .collect();
    assert_eq!(top, want);

    // Iterations: ProfilerStep#N with its host time, and as device time the first start to the
    // last end of the GPU work whose launch call started in the step.
    let launch_start: HashMap<u64, i64> = launches.iter().map(|c| (c["args"]["correlation"].as_u64().unwrap(), ns(&c["ts"]))).collect();
    let gpu_work: Vec<(i64, i64, i64)> = x
        .events
        .iter()
        .filter(|e| e["ph"] == "X" && e["pid"] == 0 && e["args"].get("correlation").is_some())
        .map(|e| (launch_start[&e["args"]["correlation"].as_u64().unwrap()], Expected::window(e).0, Expected::window(e).1))
        .collect();
    let mut want_iterations: Vec<(u64, f64, f64)> = steps
        .iter()
        .map(|step| {
            let number: u64 = step["name"].as_str().unwrap().strip_prefix("ProfilerStep#").unwrap().parse().unwrap();
            let (start, end) = Expected::window(step);
            let inside = gpu_work.iter().filter(|w| (start..end).contains(&w.0));
            let first = inside.clone().map(|w| w.1).min().unwrap();
            let last = inside.map(|w| w.2).max().unwrap();
            (number, (end - start) as f64 / 1e6, (last - first) as f64 / 1e6)
        })
        .collect();
    want_iterations.sort_by_key(|w| w.0);
    let it = available(&a["iterations"], "iterations");
    let got: Vec<(u64, f64, f64)> = it["per_iteration"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["iter"].as_u64().unwrap(), i["host_ms"].as_f64().unwrap(), i["device_ms"].as_f64().unwrap()))
        .collect();
    assert_eq!(got.len(), want_iterations.len());
    for (g, w) in got.iter().zip(&want_iterations) {
        assert!(g.0 == w.0 && (g.1 - w.1).abs() < 1e-9 && (g.2 - w.2).abs() < 1e-9, "iteration {g:?}, expected {w:?}");
    }
    assert_eq!(available(&a["overview"]["iterations"], "overview iterations")["count"], 6);

    // Launch queue time: kernel start minus the end of the call with its correlation id.
    let call_end: HashMap<u64, i64> =
        launches.iter().map(|c| (c["args"]["correlation"].as_u64().unwrap(), Expected::window(c).1)).collect();
    let queues: Vec<i64> = kernels.iter().map(|k| ns(&k["ts"]) - call_end[&k["args"]["correlation"].as_u64().unwrap()]).collect();
    let launch = available(&a["launch"], "launch");
    let queue = available(&launch["queue_ns"], "queue time");
    let mean = queues.iter().sum::<i64>() as f64 / queues.len() as f64;
    assert_eq!(queue["count"], 240);
    assert!((queue["mean"].as_f64().unwrap() - mean).abs() < 1e-6, "queue mean {} against {mean}", queue["mean"]);
    assert_eq!(queue["min"].as_f64(), queues.iter().min().map(|&q| q as f64));
    assert_eq!(queue["max"].as_f64(), queues.iter().max().map(|&q| q as f64));

    // Kernels per iteration: launches that started inside each step.
    let step_windows: Vec<(i64, i64)> = steps.iter().map(|s| Expected::window(s)).collect();
    let kernel_correlations: Vec<u64> = kernels.iter().map(|k| k["args"]["correlation"].as_u64().unwrap()).collect();
    let per_step: Vec<usize> = step_windows
        .iter()
        .map(|&(start, end)| {
            launches
                .iter()
                .filter(|c| kernel_correlations.contains(&c["args"]["correlation"].as_u64().unwrap()))
                .filter(|c| (start..end).contains(&ns(&c["ts"])))
                .count()
        })
        .collect();
    assert_eq!(per_step, [40; 6]);
    let per_iteration = available(&launch["per_iteration"], "kernels per iteration");
    assert_eq!((per_iteration["iterations"].as_u64(), per_iteration["outside"].as_u64()), (Some(6), Some(0)));
    assert_eq!((per_iteration["kernels"]["min"].as_f64(), per_iteration["kernels"]["max"].as_f64()), (Some(40.0), Some(40.0)));

    // GPU busy and idle time: the union of kernels, copies and memsets.
    let mut busy: Vec<(i64, i64)> = x
        .events
        .iter()
        .filter(|e| e["ph"] == "X" && e["pid"] == 0 && e["args"].get("correlation").is_some())
        .map(Expected::window)
        .collect();
    busy.sort_unstable();
    let mut union: Vec<(i64, i64)> = Vec::new();
    for (start, end) in busy {
        match union.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => union.push((start, end)),
        }
    }
    let busy_ns: i64 = union.iter().map(|(a, b)| b - a).sum();
    let window = union.last().unwrap().1 - union[0].0;
    let gpu = &available(&a["gpu"], "GPU utilisation")[0];
    assert_eq!((gpu["busy_ns"].as_i64(), gpu["idle_ns"].as_i64()), (Some(busy_ns), Some(window - busy_ns)));
    let gaps = &available(&a["gaps"], "gaps")[0];
    assert_eq!(gaps["count"].as_u64(), Some(union.len() as u64 - 1));

    // Where the work ran and who launched it.
    assert_eq!(available(&a["overview"]["gpu"], "GPU"), "NVIDIA H100 80GB HBM3");
    assert_eq!(available(&a["overview"]["processes"], "processes")[0]["name"], "python3 decode.py");
    let ranges = available(&a["ranges"], "ranges").as_array().unwrap();
    let linear = ranges.iter().find(|r| r["name"] == "aten::linear").expect("the cpu_op ranges are projected onto the GPU");
    assert_eq!((linear["ranges"].as_u64(), linear["gpu_ops"].as_u64()), (Some(240), Some(240)));
    let memory = &a["memory"];
    assert!(memory.to_string().contains("\"HtoD\""), "the copies are HtoD: {memory}");
}

#[test]
fn bad_kineto_inputs_fail_with_one_error_naming_the_file() {
    let s = Scratch::new("kineto-bad");
    let out = s.path("out.lumen");
    let cases = [
        ("binary.json", "SQLite format 3\u{0}", "not valid JSON"),
        ("list.json", "[1, 2]", "expected a Kineto trace: a JSON object with a traceEvents array"),
        ("other.json", "{\"displayTimeUnit\": \"ms\"}", "no traceEvents array"),
        ("cut.json", "{\"traceEvents\": [{\"ph\": \"X\", \"cat\": \"kernel\"", "EOF while parsing"),
    ];
    for (name, text, want) in cases {
        let input = s.write(name, text);
        lumen(&["trace", "import", &input, "-o", &out]).fails_with(1, &[&input, want]);
        assert!(!Path::new(&out).exists(), "{name}: no output is left behind");
    }
    let missing = s.path("missing.json");
    lumen(&["trace", "import", &missing, "-o", &out]).fails_with(1, &[&missing, "cannot open"]);
}

/// An imported torch.profiler trace keeps Kineto's clock, so merging it with a lumen trace, whose
/// times are the host's monotonic clock, is refused unless asked for.
#[test]
fn merging_an_import_with_a_lumen_trace_needs_allow_clock_mismatch() {
    let s = Scratch::new("import-clock");
    let imported = s.path("torch.lumen");
    lumen(&["trace", "import", &fixture(), "-o", &imported]).ok();
    let recorded = s.path("lumen.lumen");
    lumen(&["generate", "--model", "tiny", "--prompt-ids", "1,2", "--max-tokens", "2", "--trace", &recorded]).ok();
    let out = s.path("merged.lumen");
    lumen(&["trace", "merge", "-o", &out, &recorded, &imported])
        .fails_with(1, &["different clocks", "monotonic", "kineto", "--allow-clock-mismatch"]);
    assert!(!Path::new(&out).exists());
    let run = lumen(&["trace", "merge", "--allow-clock-mismatch", "-o", &out, &recorded, &imported]).ok();
    assert!(run.stderr.contains("merging traces on different clocks"), "{}", run.stderr);
    lumen(&["trace", "merge", "-o", &s.path("twice.lumen"), &imported, &imported]).fails_with(1, &["given twice"]);
}
