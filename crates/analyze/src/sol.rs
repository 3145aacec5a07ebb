//! Speed of light: how close the GPU's work runs to its ceilings, and which ceiling is nearest,
//! as Nsight Compute's SOL section judges it. Two sources, each used when the trace has it:
//! - hardware counters: DRAM bandwidth (read + write, or NVML's bandwidth) against the tensor
//!   pipe, as % of peak, over the busy samples outside outlier steps, per device, per kernel
//!   class (the class of the kernel running in the middle of each sample) and per CPU phase (the
//!   phase whose launch call started that kernel);
//! - the engine's own iteration rows: the bytes (weights and KV cache) and FLOPs each iteration
//!   moved and computed over its time, against the device's peaks; and, where the rows split
//!   the FLOPs (schema 6), per kernel class: the attention's FLOPs and K/V bytes over the
//!   attention kernels' time, the products' over the GEMM and MoE kernels', inside those
//!   iterations;
//! - operators' recorded work (an imported torch.profiler trace with input shapes): each kernel
//!   gets its launching operator's bytes and FLOPs, shared among the operator's kernels by time,
//!   and each kernel class's rates over its kernels' time go against the device's peaks.
//!
//! The peaks come from a large device-to-device copy in the trace when there is one, else from a
//! datasheet table per GPU. "SM active" is shown but judges nothing: a streaming kernel keeps it
//! near 100% while it only waits on memory.

use std::collections::{BTreeMap, HashMap};

use lumen_trace::model::{GpuOpKind, GpuOpRow, IterationRow, TraceData};
use serde::Serialize;

use crate::kernels::{classify, ClassRule, KernelClass};
use crate::measured::Measured;
use crate::stats::{share, Distribution};
use crate::steps::StepWindows;
use crate::text;
use crate::view::{fact, missing, Block};
use crate::LaunchIndex;

/// The unit nearest its ceiling bounds the work when it runs at least this % of its peak; below
/// it on every unit, the work is latency bound (too little parallel work, or dependencies).
pub const SOL_BOUND_PERCENT: f64 = 50.0;
/// Counter samples count only while SM active is above this (idle samples judge nothing).
pub const BUSY_SAMPLE_SM_PERCENT: f64 = 5.0;
/// A device-to-device copy at least this large measures the DRAM peak.
const PEAK_COPY_BYTES: u64 = 64 << 20;

/// Which ceiling the work is nearest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// DRAM bandwidth is the unit nearest its peak, and at least [`SOL_BOUND_PERCENT`].
    Memory,
    /// The tensor pipe is.
    Compute,
    /// No unit reaches [`SOL_BOUND_PERCENT`].
    Latency,
}

impl Bound {
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::Memory => "memory bound",
            Bound::Compute => "compute bound",
            Bound::Latency => "latency bound",
        }
    }

    /// The bound of work at `dram` and `compute` % of their peaks.
    pub fn judge(dram: f64, compute: f64) -> Bound {
        if dram.max(compute) < SOL_BOUND_PERCENT {
            Bound::Latency
        } else if dram >= compute {
            Bound::Memory
        } else {
            Bound::Compute
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeedOfLight {
    pub peaks: Measured<Peaks>,
    /// From counter samples, per device.
    pub devices: Measured<Vec<UnitUse>>,
    /// From counter samples, per kernel class, most samples first.
    pub classes: Vec<UnitUse>,
    /// From counter samples, per CPU phase that launched the running kernel, most samples first.
    pub phases: Vec<UnitUse>,
    /// From the engine's per-iteration bytes and FLOPs.
    pub work: Measured<WorkRates>,
    /// From the engine's per-iteration bytes and FLOPs, split by kernel class: attention, the
    /// products, and the rest.
    pub class_work: Measured<Vec<ClassWork>>,
    /// From the operators' recorded work: all attributed kernels first, then per kernel class.
    pub ops: Measured<Vec<OpRates>>,
}

/// Achieved rates of the kernels whose launching operator recorded its work.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpRates {
    /// `all kernels` or a kernel class.
    pub name: String,
    pub kernels: usize,
    pub busy_ns: u64,
    /// The share of the kernel time (of all kernels, or of the class) that has an operator's work.
    pub coverage: f64,
    /// `tensor_percent` is the compute use against each operator's own ceiling: the FP32 peak for
    /// FP32 products, the tensor peak for the rest.
    pub dram_gb_s: f64,
    pub tflops: f64,
    pub dram_percent: Option<f64>,
    pub tensor_percent: Option<f64>,
    pub bound: Option<Bound>,
}

/// The name of [`ClassWork`]'s row for the attention kernels.
pub const ATTENTION_WORK: &str = "attention";
/// The name of [`ClassWork`]'s row for the GEMM and MoE kernels.
pub const PRODUCT_WORK: &str = "products";
/// The name of [`ClassWork`]'s row for the kernels whose work the rows do not count (norms,
/// element-wise, sampling, copies as kernels).
pub const OTHER_WORK: &str = "the rest";

/// One kernel class's share of the engine's work, over the time its kernels took inside the
/// steady iterations whose rows split their FLOPs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassWork {
    /// [`ATTENTION_WORK`], [`PRODUCT_WORK`] or [`OTHER_WORK`].
    pub name: &'static str,
    pub kernels: usize,
    pub busy_ns: u64,
    /// Of the kernel time inside those iterations.
    pub share: f64,
    pub dram_gb_s: f64,
    pub tflops: f64,
    pub dram_percent: Option<f64>,
    /// The time the FLOPs take at their ceilings (FP8 products at the FP8 peak) over the time.
    pub tensor_percent: Option<f64>,
    /// How long the class's work takes at its nearest ceiling: the speed of light of its time.
    /// None for the rest, whose work is not counted, and without peaks.
    pub light_ns: Option<u64>,
    pub bound: Option<Bound>,
}

/// The device's ceilings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Peaks {
    pub gpu: String,
    pub dram_gb_s: f64,
    /// Where the DRAM peak comes from: a measured copy or the datasheet.
    pub dram_source: String,
    /// Dense BF16 tensor throughput.
    pub tensor_tflops: f64,
    /// Dense FP8 tensor throughput, where the GPU has FP8 tensor cores.
    pub fp8_tflops: Option<f64>,
    pub fp32_tflops: f64,
}

impl Peaks {
    /// Seconds `flops` of tensor work take at the ceilings, `fp8_flops` of them on FP8 tensor
    /// cores (at the BF16 peak where the GPU has none).
    pub fn tensor_seconds(&self, flops: f64, fp8_flops: f64) -> f64 {
        let fp8 = fp8_flops.clamp(0.0, flops);
        (flops - fp8) / (self.tensor_tflops * 1e12) + fp8 / (self.fp8_tflops.unwrap_or(self.tensor_tflops) * 1e12)
    }
}

