//! Launch overhead: CUDA API time against kernel time, the queue time from a launch call's end
//! to its kernel's start, kernels launched per iteration, and CUDA graph launches against the
//! kernels they replaced.

use lumen_trace::model::{GpuOpKind, GpuOpRow, TraceData};
use serde::Serialize;

use crate::iterations::iteration_windows;
use crate::measured::{Measured, NO_API_CALLS};
use crate::stats::Distribution;
use crate::text;
use crate::view::{fact, measured, missing, Block};
use crate::LaunchIndex;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Launch {
    pub api_calls: usize,
    /// The summed duration of every API call.
    pub api_total_ns: u64,
    pub kernels: usize,
    pub kernel_total_ns: u64,
    /// Kernel start minus launch call end (ns), over kernels whose launch call is in the trace.
    pub queue_ns: Measured<Distribution>,
    pub per_iteration: Measured<KernelsPerIteration>,
    pub graphs: Measured<Graphs>,
}

/// Kernels whose launch call started inside each iteration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelsPerIteration {
    /// Where the iterations came from: `iteration rows` or `iteration spans`.
    pub source: String,
    pub iterations: usize,
    pub kernels: Distribution,
    /// Kernels launched outside every iteration.
    pub outside: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graphs {
    pub graph_launches: usize,
    /// Kernels that ran as nodes of a graph.
    pub node_kernels: usize,
    /// Kernels launched one by one.
    pub eager_kernels: usize,
}

pub fn analyze(trace: &TraceData, launches: &LaunchIndex) -> Measured<Launch> {
    if trace.api_calls.is_empty() {
        return Measured::NotAvailable(NO_API_CALLS.into());
    }
    let kernels: Vec<&GpuOpRow> = trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Kernel).collect();
    let matched: Vec<(&GpuOpRow, u64, u64)> =
        kernels.iter().filter_map(|k| launches.launch_of(k).map(|call| (*k, call.start_ns, call.end_ns))).collect();
    let no_match = || "no kernel has its launch API call in the trace (matched by process and correlation id)".to_string();
    let mut queue: Vec<f64> = matched.iter().map(|&(k, _, call_end)| k.start_ns as f64 - call_end as f64).collect();
    Measured::Available(Launch {
        api_calls: trace.api_calls.len(),
        api_total_ns: trace.api_calls.iter().map(|c| c.end_ns.saturating_sub(c.start_ns)).sum(),
        kernels: kernels.len(),
        kernel_total_ns: kernels.iter().map(|k| k.end_ns.saturating_sub(k.start_ns)).sum(),
        queue_ns: Measured::from_option(Distribution::of(&mut queue), no_match),
        per_iteration: if matched.is_empty() {
            Measured::NotAvailable(no_match())
        } else {
            per_iteration(trace, matched.iter().map(|&(_, call_start, _)| call_start))
        },
        graphs: graphs(trace, &kernels),
    })
}

fn per_iteration(trace: &TraceData, launch_starts: impl Iterator<Item = u64>) -> Measured<KernelsPerIteration> {
    let Some((source, windows)) = iteration_windows(trace) else {
        return Measured::NotAvailable("the trace has no iterations: no iteration rows and no `iter N` spans".into());
    };
    let mut counts = vec![0.0; windows.len()];
    let mut outside = 0;
    for t in launch_starts {
        let i = windows.partition_point(|w| w.start_ns <= t);
        match i.checked_sub(1) {
            Some(i) if t <= windows[i].end_ns => counts[i] += 1.0,
            _ => outside += 1,
        }
    }
    Measured::Available(KernelsPerIteration {
        source: source.into(),
        iterations: windows.len(),
        kernels: Distribution::of(&mut counts).expect("iteration windows are never empty"),
        outside,
    })
}

fn graphs(trace: &TraceData, kernels: &[&GpuOpRow]) -> Measured<Graphs> {
    let graph_ops = trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Graph).count();
    let graph_launches = if graph_ops > 0 { graph_ops } else { trace.api_calls.iter().filter(|c| c.name.contains("GraphLaunch")).count() };
    let node_kernels = kernels.iter().filter(|k| k.graph_id.is_some()).count();
    if graph_launches == 0 && node_kernels == 0 {
        return Measured::NotAvailable("the trace shows no CUDA graph launches".into());
    }
    Measured::Available(Graphs { graph_launches, node_kernels, eager_kernels: kernels.len() - node_kernels })
}

