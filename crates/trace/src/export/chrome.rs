//! Chrome trace JSON export: [`to_chrome_json`] and [`write_chrome_json`] turn a [`TraceData`] into
//! the Chrome Trace Event Format, JSON object form (`{"traceEvents":[...], "displayTimeUnit":"ms",
//! "otherData":{...}}`), which chrome://tracing and the Perfetto UI load.
//!
//! What goes out:
//! - `M` metadata first: `process_name` (meta `command`, else `lumen`) and one `thread_name` per
//!   thread; a tid that spans or marks use but `threads` does not name is called `thread {tid}`, and
//!   a tid named twice keeps its first name;
//! - spans as `X` complete events, marks as `i` instants of thread scope (`"s":"t"`), counters as
//!   `C` events whose `args` is `{"value": v}`. A counter sample with a device goes to its own track
//!   named `"{name} (device {d})"`, so each device gets its own track. A sample whose value is NaN
//!   or infinite is left out: JSON cannot carry it;
//! - span and mark `args` are the row's JSON object plus `iteration` when the row has one (the row's
//!   iteration wins over an `iteration` key in the text); args text that is not a JSON object is
//!   kept as a string under the key `args`;
//! - `otherData` holds the meta key/values; a repeated key keeps its first value, as
//!   [`TraceData::meta`] does. Iteration and request rows have no Chrome event counterpart and stay
//!   out (the spans carry iteration numbers).
//!
//! Every event carries `pid` = [`TraceData::pid`]. `ts` and `dur` are microseconds as JSON numbers,
//! nanoseconds / 1000: below 10^15 ns (11.5 days since the trace epoch) the text is the exact value
//! with up to 3 decimals. A span whose end precedes its start gets `dur` 0. After the metadata the
//! events are sorted by `ts`; at equal `ts` spans come first, the longer before the shorter (then
//! the shallower depth), so viewers nest them, then marks, then counters; remaining ties keep row
//! order. All text goes through serde_json, which does the escaping.

use std::cmp::Reverse;
use std::collections::HashSet;
use std::io::{self, BufWriter, Write};

use serde_json::{json, Map, Value};

use crate::model::{CounterRow, MarkRow, SpanRow, TraceData};

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
    let mut timed: Vec<Timed> = trace
        .spans
        .iter()
        .map(Timed::Span)
        .chain(trace.marks.iter().map(Timed::Mark))
        .chain(trace.counters.iter().filter(|c| c.value.is_finite()).map(Timed::Counter))
        .collect();
    timed.sort_by_key(Timed::sort_key);

    out.write_all(b"{\"traceEvents\":[")?;
    let events = metadata_events(trace).into_iter().chain(timed.iter().map(|event| event.to_json(pid)));
    for (i, event) in events.enumerate() {
        out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut out, &event)?;
    }
    out.write_all(b"\n],\"displayTimeUnit\":\"ms\",\"otherData\":")?;
    serde_json::to_writer(&mut out, &other_data(trace))?;
    out.write_all(b"}\n")?;
    out.flush()
}

/// One row that becomes a timed event.
enum Timed<'a> {
    Span(&'a SpanRow),
    Mark(&'a MarkRow),
    Counter(&'a CounterRow),
}

impl Timed<'_> {
    /// (ts, longer first, spans before marks before counters, shallower first).
    fn sort_key(&self) -> (u64, Reverse<u64>, u8, u32) {
        match self {
            Timed::Span(s) => (s.start_ns, Reverse(span_dur_ns(s)), 0, s.depth),
            Timed::Mark(m) => (m.ts_ns, Reverse(0), 1, 0),
            Timed::Counter(c) => (c.ts_ns, Reverse(0), 2, 0),
        }
    }

    fn to_json(&self, pid: u32) -> Value {
        match self {
            Timed::Span(s) => {
                let mut event = json!({
                    "ph": "X",
                    "name": s.name,
                    "cat": s.category,
                    "pid": pid,
                    "tid": s.tid,
                    "ts": micros(s.start_ns),
                    "dur": micros(span_dur_ns(s)),
                });
                add_args(&mut event, s.args.as_deref(), s.iteration);
                event
            }
            Timed::Mark(m) => {
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
        }
    }
}

fn span_dur_ns(span: &SpanRow) -> u64 {
    span.end_ns.saturating_sub(span.start_ns)
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

fn metadata_events(trace: &TraceData) -> Vec<Value> {
    let pid = trace.pid();
    let process = trace.meta("command").unwrap_or("lumen");
    let mut events = vec![json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": process}})];
    let thread_name = |tid: u64, name: &str| json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}});
    let mut named = HashSet::new();
    for thread in &trace.threads {
        if named.insert(thread.tid) {
            events.push(thread_name(thread.tid, &thread.name));
        }
    }
    for tid in trace.spans.iter().map(|s| s.tid).chain(trace.marks.iter().map(|m| m.tid)) {
        if named.insert(tid) {
            events.push(thread_name(tid, &format!("thread {tid}")));
        }
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
