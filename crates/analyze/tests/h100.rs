//! The analysis of two real traces from an NVIDIA H100 80GB HBM3, recorded by
//! `scripts/gpu_fixtures.sh`: iterations 20-23 of `lumen bench throughput` on the SmolLM2-135M
//! shape at 64 decode requests, under `lumen profile -c cudaProfilerApi --cuda-graph-trace node
//! --gpu-metrics 250`, merged with the engine's own recorder trace. `h100_eager.lumen` ran with
//! CUDA graphs off, `h100_graphs.lumen` with them on. The figures the analysis gives are checked
//! against the rows themselves, and the diagnosis against what the two runs are known to be.

use lumen_analyze::{analyze, compare, diagnose, render_text, Analysis, Options};
use lumen_trace::model::{GpuOpKind, TraceData};
use lumen_trace::store::read_trace;
use std::path::Path;

fn fixture(name: &str) -> (TraceData, Analysis) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    let trace = read_trace(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let analysis = analyze(&trace, &Options::default()).expect("the analysis runs");
    (trace, analysis)
}

/// The busy time of device 0: the union of its kernel, copy and set intervals.
fn busy_ns(trace: &TraceData) -> u64 {
    let mut intervals: Vec<(u64, u64)> =
        trace.gpu_ops.iter().filter(|op| op.kind != GpuOpKind::Sync && op.device == 0).map(|op| (op.start_ns, op.end_ns)).collect();
    intervals.sort_unstable();
    let (mut busy, mut covered_to) = (0, 0);
    for (start, end) in intervals {
        let start = start.max(covered_to);
        if end > start {
            busy += end - start;
            covered_to = end;
        }
    }
    busy
}

#[test]
fn the_eager_run_is_launch_bound_and_every_figure_matches_its_rows() {
    let (trace, a) = fixture("h100_eager.lumen");
    assert_eq!(a.overview.gpu.get().map(String::as_str), Some("NVIDIA H100 80GB HBM3 (cuda:0)"));
    assert_eq!(a.overview.gpu_metrics_source.get().map(String::as_str), Some("cupti-pm-sampling"));
    let iterations = a.overview.iterations.get().expect("the recorder's iterations are merged in");
    assert_eq!((iterations.count, iterations.first, iterations.last), (4, 20, 23));

    let kernels = trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Kernel).count();
    let k = a.kernels.get().expect("kernels");
    assert_eq!(k.count, kernels);
    assert_eq!(k.total_ns, trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Kernel).map(|op| op.end_ns - op.start_ns).sum::<u64>());
    let device = &a.gpu.get().expect("GPU utilisation")[0];
    assert_eq!(device.busy_ns, busy_ns(&trace));
    assert!(device.busy_share < 0.5, "an eager decode of a 135M model leaves the H100 idle most of the time: {}", device.busy_share);

    let phases = a.phases.phases.get().expect("phases");
    assert_eq!(phases.phases[0].name, "forward", "the forward pass dominates the host time");
    assert_eq!(phases.phases[0].count, 4);
    let counters = a.hardware.get().expect("PM-sampling counters");
    let names: Vec<&str> = counters.counters.iter().map(|c| c.name.as_str()).collect();
    for name in ["sm active %", "dram read %", "dram write %", "tensor active %"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let forward = a.ranges.get().expect("NVTX ranges").iter().find(|r| r.name == "lumen: forward").expect("the forward NVTX range");
    assert_eq!((forward.ranges, forward.gpu_ops), (4, kernels + 8), "every kernel and copy is launched inside forward");

    let d = &a.diagnosis;
    let launch = d.findings.iter().find(|f| f.pattern == diagnose::LAUNCH_OVERHEAD).expect("launch overhead");
    assert!(launch.evidence[1].starts_with("100.0% of kernels are launched eagerly"), "{:?}", launch.evidence);
    assert!(launch.action.contains("--cuda-graphs on --cuda-graph-padding on --cuda-graph-max-batch-size 64"), "{}", launch.action);
    let cpu = d.findings.iter().find(|f| f.pattern == diagnose::CPU_BOTTLENECK).expect("CPU bottleneck");
    assert!(cpu.action.contains("phase `forward`"), "{}", cpu.action);
    for quiet in [diagnose::MEMORY_BOUND, diagnose::COMPUTE_BOUND, diagnose::PAGEABLE_MEMCPY] {
        assert!(d.not_found.contains(&quiet), "{quiet}: {d:#?}");
    }
    let report = render_text(&a);
    assert!(report.starts_with("== Diagnosis ==") && report.contains("attention_hd64_r1"), "{report}");
}

#[test]
fn with_cuda_graphs_every_kernel_is_a_graph_node_and_launch_overhead_is_gone() {
    let (trace, a) = fixture("h100_graphs.lumen");
    let kernels: Vec<_> = trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Kernel).collect();
    assert!(kernels.iter().all(|k| k.graph_id.is_some()), "node tracing gives each replayed kernel its graph id");
    assert!(trace.api_calls.len() < 100, "a handful of API calls replace thousands of launches: {}", trace.api_calls.len());
    assert!(a.diagnosis.not_found.contains(&diagnose::LAUNCH_OVERHEAD), "{:#?}", a.diagnosis);
    let (_, eager) = fixture("h100_eager.lumen");
    let mean_host = |a: &Analysis| a.iterations.get().expect("iterations").host_ms.mean;
    assert!(mean_host(&a) < mean_host(&eager), "graphs make iterations faster: {} vs {} ms", mean_host(&a), mean_host(&eager));
}

#[test]
fn the_terminal_report_of_a_real_trace_fits_100_columns() {
    for name in ["h100_eager.lumen", "h100_graphs.lumen"] {
        let (_, a) = fixture(name);
        let report = render_text(&a);
        let wide: Vec<&str> = report.lines().filter(|l| l.chars().count() > 100).collect();
        assert!(wide.is_empty(), "{name}: {} lines wider than 100 columns:\n{}", wide.len(), wide.join("\n"));
        assert!(report.contains("nvjet_sm90_tst_64x8_64x16_2x4_h_bz_TNT"), "kernel names stay legible:\n{report}");
    }
}

#[test]
fn cuda_graphs_against_eager_launches_compare_as_faster_with_the_same_kernels() {
    let (eager_trace, eager) = fixture("h100_eager.lumen");
    let (graphs_trace, graphs) = fixture("h100_graphs.lumen");
    let c = compare::compare(&eager, &graphs, &eager_trace, &graphs_trace);
    let v = c.verdict.get().expect("both runs have iterations");
    assert_eq!((v.outcome, v.confidence), (compare::Outcome::Faster, compare::Confidence::Low), "{}", v.summary);
    let k = c.kernels.get().expect("kernels in both");
    assert_eq!((k.in_both, k.changes.len()), (12, 0), "the same 12 kernels run, replayed from graphs, as fast: {:?}", k.changes);
    let forward = c.phases.get().expect("phases").phases.iter().find(|p| p.name == "forward").expect("forward in both");
    assert!(forward.delta_ns < 0.0, "graph replay shortens the host's forward phase: {forward:?}");
}
