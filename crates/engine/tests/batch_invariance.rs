//! The engine is batch-invariant: requests served together — prefill mixed with decode, prompts
//! split into chunks, sequences preempted and recomputed because the KV cache is tiny — produce
//! exactly the tokens each request produces when it runs alone.

use lumen_engine::{Engine, EngineConfig, FinishReason, KvBudget, Request, RequestEvent, SamplingParams, StopConditions};
use lumen_model::{load_model, Model};
use std::sync::Arc;

fn request(prompt: Vec<u32>, max_tokens: usize, sampling: SamplingParams) -> Request {
    Request { prompt, sampling, stop: StopConditions { max_tokens, stop_ids: Vec::new(), ignore_eos: true } }
}

fn alone(model: &Arc<Model>, r: &Request) -> Vec<u32> {
    let mut engine = Engine::new(model.clone(), EngineConfig::default()).unwrap();
    let stream = engine.submit(r.clone());
    while engine.has_work() {
        engine.step().unwrap();
    }
    let (tokens, done) = stream.collect();
    assert!(matches!(done, RequestEvent::Finished { reason: FinishReason::Length, .. }), "{done:?}");
    tokens
}

/// Runs all requests in one engine with a small token budget and KV cache; returns each
/// request's tokens, and whether chunked prefill and preemption actually happened.
fn together(model: &Arc<Model>, requests: &[Request], config: EngineConfig) -> (Vec<Vec<u32>>, bool, bool) {
    let mut engine = Engine::new(model.clone(), config.clone()).unwrap();
    let streams: Vec<_> = requests.iter().map(|r| engine.submit(r.clone())).collect();
    let (mut chunked, mut preempted, mut mixed) = (false, false, false);
    while engine.has_work() {
        let s = engine.step().unwrap().stats;
        preempted |= s.num_preempted_requests > 0;
        mixed |= s.num_ctx_requests > 0 && s.num_gen_requests > 0;
        chunked |= s.num_ctx_tokens == config.max_num_tokens - s.num_gen_tokens && s.num_ctx_requests > 0;
    }
    assert!(mixed, "no iteration mixed prefill and decode");
    (streams.into_iter().map(|s| s.collect().0).collect(), chunked, preempted)
}

fn prompts(count: usize, vocab: u32) -> Vec<Vec<u32>> {
    (0..count).map(|i| (0..(5 + 7 * i) as u32).map(|k| (k * 131 + i as u32 * 17 + 3) % vocab).collect()).collect()
}

fn check(model: Arc<Model>, requests: Vec<Request>, config: EngineConfig) {
    let solo: Vec<Vec<u32>> = requests.iter().map(|r| alone(&model, r)).collect();
    let (batched, chunked, preempted) = together(&model, &requests, config);
    assert!(chunked, "no prompt was split into chunks");
    assert!(preempted, "no request was preempted");
    for (i, (a, b)) in solo.iter().zip(&batched).enumerate() {
        assert_eq!(a, b, "request {i} produced different tokens when batched");
    }
}

#[test]
fn greedy_tokens_on_the_real_model_do_not_depend_on_the_batch() {
    let model = Arc::new(load_model(lumen_model::default_model_path().to_str().unwrap()).unwrap_or_else(|e| panic!("{e:#}")));
    let requests = prompts(6, 49152).into_iter().map(|p| request(p, 10, SamplingParams::default())).collect();
    let config =
        EngineConfig { max_batch_size: 8, max_num_tokens: 24, block_size: 4, kv_budget: KvBudget::Tokens(96), ..EngineConfig::default() };
    check(model, requests, config);
}

#[test]
fn sampled_tokens_on_a_preset_do_not_depend_on_the_batch() {
    let model = Arc::new(load_model("tiny@3").unwrap());
    let requests = prompts(16, 512)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let sampling = if i % 2 == 0 {
                SamplingParams::default()
            } else {
                SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, seed: i as u64 }
            };
            request(p, 12, sampling)
        })
        .collect();
    let config =
        EngineConfig { max_batch_size: 6, max_num_tokens: 32, block_size: 4, kv_budget: KvBudget::Tokens(200), ..EngineConfig::default() };
    check(model, requests, config);
}
