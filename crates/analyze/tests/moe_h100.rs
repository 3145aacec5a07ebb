//! The analysis of real mixture-of-experts traces from an NVIDIA H100 80GB HBM3, recorded by
//! `OUT=… MODEL=qwen3-30b-a3b|gpt-oss-20b|deepseek-v3+layers=5 REQUESTS=256 WINDOW=30-49
//! scripts/moe_gpu.sh` (lumen cb8e9b4: grouped expert GEMMs, decode experts through `moe_gemv`
//! with the activation fused, every decode step a CUDA graph): iterations 30-49 of `lumen bench
//! throughput` at 128/128, about 256 sequences a step, with the gate skewed (`+zipf=1.2`) and
//! without, each with and without `LUMEN_PERFECT_ROUTER=1`. On one GPU the skewed router runs
//! faster than the perfect one because it wakes fewer experts, whose weights are read once; and
//! a batch-1 DeepSeek-V3 profile (below).

use lumen_analyze::compare::compare;
use lumen_analyze::diagnose::MOE_IMBALANCE;
use lumen_analyze::{analyze, Analysis, Options};
use lumen_trace::model::TraceData;
use lumen_trace::store::read_trace;
use std::path::Path;

fn model_fixture(model: &str, run: &str) -> (TraceData, Analysis) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/moe/{model}-h100-{run}.lumen"));
    let trace = read_trace(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let analysis = analyze(&trace, &Options::default()).expect("the analysis runs");
    (trace, analysis)
}

fn fires(a: &Analysis) -> bool {
    a.diagnosis.findings.iter().any(|f| f.pattern == MOE_IMBALANCE)
}

/// One model's pair of pairs.
struct Pair {
    model: &'static str,
    moe_layers: usize,
    experts: usize,
    /// The router runs' busiest expert over a balanced spread's busiest, and experts woken a
    /// layer and step: (skewed, plain).
    busiest: (f64, f64),
    woken: (f64, f64),
    /// How much slower the perfect router ran than the router: (skewed, plain) as a fraction, and
    /// whether the plain pair's difference passes the 10% threshold.
    slower: (f64, f64),
    plain_beyond_threshold: bool,
}

const PAIRS: [Pair; 3] = [
    Pair {
        model: "qwen3-30b-a3b",
        moe_layers: 48,
        experts: 128,
        busiest: (16.0, 1.74),
        woken: (30.2, 128.0),
        slower: (1.262, 0.041),
        plain_beyond_threshold: false,
    },
    Pair {
        model: "gpt-oss-20b",
        moe_layers: 24,
        experts: 32,
        busiest: (7.98, 3.85),
        woken: (13.0, 31.3),
        slower: (0.554, 0.023),
        plain_beyond_threshold: false,
    },
    Pair {
        model: "deepseek-v3-layers5",
        moe_layers: 2,
        experts: 256,
        busiest: (32.0, 4.45),
        woken: (37.8, 216.1),
        slower: (1.060, 0.115),
        plain_beyond_threshold: true,
    },
];

#[test]
fn each_model_s_pairs_show_the_planted_skew_and_read_the_perfect_router_in_either_order() {
    for p in &PAIRS {
        let load = |run: &str| model_fixture(p.model, run).1;
        for (run, busiest, woken) in [("skewed", p.busiest.0, p.woken.0), ("plain", p.busiest.1, p.woken.1)] {
            let a = load(run);
            let m = a.moe.get().expect("expert load rows");
            assert_eq!((m.iterations, m.layers.len(), m.experts), (20, p.moe_layers, p.experts), "{} {run}", p.model);
            assert!((m.max_over_balanced - busiest).abs() < 0.01, "{} {run}: busiest {}", p.model, m.max_over_balanced);
            assert!((m.active_experts - woken).abs() < 0.05, "{} {run}: woken {}", p.model, m.active_experts);
            assert!(fires(&a), "{} {run}: the imbalance finding fires at {busiest}×", p.model);
        }
        for run in ["skewed_perfect", "plain_perfect"] {
            let a = load(run);
            let m = a.moe.get().expect("expert load rows");
            assert!(m.perfect_router && m.max_over_balanced == 1.0 && m.active_experts == p.experts as f64, "{} {run}: {m:?}", p.model);
            assert!(!fires(&a), "{} {run}: no imbalance to report", p.model);
        }
        let reading = |new: &str, base: &str| {
            let ((bt, b), (nt, n)) = (model_fixture(p.model, base), model_fixture(p.model, new));
            compare(&b, &n, &bt, &nt).router.expect("a perfect-router pair").get().cloned().expect("a verdict to read")
        };
        for (new, base) in [("skewed", "skewed_perfect"), ("skewed_perfect", "skewed")] {
            let r = reading(new, base);
            assert!(r.significant && (r.gain + p.slower.0).abs() < 0.01, "{} {new} against {base}: {r:?}", p.model);
            assert!(
                r.reading.contains("slower with the perfect router") && r.reading.contains("routing is not a bottleneck"),
                "{}",
                r.reading
            );
        }
        for (new, base) in [("plain", "plain_perfect"), ("plain_perfect", "plain")] {
            let r = reading(new, base);
            assert!((r.gain + p.slower.1).abs() < 0.01, "{} {new} against {base}: {r:?}", p.model);
            let says = if p.plain_beyond_threshold { "slower with the perfect router" } else { "within 10.0%" };
            assert!(r.reading.contains(says) && r.reading.contains("routing is not a bottleneck"), "{}: {}", p.model, r.reading);
        }
    }
}

/// Batch-1 decode of `deepseek-v3+layers=5` under `lumen profile` on the H100 (the engine trace
/// merged with the GPU's, iterations 20-29): one token's 8 experts of 256 each hold one
/// assignment, which is as balanced as a step of 8 assignments gets.
#[test]
fn batch_one_decode_is_not_read_as_imbalance() {
    let (trace, a) = model_fixture("deepseek-v3-layers5", "batch1");
    let m = a.moe.get().expect("expert load rows");
    assert_eq!((m.layers.len(), m.experts), (2, 256));
    assert_eq!((m.max_over_balanced, m.lost_share, m.active_experts), (1.0, 0.0, 8.0));
    assert!(!fires(&a), "no imbalance at batch 1: {:?}", a.diagnosis.findings.iter().map(|f| f.pattern).collect::<Vec<_>>());
    let mla = trace.gpu_ops.iter().filter(|o| o.name.starts_with("mla_")).count();
    assert_eq!(mla, 4 * 5 * 10, "four MLA kernels a layer, five layers, ten steps");
}
