//! The diagnosis: which known performance patterns the measured figures show, each with the
//! numbers behind it, the time it explains and what to change in lumen's own flags. Every
//! threshold is a named constant listed in [`THRESHOLDS`]; [`PATTERNS`] says when each fires.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use lumen_trace::model::{GpuOpKind, TraceData};
use serde::Serialize;

use crate::gpu::GapClass;
use crate::stats::share;
use crate::text::{self, Table};
use crate::{Analysis, Measured};

/// A device busy less than this share of its window is under-used.
pub const LOW_BUSY: f64 = 0.50;
/// Host waits above this share of the idle time make the CPU the bottleneck...
pub const HOST_WAIT_DOMINATES: f64 = 0.5;
/// ...when the device is idle more than this share of its window.
pub const CPU_BOUND_MIN_IDLE: f64 = 0.10;
/// Counter samples count towards the bound patterns only while SM active is above this.
pub const BUSY_SAMPLE_SM_PERCENT: f64 = 5.0;
/// Mean DRAM bandwidth above this is memory bound...
pub const MEMORY_BOUND_DRAM_PERCENT: f64 = 90.0;
/// ...while SM active stays below this.
pub const MEMORY_BOUND_SM_BELOW_PERCENT: f64 = 70.0;
/// Mean SM active above this is compute bound...
pub const COMPUTE_BOUND_SM_PERCENT: f64 = 90.0;
/// ...while DRAM bandwidth stays below this.
pub const COMPUTE_BOUND_DRAM_BELOW_PERCENT: f64 = 60.0;
/// A kernel shorter than this is short.
pub const SHORT_KERNEL_NS: u64 = 10_000;
/// Short kernels above this share of all kernels suggest launch overhead.
pub const SHORT_KERNEL_SHARE: f64 = 0.5;
/// Kernels shorter than their own launch call above this share show launch overhead.
pub const SHORTER_THAN_LAUNCH_SHARE: f64 = 0.5;
/// Eager kernels (no graph id) above this share are "most kernels".
pub const EAGER_KERNEL_SHARE: f64 = 0.5;
/// Sync waits above this share of the idle time are synchronisation gaps.
pub const SYNC_WAIT_SHARE: f64 = 0.3;
/// CUDA alloc and free calls per iteration above this are churn.
pub const ALLOC_CALLS_PER_ITERATION: f64 = 1.0;
/// Host allocations per iteration above this are churn.
pub const HOST_ALLOCS_PER_ITERATION: f64 = 1000.0;

/// How many offenders (kernels, gaps, calls) a finding names.
const TOP_OFFENDERS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Threshold {
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
    pub meaning: &'static str,
}

pub const THRESHOLDS: &[Threshold] = &[
    Threshold { name: "LOW_BUSY", value: LOW_BUSY, unit: "share", meaning: "device busy share below it is low utilisation" },
    Threshold {
        name: "HOST_WAIT_DOMINATES",
        value: HOST_WAIT_DOMINATES,
        unit: "share of idle",
        meaning: "host waits above it make the CPU the bottleneck",
    },
    Threshold {
        name: "CPU_BOUND_MIN_IDLE",
        value: CPU_BOUND_MIN_IDLE,
        unit: "share of window",
        meaning: "the CPU bottleneck needs at least this much idle time",
    },
    Threshold {
        name: "BUSY_SAMPLE_SM_PERCENT",
        value: BUSY_SAMPLE_SM_PERCENT,
        unit: "%",
        meaning: "counter samples with SM active above it are busy samples",
    },
    Threshold {
        name: "MEMORY_BOUND_DRAM_PERCENT",
        value: MEMORY_BOUND_DRAM_PERCENT,
        unit: "% of peak",
        meaning: "mean DRAM bandwidth above it is memory bound",
    },
    Threshold {
        name: "MEMORY_BOUND_SM_BELOW_PERCENT",
        value: MEMORY_BOUND_SM_BELOW_PERCENT,
        unit: "%",
        meaning: "memory bound needs mean SM active below it",
    },
    Threshold {
        name: "COMPUTE_BOUND_SM_PERCENT",
        value: COMPUTE_BOUND_SM_PERCENT,
        unit: "%",
        meaning: "mean SM active above it is compute bound",
    },
    Threshold {
        name: "COMPUTE_BOUND_DRAM_BELOW_PERCENT",
        value: COMPUTE_BOUND_DRAM_BELOW_PERCENT,
        unit: "% of peak",
        meaning: "compute bound needs mean DRAM bandwidth below it",
    },
    Threshold { name: "SHORT_KERNEL_NS", value: SHORT_KERNEL_NS as f64, unit: "ns", meaning: "a kernel shorter than it is short" },
    Threshold {
        name: "SHORT_KERNEL_SHARE",
        value: SHORT_KERNEL_SHARE,
        unit: "share of kernels",
        meaning: "short kernels above it suggest launch overhead",
    },
    Threshold {
        name: "SHORTER_THAN_LAUNCH_SHARE",
        value: SHORTER_THAN_LAUNCH_SHARE,
        unit: "share of kernels",
        meaning: "kernels shorter than their launch above it show launch overhead",
    },
    Threshold {
        name: "EAGER_KERNEL_SHARE",
        value: EAGER_KERNEL_SHARE,
        unit: "share of kernels",
        meaning: "eager kernels above it are most kernels",
    },
    Threshold {
        name: "SYNC_WAIT_SHARE",
        value: SYNC_WAIT_SHARE,
        unit: "share of idle",
        meaning: "sync waits above it are synchronisation gaps",
    },
    Threshold {
        name: "ALLOC_CALLS_PER_ITERATION",
        value: ALLOC_CALLS_PER_ITERATION,
        unit: "calls",
        meaning: "CUDA alloc/free calls per iteration above it are churn",
    },
    Threshold {
        name: "HOST_ALLOCS_PER_ITERATION",
        value: HOST_ALLOCS_PER_ITERATION,
        unit: "allocations",
        meaning: "host allocations per iteration above it are churn",
    },
];