/// Mean use of the units over busy counter samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitUse {
    /// `device N` or a kernel class.
    pub name: String,
    pub samples: usize,
    /// Read + write, % of peak.
    pub dram_percent: f64,
    pub tensor_percent: Option<f64>,
    pub sm_active_percent: f64,
    pub bound: Bound,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Achieved rates of the engine's iterations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkRates {
    pub iterations: usize,
    /// `device time` when the rows have it, else `host time`.
    pub time: &'static str,
    pub dram_gb_s: Distribution,
    pub tflops: Distribution,
    /// The medians as % of the peaks, when the peaks are known.
    pub dram_percent: Option<f64>,
    /// The median over iterations of the time their FLOPs take at the tensor ceilings (FP8
    /// products at the FP8 peak) as % of their time.
    pub tensor_percent: Option<f64>,
    /// The median share of the FLOPs that are FP8 products (0 for a 16-bit run or a trace that
    /// does not say).
    pub fp8_share: f64,
    /// An FP8 run (meta `weight_dtype`) whose rows do not say which FLOPs are FP8 (written
    /// before schema 5): all of them are judged against the FP8 peak, a lower bound on the use.
    pub fp8_unsaid: bool,
    pub bound: Option<Bound>,
    /// Per iteration: (iter, GB/s, TFLOP/s), for the chart.
    pub series: Vec<(u64, f64, f64)>,
}

struct Datasheet {
    name: &'static str,
    unless: &'static str,
    dram_gb_s: f64,
    tensor_tflops: f64,
    fp8_tflops: Option<f64>,
    fp32_tflops: f64,
}

/// Published peaks (SXM forms unless named): HBM or GDDR bandwidth, dense BF16 and FP8 tensor
/// (FP32 accumulation) and FP32 throughput. The first entry whose name the GPU's name contains
/// wins.
const DATASHEETS: &[Datasheet] = &[
    Datasheet { name: "GH200", unless: "", dram_gb_s: 4000.0, tensor_tflops: 989.0, fp8_tflops: Some(1979.0), fp32_tflops: 67.0 },
    Datasheet { name: "H200", unless: "", dram_gb_s: 4800.0, tensor_tflops: 989.0, fp8_tflops: Some(1979.0), fp32_tflops: 67.0 },
    Datasheet { name: "H100 PCIe", unless: "", dram_gb_s: 2000.0, tensor_tflops: 756.0, fp8_tflops: Some(1513.0), fp32_tflops: 51.0 },
    Datasheet { name: "H100 NVL", unless: "", dram_gb_s: 3900.0, tensor_tflops: 835.0, fp8_tflops: Some(1671.0), fp32_tflops: 60.0 },
    Datasheet { name: "H100", unless: "", dram_gb_s: 3350.0, tensor_tflops: 989.0, fp8_tflops: Some(1979.0), fp32_tflops: 67.0 },
    Datasheet { name: "B200", unless: "", dram_gb_s: 8000.0, tensor_tflops: 2250.0, fp8_tflops: Some(4500.0), fp32_tflops: 80.0 },
    Datasheet { name: "A100", unless: "40GB", dram_gb_s: 2039.0, tensor_tflops: 312.0, fp8_tflops: None, fp32_tflops: 19.5 },
    Datasheet { name: "A100", unless: "", dram_gb_s: 1555.0, tensor_tflops: 312.0, fp8_tflops: None, fp32_tflops: 19.5 },
    Datasheet { name: "L40S", unless: "", dram_gb_s: 864.0, tensor_tflops: 362.0, fp8_tflops: Some(733.0), fp32_tflops: 91.6 },
    Datasheet { name: "L40", unless: "", dram_gb_s: 864.0, tensor_tflops: 181.0, fp8_tflops: Some(362.0), fp32_tflops: 90.5 },
    Datasheet { name: "L4", unless: "", dram_gb_s: 300.0, tensor_tflops: 121.0, fp8_tflops: Some(242.5), fp32_tflops: 30.3 },
    Datasheet { name: "RTX 4090", unless: "", dram_gb_s: 1008.0, tensor_tflops: 165.0, fp8_tflops: Some(165.2), fp32_tflops: 82.6 },
];

/// The peaks of the GPU the trace names (meta `gpu`), with a measured copy bandwidth when the
/// trace has a large device-to-device copy.
pub fn peaks(trace: &TraceData) -> Measured<Peaks> {
    let Some(gpu) = trace.meta("gpu") else {
        return Measured::NotAvailable("the trace's meta names no GPU".into());
    };
    let Some(sheet) = DATASHEETS.iter().find(|d| gpu.contains(d.name) && (d.unless.is_empty() || !gpu.contains(d.unless))) else {
        return Measured::NotAvailable(format!("no datasheet peaks for GPU {gpu:?}"));
    };
    let copy = trace
        .gpu_ops
        .iter()
        .filter(|op| op.kind == GpuOpKind::Memcpy && op.copy_kind.as_deref() == Some("DtoD") && op.end_ns > op.start_ns)
        .filter_map(|op| Some((op.bytes.filter(|&b| b >= PEAK_COPY_BYTES)?, op.end_ns - op.start_ns)))
        // A device copy reads and writes each byte.
        .map(|(bytes, ns)| (2.0 * bytes as f64 / ns as f64, bytes))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let (dram_gb_s, dram_source) = match copy {
        Some((gb_s, bytes)) => (gb_s, format!("measured: a {} device-to-device copy", text::bytes(bytes))),
        None => (sheet.dram_gb_s, format!("datasheet ({})", sheet.name)),
    };
    Measured::Available(Peaks {
        gpu: gpu.to_string(),
        dram_gb_s,
        dram_source,
        tensor_tflops: sheet.tensor_tflops,
        fp8_tflops: sheet.fp8_tflops,
        fp32_tflops: sheet.fp32_tflops,
    })
}

pub(crate) fn analyze(trace: &TraceData, rules: &[ClassRule], launches: &LaunchIndex, steps: &StepWindows) -> SpeedOfLight {
    let peaks = peaks(trace);
    let (devices, classes, phases) = match busy_samples(trace, steps) {
        Ok(samples) => (Measured::Available(per_device(&samples)), per_class(trace, rules, &samples), per_phase(trace, launches, &samples)),
        Err(why) => (Measured::NotAvailable(why), Vec::new(), Vec::new()),
    };
    let work = work_rates(trace, steps, peaks.get());
    let class_work = class_work(trace, rules, steps, peaks.get());
    let ops = op_rates(trace, rules, launches, steps, peaks.get());
    SpeedOfLight { peaks, devices, classes, phases, work, class_work, ops }
}

/// An operator span's recorded work: `{"flops":F,"bytes":B}` in its args, and whether its FLOPs
/// are FP32 math (`"fp32":true`), whose ceiling is the FP32 peak rather than the tensor peak.
/// The number under `key` in a span's flat JSON args (`{"key":1.5,...}`).
pub(crate) fn arg_number(args: &str, key: &str) -> Option<f64> {
    let at = args.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &args[at..];
    rest[..rest.find([',', '}']).unwrap_or(rest.len())].trim().parse::<f64>().ok()
}

