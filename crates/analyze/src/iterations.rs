//! Engine iterations and the CPU time inside them: host against device time, batch composition,
//! KV utilisation, outlier iterations, time per CPU phase, host allocations and waits.

use std::collections::{HashMap, HashSet};

use lumen_trace::model::{IterationRow, TraceData};
use serde::Serialize;

use crate::measured::Measured;
use crate::stats::{quantile, share, Distribution};
use crate::text;
use crate::view::{fact, measured, missing, Block};

/// How many outliers the report lists.
const LISTED_OUTLIERS: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Iterations {
    pub per_iteration: Vec<IterationFacts>,
    pub host_ms: Distribution,
    pub device_ms: Measured<Distribution>,
    /// The mean of host minus device ms, over iterations that have both.
    pub mean_host_minus_device_ms: Measured<f64>,
    pub kv_utilisation: Measured<Distribution>,
    /// Host ms above this makes an outlier: median + 3 × MAD, or 2 × median when the MAD is 0.
    pub outlier_threshold_ms: f64,
    /// Outlier iterations, slowest first.
    pub outliers: Vec<IterationFacts>,
    pub allocations: Measured<AllocationsPerIteration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IterationFacts {
    pub iter: u64,
    pub host_ms: f64,
    pub device_ms: Option<f64>,
    pub ctx_reqs: u64,
    pub ctx_tokens: u64,
    pub gen_reqs: u64,
    pub gen_tokens: u64,
    /// Used over total KV blocks, when the iteration knows its total.
    pub kv_utilisation: Option<f64>,
}

impl From<&IterationRow> for IterationFacts {
    fn from(r: &IterationRow) -> Self {
        IterationFacts {
            iter: r.iter,
            host_ms: r.host_ms,
            device_ms: r.device_ms,
            ctx_reqs: r.ctx_reqs,
            ctx_tokens: r.ctx_tokens,
            gen_reqs: r.gen_reqs,
            gen_tokens: r.gen_tokens,
            kv_utilisation: (r.kv_total_blocks > 0).then(|| r.kv_used_blocks as f64 / r.kv_total_blocks as f64),
        }
    }
}

/// The `allocations` rows (host allocations per iteration).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllocationsPerIteration {
    pub iterations: usize,
    pub mean_count: f64,
    pub max_count: u64,
    pub mean_bytes: f64,
    pub max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phases {
    pub phases: Measured<PhaseTimes>,
    /// Spans of category `alloc`: timed host allocations.
    pub alloc_spans: Measured<SpanTotal>,
    /// Spans of category `wait`: time blocked on locks and channels.
    pub wait_spans: Measured<SpanTotal>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseTimes {
    /// Iterations the phases are averaged over (0 when the trace cannot tell).
    pub iterations: usize,
    /// The summed host time of those iterations, when the trace has their start and end.
    pub host_ns: Option<u64>,
    /// Most time first.
    pub phases: Vec<Phase>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    pub name: String,
    pub count: usize,
    pub total_ns: u64,
    pub mean_per_iteration_ns: Option<f64>,
    pub share_of_host: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpanTotal {
    pub count: usize,
    pub total_ns: u64,
}

/// One iteration's host time window.
pub(crate) struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
}

/// The number after `iter ` in `iter 12`, `iter 12: 3 ctx reqs, ...` or `lumen: iter 12`.
pub fn iteration_number(span_name: &str) -> Option<u64> {
    if let Some(step) = span_name.strip_prefix("ProfilerStep#") {
        return step.parse().ok();
    }
    let rest = span_name.strip_prefix("lumen: ").unwrap_or(span_name).strip_prefix("iter ")?;
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// The iterations' windows sorted by start, from `iterations` rows or else from `iter N` spans
/// (one per iteration number), and which of the two they came from.
pub(crate) fn iteration_windows(trace: &TraceData) -> Option<(&'static str, Vec<Window>)> {
    let (source, mut windows) = if !trace.iterations.is_empty() {
        ("iteration rows", trace.iterations.iter().map(|r| Window { start_ns: r.start_ns, end_ns: r.end_ns }).collect::<Vec<_>>())
    } else {
        let mut seen = HashSet::new();
        let spans = trace.spans.iter().filter(|s| iteration_number(&s.name).is_some_and(|n| seen.insert(n)));
        ("iteration spans", spans.map(|s| Window { start_ns: s.start_ns, end_ns: s.end_ns }).collect())
    };
    windows.sort_unstable_by_key(|w| w.start_ns);
    (!windows.is_empty()).then_some((source, windows))
}

pub fn analyze(trace: &TraceData) -> Measured<Iterations> {
    if trace.iterations.is_empty() {
        return Measured::NotAvailable("the trace has no iteration rows; record the engine with `--trace` or LUMEN_TRACE".into());
    }
    let per_iteration: Vec<IterationFacts> = trace.iterations.iter().map(IterationFacts::from).collect();
    let mut host: Vec<f64> = per_iteration.iter().map(|i| i.host_ms).collect();
    let host_ms = Distribution::of(&mut host).expect("iterations are not empty");
    let mut device: Vec<f64> = per_iteration.iter().filter_map(|i| i.device_ms).collect();
    let gaps: Vec<f64> = per_iteration.iter().filter_map(|i| Some(i.host_ms - i.device_ms?)).collect();
    let mut kv: Vec<f64> = per_iteration.iter().filter_map(|i| i.kv_utilisation).collect();
    let threshold = outlier_threshold(&host);
    let mut outliers: Vec<IterationFacts> = per_iteration.iter().filter(|i| i.host_ms > threshold).cloned().collect();
    outliers.sort_by(|a, b| b.host_ms.total_cmp(&a.host_ms));
    let no_device = || "no iteration row has a device time".to_string();
    Measured::Available(Iterations {
        host_ms,
        device_ms: Measured::from_option(Distribution::of(&mut device), no_device),
        mean_host_minus_device_ms: Measured::from_option(
            (!gaps.is_empty()).then(|| gaps.iter().sum::<f64>() / gaps.len() as f64),
            no_device,
        ),
        kv_utilisation: Measured::from_option(Distribution::of(&mut kv), || "no iteration row has a KV block total".into()),
        outlier_threshold_ms: threshold,
        outliers,
        per_iteration,
        allocations: allocations(trace),
    })
}

/// median + 3 × MAD of sorted values, or 2 × median when the MAD is 0.
pub(crate) fn outlier_threshold(sorted: &[f64]) -> f64 {
    let median = quantile(sorted, 0.5);
    let mut deviations: Vec<f64> = sorted.iter().map(|v| (v - median).abs()).collect();
    deviations.sort_unstable_by(f64::total_cmp);
    let mad = quantile(&deviations, 0.5);
    if mad > 0.0 {
        median + 3.0 * mad
    } else {
        2.0 * median
    }
}

fn allocations(trace: &TraceData) -> Measured<AllocationsPerIteration> {
    let rows = &trace.allocations;
    if rows.is_empty() {
        return Measured::NotAvailable("the trace has no allocation rows; record them with LUMEN_PROFILE_RECORD_ALLOC=1".into());
    }
    let n = rows.len() as f64;
    Measured::Available(AllocationsPerIteration {
        iterations: rows.len(),
        mean_count: rows.iter().map(|r| r.count as f64).sum::<f64>() / n,
        max_count: rows.iter().map(|r| r.count).max().unwrap_or(0),
        mean_bytes: rows.iter().map(|r| r.bytes as f64).sum::<f64>() / n,
        max_bytes: rows.iter().map(|r| r.bytes).max().unwrap_or(0),
    })
}

/// CPU time per phase (spans of category `phase`), and the alloc and wait span totals.
pub fn phases(trace: &TraceData) -> Phases {
    let span_total = |category: &str, how: &str| {
        let spans: Vec<u64> = trace.spans.iter().filter(|s| s.category == category).map(|s| s.end_ns.saturating_sub(s.start_ns)).collect();
        Measured::from_option((!spans.is_empty()).then(|| SpanTotal { count: spans.len(), total_ns: spans.iter().sum() }), || {
            format!("the trace has no spans of category {category}; record them with {how}")
        })
    };
    Phases {
        phases: phase_times(trace),
        alloc_spans: span_total("alloc", "LUMEN_PROFILE_RECORD_ALLOC=1"),
        wait_spans: span_total("wait", "LUMEN_PROFILE_RECORD_WAITS=1"),
    }
}

/// One engine phase (admit, schedule, prepare inputs, forward, sample, update) of one iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PhaseSpan<'a> {
    pub name: &'a str,
    pub start_ns: u64,
    pub end_ns: u64,
    pub iteration: Option<u64>,
}

/// The engine's phase spans: the recorder's (category `phase`), or else the ranges one level
/// inside an iteration range on the same thread: in a collector trace lumen's NVTX ranges
/// (`lumen: forward` inside `lumen: iter 7: ...`, named without the domain), in an imported
/// torch.profiler trace the `record_function` ranges inside `ProfilerStep#N`.
pub(crate) fn phase_spans(trace: &TraceData) -> Vec<PhaseSpan<'_>> {
    let recorded: Vec<PhaseSpan> = trace
        .spans
        .iter()
        .filter(|s| s.category == "phase")
        .map(|s| PhaseSpan { name: &s.name, start_ns: s.start_ns, end_ns: s.end_ns, iteration: s.iteration })
        .collect();
    if !recorded.is_empty() {
        return recorded;
    }
    let ranges = trace.spans.iter().filter(|s| s.category == "nvtx" || s.category == "user_annotation");
    let mut iterations: HashMap<u64, Vec<(u64, u64, u64)>> = HashMap::new();
    for s in ranges.clone().filter(|s| s.depth == 0) {
        if let Some(n) = iteration_number(&s.name) {
            iterations.entry(s.tid).or_default().push((s.start_ns, s.end_ns, n));
        }
    }
    for list in iterations.values_mut() {
        list.sort_unstable();
    }
    ranges
        .filter(|s| s.depth == 1)
        .filter_map(|s| {
            let name = if s.category == "nvtx" { s.name.strip_prefix("lumen: ")? } else { s.name.as_str() };
            let list = iterations.get(&s.tid)?;
            let (start, end, n) = list[..list.partition_point(|&(start, _, _)| start <= s.start_ns)].last()?;
            (*start <= s.start_ns && s.end_ns <= *end).then_some(PhaseSpan {
                name,
                start_ns: s.start_ns,
                end_ns: s.end_ns,
                iteration: Some(*n),
            })
        })
        .collect()
}

fn phase_times(trace: &TraceData) -> Measured<PhaseTimes> {
    let mut by_name: HashMap<&str, (usize, u64)> = HashMap::new();
    let mut labelled = HashSet::new();
    for s in phase_spans(trace) {
        let total = by_name.entry(s.name).or_default();
        total.0 += 1;
        total.1 += s.end_ns.saturating_sub(s.start_ns);
        labelled.extend(s.iteration);
    }
    if by_name.is_empty() {
        return Measured::NotAvailable(
            "the trace has no phase spans (category phase, lumen's NVTX ranges or record_function ranges inside iteration \
             ranges); record the engine with `--trace` or LUMEN_TRACE, or under `lumen profile`"
                .into(),
        );
    }
    let (iterations, host_ns) = match iteration_windows(trace) {
        Some((_, windows)) => (windows.len(), Some(windows.iter().map(|w| w.end_ns.saturating_sub(w.start_ns)).sum::<u64>())),
        None => (labelled.len(), None),
    };
    let mut phases: Vec<Phase> = by_name
        .into_iter()
        .map(|(name, (count, total_ns))| Phase {
            name: name.to_string(),
            count,
            total_ns,
            mean_per_iteration_ns: (iterations > 0).then(|| total_ns as f64 / iterations as f64),
            share_of_host: host_ns.map(|host| share(total_ns as f64, host as f64)),
        })
        .collect();
    phases.sort_unstable_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.name.cmp(&b.name)));
    Measured::Available(PhaseTimes { iterations, host_ns, phases })
}