pub const LOW_UTILISATION: &str = "low GPU utilisation";
pub const CPU_BOTTLENECK: &str = "CPU bottleneck";
pub const MEMORY_BOUND: &str = "memory-bandwidth bound";
pub const COMPUTE_BOUND: &str = "compute bound";
pub const LAUNCH_OVERHEAD: &str = "kernel-launch overhead";
pub const SYNC_GAPS: &str = "synchronisation gaps";
pub const PAGEABLE_MEMCPY: &str = "pageable memcpy";
pub const ALLOCATION_CHURN: &str = "allocation churn";
pub const MOE_IMBALANCE: &str = "MoE imbalance";

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pattern {
    pub name: &'static str,
    pub fires_when: &'static str,
    pub action: &'static str,
}

pub const PATTERNS: &[Pattern] = &[
    Pattern {
        name: LOW_UTILISATION,
        fires_when: "a device is busy < LOW_BUSY of its window",
        action: "raise --max-batch-size / --max-num-tokens, or more requests in flight (bench throughput --concurrency)",
    },
    Pattern {
        name: CPU_BOTTLENECK,
        fires_when: "host waits > HOST_WAIT_DOMINATES of idle and idle > CPU_BOUND_MIN_IDLE of the window",
        action: "cut the named CPU phase; LUMEN_PROFILE_RECORD_WAITS=1 / LUMEN_PROFILE_RECORD_ALLOC=1; --cuda-graphs on",
    },
    Pattern {
        name: MEMORY_BOUND,
        fires_when: "busy samples: DRAM > MEMORY_BOUND_DRAM_PERCENT and SM < MEMORY_BOUND_SM_BELOW_PERCENT",
        action: "FP8 weights/KV cache or tensor parallelism (not in lumen yet); --max-batch-size",
    },
    Pattern {
        name: COMPUTE_BOUND,
        fires_when: "busy samples: SM > COMPUTE_BOUND_SM_PERCENT and DRAM < COMPUTE_BOUND_DRAM_BELOW_PERCENT",
        action: "a good problem: a faster GPU or speculative decoding (not in lumen yet)",
    },
    Pattern {
        name: LAUNCH_OVERHEAD,
        fires_when: "kernels < SHORT_KERNEL_NS > SHORT_KERNEL_SHARE, launch gaps or shorter-than-launch > SHORTER_THAN_LAUNCH_SHARE, eager > EAGER_KERNEL_SHARE",
        action: "--cuda-graphs on --cuda-graph-padding on --cuda-graph-max-batch-size N",
    },
    Pattern {
        name: SYNC_GAPS,
        fires_when: "sync waits > SYNC_WAIT_SHARE of idle",
        action: "remove or defer the synchronising calls named",
    },
    Pattern { name: PAGEABLE_MEMCPY, fires_when: "any async copy from or to pageable host memory", action: "pin the host buffers" },
    Pattern {
        name: ALLOCATION_CHURN,
        fires_when: "CUDA alloc/free calls > ALLOC_CALLS_PER_ITERATION or host allocations > HOST_ALLOCS_PER_ITERATION per iteration",
        action: "reuse buffers across iterations (a pool)",
    },
    Pattern { name: MOE_IMBALANCE, fires_when: "needs the MoE perfect-router comparison (not built)", action: "not diagnosed" },
];

/// A pattern the trace shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub pattern: &'static str,
    /// The time the pattern accounts for (idle, waiting or busy time); findings sort by it.
    pub explained_ns: u64,
    pub evidence: Vec<String>,
    /// The kernels, gaps or calls that contribute most.
    pub offenders: Vec<String>,
    /// Where it applies, in ns from the trace's start.
    pub range_ns: Option<(u64, u64)>,
    pub action: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unavailable {
    pub pattern: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Diagnosis {
    /// The patterns found, most explained time first.
    pub findings: Vec<Finding>,
    /// The patterns checked and not found.
    pub not_found: Vec<&'static str>,
    pub not_available: Vec<Unavailable>,
}

enum Outcome {
    Fires(Finding),
    NotFound,
    NotAvailable(String),
}

/// What the rules read: the measured figures, the raw rows they summarise, and the trace's start.
struct Facts<'a> {
    trace: &'a TraceData,
    a: &'a Analysis,
    origin_ns: u64,
}

impl Facts<'_> {
    fn relative(&self, start_ns: u64, end_ns: u64) -> Option<(u64, u64)> {
        Some((start_ns.saturating_sub(self.origin_ns), end_ns.saturating_sub(self.origin_ns)))
    }
}

