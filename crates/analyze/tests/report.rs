//! A four-iteration run written to a `.lumen` file and read back, analysed end to end: per
//! iteration a pageable async upload, three kernels launched back to back and a stream
//! synchronise, with engine phases, GPU metric samples and allocation rows.

use lumen_analyze::gpu::GapClass;
use lumen_analyze::kernels::KernelClass;
use lumen_analyze::{analyze, render_text, Measured, Options};
use lumen_test_support::rows::{iteration, read_back, Origin};
use lumen_trace::model::*;

const ENGINE: Origin = Origin { pid: 4242, tid: 4243, device: 0, stream: 13 };
const KERNELS: [&str; 3] = ["sm90_xmma_gemm_bf16", "flash_fwd_kernel", "rms_norm_kernel"];

fn run() -> TraceData {
    let (mut spans, mut iterations, mut allocations, mut counters) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut api_calls, mut gpu_ops) = (Vec::new(), Vec::new());
    for it in 0..4u64 {
        let t = 1_000_000 + it * 1_000_000;
        let correlation = it * 10;
        spans.push(ENGINE.iteration_span(it, t, t + 800_000));
        spans.push(ENGINE.phase("schedule", t, t + 150_000, it));
        spans.push(ENGINE.phase("forward", t + 150_000, t + 700_000, it));
        spans.push(ENGINE.phase("sample", t + 700_000, t + 800_000, it));
        iterations.push(IterationRow {
            ctx_reqs: u64::from(it == 0),
            gen_reqs: 2,
            ctx_tokens: if it == 0 { 16 } else { 0 },
            gen_tokens: 2,
            kv_used_blocks: 4 + it,
            kv_total_blocks: 16,
            device_ms: Some(0.6),
            ..iteration(it, t, t + 800_000, 0.8)
        });
        allocations.push(AllocationRow {
            iteration: it,
            count: 10 + it,
            bytes: 4096,
            frees: 10,
            kv_blocks_allocated: 1,
            kv_blocks_freed: 0,
        });
        counters.push(CounterRow { ts_ns: t, name: "sm active %".into(), device: Some(0), value: 40.0 + it as f64 * 10.0 });

        api_calls.push(ENGINE.api("cuMemcpyHtoDAsync_v2", t + 100_000, t + 110_000, correlation));
        gpu_ops.push(GpuOpRow {
            bytes: Some(1 << 20),
            copy_kind: Some("HtoD".into()),
            pinned: Some(false),
            ..ENGINE.gpu_op(GpuOpKind::Memcpy, "memcpy HtoD", t + 120_000, t + 130_000, correlation)
        });
        for (k, name) in KERNELS.iter().enumerate() {
            let k = k as u64;
            api_calls.push(ENGINE.api("cuLaunchKernel", t + 200_000 + k * 10_000, t + 205_000 + k * 10_000, correlation + 1 + k));
            let start = t + 300_000 + k * 100_000;
            gpu_ops.push(GpuOpRow {
                grid: Some([132, 1, 1]),
                block: Some([256, 1, 1]),
                ..ENGINE.gpu_op(GpuOpKind::Kernel, name, start, start + 90_000, correlation + 1 + k)
            });
        }
        api_calls.push(ENGINE.api("cuStreamSynchronize", t + 600_000, t + 650_000, correlation + 9));
    }
    let run = TraceData {
        meta: vec![("gpu".to_string(), "NVIDIA H100 80GB HBM3".to_string()), ("gpu_metrics_source".into(), "cupti-pm".into())],
        processes: vec![ENGINE.process("lumen bench")],
        threads: vec![ENGINE.thread("engine")],
        spans,
        counters,
        iterations,
        allocations,
        gpu_ops,
        api_calls,
        ..TraceData::default()
    };
    read_back("analyze-report", &run)
}

#[test]
fn a_recorded_run_reads_back_and_analyses() {
    let trace = run();
    let a = analyze(&trace, &Options::default()).unwrap();

    let device = &a.gpu.get().unwrap()[0];
    assert_eq!((device.start_ns, device.end_ns, device.busy_ns), (1_120_000, 4_590_000, 4 * (10_000 + 3 * 90_000)));

    let gaps = &a.gaps.get().unwrap()[0];
    let classes: Vec<(GapClass, usize, u64)> = gaps.classes.iter().map(|c| (c.class, c.count, c.total_ns)).collect();
    // The 530 µs gaps after each iteration's kernels: 50 µs inside the synchronise, the rest the
    // host's own time before the next iteration launches.
    assert_eq!(
        classes,
        [
            (GapClass::SyncWait, 3, 3 * 50_000),
            (GapClass::LaunchGap, 8, 8 * 10_000),
            (GapClass::HostWait, 7, 4 * 170_000 + 3 * 480_000),
            (GapClass::OutlierStep, 0, 0)
        ]
    );
    let largest = &gaps.largest[0];
    assert_eq!((largest.start_ns, largest.class, largest.sync_ns), (1_590_000, GapClass::HostWait, 50_000));
    assert_eq!((largest.cpu_spans[0].name.as_str(), largest.cpu_spans[0].thread.as_deref()), ("iter 0", Some("engine")));

    let kernels = a.kernels.get().unwrap();
    assert_eq!((kernels.count, kernels.top.len(), kernels.top[0].count, kernels.top[0].grid), (12, 3, 4, Some([132, 1, 1])));
    let classes: Vec<KernelClass> = kernels.classes.iter().map(|c| c.class).collect();
    assert_eq!(classes[3], KernelClass::Memory);
    assert_eq!(kernels.shorter_than_launch.get().unwrap().count, 0);

    let launch = a.launch.get().unwrap();
    let queue = launch.queue_ns.get().unwrap();
    assert_eq!((queue.min, queue.median, queue.max), (95_000.0, 185_000.0, 275_000.0));
    assert_eq!(launch.per_iteration.get().unwrap().kernels.mean, 3.0);

    let iterations = a.iterations.get().unwrap();
    assert_eq!((iterations.host_ms.median, iterations.outliers.len()), (0.8, 0));
    assert!((iterations.mean_host_minus_device_ms.get().unwrap() - 0.2).abs() < 1e-12);
    let forward = &a.phases.phases.get().unwrap().phases[0];
    assert_eq!((forward.name.as_str(), forward.total_ns, forward.share_of_host), ("forward", 2_200_000, Some(0.6875)));

    let ranges = a.ranges.get().unwrap();
    assert_eq!((ranges[0].name.as_str(), ranges[0].gpu_ops, ranges[0].mean_gpu_ns), ("iter N", 16, Some(470_000.0)));

    assert_eq!(a.hardware.get().unwrap().counters[0].values.mean, 55.0);
    assert_eq!(a.memory.pageable_async.get().unwrap().bytes, 4 << 20);
    assert_eq!(a.overview.gpu, Measured::Available("NVIDIA H100 80GB HBM3".into()));

    let text = render_text(&a);
    for heading in [
        "Overview",
        "GPU utilisation",
        "GPU idle gaps",
        "Kernels",
        "Launch overhead",
        "Iterations",
        "CPU phases",
        "CPU ranges on the GPU",
        "Hardware counters",
        "Memory",
    ] {
        assert!(text.contains(&format!("== {heading} ==")), "no {heading} in\n{text}");
    }
    assert!(
        text.contains("sm90_xmma_gemm_bf16") && text.contains("sync wait") && text.contains("not available: the trace has no request rows"),
        "{text}"
    );
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(json["overview"]["gpu"]["available"], "NVIDIA H100 80GB HBM3");
}
