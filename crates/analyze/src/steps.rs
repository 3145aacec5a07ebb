//! Steps: the repeated unit of work a trace is judged by, and which of them are steady state.
//! Steps are lumen's iteration rows, else the iteration ranges (`iter N` from the recorder or
//! lumen's NVTX, `ProfilerStep#N` from NVTX or torch.profiler's `record_function`), else nothing;
//! a user's `--step-range REGEX` names them instead. A step far longer than the median whose extra
//! time the GPU spent idle is a one-off stall (warm-up, a first graph launch, lazy module loading,
//! compilation): it is reported as an outlier, with what ran in it, and the idle-time patterns
//! leave it out.

use std::collections::HashSet;

use anyhow::{Context, Result};
use fancy_regex::Regex;
use lumen_trace::model::{GpuOpKind, TraceData};
use serde::Serialize;

use crate::gpu::is_busy;
use crate::iterations::{iteration_number, outlier_threshold};
use crate::measured::Measured;
use crate::stats::{covered_within, union, Interval};
use crate::text;
use crate::view::{fact, missing, Block};

/// Outliers above this share of the steps are the steps' usual behaviour, not one-off stalls.
pub const MAX_OUTLIER_SHARE: f64 = 0.2;
/// A step is a stall when the GPU was idle for at least this share of its time beyond the median.
pub const STALL_IDLE_SHARE: f64 = 0.5;
/// Fewer steps than this cannot tell an outlier from the rest.
const MIN_STEPS: usize = 4;
/// How many calls and ranges each outlier names.
const RUNNING_PER_OUTLIER: usize = 3;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Steps {
    /// Where the steps came from: iteration rows, iteration ranges or the user's regex.
    pub source: String,
    pub count: usize,
    pub median_ns: f64,
    /// A step longer than this is an outlier (median + 3 × MAD, or 2 × median when the MAD is 0).
    pub outlier_threshold_ns: f64,
    /// The steps the patterns judge.
    pub steady: usize,
    /// One-off stalls, left out of the idle-time patterns; longest first.
    pub outliers: Vec<OutlierStep>,
    /// Steps above the threshold that are not one-off (too many of them, or busy rather than
    /// idle): they stay in the steady state.
    pub slow_kept: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutlierStep {
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// GPU idle time inside the step, when the trace has GPU work.
    pub gpu_idle_ns: Option<u64>,
    /// The longest CUDA calls and CPU ranges inside it: what the stall was.
    pub running: Vec<String>,
}

/// One step's time range.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// The steps and the outlier windows that the other analyses read.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepWindows {
    pub steps: Vec<Step>,
    /// The outlier steps' ranges, sorted by start.
    pub outliers: Vec<Interval>,
}

impl StepWindows {
    /// Whether `ts` falls in an outlier step.
    pub fn in_outlier(&self, ts: u64) -> bool {
        let i = self.outliers.partition_point(|o| o.end <= ts);
        i < self.outliers.len() && self.outliers[i].start <= ts
    }

    /// The steps outside the outliers.
    pub fn steady(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| !self.in_outlier(s.start_ns))
    }
}

/// Compiles a `--step-range` pattern, naming it when it is not a regex.
pub fn step_pattern(pattern: &str) -> Result<Regex> {
    Regex::new(pattern).with_context(|| format!("--step-range {pattern:?} is not a regular expression"))
}

/// The steps of `trace`, sorted by start, and where they came from.
fn find_steps(trace: &TraceData, pattern: Option<&Regex>) -> Option<(String, Vec<Step>)> {
    let (source, mut steps) = if let Some(re) = pattern {
        let mut seen = HashSet::new();
        let matching = trace.spans.iter().filter(|s| re.is_match(&s.name).unwrap_or(false) && seen.insert((s.start_ns, s.end_ns)));
        let steps: Vec<Step> = matching.map(|s| Step { name: s.name.clone(), start_ns: s.start_ns, end_ns: s.end_ns }).collect();
        (format!("ranges matching --step-range {:?}", re.as_str()), steps)
    } else if !trace.iterations.is_empty() {
        let rows = trace.iterations.iter().map(|r| Step { name: format!("iter {}", r.iter), start_ns: r.start_ns, end_ns: r.end_ns });
        ("iteration rows".to_string(), rows.collect())
    } else {
        let mut seen = HashSet::new();
        let ranges = trace.spans.iter().filter(|s| iteration_number(&s.name).is_some_and(|n| seen.insert(n)));
        let steps = ranges.map(|s| Step { name: s.name.clone(), start_ns: s.start_ns, end_ns: s.end_ns }).collect();
        ("iteration ranges (iter N, ProfilerStep#N)".to_string(), steps)
    };
    steps.sort_unstable_by_key(|s| (s.start_ns, s.end_ns));
    (!steps.is_empty()).then_some((source, steps))
}