pub fn diagnose(trace: &TraceData, a: &Analysis) -> Diagnosis {
    let facts = Facts { trace, a, origin_ns: a.overview.span.get().map_or(0, |s| s.start_ns) };
    let samples = busy_samples(trace);
    let checks: [(&'static str, Outcome); 8] = [
        (LOW_UTILISATION, low_utilisation(&facts)),
        (CPU_BOTTLENECK, cpu_bottleneck(&facts)),
        (MEMORY_BOUND, memory_bound(&facts, &samples)),
        (COMPUTE_BOUND, compute_bound(&facts, &samples)),
        (LAUNCH_OVERHEAD, launch_overhead(&facts)),
        (SYNC_GAPS, sync_gaps(&facts)),
        (PAGEABLE_MEMCPY, pageable_memcpy(&facts)),
        (ALLOCATION_CHURN, allocation_churn(&facts)),
    ];
    let mut diagnosis = Diagnosis::default();
    for (pattern, outcome) in checks {
        match outcome {
            Outcome::Fires(finding) => diagnosis.findings.push(finding),
            Outcome::NotFound => diagnosis.not_found.push(pattern),
            Outcome::NotAvailable(reason) => diagnosis.not_available.push(Unavailable { pattern, reason }),
        }
    }
    diagnosis.findings.sort_by_key(|f| std::cmp::Reverse(f.explained_ns));
    diagnosis
}

fn low_utilisation(f: &Facts) -> Outcome {
    let devices = match &f.a.gpu {
        Measured::Available(devices) => devices,
        Measured::NotAvailable(why) => return Outcome::NotAvailable(why.clone()),
    };
    let low: Vec<_> = devices.iter().filter(|d| d.busy_share < LOW_BUSY).collect();
    if low.is_empty() {
        return Outcome::NotFound;
    }
    let mut evidence: Vec<String> = low
        .iter()
        .map(|d| format!("device {} busy {} of {}", d.device, text::percent(d.busy_share), text::duration((d.end_ns - d.start_ns) as f64)))
        .collect();
    if f.a.hardware.get().is_none() {
        evidence.push("time utilisation only: the trace has no SM/DRAM samples".into());
    }
    Outcome::Fires(Finding {
        pattern: LOW_UTILISATION,
        explained_ns: low.iter().map(|d| d.idle_ns).sum(),
        evidence,
        offenders: Vec::new(),
        range_ns: f.relative(low.iter().map(|d| d.start_ns).min().unwrap_or(0), low.iter().map(|d| d.end_ns).max().unwrap_or(0)),
        action: "give the GPU more work per iteration: raise --max-batch-size and --max-num-tokens, or keep more requests in flight \
                 (`lumen bench throughput --concurrency`)"
            .into(),
    })
}

/// Idle, host-wait, sync-wait and window time summed over the devices.
struct IdleTotals {
    idle_ns: u64,
    window_ns: u64,
    host_wait_ns: u64,
    sync_wait_ns: u64,
    launch_gaps: usize,
    launch_gap_ns: u64,
}

fn idle_totals(a: &Analysis) -> Result<IdleTotals, String> {
    let (devices, gaps) = match (&a.gpu, &a.gaps) {
        (Measured::Available(devices), Measured::Available(gaps)) => (devices, gaps),
        (Measured::NotAvailable(why), _) | (_, Measured::NotAvailable(why)) => return Err(why.clone()),
    };
    let class = |wanted: GapClass| gaps.iter().flat_map(|g| &g.classes).filter(move |c| c.class == wanted);
    Ok(IdleTotals {
        idle_ns: gaps.iter().map(|g| g.total_ns).sum(),
        window_ns: devices.iter().map(|d| d.end_ns - d.start_ns).sum(),
        host_wait_ns: class(GapClass::HostWait).map(|c| c.total_ns).sum(),
        sync_wait_ns: class(GapClass::SyncWait).map(|c| c.total_ns).sum(),
        launch_gaps: class(GapClass::LaunchGap).map(|c| c.count).sum(),
        launch_gap_ns: class(GapClass::LaunchGap).map(|c| c.total_ns).sum(),
    })
}

fn cpu_bottleneck(f: &Facts) -> Outcome {
    let totals = match idle_totals(f.a) {
        Ok(totals) => totals,
        Err(why) => return Outcome::NotAvailable(why),
    };
    let host_share = share(totals.host_wait_ns as f64, totals.idle_ns as f64);
    let idle_share = share(totals.idle_ns as f64, totals.window_ns as f64);
    if host_share <= HOST_WAIT_DOMINATES || idle_share <= CPU_BOUND_MIN_IDLE {
        return Outcome::NotFound;
    }
    let mut evidence = vec![format!(
        "host waits {} = {} of {} idle; idle is {} of the {} busy window",
        text::duration(totals.host_wait_ns as f64),
        text::percent(host_share),
        text::duration(totals.idle_ns as f64),
        text::percent(idle_share),
        text::duration(totals.window_ns as f64)
    )];
    let busiest_phase = f.a.phases.phases.get().and_then(|p| p.phases.first());
    if let Some(phase) = busiest_phase {
        let of_host = phase.share_of_host.map(|s| format!(" ({} of host time)", text::percent(s))).unwrap_or_default();
        evidence.push(format!("phase `{}` takes the most host time: {}{of_host}", phase.name, text::duration(phase.total_ns as f64)));
    }
    let mut host_gaps: Vec<_> = f.a.gaps.get().into_iter().flatten().flat_map(|d| d.largest.iter().map(move |g| (d.device, g))).collect();
    host_gaps.retain(|(_, g)| g.class == GapClass::HostWait);
    host_gaps.sort_by_key(|(_, g)| std::cmp::Reverse(g.duration_ns));
    let waiting_phase = phase_during(f.trace, host_gaps.iter().map(|(_, g)| (g.start_ns, g.start_ns + g.duration_ns)));
    if let Some((name, overlap_ns)) = &waiting_phase {
        let listed_ns: u64 = host_gaps.iter().map(|(_, g)| g.duration_ns).sum();
        evidence.push(format!(
            "during the {} largest host waits ({}), the host was in phase `{name}` for {}",
            host_gaps.len(),
            text::duration(listed_ns as f64),
            text::duration(*overlap_ns as f64)
        ));
    }
    host_gaps.truncate(TOP_OFFENDERS);
    let offenders = host_gaps
        .iter()
        .map(|(device, g)| {
            let spans: Vec<String> = g.cpu_spans.iter().map(|s| format!("{} {}", s.name, text::duration(s.overlap_ns as f64))).collect();
            let spans = if spans.is_empty() { "no CPU span".to_string() } else { spans.join(", ") };
            let at = g.start_ns.saturating_sub(f.origin_ns);
            format!("device {device} idle {} at +{}: {spans}", text::duration(g.duration_ns as f64), text::duration(at as f64))
        })
        .collect();
    let range_ns = match (host_gaps.iter().map(|(_, g)| g.start_ns).min(), host_gaps.iter().map(|(_, g)| g.start_ns + g.duration_ns).max())
    {
        (Some(start), Some(end)) => f.relative(start, end),
        _ => None,
    };
    let phase = match (&waiting_phase, busiest_phase) {
        (Some((name, _)), _) => format!("phase `{name}`, the one the GPU waits in"),
        (None, Some(p)) => format!("phase `{}`, the longest (schedule, prepare inputs and sample are the usual ones)", p.name),
        (None, None) => "the CPU work between launches (schedule, prepare inputs and sample are the usual ones)".to_string(),
    };
    Outcome::Fires(Finding {
        pattern: CPU_BOTTLENECK,
        explained_ns: totals.host_wait_ns,
        evidence,
        offenders,
        range_ns,
        action: format!(
            "the GPU waits for the host: shorten {phase}; record waits and \
             allocations with LUMEN_PROFILE_RECORD_WAITS=1 LUMEN_PROFILE_RECORD_ALLOC=1; replay decode from CUDA graphs (--cuda-graphs on)"
        ),
    })
}

/// The engine phase that overlaps `windows` most, with its overlap: where the host was while
/// the GPU waited for it.
fn phase_during(trace: &TraceData, windows: impl Iterator<Item = (u64, u64)>) -> Option<(String, u64)> {
    let phases = crate::iterations::phase_spans(trace);
    let mut overlap: HashMap<&str, u64> = HashMap::new();
    for (start, end) in windows {
        for p in &phases {
            let shared = end.min(p.end_ns).saturating_sub(start.max(p.start_ns));
            if shared > 0 {
                *overlap.entry(p.name).or_default() += shared;
            }
        }
    }
    overlap.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0))).map(|(name, ns)| (name.to_string(), ns))
}

