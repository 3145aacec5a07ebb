//! `lumen analyze NEW --compare BASE`: what changed from one trace to another. Every headline
//! figure side by side with its delta and whether the change is better or worse; kernels matched
//! by name (appeared, disappeared, slower, faster) by their impact on kernel time; each CPU
//! phase's shift per iteration; and a verdict on the per-iteration durations with a seeded
//! bootstrap confidence interval of the difference of their medians. Better and worse assume
//! both traces ran the same workload; figures that measure the workload itself have no direction.

use std::collections::HashMap;

use lumen_trace::model::{GpuOpKind, TraceData};
use serde::Serialize;

use crate::gpu::GapClass;
use crate::iterations::{iteration_windows, Iterations, Phases};
use crate::measured::Measured;
use crate::stats::{quantile, share, Distribution};
use crate::text::{self, line, not_available, Table};
use crate::Analysis;

/// A figure that moved by less than this share of its base value is the same.
pub const SAME_WITHIN: f64 = 0.01;
/// A kernel in both traces got slower or faster when its mean duration moved by more than this
/// share of the base mean...
pub const KERNEL_CHANGE_SHARE: f64 = 0.05;
/// ...and by at least this many nanoseconds.
pub const KERNEL_CHANGE_MIN_NS: f64 = 1_000.0;
/// Fewer iterations than this in either trace make the verdict low confidence.
pub const MIN_ITERATIONS: usize = 20;
/// The confidence level of the verdict's interval.
pub const CONFIDENCE: f64 = 0.95;
/// Resamples of the bootstrap behind the verdict's interval.
pub const BOOTSTRAP_RESAMPLES: usize = 2_000;
/// A mixture-of-experts run this much faster with the perfect router than with the model's (the
/// verdict's median change, significant) has its router causing the imbalance: the seed's
/// ">10% improvement".
pub const PERFECT_ROUTER_GAIN: f64 = 0.10;
/// The bootstrap's seed: the same two traces always give the same interval.
pub const BOOTSTRAP_SEED: u64 = 0x6c75_6d65_6e5f_6370;

/// How many changed kernels the terminal report and the HTML page list; the JSON has them all.
pub(crate) const LISTED_KERNELS: usize = 20;

const NO_ITERATIONS: &str = "has no iterations (no iteration rows, no `iter N` spans)";

/// What changed from a base trace to a new one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The headline figures, in the order the report gives them.
    pub figures: Vec<FigureDelta>,
    pub kernels: Measured<KernelChanges>,
    pub phases: Measured<PhaseShifts>,
    pub verdict: Measured<Verdict>,
    /// When one trace ran the perfect router and the other the model's: what the seed's table
    /// reads from the difference.
    pub router: Option<Measured<RouterReading>>,
}

/// The perfect-router comparison: how much faster the run with balanced routing was than the run
/// with the model's router, and what that says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouterReading {
    /// Which trace ran the perfect router: `base` or `new`.
    pub perfect: &'static str,
    /// The perfect-router run's per-iteration time saved, as a share of the router run's (below 0:
    /// it was slower).
    pub gain: f64,
    /// Whether the verdict's interval excludes no change.
    pub significant: bool,
    /// The busiest expert's load over a balanced spread's busiest in the router run, when it
    /// recorded expert loads.
    pub router_max_over_balanced: Option<f64>,
    /// Experts woken per layer and step: (router run, perfect-router run, experts), when both
    /// recorded expert loads.
    pub active_experts: Option<(f64, f64, usize)>,
    pub reading: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Ns,
    Ms,
    /// A share of 1; its delta is in percentage points.
    Share,
    Count,
    Bytes,
    PerSecond,
    /// A hardware counter in its own unit.
    Value,
}

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
    /// The figure measures the workload (requests, tokens) or has no good side.
    Neither,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Assessment {
    Better,
    Worse,
    /// Moved by less than [`SAME_WITHIN`] of its base value.
    Same,
    /// Moved, for a figure with no better side.
    Changed,
}

impl Assessment {
    pub fn as_str(self) -> &'static str {
        match self {
            Assessment::Better => "better",
            Assessment::Worse => "worse",
            Assessment::Same => "same",
            Assessment::Changed => "changed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FigureDelta {
    pub name: String,
    pub unit: Unit,
    pub better: Better,
    pub change: Measured<Change>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub base: f64,
    pub new: f64,
    /// New minus base.
    pub delta: f64,
    /// The delta over the base value; `None` when the base is 0.
    pub relative: Option<f64>,
    pub assessment: Assessment,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelChanges {
    /// Kernel names in both traces.
    pub in_both: usize,
    /// Of those, the ones whose mean moved within the thresholds.
    pub unchanged: usize,
    /// Kernels that appeared, disappeared, got slower or faster; largest impact first.
    pub changes: Vec<KernelChange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelChangeKind {
    Appeared,
    Disappeared,
    Slower,
    Faster,
}

impl KernelChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KernelChangeKind::Appeared => "appeared",
            KernelChangeKind::Disappeared => "disappeared",
            KernelChangeKind::Slower => "slower",
            KernelChangeKind::Faster => "faster",
        }
    }
}

