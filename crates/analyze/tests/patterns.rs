//! Every diagnosis pattern, planted in a synthetic run written through lumen's trace writer and
//! read back, and planted absent in a second run: the finding must fire on the first and stay
//! quiet ("checked, not found") on the second. The runs are built from one healthy baseline (ten
//! iterations of back-to-back 50 µs kernels launched well ahead, pinned copies, no
//! synchronisation gaps) with one change each.

use lumen_analyze::diagnose::{self, Diagnosis, Finding};
use lumen_analyze::{analyze, Options};
use lumen_test_support::rows::{iteration, read_back, Origin};
use lumen_trace::model::*;

const ENGINE: Origin = Origin { pid: 7000, tid: 7001, device: 0, stream: 7 };
const ITERATIONS: u64 = 10;
const KERNELS_PER_ITERATION: u64 = 20;
const KERNEL_NS: u64 = 50_000;
const ITERATION_NS: u64 = KERNELS_PER_ITERATION * KERNEL_NS;

/// A run under construction: rows that go into one `.lumen` file.
#[derive(Default)]
struct Run {
    spans: Vec<SpanRow>,
    iterations: Vec<IterationRow>,
    counters: Vec<CounterRow>,
    allocations: Vec<AllocationRow>,
    gpu_ops: Vec<GpuOpRow>,
    api_calls: Vec<ApiCallRow>,
    correlation: u64,
}

impl Run {
    /// Launches `name` at `launch_ns` (a 3 µs call) to run `start_ns..end_ns`.
    fn launch(&mut self, launch_ns: u64, start_ns: u64, end_ns: u64, kind: GpuOpKind, call: &str, name: &str) -> &mut GpuOpRow {
        self.correlation += 1;
        self.api_calls.push(ENGINE.api(call, launch_ns, launch_ns + 3_000, self.correlation));
        self.gpu_ops.push(ENGINE.gpu_op(kind, name, start_ns, end_ns, self.correlation));
        self.gpu_ops.last_mut().expect("just pushed")
    }

    fn iteration(&mut self, iter: u64, start_ns: u64, end_ns: u64) {
        let split = start_ns + (end_ns - start_ns) * 4 / 5;
        self.spans.push(ENGINE.iteration_span(iter, start_ns, end_ns));
        self.spans.push(ENGINE.phase("forward", start_ns, split, iter));
        self.spans.push(ENGINE.phase("sample", split, end_ns, iter));
        self.iterations.push(IterationRow {
            ctx_reqs: 0,
            gen_reqs: 32,
            ctx_tokens: 0,
            gen_tokens: 32,
            kv_used_blocks: 10,
            kv_total_blocks: 100,
            ..iteration(iter, start_ns, end_ns, (end_ns - start_ns) as f64 / 1e6)
        });
        self.allocations.push(AllocationRow {
            iteration: iter,
            count: 50,
            bytes: 1 << 16,
            frees: 50,
            kv_blocks_allocated: 0,
            kv_blocks_freed: 0,
        });
    }

    /// Samples at every kernel start: SM active, DRAM read and write as % of peak.
    fn sample(&mut self, sm: f64, dram_read: f64, dram_write: f64, tensor: f64) {
        let starts: Vec<u64> = self.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Kernel).map(|op| op.start_ns + 1_000).collect();
        for ts_ns in starts {
            let counters = [("sm active %", sm), ("dram read %", dram_read), ("dram write %", dram_write), ("tensor active %", tensor)];
            for (name, value) in counters {
                self.counters.push(CounterRow { ts_ns, name: name.into(), device: Some(0), value });
            }
        }
    }

    /// Writes the run through the trace writer, reads it back and diagnoses it.
    fn diagnose(&self, case: &str) -> Diagnosis {
        let run = TraceData {
            meta: vec![("command".to_string(), "lumen bench throughput".to_string())],
            processes: vec![ENGINE.process("lumen")],
            threads: vec![ENGINE.thread("engine")],
            spans: self.spans.clone(),
            counters: self.counters.clone(),
            iterations: self.iterations.clone(),
            allocations: self.allocations.clone(),
            gpu_ops: self.gpu_ops.clone(),
            api_calls: self.api_calls.clone(),
            ..TraceData::default()
        };
        let trace = read_back(&format!("patterns-{case}"), &run);
        analyze(&trace, &Options::default()).expect("the analysis runs").diagnosis
    }
}

/// Ten iterations of 50 µs kernels back to back, each launched 90 µs before it starts, and one
/// pinned async upload just before each iteration's kernels: the GPU never waits.
fn healthy() -> Run {
    paused(0)
}