/// The mean counters of one device over its samples with SM active above [`BUSY_SAMPLE_SM_PERCENT`].
struct BusySamples {
    device: u32,
    count: usize,
    start_ns: u64,
    end_ns: u64,
    sm_percent: f64,
    dram_percent: Option<f64>,
    tensor_percent: Option<f64>,
}

/// The counters of one device sampled at one timestamp, by name.
type Instant<'a> = HashMap<&'a str, f64>;

/// Per device, the counters sampled at each instant, averaged over the busy instants; the reason
/// when there are none.
fn busy_samples(trace: &TraceData) -> Result<Vec<BusySamples>, String> {
    let mut instants: BTreeMap<(u32, u64), Instant> = BTreeMap::new();
    for c in &trace.counters {
        if let Some(device) = c.device {
            instants.entry((device, c.ts_ns)).or_default().insert(c.name.as_str(), c.value);
        }
    }
    if !instants.values().any(|at| at.contains_key("sm active %")) {
        return Err("no SM/DRAM samples; time utilisation only".into());
    }
    let mut by_device: BTreeMap<u32, Vec<(u64, &Instant)>> = BTreeMap::new();
    for ((device, ts), at) in &instants {
        if at.get("sm active %").is_some_and(|&sm| sm > BUSY_SAMPLE_SM_PERCENT) {
            by_device.entry(*device).or_default().push((*ts, at));
        }
    }
    if by_device.is_empty() {
        return Err(format!("no sample has SM active above {BUSY_SAMPLE_SM_PERCENT}%"));
    }
    let mean = |values: Vec<f64>| (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
    Ok(by_device
        .into_iter()
        .map(|(device, busy)| {
            let dram =
                busy.iter().filter_map(|(_, at)| match (at.get("dram bandwidth %"), at.get("dram read %"), at.get("dram write %")) {
                    (Some(&bandwidth), _, _) => Some(bandwidth),
                    (None, None, None) => None,
                    (None, read, write) => Some(read.unwrap_or(&0.0) + write.unwrap_or(&0.0)),
                });
            BusySamples {
                device,
                count: busy.len(),
                start_ns: busy[0].0,
                end_ns: busy[busy.len() - 1].0,
                sm_percent: mean(busy.iter().map(|(_, at)| at["sm active %"]).collect()).unwrap_or(0.0),
                dram_percent: mean(dram.collect()),
                tensor_percent: mean(busy.iter().filter_map(|(_, at)| at.get("tensor active %").copied()).collect()),
            }
        })
        .collect())
}

fn bound(
    f: &Facts,
    samples: &Result<Vec<BusySamples>, String>,
    pattern: &'static str,
    is_bound: impl Fn(f64, f64) -> bool,
    action: &str,
) -> Outcome {
    let devices = match samples {
        Ok(devices) => devices,
        Err(why) => return Outcome::NotAvailable(why.clone()),
    };
    let with_dram: Vec<(&BusySamples, f64)> = devices.iter().filter_map(|d| Some((d, d.dram_percent?))).collect();
    if with_dram.is_empty() {
        return Outcome::NotAvailable("no DRAM samples (dram bandwidth % or dram read/write %)".into());
    }
    let bound: Vec<_> = with_dram.into_iter().filter(|&(d, dram)| is_bound(d.sm_percent, dram)).collect();
    if bound.is_empty() {
        return Outcome::NotFound;
    }
    let evidence = bound
        .iter()
        .map(|(d, dram)| {
            let tensor = d.tensor_percent.map(|t| format!(", tensor active {t:.1}%")).unwrap_or_default();
            format!(
                "device {}: DRAM {dram:.1}% of peak, SM active {:.1}%{tensor} (mean of {} samples with SM active > {BUSY_SAMPLE_SM_PERCENT}%)",
                d.device, d.sm_percent, d.count
            )
        })
        .collect();
    let start = bound.iter().map(|(d, _)| d.start_ns).min().unwrap_or(0);
    let end = bound.iter().map(|(d, _)| d.end_ns).max().unwrap_or(0);
    Outcome::Fires(Finding {
        pattern,
        explained_ns: bound.iter().map(|(d, _)| d.end_ns - d.start_ns).sum(),
        evidence,
        offenders: Vec::new(),
        range_ns: f.relative(start, end),
        action: action.into(),
    })
}

fn memory_bound(f: &Facts, samples: &Result<Vec<BusySamples>, String>) -> Outcome {
    bound(
        f,
        samples,
        MEMORY_BOUND,
        |sm, dram| dram > MEMORY_BOUND_DRAM_PERCENT && sm < MEMORY_BOUND_SM_BELOW_PERCENT,
        "the GPU streams memory: FP8 weights and KV cache, or tensor parallelism, would cut the bytes each GPU reads, but lumen \
         offers neither yet; a larger --max-batch-size reuses each weight read for more tokens",
    )
}

fn compute_bound(f: &Facts, samples: &Result<Vec<BusySamples>, String>) -> Outcome {
    bound(
        f,
        samples,
        COMPUTE_BOUND,
        |sm, dram| sm > COMPUTE_BOUND_SM_PERCENT && dram < COMPUTE_BOUND_DRAM_BELOW_PERCENT,
        "a good problem: the SMs are saturated; a faster GPU helps, or speculative decoding (not in lumen yet)",
    )
}

fn launch_overhead(f: &Facts) -> Outcome {
    let kernels: Vec<_> = f.trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Kernel).collect();
    if kernels.is_empty() {
        return Outcome::NotAvailable("the trace has no kernels".into());
    }
    let is_short = |op: &&&lumen_trace::model::GpuOpRow| op.end_ns.saturating_sub(op.start_ns) < SHORT_KERNEL_NS;
    let short_share = share(kernels.iter().filter(is_short).count() as f64, kernels.len() as f64);
    let eager_share = share(kernels.iter().filter(|k| k.graph_id.is_none()).count() as f64, kernels.len() as f64);
    let launch_gaps = idle_totals(f.a).ok();
    let shorter_than_launch = f.a.kernels.get().and_then(|k| k.shorter_than_launch.get()).map(|s| s.share);
    let launch_bound =
        launch_gaps.as_ref().is_some_and(|t| t.launch_gaps > 0) || shorter_than_launch.is_some_and(|s| s > SHORTER_THAN_LAUNCH_SHARE);
    if short_share <= SHORT_KERNEL_SHARE || eager_share <= EAGER_KERNEL_SHARE || !launch_bound {
        return Outcome::NotFound;
    }
    let mut evidence = vec![
        format!("{} of {} kernels run under {}", text::percent(short_share), kernels.len(), text::duration(SHORT_KERNEL_NS as f64)),
        format!("{} of kernels are launched eagerly (no CUDA graph)", text::percent(eager_share)),
    ];
    if let Some(t) = launch_gaps.as_ref().filter(|t| t.launch_gaps > 0) {
        evidence.push(format!("{} launch gaps, {} idle", t.launch_gaps, text::duration(t.launch_gap_ns as f64)));
    }
    if let Some(s) = shorter_than_launch {
        evidence.push(format!("{} of kernels are shorter than their launch call", text::percent(s)));
    }
    let mut short_eager: HashMap<&str, usize> = HashMap::new();
    for k in kernels.iter().filter(is_short).filter(|k| k.graph_id.is_none()) {
        *short_eager.entry(k.name.as_str()).or_default() += 1;
    }
    let mut offenders: Vec<(&str, usize)> = short_eager.into_iter().collect();
    offenders.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let largest_batch =
        f.a.iterations.get().and_then(|i| i.per_iteration.iter().map(|it| it.ctx_reqs + it.gen_reqs).max()).filter(|&n| n > 0);
    let batch = largest_batch.map_or("N (the largest decode batch you run)".to_string(), |n| n.to_string());
    let start = kernels.iter().map(|k| k.start_ns).min().unwrap_or(0);
    let end = kernels.iter().map(|k| k.end_ns).max().unwrap_or(0);
    // Graph-launch records mean graphs already run (their node kernels are not in a
    // graph-trace): what is left eager are the iterations graphs do not cover.
    let graph_launches = f.trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Graph).count();
    let action = if graph_launches > 0 {
        evidence.push(format!("{graph_launches} CUDA graph launches already replay the other iterations"));
        format!(
            "the eager kernels come from iterations no graph covers (prefill and mixed batches): capture more decode sizes \
             (--cuda-graph-batch-sizes, --cuda-graph-max-batch-size {batch}) and check which iterations run eagerly with \
             `lumen profile --cuda-graph-trace node`"
        )
    } else {
        format!("replay decode from CUDA graphs: --cuda-graphs on --cuda-graph-padding on --cuda-graph-max-batch-size {batch}")
    };
    Outcome::Fires(Finding {
        pattern: LAUNCH_OVERHEAD,
        explained_ns: launch_gaps.map_or(0, |t| t.launch_gap_ns),
        evidence,
        offenders: offenders.into_iter().take(TOP_OFFENDERS).map(|(name, n)| format!("{} ×{n}", text::truncate(name, 60))).collect(),
        range_ns: f.relative(start, end),
        action,
    })
}