fn span_work(args: &str) -> Option<(f64, f64, bool)> {
    Some((arg_number(args, "flops")?, arg_number(args, "bytes")?, args.contains("\"fp32\":true")))
}

/// A span that recorded its work: its bounds, its flops and bytes, and whether its math is FP32.
#[derive(Clone, Copy)]
struct WorkSpan {
    start_ns: u64,
    end_ns: u64,
    flops: f64,
    bytes: f64,
    fp32: bool,
}

/// The kernels of one class: how many, their busy time, the part of it attributed to an operator
/// with recorded work, that work's bytes and flops, and the seconds the flops take at their ceiling.
#[derive(Default)]
struct ClassTotals {
    kernels: usize,
    busy_ns: u64,
    attributed_ns: u64,
    bytes: f64,
    flops: f64,
    at_ceiling_s: Option<f64>,
}

fn op_rates(
    trace: &TraceData,
    rules: &[ClassRule],
    launches: &LaunchIndex,
    steps: &StepWindows,
    peaks: Option<&Peaks>,
) -> Measured<Vec<OpRates>> {
    // Per thread, the spans with work, sorted by start.
    let mut by_thread: HashMap<u64, Vec<WorkSpan>> = HashMap::new();
    for s in &trace.spans {
        if let Some((flops, bytes, fp32)) = s.args.as_deref().and_then(span_work) {
            by_thread.entry(s.tid).or_default().push(WorkSpan { start_ns: s.start_ns, end_ns: s.end_ns, flops, bytes, fp32 });
        }
    }
    if by_thread.is_empty() {
        return Measured::NotAvailable("no operator recorded its work (torch.profiler with record_shapes=True, imported)".into());
    }
    for list in by_thread.values_mut() {
        list.sort_unstable_by_key(|a| (a.start_ns, std::cmp::Reverse(a.end_ns)));
    }
    // Each kernel's operator: the latest-starting work span around its launch call on its thread.
    let kernels: Vec<&lumen_trace::model::GpuOpRow> =
        trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Kernel && !steps.in_outlier(op.start_ns)).collect();
    let mut operator: Vec<Option<(u64, usize)>> = Vec::with_capacity(kernels.len());
    let mut op_time: HashMap<(u64, usize), u64> = HashMap::new();
    for k in &kernels {
        let found = launches.launch_of(k).and_then(|call| {
            let list = by_thread.get(&call.tid)?;
            let started = list.partition_point(|w| w.start_ns <= call.start_ns);
            let back = list[..started].iter().rev().take(64).position(|w| w.end_ns >= call.start_ns)?;
            Some((call.tid, started - 1 - back))
        });
        if let Some(key) = found {
            *op_time.entry(key).or_default() += k.end_ns.saturating_sub(k.start_ns);
        }
        operator.push(found);
    }
    // Per class, and for all.
    let mut totals: HashMap<&'static str, ClassTotals> = HashMap::new();
    let mut names: HashMap<&str, &'static str> = HashMap::new();
    for (k, op) in kernels.iter().zip(&operator) {
        let ns = k.end_ns.saturating_sub(k.start_ns);
        let class = *names.entry(k.name.as_str()).or_insert_with(|| classify(rules, &k.name).as_str());
        let work = op.map(|(tid, i)| {
            let WorkSpan { flops, bytes, fp32, .. } = by_thread[&tid][i];
            let part = share(ns as f64, op_time[&(tid, i)] as f64);
            let ceiling = peaks.map(|p| if fp32 { p.fp32_tflops } else { p.tensor_tflops } * 1e12);
            (ns, bytes * part, flops * part, ceiling.map(|c| flops * part / c))
        });
        for key in [ALL_KERNELS, class] {
            let t = totals.entry(key).or_default();
            t.kernels += 1;
            t.busy_ns += ns;
            if let Some((ns, bytes, flops, at_ceiling_s)) = work {
                t.attributed_ns += ns;
                t.bytes += bytes;
                t.flops += flops;
                t.at_ceiling_s = at_ceiling_s.map(|s| t.at_ceiling_s.unwrap_or(0.0) + s);
            }
        }
    }
    let mut rows: Vec<OpRates> = totals
        .into_iter()
        .filter(|(_, t)| t.attributed_ns > 0)
        .map(|(name, ClassTotals { kernels, busy_ns, attributed_ns, bytes, flops, at_ceiling_s })| {
            let seconds = attributed_ns as f64 / 1e9;
            let (dram_gb_s, tflops) = (bytes / seconds / 1e9, flops / seconds / 1e12);
            let dram_percent = peaks.map(|p| 100.0 * dram_gb_s / p.dram_gb_s);
            // FP32 products count against the FP32 peak, the rest against the tensor peak.
            let tensor_percent = at_ceiling_s.map(|s| 100.0 * s / seconds);
            OpRates {
                name: name.to_string(),
                kernels,
                busy_ns,
                coverage: share(attributed_ns as f64, busy_ns as f64),
                dram_gb_s,
                tflops,
                dram_percent,
                tensor_percent,
                bound: dram_percent.zip(tensor_percent).map(|(d, t)| Bound::judge(d, t)),
            }
        })
        .collect();
    if rows.is_empty() {
        return Measured::NotAvailable("no kernel was launched by an operator that recorded its work".into());
    }
    rows.sort_by(|a, b| (a.name != ALL_KERNELS).cmp(&(b.name != ALL_KERNELS)).then(b.busy_ns.cmp(&a.busy_ns)).then(a.name.cmp(&b.name)));
    Measured::Available(rows)
}

/// The row of [`OpRates`] over every attributed kernel.
pub const ALL_KERNELS: &str = "all kernels";

/// One busy counter instant of one device.
struct Sample {
    device: u32,
    /// The middle of the time the sample covers.
    mid_ns: u64,
    ts_ns: u64,
    dram: f64,
    tensor: Option<f64>,
    sm: f64,
}

fn busy_samples(trace: &TraceData, steps: &StepWindows) -> Result<Vec<Sample>, String> {
    let mut instants: BTreeMap<(u32, u64), HashMap<&str, f64>> = BTreeMap::new();
    for c in &trace.counters {
        if let Some(device) = c.device {
            instants.entry((device, c.ts_ns)).or_default().insert(c.name.as_str(), c.value);
        }
    }
    if !instants.values().any(|at| at.contains_key("sm active %")) {
        return Err("no SM/DRAM samples; record them with `lumen profile --gpu-metrics`".into());
    }
    let mut samples = Vec::new();
    let mut previous: HashMap<u32, u64> = HashMap::new();
    for (&(device, ts), at) in &instants {
        let mid_ns = previous.insert(device, ts).map_or(ts, |before| before + (ts - before) / 2);
        let Some(&sm) = at.get("sm active %").filter(|&&sm| sm > BUSY_SAMPLE_SM_PERCENT) else { continue };
        let dram = match (at.get("dram bandwidth %"), at.get("dram read %"), at.get("dram write %")) {
            (Some(&bandwidth), _, _) => bandwidth,
            (None, None, None) => continue,
            (None, read, write) => read.unwrap_or(&0.0) + write.unwrap_or(&0.0),
        };
        // Steps are host time and the GPU runs behind the host, so only outlier steps are left
        // out here, not the time between steps.
        if !steps.in_outlier(mid_ns) {
            samples.push(Sample { device, mid_ns, ts_ns: ts, dram, tensor: at.get("tensor active %").copied(), sm });
        }
    }
    if samples.is_empty() {
        return Err(format!("no DRAM sample with SM active above {BUSY_SAMPLE_SM_PERCENT}% outside outlier steps"));
    }
    Ok(samples)
}

