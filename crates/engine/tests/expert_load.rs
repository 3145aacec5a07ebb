//! The engine's per-iteration expert load: each step of a mixture-of-experts model records, per
//! MoE layer, the (token, expert) assignments each expert received, counted by the CPU forward
//! pass; a dense model records none.

use lumen_engine::{Engine, EngineConfig, KvBudget, Request, SamplingParams, StopConditions};
use lumen_model::load_model;
use std::sync::Arc;

fn request(len: usize, max_tokens: usize) -> Request {
    Request {
        prompt: (0..len as u32).map(|i| (i * 37 + 5) % 512).collect(),
        sampling: SamplingParams::default(),
        stop: StopConditions { max_tokens, stop_ids: Vec::new(), ignore_eos: true },
    }
}

#[test]
fn each_step_records_every_moe_layers_expert_load() {
    // tiny-qwen3-moe: 2 layers, 16 experts, top 4.
    let model = Arc::new(load_model("tiny-qwen3-moe").unwrap());
    let mut engine = Engine::new(model, EngineConfig { kv_budget: KvBudget::Tokens(256), ..EngineConfig::default() }).unwrap();
    let _streams = [engine.submit(request(20, 3)), engine.submit(request(7, 3))];
    let mut steps = 0;
    while engine.has_work() {
        let stats = engine.step().unwrap().stats.expect("without the overlap scheduler a call finishes its step");
        let tokens = stats.num_ctx_tokens + stats.num_gen_tokens;
        if tokens == 0 {
            assert!(stats.expert_load.is_empty());
            continue;
        }
        steps += 1;
        assert_eq!(stats.expert_load.len(), 2, "iteration {}", stats.iter);
        for load in &stats.expert_load {
            assert_eq!(load.len(), 16);
            assert_eq!(load.iter().sum::<u32>() as usize, tokens * 4, "iteration {}: {load:?}", stats.iter);
        }
        assert_eq!(stats.expert_max_over_mean.len(), 2);
    }
    assert_eq!(steps, 3, "one prefill step and two decode steps");
}

#[test]
fn a_dense_model_records_no_expert_load() {
    let mut engine = Engine::new(Arc::new(load_model("tiny").unwrap()), EngineConfig::default()).unwrap();
    let _stream = engine.submit(request(9, 2));
    let stats = engine.step().unwrap().stats.expect("without the overlap scheduler a call finishes its step");
    assert!(stats.num_ctx_tokens == 9 && stats.expert_load.is_empty());
}

#[test]
fn the_trace_keeps_every_steps_expert_load_and_says_the_router_is_the_models() {
    let dir = lumen_test_support::scratch::Scratch::new("expert-load-trace");
    let path = dir.dir.join("moe.lumen");
    let model = Arc::new(load_model("tiny-qwen3-moe").unwrap());
    let mut engine = Engine::new(model, EngineConfig { kv_budget: KvBudget::Tokens(256), ..EngineConfig::default() }).unwrap();
    engine.enable_profiling(lumen_engine::profiling::Profiler::new(&path, None, Vec::new()).unwrap());
    let _streams = [engine.submit(request(20, 3)), engine.submit(request(7, 3))];
    let mut want = Vec::new();
    while engine.has_work() {
        let stats = engine.step().unwrap().stats.expect("without the overlap scheduler a call finishes its step");
        for (layer, load) in stats.expert_load.iter().enumerate() {
            want.push((stats.iter, layer as u32, load.iter().map(|&t| t as u64).collect::<Vec<_>>()));
        }
    }
    engine.finish_profiling().unwrap();
    let trace = lumen_trace::store::read_trace(&path).unwrap();
    let got: Vec<_> = trace.expert_loads.iter().map(|r| (r.iteration, r.layer, r.tokens.clone())).collect();
    assert_eq!(got, want);
    assert_eq!(want.len(), 6, "three steps of two MoE layers");
    assert_eq!(trace.meta("perfect_router"), Some("off"));
}