/// All kernels of one name in one trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelTotals {
    pub count: usize,
    pub total_ns: u64,
    pub mean_ns: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelChange {
    pub name: String,
    pub change: KernelChangeKind,
    pub base: Option<KernelTotals>,
    pub new: Option<KernelTotals>,
    /// New mean minus base mean, for a kernel in both traces.
    pub mean_delta_ns: Option<f64>,
    /// That delta over the base mean.
    pub mean_relative: Option<f64>,
    /// The kernel time the change added (+) or saved (−): the mean's delta times the new count,
    /// or the whole total of a kernel that appeared (+) or disappeared (−).
    pub impact_ns: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseShifts {
    /// The iterations each trace's phases are averaged over.
    pub base_iterations: usize,
    pub new_iterations: usize,
    /// Largest shift first.
    pub phases: Vec<PhaseShift>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseShift {
    pub name: String,
    /// Mean time per iteration; `None` when the trace has no span of the phase.
    pub base_ns: Option<f64>,
    pub new_ns: Option<f64>,
    /// New minus base, a phase a trace does not have counting as 0 there.
    pub delta_ns: f64,
    /// The delta over the base time; `None` when the base has none.
    pub relative: Option<f64>,
}

/// The per-iteration durations the verdict compares: the iteration's wall time on the host,
/// which bounds throughput. Device time alone would miss host overhead (a change such as CUDA
/// graphs shortens the iteration, not its kernels); it is compared among the headline figures.
/// When the iteration rows say how many requests each batch held, the wall time is divided by
/// them: each scheduled request yields about one output token, so a larger batch that makes the
/// iteration longer but the throughput higher compares as faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    HostTime,
    HostTimePerRequest,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::HostTime => "host time per iteration",
            Metric::HostTimePerRequest => "host time per iteration per request in the batch (about one output token each)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Faster,
    Slower,
    /// The interval holds 0.
    NoSignificantDifference,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    High,
    /// Fewer than [`MIN_ITERATIONS`] iterations in a trace.
    Low,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// `iteration rows` or `iteration spans`.
    pub source: String,
    pub iterations: usize,
    pub median_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub metric: Metric,
    pub base: Sample,
    pub new: Sample,
    /// (new median − base median) / base median: above 0 is slower.
    pub median_change: f64,
    /// The [`CONFIDENCE`] bootstrap interval of that change.
    pub interval_low: f64,
    pub interval_high: f64,
    pub outcome: Outcome,
    pub confidence: Confidence,
    /// Why the confidence is low, when it is.
    pub low_confidence: Option<String>,
    pub resamples: usize,
    pub seed: u64,
    /// The verdict in one line, as the report prints it.
    pub summary: String,
}

/// What changed from `base` to `new`; the traces give every kernel (the analyses keep the top
/// ones) and the per-iteration durations.
pub fn compare(base: &Analysis, new: &Analysis, base_trace: &TraceData, new_trace: &TraceData) -> Comparison {
    let (base_figures, new_figures) = (headline(base), headline(new));
    let mut figures: Vec<FigureDelta> =
        base_figures.into_iter().zip(new_figures).map(|(b, n)| delta(b.name, b.unit, b.better, &b.value, &n.value)).collect();
    figures.extend(counter_deltas(base, new));
    let verdict = verdict(base_trace, new_trace);
    Comparison {
        figures,
        kernels: kernel_changes(base, new, base_trace, new_trace),
        phases: phase_shifts(&base.phases, &new.phases),
        router: router_reading(base, new, base_trace, new_trace, &verdict),
        verdict,
    }
}

/// The seed's reading of a perfect-router pair (in either order): more than
/// [`PERFECT_ROUTER_GAIN`] faster with balanced routing is the router causing load imbalance;
/// within noise (or within the threshold), routing is not the bottleneck. `None` unless exactly
/// one trace ran the perfect router.
fn router_reading(
    base: &Analysis,
    new: &Analysis,
    b: &TraceData,
    n: &TraceData,
    verdict: &Measured<Verdict>,
) -> Option<Measured<RouterReading>> {
    let perfect = |t: &TraceData| t.meta("perfect_router") == Some("on");
    let perfect_is_new = match (perfect(b), perfect(n)) {
        (false, true) => true,
        (true, false) => false,
        _ => return None,
    };
    let v = match verdict {
        Measured::Available(v) => v,
        Measured::NotAvailable(why) => return Some(Measured::NotAvailable(format!("no verdict to read: {why}"))),
    };
    // median_change is (new − base) / base; the gain is measured against the router run.
    let gain = if perfect_is_new { -v.median_change } else { v.median_change / (1.0 + v.median_change) };
    let significant = v.outcome != Outcome::NoSignificantDifference;
    let (router_run, perfect_run) = if perfect_is_new { (base, new) } else { (new, base) };
    let active_experts = match (router_run.moe.get(), perfect_run.moe.get()) {
        (Some(r), Some(p)) => Some((r.active_experts, p.active_experts, r.experts.max(p.experts))),
        _ => None,
    };
    let reading = if significant && gain > PERFECT_ROUTER_GAIN {
        format!(
            "{}% faster with the perfect router (over {}): router causing load imbalance; optimize routing or try alternative \
             strategies",
            format_args!("{:.1}", gain * 100.0),
            text::percent(PERFECT_ROUTER_GAIN)
        )
    } else if !significant {
        "similar performance (no significant difference): routing is not a bottleneck; focus elsewhere".to_string()
    } else if gain < -PERFECT_ROUTER_GAIN {
        let woken = active_experts.map_or(String::new(), |(r, p, e)| {
            format!(" ({p:.1} of {e} experts a layer and step against the router's {r:.1}, each with its weights to read)")
        });
        format!(
            "{:.1}% slower with the perfect router (beyond {}): balanced routing wakes more experts{woken}, and on one GPU \
             a step's expert time follows the expert weights it reads, not the busiest expert's share; routing is not a \
             bottleneck; focus elsewhere (the imbalance would cost once experts are split over GPUs, where the busiest \
             expert's GPU sets the pace)",
            -gain * 100.0,
            text::percent(PERFECT_ROUTER_GAIN)
        )
    } else {
        format!(
            "similar performance ({:+.1}% with the perfect router, within {}): routing is not a bottleneck; focus elsewhere",
            gain * 100.0,
            text::percent(PERFECT_ROUTER_GAIN)
        )
    };
    Some(Measured::Available(RouterReading {
        perfect: if perfect_is_new { "new" } else { "base" },
        gain,
        significant,
        router_max_over_balanced: router_run.moe.get().map(|m| m.max_over_balanced),
        active_experts,
        reading,
    }))
}

/// Both figures, or why either trace lacks its own.
fn both<'a, A, B>(base: &'a Measured<A>, new: &'a Measured<B>) -> Result<(&'a A, &'a B), String> {
    match (base, new) {
        (Measured::Available(b), Measured::Available(n)) => Ok((b, n)),
        (Measured::NotAvailable(b), Measured::NotAvailable(n)) if b == n => Err(format!("both traces: {b}")),
        (Measured::NotAvailable(b), Measured::NotAvailable(n)) => Err(format!("base: {b}; new: {n}")),
        (Measured::NotAvailable(b), _) => Err(format!("base: {b}")),
        (_, Measured::NotAvailable(n)) => Err(format!("new: {n}")),
    }
}

/// One headline figure of one trace.
struct Figure {
    name: String,
    unit: Unit,
    better: Better,
    value: Measured<f64>,
}

fn of<T>(measured: &Measured<T>, value: impl FnOnce(&T) -> f64) -> Measured<f64> {
    match measured {
        Measured::Available(v) => Measured::Available(value(v)),
        Measured::NotAvailable(why) => Measured::NotAvailable(why.clone()),
    }
}

fn device_ms(iterations: &Measured<Iterations>, value: fn(&Distribution) -> f64) -> Measured<f64> {
    match iterations {
        Measured::Available(it) => of(&it.device_ms, value),
        Measured::NotAvailable(why) => Measured::NotAvailable(why.clone()),
    }
}

