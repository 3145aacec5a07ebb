//! The diagnosis: which known performance patterns the measured figures show, each with the
//! numbers behind it, the time it explains and what to change in lumen's own flags. It reasons as
//! an expert reads Nsight Systems beside the engine's numbers:
//! - headroom first: a batch at its cap with an idle KV cache, a full token budget with requests
//!   waiting, a KV cache that makes them wait, a client that keeps too few in flight; these rank
//!   by expected gain, above everything else;
//! - speed of light: the bound is the unit nearest its ceiling (crate::sol), never SM active;
//! - idle that adds up: sync wait is time inside synchronising calls, idle after them is the
//!   host's, and no finding claims more time than its evidence holds;
//! - steady state: the steps are judged, one-off stalls are outliers (crate::steps).
//!
//! Every threshold is a named constant listed in [`THRESHOLDS`]; [`PATTERNS`] says when each fires.

use std::collections::HashMap;
use std::fmt::Write;

use lumen_trace::correlate::is_graph_launch;
use lumen_trace::model::{GpuOpKind, TraceData};
use serde::Serialize;

use crate::gpu::GapClass;
use crate::headroom::{command_with, Headroom};
use crate::measured::Measured;
use crate::sol::{Bound, ClassWork, UnitUse, ATTENTION_WORK, SOL_BOUND_PERCENT};
use crate::stats::share;
use crate::steps::StepWindows;
use crate::text::{self, Table};
use crate::{Analysis, LaunchIndex};

/// A device busy less than this share of its steady window is under-used.
pub const LOW_BUSY: f64 = 0.50;
/// Host waits above this share of the idle time make the CPU the bottleneck...
pub const HOST_WAIT_DOMINATES: f64 = 0.5;
/// The idle-time patterns (CPU bottleneck, synchronisation gaps, launch overhead) need the
/// devices idle more than this share of their steady window.
pub const MIN_IDLE_SHARE: f64 = 0.10;
/// A batch at its cap in at least this share of iterations is capped...
pub const BATCH_CAP_SHARE: f64 = 0.5;
/// ...when the KV cache stays below this use.
pub const KV_LOW: f64 = 0.5;
/// The token budget full in at least this share of iterations, with requests waiting, caps prefill.
pub const TOKEN_BUDGET_SHARE: f64 = 0.2;
/// Requests waiting in at least this share of iterations is a queue.
pub const QUEUED_SHARE: f64 = 0.2;
/// KV cache use above this with a queue: requests wait for KV blocks.
pub const KV_FULL: f64 = 0.9;
/// A median batch below this share of the cap with nothing waiting: the client caps the batch.
pub const CONCURRENCY_BATCH_SHARE: f64 = 0.5;
/// GEMM kernels memory bound with the tensor pipe below this % are a small batch...
pub const SMALL_BATCH_TENSOR_PERCENT: f64 = 10.0;
/// ...when they hold at least this share of the busy samples (or kernel time).
pub const SMALL_BATCH_GEMM_SHARE: f64 = 0.3;
/// Operators' recorded work judges the bound only when its kernels cover this share of the
/// kernel time.
pub const OP_WORK_COVERAGE: f64 = 0.5;
/// A kernel shorter than this is short.
pub const SHORT_KERNEL_NS: u64 = 10_000;
/// Short kernels above this share of all kernels suggest launch overhead.
pub const SHORT_KERNEL_SHARE: f64 = 0.5;
/// Kernels shorter than their own launch call above this share show launch overhead.
pub const SHORTER_THAN_LAUNCH_SHARE: f64 = 0.5;
/// A memory-bound run whose weights take at least this long to read once per step (at the
/// GPU's peak) is a large model, for which the memory-bound action adds tensor parallelism. It
/// shapes an action, not a finding, so it is not in [`THRESHOLDS`].
pub const TP_WEIGHT_FLOOR_MS: f64 = 1.0;
/// Eager kernels (no graph id) above this share are "most kernels".
pub const EAGER_KERNEL_SHARE: f64 = 0.5;
/// Sync waits above this share of the idle time are synchronisation gaps.
pub const SYNC_WAIT_SHARE: f64 = 0.3;
/// CUDA alloc and free calls per step above this are churn.
pub const ALLOC_CALLS_PER_STEP: f64 = 1.0;
/// Without steps, CUDA alloc and free calls per second above this are churn.
pub const ALLOC_CALLS_PER_SECOND: f64 = 100.0;
/// Host allocations per iteration above this are churn.
pub const HOST_ALLOCS_PER_ITERATION: f64 = 1000.0;
/// Every device busy at least this share of its steady steps: the host paced none of them, so
/// its allocations cost no throughput in this run. It shapes evidence, not a finding, so it is
/// not in [`THRESHOLDS`].
pub const HOST_PACES_NOTHING_BUSY: f64 = 0.95;
/// A mixture-of-experts run whose busiest expert takes at least this many times the load a
/// balanced spread would give it (⌈assignments / experts⌉)
/// (weighted over layers and iterations) is imbalanced.
pub const MOE_IMBALANCE_MAX_OVER_BALANCED: f64 = 1.5;
/// Iterations whose devices spend at least this share of the wall time in collectives no other
/// kernel overlaps (the median iteration) are communication bound.
pub const COMM_EXPOSED_SHARE: f64 = 0.25;
/// Attention or the products holding at least this share of the kernel time in the steady
/// iterations...
pub const SLOW_CLASS_SHARE: f64 = 0.10;
/// ...and running their own work (the engine's FLOPs and bytes for that class) below this % of
/// its nearest ceiling are far from their speed of light.
pub const SLOW_CLASS_PERCENT: f64 = 30.0;

/// How many offenders (kernels, gaps, calls) a finding names.
const TOP_OFFENDERS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Threshold {
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
    pub meaning: &'static str,
}

macro_rules! threshold {
    ($name:ident, $unit:expr, $meaning:expr) => {
        Threshold { name: stringify!($name), value: $name as f64, unit: $unit, meaning: $meaning }
    };
}

pub const THRESHOLDS: &[Threshold] = &[
    threshold!(LOW_BUSY, "share", "device busy share of the steady window below it is low utilisation"),
    threshold!(HOST_WAIT_DOMINATES, "share of idle", "host waits above it make the CPU the bottleneck"),
    threshold!(MIN_IDLE_SHARE, "share of window", "the idle-time patterns need more than this much steady idle time"),
    threshold!(SOL_BOUND_PERCENT, "% of peak", "the unit nearest its ceiling bounds the work at or above it; below, latency bound"),
    threshold!(BATCH_CAP_SHARE, "share of iterations", "a batch at --max-batch-size this often is capped"),
    threshold!(KV_LOW, "share of KV cache", "a capped batch with KV use below it has room to grow"),
    threshold!(TOKEN_BUDGET_SHARE, "share of iterations", "a full token budget this often, with a queue, caps prefill"),
    threshold!(QUEUED_SHARE, "share of iterations", "requests waiting this often are a queue"),
    threshold!(KV_FULL, "share of KV cache", "a queue with KV use above it waits for KV blocks"),
    threshold!(
        CONCURRENCY_BATCH_SHARE,
        "share of cap",
        "a median batch below it with no queue: the client keeps too few requests in flight"
    ),
    threshold!(SMALL_BATCH_TENSOR_PERCENT, "% of peak", "memory-bound GEMMs with the tensor pipe below it run a small batch"),
    threshold!(SMALL_BATCH_GEMM_SHARE, "share of busy samples", "small-batch GEMMs need at least this share of the samples"),
    threshold!(OP_WORK_COVERAGE, "share of kernel time", "operators' recorded work judges the bound when it covers this much"),
    threshold!(SHORT_KERNEL_NS, "ns", "a kernel shorter than it is short"),
    threshold!(SHORT_KERNEL_SHARE, "share of kernels", "short kernels above it suggest launch overhead"),
    threshold!(SHORTER_THAN_LAUNCH_SHARE, "share of kernels", "kernels shorter than their launch above it show launch overhead"),
    threshold!(EAGER_KERNEL_SHARE, "share of kernels", "eager kernels above it are most kernels"),
    threshold!(SYNC_WAIT_SHARE, "share of idle", "time inside synchronising calls above it is synchronisation gaps"),
    threshold!(ALLOC_CALLS_PER_STEP, "calls", "CUDA alloc/free calls per steady step above it are churn"),
    threshold!(ALLOC_CALLS_PER_SECOND, "calls/s", "without steps, CUDA alloc/free calls per second above it are churn"),
    threshold!(HOST_ALLOCS_PER_ITERATION, "allocations", "host allocations per iteration above it are churn"),
    threshold!(
        MOE_IMBALANCE_MAX_OVER_BALANCED,
        "× balanced load",
        "the busiest expert at or above it over a balanced spread's busiest is MoE imbalance"
    ),
    threshold!(
        COMM_EXPOSED_SHARE,
        "share of iteration",
        "exposed collective time at or above it in the median iteration is communication bound"
    ),
    threshold!(SLOW_CLASS_SHARE, "share of kernel time", "attention or the products need this much kernel time to be a lever"),
    threshold!(SLOW_CLASS_PERCENT, "% of peak", "attention or the products below it on their own work are far from their ceiling"),
];

pub const BATCH_SIZE: &str = "batch size too small";
pub const TOKEN_BUDGET: &str = "token budget caps prefill";
pub const KV_CACHE_FULL: &str = "requests wait for KV cache";
pub const CONCURRENCY: &str = "too few requests in flight";
pub const LOW_UTILISATION: &str = "low GPU utilisation";
pub const CPU_BOTTLENECK: &str = "CPU bottleneck";
pub const MEMORY_BOUND: &str = "memory-bandwidth bound";
pub const COMPUTE_BOUND: &str = "compute bound";
pub const SMALL_BATCH: &str = "small batch: memory-bound GEMMs";
pub const LAUNCH_OVERHEAD: &str = "kernel-launch overhead";
pub const SYNC_GAPS: &str = "synchronisation gaps";
pub const PAGEABLE_MEMCPY: &str = "pageable memcpy";
pub const ALLOCATION_CHURN: &str = "allocation churn";
pub const MOE_IMBALANCE: &str = "MoE imbalance";
pub const COMMUNICATION_BOUND: &str = "communication bound";
pub const SLOW_CLASS: &str = "kernel class far from its ceiling";

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pattern {
    pub name: &'static str,
    pub kind: Kind,
    pub fires_when: &'static str,
    pub action: &'static str,
}

