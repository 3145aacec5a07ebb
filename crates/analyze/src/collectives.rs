//! Collective communication between ranks: the kernels of class `communication` (NCCL's) on each
//! device, or, in a run without them, the collectives lumen's rank threads record themselves
//! (spans named `all_reduce`, `all_gather`, ... with `{"bytes", "ranks"}` args, on threads named
//! `tp rank R`). Per operation (AllReduce, AllGather, ReduceScatter, Broadcast, SendRecv, or the
//! kernel's name), the count and time; per rank, the collective time no other kernel on that
//! device overlapped (exposed: the device had nothing else to do; a rank thread blocked in a
//! collective does nothing else, so all of it); per iteration, the share of its wall time the
//! ranks spent in exposed communication, and the straggler: the rank with the most compute (time
//! outside collectives), which the others wait for inside their collectives. Kernel records carry
//! no message sizes: bytes come from the recorded collectives, and bus bandwidth is the bytes over
//! the operation's time times NCCL's factor (all-reduce 2(n-1)/n, all-gather and reduce-scatter
//! (n-1)/n, broadcast 1), as nccl-tests reports it.

use std::collections::{BTreeMap, HashMap};

use lumen_trace::model::{GpuOpKind, SpanRow, TraceData};
use serde::Serialize;

use crate::kernels::{classify, ClassRule, KernelClass};
use crate::measured::Measured;
use crate::sol::arg_number;
use crate::stats::quantile;
use crate::text;
use crate::view::{fact, measured, Block};

