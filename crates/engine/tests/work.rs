//! What each iteration read and computed, as the engine's statistics and its trace hold them, on
//! the `tiny` preset in f32 (hidden 64, 2 layers, 4 heads, 2 KV heads, head_dim 16, intermediate
//! 160, vocabulary 512, tied embeddings), checked against counts made by hand.

use lumen_engine::{Engine, EngineConfig, IterationStats, KvBudget, Profiler, Request, SamplingParams, StopConditions};
use lumen_model::load_model;
use lumen_trace::store::read_trace;
use std::sync::Arc;

/// One pass's weights: 86,016 matmul weights, 4 norms and the final norm (320), lm_head 32,768.
const PASS_WEIGHT_BYTES: u64 = 119_104 * 4;
const LM_HEAD_BYTES: u64 = 32_768 * 4;
/// An embedding row: 64 f32.
const ROW_BYTES: u64 = 256;
/// K and V of one token: 2 · 2 layers · 2 KV heads · 16 · 4 bytes.
const KV_BYTES_PER_TOKEN: u64 = 512;

#[test]
fn iterations_count_their_work_and_the_trace_holds_it_with_the_engine_limits() {
    let config =
        EngineConfig { max_batch_size: 2, max_num_tokens: 8, block_size: 4, kv_budget: KvBudget::Tokens(256), ..Default::default() };
    let mut engine = Engine::new(Arc::new(load_model("tiny").unwrap()), config).unwrap();
    let path = std::env::temp_dir().join(format!("lumen-engine-work-{}.lumen", std::process::id()));
    engine.enable_profiling(Profiler::new(&path, None, Vec::new()).unwrap());
    // The streams stay open: a request whose stream is gone is aborted.
    let mut streams = Vec::new();
    for first in [1, 2, 3] {
        let stop = StopConditions { max_tokens: 6, stop_ids: Vec::new(), ignore_eos: true };
        streams.push(engine.submit(Request { prompt: vec![first; 12], sampling: SamplingParams::default(), stop }));
    }
    let mut stats: Vec<IterationStats> = Vec::new();
    while engine.has_work() {
        stats.push(engine.step().unwrap().stats.expect("without the overlap scheduler a call finishes its step"));
    }
    let (trace_path, recorded) = engine.finish_profiling().unwrap().unwrap();
    assert_eq!(recorded, stats.len() as u64);

    assert!(stats.iter().any(|s| s.num_queued_requests > 0), "the third request waits for a batch slot");
    let mut decode_contexts = Vec::new();
    for s in &stats {
        let tokens = (s.num_ctx_tokens + s.num_gen_tokens) as u64;
        assert!(tokens > 0, "iteration {} ran nothing", s.iter);
        // The pass's weights (less lm_head when no row is sampled) and one embedding row per token.
        let weights = s.weight_bytes - tokens * ROW_BYTES;
        assert!(weights == PASS_WEIGHT_BYTES || weights == PASS_WEIGHT_BYTES - LM_HEAD_BYTES, "iteration {}: {s:?}", s.iter);
        assert_eq!(s.kv_bytes_read % KV_BYTES_PER_TOKEN, 0);
        let context = s.kv_bytes_read / KV_BYTES_PER_TOKEN;
        assert!(context >= tokens, "iteration {}: a context holds at least its new tokens: {s:?}", s.iter);
        if s.num_ctx_requests == 0 {
            // Decode only: every sequence samples, and each token attends to its whole context.
            let n = s.num_gen_requests as u64;
            assert_eq!(s.weight_bytes, PASS_WEIGHT_BYTES + n * ROW_BYTES);
            // Matmuls 2 · 86,016 per token, lm_head 2 · 64 · 512 per row, attention 4 · 2 · 4 · 16
            // per (token, position).
            assert_eq!(s.flops, (n * 2 * 86_016 + n * 65_536 + 512 * context) as f64, "iteration {}", s.iter);
            decode_contexts.push((n, context));
        }
    }
    assert!(decode_contexts.len() >= 3, "{decode_contexts:?}");
    for pair in decode_contexts.windows(2) {
        if pair[0].0 == pair[1].0 {
            assert_eq!(pair[1].1, pair[0].1 + pair[0].0, "each decoding sequence's context grows by one token: {decode_contexts:?}");
        }
    }

    let t = read_trace(&trace_path).unwrap();
    let meta = |key: &str| t.meta(key).unwrap_or_else(|| panic!("meta {key} missing: {:?}", t.meta));
    assert_eq!(meta("max_batch_size"), "2");
    assert_eq!(meta("max_num_tokens"), "8");
    assert_eq!(meta("kv_block_size"), "4");
    assert_eq!(meta("kv_total_blocks"), "64");
    assert_eq!(meta("kv_bytes_per_token"), KV_BYTES_PER_TOKEN.to_string());
    assert_eq!(meta("weight_bytes"), PASS_WEIGHT_BYTES.to_string());
    assert_eq!(meta("weight_dtype"), "f32");
    assert_eq!(meta("model_params"), "119104");
    assert_eq!(t.iterations.len(), stats.len());
    for (row, s) in t.iterations.iter().zip(&stats) {
        assert_eq!(row.iter, s.iter);
        assert_eq!(row.queued_reqs, Some(s.num_queued_requests as u64));
        assert_eq!(row.weight_bytes, Some(s.weight_bytes));
        assert_eq!(row.kv_bytes_read, Some(s.kv_bytes_read));
        assert_eq!(row.flops, Some(s.flops));
    }
    std::fs::remove_file(path).unwrap();
}
