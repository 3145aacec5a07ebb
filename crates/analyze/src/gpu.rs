//! GPU utilisation and idle gaps, per device. Busy time is the union of kernel, copy, memset and
//! graph-launch intervals (never synchronisations). Each gap's time is split so that it adds up:
//! the part the host spent blocked inside a synchronising call is sync wait (with the relaunch
//! after it, when the next work follows within [`SYNC_RELAUNCH_NS`]); the rest is a launch gap
//! when it is short and the next operation's launch call had already started, else host wait:
//! the host was doing something else. Gaps inside a one-off outlier step (crate::steps) are
//! counted apart and judged by no pattern.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use lumen_trace::model::{GpuOpKind, GpuOpRow, SpanRow, TraceData};
use serde::Serialize;

use crate::measured::{Measured, NO_GPU_OPS};
use crate::stats::{covered_ns, covered_within, share, union, Buckets, Interval};
use crate::steps::StepWindows;
use crate::text;
use crate::view::{fact, missing, Block};
use crate::LaunchIndex;

/// A gap shorter than this whose next operation was launched before it began is launch overhead.
pub const LAUNCH_GAP_NS: u64 = 20_000;
/// After a synchronising call returns, host time shorter than this before the next launch is
/// the relaunch the sync forced (the queue was empty), so it counts as sync wait; longer, it is
/// host work of its own.
pub const SYNC_RELAUNCH_NS: u64 = 100_000;
/// How many of the largest gaps each device lists.
pub const TOP_GAPS: usize = 10;
/// How many overlapping CPU spans each listed gap names.
const SPANS_PER_GAP: usize = 3;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceUtilisation {
    pub device: u32,
    /// The first busy start and the last busy end: the window busy and idle time divide.
    pub start_ns: u64,
    pub end_ns: u64,
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub busy_share: f64,
    /// Per operation kind, the time at least one op of the kind ran, as a share of busy time.
    pub kinds: Vec<KindBusy>,
    pub streams: Vec<StreamBusy>,
    /// The busy share of each of (at most) `buckets` equal slices of the window.
    pub series: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindBusy {
    pub kind: GpuOpKind,
    pub ops: usize,
    pub busy_ns: u64,
    pub share_of_busy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamBusy {
    pub stream: Option<u64>,
    pub ops: usize,
    pub busy_ns: u64,
    /// Busy time as a share of the device's window.
    pub busy_share: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapClass {
    /// A synchronisation (op or API call) overlaps the gap: the host waited for the GPU.
    SyncWait,
    /// Short, and the next op's launch call began before the gap: launch overhead.
    LaunchGap,
    /// The host had not launched the next work yet.
    HostWait,
    /// Inside a one-off outlier step (warm-up, first graph launch, compilation): not steady state.
    OutlierStep,
}

impl GapClass {
    pub const ALL: [GapClass; 4] = [GapClass::SyncWait, GapClass::LaunchGap, GapClass::HostWait, GapClass::OutlierStep];

    pub fn as_str(self) -> &'static str {
        match self {
            GapClass::SyncWait => "sync wait",
            GapClass::LaunchGap => "launch gap",
            GapClass::HostWait => "host wait",
            GapClass::OutlierStep => "outlier step",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceGaps {
    pub device: u32,
    /// The device's first busy start, the origin the report measures gap starts from.
    pub start_ns: u64,
    pub count: usize,
    pub total_ns: u64,
    pub classes: Vec<GapClassTotal>,
    /// The largest gaps, longest first.
    pub largest: Vec<Gap>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GapClassTotal {
    pub class: GapClass,
    /// Gaps with some time of this class.
    pub count: usize,
    /// The time of this class, summed over the gaps' parts.
    pub total_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gap {
    pub start_ns: u64,
    pub duration_ns: u64,
    /// The class holding most of the gap's time.
    pub class: GapClass,
    /// The part spent inside synchronising calls.
    pub sync_ns: u64,
    /// The CPU spans overlapping the gap most, most overlap first.
    pub cpu_spans: Vec<SpanOverlap>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpanOverlap {
    pub name: String,
    pub tid: u64,
    pub thread: Option<String>,
    pub overlap_ns: u64,
}

/// Kernels of one stream run one after another, but under programmatic dependent launch a kernel
/// starts, its blocks resident and waiting, before the kernel ahead of it on its stream has
/// ended. Each such kernel's start moves to that end, so that a kernel is not charged for its wait
/// and kernel times add up to the stream's busy time. Returns the trace to analyse (the given one,
/// borrowed, when no kernel moved) and how many kernels moved. Kernels without a stream id stay.
pub fn serialize_streams(trace: &TraceData) -> (Cow<'_, TraceData>, usize) {
    let mut streams: HashMap<(u32, u32, u64), Vec<usize>> = HashMap::new();
    for (i, op) in trace.gpu_ops.iter().enumerate() {
        if let (GpuOpKind::Kernel, Some(stream)) = (op.kind, op.stream) {
            streams.entry((op.pid, op.device, stream)).or_default().push(i);
        }
    }
    let mut moved: Vec<(usize, u64)> = Vec::new();
    for mut kernels in streams.into_values() {
        kernels.sort_unstable_by_key(|&i| (trace.gpu_ops[i].start_ns, trace.gpu_ops[i].end_ns));
        let mut ahead_end = 0;
        for i in kernels {
            let op = &trace.gpu_ops[i];
            if op.start_ns < ahead_end {
                moved.push((i, ahead_end.min(op.end_ns)));
            }
            ahead_end = ahead_end.max(op.end_ns);
        }
    }
    if moved.is_empty() {
        return (Cow::Borrowed(trace), 0);
    }
    let mut owned = trace.clone();
    for &(i, start) in &moved {
        owned.gpu_ops[i].start_ns = start;
    }
    (Cow::Owned(owned), moved.len())
}

/// Whether an op of `kind` keeps the GPU busy (everything but synchronisations).
pub fn is_busy(kind: GpuOpKind) -> bool {
    kind != GpuOpKind::Sync
}

/// One device's busy ops sorted by start, and their union.
struct Device<'a> {
    device: u32,
    ops: Vec<&'a GpuOpRow>,
    busy: Vec<Interval>,
}

fn devices(trace: &TraceData) -> Vec<Device<'_>> {
    let mut by_device: BTreeMap<u32, Vec<&GpuOpRow>> = BTreeMap::new();
    for op in trace.gpu_ops.iter().filter(|op| is_busy(op.kind)) {
        by_device.entry(op.device).or_default().push(op);
    }
    by_device
        .into_iter()
        .map(|(device, mut ops)| {
            ops.sort_unstable_by_key(|op| (op.start_ns, op.end_ns));
            let busy = union(ops.iter().map(|op| (op.start_ns, op.end_ns)));
            Device { device, ops, busy }
        })
        .collect()
}

pub(crate) fn analyze(
    trace: &TraceData,
    launches: &LaunchIndex,
    steps: &StepWindows,
    buckets: usize,
    top: usize,
) -> (Measured<Vec<DeviceUtilisation>>, Measured<Vec<DeviceGaps>>) {
    let unavailable = |why: &str| (Measured::NotAvailable(why.into()), Measured::NotAvailable(why.into()));
    if trace.gpu_ops.is_empty() {
        return unavailable(NO_GPU_OPS);
    }
    let devices = devices(trace);
    if devices.is_empty() {
        return unavailable("the trace's GPU operations are all synchronisations: no kernels, copies, memsets or graph launches");
    }
    let sync = sync_intervals(trace);
    let threads: HashMap<u64, &str> = trace.threads.iter().map(|t| (t.tid, t.name.as_str())).collect();
    (
        Measured::Available(devices.iter().map(|d| utilisation(d, buckets)).collect()),
        Measured::Available(devices.iter().map(|d| gaps(d, &sync, launches, steps, &trace.spans, &threads, top)).collect()),
    )
}

fn utilisation(d: &Device, buckets: usize) -> DeviceUtilisation {
    let (start_ns, end_ns) = (d.busy[0].start, d.busy[d.busy.len() - 1].end);
    let window = end_ns - start_ns;
    let busy_ns = covered_ns(&d.busy);
    let kinds = GpuOpKind::ALL
        .into_iter()
        .filter(|&kind| is_busy(kind))
        .filter_map(|kind| {
            let ops: Vec<(u64, u64)> = d.ops.iter().filter(|op| op.kind == kind).map(|op| (op.start_ns, op.end_ns)).collect();
            let kind_ns = covered_ns(&union(ops.iter().copied()));
            (!ops.is_empty()).then(|| KindBusy {
                kind,
                ops: ops.len(),
                busy_ns: kind_ns,
                share_of_busy: share(kind_ns as f64, busy_ns as f64),
            })
        })
        .collect();
    let mut by_stream: BTreeMap<Option<u64>, Vec<(u64, u64)>> = BTreeMap::new();
    for op in &d.ops {
        by_stream.entry(op.stream).or_default().push((op.start_ns, op.end_ns));
    }
    let streams = by_stream
        .into_iter()
        .map(|(stream, ops)| {
            let stream_ns = covered_ns(&union(ops.iter().copied()));
            StreamBusy { stream, ops: ops.len(), busy_ns: stream_ns, busy_share: share(stream_ns as f64, window as f64) }
        })
        .collect();
    DeviceUtilisation {
        device: d.device,
        start_ns,
        end_ns,
        busy_ns,
        idle_ns: window - busy_ns,
        busy_share: share(busy_ns as f64, window as f64),
        kinds,
        streams,
        series: Buckets::new(start_ns, end_ns, buckets).coverage(&d.busy),
    }
}

/// The union of synchronisation ops and synchronising API calls, on any device or thread.
fn sync_intervals(trace: &TraceData) -> Vec<Interval> {
    let ops = trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Sync).map(|op| (op.start_ns, op.end_ns));
    let calls = trace.api_calls.iter().filter(|call| call.name.contains("Synchronize")).map(|call| (call.start_ns, call.end_ns));
    let mut intervals: Vec<(u64, u64)> = ops.chain(calls).collect();
    intervals.sort_unstable();
    union(intervals)
}

/// One gap's time by class: the sync part, and the class of the rest.
struct GapParts {
    sync_ns: u64,
    rest: GapClass,
    rest_ns: u64,
}

impl GapParts {
    fn dominant(&self) -> GapClass {
        if self.sync_ns >= self.rest_ns {
            GapClass::SyncWait
        } else {
            self.rest
        }
    }
}

fn classify(start: u64, end: u64, next: &GpuOpRow, sync: &[Interval], launches: &LaunchIndex, steps: &StepWindows) -> GapParts {
    let duration = end - start;
    if steps.in_outlier(start) {
        return GapParts { sync_ns: 0, rest: GapClass::OutlierStep, rest_ns: duration };
    }
    let sync_ns = covered_within(sync, start, end);
    let rest_ns = duration - sync_ns;
    if sync_ns > 0 && rest_ns < SYNC_RELAUNCH_NS {
        // The relaunch after the host came back from the sync: still the sync's cost.
        return GapParts { sync_ns: duration, rest: GapClass::SyncWait, rest_ns: 0 };
    }
    let short = rest_ns < LAUNCH_GAP_NS;
    if short && launches.launch_of(next).is_some_and(|call| call.start_ns < start) {
        GapParts { sync_ns, rest: GapClass::LaunchGap, rest_ns }
    } else {
        GapParts { sync_ns, rest: GapClass::HostWait, rest_ns }
    }
}

fn gaps(
    d: &Device,
    sync: &[Interval],
    launches: &LaunchIndex,
    steps: &StepWindows,
    spans: &[SpanRow],
    threads: &HashMap<u64, &str>,
    top: usize,
) -> DeviceGaps {
    let mut all: Vec<(u64, u64, GapParts)> = d
        .busy
        .windows(2)
        .map(|pair| {
            let (start, end) = (pair[0].end, pair[1].start);
            (start, end - start, classify(start, end, d.ops[pair[1].first], sync, launches, steps))
        })
        .collect();
    let classes = GapClass::ALL
        .into_iter()
        .map(|class| {
            let part = |p: &GapParts| match class {
                GapClass::SyncWait => p.sync_ns,
                _ if p.rest == class => p.rest_ns,
                _ => 0,
            };
            let parts = all.iter().map(|g| part(&g.2)).filter(|&ns| ns > 0);
            GapClassTotal { class, count: parts.clone().count(), total_ns: parts.sum() }
        })
        .collect();
    let (count, total_ns) = (all.len(), all.iter().map(|g| g.1).sum());
    let longest_first = |g: &(u64, u64, GapParts)| (std::cmp::Reverse(g.1), g.0);
    if top < all.len() {
        all.select_nth_unstable_by_key(top, longest_first);
        all.truncate(top);
    }
    all.sort_unstable_by_key(longest_first);
    let largest = all
        .into_iter()
        .map(|(start_ns, duration_ns, parts)| Gap {
            start_ns,
            duration_ns,
            class: parts.dominant(),
            sync_ns: parts.sync_ns,
            cpu_spans: overlapping_spans(spans, threads, start_ns, start_ns + duration_ns),
        })
        .collect();
    DeviceGaps { device: d.device, start_ns: d.busy[0].start, count, total_ns, classes, largest }
}

/// The spans overlapping `[start, end)` most; deeper spans first among equal overlaps.
fn overlapping_spans(spans: &[SpanRow], threads: &HashMap<u64, &str>, start: u64, end: u64) -> Vec<SpanOverlap> {
    let mut found: Vec<(u64, &SpanRow)> =
        spans.iter().map(|s| (s.end_ns.min(end).saturating_sub(s.start_ns.max(start)), s)).filter(|&(overlap, _)| overlap > 0).collect();
    found.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(b.1.depth.cmp(&a.1.depth)).then(a.1.name.cmp(&b.1.name)));
    found
        .into_iter()
        .take(SPANS_PER_GAP)
        .map(|(overlap_ns, s)| SpanOverlap {
            name: s.name.clone(),
            tid: s.tid,
            thread: threads.get(&s.tid).map(|name| name.to_string()),
            overlap_ns,
        })
        .collect()
}

/// The utilisation section's blocks, for the terminal and the page (which draws the busy series
/// as a chart).
pub fn view_utilisation(devices: &Measured<Vec<DeviceUtilisation>>) -> Vec<Block> {
    let devices = match devices {
        Measured::Available(devices) => devices,
        Measured::NotAvailable(why) => return vec![Block::Facts(vec![missing("busy time", why)])],
    };
    let mut blocks = Vec::new();
    for d in devices {
        let window = (d.end_ns - d.start_ns) as f64;
        blocks.push(Block::Facts(vec![fact(
            &format!("device {}", d.device),
            format!(
                "busy {} of {} ({}), idle {}",
                text::duration(d.busy_ns as f64),
                text::duration(window),
                text::percent(d.busy_share),
                text::duration(d.idle_ns as f64)
            ),
        )]));
        let kinds = d
            .kinds
            .iter()
            .map(|k| vec![k.kind.to_string(), k.ops.to_string(), text::duration(k.busy_ns as f64), text::percent(k.share_of_busy)]);
        blocks.push(Block::Table { header: vec!["kind", "ops", "busy", "of busy"], left: vec![0], rows: kinds.collect() });
        let streams = d.streams.iter().map(|s| {
            let stream = s.stream.map_or("-".to_string(), |s| s.to_string());
            vec![stream, s.ops.to_string(), text::duration(s.busy_ns as f64), text::percent(s.busy_share)]
        });
        blocks.push(Block::Table { header: vec!["stream", "ops", "busy", "busy %"], left: vec![0], rows: streams.collect() });
        blocks.push(Block::Series { label: "busy over time".into(), values: d.series.iter().map(|&v| Some(v)).collect() });
    }
    blocks
}

/// The idle-gaps section's blocks, for the terminal and the page.
pub fn view_gaps(devices: &Measured<Vec<DeviceGaps>>) -> Vec<Block> {
    let devices = match devices {
        Measured::Available(devices) => devices,
        Measured::NotAvailable(why) => return vec![Block::Facts(vec![missing("gaps", why)])],
    };
    let mut blocks = Vec::new();
    for d in devices {
        blocks.push(Block::Facts(vec![fact(
            &format!("device {}", d.device),
            format!("{} gaps, {} idle", d.count, text::duration(d.total_ns as f64)),
        )]));
        let classes = d.classes.iter().map(|c| {
            vec![
                c.class.as_str().into(),
                c.count.to_string(),
                text::duration(c.total_ns as f64),
                text::percent(share(c.total_ns as f64, d.total_ns as f64)),
            ]
        });
        blocks.push(Block::Table { header: vec!["class", "count", "total", "of idle"], left: vec![0], rows: classes.collect() });
        if d.largest.is_empty() {
            continue;
        }
        let largest = d.largest.iter().map(|g| {
            let spans: Vec<String> = g
                .cpu_spans
                .iter()
                .map(|s| {
                    let thread = s.thread.as_ref().map_or(s.tid.to_string(), |name| format!("{} {name}", s.tid));
                    format!("{} ({thread}, {})", text::truncate(&s.name, 40), text::duration(s.overlap_ns as f64))
                })
                .collect();
            vec![
                format!("+{}", text::duration((g.start_ns - d.start_ns) as f64)),
                text::duration(g.duration_ns as f64),
                g.class.as_str().into(),
                if spans.is_empty() { "-".into() } else { spans.join("; ") },
            ]
        });
        blocks.push(Block::Table {
            header: vec!["at", "duration", "class", "CPU spans (thread, overlap)"],
            left: vec![2, 3],
            rows: largest.collect(),
        });
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_test_support::rows::{api, kernel, op, span};
    use lumen_trace::model::{GpuOpKind, ThreadRow};

    /// Programmatic dependent launch: b starts (waiting) 30 ns before a ends, c 5 ns before b
    /// ends. Each is timed from the end of the kernel ahead on its stream; a kernel of another
    /// stream, one without a stream id and a copy keep their times.
    #[test]
    fn kernels_that_start_before_the_one_ahead_on_their_stream_ends_are_timed_from_that_end() {
        let other = GpuOpRow { stream: Some(9), ..kernel(150, 160, 4) };
        let unknown = GpuOpRow { stream: None, ..kernel(150, 170, 5) };
        let trace = TraceData {
            gpu_ops: vec![
                kernel(100, 200, 1),
                kernel(170, 260, 2),
                kernel(255, 300, 3),
                other,
                unknown,
                op(GpuOpKind::Memcpy, 120, 130, 6),
            ],
            ..TraceData::default()
        };
        let (serial, moved) = serialize_streams(&trace);
        assert_eq!(moved, 2);
        let times: Vec<(u64, u64)> = serial.gpu_ops.iter().map(|op| (op.start_ns, op.end_ns)).collect();
        assert_eq!(times, [(100, 200), (200, 260), (260, 300), (150, 160), (150, 170), (120, 130)]);
        let kernel_ns: u64 = serial.gpu_ops[..3].iter().map(|op| op.end_ns - op.start_ns).sum();
        assert_eq!(kernel_ns, 200, "the stream's kernels add up to its busy time");
        let ordinary = TraceData { gpu_ops: vec![kernel(0, 10, 1), kernel(10, 20, 2)], ..TraceData::default() };
        assert!(matches!(serialize_streams(&ordinary), (Cow::Borrowed(_), 0)));
    }

    fn run(trace: &TraceData, buckets: usize) -> (Vec<DeviceUtilisation>, Vec<DeviceGaps>) {
        let (u, g) = analyze(trace, &LaunchIndex::new(trace), &StepWindows::default(), buckets, TOP_GAPS);
        (u.get().unwrap().clone(), g.get().unwrap().clone())
    }

    #[test]
    fn busy_time_is_the_union_of_ops_without_syncs() {
        let mut copy = op(GpuOpKind::Memcpy, 150, 300, 3);
        copy.stream = Some(8);
        let mut other_device = kernel(0, 50, 5);
        other_device.device = 1;
        let trace = TraceData {
            gpu_ops: vec![kernel(100, 200, 1), copy, kernel(500, 600, 2), op(GpuOpKind::Sync, 300, 500, 4), other_device],
            ..TraceData::default()
        };
        let (u, _) = run(&trace, 5);
        let d = &u[0];
        assert_eq!((d.device, d.start_ns, d.end_ns, d.busy_ns, d.idle_ns, d.busy_share), (0, 100, 600, 300, 200, 0.6));
        let kinds: Vec<(GpuOpKind, usize, u64)> = d.kinds.iter().map(|k| (k.kind, k.ops, k.busy_ns)).collect();
        assert_eq!(kinds, [(GpuOpKind::Kernel, 2, 200), (GpuOpKind::Memcpy, 1, 150)]);
        let streams: Vec<(Option<u64>, usize, u64)> = d.streams.iter().map(|s| (s.stream, s.ops, s.busy_ns)).collect();
        assert_eq!(streams, [(Some(7), 2, 200), (Some(8), 1, 150)]);
        assert_eq!(d.series, [1.0, 1.0, 0.0, 0.0, 1.0]);
        assert_eq!((u[1].device, u[1].busy_ns), (1, 50));
    }

    #[test]
    fn gaps_are_classed_as_sync_wait_launch_gap_or_host_wait() {
        let trace = TraceData {
            gpu_ops: vec![
                kernel(0, 1_000, 1),
                // 1_000..3_000: a stream synchronise overlaps it.
                kernel(3_000, 4_000, 2),
                // 4_000..9_000: short, launched at 3_500, before the gap: launch gap.
                kernel(9_000, 10_000, 3),
                // 10_000..15_000: short, but launched inside the gap at 12_000: host wait.
                kernel(15_000, 16_000, 4),
                // 16_000..56_000: launched early but longer than LAUNCH_GAP_NS: host wait.
                kernel(56_000, 57_000, 5),
                // 57_000..60_000: no launch call: host wait.
                kernel(60_000, 61_000, 99),
            ],
            api_calls: vec![
                api("cuStreamSynchronize", 900, 2_000, 50),
                api("cuLaunchKernel", 2_000, 2_500, 2),
                api("cuLaunchKernel", 3_500, 3_600, 3),
                api("cuLaunchKernel", 12_000, 12_100, 4),
                api("cuLaunchKernel", 15_500, 15_600, 5),
            ],
            ..TraceData::default()
        };
        let (_, g) = run(&trace, 10);
        let d = &g[0];
        assert_eq!((d.count, d.total_ns), (5, 2_000 + 5_000 + 5_000 + 40_000 + 3_000));
        let classes: Vec<(GapClass, usize, u64)> = d.classes.iter().map(|c| (c.class, c.count, c.total_ns)).collect();
        assert_eq!(
            classes,
            [
                (GapClass::SyncWait, 1, 2_000),
                (GapClass::LaunchGap, 1, 5_000),
                (GapClass::HostWait, 3, 48_000),
                (GapClass::OutlierStep, 0, 0)
            ]
        );
        let largest: Vec<(u64, u64, GapClass)> = d.largest.iter().map(|g| (g.start_ns, g.duration_ns, g.class)).collect();
        assert_eq!(
            largest,
            [
                (16_000, 40_000, GapClass::HostWait),
                (4_000, 5_000, GapClass::LaunchGap),
                (10_000, 5_000, GapClass::HostWait),
                (57_000, 3_000, GapClass::HostWait),
                (1_000, 2_000, GapClass::SyncWait)
            ]
        );
    }

    #[test]
    fn a_sync_op_makes_a_sync_wait() {
        let trace = TraceData { gpu_ops: vec![kernel(0, 10, 1), op(GpuOpKind::Sync, 5, 12, 2), kernel(20, 30, 3)], ..TraceData::default() };
        assert_eq!(run(&trace, 1).1[0].classes[0].count, 1);
    }

    /// The host synchronises, comes back as the GPU drains, then works 5 ms before launching:
    /// only the time inside the call is sync wait; the rest is the host's.
    #[test]
    fn idle_after_a_sync_returns_is_host_wait_not_sync_wait() {
        let trace = TraceData {
            gpu_ops: vec![kernel(0, 1_000_000, 1), kernel(6_010_000, 7_000_000, 2)],
            api_calls: vec![api("cudaDeviceSynchronize", 500_000, 1_003_000, 50), api("cudaLaunchKernel", 6_000_000, 6_005_000, 2)],
            ..TraceData::default()
        };
        let d = &run(&trace, 1).1[0];
        let classes: Vec<(GapClass, usize, u64)> = d.classes.iter().map(|c| (c.class, c.count, c.total_ns)).collect();
        assert_eq!(classes[0], (GapClass::SyncWait, 1, 3_000));
        assert_eq!(classes[2], (GapClass::HostWait, 1, 5_007_000));
        assert_eq!((d.largest[0].class, d.largest[0].sync_ns), (GapClass::HostWait, 3_000));
        assert_eq!(d.classes.iter().map(|c| c.total_ns).sum::<u64>(), d.total_ns, "the parts add up to the idle time");
    }

    /// A profiled Python loop relaunches 40 µs after each synchronise returns: the sync's cost.
    #[test]
    fn a_quick_relaunch_after_a_sync_is_still_sync_wait() {
        let trace = TraceData {
            gpu_ops: vec![kernel(0, 100_000, 1), kernel(145_000, 200_000, 2)],
            api_calls: vec![api("cudaDeviceSynchronize", 50_000, 103_000, 50), api("cudaLaunchKernel", 140_000, 142_000, 2)],
            ..TraceData::default()
        };
        let d = &run(&trace, 1).1[0];
        assert_eq!((d.classes[0].total_ns, d.classes[2].total_ns), (45_000, 0));
    }

    #[test]
    fn gaps_inside_an_outlier_step_are_counted_apart() {
        let trace = TraceData { gpu_ops: vec![kernel(0, 10, 1), kernel(100, 110, 2), kernel(500, 510, 3)], ..TraceData::default() };
        let steps = StepWindows { outliers: crate::stats::union([(5, 105)]), ..StepWindows::default() };
        let (_, g) = analyze(&trace, &LaunchIndex::new(&trace), &steps, 1, TOP_GAPS);
        let classes: Vec<(GapClass, u64)> = g.get().unwrap()[0].classes.iter().map(|c| (c.class, c.total_ns)).collect();
        assert_eq!(classes, [(GapClass::SyncWait, 0), (GapClass::LaunchGap, 0), (GapClass::HostWait, 390), (GapClass::OutlierStep, 90)]);
    }

    #[test]
    fn largest_gaps_name_the_cpu_spans_that_overlap_them_most() {
        let mut inner = span(1_500, 2_000, 42, "sample", "phase");
        inner.depth = 1;
        let trace = TraceData {
            gpu_ops: vec![kernel(0, 1_000, 1), kernel(3_000, 4_000, 2)],
            spans: vec![
                span(0, 10_000, 42, "iter 1", "iteration"),
                inner,
                span(1_000, 1_500, 42, "update", "phase"),
                span(2_900, 3_100, 43, "tokenize", "api"),
                span(5_000, 6_000, 42, "later", "phase"),
            ],
            threads: vec![ThreadRow { pid: 1, tid: 42, name: "engine".into() }],
            ..TraceData::default()
        };
        let (_, g) = run(&trace, 1);
        let spans: Vec<(&str, u64, Option<&str>, u64)> =
            g[0].largest[0].cpu_spans.iter().map(|s| (s.name.as_str(), s.tid, s.thread.as_deref(), s.overlap_ns)).collect();
        assert_eq!(
            spans,
            [("iter 1", 42, Some("engine"), 2_000), ("sample", 42, Some("engine"), 500), ("update", 42, Some("engine"), 500)]
        );
    }

    #[test]
    fn only_syncs_or_nothing_is_not_available() {
        let none = TraceData::default();
        assert_eq!(analyze(&none, &LaunchIndex::new(&none), &StepWindows::default(), 10, 10).0, Measured::NotAvailable(NO_GPU_OPS.into()));
        let syncs = TraceData { gpu_ops: vec![op(GpuOpKind::Sync, 0, 10, 1)], ..TraceData::default() };
        let (u, g) = analyze(&syncs, &LaunchIndex::new(&syncs), &StepWindows::default(), 10, 10);
        assert!(matches!((&u, &g), (Measured::NotAvailable(a), Measured::NotAvailable(b)) if a.contains("all synchronisations") && a == b));
    }
}
