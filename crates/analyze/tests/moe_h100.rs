//! The analysis of four real mixture-of-experts traces from an NVIDIA H100 80GB HBM3, recorded by
//! `OUT=/tmp/moe MODEL=qwen3-30b-a3b REQUESTS=512 scripts/moe_gpu.sh` (lumen ec1949f, whose MoE
//! layers ran each active expert as cuBLASLt GEMMs after a host round trip): iterations 40-79 of
//! `lumen bench throughput` at 128/128 on the qwen3-30b-a3b shape (48 MoE layers of 128 experts,
//! top 8), with the gate skewed (`+zipf=1.2`) and without, each with and without
//! `LUMEN_PERFECT_ROUTER=1`. The skewed run made 2.4× the perfect router's throughput (4,932.6
//! against 2,310.6 tok/s) because its router woke fewer experts; the unskewed pair came within
//! 3% (2,303.5 against 2,368.8).

use lumen_analyze::compare::{compare, RouterReading};
use lumen_analyze::diagnose::MOE_IMBALANCE;
use lumen_analyze::{analyze, Analysis, Options};
use lumen_trace::model::TraceData;
use lumen_trace::store::read_trace;
use std::path::Path;

fn fixture(run: &str) -> (TraceData, Analysis) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/moe/qwen3-30b-a3b-h100-{run}.lumen"));
    let trace = read_trace(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let analysis = analyze(&trace, &Options::default()).expect("the analysis runs");
    (trace, analysis)
}

fn fires(a: &Analysis) -> bool {
    a.diagnosis.findings.iter().any(|f| f.pattern == MOE_IMBALANCE)
}

/// The perfect-router reading of `new` against `base`.
fn reading(new: &str, base: &str) -> RouterReading {
    let ((bt, b), (nt, n)) = (fixture(base), fixture(new));
    compare(&b, &n, &bt, &nt).router.expect("a perfect-router pair").get().cloned().expect("a verdict to read")
}

#[test]
fn the_skewed_gate_shows_its_imbalance_and_the_perfect_router_none() {
    let (_, skewed) = fixture("skewed");
    let m = skewed.moe.get().expect("expert load rows");
    assert_eq!((m.iterations, m.layers.len(), m.experts), (40, 48, 128));
    assert!(!m.perfect_router);
    assert!((m.max_over_balanced - 16.0).abs() < 0.01, "the Zipf skew puts 16× a balanced spread's busiest load on the busiest expert: {}", m.max_over_balanced);
    assert!((m.active_experts - 34.1).abs() < 0.05, "experts woken a layer and step: {}", m.active_experts);
    assert!(fires(&skewed), "the imbalance finding fires: {:?}", skewed.diagnosis.findings.iter().map(|f| f.pattern).collect::<Vec<_>>());

    let (_, plain) = fixture("plain");
    let p = plain.moe.get().expect("expert load rows");
    assert!(p.max_over_balanced > 1.2 && p.max_over_balanced < 2.0, "random weights route unevenly, far less than the skew: {}", p.max_over_balanced);

    for run in ["skewed_perfect", "plain_perfect"] {
        let (_, perfect) = fixture(run);
        let m = perfect.moe.get().expect("expert load rows");
        assert!(m.perfect_router, "{run}: announced in the trace");
        assert_eq!(m.max_over_balanced, 1.0, "{run}: every expert gets exactly its share");
        assert_eq!(m.active_experts, 128.0, "{run}: every expert woken");
        assert!(!fires(&perfect), "{run}: no imbalance to report");
    }
}

#[test]
fn the_perfect_router_pairs_read_as_not_a_bottleneck_in_either_order() {
    for (new, base) in [("skewed", "skewed_perfect"), ("skewed_perfect", "skewed")] {
        let r = reading(new, base);
        assert!(r.significant && r.gain < -1.4 && r.gain > -1.5, "{new} against {base}: 145% slower with the perfect router: {r:?}");
        assert!(r.reading.contains("slower with the perfect router") && r.reading.contains("routing is not a bottleneck"), "{}", r.reading);
        let (router, perfect, experts) = r.active_experts.expect("both runs recorded expert loads");
        assert!((router - 34.1).abs() < 0.05 && perfect == 128.0 && experts == 128, "{:?}", r.active_experts);
        assert!(r.router_max_over_balanced.is_some_and(|x| (x - 16.0).abs() < 0.01));
    }
    for (new, base) in [("plain", "plain_perfect"), ("plain_perfect", "plain")] {
        let r = reading(new, base);
        assert!(r.gain > 0.0 && r.gain < 0.10, "{new} against {base}: a few percent faster with the perfect router: {r:?}");
        assert!(r.reading.contains("within 10.0%") && r.reading.contains("routing is not a bottleneck; focus elsewhere"), "{}", r.reading);
    }
}