/// The operations NCCL names in its kernels, as the section names them.
const OPERATIONS: [(&str, &str); 6] = [
    ("allreduce", "AllReduce"),
    ("allgather", "AllGather"),
    ("reducescatter", "ReduceScatter"),
    ("broadcast", "Broadcast"),
    ("sendrecv", "SendRecv"),
    ("reduce", "Reduce"),
];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Collectives {
    /// Where the collectives' times come from.
    pub source: Source,
    /// The devices (or rank threads) that ran collectives.
    pub devices: Vec<u32>,
    /// Per operation, most time first.
    pub operations: Vec<Operation>,
    pub total_ns: u64,
    /// Collective time no other kernel on the same device overlapped, summed over devices.
    pub exposed_ns: u64,
    pub iterations: Measured<IterationComm>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Source {
    /// NCCL's kernels on the devices.
    Kernels,
    /// The collectives lumen's rank threads recorded, timed on the host.
    RankThreads,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Operation {
    pub name: String,
    pub count: usize,
    pub total_ns: u64,
    pub mean_ns: f64,
    /// Bytes the recorded collectives of this operation moved, summed over ranks; `None` when
    /// none was recorded with its size.
    pub bytes: Option<u64>,
    /// Bus bandwidth in bytes per second: the bytes over the time, times NCCL's factor for the
    /// operation and the rank count.
    pub bus_bandwidth: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IterationComm {
    pub iterations: usize,
    /// Per iteration, the devices' mean exposed collective time over the iteration's wall time.
    pub median_exposed_share: f64,
    pub max_exposed_share: f64,
    /// (device, iterations in which it had the most compute), most first; empty with one device.
    pub stragglers: Vec<(u32, usize)>,
}

/// A kernel's time on its device.
#[derive(Debug, Clone, Copy)]
struct Interval {
    start: u64,
    end: u64,
}

/// The operation a collective kernel or recorded collective performs, from its name.
fn operation(name: &str) -> String {
    let squashed: String = name.to_ascii_lowercase().chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    OPERATIONS.iter().find(|(key, _)| squashed.contains(key)).map_or_else(|| name.to_string(), |(_, op)| op.to_string())
}

/// How much of `[start, end)` the sorted, merged `busy` intervals cover.
fn covered(busy: &[Interval], start: u64, end: u64) -> u64 {
    let first = busy.partition_point(|b| b.end <= start);
    busy[first..].iter().take_while(|b| b.start < end).map(|b| b.end.min(end).saturating_sub(b.start.max(start))).sum()
}

fn merged(mut intervals: Vec<Interval>) -> Vec<Interval> {
    intervals.sort_by_key(|i| i.start);
    let mut out: Vec<Interval> = Vec::with_capacity(intervals.len());
    for i in intervals {
        match out.last_mut() {
            Some(last) if i.start <= last.end => last.end = last.end.max(i.end),
            _ => out.push(i),
        }
    }
    out
}

/// Per device: its collectives and its other kernels (merged); for a rank thread, `compute` is
/// `None`: it computes whenever it is not in a collective.
struct DeviceKernels {
    collectives: Vec<Interval>,
    compute: Option<Vec<Interval>>,
}

impl DeviceKernels {
    /// Exposed collective time and compute time inside `[start, end)`.
    fn within(&self, start: u64, end: u64) -> (u64, u64) {
        let inside: Vec<(u64, u64)> =
            self.collectives.iter().filter(|c| c.end > start && c.start < end).map(|c| (c.start.max(start), c.end.min(end))).collect();
        match &self.compute {
            Some(compute) => {
                let exposed = inside.iter().map(|&(s, e)| (e - s) - covered(compute, s, e)).sum();
                (exposed, covered(compute, start, end))
            }
            None => {
                let collective: u64 = inside.iter().map(|&(s, e)| e - s).sum();
                (collective, end.saturating_sub(start).saturating_sub(collective))
            }
        }
    }
}

/// NCCL's bus-bandwidth factor for `operation` over `ranks` ranks (nccl-tests' definition).
pub fn bus_factor(operation: &str, ranks: u64) -> f64 {
    let n = ranks.max(1) as f64;
    match operation {
        "AllReduce" => 2.0 * (n - 1.0) / n,
        "AllGather" | "ReduceScatter" => (n - 1.0) / n,
        _ => 1.0,
    }
}

/// A collective a rank thread recorded: its rank, operation, time and size.
struct Recorded {
    rank: u32,
    operation: String,
    interval: Interval,
    bytes: u64,
    ranks: u64,
}

/// The collectives lumen's rank threads recorded: spans on `tp rank R` threads whose args carry
/// `bytes` and `ranks`.
fn recorded(trace: &TraceData) -> Vec<Recorded> {
    let rank_of: HashMap<u64, u32> =
        trace.threads.iter().filter_map(|t| t.name.strip_prefix("tp rank ").and_then(|r| r.parse().ok()).map(|r| (t.tid, r))).collect();
    let sized = |s: &SpanRow| -> Option<(u64, u64)> {
        let args = s.args.as_deref()?;
        Some((arg_number(args, "bytes")? as u64, arg_number(args, "ranks")? as u64))
    };
    trace
        .spans
        .iter()
        .filter_map(|s| {
            let rank = *rank_of.get(&s.tid)?;
            let (bytes, ranks) = sized(s)?;
            Some(Recorded { rank, operation: operation(&s.name), interval: Interval { start: s.start_ns, end: s.end_ns }, bytes, ranks })
        })
        .collect()
}

pub fn analyze(trace: &TraceData, rules: &[ClassRule]) -> Measured<Collectives> {
    let mut per_device: BTreeMap<u32, (Vec<Interval>, Vec<Interval>)> = BTreeMap::new();
    let mut operations: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    // Each kernel name is classified once: a trace repeats a few names millions of times.
    let mut collective_of: HashMap<&str, Option<String>> = HashMap::new();
    for op in trace.gpu_ops.iter().filter(|o| o.kind == GpuOpKind::Kernel) {
        let interval = Interval { start: op.start_ns, end: op.end_ns };
        let (collectives, compute) = per_device.entry(op.device).or_default();
        let collective = collective_of
            .entry(op.name.as_str())
            .or_insert_with(|| (classify(rules, &op.name) == KernelClass::Communication).then(|| operation(&op.name)));
        match collective {
            Some(name) => {
                collectives.push(interval);
                let e = operations.entry(name.clone()).or_default();
                e.0 += 1;
                e.1 += op.end_ns - op.start_ns;
            }
            None => compute.push(interval),
        }
    }
    let recorded = recorded(trace);
    let (source, devices) = if !operations.is_empty() {
        let devices = per_device
            .into_iter()
            .filter(|(_, (c, _))| !c.is_empty())
            .map(|(d, (collectives, compute))| (d, DeviceKernels { collectives, compute: Some(merged(compute)) }))
            .collect();
        (Source::Kernels, devices)
    } else if recorded.iter().any(|r| r.interval.end > r.interval.start) {
        // Timed on the host (the CPU's rank threads); a GPU rank's records are instants that
        // only carry sizes.
        let mut devices: BTreeMap<u32, DeviceKernels> = BTreeMap::new();
        for r in &recorded {
            devices.entry(r.rank).or_insert_with(|| DeviceKernels { collectives: Vec::new(), compute: None }).collectives.push(r.interval);
            let e = operations.entry(r.operation.clone()).or_default();
            e.0 += 1;
            e.1 += r.interval.end - r.interval.start;
        }
        (Source::RankThreads, devices)
    } else {
        return Measured::NotAvailable(
            "the trace has no collective kernels (class communication: NCCL's) and no collectives recorded by rank threads".into(),
        );
    };
    let exposed_ns = devices.values().map(|d| d.within(0, u64::MAX).0).sum();
    let mut sizes: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for r in &recorded {
        let e = sizes.entry(r.operation.as_str()).or_default();
        e.0 += r.bytes;
        e.1 = e.1.max(r.ranks);
    }
    let mut operations: Vec<Operation> = operations
        .into_iter()
        .map(|(name, (count, total_ns))| {
            let size = sizes.get(name.as_str()).copied();
            let bus_bandwidth =
                size.filter(|_| total_ns > 0).map(|(bytes, ranks)| bytes as f64 / (total_ns as f64 / 1e9) * bus_factor(&name, ranks));
            Operation { count, total_ns, mean_ns: total_ns as f64 / count as f64, bytes: size.map(|s| s.0), bus_bandwidth, name }
        })
        .collect();
    operations.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.name.cmp(&b.name)));
    Measured::Available(Collectives {
        source,
        devices: devices.keys().copied().collect(),
        total_ns: operations.iter().map(|o| o.total_ns).sum(),
        operations,
        exposed_ns,
        iterations: per_iteration(trace, &devices, source),
    })
}

fn per_iteration(trace: &TraceData, devices: &BTreeMap<u32, DeviceKernels>, source: Source) -> Measured<IterationComm> {
    let mut rows: Vec<(u64, u64)> = trace.iterations.iter().map(|r| (r.start_ns, r.end_ns)).collect();
    if rows.is_empty() {
        return Measured::NotAvailable("the trace has no iteration rows; record the engine with `--trace` or LUMEN_TRACE".into());
    }
    rows.sort_unstable();
    let mut shares = Vec::with_capacity(rows.len());
    let mut straggler_counts: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, &(start, end)) in rows.iter().enumerate() {
        // An iteration's GPU work runs from its start until the next iteration starts; a rank
        // thread's within the iteration.
        let until = match source {
            Source::Kernels => rows.get(i + 1).map_or(u64::MAX, |next| next.0),
            Source::RankThreads => end,
        };
        let wall = end.saturating_sub(start);
        if wall == 0 {
            continue;
        }
        let per_device: Vec<(u32, u64, u64)> = devices
            .iter()
            .map(|(&d, k)| {
                let (exposed, compute) = k.within(start, until);
                (d, exposed, compute)
            })
            .collect();
        let exposed = per_device.iter().map(|(_, e, _)| *e).sum::<u64>() as f64 / per_device.len() as f64;
        shares.push(exposed / wall as f64);
        if per_device.len() > 1 {
            let busiest = per_device.iter().max_by_key(|(d, _, compute)| (*compute, std::cmp::Reverse(*d))).expect("devices");
            if per_device.iter().any(|(_, _, c)| *c < busiest.2) {
                *straggler_counts.entry(busiest.0).or_default() += 1;
            }
        }
    }
    if shares.is_empty() {
        return Measured::NotAvailable("every iteration row has a zero duration".into());
    }
    let mut stragglers: Vec<(u32, usize)> = straggler_counts.into_iter().collect();
    stragglers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let max = shares.iter().cloned().fold(0.0, f64::max);
    shares.sort_by(f64::total_cmp);
    Measured::Available(IterationComm {
        iterations: shares.len(),
        median_exposed_share: quantile(&shares, 0.5),
        max_exposed_share: max,
        stragglers,
    })
}