fn sync_gaps(f: &Facts) -> Outcome {
    let totals = match idle_totals(f.a) {
        Ok(totals) => totals,
        Err(why) => return Outcome::NotAvailable(why),
    };
    let sync_share = share(totals.sync_wait_ns as f64, totals.idle_ns as f64);
    if sync_share <= SYNC_WAIT_SHARE {
        return Outcome::NotFound;
    }
    let mut by_call: HashMap<&str, (usize, u64)> = HashMap::new();
    for call in f.trace.api_calls.iter().filter(|c| c.name.contains("Synchronize")) {
        let total = by_call.entry(call.name.as_str()).or_default();
        total.0 += 1;
        total.1 += call.end_ns.saturating_sub(call.start_ns);
    }
    let mut calls: Vec<_> = by_call.into_iter().collect();
    calls.sort_unstable_by(|a, b| b.1 .1.cmp(&a.1 .1).then(a.0.cmp(b.0)));
    let offenders = if calls.is_empty() {
        vec!["no synchronising API call in the trace: read the sync-wait gaps under \"GPU idle gaps\"".into()]
    } else {
        calls.iter().take(TOP_OFFENDERS).map(|(name, (n, ns))| format!("{name}: {n} calls, {}", text::duration(*ns as f64))).collect()
    };
    Outcome::Fires(Finding {
        pattern: SYNC_GAPS,
        explained_ns: totals.sync_wait_ns,
        evidence: vec![format!(
            "sync waits {} = {} of {} idle",
            text::duration(totals.sync_wait_ns as f64),
            text::percent(sync_share),
            text::duration(totals.idle_ns as f64)
        )],
        offenders,
        range_ns: None,
        action: "the host stops until the GPU drains: remove the synchronising calls named, or move them off the step's critical path"
            .into(),
    })
}