/// The figures every trace has, in the same order for every trace.
fn headline(a: &Analysis) -> Vec<Figure> {
    use Better::{Higher, Lower, Neither};
    let o = &a.overview;
    let busy = of(&a.gpu, |devices| devices.iter().map(|d| d.busy_ns as f64).sum());
    let busy_share = of(&a.gpu, |devices| {
        let window: u64 = devices.iter().map(|d| d.end_ns - d.start_ns).sum();
        share(devices.iter().map(|d| d.busy_ns as f64).sum(), window as f64)
    });
    // Copies need GPU operations; a trace with some but no copies made none.
    let copies: Measured<[f64; 3]> = match (&a.gpu, &a.memory.transfers) {
        (Measured::NotAvailable(why), _) => Measured::NotAvailable(why.clone()),
        (_, Measured::Available(transfers)) => {
            let copies = transfers.iter().filter(|t| t.kind != "memset");
            Measured::Available(
                copies.fold([0.0; 3], |sum, t| [sum[0] + t.count as f64, sum[1] + t.bytes as f64, sum[2] + t.total_ns as f64]),
            )
        }
        (_, Measured::NotAvailable(_)) => Measured::Available([0.0; 3]),
    };
    let figure = |name: &str, unit: Unit, better: Better, value: Measured<f64>| Figure { name: name.into(), unit, better, value };
    let mut figures = vec![
        figure("time span", Unit::Ns, Lower, of(&o.span, |s| s.duration_ns as f64)),
        figure("iterations", Unit::Count, Neither, of(&o.iterations, |i| i.count as f64)),
        figure("requests", Unit::Count, Neither, of(&o.requests, |r| r.count as f64)),
        figure("request input tokens", Unit::Count, Neither, of(&o.requests, |r| r.input_tokens as f64)),
        figure("request output tokens", Unit::Count, Neither, of(&o.requests, |r| r.output_tokens as f64)),
        figure("prefill tokens", Unit::Count, Neither, of(&o.tokens, |t| t.prefill as f64)),
        figure("decode tokens", Unit::Count, Neither, of(&o.tokens, |t| t.decode as f64)),
        figure("tokens per second", Unit::PerSecond, Higher, of(&o.tokens, |t| t.per_second)),
        figure("GPU busy", Unit::Share, Higher, busy_share),
        figure("GPU busy time", Unit::Ns, Lower, busy),
        figure("GPU idle time", Unit::Ns, Lower, of(&a.gaps, |devices| devices.iter().map(|d| d.total_ns as f64).sum())),
    ];
    for class in GapClass::ALL {
        let idle =
            of(&a.gaps, |devices| devices.iter().flat_map(|d| &d.classes).filter(|c| c.class == class).map(|c| c.total_ns as f64).sum());
        figures.push(figure(&format!("idle: {}", class.as_str()), Unit::Ns, Lower, idle));
    }
    figures.extend([
        figure("kernels", Unit::Count, Lower, of(&a.kernels, |k| k.count as f64)),
        figure("kernel time", Unit::Ns, Lower, of(&a.kernels, |k| k.total_ns as f64)),
        figure("CUDA API time", Unit::Ns, Lower, of(&a.launch, |l| l.api_total_ns as f64)),
        figure("iteration host time, mean", Unit::Ms, Lower, of(&a.iterations, |it| it.host_ms.mean)),
        figure("iteration host time, median", Unit::Ms, Lower, of(&a.iterations, |it| it.host_ms.median)),
        figure("iteration device time, mean", Unit::Ms, Lower, device_ms(&a.iterations, |d| d.mean)),
        figure("iteration device time, median", Unit::Ms, Lower, device_ms(&a.iterations, |d| d.median)),
        figure("memcpy count", Unit::Count, Lower, of(&copies, |c| c[0])),
        figure("memcpy bytes", Unit::Bytes, Lower, of(&copies, |c| c[1])),
        figure("memcpy time", Unit::Ns, Lower, of(&copies, |c| c[2])),
    ]);
    figures
}

/// The mean of every hardware counter either trace sampled, per counter and device.
fn counter_deltas(base: &Analysis, new: &Analysis) -> Vec<FigureDelta> {
    if let (Measured::NotAvailable(_), Measured::NotAvailable(_)) = (&base.hardware, &new.hardware) {
        let none = Measured::NotAvailable(both(&base.hardware, &new.hardware).expect_err("neither trace has counters"));
        return vec![FigureDelta { name: "hardware counters".into(), unit: Unit::Value, better: Better::Neither, change: none }];
    }
    let mut keys: Vec<(&str, u32)> = Vec::new();
    for a in [base, new] {
        for c in a.hardware.get().into_iter().flat_map(|h| &h.counters) {
            if !keys.contains(&(c.name.as_str(), c.device)) {
                keys.push((c.name.as_str(), c.device));
            }
        }
    }
    let mean = |a: &Analysis, name: &str, device: u32| match &a.hardware {
        Measured::Available(h) => {
            Measured::from_option(h.counters.iter().find(|c| c.name == name && c.device == device).map(|c| c.values.mean), || {
                format!("the trace has no samples of {name} on device {device}")
            })
        }
        Measured::NotAvailable(why) => Measured::NotAvailable(why.clone()),
    };
    keys.into_iter()
        .map(|(name, device)| {
            let label = format!("{name} (device {device}), mean");
            delta(label, Unit::Value, Better::Neither, &mean(base, name, device), &mean(new, name, device))
        })
        .collect()
}

fn delta(name: String, unit: Unit, better: Better, base: &Measured<f64>, new: &Measured<f64>) -> FigureDelta {
    let change = match both(base, new) {
        Ok((&base, &new)) => {
            let delta = new - base;
            let relative = (base != 0.0).then(|| delta / base.abs());
            let same = relative.map_or(delta == 0.0, |r| r.abs() < SAME_WITHIN);
            let assessment = match better {
                _ if same => Assessment::Same,
                Better::Neither => Assessment::Changed,
                Better::Lower if delta < 0.0 => Assessment::Better,
                Better::Higher if delta > 0.0 => Assessment::Better,
                _ => Assessment::Worse,
            };
            Measured::Available(Change { base, new, delta, relative, assessment })
        }
        Err(why) => Measured::NotAvailable(why),
    };
    FigureDelta { name, unit, better, change }
}

/// Every kernel name's count, total and mean duration.
fn kernel_totals(trace: &TraceData) -> HashMap<&str, KernelTotals> {
    let mut sums: HashMap<&str, (usize, u64)> = HashMap::new();
    for op in trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Kernel) {
        let sum = sums.entry(op.name.as_str()).or_default();
        sum.0 += 1;
        sum.1 += op.end_ns.saturating_sub(op.start_ns);
    }
    sums.into_iter()
        .map(|(name, (count, total_ns))| (name, KernelTotals { count, total_ns, mean_ns: total_ns as f64 / count as f64 }))
        .collect()
}

