//! The diagnosis of real GPU programs, one known pathology each, and of lumen's own runs, all
//! recorded on an H200 (docs/testing.md says how): every pathology is found, through
//! `lumen profile --gpu-metrics` and through torch.profiler + `lumen trace import`, and the
//! program with its pathology removed does not raise it. torch.profiler records no counter
//! samples: there the bound patterns read the operators' recorded shapes, which a CUDA graph
//! replay does not have, so the graph-replayed GEMMs of `compute` must say they are not
//! available. The programs' traces hold their first 8 or 12 steps where the whole run was large.

use std::path::PathBuf;

use lumen_analyze::diagnose::*;
use lumen_analyze::{analyze, Analysis, Options};
use lumen_trace::store::read_trace;

fn analysed(name: &str) -> Analysis {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    let trace = read_trace(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    analyze(&trace, &Options::default()).expect("the analysis runs")
}

fn fired(a: &Analysis) -> Vec<&'static str> {
    a.diagnosis.findings.iter().map(|f| f.pattern).collect()
}

/// Each program, the pattern its bad variant shows, and whether the torch.profiler trace can
/// judge it (the graph-replayed GEMMs have no operator shapes).
const PROGRAMS: [(&str, &str, bool); 8] = [
    ("launch", LAUNCH_OVERHEAD, true),
    ("host", CPU_BOTTLENECK, true),
    ("sync", SYNC_GAPS, true),
    ("pageable", PAGEABLE_MEMCPY, true),
    ("alloc", ALLOCATION_CHURN, true),
    ("memory", MEMORY_BOUND, true),
    ("compute", COMPUTE_BOUND, false),
    ("smallbatch", SMALL_BATCH, true),
];

#[test]
fn every_pathology_is_found_and_no_negative_raises_it() {
    for (program, pattern, torch_judges) in PROGRAMS {
        for path in ["profile", "torch"] {
            let bad = analysed(&format!("programs/{program}-bad-{path}.lumen"));
            let good = analysed(&format!("programs/{program}-good-{path}.lumen"));
            if !torch_judges && path == "torch" {
                let why = bad.diagnosis.not_available.iter().find(|u| u.pattern == pattern).map(|u| u.reason.as_str());
                assert!(why.is_some_and(|w| w.contains("no operator recorded its work")), "{program}-bad (torch): {why:?}");
            } else {
                assert!(fired(&bad).contains(&pattern), "{program}-bad ({path}): {pattern} not found in {:?}", fired(&bad));
            }
            assert!(!fired(&good).contains(&pattern), "{program}-good ({path}): {pattern} is a false positive: {:?}", fired(&good));
        }
    }
}

#[test]
fn the_programs_raise_nothing_beside_their_own_story() {
    // Host-side pathologies do not make a GPU bound, and a bound GPU shows no idle pattern.
    let idle = [LOW_UTILISATION, CPU_BOTTLENECK, SYNC_GAPS, LAUNCH_OVERHEAD];
    for name in ["memory-bad-profile", "compute-bad-profile", "smallbatch-good-profile", "pageable-good-profile", "launch-good-profile"] {
        let a = analysed(&format!("programs/{name}.lumen"));
        assert!(fired(&a).iter().all(|p| !idle.contains(p)), "{name}: {:?}", fired(&a));
    }
    let host = analysed("programs/host-bad-profile.lumen");
    assert!(!fired(&host).contains(&SYNC_GAPS), "idle after the sync returns is host work: {:?}", fired(&host));
    let compute = analysed("programs/compute-bad-profile.lumen");
    let steps = compute.steps.get().expect("ProfilerStep ranges");
    assert_eq!(steps.outliers.len(), 1, "the first graph replay is a one-off: {steps:?}");
    for name in ["memory-bad-profile", "smallbatch-bad-profile", "compute-good-profile"] {
        let f = analysed(&format!("programs/{name}.lumen")).diagnosis.findings.into_iter().find(|f| f.pattern == MEMORY_BOUND);
        let f = f.unwrap_or_else(|| panic!("{name} is memory bound"));
        assert!(f.evidence[0].contains("% of peak (read + write)"), "{:?}", f.evidence);
    }
}

#[test]
fn torch_traces_judge_the_bound_from_the_operators_shapes() {
    let memory = analysed("programs/memory-bad-torch.lumen");
    let all = &memory.speed_of_light.ops.get().expect("aten::add recorded its shapes")[0];
    assert!(all.coverage > 0.9 && (80.0..100.0).contains(&all.dram_percent.unwrap()), "{all:?}");
    // FP32 products (TF32 off) count against the FP32 peak: 51 TFLOP/s is far from the tensor
    // peak and near the FP32 one.
    let fp32 = analysed("programs/fp32-bad-torch.lumen");
    let all = fp32.speed_of_light.ops.get().unwrap()[0].clone();
    assert!(all.tflops < 100.0 && all.tensor_percent.unwrap() > 60.0 && fired(&fp32).contains(&COMPUTE_BOUND), "{all:?}");
    assert!(fired(&analysed("programs/fp32-good-torch.lumen")).contains(&COMPUTE_BOUND));
    // PM sampling has no FP32-pipe counter on the H200: the collector trace cannot call it
    // compute bound, and must not call it memory bound either.
    let counted = analysed("programs/fp32-bad-profile.lumen");
    assert!(!fired(&counted).contains(&MEMORY_BOUND) && !fired(&counted).contains(&SMALL_BATCH), "{:?}", fired(&counted));
    let small = analysed("programs/smallbatch-good-torch.lumen");
    let gemm = small.speed_of_light.ops.get().unwrap().iter().find(|o| o.name == "gemm").cloned().unwrap();
    assert!(gemm.tensor_percent.unwrap() > 50.0 && fired(&small).contains(&COMPUTE_BOUND), "{gemm:?}");
}

#[test]
fn lumen_default_8b_run_puts_the_batch_size_first_with_a_value_and_a_gain() {
    let a = analysed("llama8b-default.lumen");
    let top = &a.diagnosis.findings[0];
    assert_eq!((top.pattern, top.kind), (BATCH_SIZE, Kind::Headroom), "{:?}", fired(&a));
    let gain = top.expected_gain.expect("a gain estimate");
    assert!((1.5..3.0).contains(&gain), "{gain}");
    assert!(top.action.contains("--max-batch-size 1024") && top.action.contains("try `lumen bench throughput"), "{}", top.action);
    assert!(top.evidence.iter().any(|e| e.contains("basis: roofline")), "{:?}", top.evidence);
    let h = a.headroom.get().unwrap();
    assert_eq!((h.max_batch_size, h.at_batch_cap), (Some(64), Some(1.0)));
    assert!(h.kv_peak.unwrap() < 0.05, "{:?}", h.kv_peak);
}

#[test]
fn lumen_batch_one_decode_is_memory_bandwidth_bound_at_its_share_of_peak() {
    let a = analysed("llama8b-latency.lumen");
    let f = a.diagnosis.findings.iter().find(|f| f.pattern == MEMORY_BOUND).unwrap_or_else(|| panic!("{:?}", fired(&a)));
    assert!(f.evidence.iter().any(|e| e.contains("the engine's iterations move a median") && e.contains("% of peak")), "{:?}", f.evidence);
    let w = a.speed_of_light.work.get().expect("the engine's bytes and FLOPs");
    assert!((50.0..80.0).contains(&w.dram_percent.unwrap()), "{w:?}");
    assert!(w.tensor_percent.unwrap() < 2.0);
    assert!(!fired(&a).contains(&CONCURRENCY) && !fired(&a).contains(&CPU_BOTTLENECK), "{:?}", fired(&a));
}