fn pageable_memcpy(f: &Facts) -> Outcome {
    let copies = match &f.a.memory.pageable_async {
        Measured::Available(copies) => copies,
        Measured::NotAvailable(why) => return Outcome::NotAvailable(why.clone()),
    };
    if copies.count == 0 {
        return Outcome::NotFound;
    }
    Outcome::Fires(Finding {
        pattern: PAGEABLE_MEMCPY,
        explained_ns: copies.total_ns,
        evidence: vec![format!(
            "{} async copies from or to pageable memory, {}, {}",
            copies.count,
            text::bytes(copies.bytes),
            text::duration(copies.total_ns as f64)
        )],
        offenders: Vec::new(),
        range_ns: None,
        action: "pin the host buffers these copies use (cudaHostAlloc / cudaHostRegister) so they run asynchronously".into(),
    })
}

fn allocation_churn(f: &Facts) -> Outcome {
    let iterations = f.a.iterations.get().map(|i| i.per_iteration.len()).filter(|&n| n > 0);
    let cuda = match (&f.a.memory.api_allocations, iterations) {
        (Measured::Available(calls), Some(n)) => {
            Ok(((calls.allocs.count + calls.frees.count) as f64 / n as f64, calls.allocs.total_ns + calls.frees.total_ns))
        }
        (Measured::Available(_), None) => Err("the trace has no iterations to count CUDA allocations per".to_string()),
        (Measured::NotAvailable(why), _) => Err(why.clone()),
    };
    let host = match &f.a.memory.host_allocations {
        Measured::Available(h) if h.iterations > 0 => Ok(h.count as f64 / h.iterations as f64),
        Measured::Available(_) => Err("the allocation rows cover no iteration".into()),
        Measured::NotAvailable(why) => Err(why.clone()),
    };
    if let (Err(cuda_why), Err(host_why)) = (&cuda, &host) {
        return Outcome::NotAvailable(format!("{cuda_why}; {host_why}"));
    }
    let mut evidence = Vec::new();
    let mut explained_ns = 0;
    if let Some((per_iteration, ns)) = cuda.as_ref().ok().copied().filter(|(per, _)| *per > ALLOC_CALLS_PER_ITERATION) {
        evidence.push(format!("{per_iteration:.1} CUDA alloc/free calls per iteration, {} in them", text::duration(ns as f64)));
        explained_ns += ns;
    }
    if let Some(per_iteration) = host.as_ref().ok().copied().filter(|&per| per > HOST_ALLOCS_PER_ITERATION) {
        evidence.push(format!("{per_iteration:.0} host allocations per iteration"));
    }
    if evidence.is_empty() {
        return Outcome::NotFound;
    }
    Outcome::Fires(Finding {
        pattern: ALLOCATION_CHURN,
        explained_ns,
        evidence,
        offenders: Vec::new(),
        range_ns: None,
        action: "reuse buffers across iterations (a pool or caching allocator); LUMEN_PROFILE_RECORD_ALLOC=1 records where they happen"
            .into(),
    })
}

pub fn render(d: &Diagnosis, out: &mut String) {
    text::heading(out, "Diagnosis");
    if d.findings.is_empty() {
        let _ = writeln!(out, "  no pattern found");
    }
    for finding in &d.findings {
        let explains =
            if finding.explained_ns > 0 { format!(" (explains {})", text::duration(finding.explained_ns as f64)) } else { String::new() };
        let _ = writeln!(out, "  * {}{explains}", finding.pattern);
        for e in &finding.evidence {
            text::wrapped(out, "      ", 8, e);
        }
        if let Some((start, end)) = finding.range_ns {
            let _ = writeln!(out, "      during +{} .. +{}", text::duration(start as f64), text::duration(end as f64));
        }
        for o in &finding.offenders {
            text::wrapped(out, "      - ", 8, o);
        }
        text::wrapped(out, "      action: ", 8, &finding.action);
    }
    if !d.not_found.is_empty() {
        text::wrapped(out, "  checked, not found: ", 4, &d.not_found.join(", "));
    }
    for u in &d.not_available {
        text::wrapped(out, &format!("  {}: not available: ", u.pattern), 4, &u.reason);
    }
}