fn kernel_changes(base: &Analysis, new: &Analysis, base_trace: &TraceData, new_trace: &TraceData) -> Measured<KernelChanges> {
    if let Err(why) = both(&base.kernels, &new.kernels) {
        return Measured::NotAvailable(why);
    }
    let (mut b, mut n) = (kernel_totals(base_trace), kernel_totals(new_trace));
    let mut names: Vec<&str> = b.keys().chain(n.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    let (mut in_both, mut unchanged, mut changes) = (0, 0, Vec::new());
    for name in names {
        let (base, new) = (b.remove(name), n.remove(name));
        let (change, mean_delta_ns, mean_relative, impact_ns) = match (&base, &new) {
            (Some(b), Some(n)) => {
                in_both += 1;
                let delta = n.mean_ns - b.mean_ns;
                let relative = (b.mean_ns > 0.0).then(|| delta / b.mean_ns);
                if delta.abs() < KERNEL_CHANGE_MIN_NS || relative.is_some_and(|r| r.abs() <= KERNEL_CHANGE_SHARE) {
                    unchanged += 1;
                    continue;
                }
                let kind = if delta > 0.0 { KernelChangeKind::Slower } else { KernelChangeKind::Faster };
                (kind, Some(delta), relative, delta * n.count as f64)
            }
            (Some(b), None) => (KernelChangeKind::Disappeared, None, None, -(b.total_ns as f64)),
            (None, Some(n)) => (KernelChangeKind::Appeared, None, None, n.total_ns as f64),
            (None, None) => unreachable!("every name comes from one of the traces"),
        };
        changes.push(KernelChange { name: name.to_string(), change, base, new, mean_delta_ns, mean_relative, impact_ns });
    }
    changes.sort_by(|a, b| b.impact_ns.abs().total_cmp(&a.impact_ns.abs()).then_with(|| a.name.cmp(&b.name)));
    Measured::Available(KernelChanges { in_both, unchanged, changes })
}

fn phase_shifts(base: &Phases, new: &Phases) -> Measured<PhaseShifts> {
    let (b, n) = match both(&base.phases, &new.phases) {
        Ok(pair) => pair,
        Err(why) => return Measured::NotAvailable(why),
    };
    for (side, times) in [("base", b), ("new", n)] {
        if times.iterations == 0 {
            return Measured::NotAvailable(format!(
                "the {side} trace cannot tell its iterations (no iteration rows, no `iter N` spans, no phase span labelled with its iteration)"
            ));
        }
    }
    let mean = |times: &crate::iterations::PhaseTimes, name: &str| {
        times.phases.iter().find(|p| p.name == name).and_then(|p| p.mean_per_iteration_ns)
    };
    let mut names: Vec<&str> = b.phases.iter().map(|p| p.name.as_str()).collect();
    names.extend(n.phases.iter().map(|p| p.name.as_str()).filter(|name| b.phases.iter().all(|p| p.name != *name)));
    let mut phases: Vec<PhaseShift> = names
        .into_iter()
        .map(|name| {
            let (base_ns, new_ns) = (mean(b, name), mean(n, name));
            let delta_ns = new_ns.unwrap_or(0.0) - base_ns.unwrap_or(0.0);
            let relative = base_ns.filter(|&b| b > 0.0).map(|b| delta_ns / b);
            PhaseShift { name: name.to_string(), base_ns, new_ns, delta_ns, relative }
        })
        .collect();
    phases.sort_by(|a, b| b.delta_ns.abs().total_cmp(&a.delta_ns.abs()).then_with(|| a.name.cmp(&b.name)));
    Measured::Available(PhaseShifts { base_iterations: b.iterations, new_iterations: n.iterations, phases })
}

/// One trace's per-iteration durations in ms, and where they came from.
struct Durations {
    source: &'static str,
    host_ms: Vec<f64>,
    /// The same divided by the requests in each batch, when every row has some.
    per_request_ms: Option<Vec<f64>>,
}

/// From the iteration rows, or else from the `iter N` spans.
fn durations(trace: &TraceData) -> Option<Durations> {
    if !trace.iterations.is_empty() {
        let rows = &trace.iterations;
        let per_request_ms = rows
            .iter()
            .all(|r| r.ctx_reqs + r.gen_reqs > 0)
            .then(|| rows.iter().map(|r| r.host_ms / (r.ctx_reqs + r.gen_reqs) as f64).collect());
        return Some(Durations { source: "iteration rows", host_ms: rows.iter().map(|r| r.host_ms).collect(), per_request_ms });
    }
    let (source, windows) = iteration_windows(trace)?;
    let host_ms = windows.iter().map(|w| w.end_ns.saturating_sub(w.start_ns) as f64 / 1e6).collect();
    Some(Durations { source, host_ms, per_request_ms: None })
}

/// The median of `values`, which it reorders; the mean of the middle two for an even count.
fn median(values: &mut [f64]) -> f64 {
    let odd = values.len() % 2 == 1;
    let (below, &mut upper, _) = values.select_nth_unstable_by(values.len() / 2, f64::total_cmp);
    if odd {
        upper
    } else {
        (below.iter().copied().fold(f64::NEG_INFINITY, f64::max) + upper) / 2.0
    }
}

/// SplitMix64: a small seeded generator, enough to draw resampling indices.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An index below `n`.
    fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
}

/// The [`CONFIDENCE`] percentile interval of new median − base median over
/// [`BOOTSTRAP_RESAMPLES`] resamples of each, drawn with replacement.
fn bootstrap_interval(base: &[f64], new: &[f64]) -> (f64, f64) {
    let mut rng = SplitMix64(BOOTSTRAP_SEED);
    let (mut b, mut n) = (vec![0.0; base.len()], vec![0.0; new.len()]);
    let mut differences: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            b.iter_mut().for_each(|v| *v = base[rng.below(base.len())]);
            n.iter_mut().for_each(|v| *v = new[rng.below(new.len())]);
            median(&mut n) - median(&mut b)
        })
        .collect();
    differences.sort_unstable_by(f64::total_cmp);
    let tail = (1.0 - CONFIDENCE) / 2.0;
    (quantile(&differences, tail), quantile(&differences, 1.0 - tail))
}

fn verdict(base_trace: &TraceData, new_trace: &TraceData) -> Measured<Verdict> {
    let (b, n) = match (durations(base_trace), durations(new_trace)) {
        (Some(b), Some(n)) => (b, n),
        (None, None) => {
            return Measured::NotAvailable(
                "neither trace has iterations (no iteration rows, no `iter N` spans), so there are no per-iteration \
                 durations to compare. Total GPU busy time is no substitute: it is one figure per trace, over whatever \
                 work each capture held, with no spread to give a confidence and no unit of work to divide by; the \
                 headline figures below compare it as it is"
                    .into(),
            )
        }
        (None, Some(_)) => return Measured::NotAvailable(format!("the base trace {NO_ITERATIONS}; a verdict needs them in both")),
        (Some(_), None) => return Measured::NotAvailable(format!("the new trace {NO_ITERATIONS}; a verdict needs them in both")),
    };
    let (metric, mut base, mut new) = match (b.per_request_ms, n.per_request_ms) {
        (Some(base), Some(new)) => (Metric::HostTimePerRequest, base, new),
        _ => (Metric::HostTime, b.host_ms, n.host_ms),
    };
    let (base_median, new_median) = (median(&mut base), median(&mut new));
    if base_median <= 0.0 {
        return Measured::NotAvailable(format!(
            "the base trace's median {} is {base_median} ms; a relative change needs it above 0",
            metric.as_str()
        ));
    }
    let (low, high) = bootstrap_interval(&base, &new);
    let (change, low, high) = ((new_median - base_median) / base_median, low / base_median, high / base_median);
    let outcome = if low > 0.0 {
        Outcome::Slower
    } else if high < 0.0 {
        Outcome::Faster
    } else {
        Outcome::NoSignificantDifference
    };
    let low_confidence = (base.len().min(new.len()) < MIN_ITERATIONS).then(|| {
        format!("{} base and {} new iterations; a confident verdict needs at least {MIN_ITERATIONS} in each", base.len(), new.len())
    });
    let percent = |share: f64| format!("{:.1}", share * 100.0);
    let level = format!("{:.0}% CI", CONFIDENCE * 100.0);
    let mut summary = match outcome {
        Outcome::Slower => format!("slower by {}% ({level} {}..{}%)", percent(change), percent(low), percent(high)),
        Outcome::Faster => format!("faster by {}% ({level} {}..{}%)", percent(-change), percent(-high), percent(-low)),
        Outcome::NoSignificantDifference => {
            format!("no significant difference (median {:+.1}%, {level} {}..{}%)", change * 100.0, percent(low), percent(high))
        }
    };
    if low_confidence.is_some() {
        summary.push_str(", low confidence");
    }
    let sample = |source: &str, values: &[f64], median_ms: f64| Sample { source: source.into(), iterations: values.len(), median_ms };
    Measured::Available(Verdict {
        metric,
        base: sample(b.source, &base, base_median),
        new: sample(n.source, &new, new_median),
        median_change: change,
        interval_low: low,
        interval_high: high,
        outcome,
        confidence: if low_confidence.is_some() { Confidence::Low } else { Confidence::High },
        low_confidence,
        resamples: BOOTSTRAP_RESAMPLES,
        seed: BOOTSTRAP_SEED,
        summary,
    })
}

