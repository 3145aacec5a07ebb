//! A real torch.profiler trace from an NVIDIA H100 (tests/data/torch_h100_decode.json, written
//! by `scripts/torch_decode_trace.py` in `scripts/gpu_fixtures.sh`: four profiled steps of a
//! small decode loop with `record_function("forward")` and `("sample")` inside each
//! `ProfilerStep#N`, a pageable host-to-device copy per step and a synchronising `.item()`),
//! imported by the real `lumen` binary and analysed: what the analysis reports is checked
//! against the JSON itself, and the diagnosis against what the loop is known to do.

mod common;

use common::{lumen, Scratch};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/torch_h100_decode.json").to_str().unwrap().to_string()
}

fn events() -> Vec<Value> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(fixture()).unwrap()).unwrap();
    doc["traceEvents"].as_array().unwrap().clone()
}

fn findings<'a>(a: &'a Value, pattern: &str) -> Option<&'a Value> {
    a["diagnosis"]["findings"].as_array().unwrap().iter().find(|f| f["pattern"] == pattern)
}

#[test]
fn a_real_h100_torch_profile_imports_and_its_diagnosis_names_the_loops_faults() {
    let s = Scratch::new("torch-h100");
    let (trace, json) = (s.path("torch.lumen"), s.path("analysis.json"));
    let run = lumen(&["trace", "import", &fixture(), "-o", &trace]).ok();
    assert!(run.stderr.contains("116 kernels, 8 memcpys, 4 memsets"), "{}", run.stderr);
    let report = lumen(&["analyze", &trace, "--json", &json]).ok().stdout;
    let a: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();

    let events = events();
    let kernels: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X" && e["cat"] == "kernel").collect();
    let mut per_name: BTreeMap<&str, u64> = BTreeMap::new();
    for k in &kernels {
        *per_name.entry(k["name"].as_str().unwrap()).or_default() += 1;
    }
    let k = &a["kernels"]["available"];
    assert_eq!(k["count"], kernels.len());
    for top in k["top"].as_array().unwrap() {
        assert_eq!(top["count"], per_name[top["name"].as_str().unwrap()], "{}", top["name"]);
    }
    assert_eq!(a["overview"]["gpu"]["available"], "NVIDIA H100 80GB HBM3");
    let steps: Vec<u64> = events
        .iter()
        .filter(|e| e["cat"] == "user_annotation")
        .filter_map(|e| e["name"].as_str()?.strip_prefix("ProfilerStep#")?.parse().ok())
        .collect();
    let iterations = &a["overview"]["iterations"]["available"];
    assert_eq!((iterations["count"].as_u64(), iterations["first"].as_u64()), (Some(steps.len() as u64), steps.iter().min().copied()));

    // record_function ranges inside each ProfilerStep are the loop's phases.
    let phases = a["phases"]["phases"]["available"]["phases"].as_array().expect("phases from record_function ranges");
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["forward", "sample"]);
    let forward_us: f64 =
        events.iter().filter(|e| e["cat"] == "user_annotation" && e["name"] == "forward").map(|e| e["dur"].as_f64().unwrap()).sum();
    assert!((phases[0]["total_ns"].as_f64().unwrap() - forward_us * 1e3).abs() < 10.0, "{} vs {forward_us} µs", phases[0]["total_ns"]);

    // The step's token ids go up from pageable memory; .item() synchronises.
    let pageable = findings(&a, "pageable memcpy").expect("the pageable copies are found");
    assert!(pageable["evidence"][0].as_str().unwrap().starts_with("4 async copies from or to pageable memory"), "{pageable}");
    let launch = findings(&a, "kernel-launch overhead").expect("a small eager decode loop is launch bound");
    assert!(launch["action"].as_str().unwrap().contains("--cuda-graph-max-batch-size N"), "no batch size is known: {launch}");
    let cpu = findings(&a, "CPU bottleneck").expect("the GPU mostly waits for Python");
    assert!(cpu["action"].as_str().unwrap().contains("phase `forward`, the one the GPU waits in"), "{cpu}");
    assert!(report.starts_with("== Diagnosis =="), "{report}");
}
