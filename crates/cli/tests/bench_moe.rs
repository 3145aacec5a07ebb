//! `lumen bench throughput` on a mixture-of-experts preset: the report gives each MoE layer's
//! expert load (the busiest expert over the mean), which a Zipf-skewed gate drives up and the
//! perfect router brings to balance; a perfect-router run is announced above the report and in
//! lumen's section, and a dense model's report has neither.

mod common;

use common::{fixed_length_dataset, lumen_env, Scratch};
use serde_json::Value;

/// Runs 16 requests of 24 + 4 tokens through `model`; returns the text report and the JSON one.
fn bench(s: &Scratch, model: &str, env: &[(&str, &str)]) -> (String, Value) {
    let data = fixed_length_dataset(s, model, "16", "24", "4");
    let json = s.path("report.json");
    let run = lumen_env(&["bench", "throughput", "--model", model, "--dataset", &data, "--report-json", &json], env).ok();
    let report = serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report")).expect("JSON");
    (run.stdout, report)
}

fn layer_loads(report: &Value) -> Vec<f64> {
    let layers = report["lumen"]["expert_load"].as_array().expect("expert_load in the JSON report");
    layers.iter().map(|l| l["max_over_mean"].as_f64().expect("max_over_mean")).collect()
}

#[test]
fn the_report_gives_each_moe_layers_load_skewed_by_the_gate_and_balanced_by_the_perfect_router() {
    let s = Scratch::new("bench-moe");
    let model = "tiny-olmoe+zipf=1.5";
    let (text, skewed) = bench(&s, model, &[]);
    let loads = layer_loads(&skewed);
    assert_eq!(loads.len(), 2, "tiny-olmoe has two MoE layers: {loads:?}");
    assert!(loads.iter().all(|&x| x > 2.0), "a Zipf(1.5) gate over 16 experts skews every layer: {loads:?}");
    assert!(text.contains("[Layer 0] max/mean:") && text.contains("[Layer 1] max/mean:"), "{text}");
    assert!(text.contains("Perfect Router:") && text.contains("off (the model's router)"), "{text}");
    assert!(!text.contains("WARNING"), "{text}");
    assert_eq!(skewed["lumen"]["perfect_router"], Value::Bool(false));

    let (text, balanced) = bench(&s, model, &[("LUMEN_PERFECT_ROUTER", "1")]);
    assert!(text.starts_with("WARNING: perfect router on: balanced routing logits"), "{text}");
    assert_eq!(balanced["lumen"]["perfect_router"], Value::Bool(true));
    let even = layer_loads(&balanced);
    // Balanced loads differ by at most one assignment; the smallest steps (4 decode tokens × top 4
    // over 16 experts) are exactly even.
    assert!(even.iter().all(|&x| (1.0..1.2).contains(&x)), "the perfect router balances every layer: {even:?}");

    let (text, dense) = bench(&s, "tiny-untied", &[]);
    assert!(dense["lumen"].get("expert_load").is_none() && dense["lumen"].get("perfect_router").is_none(), "{dense}");
    assert!(!text.contains("max/mean") && !text.contains("Perfect Router"), "{text}");
    assert!(!text.contains("KV Cache as full K/V") && dense["lumen"].get("expanded_kv_cache_tokens").is_none(), "{text}");
}

/// A latent-attention model's report says how many tokens its cache holds against full keys and
/// values of every head in the same memory: tiny DeepSeek-V3 keeps 32 + 8 values a token and
/// layer where 4 heads × (24 + 16) would take 160, a quarter.
#[test]
fn a_latent_attention_report_gives_the_cache_against_full_keys_and_values() {
    let s = Scratch::new("bench-mla");
    let (text, report) = bench(&s, "tiny-deepseek-v3", &[]);
    let blocks = report["lumen"]["kv_cache_blocks"].as_u64().expect("kv_cache_blocks");
    let block_size = report["lumen"]["kv_block_size"].as_u64().expect("kv_block_size");
    let expanded = report["lumen"]["expanded_kv_cache_tokens"].as_u64().expect("expanded_kv_cache_tokens for MLA");
    assert_eq!(expanded, blocks * block_size * 40 / 160, "{report}");
    assert!(
        text.contains("KV Cache as full K/V:") && text.contains(&format!("{expanded} tokens (latent rows hold 4.0x as many)")),
        "{text}"
    );
}