/// The section's blocks, for the terminal and the page.
pub fn view(launch: &Measured<Launch>) -> Vec<Block> {
    let l = match launch {
        Measured::Available(l) => l,
        Measured::NotAvailable(why) => return vec![Block::Facts(vec![missing("launch overhead", why)])],
    };
    vec![Block::Facts(vec![
        fact("API time", format!("{} over {} calls", text::duration(l.api_total_ns as f64), l.api_calls)),
        fact("kernel time", format!("{} over {} kernels", text::duration(l.kernel_total_ns as f64), l.kernels)),
        measured("queue (launch end→start)", &l.queue_ns, |q| {
            format!("mean {}, median {}, p90 {}", text::duration(q.mean), text::duration(q.median), text::duration(q.p90))
        }),
        measured("kernels per iteration", &l.per_iteration, |p| {
            format!(
                "mean {:.1}, median {:.1}, p90 {:.1}, max {} over {} iterations ({}); {} launched outside",
                p.kernels.mean, p.kernels.median, p.kernels.p90, p.kernels.max, p.iterations, p.source, p.outside
            )
        }),
        measured("CUDA graphs", &l.graphs, |g| {
            format!("{} graph launches; {} node kernels, {} eager kernels", g.graph_launches, g.node_kernels, g.eager_kernels)
        }),
    ])]
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_test_support::rows::{api, iteration, kernel, op, span};

    #[test]
    fn queue_time_runs_from_launch_end_to_kernel_start() {
        let trace = TraceData {
            gpu_ops: vec![kernel(100, 150, 1), kernel(300, 310, 2), kernel(400, 410, 3), kernel(0, 5, 99)],
            api_calls: vec![api("cuLaunchKernel", 0, 50, 1), api("cuLaunchKernel", 60, 100, 2), api("cuLaunchKernel", 390, 405, 3)],
            ..TraceData::default()
        };
        let l = analyze(&trace, &LaunchIndex::new(&trace));
        let l = l.get().unwrap();
        assert_eq!((l.api_calls, l.api_total_ns, l.kernels, l.kernel_total_ns), (3, 105, 4, 75));
        let q = l.queue_ns.get().unwrap();
        assert_eq!((q.count, q.min, q.median, q.max), (3, -5.0, 50.0, 200.0));
        assert!((q.p90 - 170.0).abs() < 1e-9 && (q.mean - 245.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn kernels_per_iteration_from_rows_or_spans() {
        let launches = vec![
            api("cuLaunchKernel", 10, 11, 1),
            api("cuLaunchKernel", 20, 21, 2),
            api("cuLaunchKernel", 150, 151, 3),
            api("x", 500, 501, 4),
        ];
        let gpu_ops = (1..=4).map(|c| kernel(600 + c, 601 + c, c)).collect();
        let rows = TraceData {
            iterations: vec![iteration(1, 0, 100, 0.1), iteration(2, 100, 200, 0.1), iteration(3, 200, 300, 0.1)],
            api_calls: launches.clone(),
            gpu_ops,
            ..TraceData::default()
        };
        let p = analyze(&rows, &LaunchIndex::new(&rows)).get().unwrap().per_iteration.clone();
        let p = p.get().unwrap();
        assert_eq!(
            (p.source.as_str(), p.iterations, p.outside, p.kernels.mean, p.kernels.max, p.kernels.min),
            ("iteration rows", 3, 1, 1.0, 2.0, 0.0)
        );
        let spans = TraceData {
            iterations: vec![],
            spans: vec![
                span(0, 100, 1, "lumen: iter 1: 1 ctx reqs, 0 gen reqs", "nvtx"),
                span(0, 100, 1, "iter 1", "iteration"),
                span(100, 600, 1, "iter 2", "iteration"),
            ],
            ..rows
        };
        let p = analyze(&spans, &LaunchIndex::new(&spans)).get().unwrap().per_iteration.clone();
        let p = p.get().unwrap();
        assert_eq!((p.source.as_str(), p.iterations, p.outside, p.kernels.mean), ("iteration spans", 2, 0, 2.0));
    }

    #[test]
    fn graph_launches_against_node_and_eager_kernels() {
        let mut node = kernel(0, 10, 1);
        node.graph_id = Some(3);
        let trace = TraceData {
            gpu_ops: vec![node.clone(), node, kernel(20, 30, 2)],
            api_calls: vec![api("cuGraphLaunch", 0, 5, 1), api("cuLaunchKernel", 10, 15, 2)],
            ..TraceData::default()
        };
        let g = analyze(&trace, &LaunchIndex::new(&trace)).get().unwrap().graphs.clone();
        assert_eq!(g, Measured::Available(Graphs { graph_launches: 1, node_kernels: 2, eager_kernels: 1 }));
        let traced = TraceData { gpu_ops: vec![op(GpuOpKind::Graph, 0, 10, 1), op(GpuOpKind::Graph, 20, 30, 2)], ..trace };
        assert_eq!(analyze(&traced, &LaunchIndex::new(&traced)).get().unwrap().graphs.get().unwrap().graph_launches, 2);
    }

    #[test]
    fn launch_overhead_needs_api_calls() {
        let trace = TraceData { gpu_ops: vec![kernel(0, 1, 1)], ..TraceData::default() };
        assert_eq!(analyze(&trace, &LaunchIndex::new(&trace)), Measured::NotAvailable(NO_API_CALLS.into()));
    }
}