fn mean_use(name: String, samples: &[&Sample]) -> UnitUse {
    let n = samples.len() as f64;
    let tensors: Vec<f64> = samples.iter().filter_map(|s| s.tensor).collect();
    let tensor_percent = (!tensors.is_empty()).then(|| tensors.iter().sum::<f64>() / tensors.len() as f64);
    let dram_percent = samples.iter().map(|s| s.dram).sum::<f64>() / n;
    UnitUse {
        name,
        samples: samples.len(),
        dram_percent,
        tensor_percent,
        sm_active_percent: samples.iter().map(|s| s.sm).sum::<f64>() / n,
        bound: Bound::judge(dram_percent, tensor_percent.unwrap_or(0.0)),
        start_ns: samples.iter().map(|s| s.ts_ns).min().unwrap_or(0),
        end_ns: samples.iter().map(|s| s.ts_ns).max().unwrap_or(0),
    }
}

fn per_device(samples: &[Sample]) -> Vec<UnitUse> {
    let mut by_device: BTreeMap<u32, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_device.entry(s.device).or_default().push(s);
    }
    by_device.into_iter().map(|(device, samples)| mean_use(format!("device {device}"), &samples)).collect()
}

/// The samples grouped by a key of the kernel running at their middle (kernels on several
/// streams overlap: the last few that started are looked at).
fn per_kernel_group<'a>(trace: &'a TraceData, samples: &[Sample], mut key: impl FnMut(&'a GpuOpRow) -> Option<String>) -> Vec<UnitUse> {
    let mut kernels: HashMap<u32, Vec<(u64, u64, usize)>> = HashMap::new();
    for (i, op) in trace.gpu_ops.iter().enumerate().filter(|(_, op)| op.kind == GpuOpKind::Kernel) {
        kernels.entry(op.device).or_default().push((op.start_ns, op.end_ns, i));
    }
    for list in kernels.values_mut() {
        list.sort_unstable();
    }
    let mut groups: HashMap<String, Vec<&Sample>> = HashMap::new();
    for s in samples {
        let Some(list) = kernels.get(&s.device) else { continue };
        let started = &list[..list.partition_point(|k| k.0 <= s.mid_ns)];
        let Some(&(_, _, i)) = started.iter().rev().take(8).find(|k| k.1 >= s.mid_ns) else { continue };
        if let Some(group) = key(&trace.gpu_ops[i]) {
            groups.entry(group).or_default().push(s);
        }
    }
    let mut out: Vec<UnitUse> = groups.into_iter().map(|(group, samples)| mean_use(group, &samples)).collect();
    out.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.name.cmp(&b.name)));
    out
}

fn per_class(trace: &TraceData, rules: &[ClassRule], samples: &[Sample]) -> Vec<UnitUse> {
    let mut names: HashMap<&str, &'static str> = HashMap::new();
    per_kernel_group(trace, samples, |op| {
        Some(names.entry(op.name.as_str()).or_insert_with(|| classify(rules, &op.name).as_str()).to_string())
    })
}

/// The samples grouped by the CPU phase (crate::iterations::phase_spans) that launched the kernel
/// running at their middle.
fn per_phase(trace: &TraceData, launches: &LaunchIndex, samples: &[Sample]) -> Vec<UnitUse> {
    let mut phases = crate::iterations::phase_spans(trace);
    if phases.is_empty() {
        return Vec::new();
    }
    phases.sort_unstable_by_key(|p| (p.start_ns, std::cmp::Reverse(p.end_ns)));
    per_kernel_group(trace, samples, |op| {
        let at = launches.launch_of(op)?.start_ns;
        let started = &phases[..phases.partition_point(|p| p.start_ns <= at)];
        started.iter().rev().take(16).find(|p| p.end_ns >= at).map(|p| format!("phase {}", p.name))
    })
}

fn work_rates(trace: &TraceData, steps: &StepWindows, peaks: Option<&Peaks>) -> Measured<WorkRates> {
    let rows: Vec<_> = trace
        .iterations
        .iter()
        .filter(|r| !steps.in_outlier(r.start_ns))
        .filter_map(|r| Some((r, r.weight_bytes? + r.kv_bytes_read?, r.flops?)))
        .filter(|(r, _, _)| r.ctx_tokens + r.gen_tokens > 0)
        .collect();
    if rows.is_empty() {
        return Measured::NotAvailable(if trace.iterations.is_empty() {
            "the trace has no iteration rows; record lumen's engine with `--trace` or LUMEN_TRACE".into()
        } else {
            "the iteration rows have no bytes and FLOPs (written by lumen from schema version 3 on)".into()
        });
    }
    let device_time = rows.iter().all(|(r, _, _)| r.device_ms.is_some_and(|ms| ms > 0.0));
    let seconds = |r: &IterationRow| (if device_time { r.device_ms.unwrap_or(0.0) } else { r.host_ms } / 1e3).max(1e-9);
    let series: Vec<(u64, f64, f64)> =
        rows.iter().map(|(r, bytes, flops)| (r.iter, *bytes as f64 / seconds(r) / 1e9, flops / seconds(r) / 1e12)).collect();
    let median = |mut values: Vec<f64>| Distribution::of(&mut values).expect("rows are not empty");
    let dram_gb_s = median(series.iter().map(|s| s.1).collect());
    let tflops = median(series.iter().map(|s| s.2).collect());
    let fp8_unsaid = fp8_unsaid(trace);
    let fp8_share = median(rows.iter().map(|(r, _, flops)| share(fp8_flops(r, fp8_unsaid), *flops)).collect()).median;
    let dram_percent = peaks.map(|p| 100.0 * share(dram_gb_s.median, p.dram_gb_s));
    let tensor_percent = peaks.map(|p| {
        median(rows.iter().map(|(r, _, flops)| 100.0 * p.tensor_seconds(*flops, fp8_flops(r, fp8_unsaid)) / seconds(r)).collect()).median
    });
    let bound = dram_percent.zip(tensor_percent).map(|(d, t)| Bound::judge(d, t));
    Measured::Available(WorkRates {
        iterations: rows.len(),
        time: if device_time { "device time" } else { "host time" },
        dram_gb_s,
        tflops,
        dram_percent,
        tensor_percent,
        fp8_share,
        fp8_unsaid,
        bound,
        series,
    })
}