/// What a pattern reads; findings rank headroom first, then by the time they explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The engine's limits left throughput on the table.
    Headroom,
    /// How near the work runs to the GPU's ceilings.
    SpeedOfLight,
    /// Where the GPU's idle time goes, and other costs.
    Idle,
}

pub const PATTERNS: &[Pattern] = &[
    Pattern {
        name: BATCH_SIZE,
        kind: Kind::Headroom,
        fires_when: "the batch is at --max-batch-size in >= BATCH_CAP_SHARE of steady iterations and the KV cache peaks < KV_LOW",
        action: "raise --max-batch-size to the value the KV cache holds (and --max-num-tokens with it): the exact command is given",
    },
    Pattern {
        name: TOKEN_BUDGET,
        kind: Kind::Headroom,
        fires_when: "the iteration's tokens fill --max-num-tokens in >= TOKEN_BUDGET_SHARE of iterations while requests wait in >= QUEUED_SHARE",
        action: "raise --max-num-tokens",
    },
    Pattern {
        name: KV_CACHE_FULL,
        kind: Kind::Headroom,
        fires_when: "requests wait in >= QUEUED_SHARE of iterations, the batch is below its cap and the KV cache peaks > KV_FULL",
        action: "give the KV cache more memory (--kv-cache-free-gpu-mem-fraction, --kv-cache-gib), shorter contexts, or an FP8 KV cache (--kv-cache-dtype fp8)",
    },
    Pattern {
        name: CONCURRENCY,
        kind: Kind::Headroom,
        fires_when: "the median batch < CONCURRENCY_BATCH_SHARE of the cap, nothing waits and the KV cache peaks < KV_LOW",
        action: "keep more requests in flight (bench throughput --concurrency, or more clients)",
    },
    Pattern {
        name: MEMORY_BOUND,
        kind: Kind::SpeedOfLight,
        fires_when: "DRAM (read + write) is the unit nearest its ceiling at >= SOL_BOUND_PERCENT of peak: busy counter samples or the engine's bytes per iteration",
        action: "cut the bytes: a larger batch reuses each weight read; FP8 weights and KV cache (--quantization fp8 --kv-cache-dtype fp8); for a large model, tensor parallelism (--tp N) with the floor it brings",
    },
    Pattern {
        name: COMPUTE_BOUND,
        kind: Kind::SpeedOfLight,
        fires_when: "the tensor pipe is the unit nearest its ceiling at >= SOL_BOUND_PERCENT of peak",
        action: "a good problem: FP8 tensor cores (--quantization fp8), a faster GPU, or speculative decoding (not in lumen yet)",
    },
    Pattern {
        name: SMALL_BATCH,
        kind: Kind::SpeedOfLight,
        fires_when: "GEMM kernels hold >= SMALL_BATCH_GEMM_SHARE of busy samples, memory bound with the tensor pipe < SMALL_BATCH_TENSOR_PERCENT",
        action: "batch more rows per GEMM: each weight read then serves more tokens",
    },
    Pattern {
        name: SLOW_CLASS,
        kind: Kind::SpeedOfLight,
        fires_when: "attention, or the products (GEMM and MoE kernels), hold >= SLOW_CLASS_SHARE of the kernel time in the steady iterations and run the engine's FLOPs and bytes for them below SLOW_CLASS_PERCENT of their nearest ceiling; the one with the most time above its speed of light is named",
        action: "a faster kernel for that class: attention's products nearer the tensor peak (warp-group wgmma on Hopper, longer query tiles, fewer KV splits at small batches) or an FP8 KV cache; products that stream weights at a small batch gain from a larger one",
    },
    Pattern {
        name: LOW_UTILISATION,
        kind: Kind::Idle,
        fires_when: "a device is busy < LOW_BUSY of its steady window",
        action: "raise --max-batch-size / --max-num-tokens, or more requests in flight (bench throughput --concurrency)",
    },
    Pattern {
        name: CPU_BOTTLENECK,
        kind: Kind::Idle,
        fires_when: "host waits > HOST_WAIT_DOMINATES of steady idle and idle > MIN_IDLE_SHARE of the window",
        action: "cut the named CPU phase; LUMEN_PROFILE_RECORD_WAITS=1 / LUMEN_PROFILE_RECORD_ALLOC=1; --cuda-graphs on",
    },
    Pattern {
        name: LAUNCH_OVERHEAD,
        kind: Kind::Idle,
        fires_when: "kernels < SHORT_KERNEL_NS > SHORT_KERNEL_SHARE, launch gaps or shorter-than-launch > SHORTER_THAN_LAUNCH_SHARE, eager (not launched by a graph) > EAGER_KERNEL_SHARE, idle > MIN_IDLE_SHARE",
        action: "--cuda-graphs on --cuda-graph-padding on --cuda-graph-max-batch-size N",
    },
    Pattern {
        name: SYNC_GAPS,
        kind: Kind::Idle,
        fires_when: "idle inside synchronising calls (and the relaunch right after) > SYNC_WAIT_SHARE of steady idle, idle > MIN_IDLE_SHARE",
        action: "remove or defer the synchronising calls named",
    },
    Pattern { name: PAGEABLE_MEMCPY, kind: Kind::Idle, fires_when: "any async copy from or to pageable host memory", action: "pin the host buffers" },
    Pattern {
        name: ALLOCATION_CHURN,
        kind: Kind::Idle,
        fires_when: "CUDA alloc/free calls > ALLOC_CALLS_PER_STEP per steady step (> ALLOC_CALLS_PER_SECOND per second without steps), or host allocations > HOST_ALLOCS_PER_ITERATION",
        action: "reuse buffers across iterations (a pool)",
    },
    Pattern {
        name: COMMUNICATION_BOUND,
        kind: Kind::Idle,
        fires_when: "the median iteration's devices spend >= COMM_EXPOSED_SHARE of its wall time in collective kernels no other kernel on the device overlaps",
        action: "fewer ranks for the model's size (--tp), overlap communication with compute, or find the straggler rank the others wait for",
    },
    Pattern {
        name: MOE_IMBALANCE,
        kind: Kind::Idle,
        fires_when: "with the model's router, the busiest expert's load over a balanced spread's busiest, ⌈assignments / experts⌉ (weighted over MoE layers and iterations) >= MOE_IMBALANCE_MAX_OVER_BALANCED; `--compare` with a perfect-router run reads it: faster by > PERFECT_ROUTER_GAIN is the router",
        action: "run again with LUMEN_PERFECT_ROUTER=1 and compare (`lumen analyze this.lumen --compare perfect.lumen`): > 10% faster, the router causes the imbalance (optimize routing or try alternative strategies); within noise, routing is not the bottleneck",
    },
];

/// A pattern the trace shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub pattern: &'static str,
    pub kind: Kind,
    /// The time the pattern accounts for (idle, waiting or busy time).
    pub explained_ns: u64,
    /// For headroom: the expected throughput over today's, as a factor.
    pub expected_gain: Option<f64>,
    pub evidence: Vec<String>,
    /// The kernels, gaps or calls that contribute most.
    pub offenders: Vec<String>,
    /// Where it applies, in ns from the trace's start.
    pub range_ns: Option<(u64, u64)>,
    pub action: String,
}