/// The thresholds and the patterns as two aligned tables.
pub fn render_explain() -> String {
    let mut out = String::new();
    text::heading(&mut out, "Diagnosis thresholds");
    let mut thresholds = Table::new(&["threshold", "value", "unit", "meaning"], &[0, 2, 3]);
    for t in THRESHOLDS {
        thresholds.row(vec![t.name.into(), t.value.to_string(), t.unit.into(), t.meaning.into()]);
    }
    thresholds.render(&mut out);
    text::heading(&mut out, "Diagnosis patterns");
    for p in PATTERNS {
        let _ = writeln!(out, "  * {}", p.name);
        text::wrapped(&mut out, "      fires when: ", 8, p.fires_when);
        text::wrapped(&mut out, "      action: ", 8, p.action);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rows::{api, iteration, kernel, op, span};
    use crate::{analyze, Options};
    use lumen_trace::model::{CounterRow, GpuOpRow};

    fn diagnosis(trace: &TraceData) -> Diagnosis {
        analyze(trace, &Options::default()).unwrap().diagnosis
    }

    fn finding<'a>(d: &'a Diagnosis, pattern: &str) -> Option<&'a Finding> {
        d.findings.iter().find(|f| f.pattern == pattern)
    }

    fn unavailable<'a>(d: &'a Diagnosis, pattern: &str) -> Option<&'a str> {
        d.not_available.iter().find(|u| u.pattern == pattern).map(|u| u.reason.as_str())
    }

    #[test]
    fn low_utilisation_fires_below_half_busy_and_not_above() {
        let low = diagnosis(&TraceData { gpu_ops: vec![kernel(0, 350, 1), kernel(900, 1_000, 2)], ..TraceData::default() });
        let f = finding(&low, LOW_UTILISATION).expect("45% busy is low");
        assert_eq!(f.evidence[0], "device 0 busy 45.0% of 1.0 µs");
        assert_eq!(f.explained_ns, 550);
        assert_eq!(f.range_ns, Some((0, 1_000)));
        assert!(f.action.contains("--max-batch-size") && f.action.contains("--max-num-tokens") && f.action.contains("--concurrency"));

        let busy = diagnosis(&TraceData { gpu_ops: vec![kernel(0, 450, 1), kernel(900, 1_000, 2)], ..TraceData::default() });
        assert!(finding(&busy, LOW_UTILISATION).is_none());
        assert!(busy.not_found.contains(&LOW_UTILISATION));
    }

    #[test]
    fn without_counters_the_bound_patterns_are_not_available_and_utilisation_says_it_is_time_only() {
        let d = diagnosis(&TraceData { gpu_ops: vec![kernel(0, 100, 1), kernel(900, 1_000, 2)], ..TraceData::default() });
        for pattern in [MEMORY_BOUND, COMPUTE_BOUND] {
            assert_eq!(unavailable(&d, pattern), Some("no SM/DRAM samples; time utilisation only"));
        }
        let low = finding(&d, LOW_UTILISATION).unwrap();
        assert!(low.evidence.iter().any(|e| e.contains("time utilisation only")), "{:?}", low.evidence);
        let mut out = String::new();
        render(&d, &mut out);
        assert!(out.starts_with("== Diagnosis ==") && out.contains("memory-bandwidth bound: not available: no SM/DRAM samples"), "{out}");
        assert!(out.contains("checked, not found: "), "{out}");
    }

    #[test]
    fn a_host_wait_gap_with_a_cpu_phase_in_it_is_a_cpu_bottleneck() {
        let trace = TraceData {
            gpu_ops: vec![kernel(0, 1_000, 1), kernel(1_001_000, 1_002_000, 2)],
            spans: vec![span(2_000, 900_000, 1, "schedule", "phase"), span(900_000, 1_000_500, 1, "forward", "phase")],
            ..TraceData::default()
        };
        let d = diagnosis(&trace);
        let f = finding(&d, CPU_BOTTLENECK).expect("a 1 ms host wait in a 1.002 ms window");
        assert_eq!(f.explained_ns, 1_000_000);
        assert!(f.evidence[0].starts_with("host waits 1.000 ms = 100.0% of 1.000 ms idle"), "{:?}", f.evidence);
        assert!(f.evidence[1].contains("phase `schedule`"), "{:?}", f.evidence);
        assert!(f.offenders[0].starts_with("device 0 idle 1.000 ms at +1.0 µs: schedule 898.0 µs"), "{:?}", f.offenders);
        assert!(f.action.contains("phase `schedule`") && f.action.contains("LUMEN_PROFILE_RECORD_WAITS=1"));
        assert_eq!(f.range_ns, Some((1_000, 1_001_000)));
    }

    /// Ten 2 µs kernels, each launched 1 µs before the previous one ends, with 5 µs between them.
    #[test]
    fn the_cpu_bottleneck_names_the_phase_the_gpu_waits_in_not_the_longest_one() {
        let trace = TraceData {
            gpu_ops: vec![kernel(0, 1_000, 1), kernel(500_000, 1_400_000, 2)],
            spans: vec![span(0, 500_000, 1, "forward", "phase"), span(500_000, 1_500_000, 1, "sample", "phase")],
            ..TraceData::default()
        };
        let f = finding(&diagnosis(&trace), CPU_BOTTLENECK).cloned().expect("a 499 µs host wait in a 1.4 ms window");
        assert!(f.evidence[1].contains("phase `sample` takes the most host time"), "{:?}", f.evidence);
        assert!(f.evidence[2].contains("host was in phase `forward` for 499.0 µs"), "{:?}", f.evidence);
        assert!(f.action.contains("shorten phase `forward`"), "{}", f.action);
    }

    fn eager_short_kernels(graph_id: Option<u64>) -> TraceData {
        let base = 10_000;
        let kernels = (0..10).map(|i| GpuOpRow { graph_id, ..kernel(base + i * 7_000, base + i * 7_000 + 2_000, i) });
        TraceData {
            gpu_ops: kernels.collect(),
            api_calls: (0..10).map(|i| api("cuLaunchKernel", base + i * 7_000 - 6_000, base + i * 7_000 - 5_000, i)).collect(),
            iterations: vec![iteration(0, 0, 80_000, 0.08)],
            ..TraceData::default()
        }
    }

    #[test]
    fn eager_short_kernels_with_launch_gaps_are_launch_overhead_and_graphs_are_not() {
        let d = diagnosis(&eager_short_kernels(None));
        let f = finding(&d, LAUNCH_OVERHEAD).expect("short eager kernels with launch gaps");
        assert!(f.evidence.contains(&"100.0% of 10 kernels run under 10.0 µs".to_string()), "{:?}", f.evidence);
        assert!(f.evidence.contains(&"9 launch gaps, 45.0 µs idle".to_string()), "{:?}", f.evidence);
        assert_eq!(f.explained_ns, 45_000);
        assert_eq!(f.offenders, ["kernel ×10"]);
        assert!(f.action.ends_with("--cuda-graphs on --cuda-graph-padding on --cuda-graph-max-batch-size 2"), "{}", f.action);

        let graphs = diagnosis(&eager_short_kernels(Some(1)));
        assert!(finding(&graphs, LAUNCH_OVERHEAD).is_none());
        assert!(graphs.not_found.contains(&LAUNCH_OVERHEAD));

        // A graph-trace run: graphs replay some iterations, the eager kernels are the rest.
        let mut partly = eager_short_kernels(None);
        partly.gpu_ops.push(GpuOpRow { kind: GpuOpKind::Graph, ..kernel(90_000, 95_000, 99) });
        let d = diagnosis(&partly);
        let f = finding(&d, LAUNCH_OVERHEAD).expect("eager kernels beside graph launches");
        assert!(f.evidence.contains(&"1 CUDA graph launches already replay the other iterations".to_string()), "{:?}", f.evidence);
        assert!(f.action.contains("no graph covers") && f.action.contains("--cuda-graph-batch-sizes"), "{}", f.action);
    }

    fn samples(rows: &[(u64, &str, f64)]) -> TraceData {
        let counters = rows.iter().map(|&(ts_ns, name, value)| CounterRow { ts_ns, name: name.into(), device: Some(0), value }).collect();
        TraceData { counters, gpu_ops: vec![kernel(0, 1_000, 1)], ..TraceData::default() }
    }

    #[test]
    fn busy_samples_with_full_dram_and_half_sm_are_memory_bound() {
        let trace = samples(&[
            (100, "sm active %", 50.0),
            (100, "dram read %", 60.0),
            (100, "dram write %", 35.0),
            (200, "sm active %", 60.0),
            (200, "dram read %", 60.0),
            (200, "dram write %", 33.0),
            // Idle: left out of the means, or DRAM would fall under the threshold.
            (300, "sm active %", 1.0),
            (300, "dram read %", 0.0),
            (300, "dram write %", 0.0),
        ]);
        let d = diagnosis(&trace);
        let f = finding(&d, MEMORY_BOUND).expect("DRAM 94% with SM 55%");
        assert!(f.evidence[0].starts_with("device 0: DRAM 94.0% of peak, SM active 55.0% (mean of 2 samples"), "{:?}", f.evidence);
        assert!(f.action.contains("FP8") && f.action.contains("lumen offers neither yet"));
        assert!(d.not_found.contains(&COMPUTE_BOUND));
        assert!(!d.findings.iter().any(|f| f.evidence.iter().any(|e| e.contains("time utilisation only"))));
    }

    #[test]
    fn busy_samples_with_full_sm_and_little_dram_are_compute_bound() {
        let trace = samples(&[
            (100, "sm active %", 95.0),
            (100, "dram bandwidth %", 30.0),
            (100, "tensor active %", 80.0),
            (200, "sm active %", 97.0),
            (200, "dram bandwidth %", 40.0),
            (200, "tensor active %", 70.0),
        ]);
        let d = diagnosis(&trace);
        let f = finding(&d, COMPUTE_BOUND).expect("SM 96% with DRAM 35%");
        assert_eq!(
            f.evidence[0],
            "device 0: DRAM 35.0% of peak, SM active 96.0%, tensor active 75.0% (mean of 2 samples with SM active > 5%)"
        );
        assert_eq!(f.range_ns, Some((100, 200)));
        assert!(d.not_found.contains(&MEMORY_BOUND));
    }

    #[test]
    fn async_copies_from_pageable_memory_are_found() {
        let copy = |pinned| TraceData {
            gpu_ops: vec![GpuOpRow { pinned: Some(pinned), bytes: Some(4_096), ..op(GpuOpKind::Memcpy, 0, 500, 1) }],
            api_calls: vec![api("cudaMemcpyAsync", 0, 10, 1)],
            ..TraceData::default()
        };
        let d = diagnosis(&copy(false));
        let f = finding(&d, PAGEABLE_MEMCPY).expect("a pageable async copy");
        assert_eq!(f.evidence, ["1 async copies from or to pageable memory, 4.00 KiB, 500 ns"]);
        assert!(f.action.contains("pin"));
        assert!(diagnosis(&copy(true)).not_found.contains(&PAGEABLE_MEMCPY));
    }

    #[test]
    fn every_threshold_and_pattern_is_explained() {
        let explained = render_explain();
        for t in THRESHOLDS {
            assert!(explained.contains(t.name) && explained.contains(&t.value.to_string()), "{} missing:\n{explained}", t.name);
        }
        for p in PATTERNS {
            assert!(explained.contains(p.name), "{} missing:\n{explained}", p.name);
        }
        assert!(explained.contains("needs the MoE perfect-router comparison (not built)"));
    }
}