/// The engine's work by kernel class. Each kernel belongs to the steady iteration whose window
/// holds its start (the engine waits for each iteration's GPU work before the next begins); the
/// attention kernels get the rows' attention FLOPs and K/V bytes, the GEMM and MoE kernels the
/// other FLOPs (the FP8 share among them) and the weight bytes. Only iterations that ran kernels
/// count.
fn class_work(trace: &TraceData, rules: &[ClassRule], steps: &StepWindows, peaks: Option<&Peaks>) -> Measured<Vec<ClassWork>> {
    let mut rows: Vec<&IterationRow> = trace
        .iterations
        .iter()
        .filter(|r| !steps.in_outlier(r.start_ns) && r.ctx_tokens + r.gen_tokens > 0 && r.end_ns > r.start_ns)
        .filter(|r| r.attention_flops.is_some() && r.flops.is_some() && r.weight_bytes.is_some() && r.kv_bytes_read.is_some())
        .collect();
    if rows.is_empty() {
        return Measured::NotAvailable(if trace.iterations.iter().any(|r| r.flops.is_some()) {
            "the iteration rows do not split their FLOPs between attention and the products (lumen writes it from schema version 6 on)"
                .into()
        } else {
            "no iteration rows with the engine's bytes and FLOPs; record lumen's engine with `--trace` or LUMEN_TRACE".into()
        });
    }
    rows.sort_by_key(|r| r.start_ns);
    // (kernels, ns) for attention, the products and the rest; which rows ran kernels.
    let mut time = [(0usize, 0u64); 3];
    let mut ran = vec![false; rows.len()];
    let mut classes: HashMap<&str, KernelClass> = HashMap::new();
    for k in trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Kernel) {
        let i = rows.partition_point(|r| r.start_ns <= k.start_ns);
        if i == 0 || k.start_ns >= rows[i - 1].end_ns {
            continue;
        }
        ran[i - 1] = true;
        let slot = match *classes.entry(k.name.as_str()).or_insert_with(|| classify(rules, &k.name)) {
            KernelClass::Attention => 0,
            KernelClass::Gemm | KernelClass::Moe => 1,
            _ => 2,
        };
        time[slot].0 += 1;
        time[slot].1 += k.end_ns.saturating_sub(k.start_ns);
    }
    let all_ns: u64 = time.iter().map(|t| t.1).sum();
    if all_ns == 0 {
        return Measured::NotAvailable(
            "no kernel ran inside the iterations whose rows split their FLOPs (a CPU run, or CUDA graphs traced whole: record with \
             `lumen profile --cuda-graph-trace node`)"
                .into(),
        );
    }
    let unsaid = fp8_unsaid(trace);
    // (FLOPs, FP8 FLOPs, bytes) of attention and of the products.
    let (mut attention, mut products) = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0));
    for r in rows.iter().zip(&ran).filter(|(_, &ran)| ran).map(|(r, _)| r) {
        let (flops, attention_flops) = (r.flops.unwrap_or(0.0), r.attention_flops.unwrap_or(0.0));
        attention.0 += attention_flops;
        attention.2 += r.kv_bytes_read.unwrap_or(0) as f64;
        products.0 += (flops - attention_flops).max(0.0);
        products.1 += fp8_flops(r, unsaid).min((flops - attention_flops).max(0.0));
        products.2 += r.weight_bytes.unwrap_or(0) as f64;
    }
    let names = [ATTENTION_WORK, PRODUCT_WORK, OTHER_WORK];
    let work = [Some(attention), Some(products), None];
    let rows = names
        .into_iter()
        .zip(work)
        .zip(time)
        .filter(|(_, (kernels, _))| *kernels > 0)
        .map(|((name, work), (kernels, busy_ns))| {
            let seconds = busy_ns as f64 / 1e9;
            let (flops, fp8, bytes) = work.unwrap_or((0.0, 0.0, 0.0));
            let dram_gb_s = bytes / seconds / 1e9;
            // Seconds the work takes at the tensor ceilings and at the DRAM peak.
            let ceilings = work.and(peaks).map(|p| (p.tensor_seconds(flops, fp8), bytes / (p.dram_gb_s * 1e9)));
            let dram_percent = ceilings.map(|(_, dram_s)| 100.0 * dram_s / seconds);
            let tensor_percent = ceilings.map(|(tensor_s, _)| 100.0 * tensor_s / seconds);
            let light_ns = ceilings.map(|(tensor_s, dram_s)| (tensor_s.max(dram_s) * 1e9).round() as u64);
            ClassWork {
                name,
                kernels,
                busy_ns,
                share: share(busy_ns as f64, all_ns as f64),
                dram_gb_s,
                tflops: flops / seconds / 1e12,
                dram_percent,
                tensor_percent,
                light_ns,
                bound: dram_percent.zip(tensor_percent).map(|(d, t)| Bound::judge(d, t)),
            }
        })
        .collect();
    Measured::Available(rows)
}

/// Whether `trace` is an FP8 run (meta `weight_dtype`) none of whose rows say which FLOPs are FP8
/// (written before schema 5).
pub(crate) fn fp8_unsaid(trace: &TraceData) -> bool {
    trace.meta("weight_dtype") == Some("fp8") && trace.iterations.iter().all(|r| r.fp8_flops.is_none())
}

/// The FLOPs of `r` that are FP8 products: its own count, else all of them in an FP8 run whose
/// rows predate the count (`unsaid`: its products are nearly all of its FLOPs, so the FP8 peak
/// gives a lower bound on the use), else none.
pub(crate) fn fp8_flops(r: &IterationRow, unsaid: bool) -> f64 {
    r.fp8_flops.unwrap_or(if unsaid { r.flops.unwrap_or(0.0) } else { 0.0 })
}

/// How the compute use was judged when part of the work is FP8 products.
pub(crate) fn fp8_note(w: &WorkRates) -> String {
    if w.fp8_unsaid {
        ", an FP8 run whose trace does not say which FLOPs are FP8: all against the FP8 peak, a lower bound".into()
    } else if w.fp8_share > 0.0 {
        format!(", {} of the FLOPs FP8 products, against the FP8 peak", text::percent(w.fp8_share))
    } else {
        String::new()
    }
}

fn optional_percent(p: Option<f64>) -> String {
    p.map_or("-".into(), |p| format!("{p:.1}%"))
}