impl Finding {
    fn new(pattern: &'static str, explained_ns: u64, evidence: Vec<String>, action: String) -> Self {
        let kind = PATTERNS.iter().find(|p| p.name == pattern).map_or(Kind::Idle, |p| p.kind);
        Finding { pattern, kind, explained_ns, expected_gain: None, evidence, offenders: Vec::new(), range_ns: None, action }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unavailable {
    pub pattern: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Diagnosis {
    /// The patterns found: headroom first by expected gain, then the rest by explained time.
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

/// What the rules read: the measured figures, the raw rows they summarise, the steps, and the
/// trace's start.
struct Facts<'a> {
    trace: &'a TraceData,
    a: &'a Analysis,
    steps: &'a StepWindows,
    launches: &'a LaunchIndex<'a>,
    origin_ns: u64,
}

impl Facts<'_> {
    fn relative(&self, start_ns: u64, end_ns: u64) -> Option<(u64, u64)> {
        Some((start_ns.saturating_sub(self.origin_ns), end_ns.saturating_sub(self.origin_ns)))
    }
}

pub(crate) fn diagnose(trace: &TraceData, a: &Analysis, steps: &StepWindows, launches: &LaunchIndex) -> Diagnosis {
    let facts = Facts { trace, a, steps, launches, origin_ns: a.overview.span.get().map_or(0, |s| s.start_ns) };
    let headroom = a.headroom.get();
    let checks: Vec<(&'static str, Outcome)> = vec![
        (BATCH_SIZE, batch_size(&facts, &a.headroom)),
        (TOKEN_BUDGET, headroom.map_or_else(|| Outcome::NotAvailable(no_headroom(a)), |h| token_budget(&facts, h))),
        (KV_CACHE_FULL, headroom.map_or_else(|| Outcome::NotAvailable(no_headroom(a)), kv_cache_full)),
        (CONCURRENCY, headroom.map_or_else(|| Outcome::NotAvailable(no_headroom(a)), |h| concurrency(&facts, h))),
        (MEMORY_BOUND, bound(&facts, Bound::Memory)),
        (COMPUTE_BOUND, bound(&facts, Bound::Compute)),
        (SMALL_BATCH, small_batch(&facts)),
        (SLOW_CLASS, slow_class(&facts)),
        (LOW_UTILISATION, low_utilisation(&facts)),
        (CPU_BOTTLENECK, cpu_bottleneck(&facts)),
        (LAUNCH_OVERHEAD, launch_overhead(&facts)),
        (SYNC_GAPS, sync_gaps(&facts)),
        (PAGEABLE_MEMCPY, pageable_memcpy(&facts)),
        (ALLOCATION_CHURN, allocation_churn(&facts)),
        (MOE_IMBALANCE, moe_imbalance(&facts)),
        (COMMUNICATION_BOUND, communication_bound(&facts)),
    ];
    let mut diagnosis = Diagnosis::default();
    for (pattern, outcome) in checks {
        match outcome {
            Outcome::Fires(finding) => diagnosis.findings.push(finding),
            Outcome::NotFound => diagnosis.not_found.push(pattern),
            Outcome::NotAvailable(reason) => diagnosis.not_available.push(Unavailable { pattern, reason }),
        }
    }
    diagnosis.findings.sort_by(|a, b| {
        (a.kind != Kind::Headroom)
            .cmp(&(b.kind != Kind::Headroom))
            .then(b.expected_gain.unwrap_or(0.0).total_cmp(&a.expected_gain.unwrap_or(0.0)))
            .then(b.explained_ns.cmp(&a.explained_ns))
    });
    diagnosis
}

fn communication_bound(f: &Facts) -> Outcome {
    let c = match &f.a.collectives {
        Measured::Available(c) => c,
        Measured::NotAvailable(why) => return Outcome::NotAvailable(why.clone()),
    };
    let i = match &c.iterations {
        Measured::Available(i) => i,
        Measured::NotAvailable(why) => return Outcome::NotAvailable(why.clone()),
    };
    if i.median_exposed_share < COMM_EXPOSED_SHARE {
        return Outcome::NotFound;
    }
    let mut evidence = vec![
        format!(
            "the median iteration spends {} of its wall time in exposed collectives (worst {}), over {} devices",
            text::percent(i.median_exposed_share),
            text::percent(i.max_exposed_share),
            c.devices.len()
        ),
        format!("collectives take {} in all, {} of it exposed", text::duration(c.total_ns as f64), text::duration(c.exposed_ns as f64)),
    ];
    if let Some((device, n)) = i.stragglers.first() {
        evidence.push(format!("device {device} has the most compute in {n} of {} iterations: the others wait for it", i.iterations));
    }
    let mut finding = Finding::new(
        COMMUNICATION_BOUND,
        c.exposed_ns,
        evidence,
        "cut the exposed communication: fewer ranks for this model's size (--tp), communication overlapped with compute, or the \
         straggler rank's extra work removed"
            .into(),
    );
    finding.offenders = c.operations.iter().take(TOP_OFFENDERS).map(|o| format!("{} ({} calls)", o.name, o.count)).collect();
    Outcome::Fires(finding)
}

fn moe_imbalance(f: &Facts) -> Outcome {
    let m = match &f.a.moe {
        Measured::Available(m) => m,
        Measured::NotAvailable(why) => return Outcome::NotAvailable(why.clone()),
    };
    if m.perfect_router || m.max_over_balanced < MOE_IMBALANCE_MAX_OVER_BALANCED {
        return Outcome::NotFound;
    }
    let mut evidence = vec![format!(
        "the busiest expert takes {:.3}× a balanced spread's busiest load over {} MoE layers and {} iterations: were the experts run side by side \
         (one worker each, as under expert parallelism), {} of their time would wait on it",
        m.max_over_balanced,
        m.layers.len(),
        m.iterations,
        text::percent(m.lost_share)
    )];
    for l in crate::moe::worst_layers(m, 3) {
        evidence.push(format!(
            "layer {}: {:.2}× (worst iteration {:.2}×); stragglers {}",
            l.layer,
            l.max_over_balanced,
            l.worst_max_over_balanced,
            crate::moe::stragglers(l)
        ));
    }
    let explained_ns = match m.lost_ns {
        Measured::Available((total, lost)) => {
            evidence.push(format!("MoE kernels: {} lost of {}", text::duration(lost as f64), text::duration(total as f64)));
            lost
        }
        Measured::NotAvailable(_) => 0,
    };
    let mut finding = Finding::new(
        MOE_IMBALANCE,
        explained_ns,
        evidence,
        format!(
            "measure what the imbalance costs: run the same command with LUMEN_PERFECT_ROUTER=1 and `lumen analyze this.lumen \
             --compare perfect.lumen`; faster by more than {} means the router causes load imbalance (optimize routing or try \
             alternative strategies), within noise means routing is not the bottleneck",
            text::percent(crate::compare::PERFECT_ROUTER_GAIN)
        ),
    );
    finding.offenders = crate::moe::worst_layers(m, TOP_OFFENDERS).iter().map(|l| format!("MoE layer {}", l.layer)).collect();
    Outcome::Fires(finding)
}

fn no_headroom(a: &Analysis) -> String {
    match &a.headroom {
        Measured::NotAvailable(why) => why.clone(),
        Measured::Available(_) => String::new(),
    }
}

/// The summed host time of the steady iterations.
fn steady_iteration_ns(f: &Facts) -> u64 {
    f.trace.iterations.iter().filter(|r| !f.steps.in_outlier(r.start_ns)).map(|r| r.end_ns.saturating_sub(r.start_ns)).sum()
}

fn batch_size(f: &Facts, headroom: &Measured<Headroom>) -> Outcome {
    let h = match headroom {
        Measured::Available(h) => h,
        Measured::NotAvailable(why) => return Outcome::NotAvailable(why.clone()),
    };
    let (Some(cap), Some(at_cap)) = (h.max_batch_size, h.at_batch_cap) else {
        return Outcome::NotAvailable("the trace's meta has no max_batch_size (written by lumen's recorder)".into());
    };
    let kv_peak = match h.kv_peak {
        Some(kv) => kv,
        None => return Outcome::NotAvailable("the iteration rows have no KV block totals".into()),
    };
    if at_cap < BATCH_CAP_SHARE || kv_peak >= KV_LOW {
        return Outcome::NotFound;
    }
    let Some(s) = &h.suggestion else {
        return Outcome::NotFound;
    };
    let mut evidence = vec![
        format!("the batch is at its cap of {cap} in {} of {} steady iterations", text::percent(at_cap), h.iterations),
        format!(
            "the KV cache peaks at {} used: it holds {} requests of {:.1} blocks at {}",
            text::percent(kv_peak),
            s.kv_fit,
            s.blocks_per_request,
            text::percent(crate::headroom::KV_TARGET)
        ),
    ];
    if let (Some(q), Some(mean)) = (h.queued, h.mean_queued) {
        if q > 0.0 {
            evidence.push(format!("requests wait in {} of iterations, {mean:.0} on average", text::percent(q)));
        }
    }
    let gain = match s.gain {
        Some(g) => format!("expected gain {g:.2}× at --max-batch-size {}", s.max_batch_size),
        None => format!("expected gain not estimable at --max-batch-size {}", s.max_batch_size),
    };
    evidence.push(format!("{gain}; basis: {}", s.basis));
    let explained_ns = s.gain.map_or(0, |g| (steady_iteration_ns(f) as f64 * (1.0 - 1.0 / g.max(1.0))) as u64);
    let command = command_with(f.trace, &[("--max-batch-size", s.max_batch_size), ("--max-num-tokens", s.max_num_tokens)]);
    // `bench latency` runs one request at a time whatever its cap: the headroom is a throughput
    // run's, on the same dataset.
    let latency_run = f.trace.meta("command").is_some_and(|c| c.contains(" bench latency "));
    let action = if latency_run {
        format!(
            "this is `bench latency`, which runs one request at a time by design, so no cap raises its batch; the headroom is a \
             throughput run's: try `{}`",
            command.replacen(" bench latency ", " bench throughput ", 1)
        )
    } else {
        format!("raise the batch cap: --max-batch-size {} --max-num-tokens {}; try `{command}`", s.max_batch_size, s.max_num_tokens)
    };
    let mut finding = Finding::new(BATCH_SIZE, explained_ns, evidence, action);
    finding.expected_gain = s.gain;
    Outcome::Fires(finding)
}

fn token_budget(f: &Facts, h: &Headroom) -> Outcome {
    let (Some(budget), Some(full)) = (h.max_num_tokens, h.at_token_budget) else {
        return Outcome::NotAvailable("the trace's meta has no max_num_tokens (written by lumen's recorder)".into());
    };
    let Some(queued) = h.queued else {
        return Outcome::NotAvailable("the iteration rows do not record waiting requests".into());
    };
    if full < TOKEN_BUDGET_SHARE || queued < QUEUED_SHARE {
        return Outcome::NotFound;
    }
    let raised = budget * 2;
    let finding = Finding::new(
        TOKEN_BUDGET,
        0,
        vec![
            format!("the iteration's tokens fill the budget of {budget} in {} of iterations", text::percent(full)),
            format!("requests wait in {} of iterations: prefill is rationed", text::percent(queued)),
            "expected gain not estimated: a larger budget admits waiting prompts sooner (time to first token) more than it \
             raises output throughput; measure it with `lumen analyze --compare`"
                .into(),
        ],
        format!("raise --max-num-tokens to {raised}; try `{}`", command_with(f.trace, &[("--max-num-tokens", raised)])),
    );
    Outcome::Fires(finding)
}

fn kv_cache_full(h: &Headroom) -> Outcome {
    let (Some(queued), Some(kv_peak)) = (h.queued, h.kv_peak) else {
        return Outcome::NotAvailable("the iteration rows do not record waiting requests and KV use".into());
    };
    let below_cap = h.at_batch_cap.is_none_or(|s| s < BATCH_CAP_SHARE);
    if queued < QUEUED_SHARE || kv_peak <= KV_FULL || !below_cap {
        return Outcome::NotFound;
    }
    let finding = Finding::new(
        KV_CACHE_FULL,
        0,
        vec![
            format!(
                "requests wait in {} of iterations while the KV cache peaks at {} and the batch is below its cap",
                text::percent(queued),
                text::percent(kv_peak)
            ),
            format!(
                "expected gain: up to {:.2}× (the cap over the median batch of {:.0}) if the KV cache held the whole batch and the \
                 iteration time held",
                h.max_batch_size.map_or(1.0, |cap| cap as f64 / h.median_batch.max(1.0)),
                h.median_batch
            ),
        ],
        "give the KV cache more memory: --kv-cache-free-gpu-mem-fraction or --kv-cache-gib; an FP8 KV cache (--kv-cache-dtype fp8) \
         holds twice the tokens"
            .into(),
    );
    Outcome::Fires(finding)
}

fn concurrency(f: &Facts, h: &Headroom) -> Outcome {
    if f.trace.meta("command").is_some_and(|c| c.contains("bench latency")) {
        // The latency benchmark runs one request at a time by design.
        return Outcome::NotFound;
    }
    let (Some(cap), Some(queued), Some(kv_peak)) = (h.max_batch_size, h.queued, h.kv_peak) else {
        return Outcome::NotAvailable("needs max_batch_size in meta and waiting requests and KV use in the iteration rows".into());
    };
    if h.median_batch >= CONCURRENCY_BATCH_SHARE * cap as f64 || queued > 0.0 || kv_peak >= KV_LOW {
        return Outcome::NotFound;
    }
    let finding = Finding::new(
        CONCURRENCY,
        0,
        vec![
            format!(
                "the median batch is {:.0} of a cap of {cap}, no request ever waits, and the KV cache peaks at {}: the client sends too few",
                h.median_batch,
                text::percent(kv_peak)
            ),
            format!(
                "expected gain: up to {:.2}× (the cap over the median batch) if the iteration time held, as it nearly does while decode is memory bound",
                cap as f64 / h.median_batch.max(1.0)
            ),
        ],
        format!("keep more requests in flight: {}", more_in_flight(f)),
    );
    Outcome::Fires(finding)
}

/// How to keep more requests in flight for the run the trace recorded: a server's clients, or
/// the offline benchmark's concurrency.
fn more_in_flight(f: &Facts) -> &'static str {
    if f.trace.meta("command").is_some_and(|c| c.contains(" serve")) {
        "raise the clients' concurrency (`lumen bench serve --max-concurrency`, or a higher --request-rate), or add clients"
    } else {
        "`lumen bench throughput --concurrency` higher (or -1), or more clients"
    }
}

/// One device's busy time over its steady window (one-off outlier gaps left out).
#[derive(Clone, Copy)]
struct SteadyBusy {
    device: u32,
    share: f64,
    busy_ns: u64,
    start_ns: u64,
    end_ns: u64,
}

fn steady_busy(a: &Analysis) -> Option<Vec<SteadyBusy>> {
    let (devices, gaps) = (a.gpu.get()?, a.gaps.get()?);
    Some(
        devices
            .iter()
            .map(|d| {
                let outlier_ns: u64 = gaps
                    .iter()
                    .filter(|g| g.device == d.device)
                    .flat_map(|g| &g.classes)
                    .filter(|c| c.class == GapClass::OutlierStep)
                    .map(|c| c.total_ns)
                    .sum();
                let window = (d.end_ns - d.start_ns).saturating_sub(outlier_ns);
                SteadyBusy {
                    device: d.device,
                    share: share(d.busy_ns as f64, window as f64),
                    busy_ns: d.busy_ns,
                    start_ns: d.start_ns,
                    end_ns: d.end_ns,
                }
            })
            .collect(),
    )
}

fn percent_of(u: &UnitUse) -> String {
    let tensor = u.tensor_percent.map_or("tensor not sampled".to_string(), |t| format!("tensor {t:.1}%"));
    format!(
        "DRAM {:.1}% of peak (read + write), {tensor}, SM active {:.1}% ({} busy samples)",
        u.dram_percent, u.sm_active_percent, u.samples
    )
}

/// For a large model (its weights take at least `TP_WEIGHT_FLOOR_MS` to read per step at the
/// GPU's peak), tensor parallelism over twice the GPUs, with the floor it brings; nothing for a
/// smaller one, or where the weights or the peak are unknown.
fn tensor_parallel_advice(f: &Facts) -> String {
    let number = |key| f.trace.meta(key).and_then(|v| v.parse::<f64>().ok());
    let (Some(weights), Some(peaks)) = (number("weight_bytes"), f.a.speed_of_light.peaks.get()) else { return String::new() };
    let tp = number("tensor_parallel_size").unwrap_or(1.0).max(1.0);
    let floor_ms = weights / tp / (peaks.dram_gb_s * 1e9) * 1e3;
    if floor_ms < TP_WEIGHT_FLOOR_MS {
        return String::new();
    }
    let next = 2.0 * tp;
    format!(
        "; tensor parallelism over {next} GPUs (--tp {next}) adds their bandwidth: each reads 1/{next} of the weights, so the \
         weights-read floor per step falls from {floor_ms:.2} ms to {:.2} ms (up to 2× the decode speed, less the all-reduces)",
        floor_ms * tp / next
    )
}

fn bound(f: &Facts, wanted: Bound) -> Outcome {
    // The recorder names the layer weights' and the KV cache's types; what a run already holds in
    // FP8 gets no FP8 advice.
    let fp8_weights = f.trace.meta("weight_dtype") == Some("fp8");
    let fp8_kv = f.trace.meta("kv_cache_dtype") == Some("fp8");
    let (pattern, action) = match wanted {
        Bound::Memory => {
            let cut = match (fp8_weights, fp8_kv) {
                (false, false) => {
                    "FP8 weights and KV cache (--quantization fp8 --kv-cache-dtype fp8) halve the bytes of every weight and K/V read"
                }
                (false, true) => "FP8 weights (--quantization fp8) halve the bytes of every weight read (the KV cache is FP8 already)",
                (true, false) => "an FP8 KV cache (--kv-cache-dtype fp8) halves the K/V bytes (the weights are FP8 already)",
                (true, true) => "weights and KV cache are FP8 already",
            };
            (
                MEMORY_BOUND,
                format!(
                    "the GPU streams memory: a larger batch (--max-batch-size) reuses each weight read for more tokens; {cut}{}",
                    tensor_parallel_advice(f)
                ),
            )
        }
        _ if fp8_weights => (
            COMPUTE_BOUND,
            "a good problem: the compute pipes are near their ceiling, on FP8 tensor cores already; a faster GPU or speculative \
             decoding (not in lumen yet)"
                .to_string(),
        ),
        _ => (
            COMPUTE_BOUND,
            "a good problem: the compute pipes are near their ceiling (FP32 products on the FP32 pipes would gain from bf16 or TF32 \
             on the tensor pipes); FP8 tensor cores (--quantization fp8) double the bf16 peak; else a faster GPU or speculative \
             decoding (not in lumen yet)"
                .to_string(),
        ),
    };
    let sol = &f.a.speed_of_light;
    let busy = steady_busy(f.a);
    let mut evidence = Vec::new();
    let mut explained_ns = 0;
    let mut range = None;
    if let Measured::Available(devices) = &sol.devices {
        for u in devices.iter().filter(|u| u.bound == wanted) {
            let device_busy = busy.as_ref().and_then(|b| b.iter().find(|d| format!("device {}", d.device) == u.name).copied());
            if device_busy.is_some_and(|d| d.share < LOW_BUSY) {
                continue;
            }
            evidence.push(format!("{}: {}", u.name, percent_of(u)));
            explained_ns += device_busy.map_or(u.end_ns - u.start_ns, |d| d.busy_ns);
            range = f.relative(u.start_ns, u.end_ns);
        }
    }
    if let Measured::Available(w) = &sol.work {
        if w.bound == Some(wanted) {
            evidence.push(format!(
                "the engine's iterations move a median {:.0} GB/s ({}) and compute {:.1} TFLOP/s ({}{}) over their {}",
                w.dram_gb_s.median,
                of_peak(w.dram_percent),
                w.tflops.median,
                of_peak(w.tensor_percent),
                crate::sol::fp8_note(w),
                w.time
            ));
            if explained_ns == 0 {
                explained_ns = f.trace.iterations.iter().filter_map(|r| r.device_ms).map(|ms| (ms * 1e6) as u64).sum();
            }
        }
    }
    let judged_ops = sol.ops.get().and_then(|ops| ops.first()).filter(|all| all.coverage >= OP_WORK_COVERAGE && all.bound.is_some());
    if let Some(all) = judged_ops.filter(|all| all.bound == Some(wanted)) {
        evidence.push(format!("kernels: {}", op_rates(all)));
        if explained_ns == 0 {
            explained_ns = all.busy_ns;
        }
    }
    if evidence.is_empty() {
        let judged = sol.devices.get().is_some() || sol.work.get().is_some_and(|w| w.bound.is_some()) || judged_ops.is_some();
        if judged {
            return Outcome::NotFound;
        }
        let ops_why = match &sol.ops {
            Measured::Available(ops) => {
                format!("operators' recorded work covers {} of the kernel time", text::percent(ops.first().map_or(0.0, |o| o.coverage)))
            }
            Measured::NotAvailable(why) => why.clone(),
        };
        return Outcome::NotAvailable(format!(
            "{}; {}; {ops_why}",
            sol.devices.reason().unwrap_or("no SM/DRAM samples"),
            sol.work.reason().unwrap_or("no peaks for the engine's work")
        ));
    }
    if let Some(top) = sol.classes.iter().find(|c| c.bound == wanted) {
        evidence.push(format!("kernel class {}: {}", top.name, percent_of(top)));
    } else if let Some(top) = sol.ops.get().into_iter().flatten().skip(1).find(|o| o.bound == Some(wanted)) {
        evidence.push(format!("kernel class {}: {}", top.name, op_rates(top)));
    }
    let mut finding = Finding::new(pattern, explained_ns, evidence, action);
    finding.range_ns = range;
    Outcome::Fires(finding)
}

/// A use as "N% of peak", or "-" where the peak is unknown.
fn of_peak(percent: Option<f64>) -> String {
    percent.map_or("-".to_string(), |p| format!("{p:.1}% of peak"))
}

fn op_rates(o: &crate::sol::OpRates) -> String {
    format!(
        "{:.0} GB/s ({}) and {:.1} TFLOP/s ({}) from their operators' recorded work, over {} of kernel time ({} of it covered)",
        o.dram_gb_s,
        of_peak(o.dram_percent),
        o.tflops,
        of_peak(o.tensor_percent),
        text::duration(o.busy_ns as f64),
        text::percent(o.coverage)
    )
}

/// The kernel class (attention or the products) with the most time above the speed of light of
/// its own work, when it holds enough of the kernel time and runs far below its ceiling.
fn slow_class(f: &Facts) -> Outcome {
    let classes = match &f.a.speed_of_light.class_work {
        Measured::Available(classes) => classes,
        Measured::NotAvailable(why) => return Outcome::NotAvailable(why.clone()),
    };
    let nearest = |c: &ClassWork| c.dram_percent.zip(c.tensor_percent).map(|(d, t)| d.max(t));
    if classes.iter().all(|c| c.light_ns.is_none()) {
        return Outcome::NotAvailable(f.a.speed_of_light.peaks.reason().unwrap_or("no peaks for the trace's GPU").to_string());
    }
    let slow = classes
        .iter()
        .filter(|c| c.share >= SLOW_CLASS_SHARE && nearest(c).is_some_and(|p| p < SLOW_CLASS_PERCENT))
        .filter_map(|c| Some((c, c.busy_ns.saturating_sub(c.light_ns?))))
        .max_by_key(|&(_, above)| above);
    let Some((class, above_ns)) = slow else {
        return Outcome::NotFound;
    };
    let rates = |c: &ClassWork| {
        format!(
            "{} kernels: {} of the kernel time ({}), {:.1} TFLOP/s ({}) and {:.0} GB/s ({}) of their own work",
            c.name,
            text::percent(c.share),
            text::duration(c.busy_ns as f64),
            c.tflops,
            of_peak(c.tensor_percent),
            c.dram_gb_s,
            of_peak(c.dram_percent),
        )
    };
    let mut evidence = vec![
        rates(class),
        format!(
            "at its nearest ceiling that work takes {}: {} of its time is above its speed of light",
            text::duration(class.light_ns.unwrap_or(0) as f64),
            text::percent(share(above_ns as f64, class.busy_ns as f64))
        ),
    ];
    evidence.extend(classes.iter().filter(|c| c.name != class.name && c.light_ns.is_some()).map(rates));
    let action = if class.name == ATTENTION_WORK {
        let fp8_kv = f.trace.meta("kv_cache_dtype") == Some("fp8");
        format!(
            "a faster attention kernel: its products nearer the tensor peak (on Hopper, warp-group wgmma from shared memory; longer \
             query tiles), and at small batches fewer, longer KV splits{}",
            if fp8_kv { "" } else { "; an FP8 KV cache (--kv-cache-dtype fp8) halves the K/V it reads" }
        )
    } else {
        "the products run far below the GPU's ceiling for their work: at a small batch they stream their weights for a few rows \
         (a larger batch, --max-batch-size and --max-num-tokens, reuses each read); at a large one, the GEMM algorithm chosen for \
         the shape"
            .to_string()
    };
    Outcome::Fires(Finding::new(SLOW_CLASS, above_ns, evidence, action))
}

fn small_batch(f: &Facts) -> Outcome {
    let sol = &f.a.speed_of_light;
    let Measured::Available(devices) = &sol.devices else {
        return small_batch_from_ops(f);
    };
    let total: usize = devices.iter().map(|d| d.samples).sum();
    let Some(gemm) = sol.classes.iter().find(|c| c.name == "gemm") else {
        return Outcome::NotFound;
    };
    let starved = gemm.bound == Bound::Memory && gemm.tensor_percent.is_some_and(|t| t < SMALL_BATCH_TENSOR_PERCENT);
    if !starved || share(gemm.samples as f64, total as f64) < SMALL_BATCH_GEMM_SHARE {
        return Outcome::NotFound;
    }
    let gemm_ns: u64 = f.a.kernels.get().and_then(|k| k.classes.iter().find(|c| c.class.as_str() == "gemm")).map_or(0, |c| c.total_ns);
    Outcome::Fires(Finding::new(
        SMALL_BATCH,
        gemm_ns,
        vec![
            format!("GEMM kernels: {}", percent_of(gemm)),
            format!("{} of the busy samples: the GEMMs read their weights for a few rows each", text::percent(share(gemm.samples as f64, total as f64))),
        ],
        "batch more rows into each GEMM (more requests per iteration: --max-batch-size, --concurrency); each weight read then serves more tokens".into(),
    ))
}

/// Small-batch GEMMs from the operators' recorded work, when there are no counter samples.
fn small_batch_from_ops(f: &Facts) -> Outcome {
    let Measured::Available(ops) = &f.a.speed_of_light.ops else {
        return Outcome::NotAvailable(
            "needs SM/DRAM/tensor samples per kernel class (`lumen profile --gpu-metrics`) or operators' recorded work".into(),
        );
    };
    let (Some(all), Some(gemm)) = (ops.first(), ops.iter().find(|o| o.name == "gemm")) else {
        return Outcome::NotFound;
    };
    let starved = gemm.coverage >= OP_WORK_COVERAGE
        && gemm.bound == Some(Bound::Memory)
        && gemm.tensor_percent.is_some_and(|t| t < SMALL_BATCH_TENSOR_PERCENT);
    if !starved || share(gemm.busy_ns as f64, all.busy_ns as f64) < SMALL_BATCH_GEMM_SHARE {
        return Outcome::NotFound;
    }
    Outcome::Fires(Finding::new(
        SMALL_BATCH,
        gemm.busy_ns,
        vec![
            format!("GEMM kernels: {}", op_rates(gemm)),
            format!("{} of the kernel time: the GEMMs read their weights for a few rows each", text::percent(share(gemm.busy_ns as f64, all.busy_ns as f64))),
        ],
        "batch more rows into each GEMM (more requests per iteration: --max-batch-size, --concurrency); each weight read then serves more tokens".into(),
    ))
}

fn low_utilisation(f: &Facts) -> Outcome {
    let devices = match steady_busy(f.a) {
        Some(devices) => devices,
        None => return Outcome::NotAvailable(no_gpu(f.a)),
    };
    let low: Vec<_> = devices.iter().filter(|d| d.share < LOW_BUSY).collect();
    if low.is_empty() {
        return Outcome::NotFound;
    }
    let mut evidence: Vec<String> = low
        .iter()
        .map(|d| {
            format!(
                "device {} busy {} of {} (steady steps)",
                d.device,
                text::percent(d.share),
                text::duration((d.end_ns - d.start_ns) as f64)
            )
        })
        .collect();
    if f.a.hardware.get().is_none() {
        evidence.push("time utilisation only: the trace has no SM/DRAM samples".into());
    }
    let idle: u64 = low.iter().map(|d| ((d.end_ns - d.start_ns) as f64 * (1.0 - d.share)).max(0.0) as u64).sum();
    let mut finding = Finding::new(
        LOW_UTILISATION,
        idle,
        evidence,
        format!(
            "give the GPU more work per iteration: raise --max-batch-size and --max-num-tokens, or keep more requests in flight: {}",
            more_in_flight(f)
        ),
    );
    finding.range_ns = f.relative(low.iter().map(|d| d.start_ns).min().unwrap_or(0), low.iter().map(|d| d.end_ns).max().unwrap_or(0));
    Outcome::Fires(finding)
}

fn no_gpu(a: &Analysis) -> String {
    match (&a.gpu, &a.gaps) {
        (Measured::NotAvailable(why), _) | (_, Measured::NotAvailable(why)) => why.clone(),
        _ => String::new(),
    }
}

/// Steady idle, host-wait, sync-wait and window time summed over the devices.
struct IdleTotals {
    idle_ns: u64,
    window_ns: u64,
    host_wait_ns: u64,
    sync_wait_ns: u64,
    launch_gaps: usize,
    launch_gap_ns: u64,
    outlier_ns: u64,
}

fn idle_totals(a: &Analysis) -> Result<IdleTotals, String> {
    let (devices, gaps) = match (&a.gpu, &a.gaps) {
        (Measured::Available(devices), Measured::Available(gaps)) => (devices, gaps),
        (Measured::NotAvailable(why), _) | (_, Measured::NotAvailable(why)) => return Err(why.clone()),
    };
    let class = |wanted: GapClass| gaps.iter().flat_map(|g| &g.classes).filter(move |c| c.class == wanted);
    let outlier_ns: u64 = class(GapClass::OutlierStep).map(|c| c.total_ns).sum();
    Ok(IdleTotals {
        idle_ns: gaps.iter().map(|g| g.total_ns).sum::<u64>() - outlier_ns,
        window_ns: devices.iter().map(|d| d.end_ns - d.start_ns).sum::<u64>() - outlier_ns,
        host_wait_ns: class(GapClass::HostWait).map(|c| c.total_ns).sum(),
        sync_wait_ns: class(GapClass::SyncWait).map(|c| c.total_ns).sum(),
        launch_gaps: class(GapClass::LaunchGap).map(|c| c.count).sum(),
        launch_gap_ns: class(GapClass::LaunchGap).map(|c| c.total_ns).sum(),
        outlier_ns,
    })
}

fn cpu_bottleneck(f: &Facts) -> Outcome {
    let totals = match idle_totals(f.a) {
        Ok(totals) => totals,
        Err(why) => return Outcome::NotAvailable(why),
    };
    let host_share = share(totals.host_wait_ns as f64, totals.idle_ns as f64);
    let idle_share = share(totals.idle_ns as f64, totals.window_ns as f64);
    if host_share <= HOST_WAIT_DOMINATES || idle_share <= MIN_IDLE_SHARE {
        return Outcome::NotFound;
    }
    let mut evidence = vec![format!(
        "host waits {} = {} of {} steady idle; idle is {} of the {} steady window",
        text::duration(totals.host_wait_ns as f64),
        text::percent(host_share),
        text::duration(totals.idle_ns as f64),
        text::percent(idle_share),
        text::duration(totals.window_ns as f64)
    )];
    if totals.outlier_ns > 0 {
        evidence.push(format!(
            "{} of idle inside one-off outlier steps is left out (see \"Steps and steady state\")",
            text::duration(totals.outlier_ns as f64)
        ));
    }
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
    let traced_launch = node_traced_graph_launch(f.trace, host_gaps.iter().map(|(_, g)| (g.start_ns, g.start_ns + g.duration_ns)));
    if let Some(launch) = &traced_launch {
        evidence.push(format!(
            "in those waits the host was inside `{}` for {} ({} a launch on average, {:.0} kernels a graph)",
            launch.name,
            text::duration(launch.overlap_ns as f64),
            text::duration(launch.mean_ns),
            launch.nodes_per_launch
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
    // A lumen run that read each step's tokens back before launching the next can hide the
    // host's work between steps behind the device's.
    let overlap = if f.trace.meta("overlap_scheduler") == Some("off") {
        "; launch each step before the host reads the last one's tokens (--overlap-scheduler on)"
    } else {
        ""
    };
    let mut action = format!(
        "the GPU waits for the host: shorten {phase}; record waits and \
         allocations with LUMEN_PROFILE_RECORD_WAITS=1 LUMEN_PROFILE_RECORD_ALLOC=1; replay decode from CUDA graphs (--cuda-graphs on){overlap}"
    );
    if traced_launch.is_some() {
        action = format!(
            "first rule out the profiler: the kernels were traced as graph nodes, and tracing a graph node by node \
             lengthens its launch; trace the same run with `--cuda-graph-trace graph` (or compare the unprofiled TPOT with \
             the GPU's busy time a step); if the waits remain: {action}"
        );
    }
    Outcome::Fires(Finding {
        pattern: CPU_BOTTLENECK,
        kind: Kind::Idle,
        expected_gain: None,
        explained_ns: totals.host_wait_ns,
        evidence,
        offenders,
        range_ns,
        action,
    })
}

/// The graph launch call the host sat in during the GPU's host waits, where the trace's kernels
/// were traced as graph nodes.
struct TracedGraphLaunch<'a> {
    name: &'a str,
    overlap_ns: u64,
    mean_ns: f64,
    nodes_per_launch: f64,
}

/// When the GPU's host waits (`windows`) are mostly spent inside graph launch calls and the
/// trace holds graph kernels node by node, that launch: node-level tracing itself makes each
/// launch longer, so the waits may be the profiler's.
fn node_traced_graph_launch(trace: &TraceData, windows: impl Iterator<Item = (u64, u64)>) -> Option<TracedGraphLaunch<'_>> {
    let mut nodes_by_launch: HashMap<(u32, u64), usize> = HashMap::new();
    for op in trace.gpu_ops.iter().filter(|op| op.graph_node_id.is_some()) {
        if let Some(correlation) = op.correlation {
            *nodes_by_launch.entry((op.pid, correlation)).or_default() += 1;
        }
    }
    if nodes_by_launch.is_empty() {
        return None;
    }
    let launches: Vec<_> = trace.api_calls.iter().filter(|c| is_graph_launch(&c.name)).collect();
    let (mut overlap_ns, mut waits_ns) = (0u64, 0u64);
    for (start, end) in windows {
        waits_ns += end - start;
        overlap_ns += launches.iter().map(|c| end.min(c.end_ns).saturating_sub(start.max(c.start_ns))).sum::<u64>();
    }
    if overlap_ns * 2 < waits_ns {
        return None;
    }
    let mean_ns = launches.iter().map(|c| (c.end_ns - c.start_ns) as f64).sum::<f64>() / launches.len() as f64;
    let nodes_per_launch = nodes_by_launch.values().sum::<usize>() as f64 / nodes_by_launch.len() as f64;
    Some(TracedGraphLaunch { name: &launches[0].name, overlap_ns, mean_ns, nodes_per_launch })
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

fn launch_overhead(f: &Facts) -> Outcome {
    let kernels: Vec<_> = f.trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Kernel).collect();
    if kernels.is_empty() {
        return Outcome::NotAvailable("the trace has no kernels".into());
    }
    let is_short = |op: &&&lumen_trace::model::GpuOpRow| op.end_ns.saturating_sub(op.start_ns) < SHORT_KERNEL_NS;
    let short_share = share(kernels.iter().filter(is_short).count() as f64, kernels.len() as f64);
    let eager_share = share(kernels.iter().filter(|k| !f.launches.from_graph(k)).count() as f64, kernels.len() as f64);
    let launch_gaps = idle_totals(f.a).ok();
    if launch_gaps.as_ref().is_some_and(|t| share(t.idle_ns as f64, t.window_ns as f64) <= MIN_IDLE_SHARE) {
        return Outcome::NotFound;
    }
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
    for k in kernels.iter().filter(is_short).filter(|k| !f.launches.from_graph(k)) {
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
        kind: Kind::Idle,
        expected_gain: None,
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
    if sync_share <= SYNC_WAIT_SHARE || share(totals.idle_ns as f64, totals.window_ns as f64) <= MIN_IDLE_SHARE {
        return Outcome::NotFound;
    }
    let mut by_call: HashMap<&str, (usize, u64)> = HashMap::new();
    for call in f.trace.api_calls.iter().filter(|c| c.name.contains("Synchronize") && !f.steps.in_outlier(c.start_ns)) {
        let total = by_call.entry(call.name.as_str()).or_default();
        total.0 += 1;
        total.1 += call.end_ns.saturating_sub(call.start_ns);
    }
    let mut calls: Vec<_> = by_call.into_iter().collect();
    calls.sort_unstable_by(|a, b| b.1 .1.cmp(&a.1 .1).then(a.0.cmp(b.0)));
    let (count, call_ns) = calls.iter().fold((0, 0), |(n, ns), (_, (c, t))| (n + c, ns + t));
    let offenders = if calls.is_empty() {
        vec!["no synchronising API call in the trace: the sync waits come from synchronisation records; see \"GPU idle gaps\"".into()]
    } else {
        calls.iter().take(TOP_OFFENDERS).map(|(name, (n, ns))| format!("{name}: {n} calls, {}", text::duration(*ns as f64))).collect()
    };
    let mut evidence = vec![format!(
        "the GPU sat idle {} while the host was inside synchronising calls or relaunching right after them: {} of {} steady idle",
        text::duration(totals.sync_wait_ns as f64),
        text::percent(sync_share),
        text::duration(totals.idle_ns as f64)
    )];
    if count > 0 {
        evidence.push(format!("{count} synchronising calls took {} in all", text::duration(call_ns as f64)));
    }
    let mut finding = Finding::new(
        SYNC_GAPS,
        totals.sync_wait_ns,
        evidence,
        "the host stops until the GPU drains, so nothing is queued behind the work: remove the synchronising calls named, or move them \
         off the step's critical path"
            .into(),
    );
    finding.offenders = offenders;
    Outcome::Fires(finding)
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
        kind: Kind::Idle,
        expected_gain: None,
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
    let calls: Vec<&lumen_trace::model::ApiCallRow> =
        f.trace.api_calls.iter().filter(|c| crate::memory::is_allocation_call(&c.name) && !f.steps.in_outlier(c.start_ns)).collect();
    let steady: Vec<_> = f.steps.steady().collect();
    let cuda = if f.trace.api_calls.is_empty() {
        Err(crate::measured::NO_API_CALLS.to_string())
    } else if !steady.is_empty() {
        let in_steps = calls.iter().filter(|c| steady.iter().any(|s| s.start_ns <= c.start_ns && c.start_ns < s.end_ns)).count();
        Ok((in_steps as f64 / steady.len() as f64, ALLOC_CALLS_PER_STEP, "steady step"))
    } else {
        let first = f.trace.api_calls.iter().map(|c| c.start_ns).min().unwrap_or(0);
        let last = f.trace.api_calls.iter().map(|c| c.end_ns).max().unwrap_or(0);
        let seconds = (last.saturating_sub(first) as f64 / 1e9).max(1e-9);
        Ok((calls.len() as f64 / seconds, ALLOC_CALLS_PER_SECOND, "second (the trace has no steps)"))
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
    if let Ok((rate, limit, per)) = cuda {
        if rate > limit {
            let ns: u64 = calls.iter().map(|c| c.end_ns.saturating_sub(c.start_ns)).sum();
            evidence.push(format!(
                "{rate:.1} CUDA alloc/free calls per {per}, {} calls taking {} in all",
                calls.len(),
                text::duration(ns as f64)
            ));
            explained_ns += ns;
        }
    }
    if let Some(per_iteration) = host.as_ref().ok().copied().filter(|&per| per > HOST_ALLOCS_PER_ITERATION) {
        evidence.push(format!("{per_iteration:.0} host allocations per iteration"));
        let least_busy = steady_busy(f.a).and_then(|devices| devices.iter().map(|d| d.share).reduce(f64::min));
        if let Some(least_busy) = least_busy.filter(|&share| explained_ns == 0 && share >= HOST_PACES_NOTHING_BUSY) {
            evidence.push(format!(
                "every GPU was busy at least {} of its steady steps, so the host paced none of them: these allocations \
                 cost throughput only in runs the host paces (small steps, a slower host)",
                text::percent(least_busy)
            ));
        }
    }
    if evidence.is_empty() {
        return Outcome::NotFound;
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for c in &calls {
        *names.entry(c.name.as_str()).or_default() += 1;
    }
    let mut names: Vec<(&str, usize)> = names.into_iter().collect();
    names.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut finding = Finding::new(
        ALLOCATION_CHURN,
        explained_ns,
        evidence,
        "reuse buffers across iterations (a pool or caching allocator, and no cache emptying inside the loop); \
         LUMEN_PROFILE_RECORD_ALLOC=1 records where lumen's own happen"
            .into(),
    );
    finding.offenders = names.into_iter().take(TOP_OFFENDERS).map(|(name, n)| format!("{name} ×{n}")).collect();
    Outcome::Fires(finding)
}

pub fn render(d: &Diagnosis, out: &mut String) {
    text::heading(out, "Diagnosis");
    if d.findings.is_empty() {
        let _ = writeln!(out, "  no pattern found");
    }
    for finding in &d.findings {
        let explains = match finding.expected_gain {
            Some(gain) if gain > 1.0 => format!(" (expected gain {gain:.2}×)"),
            _ if finding.explained_ns > 0 => format!(" (explains {})", text::duration(finding.explained_ns as f64)),
            _ => String::new(),
        };
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
    use lumen_trace::model::{CounterRow, GpuOpRow, IterationRow};

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
        assert_eq!(f.evidence[0], "device 0 busy 45.0% of 1.0 µs (steady steps)");
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
            let why = unavailable(&d, pattern).unwrap();
            assert!(
                why.starts_with("no SM/DRAM samples; record them with `lumen profile --gpu-metrics`; the trace has no iteration rows"),
                "{why}"
            );
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
        assert!(f.evidence[0].starts_with("host waits 1.000 ms = 100.0% of 1.000 ms steady idle"), "{:?}", f.evidence);
        assert!(f.evidence[1].contains("phase `schedule`"), "{:?}", f.evidence);
        assert!(f.offenders[0].starts_with("device 0 idle 1.000 ms at +1.0 µs: schedule 898.0 µs"), "{:?}", f.offenders);
        assert!(f.action.contains("phase `schedule`") && f.action.contains("LUMEN_PROFILE_RECORD_WAITS=1"));
        assert_eq!(f.range_ns, Some((1_000, 1_001_000)));
    }

    /// A replayed graph of three kernels traced node by node, whose next launch call takes 800 µs
    /// while the GPU waits: the finding points at the profiler first. Traced as whole graphs,
    /// the same waits keep the plain advice.
    #[test]
    fn host_waits_inside_node_traced_graph_launches_point_at_the_profiler_first() {
        let node =
            |start, id, correlation| GpuOpRow { graph_id: Some(1), graph_node_id: Some(id), ..kernel(start, start + 1_000, correlation) };
        let mut trace = TraceData {
            gpu_ops: vec![
                node(0, 1, 1),
                node(1_000, 2, 1),
                node(2_000, 3, 1),
                node(1_003_000, 1, 2),
                node(1_004_000, 2, 2),
                node(1_005_000, 3, 2),
            ],
            api_calls: vec![api("cuGraphLaunch", 150_000, 950_000, 2)],
            spans: vec![span(100_000, 1_000_000, 1, "forward", "phase")],
            ..TraceData::default()
        };
        let f = finding(&diagnosis(&trace), CPU_BOTTLENECK).cloned().expect("a 1 ms host wait");
        assert!(
            f.evidence.iter().any(|e| e.contains("inside `cuGraphLaunch` for 800.0 µs (800.0 µs a launch on average, 3 kernels a graph)")),
            "{:?}",
            f.evidence
        );
        assert!(f.action.starts_with("first rule out the profiler") && f.action.contains("--cuda-graph-trace graph"), "{}", f.action);
        for op in &mut trace.gpu_ops {
            op.graph_node_id = None;
        }
        let f = finding(&diagnosis(&trace), CPU_BOTTLENECK).cloned().expect("the same wait");
        assert!(f.action.starts_with("the GPU waits for the host"), "{}", f.action);
        assert!(!f.evidence.iter().any(|e| e.contains("cuGraphLaunch")), "{:?}", f.evidence);
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
        assert!(!f.action.contains("--overlap-scheduler"), "a trace that does not say how lumen ran: {}", f.action);
        // A lumen run that had the overlap scheduler off is told to turn it on; one that had it
        // on is not.
        for (setting, advised) in [("off", true), ("on", false)] {
            let mut trace = trace.clone();
            trace.meta.push(("overlap_scheduler".into(), setting.into()));
            let f = finding(&diagnosis(&trace), CPU_BOTTLENECK).cloned().expect("the same wait");
            assert_eq!(f.action.contains("(--overlap-scheduler on)"), advised, "{setting}: {}", f.action);
        }
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
    fn a_streaming_kernel_with_sm_active_near_100_is_memory_bound() {
        let mut trace = samples(&[
            (100, "sm active %", 99.0),
            (100, "dram read %", 44.0),
            (100, "dram write %", 44.0),
            (100, "tensor active %", 0.0),
            (200, "sm active %", 98.0),
            (200, "dram read %", 45.0),
            (200, "dram write %", 43.0),
            (200, "tensor active %", 0.0),
            // Idle: left out of the means, or DRAM would fall under the threshold.
            (300, "sm active %", 1.0),
            (300, "dram read %", 0.0),
            (300, "dram write %", 0.0),
        ]);
        trace.gpu_ops = vec![GpuOpRow { name: "vectorized_elementwise_kernel".into(), ..kernel(0, 1_000, 1) }];
        let d = diagnosis(&trace);
        let f = finding(&d, MEMORY_BOUND).expect("read 44% + write 44% with SM active 99%");
        assert_eq!(f.evidence[0], "device 0: DRAM 88.0% of peak (read + write), tensor 0.0%, SM active 98.5% (2 busy samples)");
        assert!(f.evidence[1].starts_with("kernel class norm/elementwise: DRAM 88.0%"), "{:?}", f.evidence);
        assert!(f.action.contains("--quantization fp8 --kv-cache-dtype fp8"), "{}", f.action);
        trace.meta.push(("weight_dtype".into(), "fp8".into()));
        let fp8 = finding(&diagnosis(&trace), MEMORY_BOUND).expect("the same counters").action.clone();
        assert!(
            fp8.contains("weights are FP8 already") && fp8.contains("--kv-cache-dtype fp8") && !fp8.contains("--quantization"),
            "{fp8}"
        );
        trace.meta.push(("kv_cache_dtype".into(), "fp8".into()));
        let both = finding(&diagnosis(&trace), MEMORY_BOUND).expect("the same counters").action.clone();
        assert!(
            both.contains("KV cache are FP8 already") && !both.contains("--kv-cache-dtype") && !both.contains("--quantization"),
            "{both}"
        );
        assert!(d.not_found.contains(&COMPUTE_BOUND) && d.not_found.contains(&SMALL_BATCH));
        assert!(!both.contains("--tp"), "no weights or GPU named: no tensor-parallel advice: {both}");
        // 16 GB of weights on an H200's 4.8 TB/s datasheet peak: 3.33 ms per step, 1.67 ms over 2.
        trace.meta.extend([("gpu".into(), "NVIDIA H200".into()), ("weight_bytes".into(), "16000000000".into())]);
        let large = finding(&diagnosis(&trace), MEMORY_BOUND).expect("the same counters").action.clone();
        assert!(large.contains("--tp 2") && large.contains("from 3.33 ms to 1.67 ms"), "{large}");
        trace.meta.push(("tensor_parallel_size".into(), "2".into()));
        let split = finding(&diagnosis(&trace), MEMORY_BOUND).expect("the same counters").action.clone();
        assert!(split.contains("--tp 4") && split.contains("from 1.67 ms to 0.83 ms"), "{split}");
        trace.meta.retain(|(k, _)| k != "weight_bytes" && k != "tensor_parallel_size");
        trace.meta.push(("weight_bytes".into(), "270000000".into()));
        let small = finding(&diagnosis(&trace), MEMORY_BOUND).expect("the same counters").action.clone();
        assert!(!small.contains("--tp"), "a 135M model reads its weights in 0.06 ms: no advice: {small}");
    }

    #[test]
    fn tensor_pipes_nearest_their_ceiling_are_compute_bound() {
        let mut trace = samples(&[
            (100, "sm active %", 95.0),
            (100, "dram bandwidth %", 30.0),
            (100, "tensor active %", 80.0),
            (200, "sm active %", 97.0),
            (200, "dram bandwidth %", 40.0),
            (200, "tensor active %", 70.0),
        ]);
        let d = diagnosis(&trace);
        let f = finding(&d, COMPUTE_BOUND).expect("tensor 75% with DRAM 35%");
        assert_eq!(f.evidence[0], "device 0: DRAM 35.0% of peak (read + write), tensor 75.0%, SM active 96.0% (2 busy samples)");
        assert_eq!(f.range_ns, Some((100, 200)));
        assert!(d.not_found.contains(&MEMORY_BOUND));
        assert!(f.action.contains("FP8 tensor cores (--quantization fp8)"), "{}", f.action);
        trace.meta.push(("weight_dtype".into(), "fp8".into()));
        let fp8 = finding(&diagnosis(&trace), COMPUTE_BOUND).expect("the same counters").action.clone();
        assert!(fp8.contains("on FP8 tensor cores already") && !fp8.contains("--quantization"), "{fp8}");
    }

    #[test]
    fn nothing_near_a_ceiling_or_an_idle_gpu_is_neither_bound() {
        let latency = samples(&[(100, "sm active %", 90.0), (100, "dram read %", 20.0), (100, "tensor active %", 10.0)]);
        let d = diagnosis(&latency);
        assert!(d.not_found.contains(&MEMORY_BOUND) && d.not_found.contains(&COMPUTE_BOUND));
        // DRAM full while the GPU is busy a tenth of the time: the idle-time patterns speak.
        let mut idle = samples(&[(100, "sm active %", 90.0), (100, "dram read %", 90.0)]);
        idle.gpu_ops.push(kernel(9_000, 10_000, 2));
        let d = diagnosis(&idle);
        assert!(finding(&d, MEMORY_BOUND).is_none() && finding(&d, LOW_UTILISATION).is_some());
    }

    #[test]
    fn gemms_reading_weights_for_one_row_are_a_small_batch() {
        let mut trace = samples(&[
            (100, "sm active %", 80.0),
            (100, "dram read %", 75.0),
            (100, "tensor active %", 1.0),
            (200, "sm active %", 80.0),
            (200, "dram read %", 77.0),
            (200, "tensor active %", 1.0),
        ]);
        trace.gpu_ops = vec![GpuOpRow { name: "gemvx_kernel".into(), ..kernel(0, 1_000, 1) }];
        let d = diagnosis(&trace);
        let f = finding(&d, SMALL_BATCH).expect("memory-bound GEMMs with idle tensor pipes");
        assert!(f.evidence[0].starts_with("GEMM kernels: DRAM 76.0%"), "{:?}", f.evidence);
        assert!(finding(&d, MEMORY_BOUND).is_some());
        trace.counters.retain(|c| c.name != "tensor active %");
        trace.counters.extend(samples(&[(100, "tensor active %", 40.0), (200, "tensor active %", 40.0)]).counters);
        assert!(diagnosis(&trace).not_found.contains(&SMALL_BATCH), "tensor pipes at 40% are not starved");
    }

    /// The engine's rows: 10 decode iterations at the cap of 64 with 1.8% of the KV cache used,
    /// on an H200, each moving 17.7 GB and computing 1 TFLOP in 7.3 ms.
    fn capped_run() -> TraceData {
        let row = |i: u64| IterationRow {
            ctx_reqs: 0,
            gen_reqs: 64,
            ctx_tokens: 0,
            gen_tokens: 64,
            kv_used_blocks: 18_000,
            kv_total_blocks: 1_000_000,
            queued_reqs: Some(2_000),
            weight_bytes: Some(16_060_000_000),
            kv_bytes_read: Some(1_600_000_000),
            flops: Some(1.024e12),
            device_ms: Some(6.5),
            ..iteration(i, i * 7_300_000, (i + 1) * 7_300_000, 7.3)
        };
        let meta = [
            ("gpu", "NVIDIA H200 (cuda:0)"),
            ("max_batch_size", "64"),
            ("max_num_tokens", "2048"),
            ("command", "lumen bench throughput --device cuda --model llama-3.1-8b --dataset d.jsonl"),
        ];
        TraceData {
            meta: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            iterations: (0..10).map(row).collect(),
            gpu_ops: (0..10).map(|i| kernel(i * 7_300_000, i * 7_300_000 + 6_500_000, i)).collect(),
            ..TraceData::default()
        }
    }

    #[test]
    fn a_capped_batch_with_an_idle_kv_cache_ranks_first_with_its_gain_and_command() {
        let d = diagnosis(&capped_run());
        let f = &d.findings[0];
        assert_eq!((f.pattern, f.kind), (BATCH_SIZE, Kind::Headroom), "{:?}", d.findings);
        let gain = f.expected_gain.unwrap();
        assert!(gain > 1.5, "{gain}");
        assert!(f.evidence[0].starts_with("the batch is at its cap of 64 in 100.0% of 10 steady iterations"), "{:?}", f.evidence);
        assert!(f.evidence.iter().any(|e| e.contains("basis: roofline")), "{:?}", f.evidence);
        assert!(
            f.action.ends_with("try `lumen bench throughput --device cuda --model llama-3.1-8b --dataset d.jsonl --max-batch-size 1024 --max-num-tokens 8192`"),
            "{}",
            f.action
        );
        // An idle-time finding explaining more time still ranks below it.
        assert!(d.findings.iter().skip(1).all(|f| f.kind != Kind::Headroom || f.expected_gain <= Some(gain)));

        let mut full = capped_run();
        for r in &mut full.iterations {
            r.kv_used_blocks = 600_000;
        }
        assert!(diagnosis(&full).not_found.contains(&BATCH_SIZE), "a KV cache 60% full leaves no room");
    }

    /// A CPU run at its cap of 2 with 0.2% of its KV cache used, its meta plus `extra`.
    fn cpu_run_capped_at_two(extra: &[(&str, &str)]) -> TraceData {
        let mut trace = capped_run();
        trace.meta =
            vec![("max_batch_size".into(), "2".into()), ("max_num_tokens".into(), "2048".into()), ("backend".into(), "cpu".into())];
        trace.meta.extend(extra.iter().map(|&(k, v)| (k.to_string(), v.to_string())));
        trace.gpu_ops.clear();
        for (i, r) in trace.iterations.iter_mut().enumerate() {
            (r.gen_reqs, r.gen_tokens, r.kv_used_blocks, r.kv_total_blocks) = (2, 2, 2, 1_000);
            (r.weight_bytes, r.kv_bytes_read, r.flops, r.device_ms) = (None, None, None, None);
            if i == 0 {
                (r.ctx_reqs, r.ctx_tokens, r.gen_reqs, r.gen_tokens) = (2, 64, 0, 0);
            }
        }
        trace
    }

    #[test]
    fn a_cpu_run_capped_at_two_is_told_to_raise_it() {
        let d = diagnosis(&cpu_run_capped_at_two(&[]));
        let f = finding(&d, BATCH_SIZE).expect("capped at 2 with 0.2% of the KV cache used");
        assert!(f.action.contains("--max-batch-size 8"), "{}", f.action);
        assert_eq!(d.findings[0].pattern, BATCH_SIZE);
    }

    /// `bench latency` serves one request at a time, so a larger cap would not change its batch:
    /// the finding points at `bench throughput` on the same dataset instead.
    #[test]
    fn a_latency_benchmark_at_batch_one_is_pointed_at_a_throughput_run() {
        let trace = cpu_run_capped_at_two(&[("command", "/opt/lumen bench latency --model tiny --dataset d.jsonl --max-batch-size 2")]);
        let f = finding(&diagnosis(&trace), BATCH_SIZE).cloned().expect("capped at 2 with 0.2% of the KV cache used");
        assert!(
            f.action.starts_with("this is `bench latency`")
                && f.action.contains("`lumen bench throughput --model tiny --dataset d.jsonl --max-batch-size 8 --max-num-tokens"),
            "{}",
            f.action
        );
        assert!(!f.action.contains("bench latency --"), "{}", f.action);
    }

    #[test]
    fn a_full_token_budget_with_a_queue_and_too_few_requests_in_flight() {
        let mut budget = capped_run();
        for r in &mut budget.iterations {
            (r.ctx_reqs, r.ctx_tokens, r.gen_reqs, r.gen_tokens) = (16, 2_000, 32, 48);
        }
        let d = diagnosis(&budget);
        let f = finding(&d, TOKEN_BUDGET).expect("2048 tokens every iteration with 2000 waiting");
        assert!(f.action.starts_with("raise --max-num-tokens to 4096"), "{}", f.action);

        let mut few = capped_run();
        for r in &mut few.iterations {
            (r.gen_reqs, r.gen_tokens, r.queued_reqs) = (8, 8, Some(0));
        }
        let d = diagnosis(&few);
        assert!(finding(&d, CONCURRENCY).is_some(), "{:?}", d.findings);
        assert!(d.not_found.contains(&BATCH_SIZE) && d.not_found.contains(&TOKEN_BUDGET));
        few.meta.retain(|(k, _)| k != "command");
        few.meta.push(("command".into(), "lumen bench latency --model llama-3.1-8b".into()));
        assert!(diagnosis(&few).not_found.contains(&CONCURRENCY), "one request at a time is the latency benchmark's design");
        // A served run's requests come from its clients: the advice names theirs.
        few.meta.retain(|(k, _)| k != "command");
        few.meta.push(("command".into(), "lumen serve --model llama-3.1-8b --port 8000".into()));
        let served = diagnosis(&few);
        let action = &finding(&served, CONCURRENCY).expect("too few in flight").action;
        assert!(action.contains("lumen bench serve --max-concurrency") && !action.contains("bench throughput"), "{action}");
    }

    /// A GEMM loop replayed from a graph: 20 busy 1 ms steps, and a 129 ms stall in the first
    /// replay inside step 2.
    #[test]
    fn a_one_off_stall_is_an_outlier_not_a_cpu_bottleneck() {
        let mut trace = TraceData::default();
        let mut t = 0;
        for n in 0..20u64 {
            let stall = if n == 2 { 129_000_000 } else { 0 };
            let mut step = span(t, t + 1_000_000 + stall, 1, &format!("ProfilerStep#{n}"), "user_annotation");
            step.depth = 0;
            trace.spans.push(step);
            trace.api_calls.push(api("cudaGraphLaunch", t, t + 5_000 + stall, 1_000 + n));
            trace.gpu_ops.push(kernel(t + stall + 10_000, t + stall + 1_000_000, n));
            t += 1_000_000 + stall;
        }
        let d = diagnosis(&trace);
        assert!(finding(&d, CPU_BOTTLENECK).is_none() && finding(&d, LOW_UTILISATION).is_none(), "{:?}", d.findings);
        let a = analyze(&trace, &Options::default()).unwrap();
        let steps = a.steps.get().unwrap();
        assert_eq!((steps.outliers.len(), steps.outliers[0].name.as_str()), (1, "ProfilerStep#2"));
        assert!(steps.outliers[0].running[0].starts_with("call cudaGraphLaunch 129.005 ms"), "{:?}", steps.outliers[0].running);
    }

    /// Each step: a kernel, a synchronise that returns 3 µs after the GPU drains, then `host_ns`
    /// of host work before the next launch.
    fn sync_then_host_work(kernel_ns: u64, host_ns: u64) -> TraceData {
        let mut trace = TraceData::default();
        let mut t = 0;
        let step = kernel_ns + 20_000 + host_ns;
        for n in 0..10u64 {
            trace.spans.push(span(t, t + step, 1, &format!("ProfilerStep#{n}"), "nvtx"));
            trace.api_calls.push(api("cudaLaunchKernel", t, t + 5_000, n));
            trace.gpu_ops.push(kernel(t + 10_000, t + 10_000 + kernel_ns, n));
            trace.api_calls.push(api("cudaDeviceSynchronize", t + 6_000, t + 13_000 + kernel_ns, 1_000 + n));
            t += step;
        }
        trace
    }

    #[test]
    fn idle_after_a_sync_is_host_work_and_no_finding_claims_more_than_its_calls() {
        let d = diagnosis(&sync_then_host_work(1_000_000, 5_000_000));
        let f = finding(&d, CPU_BOTTLENECK).expect("5 ms of host work per 1 ms step");
        assert!(f.explained_ns > 40_000_000, "{}", f.explained_ns);
        assert!(finding(&d, SYNC_GAPS).is_none(), "{:?}", d.findings);

        // Without host work the idle is the sync's round trip: 20 µs after each 50 µs kernel.
        let d = diagnosis(&sync_then_host_work(50_000, 0));
        let f = finding(&d, SYNC_GAPS).expect("the GPU drains at every synchronise");
        let calls_ns: u64 = 10 * 57_000;
        assert!(f.explained_ns <= calls_ns + 10 * crate::gpu::SYNC_RELAUNCH_NS, "{} claims more than the calls", f.explained_ns);
        assert!(f.evidence[1].starts_with("10 synchronising calls took 570.0 µs"), "{:?}", f.evidence);

        // The same round trip after 1 ms kernels is 2% idle: too little to matter.
        assert!(diagnosis(&sync_then_host_work(1_000_000, 0)).not_found.contains(&SYNC_GAPS));
    }

    #[test]
    fn allocation_churn_counts_calls_per_steady_step_or_per_second() {
        let mut trace = sync_then_host_work(50_000, 0);
        let starts: Vec<u64> = trace.spans.iter().map(|s| s.start_ns).collect();
        for (i, start) in starts.iter().enumerate() {
            trace.api_calls.push(api("cudaMalloc", start + 100, start + 200, 5_000 + i as u64));
            trace.api_calls.push(api("cudaFree", start + 300, start + 400, 6_000 + i as u64));
        }
        let d = diagnosis(&trace);
        let f = finding(&d, ALLOCATION_CHURN).expect("2 calls a step");
        assert!(f.evidence[0].starts_with("2.0 CUDA alloc/free calls per steady step"), "{:?}", f.evidence);
        assert_eq!(f.offenders, ["cudaFree ×10", "cudaMalloc ×10"]);

        trace.spans.clear();
        let f = finding(&diagnosis(&trace), ALLOCATION_CHURN).cloned().expect("20 calls in 10 ms");
        assert!(f.evidence[0].contains("per second (the trace has no steps)"), "{:?}", f.evidence);

        trace.api_calls.retain(|c| c.name != "cudaMalloc" && c.name != "cudaFree");
        assert!(diagnosis(&trace).not_found.contains(&ALLOCATION_CHURN));
    }

    #[test]
    fn host_allocations_on_a_busy_gpu_say_the_host_paced_nothing() {
        let allocations = |count| lumen_trace::model::AllocationRow {
            iteration: 0,
            count,
            bytes: 64 * count,
            frees: count,
            kv_blocks_allocated: 0,
            kv_blocks_freed: 0,
        };
        // 10 steps of 1 ms kernels with 20 µs gaps: 98% busy.
        let mut busy = sync_then_host_work(1_000_000, 0);
        busy.api_calls.retain(|c| c.name != "cudaDeviceSynchronize");
        busy.allocations = vec![allocations(2_000)];
        let f = finding(&diagnosis(&busy), ALLOCATION_CHURN).cloned().expect("2,000 host allocations an iteration");
        assert_eq!(f.evidence[0], "2000 host allocations per iteration");
        assert!(f.evidence.get(1).is_some_and(|e| e.contains("the host paced none of them")), "{:?}", f.evidence);

        // 1 ms kernels then 5 ms of host work: the host paces the GPU, and no such line.
        let mut paced = sync_then_host_work(1_000_000, 5_000_000);
        paced.allocations = vec![allocations(2_000)];
        let f = finding(&diagnosis(&paced), ALLOCATION_CHURN).cloned().expect("2,000 host allocations an iteration");
        assert_eq!(f.evidence, ["2000 host allocations per iteration"]);
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
        assert!(THRESHOLDS.iter().any(|t| t.name == "SOL_BOUND_PERCENT" && t.value == SOL_BOUND_PERCENT));
    }
}
