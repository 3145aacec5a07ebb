//! Trace exports for other viewers: Perfetto protobuf (TrackEvent) and Chrome trace JSON.
//!
//! This module owns what both lay out alike: which processes get a track and what they are called,
//! which process a thread belongs to, the GPU tracks (one per process, device and stream), the
//! arguments shown on GPU ops and API calls, and the flows from each API call to the GPU work it
//! issued.

pub mod chrome;
pub mod perfetto;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use crate::correlate::LaunchIndex;
use crate::model::{ApiCallRow, GpuOpKind, GpuOpRow, TraceData};

/// Where a GPU op is drawn: one track per process, device and stream. Synchronisations wait
/// while the stream's work runs, so they get a track of their own beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GpuTrack {
    pub pid: u32,
    pub device: u32,
    pub stream: Option<u64>,
    pub sync: bool,
}

impl GpuTrack {
    pub fn of(op: &GpuOpRow) -> GpuTrack {
        GpuTrack { pid: op.pid, device: op.device, stream: op.stream, sync: op.kind == GpuOpKind::Sync }
    }

    /// `GPU 0 · stream 7`, `GPU 0` for ops without a stream, with ` · sync` for the
    /// synchronisation track.
    pub fn name(&self) -> String {
        let mut name = format!("GPU {}", self.device);
        if let Some(stream) = self.stream {
            name.push_str(&format!(" · stream {stream}"));
        }
        if self.sync {
            name.push_str(" · sync");
        }
        name
    }
}

/// The GPU tracks of a trace in order (by process, device, stream), each with the indices of its
/// ops in `trace.gpu_ops`.
pub fn gpu_tracks(trace: &TraceData) -> BTreeMap<GpuTrack, Vec<usize>> {
    let mut tracks: BTreeMap<GpuTrack, Vec<usize>> = BTreeMap::new();
    for (i, op) in trace.gpu_ops.iter().enumerate() {
        tracks.entry(GpuTrack::of(op)).or_default().push(i);
    }
    tracks
}

/// The flows from API calls to GPU ops, as (index in `trace.api_calls`, index in
/// `trace.gpu_ops`) in GPU op order: one for every GPU op whose (pid, correlation) is an API
/// call's (the first such call, should several share it). One call may launch several ops.
pub fn correlation_flows(trace: &TraceData) -> Vec<(usize, usize)> {
    let launches = LaunchIndex::new(trace);
    trace.gpu_ops.iter().enumerate().filter_map(|(i, op)| launches.call_index_of(op).map(|call| (call, i))).collect()
}

/// The arguments shown on a GPU op: device, stream and correlation, then whichever of the
/// launch, copy and graph fields it has. Sizes are `x,y,z` text.
pub fn gpu_op_args(op: &GpuOpRow) -> Vec<(&'static str, Value)> {
    let dim3 = |d: [u32; 3]| Value::from(format!("{},{},{}", d[0], d[1], d[2]));
    let fields = [
        ("device", Some(Value::from(op.device))),
        ("stream", op.stream.map(Value::from)),
        ("correlation", op.correlation.map(Value::from)),
        ("grid", op.grid.map(dim3)),
        ("block", op.block.map(dim3)),
        ("registers", op.registers.map(Value::from)),
        ("shared_mem_bytes", op.shared_mem_bytes.map(Value::from)),
        ("bytes", op.bytes.map(Value::from)),
        ("copy_kind", op.copy_kind.as_deref().map(Value::from)),
        ("pinned", op.pinned.map(Value::from)),
        ("graph_id", op.graph_id.map(Value::from)),
        ("graph_node_id", op.graph_node_id.map(Value::from)),
    ];
    fields.into_iter().filter_map(|(name, value)| value.map(|v| (name, v))).collect()
}

/// The arguments shown on an API call: its correlation id and return code, when known.
pub fn api_call_args(call: &ApiCallRow) -> Vec<(&'static str, Value)> {
    let fields = [("correlation", call.correlation.map(Value::from)), ("result", call.result.map(Value::from))];
    fields.into_iter().filter_map(|(name, value)| value.map(|v| (name, v))).collect()
}

/// The category of API-call slices.
pub const API_CATEGORY: &str = "cuda_api";

/// The process of every named thread.
pub fn thread_pids(trace: &TraceData) -> HashMap<u64, u32> {
    let mut pids = HashMap::new();
    for t in &trace.threads {
        pids.entry(t.tid).or_insert(t.pid);
    }
    pids
}