/// [`healthy`], with the GPU left idle for `pause_ns` between iterations.
fn paused(pause_ns: u64) -> Run {
    let mut run = Run::default();
    for iter in 0..ITERATIONS {
        let t = 1_000_000 + iter * (ITERATION_NS + pause_ns);
        run.iteration(iter, t - 150_000, t + ITERATION_NS - 150_000);
        let upload = run.launch(t - 100_000, t - 12_000, t - 2_000, GpuOpKind::Memcpy, "cuMemcpyHtoDAsync_v2", "memcpy HtoD");
        upload.pinned = Some(true);
        for k in 0..KERNELS_PER_ITERATION {
            let start = t + k * KERNEL_NS;
            run.launch(start - 90_000, start, start + KERNEL_NS, GpuOpKind::Kernel, "cuLaunchKernel", &format!("kernel_{k}"));
        }
    }
    run
}

/// Kernels of `kernel_ns`, each launched only once the previous one has ended plus `host_ns`.
fn host_paced(kernel_ns: u64, host_ns: u64, graph_id: Option<u64>) -> Run {
    let mut run = Run::default();
    let mut t: u64 = 1_000_000;
    for iter in 0..ITERATIONS {
        let iteration_start = t;
        for k in 0..KERNELS_PER_ITERATION {
            let launch = t + host_ns;
            let start = launch + 2_000;
            run.launch(launch, start, start + kernel_ns, GpuOpKind::Kernel, "cuLaunchKernel", &format!("kernel_{k}")).graph_id = graph_id;
            t = start + kernel_ns;
        }
        run.iteration(iter, iteration_start, t + 1_000);
        t += 1_000;
    }
    run
}

fn fires<'a>(d: &'a Diagnosis, pattern: &str) -> &'a Finding {
    d.findings.iter().find(|f| f.pattern == pattern).unwrap_or_else(|| panic!("{pattern} should fire: {d:#?}"))
}

fn quiet(d: &Diagnosis, pattern: &str) {
    assert!(d.not_found.contains(&pattern), "{pattern} should be checked and not found: {d:#?}");
}

#[test]
fn the_healthy_baseline_shows_no_pattern() {
    let d = healthy().diagnose("healthy");
    assert!(d.findings.is_empty(), "{:#?}", d.findings);
    for pattern in [diagnose::LOW_UTILISATION, diagnose::CPU_BOTTLENECK, diagnose::LAUNCH_OVERHEAD, diagnose::SYNC_GAPS] {
        quiet(&d, pattern);
    }
    quiet(&d, diagnose::PAGEABLE_MEMCPY);
    quiet(&d, diagnose::ALLOCATION_CHURN);
}

#[test]
fn low_utilisation_and_a_cpu_bottleneck_when_the_host_paces_long_kernels() {
    // 50 µs kernels, each launched 100 µs after the previous one ended: busy about a third.
    let d = host_paced(KERNEL_NS, 100_000, None).diagnose("host-paced");
    let low = fires(&d, diagnose::LOW_UTILISATION);
    assert!(low.evidence[0].starts_with("device 0 busy 3"), "{:?}", low.evidence);
    let cpu = fires(&d, diagnose::CPU_BOTTLENECK);
    assert!(cpu.evidence[0].contains("= 100.0% of"), "every gap is a host wait: {:?}", cpu.evidence);
    assert!(cpu.action.contains("phase `forward`"), "{}", cpu.action);
    // Long kernels: no launch overhead, although every kernel is launched late.
    quiet(&d, diagnose::LAUNCH_OVERHEAD);
    let d = healthy().diagnose("host-paced-absent");
    quiet(&d, diagnose::LOW_UTILISATION);
    quiet(&d, diagnose::CPU_BOTTLENECK);
}

#[test]
fn kernel_launch_overhead_for_short_eager_kernels_and_not_for_graph_replays() {
    // 4 µs kernels with 6 µs between them, each launched before the gap before it opened.
    let mut eager = Run::default();
    let mut t: u64 = 1_000_000;
    for iter in 0..ITERATIONS {
        let iteration_start = t;
        for k in 0..KERNELS_PER_ITERATION {
            eager.launch(t.saturating_sub(8_000), t, t + 4_000, GpuOpKind::Kernel, "cuLaunchKernel", &format!("tiny_{k}"));
            t += 10_000;
        }
        eager.iteration(iter, iteration_start, t);
    }
    let d = eager.diagnose("launch-eager");
    let f = fires(&d, diagnose::LAUNCH_OVERHEAD);
    assert!(f.evidence[0].starts_with("100.0% of 200 kernels run under 10.0 µs"), "{:?}", f.evidence);
    assert!(f.action.contains("--cuda-graphs on --cuda-graph-padding on --cuda-graph-max-batch-size 32"), "{}", f.action);
    for k in &mut eager.gpu_ops {
        k.graph_id = Some(1);
    }
    quiet(&eager.diagnose("launch-graphs"), diagnose::LAUNCH_OVERHEAD);
}

