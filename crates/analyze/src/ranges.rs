//! CPU ranges (spans: engine phases, NVTX ranges) projected onto the GPU: for each range name,
//! the GPU work launched from inside its ranges and the GPU time that work spanned, against the
//! ranges' own CPU time. Names are grouped with their numbers replaced by `N`, so `layer 3` and
//! `layer 4` are one row.

use std::collections::HashMap;

use lumen_trace::model::TraceData;
use serde::Serialize;

use crate::gpu::is_busy;
use crate::measured::{Measured, NO_API_CALLS};
use crate::text;
use crate::view::{missing, Block};
use crate::LaunchIndex;

/// How many range names the report keeps.
pub const TOP_RANGES: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectedRange {
    /// The span name, digits runs replaced by `N`.
    pub name: String,
    /// Ranges with at least one API call started inside them on their thread.
    pub ranges: usize,
    pub api_calls: usize,
    /// GPU operations (kernels, copies, memsets, graph launches) launched inside the ranges.
    pub gpu_ops: usize,
    /// Ranges that launched GPU work.
    pub ranges_with_gpu_work: usize,
    pub cpu_total_ns: u64,
    /// Per range, first launched op's start to last one's end, summed.
    pub gpu_total_ns: u64,
    pub mean_cpu_ns: f64,
    /// Over the ranges that launched GPU work.
    pub mean_gpu_ns: Option<f64>,
}

/// One thread's API call starts, and its GPU work as (launch start, op start, op end), both sorted.
#[derive(Default)]
struct Thread {
    calls: Vec<u64>,
    launched: Vec<(u64, u64, u64)>,
}

fn threads(trace: &TraceData, launches: &LaunchIndex) -> HashMap<u64, Thread> {
    let mut threads: HashMap<u64, Thread> = HashMap::new();
    for call in &trace.api_calls {
        threads.entry(call.tid).or_default().calls.push(call.start_ns);
    }
    for op in trace.gpu_ops.iter().filter(|op| is_busy(op.kind)) {
        if let Some(call) = launches.launch_of(op) {
            threads.entry(call.tid).or_default().launched.push((call.start_ns, op.start_ns, op.end_ns));
        }
    }
    for t in threads.values_mut() {
        t.calls.sort_unstable();
        t.launched.sort_unstable();
    }
    threads
}

/// `name` with each run of digits replaced by `N`.
fn group_name(name: &str) -> String {
    let mut grouped = String::with_capacity(name.len());
    let mut in_digits = false;
    for c in name.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                grouped.push('N');
            }
            in_digits = true;
        } else {
            grouped.push(c);
            in_digits = false;
        }
    }
    grouped
}

pub fn analyze(trace: &TraceData, launches: &LaunchIndex, top: usize) -> Measured<Vec<ProjectedRange>> {
    if trace.spans.is_empty() {
        return Measured::NotAvailable("the trace has no CPU ranges (spans)".into());
    }
    if trace.api_calls.is_empty() {
        return Measured::NotAvailable(NO_API_CALLS.into());
    }
    let threads = threads(trace, launches);
    let mut by_name: HashMap<String, ProjectedRange> = HashMap::new();
    for span in &trace.spans {
        let Some(thread) = threads.get(&span.tid) else { continue };
        // Half-open, [start, end): a launch at the instant one range ends and the next begins
        // belongs to the next one only.
        let calls = thread.calls.partition_point(|&t| t < span.end_ns) - thread.calls.partition_point(|&t| t < span.start_ns);
        if calls == 0 {
            continue;
        }
        let first = thread.launched.partition_point(|l| l.0 < span.start_ns);
        let launched = thread.launched[first..].iter().take_while(|l| l.0 < span.end_ns);
        let (ops, gpu_start, gpu_end) =
            launched.fold((0, u64::MAX, 0), |(n, start, end), &(_, op_start, op_end)| (n + 1, start.min(op_start), end.max(op_end)));
        let range = by_name.entry(group_name(&span.name)).or_insert_with_key(|name| ProjectedRange {
            name: name.clone(),
            ranges: 0,
            api_calls: 0,
            gpu_ops: 0,
            ranges_with_gpu_work: 0,
            cpu_total_ns: 0,
            gpu_total_ns: 0,
            mean_cpu_ns: 0.0,
            mean_gpu_ns: None,
        });
        range.ranges += 1;
        range.api_calls += calls;
        range.cpu_total_ns += span.end_ns.saturating_sub(span.start_ns);
        if ops > 0 {
            range.gpu_ops += ops;
            range.ranges_with_gpu_work += 1;
            range.gpu_total_ns += gpu_end.saturating_sub(gpu_start);
        }
    }
    if by_name.is_empty() {
        return Measured::NotAvailable("no span has a CUDA API call started inside it on its thread".into());
    }
    let mut ranges: Vec<ProjectedRange> = by_name
        .into_values()
        .map(|mut r| {
            r.mean_cpu_ns = r.cpu_total_ns as f64 / r.ranges as f64;
            r.mean_gpu_ns = (r.ranges_with_gpu_work > 0).then(|| r.gpu_total_ns as f64 / r.ranges_with_gpu_work as f64);
            r
        })
        .collect();
    ranges.sort_unstable_by(|a, b| b.gpu_total_ns.cmp(&a.gpu_total_ns).then(a.name.cmp(&b.name)));
    ranges.truncate(top);
    Measured::Available(ranges)
}