pub(crate) fn analyze(trace: &TraceData, pattern: Option<&Regex>) -> (Measured<Steps>, StepWindows) {
    let Some((source, steps)) = find_steps(trace, pattern) else {
        let why = match pattern {
            Some(re) => format!("no range matches --step-range {:?}", re.as_str()),
            None => "the trace has no steps (iteration rows, `iter N` or `ProfilerStep#N` ranges); name them with --step-range REGEX"
                .to_string(),
        };
        return (Measured::NotAvailable(why), StepWindows::default());
    };
    let mut durations: Vec<f64> = steps.iter().map(|s| s.end_ns.saturating_sub(s.start_ns) as f64).collect();
    durations.sort_unstable_by(f64::total_cmp);
    let median_ns = crate::stats::quantile(&durations, 0.5);
    let threshold_ns = outlier_threshold(&durations);
    let busy = busy_union(trace);
    let slow: Vec<&Step> = steps.iter().filter(|s| (s.end_ns.saturating_sub(s.start_ns)) as f64 > threshold_ns).collect();
    let stalls: Vec<&Step> = slow
        .iter()
        .copied()
        .filter(|s| {
            let extra = (s.end_ns - s.start_ns) as f64 - median_ns;
            busy.as_ref().is_none_or(|busy| idle_in(busy, s.start_ns, s.end_ns) as f64 >= STALL_IDLE_SHARE * extra)
        })
        .collect();
    let one_off = steps.len() >= MIN_STEPS && (stalls.len() as f64) <= MAX_OUTLIER_SHARE * steps.len() as f64;
    let stalls = if one_off { stalls } else { Vec::new() };
    let mut outliers: Vec<OutlierStep> = stalls
        .iter()
        .map(|s| OutlierStep {
            name: s.name.clone(),
            start_ns: s.start_ns,
            end_ns: s.end_ns,
            gpu_idle_ns: busy.as_ref().map(|busy| idle_in(busy, s.start_ns, s.end_ns)),
            running: running_in(trace, s),
        })
        .collect();
    outliers.sort_by_key(|o| std::cmp::Reverse(o.end_ns - o.start_ns));
    let windows = StepWindows { outliers: union(stalls.iter().map(|s| (s.start_ns, s.end_ns))), steps: steps.clone() };
    let summary = Steps {
        source,
        count: steps.len(),
        median_ns,
        outlier_threshold_ns: threshold_ns,
        steady: steps.len() - stalls.len(),
        slow_kept: slow.len() - stalls.len(),
        outliers,
    };
    (Measured::Available(summary), windows)
}

/// The union of every device's busy intervals, when the trace has GPU work.
fn busy_union(trace: &TraceData) -> Option<Vec<Interval>> {
    let mut ops: Vec<(u64, u64)> = trace.gpu_ops.iter().filter(|op| is_busy(op.kind)).map(|op| (op.start_ns, op.end_ns)).collect();
    ops.sort_unstable();
    (!ops.is_empty()).then(|| union(ops))
}

/// The time in `[start, end)` that no interval of `busy` covers.
fn idle_in(busy: &[Interval], start: u64, end: u64) -> u64 {
    (end - start).saturating_sub(covered_within(busy, start, end))
}

/// The longest CUDA calls and the longest CPU ranges (other than the step itself) inside a step.
fn running_in(trace: &TraceData, step: &Step) -> Vec<String> {
    let within = |start: u64, end: u64| start >= step.start_ns && end <= step.end_ns;
    let mut calls: Vec<(u64, &str)> =
        trace.api_calls.iter().filter(|c| within(c.start_ns, c.end_ns)).map(|c| (c.end_ns - c.start_ns, c.name.as_str())).collect();
    calls.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let mut ranges: Vec<(u64, &str)> = trace
        .spans
        .iter()
        .filter(|s| within(s.start_ns, s.end_ns) && s.name != step.name && iteration_number(&s.name).is_none())
        .map(|s| (s.end_ns - s.start_ns, s.name.as_str()))
        .collect();
    ranges.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let graph_launches = trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Graph && within(op.start_ns, op.end_ns)).count();
    let mut running: Vec<String> = calls
        .iter()
        .take(RUNNING_PER_OUTLIER)
        .map(|(ns, name)| format!("call {name} {}", text::duration(*ns as f64)))
        .chain(
            ranges
                .iter()
                .take(RUNNING_PER_OUTLIER)
                .map(|(ns, name)| format!("range {} {}", text::truncate(name, 50), text::duration(*ns as f64))),
        )
        .collect();
    if graph_launches > 0 {
        running.push(format!("{graph_launches} CUDA graph launches"));
    }
    running
}