/// The processes that get a track, with their names: every pid that threads, processes rows,
/// GPU ops and API calls name, and the trace's own ([`TraceData::pid`]) when counters or threads
/// without a row use it, or when nothing else does. A process row names its pid; else the trace's
/// own process is `meta.command` (or "lumen") and any other `process {pid}`. The trace's own
/// process comes first, then the rest by pid.
pub fn processes(trace: &TraceData) -> Vec<(u32, String)> {
    let main = trace.pid();
    let named = thread_pids(trace);
    let mut pids: BTreeSet<u32> = trace.threads.iter().map(|t| t.pid).collect();
    pids.extend(trace.processes.iter().map(|p| p.pid));
    pids.extend(trace.gpu_ops.iter().map(|g| g.pid));
    pids.extend(trace.api_calls.iter().map(|a| a.pid));
    let unnamed_threads = trace.spans.iter().map(|s| s.tid).chain(trace.marks.iter().map(|m| m.tid)).any(|tid| !named.contains_key(&tid));
    if pids.is_empty() || unnamed_threads || !trace.counters.is_empty() {
        pids.insert(main);
    }
    let mut rows: HashMap<u32, &str> = HashMap::new();
    for p in &trace.processes {
        rows.entry(p.pid).or_insert(&p.name);
    }
    let main_first = pids.contains(&main).then_some(main).into_iter().chain(pids.iter().copied().filter(|&pid| pid != main));
    main_first
        .map(|pid| {
            let name = match rows.get(&pid) {
                Some(name) => name.to_string(),
                None if pid == main => trace.meta("command").unwrap_or("lumen").to_string(),
                None => format!("process {pid}"),
            };
            (pid, name)
        })
        .collect()
}

