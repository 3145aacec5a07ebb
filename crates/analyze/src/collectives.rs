//! Collective communication between ranks: the kernels of class `communication` (NCCL's) on each
//! device. Per operation (AllReduce, AllGather, ReduceScatter, Broadcast, SendRecv, or the
//! kernel's name), the count and time; per device, the collective time no other kernel on that
//! device overlapped (exposed: the device had nothing else to do); per iteration, the share of its
//! wall time the devices spent in exposed communication, and the straggler: the rank with the most
//! compute (kernel time outside collectives), which the others wait for inside their collectives.
//! Kernel records carry no message sizes, so bytes and bus bandwidth are not measured here.

use std::collections::{BTreeMap, HashMap};

use lumen_trace::model::{GpuOpKind, TraceData};
use serde::Serialize;

use crate::kernels::{classify, ClassRule, KernelClass};
use crate::measured::Measured;
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
    /// The devices that ran collectives.
    pub devices: Vec<u32>,
    /// Per operation, most time first.
    pub operations: Vec<Operation>,
    pub total_ns: u64,
    /// Collective time no other kernel on the same device overlapped, summed over devices.
    pub exposed_ns: u64,
    pub iterations: Measured<IterationComm>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Operation {
    pub name: String,
    pub count: usize,
    pub total_ns: u64,
    pub mean_ns: f64,
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

/// The operation a collective kernel performs, from its name.
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

/// Per device: its collectives and its other kernels (merged).
struct DeviceKernels {
    collectives: Vec<Interval>,
    compute: Vec<Interval>,
}

impl DeviceKernels {
    /// Exposed collective time and compute time inside `[start, end)`.
    fn within(&self, start: u64, end: u64) -> (u64, u64) {
        let exposed = self
            .collectives
            .iter()
            .filter(|c| c.end > start && c.start < end)
            .map(|c| {
                let (s, e) = (c.start.max(start), c.end.min(end));
                (e - s) - covered(&self.compute, s, e)
            })
            .sum();
        (exposed, covered(&self.compute, start, end))
    }
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
    if operations.is_empty() {
        return Measured::NotAvailable("the trace has no collective kernels (class communication: NCCL's)".into());
    }
    let devices: BTreeMap<u32, DeviceKernels> = per_device
        .into_iter()
        .filter(|(_, (c, _))| !c.is_empty())
        .map(|(d, (collectives, compute))| (d, DeviceKernels { collectives, compute: merged(compute) }))
        .collect();
    let exposed_ns = devices.values().map(|d| d.within(0, u64::MAX).0).sum();
    let mut operations: Vec<Operation> = operations
        .into_iter()
        .map(|(name, (count, total_ns))| Operation { name, count, total_ns, mean_ns: total_ns as f64 / count as f64 })
        .collect();
    operations.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.name.cmp(&b.name)));
    Measured::Available(Collectives {
        devices: devices.keys().copied().collect(),
        total_ns: operations.iter().map(|o| o.total_ns).sum(),
        operations,
        exposed_ns,
        iterations: per_iteration(trace, &devices),
    })
}

fn per_iteration(trace: &TraceData, devices: &BTreeMap<u32, DeviceKernels>) -> Measured<IterationComm> {
    let mut rows: Vec<(u64, u64)> = trace.iterations.iter().map(|r| (r.start_ns, r.end_ns)).collect();
    if rows.is_empty() {
        return Measured::NotAvailable("the trace has no iteration rows; record the engine with `--trace` or LUMEN_TRACE".into());
    }
    rows.sort_unstable();
    let mut shares = Vec::with_capacity(rows.len());
    let mut straggler_counts: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, &(start, end)) in rows.iter().enumerate() {
        // An iteration's GPU work runs from its start until the next iteration starts.
        let until = rows.get(i + 1).map_or(u64::MAX, |next| next.0);
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

pub fn view(c: &Measured<Collectives>) -> Vec<Block> {
    let c = match c {
        Measured::Available(c) => c,
        Measured::NotAvailable(why) => return vec![Block::Facts(vec![crate::view::missing("collectives", why)])],
    };
    let devices: Vec<String> = c.devices.iter().map(|d| d.to_string()).collect();
    let facts = vec![
        fact("devices", devices.join(", ")),
        fact(
            "collective time",
            format!(
                "{} in all, {} exposed (no other kernel on the device)",
                text::duration(c.total_ns as f64),
                text::duration(c.exposed_ns as f64)
            ),
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
            Some((d, n)) => format!("device {d}: the most compute in {n} of {} iterations", i.iterations),
            None => "none: one device, or equal compute".into(),
        }),
        fact("bytes, bus bandwidth", "not measured: kernel records carry no message sizes"),
    ];
    let rows = c
        .operations
        .iter()
        .map(|o| vec![o.name.clone(), o.count.to_string(), text::duration(o.total_ns as f64), text::duration(o.mean_ns)])
        .collect();
    vec![Block::Facts(facts), Block::Table { header: vec!["operation", "count", "total", "mean"], left: vec![0], rows }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::default_rules;
    use lumen_test_support::rows::{iteration, named};
    use lumen_trace::model::GpuOpRow;

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
