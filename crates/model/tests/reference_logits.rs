//! Logits of lumen's CPU forward pass against `scripts/reference_logits.py`, an independent numpy
//! float64 implementation (for the GGUF it keeps llama.cpp's permuted Q/K and interleaved RoPE,
//! where lumen un-permutes and rotates halves). Fixtures hold, at three positions per sequence,
//! the reference's 16 highest logits and 16 fixed probe ids.
//!
//! Tolerance: |lumen − reference| ≤ 2e-3 + 1e-3·|reference| for every recorded logit. lumen
//! computes in f32, the reference in f64; over 30 layers the drift stays well inside this.

use lumen_backend::AttentionSeq;
use lumen_model::{load_model, ForwardBatch, Model};
use serde_json::Value;
use std::path::Path;

const ABS_TOL: f64 = 2e-3;
const REL_TOL: f64 = 1e-3;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Runs each fixture sequence in one forward pass and checks every recorded logit.
fn check(model: &Model, fixture_name: &str) {
    let f = fixture(fixture_name);
    let vocab = model.config().vocab_size;
    let mut worst = 0.0f64;
    for case in f["cases"].as_array().unwrap() {
        let tokens: Vec<u32> = ids(&case["tokens"]).into_iter().map(|t| t as u32).collect();
        let n = tokens.len();
        let block_size = 16;
        let blocks = n.div_ceil(block_size);
        let mut kv = model.cpu_decoder().unwrap().new_kv_storage(blocks, block_size);
        let table: Vec<u32> = (0..blocks as u32).collect();
        let positions: Vec<usize> = (0..n).collect();
        let seqs = [AttentionSeq { start: 0, len: n, first_pos: 0, block_table: &table }];
        let checked: Vec<&Value> = case["positions"].as_array().unwrap().iter().collect();
        let rows: Vec<usize> = checked.iter().map(|p| p["pos"].as_u64().unwrap() as usize).collect();
        let batch = ForwardBatch { tokens: &tokens, positions: &positions, slots: &positions, seqs: &seqs, logit_rows: &rows };
        let logits = model.cpu_decoder().unwrap().forward(&batch, &mut kv);
        for (r, p) in checked.iter().enumerate() {
            let row = &logits[r * vocab..(r + 1) * vocab];
            for (id_key, value_key) in [("top_ids", "top_values"), ("probe_ids", "probe_values")] {
                for (id, want) in ids(&p[id_key]).into_iter().zip(floats(&p[value_key])) {
                    let got = row[id] as f64;
                    let err = (got - want).abs();
                    worst = worst.max(err / (ABS_TOL + REL_TOL * want.abs()));
                    assert!(
                        err <= ABS_TOL + REL_TOL * want.abs(),
                        "{fixture_name}: sequence of {n}, position {}, token {id}: lumen {got}, reference {want}",
                        rows[r]
                    );
                }
            }
        }
    }
    eprintln!("{fixture_name}: worst error is {:.1}% of the tolerance", worst * 100.0);
}

#[test]
fn presets_match_the_reference() {
    for (preset, file) in [
        ("tiny", "logits_tiny.json"),
        ("tiny-qwen2", "logits_tiny_qwen2.json"),
        ("tiny-qwen3", "logits_tiny_qwen3.json"),
        ("tiny-mistral", "logits_tiny_mistral.json"),
        ("smollm2-135m", "logits_smollm2_135m.json"),
    ] {
        check(&load_model(preset).unwrap(), file);
    }
}

#[test]
fn smollm2_gguf_matches_the_reference() {
    let path = lumen_model::default_model_path();
    let model = load_model(path.to_str().unwrap()).unwrap_or_else(|e| panic!("{e:#} (run scripts/setup.sh)"));
    check(&model, "logits_smollm2_gguf.json");
}