/// A trace of two processes with GPU work, for the exporters' tests.
#[cfg(test)]
pub(crate) fn gpu_sample() -> TraceData {
    use crate::model::{ProcessRow, SpanRow, ThreadRow};
    let op = |kind: GpuOpKind, pid: u32, device: u32, stream: Option<u64>, correlation: Option<u64>, start_ns: u64, end_ns: u64| GpuOpRow {
        kind,
        start_ns,
        end_ns,
        pid,
        device,
        stream,
        correlation,
        name: kind.as_str().to_string(),
        ..GpuOpRow::default()
    };
    let call = |pid: u32, tid: u64, name: &str, correlation: Option<u64>, start_ns: u64, end_ns: u64| ApiCallRow {
        start_ns,
        end_ns,
        pid,
        tid,
        name: name.to_string(),
        correlation,
        result: Some(0),
    };
    TraceData {
        meta: vec![("pid".to_string(), "4242".to_string()), ("command".to_string(), "lumen profile".to_string())],
        processes: vec![ProcessRow { pid: 4242, name: "python serve.py".to_string() }],
        threads: vec![ThreadRow { pid: 4242, tid: 4243, name: "python".to_string() }],
        spans: vec![SpanRow {
            start_ns: 1_000,
            end_ns: 9_000,
            tid: 4243,
            name: "forward".to_string(),
            category: "phase".to_string(),
            depth: 0,
            iteration: Some(2),
            args: None,
        }],
        api_calls: vec![
            call(4242, 4243, "cudaLaunchKernel", Some(1), 1_100, 1_200),
            call(4242, 4243, "cudaMemcpyAsync", Some(2), 1_300, 1_400),
            call(4242, 4243, "cudaGraphLaunch", Some(3), 1_500, 1_700),
            call(4242, 4243, "cudaStreamSynchronize", Some(4), 1_800, 8_000),
            call(4242, 4243, "cudaGetLastError", None, 8_100, 8_110),
            call(5000, 5001, "cuLaunchKernel", Some(1), 2_000, 2_050),
        ],
        gpu_ops: vec![
            GpuOpRow {
                name: "gemm_bf16".to_string(),
                grid: Some([64, 2, 1]),
                block: Some([128, 1, 1]),
                registers: Some(80),
                shared_mem_bytes: Some(32_768),
                ..op(GpuOpKind::Kernel, 4242, 0, Some(7), Some(1), 1_250, 2_250)
            },
            GpuOpRow {
                bytes: Some(1 << 20),
                copy_kind: Some("HtoD".to_string()),
                pinned: Some(true),
                ..op(GpuOpKind::Memcpy, 4242, 0, Some(7), Some(2), 2_300, 3_300)
            },
            GpuOpRow { graph_id: Some(12), ..op(GpuOpKind::Graph, 4242, 0, Some(7), Some(3), 3_400, 7_900) },
            op(GpuOpKind::Sync, 4242, 0, Some(7), Some(4), 1_800, 7_950),
            op(GpuOpKind::Memset, 4242, 0, None, None, 8_200, 8_300),
            GpuOpRow { grid: Some([1, 1, 1]), ..op(GpuOpKind::Kernel, 5000, 1, Some(3), Some(1), 2_100, 2_600) },
        ],
        ..TraceData::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CounterRow, ProcessRow, SpanRow, ThreadRow};

    fn op(pid: u32, device: u32, stream: Option<u64>, kind: GpuOpKind, correlation: Option<u64>) -> GpuOpRow {
        GpuOpRow { kind, start_ns: 0, end_ns: 1, pid, device, stream, correlation, name: "k".into(), ..GpuOpRow::default() }
    }

    fn call(pid: u32, correlation: Option<u64>) -> ApiCallRow {
        ApiCallRow { start_ns: 0, end_ns: 1, pid, tid: u64::from(pid), name: "cudaLaunchKernel".into(), correlation, result: None }
    }

    #[test]
    fn gpu_tracks_are_per_process_device_and_stream() {
        let trace = TraceData {
            gpu_ops: vec![
                op(2, 0, Some(7), GpuOpKind::Kernel, None),
                op(1, 1, Some(7), GpuOpKind::Memcpy, None),
                op(2, 0, Some(7), GpuOpKind::Graph, None),
                op(2, 0, Some(7), GpuOpKind::Sync, None),
                op(2, 0, None, GpuOpKind::Sync, None),
            ],
            ..TraceData::default()
        };
        let tracks: Vec<(String, u32, Vec<usize>)> = gpu_tracks(&trace).into_iter().map(|(t, ops)| (t.name(), t.pid, ops)).collect();
        assert_eq!(
            tracks,
            [
                ("GPU 1 · stream 7".to_string(), 1, vec![1]),
                ("GPU 0 · sync".to_string(), 2, vec![4]),
                ("GPU 0 · stream 7".to_string(), 2, vec![0, 2]),
                ("GPU 0 · stream 7 · sync".to_string(), 2, vec![3]),
            ]
        );
    }

    #[test]
    fn flows_match_pid_and_correlation() {
        let trace = TraceData {
            api_calls: vec![call(1, Some(5)), call(2, Some(5)), call(1, None), call(1, Some(5)), call(1, Some(6))],
            gpu_ops: vec![
                op(2, 0, None, GpuOpKind::Kernel, Some(5)),
                op(1, 0, None, GpuOpKind::Kernel, Some(5)),
                op(1, 0, None, GpuOpKind::Kernel, Some(7)),
                op(1, 0, None, GpuOpKind::Kernel, None),
                op(1, 0, None, GpuOpKind::Kernel, Some(5)),
            ],
            ..TraceData::default()
        };
        assert_eq!(correlation_flows(&trace), [(1, 0), (0, 1), (0, 4)]);
    }

    #[test]
    fn args_hold_what_the_op_has() {
        let kernel =
            GpuOpRow { grid: Some([8, 2, 1]), registers: Some(40), graph_id: Some(3), ..op(1, 0, Some(7), GpuOpKind::Kernel, Some(9)) };
        let names: Vec<_> = gpu_op_args(&kernel).into_iter().map(|(n, v)| format!("{n}={v}")).collect();
        assert_eq!(names, ["device=0", "stream=7", "correlation=9", "grid=\"8,2,1\"", "registers=40", "graph_id=3"]);
        let copy =
            GpuOpRow { bytes: Some(64), copy_kind: Some("DtoH".into()), pinned: Some(false), ..op(1, 2, None, GpuOpKind::Memcpy, None) };
        let names: Vec<_> = gpu_op_args(&copy).into_iter().map(|(n, v)| format!("{n}={v}")).collect();
        assert_eq!(names, ["device=2", "bytes=64", "copy_kind=\"DtoH\"", "pinned=false"]);
        assert_eq!(
            api_call_args(&ApiCallRow { result: Some(-2), ..call(1, Some(4)) }),
            [("correlation", 4.into()), ("result", (-2).into())]
        );
    }

    #[test]
    fn processes_are_named_and_unused_ones_left_out() {
        let meta = vec![("pid".to_string(), "10".to_string()), ("command".to_string(), "lumen profile".to_string())];
        let empty = TraceData { meta: meta.clone(), ..TraceData::default() };
        assert_eq!(processes(&empty), [(10, "lumen profile".to_string())]);

        let merged = TraceData {
            meta: meta.clone(),
            processes: vec![ProcessRow { pid: 30, name: "python".into() }],
            threads: vec![ThreadRow { pid: 20, tid: 21, name: "t".into() }],
            gpu_ops: vec![op(30, 0, None, GpuOpKind::Kernel, None)],
            api_calls: vec![call(40, None)],
            ..TraceData::default()
        };
        assert_eq!(processes(&merged), [(20, "process 20".to_string()), (30, "python".to_string()), (40, "process 40".to_string())]);

        let counters = TraceData { counters: vec![CounterRow { ts_ns: 0, name: "c".into(), device: None, value: 1.0 }], ..merged.clone() };
        assert_eq!(processes(&counters)[0], (10, "lumen profile".to_string()));
        let span =
            SpanRow { start_ns: 0, end_ns: 1, tid: 99, name: "s".into(), category: "c".into(), depth: 0, iteration: None, args: None };
        let unnamed = TraceData { spans: vec![span], ..merged };
        assert_eq!(processes(&unnamed).len(), 4);
    }
}
