//! The engine is batch-invariant: requests served together — prefill mixed with decode, prompts
//! split into chunks, sequences preempted and recomputed because the KV cache is tiny — produce
//! exactly the tokens each request produces when it runs alone.
//!
//! The comparison only means something when the tokens depend on the input: each test first
//! checks that no request just repeats its last prompt token and that the sampled requests draw
//! from a broad distribution. The preset is `tiny-untied`, whose output layer is its own: a tied
//! random preset predicts the last prompt token with probability 1.

use lumen_backend::AttentionSeq;
use lumen_engine::{Engine, EngineConfig, FinishReason, KvBudget, Request, RequestEvent, SamplingParams, SchedulerPolicy, StopConditions};
use lumen_model::{load_model, ForwardBatch, Model};
use std::sync::Arc;

/// The least entropy, in nats, a sampled request's first distribution must have for the sampled
/// half to test sampling (e^1.5 ≈ 4.5 equally likely tokens).
const MIN_SAMPLING_ENTROPY: f64 = 1.5;

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
        let s = engine.step().unwrap().stats.expect("without the overlap scheduler a call finishes its step");
        preempted |= s.num_preempted_requests > 0;
        mixed |= s.num_ctx_requests > 0 && s.num_gen_requests > 0;
        chunked |= s.num_ctx_tokens == config.max_num_tokens - s.num_gen_tokens && s.num_ctx_requests > 0;
    }
    assert!(mixed, "no iteration mixed prefill and decode");
    assert_eq!(engine.kv_free_blocks(), engine.kv_blocks(), "after preemptions every KV block is free again");
    (streams.into_iter().map(|s| s.collect().0).collect(), chunked, preempted)
}

fn prompts(count: usize, vocab: u32) -> Vec<Vec<u32>> {
    (0..count).map(|i| (0..(5 + 7 * i) as u32).map(|k| (k * 131 + i as u32 * 17 + 3) % vocab).collect()).collect()
}

/// Fails when a request's output is its last prompt token over and over, which would make every
/// comparison below blind to a step that reads the wrong inputs.
fn assert_outputs_vary(requests: &[Request], outputs: &[Vec<u32>]) {
    for (i, (r, out)) in requests.iter().zip(outputs).enumerate() {
        let last = *r.prompt.last().unwrap();
        let distinct = out.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert!(distinct >= 2 && out.iter().any(|&t| t != last), "request {i} repeats one token: {out:?} (last prompt token {last})");
    }
}

/// The entropy in nats of the distribution `params` sample the next token of `prompt` from:
/// softmax at the temperature over the `top_k` highest logits, cut to the smallest set reaching
/// `top_p`, renormalised.
fn sampling_entropy(model: &Model, prompt: &[u32], params: &SamplingParams) -> f64 {
    let decoder = model.cpu_decoder().unwrap();
    let n = prompt.len();
    let block_size = 16;
    let table: Vec<u32> = (0..n.div_ceil(block_size) as u32).collect();
    let mut kv = decoder.new_kv_storage(table.len(), block_size);
    let positions: Vec<usize> = (0..n).collect();
    let seqs = [AttentionSeq { start: 0, len: n, first_pos: 0, block_table: &table }];
    let batch = ForwardBatch { tokens: prompt, positions: &positions, slots: &positions, seqs: &seqs, logit_rows: &[n - 1] };
    let mut logits: Vec<f64> = decoder.forward(&batch, &mut kv).iter().map(|&z| z as f64 / params.temperature as f64).collect();
    logits.sort_by(|a, b| b.total_cmp(a));
    if params.top_k > 0 {
        logits.truncate(params.top_k);
    }
    let total: f64 = logits.iter().map(|z| (z - logits[0]).exp()).sum();
    let mut kept = Vec::new();
    for z in &logits {
        kept.push((z - logits[0]).exp() / total);
        if kept.iter().sum::<f64>() >= params.top_p as f64 {
            break;
        }
    }
    let mass: f64 = kept.iter().sum();
    -kept.iter().map(|p| p / mass * (p / mass).ln()).sum::<f64>()
}

fn check(model: Arc<Model>, requests: Vec<Request>, config: EngineConfig) {
    let solo: Vec<Vec<u32>> = requests.iter().map(|r| alone(&model, r)).collect();
    assert_outputs_vary(&requests, &solo);
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
    let config = EngineConfig {
        max_batch_size: 8,
        max_num_tokens: 24,
        block_size: 4,
        kv_budget: KvBudget::Tokens(96),
        scheduler_policy: SchedulerPolicy::MaxUtilization,
        ..EngineConfig::default()
    };
    check(model, requests, config);
}

#[test]
fn sampled_tokens_on_a_preset_do_not_depend_on_the_batch() {
    let model = Arc::new(load_model("tiny-untied@3").unwrap());
    let requests: Vec<Request> = prompts(16, 512)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let sampling = if i % 2 == 0 {
                SamplingParams::default()
            } else {
                SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, seed: i as u64, logprobs: None }
            };
            request(p, 12, sampling)
        })
        .collect();
    for r in requests.iter().filter(|r| r.sampling.temperature > 0.0) {
        let entropy = sampling_entropy(&model, &r.prompt, &r.sampling);
        assert!(entropy >= MIN_SAMPLING_ENTROPY, "a sampled request draws from {entropy:.3} nats: it is greedy in effect");
    }
    let config = EngineConfig {
        max_batch_size: 6,
        max_num_tokens: 32,
        block_size: 4,
        kv_budget: KvBudget::Tokens(200),
        scheduler_policy: SchedulerPolicy::MaxUtilization,
        ..EngineConfig::default()
    };
    check(model, requests, config);
}
