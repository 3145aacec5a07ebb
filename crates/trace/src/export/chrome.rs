//! Chrome trace JSON export: [`to_chrome_json`] and [`write_chrome_json`] turn a [`TraceData`] into
//! the Chrome Trace Event Format, JSON object form (`{"traceEvents":[...], "displayTimeUnit":"ms",
//! "otherData":{...}}`), which chrome://tracing and the Perfetto UI load.
//!
//! What goes out:
//! - `M` metadata first: one `process_name` per process that has a track (see
//!   [`super::processes`]), one `thread_name` per thread; a tid that spans, marks or API calls use
//!   but `threads` does not name is called `thread {tid}`, and a tid named twice keeps its first
//!   name. Each GPU track (see [`super::GpuTrack`]) is a thread of its process with a tid of its own
//!   from [`GPU_TID_BASE`] up, named like `GPU 0 · stream 7`;
//! - spans as `X` complete events, marks as `i` instants of thread scope (`"s":"t"`), counters as
//!   `C` events whose `args` is `{"value": v}`. A counter sample with a device goes to its own track
//!   named `"{name} (device {d})"`, so each device gets its own track. A sample whose value is NaN
//!   or infinite is left out: JSON cannot carry it;
//! - CUDA API calls as `X` events (category `cuda_api`) on their thread, GPU ops as `X` events
//!   (category: the op's kind) on their GPU track, each with its fields as args;
//! - a flow from each API call to every GPU op it launched (same pid and correlation): an `s`
//!   event at the call's start on its thread and an `f` event with `"bp":"e"` at the op's start on
//!   its GPU track, both named `launch` in category `cuda_flow`, with an id per flow;
//! - span and mark `args` are the row's JSON object plus `iteration` when the row has one (the row's
//!   iteration wins over an `iteration` key in the text); args text that is not a JSON object is
//!   kept as a string under the key `args`;
//! - `otherData` holds the meta key/values; a repeated key keeps its first value, as
//!   [`TraceData::meta`] does. Iteration and request rows have no Chrome event counterpart and stay
//!   out (the spans carry iteration numbers).
//!
//! Spans and marks carry the pid of their thread ([`TraceData::pid`] for a thread without a row),
//! counters [`TraceData::pid`], API calls and GPU ops their own. `ts` and `dur` are microseconds as
//! JSON numbers, nanoseconds / 1000: below 10^15 ns (11.5 days since the trace epoch) the text is the
//! exact value with up to 3 decimals. A span whose end precedes its start gets `dur` 0. After the
//! metadata the events are sorted by `ts`; at equal `ts` slices come first, the longer before the
//! shorter (then the shallower depth, API calls innermost), so viewers nest them, then flow events,
//! then marks, then counters; remaining ties keep row order. All text goes through serde_json, which
//! does the escaping.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::io::{self, BufWriter, Write};

use serde_json::{json, Map, Value};

use super::{api_call_args, correlation_flows, gpu_op_args, gpu_tracks, processes, thread_pids, API_CATEGORY};
use crate::model::{ApiCallRow, CounterRow, GpuOpRow, MarkRow, SpanRow, TraceData};

/// The tid of the first GPU track; the others follow. Above any Linux tid (at most 2^22) and
/// within the 32-bit range viewers read tids in.
pub const GPU_TID_BASE: u64 = 2_000_000_000;

/// The name and category of the flow events from API calls to GPU ops.
const FLOW_NAME: &str = "launch";
const FLOW_CATEGORY: &str = "cuda_flow";