/// The section's blocks, for the terminal and the page (which adds the chart).
pub fn view(sol: &SpeedOfLight) -> Vec<Block> {
    let peaks = match &sol.peaks {
        Measured::Available(p) => fact(
            "peaks",
            format!(
                "{}: DRAM {:.0} GB/s ({}), tensor {:.0} TFLOP/s BF16 dense{}, FP32 {:.1} TFLOP/s",
                p.gpu,
                p.dram_gb_s,
                p.dram_source,
                p.tensor_tflops,
                p.fp8_tflops.map_or(String::new(), |f| format!(" ({f:.0} FP8)")),
                p.fp32_tflops
            ),
        ),
        Measured::NotAvailable(why) => missing("peaks", why),
    };
    let mut blocks = vec![Block::Facts(vec![peaks])];
    blocks.push(match &sol.devices {
        Measured::Available(devices) => Block::Table {
            header: vec!["counters", "samples", "DRAM", "tensor", "SM active", "nearest ceiling"],
            left: vec![0, 5],
            rows: devices
                .iter()
                .chain(&sol.classes)
                .chain(&sol.phases)
                .map(|u| {
                    vec![
                        u.name.clone(),
                        u.samples.to_string(),
                        format!("{:.1}%", u.dram_percent),
                        optional_percent(u.tensor_percent),
                        format!("{:.1}%", u.sm_active_percent),
                        u.bound.as_str().into(),
                    ]
                })
                .collect(),
        },
        Measured::NotAvailable(why) => Block::Facts(vec![missing("counters", why)]),
    });
    blocks.push(match &sol.ops {
        Measured::Available(ops) => Block::Table {
            header: vec!["operators' work", "kernels", "covered", "DRAM", "compute", "nearest ceiling"],
            left: vec![0, 5],
            rows: ops
                .iter()
                .map(|o| {
                    vec![
                        o.name.clone(),
                        o.kernels.to_string(),
                        text::percent(o.coverage),
                        format!("{} ({:.0} GB/s)", optional_percent(o.dram_percent), o.dram_gb_s),
                        format!("{} ({:.1} TFLOP/s)", optional_percent(o.tensor_percent), o.tflops),
                        o.bound.map_or("-", |b| b.as_str()).into(),
                    ]
                })
                .collect(),
        },
        Measured::NotAvailable(why) => Block::Facts(vec![missing("operators' work", why)]),
    });
    blocks.push(Block::Facts(vec![match &sol.work {
        Measured::Available(w) => fact(
            "engine work",
            format!(
                "{} iterations over {}: DRAM median {:.0} GB/s ({}), compute median {:.1} TFLOP/s ({}{}){}",
                w.iterations,
                w.time,
                w.dram_gb_s.median,
                optional_percent(w.dram_percent),
                w.tflops.median,
                optional_percent(w.tensor_percent),
                fp8_note(w),
                w.bound.map_or(String::new(), |b| format!(": {}", b.as_str()))
            ),
        ),
        Measured::NotAvailable(why) => missing("engine work", why),
    }]));
    // One fact a class: a table of these figures does not fit the terminal's width.
    blocks.push(Block::Facts(match &sol.class_work {
        Measured::Available(classes) => classes
            .iter()
            .map(|c| {
                fact(
                    &format!("engine work: {}", c.name),
                    format!(
                        "{} kernels, {} ({} of the kernel time){}",
                        c.kernels,
                        text::duration(c.busy_ns as f64),
                        text::percent(c.share),
                        match (c.light_ns, c.bound) {
                            (Some(light), Some(bound)) => format!(
                                ": DRAM {} ({:.0} GB/s), compute {} ({:.1} TFLOP/s), {} at the nearest ceiling: {}",
                                optional_percent(c.dram_percent),
                                c.dram_gb_s,
                                optional_percent(c.tensor_percent),
                                c.tflops,
                                text::duration(light as f64),
                                bound.as_str()
                            ),
                            _ if c.name == OTHER_WORK => ": work the iteration rows do not count".to_string(),
                            _ => format!(": {:.0} GB/s, {:.1} TFLOP/s (no peaks for the GPU)", c.dram_gb_s, c.tflops),
                        }
                    ),
                )
            })
            .collect(),
        Measured::NotAvailable(why) => vec![missing("engine work by class", why)],
    }));
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::default_rules;
    use lumen_test_support::rows::{iteration, named};
    use lumen_trace::model::{CounterRow, GpuOpRow};

    fn counters(rows: &[(u64, &str, f64)]) -> Vec<CounterRow> {
        rows.iter().map(|&(ts_ns, name, value)| CounterRow { ts_ns, name: name.into(), device: Some(0), value }).collect()
    }

    #[test]
    fn the_bound_is_the_unit_nearest_its_ceiling() {
        assert_eq!(Bound::judge(88.0, 1.0), Bound::Memory);
        assert_eq!(Bound::judge(30.0, 75.0), Bound::Compute);
        assert_eq!(Bound::judge(49.0, 20.0), Bound::Latency);
        assert_eq!(Bound::judge(SOL_BOUND_PERCENT, 0.0), Bound::Memory);
    }

    #[test]
    fn a_streaming_kernel_is_memory_bound_whatever_sm_active_says() {
        let trace = TraceData {
            gpu_ops: vec![named("vectorized_elementwise_kernel", 0, 1_000, 1)],
            counters: counters(&[
                (100, "sm active %", 99.0),
                (100, "dram read %", 44.0),
                (100, "dram write %", 44.0),
                (100, "tensor active %", 0.0),
                (300, "sm active %", 2.0),
                (300, "dram read %", 0.0),
            ]),
            ..TraceData::default()
        };
        let sol = analyze(&trace, &default_rules(), &LaunchIndex::new(&trace), &StepWindows::default());
        let d = &sol.devices.get().unwrap()[0];
        assert_eq!((d.samples, d.dram_percent, d.bound), (1, 88.0, Bound::Memory), "read + write, idle sample left out");
        assert_eq!(sol.classes.len(), 1);
        assert_eq!((sol.classes[0].name.as_str(), sol.classes[0].bound), ("norm/elementwise", Bound::Memory));
        assert!(sol.phases.is_empty(), "no phase spans");

        // The kernel was launched inside the `forward` phase.
        let mut phased = trace.clone();
        phased.spans.push(lumen_test_support::rows::span(0, 50, 1, "forward", "phase"));
        phased.api_calls.push(lumen_test_support::rows::api("cudaLaunchKernel", 10, 20, 1));
        let sol = analyze(&phased, &default_rules(), &LaunchIndex::new(&phased), &StepWindows::default());
        assert_eq!(
            sol.phases.iter().map(|p| (p.name.as_str(), p.samples, p.bound)).collect::<Vec<_>>(),
            [("phase forward", 1, Bound::Memory)]
        );
    }

    #[test]
    fn peaks_come_from_a_large_device_copy_else_the_datasheet() {
        let mut trace = TraceData { meta: vec![("gpu".into(), "NVIDIA H200 (cuda:0)".into())], ..TraceData::default() };
        let p = peaks(&trace).get().cloned().unwrap();
        assert_eq!((p.dram_gb_s, p.tensor_tflops, p.dram_source.as_str()), (4800.0, 989.0, "datasheet (H200)"));
        trace.gpu_ops.push(GpuOpRow {
            kind: GpuOpKind::Memcpy,
            start_ns: 0,
            end_ns: 50_000_000,
            bytes: Some(100_000_000_000),
            copy_kind: Some("DtoD".into()),
            ..GpuOpRow::default()
        });
        assert_eq!(peaks(&trace).get().unwrap().dram_gb_s, 4000.0);
        let gh = TraceData { meta: vec![("gpu".into(), "NVIDIA GH200 480GB".into())], ..TraceData::default() };
        assert_eq!(peaks(&gh).get().unwrap().dram_gb_s, 4000.0, "GH200 is not an H200");
        let a100 = TraceData { meta: vec![("gpu".into(), "NVIDIA A100-SXM4-40GB".into())], ..TraceData::default() };
        assert_eq!(peaks(&a100).get().unwrap().dram_gb_s, 1555.0);
        let unknown = TraceData { meta: vec![("gpu".into(), "Tesla K80".into())], ..TraceData::default() };
        assert_eq!(peaks(&unknown), Measured::NotAvailable("no datasheet peaks for GPU \"Tesla K80\"".into()));
    }

    /// An imported torch.profiler trace: `aten::mm` read 536 MB for one row and launched two
    /// kernels of 100 µs and 50 µs; an `aten::add` read and wrote 3 GB in 750 µs.
    #[test]
    fn kernels_take_their_operators_work_shared_by_time() {
        use lumen_test_support::rows::{api, span};
        let mut mm = span(0, 1_000, 1, "aten::mm", "cpu_op");
        mm.args = Some("{\"flops\":536870912,\"bytes\":536936448}".into());
        let mut add = span(2_000, 3_000, 1, "aten::add", "cpu_op");
        add.args = Some("{\"flops\":0,\"bytes\":3000000000}".into());
        let trace = TraceData {
            meta: vec![("gpu".into(), "NVIDIA H200".into())],
            spans: vec![span(0, 5_000, 1, "ProfilerStep#1", "user_annotation"), mm, add],
            api_calls: vec![
                api("cudaLaunchKernel", 100, 200, 1),
                api("cudaLaunchKernel", 300, 400, 2),
                api("cudaLaunchKernel", 2_100, 2_200, 3),
            ],
            gpu_ops: vec![
                named("gemv_kernel", 10_000, 110_000, 1),
                named("gemvx_kernel_tail", 110_000, 160_000, 2),
                named("vectorized_elementwise_kernel", 200_000, 950_000, 3),
            ],
            ..TraceData::default()
        };
        let sol = analyze(&trace, &default_rules(), &LaunchIndex::new(&trace), &StepWindows::default());
        let ops = sol.ops.get().cloned().unwrap();
        let all = &ops[0];
        assert_eq!((all.name.as_str(), all.kernels, all.busy_ns, all.coverage), (ALL_KERNELS, 3, 900_000, 1.0));
        let add = ops.iter().find(|o| o.name == "norm/elementwise").unwrap();
        assert!((add.dram_gb_s - 4000.0).abs() < 1e-6 && add.bound == Some(Bound::Memory), "{add:?}");
        let gemm = ops.iter().find(|o| o.name == "gemm").unwrap();
        // Two thirds of the mm's bytes in its 100 µs kernel: 3.58 TB/s.
        assert!((gemm.dram_gb_s - 536_936_448.0 * 2.0 / 3.0 / 100e-6 / 1e9).abs() < 1e-6, "{gemm:?}");
        assert!(gemm.tensor_percent.unwrap() < 1.0);

        // The same product in FP32 runs on the FP32 pipes: 2.7 TFLOP in 50 ms is 81% of 67.
        let mut fp32 = trace.clone();
        fp32.spans[1].args = Some("{\"flops\":2.7e12,\"bytes\":1000,\"fp32\":true}".into());
        fp32.gpu_ops[0].end_ns = 10_000 + 50_000_000;
        fp32.gpu_ops.truncate(1);
        let ops = analyze(&fp32, &default_rules(), &LaunchIndex::new(&fp32), &StepWindows::default()).ops.get().cloned().unwrap();
        let gemm = ops.iter().find(|o| o.name == "gemm").unwrap();
        assert!((gemm.tensor_percent.unwrap() - 2.7e12 / 0.05 / 67e12 * 100.0).abs() < 1e-9, "{gemm:?}");
        assert_eq!(gemm.bound, Some(Bound::Compute));
        let none = TraceData { gpu_ops: trace.gpu_ops.clone(), ..TraceData::default() };
        assert!(analyze(&none, &default_rules(), &LaunchIndex::new(&none), &StepWindows::default()).ops.get().is_none());
    }

    #[test]
    fn fp8_products_are_judged_against_the_fp8_peak() {
        // A prefill step of an FP8 model on an H100: 134 TFLOP in 172 ms, 780 TFLOP/s (79% of the
        // BF16 peak), 97% of it FP8 products: at the FP8 peak those take 66 ms, the rest 4 ms.
        let row = |iter: u64, fp8_flops: Option<f64>| lumen_trace::model::IterationRow {
            weight_bytes: Some(8_000_000_000),
            kv_bytes_read: Some(20_000_000_000),
            flops: Some(134.2e12),
            fp8_flops,
            device_ms: Some(172.0),
            ..iteration(iter, iter * 200_000_000, iter * 200_000_000 + 172_000_000, 172.0)
        };
        let rates = |fp8: Option<f64>, weight_dtype: &str| {
            let trace = TraceData {
                meta: vec![("gpu".into(), "NVIDIA H100 80GB HBM3 (cuda:0)".into()), ("weight_dtype".into(), weight_dtype.into())],
                iterations: (0..5).map(|i| row(i, fp8)).collect(),
                ..TraceData::default()
            };
            analyze(&trace, &default_rules(), &LaunchIndex::new(&trace), &StepWindows::default()).work.get().cloned().unwrap()
        };
        let fp8 = rates(Some(0.97 * 134.2e12), "fp8");
        let at_ceiling = 0.97 * 134.2e12 / 1979e12 + 0.03 * 134.2e12 / 989e12;
        assert!((fp8.tensor_percent.unwrap() - 100.0 * at_ceiling / 0.172).abs() < 1e-6, "{:?}", fp8.tensor_percent);
        assert!((fp8.fp8_share - 0.97).abs() < 1e-9);
        assert_eq!(fp8.bound, Some(Bound::Latency), "41% of the FP8 ceilings is near none of them");
        assert_eq!(fp8_note(&fp8), ", 97.0% of the FLOPs FP8 products, against the FP8 peak");
        // A 16-bit run: every FLOP against the BF16 peak.
        let unsaid = rates(None, "bf16");
        assert!((unsaid.tensor_percent.unwrap() - 78.9).abs() < 0.1, "{:?}", unsaid.tensor_percent);
        assert_eq!((unsaid.bound, unsaid.fp8_share, fp8_note(&unsaid).as_str()), (Some(Bound::Compute), 0.0, ""));
        // An FP8 run written before the rows carried the share: all its FLOPs against the FP8
        // peak, and it says so.
        let old_fp8 = rates(None, "fp8");
        let all_fp8 = 100.0 * 134.2e12 / 1979e12 / 0.172;
        assert!((old_fp8.tensor_percent.unwrap() - all_fp8).abs() < 1e-6, "{:?}", old_fp8.tensor_percent);
        assert_eq!((old_fp8.bound, old_fp8.fp8_unsaid, fp8.fp8_unsaid), (Some(Bound::Latency), true, false));
        assert!(fp8_note(&old_fp8).contains("does not say which FLOPs are FP8"), "{}", fp8_note(&old_fp8));
        // A GPU without FP8 tensor cores runs them at the BF16 peak.
        let a100 = Peaks {
            gpu: "A100".into(),
            dram_gb_s: 1555.0,
            dram_source: "datasheet".into(),
            tensor_tflops: 312.0,
            fp8_tflops: None,
            fp32_tflops: 19.5,
        };
        assert_eq!(a100.tensor_seconds(312e12, 300e12), 1.0);
    }

    #[test]
    fn the_engine_work_goes_to_the_kernel_classes_that_ran_it() {
        // Two prefill steps of an FP8 model on an H100, 100 µs apart: per step 2 TFLOP, 0.2 of it
        // attention with 1 GB of K/V, 1.7 FP8 products and 0.1 the head, over 8 GB of weights.
        // The attention kernel takes 4 ms (50 TFLOP/s), the GEMMs 2 ms, a norm 1 ms; a kernel
        // between the steps and one in a step whose row does not split its FLOPs count nowhere.
        let step = |iter: u64, attention_flops: Option<f64>| lumen_trace::model::IterationRow {
            weight_bytes: Some(8_000_000_000),
            kv_bytes_read: Some(1_000_000_000),
            flops: Some(2.0e12),
            fp8_flops: Some(1.7e12),
            attention_flops,
            ..iteration(iter, iter * 7_100_000, iter * 7_100_000 + 7_000_000, 7.0)
        };
        let mut gpu_ops = Vec::new();
        for i in 0..3u64 {
            let t = i * 7_100_000;
            gpu_ops.push(named("attention_prefill_hd128_fp8", t, t + 4_000_000, 3 * i + 1));
            gpu_ops.push(named("nvjet_sm90_qqtst_128x256", t + 4_000_000, t + 6_000_000, 3 * i + 2));
            gpu_ops.push(named("add_rms_norm", t + 6_000_000, t + 7_000_000, 3 * i + 3));
        }
        gpu_ops.push(named("gemm_between_steps", 7_020_000, 7_080_000, 99));
        let trace = TraceData {
            meta: vec![("gpu".into(), "NVIDIA H100 80GB HBM3".into()), ("weight_dtype".into(), "fp8".into())],
            iterations: vec![step(0, Some(0.2e12)), step(1, Some(0.2e12)), step(2, None)],
            gpu_ops,
            ..TraceData::default()
        };
        let sol = analyze(&trace, &default_rules(), &LaunchIndex::new(&trace), &StepWindows::default());
        let classes = sol.class_work.get().unwrap();
        let names: Vec<_> = classes.iter().map(|c| (c.name, c.kernels, c.busy_ns)).collect();
        assert_eq!(names, [(ATTENTION_WORK, 2, 8_000_000), (PRODUCT_WORK, 2, 4_000_000), (OTHER_WORK, 2, 2_000_000)]);
        let (attention, products, rest) = (&classes[0], &classes[1], &classes[2]);
        assert!((attention.share - 8.0 / 14.0).abs() < 1e-12);
        assert!((attention.tflops - 50.0).abs() < 1e-9 && (attention.dram_gb_s - 250.0).abs() < 1e-9);
        assert!((attention.tensor_percent.unwrap() - 100.0 * 50.0 / 989.0).abs() < 1e-9, "attention at the BF16 peak");
        // Its light: 0.4 TFLOP at 989 TFLOP/s (404 µs) over 2 GB at 3.35 TB/s (597 µs).
        assert_eq!(attention.light_ns, Some((2e9 / 3350e9 * 1e9_f64).round() as u64));
        assert_eq!(attention.bound, Some(Bound::Latency));
        // The products: 3.6 TFLOP in 4 ms, 3.4 of it FP8.
        let at_ceiling = 3.4e12 / 1979e12 + 0.2e12 / 989e12;
        assert!((products.tensor_percent.unwrap() - 100.0 * at_ceiling / 4e-3).abs() < 1e-9, "{:?}", products.tensor_percent);
        assert!((products.dram_gb_s - 4000.0).abs() < 1e-9, "16 GB of weights in 4 ms");
        assert_eq!(products.bound, Some(Bound::Memory));
        assert_eq!((rest.light_ns, rest.tensor_percent, rest.bound), (None, None, None), "the rest's work is not counted");
        // A trace whose rows do not split their FLOPs, and one whose kernels ran elsewhere.
        let old = TraceData { iterations: vec![step(0, None)], ..trace.clone() };
        let why = analyze(&old, &default_rules(), &LaunchIndex::new(&old), &StepWindows::default()).class_work;
        assert!(why.reason().is_some_and(|w| w.contains("schema version 6")), "{why:?}");
        let no_kernels = TraceData { gpu_ops: vec![named("gemm_between_steps", 7_020_000, 7_080_000, 99)], ..trace };
        let why = analyze(&no_kernels, &default_rules(), &LaunchIndex::new(&no_kernels), &StepWindows::default()).class_work;
        assert!(why.reason().is_some_and(|w| w.contains("no kernel ran inside the iterations")), "{why:?}");
    }

    #[test]
    fn batch_one_decode_rows_are_memory_bound_against_the_peaks() {
        // 16 GB of weights and 0.1 GB of KV in 4.5 ms: 3.58 TB/s; 16 GFLOP: 3.6 TFLOP/s.
        let row = |iter: u64| lumen_trace::model::IterationRow {
            weight_bytes: Some(16_000_000_000),
            kv_bytes_read: Some(100_000_000),
            flops: Some(16e9),
            device_ms: Some(4.5),
            ..iteration(iter, iter * 5_000_000, iter * 5_000_000 + 4_600_000, 4.6)
        };
        let trace = TraceData {
            meta: vec![("gpu".into(), "NVIDIA H200 (cuda:0)".into())],
            iterations: (0..4).map(row).collect(),
            ..TraceData::default()
        };
        let w = analyze(&trace, &default_rules(), &LaunchIndex::new(&trace), &StepWindows::default()).work.get().cloned().unwrap();
        assert_eq!((w.iterations, w.time, w.bound), (4, "device time", Some(Bound::Memory)));
        assert!((w.dram_gb_s.median - 3577.8).abs() < 0.1, "{}", w.dram_gb_s.median);
        assert!((w.dram_percent.unwrap() - 74.5).abs() < 0.1, "{:?}", w.dram_percent);
        assert!(w.tensor_percent.unwrap() < 1.0);
        let old = TraceData { iterations: vec![iteration(0, 0, 1, 1.0)], ..TraceData::default() };
        assert!(matches!(work_rates(&old, &StepWindows::default(), None), Measured::NotAvailable(why) if why.contains("schema version 3")));
    }
}
