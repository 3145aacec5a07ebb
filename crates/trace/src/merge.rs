//! Merging per-process traces into one: [`merge_traces`] streams the rows of every input (each
//! written by one instrumented process, possibly cut short) into a new trace, so a command that ran
//! several processes ends with a single file. Rows keep their own pids; the inputs must share one
//! clock.

use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::model::{
    AllocationRow, ApiCallRow, CounterRow, ExpertLoadRow, GpuOpRow, IterationRow, MarkRow, ProcessRow, RequestRow, SpanRow, ThreadRow,
};
use crate::output::same_file;
use crate::store::{wal_path, Batch, GpuBatch, Stored, TraceReader, TraceWriter};

/// Rows per transaction while copying: big enough to amortise commits, small enough that a
/// million-row table never sits in memory whole.
const CHUNK: usize = 50_000;

/// What [`merge_traces`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeSummary {
    /// One entry per input, in the order given.
    pub inputs: Vec<MergedInput>,
    /// The processes in the merged trace (its `processes` rows).
    pub processes: usize,
    /// Whether every input was complete, which is the merged trace's `meta.complete`.
    pub complete: bool,
}

/// What one input contributed.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedInput {
    pub path: PathBuf,
    /// Its `meta.complete`: false when its writer did not finish.
    pub complete: bool,
    /// Rows read per table.
    pub rows: Vec<(&'static str, u64)>,
    /// Rows left out per table: the `iterations`, `requests`, `allocations` and `expert_load` of every input but
    /// the first that has iterations or requests (their ids would collide). Empty when none were.
    pub dropped: Vec<(&'static str, u64)>,
}

impl MergedInput {
    /// The rows read from `table`.
    pub fn rows_of(&self, table: &str) -> u64 {
        self.rows.iter().find(|(t, _)| *t == table).map_or(0, |(_, n)| *n)
    }
}

/// Writes one trace at `output` holding every row of `inputs`, with `meta` plus `processes` (how
/// many), `merged_from` (how many inputs) and `complete` (whether every input was). Iterations,
/// requests, allocations and expert loads come from the first input that has iterations or requests; the
/// summary says what was left out of the others. Every input is opened before `output` is
/// created, so an unreadable one fails the merge naming it and leaves no output; an error later
/// removes the partial output.
pub fn merge_traces(inputs: &[PathBuf], output: &Path, meta: &[(String, String)]) -> Result<MergeSummary> {
    if inputs.is_empty() {
        bail!("merge into {}: no input traces", output.display());
    }
    let readers = inputs.iter().map(|p| TraceReader::open(p)).collect::<Result<Vec<_>, _>>()?;
    refuse_double_counting(&readers)?;
    if let Ok(out) = output.canonicalize() {
        if let Some(same) = inputs.iter().find(|p| p.canonicalize().is_ok_and(|p| p == out)) {
            bail!("merge into {}: the output is also the input {}", output.display(), same.display());
        }
    }
    let mut writer = TraceWriter::create(output, meta)?;
    let merged = copy_all(&readers, &mut writer).and_then(|summary| {
        writer.set_meta("processes", &summary.processes.to_string())?;
        writer.set_meta("merged_from", &inputs.len().to_string())?;
        writer.close(summary.complete)?;
        Ok(summary)
    });
    if merged.is_err() {
        for p in [output.to_path_buf(), wal_path(output, "-wal"), wal_path(output, "-shm")] {
            let _ = std::fs::remove_file(p);
        }
    }
    merged
}

/// Copies every input's rows into `writer` and returns the summary.
/// Refuses inputs that would count rows twice: one file given twice, or two inputs holding GPU
/// operations of the same process (a trace and its copy, say). A recorder trace and a collector
/// trace of one process are fine: one holds its CPU rows, the other its GPU rows.
fn refuse_double_counting(readers: &[TraceReader]) -> Result<()> {
    let mut gpu_owner: BTreeMap<u32, &Path> = BTreeMap::new();
    for (i, r) in readers.iter().enumerate() {
        if let Some(first) = readers[..i].iter().find(|o| same_file(o.path(), r.path())) {
            bail!("input {} is given twice (also as {}); its rows would be counted twice", r.path().display(), first.path().display());
        }
        for pid in r.gpu_pids()? {
            if let Some(other) = gpu_owner.insert(pid, r.path()) {
                bail!(
                    "inputs {} and {} both hold GPU operations of process {pid}; merging them would count each operation twice",
                    other.display(),
                    r.path().display()
                );
            }
        }
    }
    Ok(())
}

/// The meta key naming the clock a trace's times are on; absent means lumen's own (the host's
/// monotonic clock, in ns).
pub const CLOCK_KEY: &str = "clock";
/// The clock of a trace imported from torch.profiler: Kineto's own origin, not lumen's.
pub const KINETO_CLOCK: &str = "kineto";

/// The clocks of `inputs` when they differ (each input's path and clock), else `None`: their
/// times cannot be laid on one axis.
pub fn differing_clocks(inputs: &[PathBuf]) -> Result<Option<Vec<(PathBuf, String)>>> {
    let mut clocks = Vec::new();
    for p in inputs {
        let meta = crate::store::read_meta(p)?;
        let clock = meta.into_iter().find(|(k, _)| k == CLOCK_KEY).map_or_else(|| "monotonic".to_string(), |(_, v)| v);
        clocks.push((p.clone(), clock));
    }
    Ok(clocks.windows(2).any(|w| w[0].1 != w[1].1).then_some(clocks))
}

fn copy_all(readers: &[TraceReader], writer: &mut TraceWriter) -> Result<MergeSummary> {
    let mut inputs = Vec::new();
    // The names processes give themselves, then the names inferred from an input's meta.
    let mut named = BTreeMap::new();
    let mut inferred = BTreeMap::new();
    let mut pids = BTreeSet::new();
    let mut owner = None;
    for (i, reader) in readers.iter().enumerate() {
        let meta = reader.meta()?;
        let meta_value = |key: &str| meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        if let Some(pid) = meta_value("pid").and_then(|p| p.parse::<u32>().ok()) {
            pids.insert(pid);
            inferred.entry(pid).or_insert_with(|| meta_value("command").unwrap_or("lumen").to_string());
        }
        let mut rows = Vec::new();
        let mut dropped = Vec::new();

        let processes: Vec<ProcessRow> = reader.all()?;
        rows.push((ProcessRow::TABLE, processes.len() as u64));
        for p in processes {
            pids.insert(p.pid);
            named.entry(p.pid).or_insert(p.name);
        }
        let threads: Vec<ThreadRow> = reader.all()?;
        rows.push((ThreadRow::TABLE, threads.len() as u64));
        pids.extend(threads.iter().map(|t| t.pid));
        writer.write(&Batch::default(), &GpuBatch { threads: &threads, ..Default::default() })?;

        rows.push(copy(reader, writer, |w, spans: &[SpanRow]| w.append(&Batch { spans, ..Default::default() }))?);
        rows.push(copy(reader, writer, |w, marks: &[MarkRow]| w.append(&Batch { marks, ..Default::default() }))?);
        rows.push(copy(reader, writer, |w, counters: &[CounterRow]| w.append(&Batch { counters, ..Default::default() }))?);
        rows.push(copy(reader, writer, |w, gpu_ops: &[GpuOpRow]| {
            pids.extend(gpu_ops.iter().map(|g| g.pid));
            w.append_gpu(&GpuBatch { gpu_ops, ..Default::default() })
        })?);
        rows.push(copy(reader, writer, |w, api_calls: &[ApiCallRow]| {
            pids.extend(api_calls.iter().map(|a| a.pid));
            w.append_gpu(&GpuBatch { api_calls, ..Default::default() })
        })?);

        if owner.is_none_or(|o| o == i) {
            let iterations = copy(reader, writer, |w, iterations: &[IterationRow]| w.append(&Batch { iterations, ..Default::default() }))?;
            let requests = copy(reader, writer, |w, requests: &[RequestRow]| w.append(&Batch { requests, ..Default::default() }))?;
            let allocations =
                copy(reader, writer, |w, allocations: &[AllocationRow]| w.append(&Batch { allocations, ..Default::default() }))?;
            let expert_loads =
                copy(reader, writer, |w, expert_loads: &[ExpertLoadRow]| w.append(&Batch { expert_loads, ..Default::default() }))?;
            if iterations.1 + requests.1 > 0 {
                owner = Some(i);
            }
            rows.extend([iterations, requests, allocations, expert_loads]);
        } else {
            for table in
                [skip::<IterationRow>(reader)?, skip::<RequestRow>(reader)?, skip::<AllocationRow>(reader)?, skip::<ExpertLoadRow>(reader)?]
            {
                rows.push(table);
                if table.1 > 0 {
                    dropped.push(table);
                }
            }
        }
        inputs.push(MergedInput { path: reader.path().to_path_buf(), complete: meta_value("complete") == Some("true"), rows, dropped });
    }

    let processes: Vec<ProcessRow> = pids
        .into_iter()
        .map(|pid| {
            let name = named.remove(&pid).or_else(|| inferred.remove(&pid)).unwrap_or_else(|| format!("process {pid}"));
            ProcessRow { pid, name }
        })
        .collect();
    writer.append_gpu(&GpuBatch { processes: &processes, ..Default::default() })?;
    let complete = inputs.iter().all(|i| i.complete);
    Ok(MergeSummary { inputs, processes: processes.len(), complete })
}

/// Streams `T`'s table from `reader` into `writer` through `append`, a chunk per transaction;
/// returns the table and how many rows it had.
fn copy<T: Stored>(
    reader: &TraceReader,
    writer: &mut TraceWriter,
    mut append: impl FnMut(&mut TraceWriter, &[T]) -> Result<()>,
) -> Result<(&'static str, u64)> {
    let n = reader.stream(CHUNK, |chunk: Vec<T>| append(writer, &chunk))?;
    Ok((T::TABLE, n))
}

/// Reads `T`'s table without copying it; returns the table and how many rows it had.
fn skip<T: Stored>(reader: &TraceReader) -> Result<(&'static str, u64)> {
    Ok((T::TABLE, reader.stream(CHUNK, |_: Vec<T>| Ok(()))?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GpuOpKind, TraceData};
    use crate::store::read_trace;
    use lumen_test_support::scratch::Scratch;

    fn op(pid: u32, start_ns: u64, correlation: u64) -> GpuOpRow {
        GpuOpRow {
            kind: GpuOpKind::Kernel,
            start_ns,
            end_ns: start_ns + 100,
            pid,
            device: 0,
            stream: Some(7),
            correlation: Some(correlation),
            name: format!("kernel_{}", correlation % 3),
            grid: Some([4, 1, 1]),
            block: Some([128, 1, 1]),
            registers: Some(32),
            shared_mem_bytes: Some(0),
            bytes: None,
            copy_kind: None,
            pinned: None,
            graph_id: None,
            graph_node_id: None,
        }
    }

    fn call(pid: u32, tid: u64, start_ns: u64, correlation: u64) -> ApiCallRow {
        ApiCallRow {
            start_ns,
            end_ns: start_ns + 50,
            pid,
            tid,
            name: "cudaLaunchKernel".into(),
            correlation: Some(correlation),
            result: Some(0),
        }
    }

    fn iteration(iter: u64) -> IterationRow {
        IterationRow {
            iter,
            start_ns: iter * 1000,
            end_ns: iter * 1000 + 900,
            ctx_reqs: 1,
            gen_reqs: 2,
            ctx_tokens: 10,
            gen_tokens: 2,
            kv_used_blocks: 4,
            kv_total_blocks: 16,
            host_ms: 0.5,
            device_ms: Some(0.4),
            queued_reqs: Some(iter),
            weight_bytes: Some(1_000_000 + iter),
            kv_bytes_read: Some(2_000 * (iter + 1)),
            flops: Some(3.5e9),
            fp8_flops: None,
            attention_flops: None,
        }
    }

    fn request(id: u64) -> RequestRow {
        RequestRow { id, arrival_ns: id, first_token_ns: Some(id + 10), end_ns: id + 100, input_len: 8, output_len: 4 }
    }

    fn allocation(iteration: u64) -> AllocationRow {
        AllocationRow { iteration, count: 3, bytes: 300, frees: 2, kv_blocks_allocated: 1, kv_blocks_freed: 0 }
    }

    /// The engine process (pid 100): threads, spans, a mark, a counter, iterations 0..3 with
    /// requests and allocations, and its own GPU work. Finished.
    fn engine(path: &Path) -> TraceData {
        let meta = [("pid".to_string(), "100".to_string()), ("command".to_string(), "lumen serve".to_string())];
        let mut w = TraceWriter::create(path, &meta).unwrap();
        let threads = [ThreadRow { pid: 100, tid: 101, name: "engine".into() }];
        let spans = [SpanRow {
            start_ns: 0,
            end_ns: 2_000,
            tid: 101,
            name: "forward".into(),
            category: "phase".into(),
            depth: 0,
            iteration: Some(0),
            args: None,
        }];
        let marks = [MarkRow { ts_ns: 5, tid: 101, name: "arrive".into(), category: "api".into(), iteration: None, args: None }];
        let counters = [CounterRow { ts_ns: 5, name: "kv_util".into(), device: None, value: 0.5 }];
        let iterations: Vec<_> = (0..3).map(iteration).collect();
        let requests: Vec<_> = (0..2).map(request).collect();
        let allocations: Vec<_> = (0..3).map(allocation).collect();
        let expert_loads: Vec<_> = (0..3).map(|iteration| ExpertLoadRow { iteration, layer: 0, tokens: vec![3, 1, iteration] }).collect();
        let ops: Vec<_> = (0..4).map(|i| op(100, 100 + i * 200, i)).collect();
        let calls: Vec<_> = (0..4).map(|i| call(100, 101, 50 + i * 200, i)).collect();
        let batch = Batch {
            spans: &spans,
            marks: &marks,
            counters: &counters,
            iterations: &iterations,
            requests: &requests,
            allocations: &allocations,
            expert_loads: &expert_loads,
            ..Default::default()
        };
        let gpu = GpuBatch { threads: &threads, gpu_ops: &ops, api_calls: &calls, ..Default::default() };
        w.write(&batch, &gpu).unwrap();
        w.finish().unwrap();
        read_trace(path).unwrap()
    }

    /// A worker process (pid 200) whose writer was cut short: it names itself, has GPU work on two
    /// devices and iterations and requests of its own whose ids collide with the engine's.
    fn worker(path: &Path) -> TraceData {
        let mut w = TraceWriter::create(path, &[("pid".to_string(), "200".to_string())]).unwrap();
        let processes = [ProcessRow { pid: 200, name: "python worker.py".into() }];
        let threads = [ThreadRow { pid: 200, tid: 201, name: "python".into() }, ThreadRow { pid: 200, tid: 202, name: "loader".into() }];
        let ops: Vec<_> = (0..6).map(|i| GpuOpRow { device: (i % 2) as u32, ..op(200, 150 + i * 100, i) }).collect();
        let calls: Vec<_> = (0..6).map(|i| call(200, 201, 100 + i * 100, i)).collect();
        w.append_gpu(&GpuBatch { processes: &processes, threads: &threads, gpu_ops: &ops, api_calls: &calls }).unwrap();
        let iterations: Vec<_> = (0..2).map(iteration).collect();
        let requests = [request(0)];
        let allocations = [allocation(0), allocation(1)];
        let expert_loads = [ExpertLoadRow { iteration: 1, layer: 0, tokens: vec![9, 9] }];
        let batch = Batch {
            iterations: &iterations,
            requests: &requests,
            allocations: &allocations,
            expert_loads: &expert_loads,
            ..Default::default()
        };
        w.append(&batch).unwrap();
        drop(w);
        read_trace(path).unwrap()
    }

    #[test]
    fn two_processes_merge_with_exact_row_counts() {
        let s = Scratch::new("merge-two");
        let (a, b, out) = (s.dir.join("engine.lumen"), s.dir.join("worker.lumen"), s.dir.join("merged.lumen"));
        let (engine, worker) = (engine(&a), worker(&b));
        assert_eq!(worker.meta("complete"), Some("false"));
        let meta = [("command".to_string(), "lumen profile -- python worker.py".to_string())];
        let summary = merge_traces(&[a.clone(), b.clone()], &out, &meta).unwrap();

        assert!(!summary.complete);
        assert_eq!(summary.processes, 2);
        let [first, second] = &summary.inputs[..] else { panic!("two inputs: {summary:?}") };
        assert_eq!((&first.path, first.complete, &second.path, second.complete), (&a, true, &b, false));
        let tables = [
            "processes",
            "threads",
            "spans",
            "marks",
            "counters",
            "gpu_ops",
            "api_calls",
            "iterations",
            "requests",
            "allocations",
            "expert_load",
        ];
        let counts = |input: &MergedInput| tables.map(|t| input.rows_of(t));
        assert_eq!(counts(first), [0, 1, 1, 1, 1, 4, 4, 3, 2, 3, 3]);
        assert_eq!(counts(second), [1, 2, 0, 0, 0, 6, 6, 2, 1, 2, 1]);
        assert!(first.dropped.is_empty());
        assert_eq!(second.dropped, [("iterations", 2), ("requests", 1), ("allocations", 2), ("expert_load", 1)]);

        let m = read_trace(&out).unwrap();
        assert_eq!(m.meta("complete"), Some("false"));
        assert_eq!(m.meta("merged_from"), Some("2"));
        assert_eq!(m.meta("processes"), Some("2"));
        assert_eq!(m.meta("command"), meta[0].1.as_str().into());
        assert_eq!(
            m.processes,
            [ProcessRow { pid: 100, name: "lumen serve".into() }, ProcessRow { pid: 200, name: "python worker.py".into() }]
        );
        let mut threads = engine.threads.clone();
        threads.extend(worker.threads.clone());
        assert_eq!(m.threads, threads);
        assert_eq!((m.spans, m.marks, m.counters), (engine.spans, engine.marks, engine.counters));
        assert_eq!(m.iterations, (0..3).map(iteration).collect::<Vec<_>>(), "iterations keep their queue and work fields");
        assert_eq!((m.iterations, m.requests, m.allocations), (engine.iterations, engine.requests, engine.allocations));
        assert_eq!(m.expert_loads, engine.expert_loads);
        let mut ops = engine.gpu_ops.clone();
        ops.extend(worker.gpu_ops.clone());
        ops.sort_by_key(|o| (o.start_ns, o.pid));
        let mut merged_ops = m.gpu_ops.clone();
        merged_ops.sort_by_key(|o| (o.start_ns, o.pid));
        assert_eq!(merged_ops, ops);
        assert_eq!(m.api_calls.len(), 10);
        assert_eq!(m.api_calls.iter().filter(|c| c.pid == 200).count(), 6);
    }

    #[test]
    fn the_first_input_with_iterations_owns_them() {
        let s = Scratch::new("merge-owner");
        let (a, b, out) = (s.dir.join("worker.lumen"), s.dir.join("engine.lumen"), s.dir.join("merged.lumen"));
        let (worker, engine) = (worker(&a), engine(&b));
        let summary = merge_traces(&[a, b], &out, &[]).unwrap();
        assert!(summary.inputs[0].dropped.is_empty());
        assert_eq!(summary.inputs[1].dropped, [("iterations", 3), ("requests", 2), ("allocations", 3), ("expert_load", 3)]);
        let m = read_trace(&out).unwrap();
        assert_eq!((m.iterations, m.requests, m.allocations), (worker.iterations, worker.requests, worker.allocations));
        assert_eq!(m.spans, engine.spans, "only iteration-keyed tables are dropped");
    }

    #[test]
    fn bad_inputs_are_named_and_leave_no_output() {
        let s = Scratch::new("merge-bad");
        let (good, out) = (s.dir.join("good.lumen"), s.dir.join("merged.lumen"));
        engine(&good);
        let missing = s.dir.join("missing.lumen");
        let e = format!("{:#}", merge_traces(&[good.clone(), missing.clone()], &out, &[]).unwrap_err());
        assert!(e.contains(&missing.display().to_string()) && e.contains("no such file"), "{e}");
        let garbage = s.dir.join("garbage.lumen");
        std::fs::write(&garbage, "not a trace, only text long enough to look like a file header").unwrap();
        let e = format!("{:#}", merge_traces(&[good.clone(), garbage.clone()], &out, &[]).unwrap_err());
        assert!(e.contains(&garbage.display().to_string()) && e.contains("not a lumen trace"), "{e}");
        assert!(!out.exists(), "a failed merge writes nothing");

        let e = format!("{:#}", merge_traces(std::slice::from_ref(&good), &good, &[]).unwrap_err());
        assert!(e.contains("the output is also the input"), "{e}");
        assert!(read_trace(&good).is_ok(), "the input survives");
        let e = format!("{:#}", merge_traces(&[], &out, &[]).unwrap_err());
        assert!(e.contains("no input traces") && e.contains("merged.lumen"), "{e}");
    }

    #[test]
    fn inputs_that_would_count_rows_twice_are_refused() {
        let s = Scratch::new("merge-twice");
        let (a, b, out) = (s.dir.join("worker.lumen"), s.dir.join("copy.lumen"), s.dir.join("merged.lumen"));
        worker(&a);
        let e = format!("{:#}", merge_traces(&[a.clone(), a.clone()], &out, &[]).unwrap_err());
        assert!(e.contains("is given twice"), "{e}");
        std::fs::copy(&a, &b).unwrap();
        let e = format!("{:#}", merge_traces(&[a.clone(), b.clone()], &out, &[]).unwrap_err());
        assert!(e.contains("both hold GPU operations of process 200"), "{e}");
        assert!(!out.exists(), "a refused merge writes nothing");
    }

    #[test]
    fn clocks_that_differ_are_found() {
        let s = Scratch::new("merge-clocks");
        let (a, b, c) = (s.dir.join("engine.lumen"), s.dir.join("worker.lumen"), s.dir.join("import.lumen"));
        engine(&a);
        worker(&b);
        assert_eq!(differing_clocks(&[a.clone(), b.clone()]).unwrap(), None, "lumen's traces share one clock");
        let mut w = TraceWriter::create(&c, &[(CLOCK_KEY.to_string(), KINETO_CLOCK.to_string())]).unwrap();
        w.append(&Batch::default()).unwrap();
        w.finish().unwrap();
        let clocks = differing_clocks(&[a.clone(), c.clone()]).unwrap().expect("the clocks differ");
        assert_eq!(clocks.iter().map(|(_, clock)| clock.as_str()).collect::<Vec<_>>(), ["monotonic", "kineto"]);
    }

    #[test]
    fn a_bad_row_midway_removes_the_partial_output() {
        let s = Scratch::new("merge-midway");
        let (good, bad, out) = (s.dir.join("good.lumen"), s.dir.join("bad.lumen"), s.dir.join("merged.lumen"));
        engine(&good);
        worker(&bad);
        rusqlite::Connection::open(&bad).unwrap().execute("UPDATE gpu_ops SET kind = 'warp' WHERE rowid = 3", []).unwrap();
        let e = format!("{:#}", merge_traces(&[good, bad.clone()], &out, &[]).unwrap_err());
        assert!(e.contains(&bad.display().to_string()) && e.contains("unknown GPU op kind \"warp\""), "{e}");
        assert!(!out.exists() && !wal_path(&out, "-wal").exists());
    }
}