/// The trace as Chrome trace JSON text.
pub fn to_chrome_json(trace: &TraceData) -> String {
    let mut out = Vec::new();
    write_chrome_json(trace, &mut out).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Streams the trace as Chrome trace JSON into `out`, one event at a time (one per line), through
/// a buffer of its own; only the sort order of the timed events is held in memory.
pub fn write_chrome_json(trace: &TraceData, out: &mut impl Write) -> io::Result<()> {
    let mut out = BufWriter::new(out);
    let pid = trace.pid();
    let thread_pid = thread_pids(trace);
    let pid_of = |tid: u64| thread_pid.get(&tid).copied().unwrap_or(pid);
    let mut gpu_tid = vec![0; trace.gpu_ops.len()];
    let mut gpu_names = Vec::new();
    for (i, (track, ops)) in gpu_tracks(trace).into_iter().enumerate() {
        let tid = GPU_TID_BASE + i as u64;
        for op in ops {
            gpu_tid[op] = tid;
        }
        gpu_names.push((track.pid, tid, track.name()));
    }
    let flows = correlation_flows(trace).into_iter().enumerate().flat_map(|(i, (call, op))| {
        let id = i as u64 + 1;
        [Timed::FlowStart(id, &trace.api_calls[call]), Timed::FlowEnd(id, &trace.gpu_ops[op], gpu_tid[op])]
    });
    let mut timed: Vec<Timed> = trace
        .spans
        .iter()
        .map(|s| Timed::Span(s, pid_of(s.tid)))
        .chain(trace.marks.iter().map(|m| Timed::Mark(m, pid_of(m.tid))))
        .chain(trace.counters.iter().filter(|c| c.value.is_finite()).map(Timed::Counter))
        .chain(trace.api_calls.iter().map(Timed::Api))
        .chain(trace.gpu_ops.iter().zip(&gpu_tid).map(|(op, &tid)| Timed::Gpu(op, tid)))
        .chain(flows)
        .collect();
    timed.sort_by_key(Timed::sort_key);

    out.write_all(b"{\"traceEvents\":[")?;
    let events = metadata_events(trace, &thread_pid, gpu_names).into_iter().chain(timed.iter().map(|event| event.to_json(pid)));
    for (i, event) in events.enumerate() {
        out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut out, &event)?;
    }
    out.write_all(b"\n],\"displayTimeUnit\":\"ms\",\"otherData\":")?;
    serde_json::to_writer(&mut out, &other_data(trace))?;
    out.write_all(b"}\n")?;
    out.flush()
}

