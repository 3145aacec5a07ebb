//! Every diagnosis threshold at its edge. For each entry of [`THRESHOLDS`] a trace is built three
//! times, its measured figure one step below the threshold, exactly at it and one step above, the
//! step being the smallest the figure can take there (one iteration of 1,000, one nanosecond, one
//! call, 0.1 percentage points...). The pattern the threshold controls must fire on the side of
//! the comparison diagnose.rs (or sol.rs) makes and not on the other, where it is "checked, not
//! found" or, for a gate, not judged; a finding shows the measured figure in its evidence.
//!
//! The figures are derived from the constants, so the cases follow a threshold that moves, while a
//! comparison that changes (`>` for `>=`, or a threshold shifted by one step inside it) fails; a
//! threshold added to [`THRESHOLDS`] without a case here fails `every_threshold_has_an_edge_case`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use lumen_trace::model::{AllocationRow, CounterRow, ExpertLoadRow, GpuOpRow, IterationRow, RequestRow, TraceData};

use crate::diagnose::*;
use crate::gpu::GapClass;
use crate::headroom::Headroom;
use crate::sol::SOL_BOUND_PERCENT;
use crate::text::{duration, percent};
use crate::{analyze, Analysis, Options};
use lumen_test_support::rows::{api, iteration, kernel, named, span};

/// What a share is counted in: one unit is 0.1 percentage points (one iteration, kernel, sample,
/// KV block or nanosecond of 1,000).
const N: u64 = 1_000;
/// The steps of the per-step allocation case: one call more or less is 0.1 calls per step.
const STEPS: u64 = 10;
/// The batch cap of the headroom cases.
const CAP: u64 = 64;
/// The token budget of the headroom cases.
const BUDGET: u64 = 2_048;
const SECOND_NS: u64 = 1_000_000_000;

// The steps the measured figures take.
/// One of `N`: 0.1 percentage points.
const ONE_IN_N: f64 = 1.0 / N as f64;
/// One nanosecond of a 10 µs window.
const ONE_IN_10N: f64 = 1.0 / (10 * N) as f64;
/// 0.1 percentage points of a figure in %.
const TENTH: f64 = 0.1;
/// One call over `STEPS` steps.
const ONE_IN_STEPS: f64 = 1.0 / STEPS as f64;
/// One nanosecond, call or allocation.
const ONE: f64 = 1.0;

/// The comparison under which the pattern fires.
#[derive(Debug, Clone, Copy)]
enum Fires {
    /// `measured < threshold`
    Below,
    /// `measured > threshold`
    Above,
    /// `measured >= threshold`
    AtOrAbove,
}

impl Fires {
    fn holds(self, measured: f64, threshold: f64) -> bool {
        match self {
            Fires::Below => measured < threshold,
            Fires::Above => measured > threshold,
            Fires::AtOrAbove => measured >= threshold,
        }
    }
}

/// What the diagnosis says of the pattern where it does not fire.
#[derive(Clone, Copy, PartialEq)]
enum Quiet {
    /// Checked, not found.
    NotFound,
    /// Not available.
    NotAvailable,
}

impl Quiet {
    fn as_str(self) -> &'static str {
        match self {
            Quiet::NotFound => "\"checked, not found\"",
            Quiet::NotAvailable => "not available",
        }
    }
}

/// What a threshold that gates other rules opens, checked on both sides.
#[derive(Clone, Copy)]
enum Gate {
    None,
    /// The idle-time patterns (MIN_IDLE_SHARE): where the gate is open, every one the trace
    /// shows (CPU bottleneck, synchronisation gaps, launch overhead) fires; where it is shut,
    /// each is "checked, not found".
    IdlePatterns,
    /// The operators' work judging the bound (OP_WORK_COVERAGE), in a trace with neither counters
    /// nor iteration rows: where it judges, memory bound fires from the kernels' rates and compute
    /// bound is "checked, not found"; where it does not, both are not available, and the reason
    /// names the coverage.
    BoundFromOps,
}

impl Gate {
    fn check(self, d: &Diagnosis, open: bool, measured: f64, context: &str) {
        match self {
            Gate::None => {}
            Gate::IdlePatterns => {
                for pattern in [CPU_BOTTLENECK, SYNC_GAPS, LAUNCH_OVERHEAD] {
                    let fired = finding(d, pattern).is_some();
                    let fires = if fired { "fires" } else { "does not fire" };
                    assert!(fired == open, "{context}: `{pattern}` {fires} on this side of the gate; {}", summary(d));
                    assert!(
                        fired || d.not_found.contains(&pattern),
                        "{context}: `{pattern}` is not \"checked, not found\"; {}",
                        summary(d)
                    );
                }
            }
            Gate::BoundFromOps => {
                let from_ops = finding(d, MEMORY_BOUND).is_some_and(|f| f.evidence[0].starts_with("kernels: "));
                assert!(from_ops == open, "{context}: memory bound from the operators' work: {from_ops}; {}", summary(d));
                let compute = d.not_available.iter().find(|u| u.pattern == COMPUTE_BOUND).map(|u| u.reason.as_str());
                assert!(compute.is_none() == open, "{context}: compute bound judged: {}; {}", compute.is_none(), summary(d));
                let coverage = format!("operators' recorded work covers {} of the kernel time", percent(measured));
                assert!(
                    open || compute.is_some_and(|why| why.contains(&coverage)),
                    "{context}: the reason lacks {coverage:?}: {compute:?}"
                );
            }
        }
    }
}

struct Edge {
    /// The name in [`THRESHOLDS`].
    threshold: &'static str,
    /// The comparison probed, as the source writes it.
    comparison: &'static str,
    fires: Fires,
    pattern: &'static str,
    /// The smallest step the measured figure takes in this trace.
    step: f64,
    /// The trace whose measured figure sits `offset` steps from the threshold (-1, 0 or +1).
    trace: fn(i64) -> TraceData,
    /// The measured figure, computed as the rule computes it.
    measure: fn(&TraceData, &Analysis) -> f64,
    /// Text the finding's evidence holds, showing the measured figure.
    evidence: fn(f64) -> String,
    gate: Gate,
    quiet: Quiet,
}