fn distribution_ms(d: &Distribution) -> String {
    format!("mean {}, median {}, p90 {}, max {}", text::ms(d.mean), text::ms(d.median), text::ms(d.p90), text::ms(d.max))
}

/// The iterations section's blocks, for the terminal and the page (which adds the chart).
pub fn view(iterations: &Measured<Iterations>) -> Vec<Block> {
    let it = match iterations {
        Measured::Available(it) => it,
        Measured::NotAvailable(why) => return vec![Block::Facts(vec![missing("iterations", why)])],
    };
    let mut blocks = vec![Block::Facts(vec![
        fact("iterations", it.per_iteration.len().to_string()),
        fact("host time", distribution_ms(&it.host_ms)),
        measured("device time", &it.device_ms, distribution_ms),
        measured("host − device (mean)", &it.mean_host_minus_device_ms, |gap| text::ms(*gap)),
        measured("KV utilisation", &it.kv_utilisation, |kv| format!("mean {}, max {}", text::percent(kv.mean), text::percent(kv.max))),
        fact("outliers", format!("{} above {}", it.outliers.len(), text::ms(it.outlier_threshold_ms))),
    ])];
    if !it.outliers.is_empty() {
        let rows = it
            .outliers
            .iter()
            .take(LISTED_OUTLIERS)
            .map(|o| {
                vec![
                    o.iter.to_string(),
                    text::ms(o.host_ms),
                    o.device_ms.map_or("-".into(), text::ms),
                    o.ctx_reqs.to_string(),
                    o.ctx_tokens.to_string(),
                    o.gen_reqs.to_string(),
                    o.gen_tokens.to_string(),
                    o.kv_utilisation.map_or("-".into(), text::percent),
                ]
            })
            .collect();
        blocks.push(Block::Table {
            header: vec!["iter", "host", "device", "ctx reqs", "ctx tokens", "gen reqs", "gen tokens", "KV"],
            left: vec![],
            rows,
        });
    }
    blocks.push(Block::Facts(vec![measured("host allocations", &it.allocations, |a| {
        format!(
            "{:.1} per iteration (max {}), {} per iteration (max {})",
            a.mean_count,
            a.max_count,
            text::bytes(a.mean_bytes as u64),
            text::bytes(a.max_bytes)
        )
    })]));
    blocks
}