/// One row that becomes a timed event, with the pid or tid it is drawn on where the row does not
/// say, and the id of a flow.
enum Timed<'a> {
    Span(&'a SpanRow, u32),
    Mark(&'a MarkRow, u32),
    Counter(&'a CounterRow),
    Api(&'a ApiCallRow),
    Gpu(&'a GpuOpRow, u64),
    FlowStart(u64, &'a ApiCallRow),
    FlowEnd(u64, &'a GpuOpRow, u64),
}

impl Timed<'_> {
    /// (ts, longer first, slices before flows before marks before counters, shallower first).
    fn sort_key(&self) -> (u64, Reverse<u64>, u8, u32) {
        match self {
            Timed::Span(s, _) => (s.start_ns, Reverse(dur_ns(s.start_ns, s.end_ns)), 0, s.depth),
            Timed::Api(a) => (a.start_ns, Reverse(dur_ns(a.start_ns, a.end_ns)), 0, u32::MAX),
            Timed::Gpu(g, _) => (g.start_ns, Reverse(dur_ns(g.start_ns, g.end_ns)), 0, 0),
            Timed::FlowStart(_, a) => (a.start_ns, Reverse(0), 1, 0),
            Timed::FlowEnd(_, g, _) => (g.start_ns, Reverse(0), 1, 0),
            Timed::Mark(m, _) => (m.ts_ns, Reverse(0), 2, 0),
            Timed::Counter(c) => (c.ts_ns, Reverse(0), 3, 0),
        }
    }

    fn to_json(&self, pid: u32) -> Value {
        match self {
            Timed::Span(s, pid) => {
                let mut event = json!({
                    "ph": "X",
                    "name": s.name,
                    "cat": s.category,
                    "pid": pid,
                    "tid": s.tid,
                    "ts": micros(s.start_ns),
                    "dur": micros(dur_ns(s.start_ns, s.end_ns)),
                });
                add_args(&mut event, s.args.as_deref(), s.iteration);
                event
            }
            Timed::Mark(m, pid) => {
                let mut event = json!({
                    "ph": "i",
                    "s": "t",
                    "name": m.name,
                    "cat": m.category,
                    "pid": pid,
                    "tid": m.tid,
                    "ts": micros(m.ts_ns),
                });
                add_args(&mut event, m.args.as_deref(), m.iteration);
                event
            }
            Timed::Counter(c) => {
                let name = match c.device {
                    Some(d) => format!("{} (device {d})", c.name),
                    None => c.name.clone(),
                };
                json!({"ph": "C", "name": name, "pid": pid, "ts": micros(c.ts_ns), "args": {"value": c.value}})
            }
            Timed::Api(a) => slice(&a.name, API_CATEGORY, a.pid, a.tid, a.start_ns, a.end_ns, api_call_args(a)),
            Timed::Gpu(g, tid) => slice(&g.name, g.kind.as_str(), g.pid, *tid, g.start_ns, g.end_ns, gpu_op_args(g)),
            Timed::FlowStart(id, a) => json!({
                "ph": "s",
                "id": id,
                "name": FLOW_NAME,
                "cat": FLOW_CATEGORY,
                "pid": a.pid,
                "tid": a.tid,
                "ts": micros(a.start_ns),
            }),
            Timed::FlowEnd(id, g, tid) => json!({
                "ph": "f",
                "bp": "e",
                "id": id,
                "name": FLOW_NAME,
                "cat": FLOW_CATEGORY,
                "pid": g.pid,
                "tid": tid,
                "ts": micros(g.start_ns),
            }),
        }
    }
}

/// An `X` event with `args` from `args` (none when empty).
fn slice(name: &str, category: &str, pid: u32, tid: u64, start_ns: u64, end_ns: u64, args: Vec<(&str, Value)>) -> Value {
    let mut event = json!({
        "ph": "X",
        "name": name,
        "cat": category,
        "pid": pid,
        "tid": tid,
        "ts": micros(start_ns),
        "dur": micros(dur_ns(start_ns, end_ns)),
    });
    if !args.is_empty() {
        event["args"] = Value::Object(args.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
    }
    event
}

fn dur_ns(start_ns: u64, end_ns: u64) -> u64 {
    end_ns.saturating_sub(start_ns)
}

fn micros(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Sets `event.args` to the row's args object plus its iteration, when that is not empty.
fn add_args(event: &mut Value, args: Option<&str>, iteration: Option<u64>) {
    let mut map = match args {
        None => Map::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(Value::Object(map)) => map,
            _ => Map::from_iter([("args".to_string(), Value::from(text))]),
        },
    };
    if let Some(iteration) = iteration {
        map.insert("iteration".to_string(), Value::from(iteration));
    }
    if !map.is_empty() {
        event["args"] = Value::Object(map);
    }
}

/// The `M` events: process names, thread names, then the GPU tracks' names (pid, tid, name).
fn metadata_events(trace: &TraceData, thread_pid: &HashMap<u64, u32>, gpu_tracks: Vec<(u32, u64, String)>) -> Vec<Value> {
    let main = trace.pid();
    let mut events: Vec<Value> = processes(trace)
        .into_iter()
        .map(|(pid, name)| json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": name}}))
        .collect();
    let thread_name =
        |pid: u32, tid: u64, name: &str| json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}});
    let mut named = HashSet::new();
    for thread in &trace.threads {
        if thread_pid.get(&thread.tid) == Some(&thread.pid) && named.insert((thread.pid, thread.tid)) {
            events.push(thread_name(thread.pid, thread.tid, &thread.name));
        }
    }
    let cpu_tids = trace.spans.iter().map(|s| s.tid).chain(trace.marks.iter().map(|m| m.tid));
    let used =
        cpu_tids.map(|tid| (thread_pid.get(&tid).copied().unwrap_or(main), tid)).chain(trace.api_calls.iter().map(|a| (a.pid, a.tid)));
    for (pid, tid) in used {
        if named.insert((pid, tid)) {
            events.push(thread_name(pid, tid, &format!("thread {tid}")));
        }
    }
    for (pid, tid, name) in gpu_tracks {
        events.push(thread_name(pid, tid, &name));
    }
    events
}

fn other_data(trace: &TraceData) -> Map<String, Value> {
    let mut map = Map::new();
    for (key, value) in &trace.meta {
        map.entry(key.as_str()).or_insert_with(|| Value::from(value.as_str()));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ThreadRow;

    fn span(start_ns: u64, end_ns: u64, tid: u64, name: &str, depth: u32) -> SpanRow {
        SpanRow { start_ns, end_ns, tid, name: name.to_string(), category: "phase".to_string(), depth, iteration: None, args: None }
    }

    fn sample() -> TraceData {
        TraceData {
            meta: vec![
                ("command".to_string(), "lumen bench".to_string()),
                ("pid".to_string(), "4242".to_string()),
                ("model".to_string(), "smol".to_string()),
                ("model".to_string(), "second value".to_string()),
            ],
            threads: vec![
                ThreadRow { pid: 4242, tid: 7, name: "engine".to_string() },
                ThreadRow { pid: 4242, tid: 8, name: "scheduler".to_string() },
            ],
            spans: vec![
                SpanRow {
                    iteration: Some(3),
                    args: Some(r#"{"tokens": 12, "iteration": 99}"#.to_string()),
                    ..span(1_000, 9_000, 7, "iteration", 0)
                },
                span(2_000, 5_000, 7, "forward", 1),
                span(3_000, 2_000, 8, "backwards", 0),
            ],
            marks: vec![MarkRow {
                ts_ns: 4_500,
                tid: 9,
                name: "arrival".to_string(),
                category: "request".to_string(),
                iteration: None,
                args: Some("not json".to_string()),
            }],
            counters: vec![
                CounterRow { ts_ns: 1_000, name: "kv_util".to_string(), device: None, value: 0.25 },
                CounterRow { ts_ns: 1_000, name: "gpu_util".to_string(), device: Some(1), value: 80.0 },
                CounterRow { ts_ns: 2_000, name: "kv_util".to_string(), device: None, value: f64::NAN },
            ],
            ..TraceData::default()
        }
    }

    fn parse(trace: &TraceData) -> Value {
        serde_json::from_str(&to_chrome_json(trace)).expect("export is valid JSON")
    }

    fn events(doc: &Value) -> &Vec<Value> {
        doc["traceEvents"].as_array().expect("traceEvents is an array")
    }

    fn count(doc: &Value, ph: &str) -> usize {
        events(doc).iter().filter(|e| e["ph"] == ph).count()
    }

    fn find<'a>(doc: &'a Value, ph: &str, name: &str) -> &'a Value {
        events(doc).iter().find(|e| e["ph"] == ph && e["name"] == name).unwrap_or_else(|| panic!("no {ph} event {name}"))
    }

    #[test]
    fn round_trips_with_the_right_events_per_phase() {
        let doc = parse(&sample());
        assert_eq!(doc["displayTimeUnit"], "ms");
        assert_eq!(doc["otherData"], json!({"command": "lumen bench", "pid": "4242", "model": "smol"}));
        // process_name, the two named threads and tid 9, which only a mark uses.
        assert_eq!(count(&doc, "M"), 4);
        assert_eq!(count(&doc, "X"), 3);
        assert_eq!(count(&doc, "i"), 1);
        assert_eq!(count(&doc, "C"), 2, "the NaN sample is left out");
        assert_eq!(events(&doc).len(), 10);
        assert!(events(&doc).iter().all(|e| e["pid"] == 4242));

        let process = &events(&doc)[0];
        assert_eq!(process["name"], "process_name");
        assert_eq!(process["args"]["name"], "lumen bench");
        let thread_names: Vec<(u64, &str)> = events(&doc)
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .map(|e| (e["tid"].as_u64().unwrap(), e["args"]["name"].as_str().unwrap()))
            .collect();
        assert_eq!(thread_names, [(7, "engine"), (8, "scheduler"), (9, "thread 9")]);

        let iteration = find(&doc, "X", "iteration");
        assert_eq!(iteration["cat"], "phase");
        assert_eq!(iteration["tid"], 7);
        assert_eq!(iteration["args"], json!({"tokens": 12, "iteration": 3}));
        assert!(find(&doc, "X", "forward").get("args").is_none());
        assert_eq!(find(&doc, "X", "backwards")["dur"], 0.0, "end before start is clamped to 0");

        let arrival = find(&doc, "i", "arrival");
        assert_eq!(arrival["s"], "t");
        assert_eq!(arrival["cat"], "request");
        assert_eq!(arrival["args"], json!({"args": "not json"}));

        assert_eq!(find(&doc, "C", "kv_util")["args"], json!({"value": 0.25}));
        assert_eq!(find(&doc, "C", "gpu_util (device 1)")["args"], json!({"value": 80.0}));
    }

    #[test]
    fn an_empty_trace_is_a_named_process() {
        let doc = parse(&TraceData::default());
        assert_eq!(events(&doc).len(), 1);
        assert_eq!(events(&doc)[0]["pid"], 1);
        assert_eq!(events(&doc)[0]["args"]["name"], "lumen");
        assert_eq!(doc["otherData"], json!({}));
    }

    #[test]
    fn microseconds_are_exact_to_the_nanosecond() {
        let cases: [(u64, u64, &str, &str); 4] = [
            (0, 1, "\"ts\":0.0", "\"dur\":0.001"),
            (1_234_567_891, 1_234_568_891, "\"ts\":1234567.891", "\"dur\":1.0"),
            (5_000_000_007, 5_000_100_017, "\"ts\":5000000.007", "\"dur\":100.01"),
            (999_999_999_999_999, 999_999_999_999_999 + 123_456_789, "\"ts\":999999999999.999", "\"dur\":123456.789"),
        ];
        for (start, end, ts, dur) in cases {
            let trace = TraceData { spans: vec![span(start, end, 1, "s", 0)], ..TraceData::default() };
            let text = to_chrome_json(&trace);
            assert!(text.contains(ts) && text.contains(dur), "{start}..{end} ns should give {ts} and {dur}:\n{text}");
            let doc: Value = serde_json::from_str(&text).unwrap();
            let x = find(&doc, "X", "s");
            assert_eq!((x["ts"].as_f64().unwrap() * 1000.0).round() as u64, start);
            assert_eq!((x["dur"].as_f64().unwrap() * 1000.0).round() as u64, end - start);
        }
    }

    #[test]
    fn names_are_escaped() {
        let awkward = "say \"hi\"\n\tback\\slash </script> \u{1} ünïcødé 漢字 🚀";
        let trace = TraceData {
            meta: vec![("command".to_string(), awkward.to_string()), (awkward.to_string(), awkward.to_string())],
            threads: vec![ThreadRow { pid: 1, tid: 1, name: awkward.to_string() }],
            spans: vec![SpanRow { category: awkward.to_string(), ..span(0, 10, 1, awkward, 0) }],
            marks: vec![MarkRow {
                ts_ns: 5,
                tid: 1,
                name: awkward.to_string(),
                category: awkward.to_string(),
                iteration: None,
                args: Some(awkward.to_string()),
            }],
            counters: vec![CounterRow { ts_ns: 5, name: awkward.to_string(), device: Some(0), value: 1.0 }],
            ..TraceData::default()
        };
        let text = to_chrome_json(&trace);
        assert!(!text.contains('\u{1}') && !text.contains('\t'), "control characters are escaped");
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(events(&doc)[0]["args"]["name"], awkward);
        assert_eq!(events(&doc)[1]["args"]["name"], awkward);
        let x = find(&doc, "X", awkward);
        assert_eq!(x["cat"], awkward);
        assert_eq!(find(&doc, "i", awkward)["args"]["args"], awkward);
        find(&doc, "C", &format!("{awkward} (device 0)"));
        assert_eq!(doc["otherData"][awkward], awkward);
    }

    #[test]
    fn events_are_sorted_with_the_longer_span_first_at_equal_ts() {
        let trace = TraceData {
            threads: vec![ThreadRow { pid: 1, tid: 1, name: "t".to_string() }],
            spans: vec![
                span(500, 600, 1, "late", 1),
                span(100, 200, 1, "inner", 2),
                span(100, 100, 1, "empty", 3),
                span(100, 400, 1, "middle", 1),
                span(100, 400, 1, "outer", 0),
                span(50, 60, 1, "early", 0),
            ],
            marks: vec![MarkRow { ts_ns: 100, tid: 1, name: "mark".to_string(), category: "c".to_string(), iteration: None, args: None }],
            counters: vec![
                CounterRow { ts_ns: 100, name: "counter".to_string(), device: None, value: 1.0 },
                CounterRow { ts_ns: 0, name: "first".to_string(), device: None, value: 1.0 },
            ],
            ..TraceData::default()
        };
        let doc = parse(&trace);
        let order: Vec<&str> = events(&doc).iter().filter(|e| e["ph"] != "M").map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(order, ["first", "early", "outer", "middle", "inner", "empty", "mark", "counter", "late"]);
        let phases: Vec<&str> = events(&doc).iter().map(|e| e["ph"].as_str().unwrap()).collect();
        assert_eq!(&phases[..2], ["M", "M"], "metadata comes first");
    }

    #[test]
    fn gpu_ops_get_tracks_api_calls_their_threads_and_flows_join_them() {
        let trace = crate::export::gpu_sample();
        let doc = parse(&trace);
        let names = |kind: &str| -> Vec<(u64, u64, String)> {
            let mut found: Vec<_> = events(&doc)
                .iter()
                .filter(|e| e["ph"] == "M" && e["name"] == kind)
                .map(|e| (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap(), e["args"]["name"].as_str().unwrap().to_string()))
                .collect();
            found.sort();
            found
        };
        let owned = |rows: &[(u64, u64, &str)]| rows.iter().map(|&(p, t, n)| (p, t, n.to_string())).collect::<Vec<_>>();
        assert_eq!(names("process_name"), owned(&[(4242, 0, "python serve.py"), (5000, 0, "process 5000")]));
        let base = GPU_TID_BASE;
        assert_eq!(
            names("thread_name"),
            owned(&[
                (4242, 4243, "python"),
                (4242, base, "GPU 0"),
                (4242, base + 1, "GPU 0 · stream 7"),
                (4242, base + 2, "GPU 0 · stream 7 · sync"),
                (5000, 5001, "thread 5001"),
                (5000, base + 3, "GPU 1 · stream 3"),
            ])
        );

        let kernel = find(&doc, "X", "gemm_bf16");
        assert_eq!((&kernel["cat"], &kernel["pid"], &kernel["tid"]), (&json!("kernel"), &json!(4242), &json!(base + 1)));
        assert_eq!((&kernel["ts"], &kernel["dur"]), (&json!(1.25), &json!(1.0)));
        assert_eq!(
            kernel["args"],
            json!({"device": 0, "stream": 7, "correlation": 1, "grid": "64,2,1", "block": "128,1,1", "registers": 80, "shared_mem_bytes": 32768})
        );
        let copy = find(&doc, "X", "memcpy");
        assert_eq!(
            copy["args"],
            json!({"device": 0, "stream": 7, "correlation": 2, "bytes": 1048576, "copy_kind": "HtoD", "pinned": true})
        );
        assert_eq!(find(&doc, "X", "graph")["args"]["graph_id"], 12);
        assert_eq!(find(&doc, "X", "graph")["tid"], base + 1, "whole-graph launches sit on their stream");
        assert_eq!(find(&doc, "X", "sync")["tid"], base + 2);
        assert_eq!(find(&doc, "X", "memset")["tid"], base);

        let launch = find(&doc, "X", "cudaLaunchKernel");
        assert_eq!((&launch["cat"], &launch["pid"], &launch["tid"]), (&json!("cuda_api"), &json!(4242), &json!(4243)));
        assert_eq!(launch["args"], json!({"correlation": 1, "result": 0}));
        assert_eq!(find(&doc, "X", "cuLaunchKernel")["pid"], 5000);
        assert_eq!(find(&doc, "X", "forward")["pid"], 4242);

        // (id, pid, tid, ts) of each flow end.
        let ends = |ph: &str| -> Vec<(u64, u64, u64, f64)> {
            let mut found: Vec<_> = events(&doc)
                .iter()
                .filter(|e| e["ph"] == ph)
                .inspect(|e| assert_eq!((&e["name"], &e["cat"]), (&json!("launch"), &json!("cuda_flow"))))
                .map(|e| (e["id"].as_u64().unwrap(), e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap(), e["ts"].as_f64().unwrap()))
                .collect();
            found.sort_by_key(|f| f.0);
            found
        };
        assert_eq!(
            ends("s"),
            [(1, 4242, 4243, 1.1), (2, 4242, 4243, 1.3), (3, 4242, 4243, 1.5), (4, 4242, 4243, 1.8), (5, 5000, 5001, 2.0)]
        );
        assert_eq!(
            ends("f"),
            [
                (1, 4242, base + 1, 1.25),
                (2, 4242, base + 1, 2.3),
                (3, 4242, base + 1, 3.4),
                (4, 4242, base + 2, 1.8),
                (5, 5000, base + 3, 2.1)
            ]
        );
        assert!(events(&doc).iter().filter(|e| e["ph"] == "f").all(|e| e["bp"] == "e"));

        let ts: Vec<f64> = events(&doc).iter().filter(|e| e["ph"] != "M").map(|e| e["ts"].as_f64().unwrap()).collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "timed events are in ts order");
        let phases: Vec<&str> = events(&doc).iter().filter(|e| e["ts"] == 1.8).map(|e| e["ph"].as_str().unwrap()).collect();
        assert_eq!(phases, ["X", "X", "s", "f"], "at one ts the slices come before the flows that bind to them");
    }

    #[test]
    fn write_errors_reach_the_caller() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = write_chrome_json(&sample(), &mut Broken).unwrap_err();
        assert_eq!(err.to_string(), "disk full");
    }
}