/// The figures the traces cannot compare, grouped by reason: the names joined, and the reason.
pub(crate) fn missing_figures(figures: &[FigureDelta]) -> Vec<(String, &str)> {
    let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
    for f in figures {
        let Measured::NotAvailable(why) = &f.change else { continue };
        match reasons.iter_mut().find(|(reason, _)| reason == why) {
            Some((_, names)) => names.push(&f.name),
            None => reasons.push((why, vec![&f.name])),
        }
    }
    reasons.into_iter().map(|(why, names)| (names.join(", "), why)).collect()
}

/// The verdict's labelled lines after its summary: the metric, each sample, the confidence and
/// the method.
pub(crate) fn verdict_lines(v: &Verdict) -> Vec<(&'static str, String)> {
    let sample = |s: &Sample| format!("{} iterations ({}), median {}", s.iterations, s.source, text::ms(s.median_ms));
    let confidence = match &v.low_confidence {
        Some(why) => format!("low: {why}"),
        None => format!("high: at least {MIN_ITERATIONS} iterations in each trace"),
    };
    vec![
        ("compared", format!("median {}", v.metric.as_str())),
        ("base", sample(&v.base)),
        ("new", sample(&v.new)),
        ("confidence", confidence),
        ("method", format!("bootstrap of the difference of medians, {} resamples, seed {:#x}", v.resamples, v.seed)),
    ]
}

/// The kernel comparison's labelled lines: when a kernel counts as changed, and how many did.
pub(crate) fn kernel_lines(k: &KernelChanges) -> [(&'static str, String); 2] {
    let count = |kind: KernelChangeKind| k.changes.iter().filter(|c| c.change == kind).count();
    [
        (
            "changed when",
            format!(
                "the mean moved by more than {} and at least {}",
                text::percent(KERNEL_CHANGE_SHARE),
                text::duration(KERNEL_CHANGE_MIN_NS)
            ),
        ),
        (
            "kernels",
            format!(
                "{} in both ({} unchanged); {} appeared, {} disappeared, {} slower, {} faster",
                k.in_both,
                k.unchanged,
                count(KernelChangeKind::Appeared),
                count(KernelChangeKind::Disappeared),
                count(KernelChangeKind::Slower),
                count(KernelChangeKind::Faster)
            ),
        ),
    ]
}

/// A kernel's count in base and new, `-` where the trace has none.
pub(crate) fn kernel_count(c: &KernelChange) -> String {
    let count = |t: &Option<KernelTotals>| t.as_ref().map_or("-".into(), |t| t.count.to_string());
    format!("{}→{}", count(&c.base), count(&c.new))
}

/// A kernel's mean duration in one trace, `-` where the trace has none.
pub(crate) fn kernel_mean(t: &Option<KernelTotals>) -> String {
    t.as_ref().map_or("-".into(), |t| text::duration(t.mean_ns))
}

pub(crate) fn value(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Ns => text::duration(v),
        Unit::Ms => text::ms(v),
        Unit::Share => text::percent(v),
        Unit::Count if v.fract() == 0.0 => format!("{v:.0}"),
        Unit::Count | Unit::Value => format!("{v:.1}"),
        Unit::Bytes => text::bytes(v.max(0.0) as u64),
        Unit::PerSecond => format!("{v:.1}/s"),
    }
}

pub(crate) fn signed(unit: Unit, delta: f64) -> String {
    if delta == 0.0 {
        return "0".into();
    }
    let sign = if delta < 0.0 { "-" } else { "+" };
    match unit {
        Unit::Share => format!("{sign}{:.1} pp", delta.abs() * 100.0),
        _ => format!("{sign}{}", value(unit, delta.abs())),
    }
}

pub(crate) fn relative(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{:+.1}%", r * 100.0))
}

/// The comparison as four report sections: the verdict, the headline figures, the kernels and
/// the CPU phases.
pub fn render(c: &Comparison, out: &mut String) {
    render_verdict(&c.verdict, out);
    render_router(c.router.as_ref(), out);
    render_figures(&c.figures, out);
    render_kernels(&c.kernels, out);
    render_phases(&c.phases, out);
}

fn render_verdict(verdict: &Measured<Verdict>, out: &mut String) {
    text::heading(out, "Comparison: verdict");
    let v = match verdict {
        Measured::Available(v) => v,
        Measured::NotAvailable(why) => return not_available(out, "verdict", why),
    };
    line(out, "verdict", &v.summary);
    for (label, value) in verdict_lines(v) {
        line(out, label, value);
    }
}

fn render_router(router: Option<&Measured<RouterReading>>, out: &mut String) {
    let Some(router) = router else { return };
    text::heading(out, "Comparison: perfect router");
    let r = match router {
        Measured::Available(r) => r,
        Measured::NotAvailable(why) => return not_available(out, "reading", why),
    };
    line(out, "reading", &r.reading);
    line(out, "perfect router in", r.perfect);
    if let Some(x) = r.router_max_over_balanced {
        line(out, "router run's load", format!("busiest expert {x:.2}× a balanced spread's busiest"));
    }
    if let Some((router, perfect, experts)) = r.active_experts {
        line(
            out,
            "experts woken",
            format!("{router:.1} of {experts} per layer and step with the router, {perfect:.1} with the perfect one"),
        );
    }
}

fn render_figures(figures: &[FigureDelta], out: &mut String) {
    text::heading(out, "Comparison: headline figures");
    let mut table = Table::new(&["figure", "base", "new", "delta", "change", "assessment"], &[0, 5]);
    for f in figures {
        if let Measured::Available(c) = &f.change {
            table.row(vec![
                text::truncate(&f.name, 36),
                value(f.unit, c.base),
                value(f.unit, c.new),
                signed(f.unit, c.delta),
                relative(c.relative),
                c.assessment.as_str().into(),
            ]);
        }
    }
    table.render(out);
    for (names, why) in missing_figures(figures) {
        text::wrapped(out, "  - ", 4, &format!("{names}: not available: {why}"));
    }
}