/// The CPU-phases section's blocks, for the terminal and the page.
pub fn view_phases(p: &Phases) -> Vec<Block> {
    let phases = match &p.phases {
        Measured::Available(times) => Block::Table {
            header: vec!["phase", "spans", "total", "per iteration", "of host"],
            left: vec![0],
            rows: times
                .phases
                .iter()
                .map(|phase| {
                    vec![
                        phase.name.clone(),
                        phase.count.to_string(),
                        text::duration(phase.total_ns as f64),
                        phase.mean_per_iteration_ns.map_or("-".into(), text::duration),
                        phase.share_of_host.map_or("-".into(), text::percent),
                    ]
                })
                .collect(),
        },
        Measured::NotAvailable(why) => Block::Facts(vec![missing("phases", why)]),
    };
    let total = |t: &SpanTotal| format!("{} over {} spans", text::duration(t.total_ns as f64), t.count);
    vec![phases, Block::Facts(vec![measured("alloc spans", &p.alloc_spans, total), measured("wait spans", &p.wait_spans, total)])]
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_test_support::rows::{iteration, span};
    use lumen_trace::model::{AllocationRow, SpanRow};

    #[test]
    fn iteration_numbers_come_from_span_names() {
        assert_eq!(iteration_number("iter 12"), Some(12));
        assert_eq!(iteration_number("iter 4: 1 ctx reqs, 2 gen reqs"), Some(4));
        assert_eq!(iteration_number("lumen: iter 7"), Some(7));
        assert_eq!(iteration_number("ProfilerStep#31"), Some(31));
        let others = ["iteration 3", "iter x", "forward", "ProfilerStep#", "ProfilerStep#3x"].map(iteration_number);
        assert_eq!(others, [None; 5]);
    }

    #[test]
    fn host_and_device_time_with_outliers() {
        let host = [10.0, 11.0, 9.0, 10.0, 30.0, 10.5];
        let mut rows: Vec<IterationRow> = host.iter().enumerate().map(|(i, &ms)| iteration(i as u64, 0, 1, ms)).collect();
        rows[0].device_ms = Some(8.0);
        rows[1].device_ms = Some(10.0);
        rows[4].kv_used_blocks = 3;
        rows[4].kv_total_blocks = 4;
        let trace = TraceData { iterations: rows, ..TraceData::default() };
        let it = analyze(&trace);
        let it = it.get().unwrap();
        assert_eq!((it.host_ms.median, it.host_ms.max), (10.25, 30.0));
        assert_eq!((it.device_ms.get().unwrap().mean, it.mean_host_minus_device_ms.get().copied()), (9.0, Some(1.5)));
        // deviations 0.25 0.75 1.25 0.25 19.75 0.25: MAD 0.5, threshold 10.25 + 1.5.
        assert_eq!(it.outlier_threshold_ms, 11.75);
        let outliers: Vec<(u64, f64, u64, Option<f64>)> =
            it.outliers.iter().map(|o| (o.iter, o.host_ms, o.ctx_tokens, o.kv_utilisation)).collect();
        assert_eq!(outliers, [(4, 30.0, 4, Some(0.75))]);
        assert_eq!(it.kv_utilisation.get().unwrap().count, 1);
        assert!(it.allocations.get().is_none());
    }

    #[test]
    fn a_zero_mad_falls_back_to_twice_the_median() {
        let host = [5.0, 5.0, 5.0, 9.0, 11.0];
        assert_eq!(outlier_threshold(&host), 10.0);
    }

    #[test]
    fn phases_per_iteration_and_share_of_host_time() {
        let mut spans = vec![span(0, 100, 1, "iter 1", "iteration"), span(100, 300, 1, "iter 2", "iteration")];
        spans.extend([
            span(0, 60, 1, "forward", "phase"),
            span(60, 70, 1, "sample", "phase"),
            span(100, 240, 1, "forward", "phase"),
            span(240, 260, 1, "sample", "phase"),
            span(10, 15, 1, "malloc", "alloc"),
        ]);
        let trace = TraceData { spans, ..TraceData::default() };
        let p = phases(&trace);
        let times = p.phases.get().unwrap();
        assert_eq!((times.iterations, times.host_ns), (2, Some(300)));
        let rows: Vec<(&str, usize, u64, Option<f64>)> =
            times.phases.iter().map(|p| (p.name.as_str(), p.count, p.total_ns, p.mean_per_iteration_ns)).collect();
        assert_eq!(rows, [("forward", 2, 200, Some(100.0)), ("sample", 2, 30, Some(15.0))]);
        assert_eq!(times.phases[1].share_of_host, Some(0.1));
        assert_eq!(p.alloc_spans, Measured::Available(SpanTotal { count: 1, total_ns: 5 }));
        assert!(matches!(&p.wait_spans, Measured::NotAvailable(why) if why.contains("LUMEN_PROFILE_RECORD_WAITS")));
    }

    #[test]
    fn collector_and_torch_traces_give_phases_from_ranges_inside_iterations() {
        let nested = |start, end, tid, name: &str, depth| SpanRow { depth, ..span(start, end, tid, name, "nvtx") };
        let spans = vec![
            nested(0, 100, 1, "lumen: iter 7: 0 ctx reqs, 4 gen reqs", 0),
            nested(5, 60, 1, "lumen: forward", 1),
            nested(10, 20, 1, "lumen: layer 0", 2),
            nested(60, 90, 1, "lumen: sample", 1),
            nested(100, 200, 1, "lumen: iter 8: 0 ctx reqs, 4 gen reqs", 0),
            nested(110, 180, 1, "lumen: forward", 1),
            nested(300, 400, 2, "lumen: forward", 1),
            nested(0, 100, 3, "train step", 0),
            nested(10, 50, 3, "lumen: forward", 1),
        ];
        let trace = TraceData { spans, ..TraceData::default() };
        let torch = TraceData {
            spans: vec![
                SpanRow { category: "user_annotation".into(), ..nested(0, 100, 4, "ProfilerStep#3", 0) },
                SpanRow { category: "user_annotation".into(), ..nested(10, 70, 4, "forward", 1) },
                SpanRow { category: "cpu_op".into(), ..nested(20, 30, 4, "aten::mm", 1) },
            ],
            ..TraceData::default()
        };
        let found: Vec<(&str, Option<u64>)> = phase_spans(&torch).iter().map(|p| (p.name, p.iteration)).collect();
        assert_eq!(found, [("forward", Some(3))], "record_function ranges inside ProfilerStep#N");
        let found: Vec<(&str, u64, Option<u64>)> = phase_spans(&trace).iter().map(|p| (p.name, p.start_ns, p.iteration)).collect();
        assert_eq!(found, [("forward", 5, Some(7)), ("sample", 60, Some(7)), ("forward", 110, Some(8))]);
        let times = phases(&trace).phases.get().cloned().expect("phases from NVTX ranges");
        assert_eq!((times.iterations, times.host_ns), (2, Some(200)));
        assert_eq!((times.phases[0].name.as_str(), times.phases[0].total_ns), ("forward", 125));
    }

    #[test]
    fn allocation_rows_per_iteration() {
        let row = |count, bytes| AllocationRow { iteration: 0, count, bytes, frees: 0, kv_blocks_allocated: 0, kv_blocks_freed: 0 };
        let trace =
            TraceData { iterations: vec![iteration(0, 0, 1, 1.0)], allocations: vec![row(2, 100), row(4, 300)], ..TraceData::default() };
        let a = analyze(&trace).get().unwrap().allocations.clone();
        assert_eq!(
            a,
            Measured::Available(AllocationsPerIteration {
                iterations: 2,
                mean_count: 3.0,
                max_count: 4,
                mean_bytes: 200.0,
                max_bytes: 300
            })
        );
    }
}