/// The section's blocks, for the terminal and the page.
pub fn view(steps: &Measured<Steps>) -> Vec<Block> {
    let s = match steps {
        Measured::Available(s) => s,
        Measured::NotAvailable(why) => return vec![Block::Facts(vec![missing("steps", why)])],
    };
    let mut facts = vec![
        fact("steps", format!("{} from {}", s.count, s.source)),
        fact("step time", format!("median {}, outlier above {}", text::duration(s.median_ns), text::duration(s.outlier_threshold_ns))),
        fact("judged", format!("{} steady steps, {} one-off outliers left out", s.steady, s.outliers.len())),
    ];
    if s.slow_kept > 0 {
        facts.push(fact("slow steps kept", format!("{} (busy, or too many to be one-off)", s.slow_kept)));
    }
    let mut blocks = vec![Block::Facts(facts)];
    if !s.outliers.is_empty() {
        let rows = s
            .outliers
            .iter()
            .map(|o| {
                vec![
                    text::truncate(&o.name, 30),
                    text::duration((o.end_ns - o.start_ns) as f64),
                    o.gpu_idle_ns.map_or("-".into(), |ns| text::duration(ns as f64)),
                    o.running.join("; "),
                ]
            })
            .collect();
        blocks.push(Block::Table { header: vec!["outlier step", "time", "GPU idle", "what ran"], left: vec![0, 3], rows });
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_test_support::rows::{api, kernel, span};

    /// Ten 1 ms steps of back-to-back kernels; step 3 also holds a 20 ms idle stall in a long call.
    fn stalled_steps() -> TraceData {
        let mut trace = TraceData::default();
        let mut t = 0;
        for n in 0..10u64 {
            let stall = if n == 3 { 20_000_000 } else { 0 };
            trace.spans.push(span(t, t + 1_000_000 + stall, 1, &format!("ProfilerStep#{n}"), "user_annotation"));
            if stall > 0 {
                trace.api_calls.push(api("cudaGraphLaunch", t, t + stall, 100 + n));
            }
            trace.gpu_ops.push(kernel(t + stall, t + stall + 1_000_000, n));
            t += 1_000_000 + stall;
        }
        trace
    }

    #[test]
    fn an_idle_stall_is_a_one_off_outlier_with_what_ran_in_it() {
        let (steps, windows) = analyze(&stalled_steps(), None);
        let s = steps.get().expect("ProfilerStep ranges are steps");
        assert_eq!((s.count, s.steady, s.outliers.len(), s.slow_kept), (10, 9, 1, 0));
        assert_eq!(s.median_ns, 1_000_000.0);
        let o = &s.outliers[0];
        assert_eq!((o.name.as_str(), o.gpu_idle_ns), ("ProfilerStep#3", Some(20_000_000)));
        assert_eq!(o.running, ["call cudaGraphLaunch 20.000 ms"]);
        assert!(windows.in_outlier(3_000_000 + 5) && !windows.in_outlier(2_999_999));
        assert_eq!(windows.steady().count(), 9);
    }

    #[test]
    fn a_long_busy_step_is_work_not_a_stall() {
        let mut trace = stalled_steps();
        trace.api_calls.clear();
        // The GPU works through step 3's extra 20 ms: a long prefill, not a stall.
        trace.gpu_ops[3].start_ns = trace.spans[3].start_ns;
        let s = analyze(&trace, None).0.get().cloned().unwrap();
        assert_eq!((s.outliers.len(), s.slow_kept, s.steady), (0, 1, 10));
    }

    #[test]
    fn many_slow_steps_are_the_usual_behaviour() {
        let mut trace = TraceData::default();
        for n in 0..10u64 {
            let long = if n % 3 == 0 { 10_000_000 } else { 1_000_000 };
            trace.spans.push(span(n * 20_000_000, n * 20_000_000 + long, 1, &format!("iter {n}"), "iteration"));
        }
        let s = analyze(&trace, None).0.get().cloned().unwrap();
        assert_eq!((s.outliers.len(), s.slow_kept), (0, 4), "4 of 10 is not one-off");
    }

    #[test]
    fn a_user_regex_names_the_steps_and_a_bad_one_is_an_error() {
        let mut trace = TraceData::default();
        for n in 0..3u64 {
            trace.spans.push(span(n * 10, n * 10 + 5, 1, &format!("train step {n}"), "nvtx"));
            trace.spans.push(span(n * 10 + 1, n * 10 + 2, 1, "optimizer", "nvtx"));
        }
        let re = step_pattern("^train step").unwrap();
        let s = analyze(&trace, Some(&re)).0.get().cloned().unwrap();
        assert_eq!((s.count, s.source.as_str()), (3, "ranges matching --step-range \"^train step\""));
        let none = analyze(&trace, Some(&step_pattern("^eval").unwrap())).0;
        assert_eq!(none, Measured::NotAvailable("no range matches --step-range \"^eval\"".into()));
        assert!(step_pattern("(").unwrap_err().to_string().contains("--step-range \"(\" is not a regular expression"));
        assert!(analyze(&TraceData::default(), None).0.get().is_none());
    }
}