const EDGES: &[Edge] = &[
    Edge {
        threshold: "LOW_BUSY",
        comparison: "low_utilisation: d.share < LOW_BUSY",
        fires: Fires::Below,
        pattern: LOW_UTILISATION,
        step: ONE_IN_N,
        trace: busy_window,
        measure: busy_share,
        evidence: |m| format!("device 0 busy {} of", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "HOST_WAIT_DOMINATES",
        comparison: "cpu_bottleneck: host_share <= HOST_WAIT_DOMINATES is not found",
        fires: Fires::Above,
        pattern: CPU_BOTTLENECK,
        step: ONE_IN_N,
        trace: host_wait_gaps,
        measure: host_wait_share,
        evidence: |m| format!(" = {} of ", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "MIN_IDLE_SHARE",
        comparison: "cpu_bottleneck, sync_gaps, launch_overhead: idle share <= MIN_IDLE_SHARE is not found",
        fires: Fires::Above,
        pattern: CPU_BOTTLENECK,
        step: ONE_IN_10N,
        trace: idle_window,
        measure: idle_share,
        evidence: |m| format!("idle is {} of the", percent(m)),
        gate: Gate::IdlePatterns,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "SOL_BOUND_PERCENT",
        comparison: "sol.rs Bound::judge: dram.max(compute) < SOL_BOUND_PERCENT is latency bound, else dram >= compute is memory bound",
        fires: Fires::AtOrAbove,
        pattern: MEMORY_BOUND,
        step: TENTH,
        trace: dram_sample,
        measure: dram_percent,
        evidence: |m| format!("device 0: DRAM {}% of peak", tenths(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "BATCH_CAP_SHARE",
        comparison: "batch_size: at_cap < BATCH_CAP_SHARE is not found",
        fires: Fires::AtOrAbove,
        pattern: BATCH_SIZE,
        step: ONE_IN_N,
        trace: batch_at_cap,
        measure: at_batch_cap,
        evidence: |m| format!("the batch is at its cap of {CAP} in {} of {N} steady iterations", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "KV_LOW",
        comparison: "batch_size: kv_peak >= KV_LOW is not found",
        fires: Fires::Below,
        pattern: BATCH_SIZE,
        step: ONE_IN_N,
        trace: kv_low_at_cap,
        measure: kv_peak,
        evidence: |m| format!("the KV cache peaks at {} used", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "KV_LOW",
        comparison: "concurrency: kv_peak >= KV_LOW is not found",
        fires: Fires::Below,
        pattern: CONCURRENCY,
        step: ONE_IN_N,
        trace: kv_low_few_requests,
        measure: kv_peak,
        evidence: |m| format!("the KV cache peaks at {}: the client sends too few", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "TOKEN_BUDGET_SHARE",
        comparison: "token_budget: full < TOKEN_BUDGET_SHARE is not found",
        fires: Fires::AtOrAbove,
        pattern: TOKEN_BUDGET,
        step: ONE_IN_N,
        trace: budget_full,
        measure: at_token_budget,
        evidence: |m| format!("the iteration's tokens fill the budget of {BUDGET} in {} of iterations", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "QUEUED_SHARE",
        comparison: "token_budget: queued < QUEUED_SHARE is not found",
        fires: Fires::AtOrAbove,
        pattern: TOKEN_BUDGET,
        step: ONE_IN_N,
        trace: queued_at_budget,
        measure: queued,
        evidence: |m| format!("requests wait in {} of iterations: prefill is rationed", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "QUEUED_SHARE",
        comparison: "kv_cache_full: queued < QUEUED_SHARE is not found",
        fires: Fires::AtOrAbove,
        pattern: KV_CACHE_FULL,
        step: ONE_IN_N,
        trace: queued_kv_full,
        measure: queued,
        evidence: |m| format!("requests wait in {} of iterations while the KV cache peaks", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "KV_FULL",
        comparison: "kv_cache_full: kv_peak <= KV_FULL is not found",
        fires: Fires::Above,
        pattern: KV_CACHE_FULL,
        step: ONE_IN_N,
        trace: kv_full_queued,
        measure: kv_peak,
        evidence: |m| format!("while the KV cache peaks at {} and the batch is below its cap", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "CONCURRENCY_BATCH_SHARE",
        comparison: "concurrency: median_batch >= CONCURRENCY_BATCH_SHARE * cap is not found",
        fires: Fires::Below,
        pattern: CONCURRENCY,
        step: ONE_IN_N,
        trace: batch_of_cap,
        measure: median_batch_of_cap,
        evidence: |m| format!("the median batch is {} of a cap of {N}", whole(m * N as f64)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "SMALL_BATCH_TENSOR_PERCENT",
        comparison: "small_batch: gemm.tensor_percent < SMALL_BATCH_TENSOR_PERCENT is starved",
        fires: Fires::Below,
        pattern: SMALL_BATCH,
        step: TENTH,
        trace: gemm_tensor_sample,
        measure: gemm_tensor_percent,
        evidence: |m| format!("(read + write), tensor {}%", tenths(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "SMALL_BATCH_GEMM_SHARE",
        comparison: "small_batch: share(gemm.samples, total) < SMALL_BATCH_GEMM_SHARE is not found",
        fires: Fires::AtOrAbove,
        pattern: SMALL_BATCH,
        step: ONE_IN_N,
        trace: gemm_and_elementwise_samples,
        measure: gemm_sample_share,
        evidence: |m| format!("{} of the busy samples", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "OP_WORK_COVERAGE",
        comparison: "bound: judged_ops needs all.coverage >= OP_WORK_COVERAGE",
        fires: Fires::AtOrAbove,
        pattern: MEMORY_BOUND,
        step: ONE_IN_N,
        trace: operator_covering_kernel_time,
        measure: op_work_coverage,
        evidence: |m| format!("({} of it covered)", percent(m)),
        gate: Gate::BoundFromOps,
        quiet: Quiet::NotAvailable,
    },
    Edge {
        threshold: "SHORT_KERNEL_NS",
        comparison: "launch_overhead: is_short is duration < SHORT_KERNEL_NS",
        fires: Fires::Below,
        pattern: LAUNCH_OVERHEAD,
        step: ONE,
        trace: kernels_near_short,
        measure: kernel_length,
        evidence: |_| format!("100.0% of 10 kernels run under {}", duration(SHORT_KERNEL_NS as f64)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "SHORT_KERNEL_SHARE",
        comparison: "launch_overhead: short_share <= SHORT_KERNEL_SHARE is not found",
        fires: Fires::Above,
        pattern: LAUNCH_OVERHEAD,
        step: ONE_IN_N,
        trace: short_and_long_kernels,
        measure: short_kernel_share,
        evidence: |m| format!("{} of {N} kernels run under", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "SHORTER_THAN_LAUNCH_SHARE",
        comparison: "launch_overhead: launch_bound needs shorter_than_launch > SHORTER_THAN_LAUNCH_SHARE (no launch gaps here)",
        fires: Fires::Above,
        pattern: LAUNCH_OVERHEAD,
        step: ONE_IN_N,
        trace: kernels_and_launch_calls,
        measure: shorter_than_launch_share,
        evidence: |m| format!("{} of kernels are shorter than their launch call", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "EAGER_KERNEL_SHARE",
        comparison: "launch_overhead: eager_share <= EAGER_KERNEL_SHARE is not found",
        fires: Fires::Above,
        pattern: LAUNCH_OVERHEAD,
        step: ONE_IN_N,
        trace: eager_and_graph_kernels,
        measure: eager_share,
        evidence: |m| format!("{} of kernels are launched eagerly (no CUDA graph)", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "SYNC_WAIT_SHARE",
        comparison: "sync_gaps: sync_share <= SYNC_WAIT_SHARE is not found",
        fires: Fires::Above,
        pattern: SYNC_GAPS,
        step: ONE_IN_N,
        trace: sync_wait_gaps,
        measure: sync_wait_share,
        evidence: |m| format!("after them: {} of ", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "ALLOC_CALLS_PER_STEP",
        comparison: "allocation_churn: rate > ALLOC_CALLS_PER_STEP per steady step",
        fires: Fires::Above,
        pattern: ALLOCATION_CHURN,
        step: ONE_IN_STEPS,
        trace: alloc_calls_in_steps,
        measure: alloc_calls_per_step,
        evidence: |m| format!("{} CUDA alloc/free calls per steady step", tenths(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "ALLOC_CALLS_PER_SECOND",
        comparison: "allocation_churn: rate > ALLOC_CALLS_PER_SECOND per second, without steps",
        fires: Fires::Above,
        pattern: ALLOCATION_CHURN,
        step: ONE,
        trace: alloc_calls_in_a_second,
        measure: alloc_calls_per_second,
        evidence: |m| format!("{} CUDA alloc/free calls per second (the trace has no steps)", tenths(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "HOST_ALLOCS_PER_ITERATION",
        comparison: "allocation_churn: host allocations per iteration > HOST_ALLOCS_PER_ITERATION",
        fires: Fires::Above,
        pattern: ALLOCATION_CHURN,
        step: ONE,
        trace: host_allocations,
        measure: host_allocs_per_iteration,
        evidence: |m| format!("{} host allocations per iteration", whole(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "COMM_EXPOSED_SHARE",
        comparison: "communication_bound: i.median_exposed_share < COMM_EXPOSED_SHARE is not found",
        fires: Fires::AtOrAbove,
        pattern: COMMUNICATION_BOUND,
        step: ONE_IN_N,
        trace: exposed_collectives,
        measure: |_, a| a.collectives.get().expect("collectives").iterations.get().expect("iterations").median_exposed_share,
        evidence: |m| format!("spends {} of its wall time in exposed collectives", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "SLOW_CLASS_SHARE",
        comparison: "slow_class: c.share >= SLOW_CLASS_SHARE",
        fires: Fires::AtOrAbove,
        pattern: SLOW_CLASS,
        step: ONE_IN_N,
        trace: attention_share_of_kernel_time,
        measure: |_, a| attention_work(a).share,
        evidence: |m| format!("attention kernels: {} of the kernel time", percent(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "SLOW_CLASS_PERCENT",
        comparison: "slow_class: nearest(c) < SLOW_CLASS_PERCENT",
        fires: Fires::Below,
        pattern: SLOW_CLASS,
        step: TENTH,
        trace: attention_at_a_share_of_its_ceiling,
        measure: |_, a| attention_work(a).tensor_percent.expect("peaks"),
        evidence: |m| format!("TFLOP/s ({}% of peak)", tenths(m)),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
    Edge {
        threshold: "MOE_IMBALANCE_MAX_OVER_BALANCED",
        comparison: "moe_imbalance: m.max_over_balanced < MOE_IMBALANCE_MAX_OVER_BALANCED is not found",
        fires: Fires::AtOrAbove,
        pattern: MOE_IMBALANCE,
        step: ONE_IN_N,
        trace: expert_loads,
        measure: |_, a| a.moe.get().expect("expert loads").max_over_balanced,
        evidence: |m| format!("takes {m:.3}× a balanced spread's busiest load"),
        gate: Gate::None,
        quiet: Quiet::NotFound,
    },
];

/// The count that makes exactly `t` over `whole` (checked), moved by `offset`.
fn count_at(t: f64, whole: u64, offset: i64) -> u64 {
    let count = (t * whole as f64).round();
    assert_eq!(count / whole as f64, t, "{t} is no whole count over {whole}: count this edge in finer units");
    (count as u64).checked_add_signed(offset).expect("a count below zero")
}

fn finding<'a>(d: &'a Diagnosis, pattern: &str) -> Option<&'a Finding> {
    d.findings.iter().find(|f| f.pattern == pattern)
}

fn summary(d: &Diagnosis) -> String {
    let found: Vec<_> = d.findings.iter().map(|f| f.pattern).collect();
    let unavailable: Vec<_> = d.not_available.iter().map(|u| u.pattern).collect();
    format!("found {found:?}, not found {:?}, not available {unavailable:?}", d.not_found)
}

/// A figure with one decimal, and a whole one, as the evidence prints them.
fn tenths(m: f64) -> String {
    format!("{m:.1}")
}

fn whole(m: f64) -> String {
    format!("{m:.0}")
}

/// One edge case on its three sides; the figures used, as a line.
fn check(edge: &Edge) -> String {
    let threshold = THRESHOLDS.iter().find(|t| t.name == edge.threshold).expect("a name in THRESHOLDS").value;
    let mut sides = Vec::new();
    for offset in [-1, 0, 1] {
        let trace = (edge.trace)(offset);
        let a = analyze(&trace, &Options::default()).expect("analysis");
        let measured = (edge.measure)(&trace, &a);
        let side = ["one step below", "at", "one step above"][(offset + 1) as usize];
        let context =
            format!("{} [{}] {side} the threshold {threshold} (`{}`): measured {measured}", edge.threshold, edge.pattern, edge.comparison);
        if offset == 0 {
            assert_eq!(measured, threshold, "{context}: the trace misses the threshold");
        } else {
            let from = measured - threshold;
            assert!(
                from * offset as f64 > 0.0 && from.abs() <= edge.step * (1.0 + 1e-9),
                "{context}: not one step of {} from it",
                edge.step
            );
        }
        let fires = edge.fires.holds(measured, threshold);
        let d = &a.diagnosis;
        match (fires, finding(d, edge.pattern)) {
            (true, Some(f)) => {
                let want = (edge.evidence)(measured);
                assert!(f.evidence.iter().any(|e| e.contains(&want)), "{context}: the evidence lacks {want:?}: {:?}", f.evidence);
            }
            (true, None) => panic!("{context}: `{}` should fire and does not; {}", edge.pattern, summary(d)),
            (false, Some(f)) => panic!("{context}: `{}` should not fire and does: {:?}", edge.pattern, f.evidence),
            (false, None) => {
                let quiet = if d.not_found.contains(&edge.pattern) { Quiet::NotFound } else { Quiet::NotAvailable };
                let available = d.not_available.iter().any(|u| u.pattern == edge.pattern);
                assert!(
                    quiet == edge.quiet && (quiet == Quiet::NotFound) != available,
                    "{context}: `{}` is not {}; {}",
                    edge.pattern,
                    edge.quiet.as_str(),
                    summary(d)
                );
            }
        }
        edge.gate.check(d, fires, measured, &context);
        sides.push(format!("{measured}{}", if fires { " fires" } else { "" }));
    }
    format!("{:<26} {:<40} {}", edge.threshold, edge.pattern, sides.join(" | "))
}

#[test]
fn every_threshold_fires_on_its_side_of_the_edge_and_not_on_the_other() {
    let mut failures = Vec::new();
    for edge in EDGES {
        match catch_unwind(AssertUnwindSafe(|| check(edge))) {
            Ok(line) => println!("{line}"),
            Err(panic) => failures.push(
                panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default(),
            ),
        }
    }
    assert!(failures.is_empty(), "{} of {} edge cases failed:\n{}", failures.len(), EDGES.len(), failures.join("\n"));
}

#[test]
fn every_threshold_has_an_edge_case() {
    let missing: Vec<&str> = THRESHOLDS.iter().map(|t| t.name).filter(|name| !EDGES.iter().any(|e| e.threshold == *name)).collect();
    assert!(missing.is_empty(), "thresholds without an edge case in threshold_edges.rs: {missing:?}");
    let unknown: Vec<&str> = EDGES.iter().map(|e| e.threshold).filter(|name| !THRESHOLDS.iter().any(|t| t.name == *name)).collect();
    assert!(unknown.is_empty(), "edge cases for names not in THRESHOLDS: {unknown:?}");
}

// The traces, each with the figure it is measured by.

/// Two kernels in a 1 µs window, busy `LOW_BUSY` of it moved by `offset` ns.
fn busy_window(offset: i64) -> TraceData {
    let busy = count_at(LOW_BUSY, N, offset);
    TraceData { gpu_ops: vec![kernel(0, busy - 1, 1), kernel(N - 1, N, 2)], ..TraceData::default() }
}

fn busy_share(_: &TraceData, a: &Analysis) -> f64 {
    a.gpu.get().expect("GPU ops")[0].busy_share
}

/// Three 100 ns kernels with `sync_ns` of idle inside a cudaDeviceSynchronize between the first
/// two and `host_ns` of idle with nothing launched between the last two.
fn sync_then_host_gap(sync_ns: u64, host_ns: u64) -> TraceData {
    let second = 100 + sync_ns;
    let third = second + 100 + host_ns;
    TraceData {
        gpu_ops: vec![kernel(0, 100, 1), kernel(second, second + 100, 2), kernel(third, third + 100, 3)],
        api_calls: vec![api("cudaDeviceSynchronize", 100, second, 100)],
        ..TraceData::default()
    }
}

/// The share of the idle time of one class.
fn gap_share(a: &Analysis, class: GapClass) -> f64 {
    let gaps = a.gaps.get().expect("GPU ops");
    let part: u64 = gaps.iter().flat_map(|g| &g.classes).filter(|c| c.class == class).map(|c| c.total_ns).sum();
    part as f64 / gaps.iter().map(|g| g.total_ns).sum::<u64>() as f64
}

/// 1 µs of idle, `HOST_WAIT_DOMINATES` of it (moved by `offset` ns) host wait, the rest sync wait.
fn host_wait_gaps(offset: i64) -> TraceData {
    let host = count_at(HOST_WAIT_DOMINATES, N, offset);
    sync_then_host_gap(N - host, host)
}

fn host_wait_share(_: &TraceData, a: &Analysis) -> f64 {
    gap_share(a, GapClass::HostWait)
}

/// 1 µs of idle, `SYNC_WAIT_SHARE` of it (moved by `offset` ns) sync wait, the rest host wait.
fn sync_wait_gaps(offset: i64) -> TraceData {
    let sync = count_at(SYNC_WAIT_SHARE, N, offset);
    sync_then_host_gap(sync, N - sync)
}

fn sync_wait_share(_: &TraceData, a: &Analysis) -> f64 {
    gap_share(a, GapClass::SyncWait)
}

/// Three short eager kernels, each shorter than its launch call, in a 10 µs window idle
/// `MIN_IDLE_SHARE` of it moved by `offset` ns: 40% of the idle inside a synchronise, the rest
/// host wait (each launch call starts when the kernel before it ends). Above the gate the CPU
/// bottleneck, synchronisation gaps and launch overhead all hold.
fn idle_window(offset: i64) -> TraceData {
    let window = 10 * N;
    let idle = count_at(MIN_IDLE_SHARE, window, offset);
    let sync = count_at(MIN_IDLE_SHARE, window, 0) * 2 / 5;
    let host = idle - sync;
    let each = (window - idle) / 3;
    let last = window - idle - 2 * each;
    let first = 100_000;
    let second = first + each + sync;
    let third = second + each + host;
    TraceData {
        gpu_ops: vec![kernel(first, first + each, 1), kernel(second, second + each, 2), kernel(third, third + last, 3)],
        api_calls: vec![
            api("cudaLaunchKernel", first - 2 * each, first - each + 1, 1),
            api("cudaLaunchKernel", first + each, first + 2 * each + 1, 2),
            api("cudaDeviceSynchronize", first + each, second, 100),
            api("cudaLaunchKernel", second + each, second + each + last + 1, 3),
        ],
        ..TraceData::default()
    }
}

fn idle_share(_: &TraceData, a: &Analysis) -> f64 {
    let device = &a.gpu.get().expect("GPU ops")[0];
    device.idle_ns as f64 / (device.end_ns - device.start_ns) as f64
}

/// Three counter rows at one instant on device 0: SM active, DRAM read and tensor active, %.
fn sample(ts_ns: u64, dram: f64, tensor: f64) -> impl Iterator<Item = CounterRow> {
    [("sm active %", 90.0), ("dram read %", dram), ("tensor active %", tensor)].into_iter().map(move |(name, value)| CounterRow {
        ts_ns,
        name: name.into(),
        device: Some(0),
        value,
    })
}

/// One busy counter sample inside a 1 µs kernel named `name`.
fn one_sample(name: &str, dram: f64, tensor: f64) -> TraceData {
    TraceData { counters: sample(100, dram, tensor).collect(), gpu_ops: vec![named(name, 0, 1_000, 1)], ..TraceData::default() }
}

/// An elementwise kernel with DRAM at `SOL_BOUND_PERCENT` moved by `offset` tenths of a point.
fn dram_sample(offset: i64) -> TraceData {
    one_sample("vectorized_elementwise_kernel", SOL_BOUND_PERCENT + TENTH * offset as f64, 0.0)
}

fn dram_percent(_: &TraceData, a: &Analysis) -> f64 {
    a.speed_of_light.devices.get().expect("counter samples")[0].dram_percent
}

/// A DRAM use halfway between the bound threshold and the peak.
fn memory_bound_dram() -> f64 {
    (SOL_BOUND_PERCENT + 100.0) / 2.0
}

fn gemm_class(a: &Analysis) -> &crate::sol::UnitUse {
    a.speed_of_light.classes.iter().find(|c| c.name == "gemm").expect("a gemm class")
}

/// A memory-bound GEMM with the tensor pipe at `SMALL_BATCH_TENSOR_PERCENT` moved by `offset`
/// tenths of a point.
fn gemm_tensor_sample(offset: i64) -> TraceData {
    one_sample("gemvx_kernel", memory_bound_dram(), SMALL_BATCH_TENSOR_PERCENT + TENTH * offset as f64)
}

fn gemm_tensor_percent(_: &TraceData, a: &Analysis) -> f64 {
    gemm_class(a).tensor_percent.expect("tensor samples")
}

/// `N` busy samples 100 ns apart, memory bound with the tensor pipe nearly idle: the first
/// `SMALL_BATCH_GEMM_SHARE` of them (moved by `offset` samples) while a GEMM runs, the rest while
/// an elementwise kernel does. A sample belongs to the kernel running at its middle.
fn gemm_and_elementwise_samples(offset: i64) -> TraceData {
    let gemm = count_at(SMALL_BATCH_GEMM_SHARE, N, offset);
    let tensor = SMALL_BATCH_TENSOR_PERCENT / 10.0;
    TraceData {
        counters: (1..=N).flat_map(|i| sample(100 * i, memory_bound_dram(), tensor)).collect(),
        gpu_ops: vec![named("gemvx_kernel", 0, 100 * gemm, 1), named("vectorized_elementwise_kernel", 100 * gemm + 1, 100 * (N + 1), 2)],
        ..TraceData::default()
    }
}

fn gemm_sample_share(_: &TraceData, a: &Analysis) -> f64 {
    let total: usize = a.speed_of_light.devices.get().expect("counter samples").iter().map(|d| d.samples).sum();
    gemm_class(a).samples as f64 / total as f64
}

/// An imported torch.profiler trace on an H200: an operator that recorded 4 MB of traffic
/// launched one kernel of `OP_WORK_COVERAGE` of the kernel time (moved by `offset` ns), far above
/// the DRAM peak; a second kernel, launched outside any operator, has no recorded work.
fn operator_covering_kernel_time(offset: i64) -> TraceData {
    let covered = count_at(OP_WORK_COVERAGE, N, offset);
    let mut operator = span(0, 1_000, 1, "aten::add", "cpu_op");
    operator.args = Some("{\"flops\":0,\"bytes\":4000000}".into());
    TraceData {
        meta: vec![("gpu".into(), "NVIDIA H200".into())],
        spans: vec![operator],
        api_calls: vec![api("cudaLaunchKernel", 100, 200, 1), api("cudaLaunchKernel", 2_000, 2_100, 2)],
        gpu_ops: vec![
            named("vectorized_elementwise_kernel", 10_000, 10_000 + covered, 1),
            named("vectorized_elementwise_kernel", 20_000, 20_000 + N - covered, 2),
        ],
        ..TraceData::default()
    }
}

fn op_work_coverage(_: &TraceData, a: &Analysis) -> f64 {
    a.speed_of_light.ops.get().expect("operators' work")[0].coverage
}

/// `N` engine iterations of 1 ms, each a decode batch of 32 with 18 of `N` KV blocks used and
/// nothing waiting, `meta` as the limits; `edit` changes row `i`.
fn engine(meta: &[(&str, u64)], edit: impl Fn(u64, &mut IterationRow)) -> TraceData {
    let row = |i: u64| {
        let mut row = IterationRow {
            ctx_reqs: 0,
            gen_reqs: 32,
            ctx_tokens: 0,
            gen_tokens: 32,
            kv_used_blocks: 18,
            kv_total_blocks: N,
            queued_reqs: Some(0),
            ..iteration(i, i * 1_000_000, (i + 1) * 1_000_000, 1.0)
        };
        edit(i, &mut row);
        row
    };
    TraceData {
        meta: meta.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect(),
        iterations: (0..N).map(row).collect(),
        ..TraceData::default()
    }
}

fn headroom(a: &Analysis) -> &Headroom {
    a.headroom.get().expect("headroom")
}

/// Finished requests of one 16-token KV block each, which size the suggested batch.
fn with_request_lengths(mut trace: TraceData) -> TraceData {
    trace.meta.push(("kv_block_size".into(), "16".into()));
    trace.requests = vec![RequestRow { id: 1, arrival_ns: 0, first_token_ns: Some(10), end_ns: 20, input_len: 8, output_len: 8 }];
    trace
}

/// The first `BATCH_CAP_SHARE` of the iterations (moved by `offset`) at the cap, the rest one
/// request below it, the KV cache nearly empty.
fn batch_at_cap(offset: i64) -> TraceData {
    let capped = count_at(BATCH_CAP_SHARE, N, offset);
    with_request_lengths(engine(&[("max_batch_size", CAP)], |i, r| {
        let batch = if i < capped { CAP } else { CAP - 1 };
        (r.gen_reqs, r.gen_tokens) = (batch, batch);
    }))
}

fn at_batch_cap(_: &TraceData, a: &Analysis) -> f64 {
    headroom(a).at_batch_cap.expect("max_batch_size in meta")
}

/// Engine iterations of `batch` requests with `queued` waiting, the KV cache at its peak in the
/// first: `t` of its blocks, moved by `offset` blocks.
fn kv_peak_at(t: f64, offset: i64, meta: &[(&str, u64)], batch: u64, queued: u64) -> TraceData {
    let peak = count_at(t, N, offset);
    engine(meta, |i, r| {
        (r.gen_reqs, r.gen_tokens, r.queued_reqs) = (batch, batch, Some(queued));
        if i == 0 {
            r.kv_used_blocks = peak;
        }
    })
}

fn kv_peak(_: &TraceData, a: &Analysis) -> f64 {
    headroom(a).kv_peak.expect("KV blocks")
}

/// Every iteration at the cap, the KV cache peaking at `KV_LOW` (moved by `offset` blocks). The
/// requests' lengths size the suggestion: from the fullest row alone, a KV cache near half full
/// holds less than twice the cap and nothing would be suggested.
fn kv_low_at_cap(offset: i64) -> TraceData {
    with_request_lengths(kv_peak_at(KV_LOW, offset, &[("max_batch_size", CAP)], CAP, 0))
}

/// An eighth of the cap in every iteration with nothing waiting, the KV cache peaking at `KV_LOW`
/// (moved by `offset` blocks).
fn kv_low_few_requests(offset: i64) -> TraceData {
    kv_peak_at(KV_LOW, offset, &[("max_batch_size", CAP)], CAP / 8, 0)
}

/// Requests waiting in every iteration, no batch cap, the KV cache peaking at `KV_FULL` (moved by
/// `offset` blocks).
fn kv_full_queued(offset: i64) -> TraceData {
    kv_peak_at(KV_FULL, offset, &[], 32, 5)
}

/// Iterations with prompts beside decodes: the first `full` fill the token budget, the others
/// one token short; requests wait in the first `waiting`.
fn budget_run(full: u64, waiting: u64) -> TraceData {
    engine(&[("max_num_tokens", BUDGET)], |i, r| {
        let tokens = if i < full { BUDGET } else { BUDGET - 1 };
        (r.ctx_reqs, r.ctx_tokens, r.gen_reqs, r.gen_tokens) = (16, tokens - 32, 32, 32);
        r.queued_reqs = Some(if i < waiting { 5 } else { 0 });
    })
}

/// The budget full in `TOKEN_BUDGET_SHARE` of the iterations (moved by `offset`), requests
/// waiting in all.
fn budget_full(offset: i64) -> TraceData {
    budget_run(count_at(TOKEN_BUDGET_SHARE, N, offset), N)
}

fn at_token_budget(_: &TraceData, a: &Analysis) -> f64 {
    headroom(a).at_token_budget.expect("max_num_tokens in meta")
}

/// The budget full in every iteration, requests waiting in `QUEUED_SHARE` of them (moved by
/// `offset`).
fn queued_at_budget(offset: i64) -> TraceData {
    budget_run(N, count_at(QUEUED_SHARE, N, offset))
}

fn queued(_: &TraceData, a: &Analysis) -> f64 {
    headroom(a).queued.expect("queued requests")
}

/// The KV cache full, no batch cap, requests waiting in `QUEUED_SHARE` of the iterations (moved
/// by `offset`).
fn queued_kv_full(offset: i64) -> TraceData {
    let waiting = count_at(QUEUED_SHARE, N, offset);
    engine(&[], |i, r| {
        r.queued_reqs = Some(if i < waiting { 5 } else { 0 });
        r.kv_used_blocks = N;
    })
}

/// A cap of `N`, every batch `CONCURRENCY_BATCH_SHARE` of it moved by `offset` requests, nothing
/// waiting, the KV cache nearly empty.
fn batch_of_cap(offset: i64) -> TraceData {
    let batch = count_at(CONCURRENCY_BATCH_SHARE, N, offset);
    engine(&[("max_batch_size", N)], |_, r| (r.gen_reqs, r.gen_tokens) = (batch, batch))
}

fn median_batch_of_cap(_: &TraceData, a: &Analysis) -> f64 {
    let h = headroom(a);
    h.median_batch / h.max_batch_size.expect("max_batch_size in meta") as f64
}

/// Kernels of the given lengths and graph ids, each 5 µs after the one before, each launched by a
/// 1 µs call that began before that gap: every gap is a launch gap.
fn launch_gaps(kernels: impl Iterator<Item = (u64, Option<u64>)>) -> TraceData {
    let mut trace = TraceData::default();
    let mut start = 10_000;
    for (i, (length, graph_id)) in (1..).zip(kernels) {
        trace.gpu_ops.push(GpuOpRow { graph_id, ..kernel(start, start + length, i) });
        trace.api_calls.push(api("cuLaunchKernel", start - 6_000, start - 5_000, i));
        start += length + 5_000;
    }
    trace
}

fn share_of_kernels(trace: &TraceData, pred: impl Fn(&GpuOpRow) -> bool) -> f64 {
    trace.gpu_ops.iter().filter(|k| pred(k)).count() as f64 / trace.gpu_ops.len() as f64
}

/// Ten eager kernels of `SHORT_KERNEL_NS` moved by `offset` ns, with launch gaps.
fn kernels_near_short(offset: i64) -> TraceData {
    let length = SHORT_KERNEL_NS.checked_add_signed(offset).expect("a kernel length");
    launch_gaps((0..10).map(|_| (length, None)))
}

fn kernel_length(_: &TraceData, a: &Analysis) -> f64 {
    let top = &a.kernels.get().expect("kernels").top[0];
    assert_eq!(top.min_ns, top.max_ns, "one kernel length");
    top.max_ns as f64
}

/// `N` eager kernels with launch gaps, the first `SHORT_KERNEL_SHARE` of them (moved by `offset`)
/// short, the rest twice `SHORT_KERNEL_NS`.
fn short_and_long_kernels(offset: i64) -> TraceData {
    let short = count_at(SHORT_KERNEL_SHARE, N, offset);
    launch_gaps((0..N).map(|i| (if i < short { SHORT_KERNEL_NS / 5 } else { 2 * SHORT_KERNEL_NS }, None)))
}

fn short_kernel_share(trace: &TraceData, _: &Analysis) -> f64 {
    share_of_kernels(trace, |k| k.end_ns - k.start_ns < SHORT_KERNEL_NS)
}

/// `N` short kernels with launch gaps, the first `EAGER_KERNEL_SHARE` of them (moved by `offset`)
/// eager, the rest replayed from a graph.
fn eager_and_graph_kernels(offset: i64) -> TraceData {
    let eager = count_at(EAGER_KERNEL_SHARE, N, offset);
    launch_gaps((0..N).map(|i| (SHORT_KERNEL_NS / 5, (i >= eager).then_some(1))))
}

fn eager_share(trace: &TraceData, _: &Analysis) -> f64 {
    share_of_kernels(trace, |k| k.graph_id.is_none())
}

/// `N` short eager kernels, one every five kernel lengths, each launched by a call that starts
/// after the kernel before it ended (host waits, no launch gaps); the first
/// `SHORTER_THAN_LAUNCH_SHARE` of them (moved by `offset` kernels) have a call longer than they
/// are, the rest a shorter one.
fn kernels_and_launch_calls(offset: i64) -> TraceData {
    let longer = count_at(SHORTER_THAN_LAUNCH_SHARE, N, offset);
    let length = SHORT_KERNEL_NS / 5;
    let mut trace = TraceData::default();
    for i in 1..=N {
        let period = 5 * length * i;
        let call = if i <= longer { 3 * length / 2 } else { length / 2 };
        trace.gpu_ops.push(kernel(period + 2 * length, period + 3 * length, i));
        trace.api_calls.push(api("cudaLaunchKernel", period + length / 2, period + length / 2 + call, i));
    }
    trace
}

fn shorter_than_launch_share(_: &TraceData, a: &Analysis) -> f64 {
    a.kernels.get().and_then(|k| k.shorter_than_launch.get()).expect("launch calls").share
}

fn alloc_calls(trace: &TraceData) -> usize {
    trace.api_calls.iter().filter(|c| c.name.starts_with("cudaMalloc") || c.name.starts_with("cudaFree")).count()
}

/// `STEPS` ProfilerStep ranges of 100 µs, each with a 50 µs kernel, and `ALLOC_CALLS_PER_STEP`
/// CUDA alloc and free calls per step in all (moved by `offset` calls), dealt round the steps.
fn alloc_calls_in_steps(offset: i64) -> TraceData {
    let calls = count_at(ALLOC_CALLS_PER_STEP, STEPS, offset);
    let step = |n: u64| n * 100_000;
    let mut trace = TraceData {
        spans: (0..STEPS).map(|n| span(step(n), step(n + 1), 1, &format!("ProfilerStep#{n}"), "user_annotation")).collect(),
        gpu_ops: (0..STEPS).map(|n| kernel(step(n) + 10_000, step(n) + 60_000, n + 1)).collect(),
        ..TraceData::default()
    };
    for j in 0..calls {
        let at = step(j % STEPS) + 1_000 * (j / STEPS + 1);
        trace.api_calls.push(api(if j % 2 == 0 { "cudaMalloc" } else { "cudaFree" }, at, at + 100, 1_000 + j));
    }
    trace
}

fn alloc_calls_per_step(trace: &TraceData, a: &Analysis) -> f64 {
    alloc_calls(trace) as f64 / a.steps.get().expect("steps").steady as f64
}

/// No steps: `ALLOC_CALLS_PER_SECOND` cudaMalloc calls (moved by `offset`) among API calls that
/// span exactly one second.
fn alloc_calls_in_a_second(offset: i64) -> TraceData {
    let calls = count_at(ALLOC_CALLS_PER_SECOND, 1, offset);
    let mut api_calls: Vec<_> = (0..calls).map(|i| api("cudaMalloc", i * 1_000, i * 1_000 + 100, i + 1)).collect();
    api_calls.push(api("cudaLaunchKernel", SECOND_NS - 100, SECOND_NS, 0));
    TraceData { api_calls, ..TraceData::default() }
}

fn alloc_calls_per_second(trace: &TraceData, _: &Analysis) -> f64 {
    let first = trace.api_calls.iter().map(|c| c.start_ns).min().expect("API calls");
    let last = trace.api_calls.iter().map(|c| c.end_ns).max().expect("API calls");
    alloc_calls(trace) as f64 / ((last - first) as f64 / 1e9)
}

/// Two devices, one iteration of `N` ns: each computes, then all-reduces for the last
/// `COMM_EXPOSED_SHARE` of the iteration moved by `offset` ns, with nothing overlapping it.
fn exposed_collectives(offset: i64) -> TraceData {
    let comm = count_at(COMM_EXPOSED_SHARE, N, offset);
    let kernels = |device: u32, correlation: u64| {
        [
            GpuOpRow { device, ..named("gemm_kernel", 0, N - comm, correlation) },
            GpuOpRow { device, ..named("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", N - comm, N, correlation + 1) },
        ]
    };
    let gpu_ops = kernels(0, 1).into_iter().chain(kernels(1, 3)).collect();
    TraceData { gpu_ops, iterations: vec![iteration(0, 0, N, N as f64 / 1e6)], ..TraceData::default() }
}

/// Four iterations of one MoE layer of two experts with 2 · `N` assignments each, the busiest
/// expert `MOE_IMBALANCE_MAX_OVER_BALANCED` times the mean moved by `offset` thousandths.
fn expert_loads(offset: i64) -> TraceData {
    let busiest = count_at(MOE_IMBALANCE_MAX_OVER_BALANCED, N, offset);
    let row = |iteration| ExpertLoadRow { iteration, layer: 0, tokens: vec![busiest, 2 * N - busiest] };
    TraceData { expert_loads: (0..4).map(row).collect(), ..TraceData::default() }
}

/// Four iterations' allocation rows, each `HOST_ALLOCS_PER_ITERATION` host allocations moved by
/// `offset`, and no API calls: the host rows alone decide.
fn host_allocations(offset: i64) -> TraceData {
    let count = count_at(HOST_ALLOCS_PER_ITERATION, 1, offset);
    let row = |iteration| AllocationRow { iteration, count, bytes: 64 * count, frees: count, kv_blocks_allocated: 0, kv_blocks_freed: 0 };
    TraceData { allocations: (0..4).map(row).collect(), ..TraceData::default() }
}

fn host_allocs_per_iteration(_: &TraceData, a: &Analysis) -> f64 {
    let h = a.memory.host_allocations.get().expect("allocation rows");
    h.count as f64 / h.iterations as f64
}

/// One engine iteration of 1 ms on an H200 (datasheet peaks) whose kernels fill it: an attention
/// kernel of `attention_ns` at `attention_percent` of the BF16 tensor peak, a GEMM of 400 µs at
/// the peak, and an element-wise kernel (work the rows do not count) for the rest. Neither reads
/// memory.
fn attention_beside_products(attention_ns: u64, attention_percent: f64) -> TraceData {
    const END: u64 = 1_000_000;
    const GEMM_NS: u64 = 400_000;
    let at_peak = |percent: f64, ns: u64| percent / 100.0 * (989.0 * 1e12) * (ns as f64 / 1e9);
    let attention_flops = at_peak(attention_percent, attention_ns);
    let row = IterationRow {
        weight_bytes: Some(0),
        kv_bytes_read: Some(0),
        flops: Some(attention_flops + at_peak(100.0, GEMM_NS)),
        attention_flops: Some(attention_flops),
        ..iteration(0, 0, END, 1.0)
    };
    TraceData {
        meta: vec![("gpu".into(), "NVIDIA H200".into())],
        iterations: vec![row],
        gpu_ops: vec![
            named("attention_prefill_hd128", 0, attention_ns, 1),
            named("gemm_kernel", attention_ns, attention_ns + GEMM_NS, 2),
            named("vectorized_elementwise_kernel", attention_ns + GEMM_NS, END, 3),
        ],
        ..TraceData::default()
    }
}

fn attention_work(a: &Analysis) -> &crate::sol::ClassWork {
    let classes = a.speed_of_light.class_work.get().expect("the engine's work by kernel class");
    classes.iter().find(|c| c.name == crate::sol::ATTENTION_WORK).expect("attention kernels")
}

/// Attention at a tenth of its ceiling, over `SLOW_CLASS_SHARE` of the kernel time moved by
/// `offset` thousandths.
fn attention_share_of_kernel_time(offset: i64) -> TraceData {
    attention_beside_products(count_at(SLOW_CLASS_SHARE, N, offset) * 1_000, SLOW_CLASS_PERCENT / 3.0)
}

/// Attention over half the kernel time at `SLOW_CLASS_PERCENT` of its ceiling moved by `offset`
/// tenths of a point.
fn attention_at_a_share_of_its_ceiling(offset: i64) -> TraceData {
    attention_beside_products(500_000, SLOW_CLASS_PERCENT + TENTH * offset as f64)
}