/// Bytes per second in decimal units, as NCCL reports bus bandwidth.
fn bandwidth(bytes_per_s: f64) -> String {
    if bytes_per_s >= 1e9 {
        format!("{:.2} GB/s", bytes_per_s / 1e9)
    } else {
        format!("{:.2} MB/s", bytes_per_s / 1e6)
    }
}

pub fn view(c: &Measured<Collectives>) -> Vec<Block> {
    let c = match c {
        Measured::Available(c) => c,
        Measured::NotAvailable(why) => return vec![Block::Facts(vec![crate::view::missing("collectives", why)])],
    };
    let devices: Vec<String> = c.devices.iter().map(|d| d.to_string()).collect();
    let (unit, exposed) = match c.source {
        Source::Kernels => ("devices", "no other kernel on the device"),
        Source::RankThreads => ("rank threads", "a rank thread in a collective does nothing else"),
    };
    let sized = c.operations.iter().any(|o| o.bytes.is_some());
    let facts = vec![
        fact(unit, devices.join(", ")),
        fact(
            "collective time",
            format!("{} in all, {} exposed ({exposed})", text::duration(c.total_ns as f64), text::duration(c.exposed_ns as f64)),
        ),
        measured("per iteration", &c.iterations, |i| {
            format!(
                "exposed communication median {} of the wall time, worst {} ({} iterations)",
                text::percent(i.median_exposed_share),
                text::percent(i.max_exposed_share),
                i.iterations
            )
        }),
        measured("straggler", &c.iterations, |i| match i.stragglers.first() {
            Some((d, n)) => format!("rank {d}: the most compute in {n} of {} iterations", i.iterations),
            None => "none: one device, or equal compute".into(),
        }),
        fact(
            "bytes, bus bandwidth",
            if sized {
                "from the collectives the rank threads recorded with their sizes; bus bandwidth = bytes / time × NCCL's factor"
            } else {
                "not measured: kernel records carry no message sizes, and no rank thread recorded its collectives (LUMEN_NVTX_DEBUG=1)"
            },
        ),
    ];
    let rows = c
        .operations
        .iter()
        .map(|o| {
            vec![
                o.name.clone(),
                o.count.to_string(),
                text::duration(o.total_ns as f64),
                text::duration(o.mean_ns),
                o.bytes.map_or("-".into(), text::bytes),
                o.bus_bandwidth.map_or("-".into(), bandwidth),
            ]
        })
        .collect();
    let header = vec!["operation", "count", "total", "mean", "bytes", "bus bandwidth"];
    vec![Block::Facts(facts), Block::Table { header, left: vec![0], rows }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::default_rules;
    use lumen_test_support::rows::{iteration, named, span};
    use lumen_trace::model::{GpuOpRow, ThreadRow};

    fn on(device: u32, op: GpuOpRow) -> GpuOpRow {
        GpuOpRow { device, ..op }
    }

    /// Two ranks, two iterations of 1,000 ns. Iteration 0: device 0 computes 0..600 then reduces
    /// 600..1000 (400 exposed); device 1 computes 0..300, reduces 300..1000 (700 exposed), with a
    /// copy-free kernel 300..400 overlapping it (600 exposed). Iteration 1: device 1 computes
    /// 1000..1800, device 0 1000..1200; both all-gather until 2000.
    fn two_ranks() -> TraceData {
        let ops = vec![
            on(0, named("gemm_kernel", 0, 600, 1)),
            on(0, named("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 600, 1000, 2)),
            on(1, named("gemm_kernel", 0, 300, 3)),
            on(1, named("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 300, 1000, 4)),
            on(1, named("rms_norm_kernel", 300, 400, 5)),
            on(0, named("gemm_kernel", 1000, 1200, 6)),
            on(0, named("ncclKernel_AllGather_RING_LL_Sum_int8_t", 1200, 2000, 7)),
            on(1, named("gemm_kernel", 1000, 1800, 8)),
            on(1, named("ncclKernel_AllGather_RING_LL_Sum_int8_t", 1800, 2000, 9)),
        ];
        TraceData { gpu_ops: ops, iterations: vec![iteration(0, 0, 1000, 0.001), iteration(1, 1000, 2000, 0.001)], ..TraceData::default() }
    }

    #[test]
    fn collectives_by_operation_exposed_time_and_the_straggler() {
        let c = analyze(&two_ranks(), &default_rules());
        let c = c.get().expect("collectives");
        assert_eq!(c.devices, [0, 1]);
        let ops: Vec<(&str, usize, u64)> = c.operations.iter().map(|o| (o.name.as_str(), o.count, o.total_ns)).collect();
        assert_eq!(ops, [("AllReduce", 2, 1100), ("AllGather", 2, 1000)]);
        // Exposed: 400 + 600 in iteration 0, 800 + 200 in iteration 1.
        assert_eq!((c.total_ns, c.exposed_ns), (2100, 2000));
        let i = c.iterations.get().expect("iterations");
        // Shares: (400 + 600) / 2 / 1000 = 0.5, (800 + 200) / 2 / 1000 = 0.5.
        assert_eq!((i.iterations, i.median_exposed_share, i.max_exposed_share), (2, 0.5, 0.5));
        // Device 0 computes more in iteration 0 (600 against 400), device 1 in iteration 1.
        assert_eq!(i.stragglers, [(0, 1), (1, 1)]);
        assert_eq!(operation("ncclDevKernel_ReduceScatter_Sum_f32"), "ReduceScatter");
        assert_eq!(operation("custom_comm"), "custom_comm");
    }

    /// A collective span recorded on thread `tid` with its bytes, over 2 ranks.
    fn recorded_span(tid: u64, name: &str, start: u64, end: u64, bytes: u64) -> SpanRow {
        SpanRow { args: Some(format!("{{\"bytes\":{bytes},\"ranks\":2}}")), ..span(start, end, tid, name, "debug") }
    }

    fn rank_threads() -> Vec<ThreadRow> {
        vec![
            ThreadRow { pid: 1, tid: 10, name: "tp rank 0".into() },
            ThreadRow { pid: 1, tid: 11, name: "tp rank 1".into() },
            ThreadRow { pid: 1, tid: 12, name: "engine".into() },
        ]
    }

    /// One iteration of 1,000 ns on two rank threads. Rank 0 reduces 200..300 and 700..1000 and
    /// gathers 400..500 (500 ns in collectives, so 500 computing); rank 1 reduces 100..300 and
    /// 500..1000 and gathers 400..500 (800 ns, so 200 computing): rank 0 is the straggler.
    #[test]
    fn rank_threads_collectives_give_bytes_bus_bandwidth_and_the_straggler() {
        let spans = vec![
            recorded_span(10, "all_reduce", 200, 300, 4000),
            recorded_span(10, "all_gather", 400, 500, 8000),
            recorded_span(10, "all_reduce", 700, 1000, 4000),
            recorded_span(11, "all_reduce", 100, 300, 4000),
            recorded_span(11, "all_gather", 400, 500, 8000),
            recorded_span(11, "all_reduce", 500, 1000, 4000),
            // Not a rank thread, and a rank thread's span without sizes: neither counts.
            recorded_span(12, "all_reduce", 0, 1000, 4000),
            span(0, 50, 10, "all_reduce", "debug"),
        ];
        let t = TraceData { threads: rank_threads(), spans, iterations: vec![iteration(0, 0, 1000, 0.001)], ..TraceData::default() };
        let c = analyze(&t, &default_rules());
        let c = c.get().expect("collectives from the rank threads");
        assert_eq!((c.source, c.devices.as_slice()), (Source::RankThreads, [0, 1].as_slice()));
        let ops: Vec<(&str, usize, u64, Option<u64>)> =
            c.operations.iter().map(|o| (o.name.as_str(), o.count, o.total_ns, o.bytes)).collect();
        assert_eq!(ops, [("AllReduce", 4, 1100, Some(16000)), ("AllGather", 2, 200, Some(16000))]);
        // All-reduce: 16,000 B over 1,100 ns × 2(2-1)/2; all-gather: 16,000 B over 200 ns × (2-1)/2.
        let bw: Vec<f64> = c.operations.iter().map(|o| o.bus_bandwidth.unwrap()).collect();
        assert!((bw[0] - 16000.0 / 1.1e-6).abs() < 1.0 && (bw[1] - 16000.0 / 2e-7 * 0.5).abs() < 1.0, "{bw:?}");
        assert_eq!((c.total_ns, c.exposed_ns), (1300, 1300), "a rank thread in a collective does nothing else");
        let i = c.iterations.get().expect("iterations");
        assert_eq!((i.median_exposed_share, i.stragglers.as_slice()), (0.65, [(0, 1)].as_slice()));
    }

    #[test]
    fn kernels_keep_their_times_and_take_the_recorded_sizes() {
        let mut t = two_ranks();
        t.threads = rank_threads();
        t.spans = vec![recorded_span(10, "all_reduce", 600, 1000, 1_100_000), recorded_span(11, "all_reduce", 300, 1000, 1_100_000)];
        let c = analyze(&t, &default_rules());
        let c = c.get().expect("collectives");
        assert_eq!(c.source, Source::Kernels);
        let reduce = &c.operations[0];
        assert_eq!((reduce.name.as_str(), reduce.total_ns, reduce.bytes), ("AllReduce", 1100, Some(2_200_000)));
        assert!((reduce.bus_bandwidth.unwrap() - 2e12).abs() < 1.0, "2.2 MB over the kernels' 1,100 ns: {reduce:?}");
        assert_eq!(c.operations[1].bytes, None, "no all-gather was recorded with its size");
        assert_eq!(bus_factor("AllReduce", 4), 1.5);
        assert_eq!(bus_factor("AllGather", 8), 0.875);
        assert_eq!(bus_factor("Broadcast", 8), 1.0);
    }

    #[test]
    fn instants_recorded_by_gpu_ranks_give_sizes_but_no_timeline() {
        let spans = vec![recorded_span(10, "all_reduce", 500, 500, 4000), recorded_span(11, "all_reduce", 500, 500, 4000)];
        let mut t = TraceData { threads: rank_threads(), spans, iterations: vec![iteration(0, 0, 1000, 0.001)], ..TraceData::default() };
        assert!(analyze(&t, &default_rules()).reason().unwrap().contains("no collective kernels"), "instants are no timeline");
        t.gpu_ops = two_ranks().gpu_ops;
        let c = analyze(&t, &default_rules());
        assert_eq!(c.get().expect("the kernels' timeline").operations[0].bytes, Some(8000));
    }

    #[test]
    fn without_collectives_or_iterations_it_says_why() {
        let mut t = two_ranks();
        t.iterations.clear();
        let c = analyze(&t, &default_rules());
        assert!(c.get().unwrap().iterations.reason().unwrap().contains("no iteration rows"));
        t.gpu_ops.retain(|o| !o.name.starts_with("nccl"));
        assert!(analyze(&t, &default_rules()).reason().unwrap().contains("no collective kernels"));
    }
}