fn render_kernels(kernels: &Measured<KernelChanges>, out: &mut String) {
    text::heading(out, "Comparison: kernels");
    let k = match kernels {
        Measured::Available(k) => k,
        Measured::NotAvailable(why) => return not_available(out, "kernels", why),
    };
    for (label, value) in kernel_lines(k) {
        line(out, label, value);
    }
    if k.changes.is_empty() {
        return;
    }
    let mut table = Table::new(&["change", "count", "base mean", "new mean", "mean", "impact", "kernel"], &[0, 6]);
    for c in k.changes.iter().take(LISTED_KERNELS) {
        table.row(vec![
            c.change.as_str().into(),
            kernel_count(c),
            kernel_mean(&c.base),
            kernel_mean(&c.new),
            relative(c.mean_relative),
            signed(Unit::Ns, c.impact_ns),
            c.name.clone(),
        ]);
    }
    table.render(out);
    if k.changes.len() > LISTED_KERNELS {
        line(out, "", format_args!("and {} more (the JSON lists them all)", k.changes.len() - LISTED_KERNELS));
    }
}

fn render_phases(phases: &Measured<PhaseShifts>, out: &mut String) {
    text::heading(out, "Comparison: CPU phases");
    let p = match phases {
        Measured::Available(p) => p,
        Measured::NotAvailable(why) => return not_available(out, "phases", why),
    };
    line(out, "per iteration, over", format_args!("{} base and {} new iterations", p.base_iterations, p.new_iterations));
    let mut table = Table::new(&["phase", "base", "new", "delta", "change"], &[0]);
    for s in &p.phases {
        table.row(vec![
            text::truncate(&s.name, 40),
            s.base_ns.map_or("-".into(), text::duration),
            s.new_ns.map_or("-".into(), text::duration),
            signed(Unit::Ns, s.delta_ns),
            relative(s.relative),
        ]);
    }
    table.render(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::WIDTH;
    use crate::{analyze, Options};
    use lumen_test_support::rows::{iteration, named, span};

    const ITERATIONS: u64 = 30;
    /// Per iteration: `gemm` and `norm` stay (norm moves 2.5%, under the share), `tiny` doubles
    /// but by 300 ns, under the minimum; `attention` gets 30% slower, `old_kernel` goes and
    /// `new_kernel` comes.
    const BASE_KERNELS: &[(&str, u64)] =
        &[("gemm", 200_000), ("attention", 100_000), ("old_kernel", 50_000), ("norm", 20_000), ("tiny", 300)];
    const NEW_KERNELS: &[(&str, u64)] =
        &[("gemm", 200_000), ("attention", 130_000), ("new_kernel", 40_000), ("norm", 20_500), ("tiny", 600)];

    /// `iterations` iterations of about `iteration_ms` (±2%, the same pattern in every trace) 1 ms
    /// apart, each a 1 ms schedule, a `forward_ns` forward and a 0.5 ms sample phase, with
    /// `kernels` run back to back from the forward's start.
    fn run(iterations: u64, iteration_ms: f64, forward_ns: u64, kernels: &[(&str, u64)]) -> TraceData {
        let mut trace = TraceData::default();
        let mut start = 0;
        for i in 0..iterations {
            let host_ms = iteration_ms * (1.0 + 0.01 * ((i * 7 % 5) as f64 - 2.0));
            let end = start + (host_ms * 1e6) as u64;
            trace.iterations.push(iteration(i, start, end, host_ms));
            let forward = start + 1_000_000;
            trace.spans.push(span(start, forward, 1, "schedule", "phase"));
            trace.spans.push(span(forward, forward + forward_ns, 1, "forward", "phase"));
            trace.spans.push(span(forward + forward_ns, forward + forward_ns + 500_000, 1, "sample", "phase"));
            let mut at = forward;
            for (k, &(name, ns)) in kernels.iter().enumerate() {
                trace.gpu_ops.push(named(name, at, at + ns, i * 10 + k as u64));
                at += ns + 5_000;
            }
            start = end + 1_000_000;
        }
        trace
    }

    fn compared(base: &TraceData, new: &TraceData) -> Comparison {
        let options = Options::default();
        compare(&analyze(base, &options).unwrap(), &analyze(new, &options).unwrap(), base, new)
    }

    fn figure<'a>(c: &'a Comparison, name: &str) -> &'a Measured<Change> {
        &c.figures.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no figure {name}")).change
    }

    fn kernel_rows(c: &Comparison) -> Vec<(&str, KernelChangeKind, f64)> {
        c.kernels.get().unwrap().changes.iter().map(|k| (k.name.as_str(), k.change, k.impact_ns)).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    /// A MoE run: `run`'s iterations, meta `perfect_router`, and two experts' loads of `busiest`
    /// and `12 - busiest` per iteration.
    fn moe_run(iteration_ms: f64, perfect: bool, busiest: u64) -> TraceData {
        let mut t = run(ITERATIONS, iteration_ms, 5_000_000, BASE_KERNELS);
        t.meta.push(("perfect_router".into(), if perfect { "on" } else { "off" }.into()));
        t.expert_loads = (0..ITERATIONS)
            .map(|iteration| lumen_trace::model::ExpertLoadRow { iteration, layer: 0, tokens: vec![busiest, 12 - busiest] })
            .collect();
        t
    }

    #[test]
    fn a_perfect_router_pair_reads_as_the_seeds_table_in_either_order() {
        let reading = |base: &TraceData, new: &TraceData| compared(base, new).router.expect("a pair").get().cloned().expect("a verdict");
        // 12.5 ms with the model's router, 10 ms with the perfect one: 20% faster.
        let (router, perfect) = (moe_run(12.5, false, 9), moe_run(10.0, true, 6));
        for (r, perfect_in) in [(reading(&router, &perfect), "new"), (reading(&perfect, &router), "base")] {
            assert_eq!(r.perfect, perfect_in);
            assert!(r.significant && close(r.gain, 0.2), "{r:?}");
            assert!(r.reading.contains("router causing load imbalance; optimize routing or try alternative strategies"), "{}", r.reading);
            assert_eq!(r.router_max_over_balanced, Some(1.5));
        }
        // The same speed: not a bottleneck.
        let same = reading(&moe_run(10.0, false, 7), &moe_run(10.0, true, 6));
        assert!(!same.significant && same.reading.contains("routing is not a bottleneck; focus elsewhere"), "{same:?}");
        // 5% faster, significant but within the threshold: still not the bottleneck.
        let small = reading(&moe_run(10.5, false, 7), &moe_run(10.0, true, 6));
        assert!(small.significant && close(small.gain, 0.5 / 10.5), "{small:?}");
        assert!(small.reading.contains("within 10.0%") && small.reading.contains("routing is not a bottleneck"), "{}", small.reading);
        // Much slower with the perfect router, which wakes both experts where the router woke one:
        // the cost is per active expert, not the imbalance.
        let slower = reading(&moe_run(10.0, false, 12), &moe_run(25.0, true, 6));
        assert!(slower.significant && close(slower.gain, -1.5), "{slower:?}");
        assert!(slower.reading.starts_with("150.0% slower with the perfect router"), "{}", slower.reading);
        assert_eq!(slower.active_experts, Some((1.0, 2.0, 2)));
        assert!(slower.reading.contains("(2.0 of 2 experts a layer and step against the router's 1.0"), "{}", slower.reading);
        assert!(slower.reading.contains("routing is not a bottleneck") && !slower.reading.contains("within"), "{}", slower.reading);
        // Two runs of the same router: no reading.
        assert!(compared(&router, &moe_run(10.0, false, 6)).router.is_none());
    }

    #[test]
    fn a_slower_run_shows_its_kernels_phase_and_a_confident_verdict() {
        let (base, new) = (run(ITERATIONS, 10.0, 5_000_000, BASE_KERNELS), run(ITERATIONS, 12.0, 7_000_000, NEW_KERNELS));
        let c = compared(&base, &new);
        let n = ITERATIONS as f64;
        assert_eq!(
            kernel_rows(&c),
            [
                ("old_kernel", KernelChangeKind::Disappeared, -50_000.0 * n),
                ("new_kernel", KernelChangeKind::Appeared, 40_000.0 * n),
                ("attention", KernelChangeKind::Slower, 30_000.0 * n)
            ]
        );
        let k = c.kernels.get().unwrap();
        assert_eq!((k.in_both, k.unchanged), (4, 3), "gemm, norm and tiny stay within the thresholds");
        let attention = &k.changes[2];
        assert_eq!((attention.mean_delta_ns, attention.base.as_ref().unwrap().count), (Some(30_000.0), 30));
        assert!(close(attention.mean_relative.unwrap(), 0.3));

        let p = c.phases.get().unwrap();
        let shifts: Vec<(&str, Option<f64>, Option<f64>, f64)> =
            p.phases.iter().map(|s| (s.name.as_str(), s.base_ns, s.new_ns, s.delta_ns)).collect();
        assert_eq!(
            shifts,
            [
                ("forward", Some(5e6), Some(7e6), 2e6),
                ("sample", Some(500_000.0), Some(500_000.0), 0.0),
                ("schedule", Some(1e6), Some(1e6), 0.0)
            ]
        );
        assert_eq!((p.base_iterations, p.new_iterations, p.phases[0].relative), (30, 30, Some(0.4)));

        let mean = figure(&c, "iteration host time, mean").get().unwrap();
        assert!(close(mean.base, 10.0) && close(mean.new, 12.0) && close(mean.relative.unwrap(), 0.2), "{mean:?}");
        assert_eq!(mean.assessment, Assessment::Worse);
        assert_eq!(figure(&c, "tokens per second").get().unwrap().assessment, Assessment::Worse);
        let kernel_time = figure(&c, "kernel time").get().unwrap();
        let per_iteration = |kernels: &[(&str, u64)]| kernels.iter().map(|k| k.1).sum::<u64>() as f64 * n;
        assert_eq!((kernel_time.base, kernel_time.new), (per_iteration(BASE_KERNELS), per_iteration(NEW_KERNELS)));
        assert_eq!(kernel_time.assessment, Assessment::Worse);
        let iterations = figure(&c, "iterations").get().unwrap();
        assert_eq!((iterations.delta, iterations.assessment), (0.0, Assessment::Same));
        assert_eq!(
            figure(&c, "iteration device time, mean"),
            &Measured::NotAvailable("both traces: no iteration row has a device time".into())
        );
        assert!(
            matches!(figure(&c, "CUDA API time"), Measured::NotAvailable(why) if why.starts_with("both traces: the trace has no CUDA API calls"))
        );

        let v = c.verdict.get().unwrap();
        assert_eq!(
            (v.metric, v.outcome, v.confidence, v.low_confidence.as_deref()),
            (Metric::HostTimePerRequest, Outcome::Slower, Confidence::High, None)
        );
        assert!(close(v.median_change, 0.2), "{v:?}");
        assert!((0.15..=0.2).contains(&v.interval_low) && (0.2..0.25).contains(&v.interval_high), "{v:?}");
        assert!(v.summary.starts_with("slower by 20.0% (95% CI "), "{}", v.summary);
        assert_eq!((v.base.iterations, v.new.iterations, v.base.source.as_str()), (30, 30, "iteration rows"));
    }

    #[test]
    fn the_other_way_round_every_sign_flips() {
        let (base, new) = (run(ITERATIONS, 10.0, 5_000_000, BASE_KERNELS), run(ITERATIONS, 12.0, 7_000_000, NEW_KERNELS));
        let c = compared(&new, &base);
        let n = ITERATIONS as f64;
        assert_eq!(
            kernel_rows(&c),
            [
                ("old_kernel", KernelChangeKind::Appeared, 50_000.0 * n),
                ("new_kernel", KernelChangeKind::Disappeared, -40_000.0 * n),
                ("attention", KernelChangeKind::Faster, -30_000.0 * n)
            ]
        );
        assert_eq!(c.phases.get().unwrap().phases[0].delta_ns, -2e6);
        assert_eq!(figure(&c, "iteration host time, median").get().unwrap().assessment, Assessment::Better);
        let v = c.verdict.get().unwrap();
        assert_eq!((v.outcome, v.confidence), (Outcome::Faster, Confidence::High));
        assert!(v.summary.starts_with("faster by 16.7% (95% CI "), "{}", v.summary);
    }

    /// A 16× larger batch makes each iteration 2× longer: the throughput is 8× higher.
    #[test]
    fn a_larger_batch_with_longer_iterations_is_faster_per_request() {
        let base = run(ITERATIONS, 10.0, 5_000_000, BASE_KERNELS);
        let mut new = run(ITERATIONS, 20.0, 5_000_000, BASE_KERNELS);
        for row in &mut new.iterations {
            (row.ctx_reqs, row.gen_reqs) = (0, 32);
        }
        let v = compared(&base, &new).verdict.get().cloned().unwrap();
        assert_eq!((v.metric, v.outcome), (Metric::HostTimePerRequest, Outcome::Faster));
        assert!(close(v.median_change, -0.875), "{v:?}");
    }

    #[test]
    fn identical_runs_change_nothing() {
        let mut trace = run(ITERATIONS, 10.0, 5_000_000, BASE_KERNELS);
        for row in &mut trace.iterations {
            row.device_ms = Some(row.host_ms * 0.8);
        }
        let c = compared(&trace, &trace);
        let k = c.kernels.get().unwrap();
        assert_eq!((k.in_both, k.unchanged, k.changes.len()), (5, 5, 0));
        assert!(c.phases.get().unwrap().phases.iter().all(|p| p.delta_ns == 0.0));
        for f in &c.figures {
            if let Measured::Available(change) = &f.change {
                assert_eq!((change.delta, change.assessment), (0.0, Assessment::Same), "{}", f.name);
            }
        }
        let v = c.verdict.get().unwrap();
        assert_eq!((v.metric, v.outcome, v.confidence), (Metric::HostTimePerRequest, Outcome::NoSignificantDifference, Confidence::High));
        assert!(v.interval_low < 0.0 && v.interval_high > 0.0, "{v:?}");
        assert!(v.summary.starts_with("no significant difference (median +0.0%, 95% CI -"), "{}", v.summary);
    }

    #[test]
    fn the_interval_is_the_same_every_time() {
        let (base, new) = (run(ITERATIONS, 10.0, 5_000_000, BASE_KERNELS), run(ITERATIONS, 10.1, 5_000_000, BASE_KERNELS));
        let (a, b) = (compared(&base, &new), compared(&base, &new));
        assert_eq!(a.verdict, b.verdict);
        let v = a.verdict.get().unwrap();
        assert!(v.interval_low < v.interval_high, "{v:?}");
    }

    #[test]
    fn few_iterations_are_low_confidence() {
        let (base, new) = (run(5, 10.0, 5_000_000, BASE_KERNELS), run(6, 12.0, 7_000_000, NEW_KERNELS));
        let v = compared(&base, &new).verdict.get().unwrap().clone();
        assert_eq!((v.outcome, v.confidence), (Outcome::Slower, Confidence::Low));
        assert_eq!(v.low_confidence.as_deref(), Some("5 base and 6 new iterations; a confident verdict needs at least 20 in each"));
        assert!(v.summary.ends_with(", low confidence"), "{}", v.summary);
    }

    #[test]
    fn without_iterations_there_is_no_verdict() {
        let strip = |mut t: TraceData| {
            t.iterations.clear();
            t.spans.clear();
            t
        };
        let (base, new) = (strip(run(4, 10.0, 5_000_000, BASE_KERNELS)), strip(run(4, 12.0, 7_000_000, NEW_KERNELS)));
        let c = compared(&base, &new);
        assert!(
            matches!(&c.verdict, Measured::NotAvailable(why) if why.starts_with("neither trace has iterations (no iteration rows")),
            "{:?}",
            c.verdict
        );
        assert!(matches!(&c.verdict, Measured::NotAvailable(why) if why.contains("Total GPU busy time is no substitute")));
        assert_eq!(kernel_rows(&c).len(), 3, "kernels compare without iterations");
        assert!(
            matches!(&c.phases, Measured::NotAvailable(why) if why.starts_with("both traces: the trace has no phase spans")),
            "{:?}",
            c.phases
        );
        assert!(
            matches!(figure(&c, "iteration host time, mean"), Measured::NotAvailable(why) if why.starts_with("both traces: the trace has no iteration rows"))
        );

        let with = run(4, 10.0, 5_000_000, BASE_KERNELS);
        let one_sided = compared(&with, &new);
        assert_eq!(
            one_sided.verdict,
            Measured::NotAvailable(
                "the new trace has no iterations (no iteration rows, no `iter N` spans); a verdict needs them in both".into()
            )
        );
        assert!(
            matches!(figure(&one_sided, "iterations"), Measured::NotAvailable(why) if why.starts_with("new: the trace has no iteration rows"))
        );
    }

    #[test]
    fn iteration_spans_stand_in_for_rows() {
        let spans = |ms: u64| {
            let s = (0..25u64)
                .map(|i| span(i * 100_000_000, i * 100_000_000 + ms * 1_000_000 + i * 10_000, 1, &format!("iter {i}"), "iteration"));
            TraceData { spans: s.collect(), ..TraceData::default() }
        };
        let c = compared(&spans(10), &spans(8));
        let v = c.verdict.get().unwrap();
        assert_eq!((v.base.source.as_str(), v.metric, v.outcome), ("iteration spans", Metric::HostTime, Outcome::Faster));
        assert_eq!((v.base.median_ms, v.new.median_ms), (10.12, 8.12));
    }

    #[test]
    fn hardware_counters_compare_per_name_and_device() {
        use lumen_trace::model::CounterRow;
        let sample = |ts_ns, name: &str, value| CounterRow { ts_ns, name: name.into(), device: Some(0), value };
        let base = TraceData { counters: vec![sample(0, "sm active %", 40.0), sample(10, "sm active %", 60.0)], ..TraceData::default() };
        let new = TraceData { counters: vec![sample(0, "sm active %", 70.0), sample(0, "dram read %", 20.0)], ..TraceData::default() };
        let c = compared(&base, &new);
        let sm = figure(&c, "sm active % (device 0), mean").get().unwrap();
        assert_eq!((sm.base, sm.new, sm.delta, sm.assessment), (50.0, 70.0, 20.0, Assessment::Changed));
        assert_eq!(
            figure(&c, "dram read % (device 0), mean"),
            &Measured::NotAvailable("base: the trace has no samples of dram read % on device 0".into())
        );
        let none = compared(&TraceData::default(), &TraceData::default());
        assert!(
            matches!(figure(&none, "hardware counters"), Measured::NotAvailable(why) if why.starts_with("both traces: the trace has no GPU metric samples"))
        );
    }

    #[test]
    fn the_report_fits_100_columns_and_the_json_keeps_everything() {
        let (base, mut new) = (run(ITERATIONS, 10.0, 5_000_000, BASE_KERNELS), run(5, 12.0, 7_000_000, NEW_KERNELS));
        let long = "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>(Params const&)";
        new.gpu_ops.push(named(long, 1_000_000, 1_001_000, 99));
        let c = compared(&base, &new);
        let mut out = String::new();
        render(&c, &mut out);
        for l in out.lines() {
            assert!(l.chars().count() <= WIDTH, "{} columns: {l}\n{out}", l.chars().count());
        }
        for expected in [
            "== Comparison: verdict ==",
            "slower by 20.0% (95% CI ",
            "low: 30 base and 5 new iterations; a confident verdict needs at least 20",
            "the mean moved by more than 5.0% and at least 1.0 µs",
            "4 in both (3 unchanged); 2 appeared, 1 disappeared, 1 slower, 0 faster",
            "iteration device time, mean",
            "  forward   5.000 ms  7.000 ms  +2.000 ms  +40.0%",
            "  sample    500.0 µs  500.0 µs          0   +0.0%",
        ] {
            assert!(out.contains(expected), "{expected:?} missing:\n{out}");
        }
        let unspaced: String = out.split_whitespace().collect();
        assert!(unspaced.contains(&long.replace(' ', "")), "the long name wraps whole:\n{out}");
        let flowing = out.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flowing.contains("- iteration device time, mean, iteration device time, median: not available: both traces: no iteration row has a device time"),
            "{out}"
        );
        let row = out.lines().find(|l| l.starts_with("  iteration host time, mean ")).expect("the mean host time row");
        assert_eq!(row.split_whitespace().skip(4).collect::<Vec<_>>(), ["10.000", "ms", "12.000", "ms", "+2.000", "ms", "+20.0%", "worse"]);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["verdict"]["available"]["outcome"], "slower");
        assert_eq!(json["verdict"]["available"]["confidence"], "low");
        assert_eq!(json["kernels"]["available"]["changes"][0]["change"], "disappeared");
        assert_eq!(json["figures"][0]["name"], "time span");
        assert_eq!(json["figures"][0]["better"], "lower");
    }
}