/// The section's blocks, for the terminal and the page.
pub fn view(ranges: &Measured<Vec<ProjectedRange>>) -> Vec<Block> {
    let ranges = match ranges {
        Measured::Available(ranges) => ranges,
        Measured::NotAvailable(why) => return vec![Block::Facts(vec![missing("ranges", why)])],
    };
    let rows = ranges
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.ranges.to_string(),
                r.api_calls.to_string(),
                r.gpu_ops.to_string(),
                text::duration(r.gpu_total_ns as f64),
                r.mean_gpu_ns.map_or("-".into(), text::duration),
                text::duration(r.mean_cpu_ns),
            ]
        })
        .collect();
    vec![Block::Table { header: vec!["range", "ranges", "API calls", "GPU ops", "GPU total", "mean GPU", "mean CPU"], left: vec![0], rows }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_test_support::rows::{api, kernel, span};

    #[test]
    fn names_group_by_their_numbers() {
        assert_eq!(group_name("lumen: iter 12: 3 ctx reqs"), "lumen: iter N: N ctx reqs");
        assert_eq!(group_name("forward"), "forward");
    }

    #[test]
    fn ranges_project_the_gpu_work_launched_inside_them() {
        let mut other_thread = api("cuLaunchKernel", 30, 31, 9);
        other_thread.tid = 2;
        let trace = TraceData {
            spans: vec![
                span(0, 100, 1, "layer 0", "nvtx"),
                span(100, 200, 1, "layer 1", "nvtx"),
                span(200, 300, 1, "step", "nvtx"),
                span(300, 400, 1, "alloc only", "nvtx"),
            ],
            api_calls: vec![
                api("cuLaunchKernel", 10, 12, 1),
                api("cuLaunchKernel", 50, 52, 2),
                api("cuLaunchKernel", 150, 152, 3),
                api("cuLaunchKernel", 200, 202, 5),
                api("cuMemAlloc_v2", 310, 320, 4),
                other_thread,
            ],
            gpu_ops: vec![kernel(500, 600, 1), kernel(650, 700, 2), kernel(800, 1_000, 3), kernel(1_100, 1_200, 5), kernel(40, 45, 9)],
            ..TraceData::default()
        };
        let ranges = analyze(&trace, &LaunchIndex::new(&trace), TOP_RANGES);
        let ranges = ranges.get().unwrap();
        assert_eq!(
            ranges[0],
            ProjectedRange {
                name: "layer N".into(),
                ranges: 2,
                api_calls: 3,
                gpu_ops: 3,
                ranges_with_gpu_work: 2,
                cpu_total_ns: 200,
                gpu_total_ns: 400,
                mean_cpu_ns: 100.0,
                mean_gpu_ns: Some(200.0),
            }
        );
        // The launch at 200, where `layer 1` ends and `step` begins, belongs to `step` alone.
        assert_eq!((ranges[1].name.as_str(), ranges[1].api_calls, ranges[1].gpu_ops, ranges[1].gpu_total_ns), ("step", 1, 1, 100));
        assert_eq!((ranges[2].name.as_str(), ranges[2].api_calls, ranges[2].gpu_ops, ranges[2].mean_gpu_ns), ("alloc only", 1, 0, None));
        assert_eq!(ranges.len(), 3, "every range with an API call is listed");
    }
}