#[test]
fn synchronisation_gaps_when_the_gpu_idles_under_a_stream_synchronize() {
    // A 300 µs stream synchronisation after each iteration's kernels, the GPU idle under it.
    let pause = 300_000;
    let mut run = paused(pause);
    for iter in 0..ITERATIONS {
        let end = 1_000_000 + iter * (ITERATION_NS + pause) + ITERATION_NS;
        run.launch(end, end, end + pause, GpuOpKind::Sync, "cuStreamSynchronize", "sync");
        if let Some(call) = run.api_calls.last_mut() {
            call.end_ns = end + pause;
        }
    }
    let d = run.diagnose("sync");
    let f = fires(&d, diagnose::SYNC_GAPS);
    assert!(f.offenders[0].starts_with("cuStreamSynchronize: 10 calls"), "{:?}", f.offenders);
    quiet(&healthy().diagnose("sync-absent"), diagnose::SYNC_GAPS);
}

#[test]
fn pageable_memcpy_when_an_async_copy_uses_pageable_host_memory() {
    let mut run = healthy();
    run.gpu_ops.iter_mut().filter(|op| op.kind == GpuOpKind::Memcpy).for_each(|op| {
        op.pinned = Some(false);
        op.bytes = Some(1 << 20);
        op.copy_kind = Some("HtoD".into());
    });
    let f = fires(&run.diagnose("pageable"), diagnose::PAGEABLE_MEMCPY).clone();
    assert!(f.evidence[0].starts_with("10 async copies from or to pageable memory"), "{:?}", f.evidence);
    quiet(&healthy().diagnose("pageable-absent"), diagnose::PAGEABLE_MEMCPY);
}

#[test]
fn allocation_churn_when_every_iteration_allocates_and_frees_device_memory() {
    let mut run = healthy();
    let mut churn = run.api_calls.clone();
    for iter in 0..ITERATIONS {
        let t = 1_000_000 + iter * ITERATION_NS - 150_000;
        for (i, name) in ["cuMemAlloc_v2", "cuMemFree_v2", "cuMemAlloc_v2", "cuMemFree_v2"].into_iter().enumerate() {
            let start = t + i as u64 * 5_000;
            churn.push(ApiCallRow {
                start_ns: start,
                end_ns: start + 4_000,
                pid: ENGINE.pid,
                tid: ENGINE.tid,
                name: name.into(),
                correlation: None,
                result: Some(0),
            });
        }
    }
    let once = {
        let mut calls = run.api_calls.clone();
        calls.push(ApiCallRow {
            start_ns: 500_000,
            end_ns: 504_000,
            pid: ENGINE.pid,
            tid: ENGINE.tid,
            name: "cuMemAlloc_v2".into(),
            correlation: None,
            result: Some(0),
        });
        calls
    };
    run.api_calls = churn;
    let f = fires(&run.diagnose("churn"), diagnose::ALLOCATION_CHURN).clone();
    assert!(f.evidence[0].starts_with("4.0 CUDA alloc/free calls per steady step"), "{:?}", f.evidence);
    run.api_calls = once;
    quiet(&run.diagnose("churn-absent"), diagnose::ALLOCATION_CHURN);
}

#[test]
fn memory_and_compute_bound_from_busy_counter_samples() {
    let mut memory = healthy();
    memory.sample(99.0, 60.0, 35.0, 2.0);
    let d = memory.diagnose("memory-bound");
    let f = fires(&d, diagnose::MEMORY_BOUND);
    assert!(f.evidence[0].starts_with("device 0: DRAM 95.0% of peak (read + write), tensor 2.0%, SM active 99.0%"), "{:?}", f.evidence);
    quiet(&d, diagnose::COMPUTE_BOUND);

    let mut compute = healthy();
    compute.sample(96.0, 20.0, 5.0, 85.0);
    let d = compute.diagnose("compute-bound");
    let f = fires(&d, diagnose::COMPUTE_BOUND);
    assert!(f.evidence[0].starts_with("device 0: DRAM 25.0% of peak (read + write), tensor 85.0%, SM active 96.0%"), "{:?}", f.evidence);
    quiet(&d, diagnose::MEMORY_BOUND);

    // SM active near 100% with no unit near its ceiling is neither.
    let mut latency = healthy();
    latency.sample(97.0, 20.0, 5.0, 10.0);
    let d = latency.diagnose("latency-bound");
    quiet(&d, diagnose::COMPUTE_BOUND);
    quiet(&d, diagnose::MEMORY_BOUND);
}

#[test]
fn without_counter_samples_the_bound_patterns_say_they_are_not_available() {
    let d = healthy().diagnose("no-counters");
    for pattern in [diagnose::MEMORY_BOUND, diagnose::COMPUTE_BOUND] {
        let reason = d.not_available.iter().find(|u| u.pattern == pattern).map(|u| u.reason.as_str());
        assert!(reason.is_some_and(|r| r.contains("no SM/DRAM samples")), "{pattern}: {reason:?}");
    }
}
