//! The overlap scheduler against the engine without it, on the CPU: every request gets the same
//! tokens, logprobs and end (stops on a token seen a step late, lengths, logprobs steps finished
//! before the next launch, requests arriving while others run, preemption), and a workload that
//! ends on lengths only runs the same iterations with the same counts and expert load.
//!
//! On the GPU machine (skipped, with a message, without a GPU) the same comparisons run on CUDA,
//! where a step's marked tokens are taken on the device and decode steps replay CUDA graphs:
//! the length-only workload as served (the same iterations give the same bits), and the mixed one
//! batch-invariant (its stops change the batches, not the rows).

use lumen_engine::{
    Engine, EngineConfig, FinishReason, IterationStats, KvBudget, Request, RequestEvent, RequestStream, SamplingParams, SchedulerPolicy,
    StopConditions, TokenLogprobs,
};
use lumen_model::{load_model, load_model_with, Device, LoadOptions, Model, Quantization};
use lumen_test_support::gpu::device_or_skip;
use std::sync::Arc;

/// What one request got: its tokens with their logprobs, and how it ended.
type Outcome = (Vec<(u32, Option<TokenLogprobs>)>, FinishReason, usize);

fn request(prompt: Vec<u32>, max_tokens: usize, stop_ids: Vec<u32>, sampling: SamplingParams) -> Request {
    Request { prompt, sampling, stop: StopConditions { max_tokens, stop_ids, ignore_eos: true } }
}

fn outcome(stream: RequestStream) -> Outcome {
    let mut tokens = Vec::new();
    while let Ok(ev) = stream.events.try_recv() {
        match ev {
            RequestEvent::Token { id, logprobs } => tokens.push((id, logprobs)),
            RequestEvent::Finished { reason, output_tokens, .. } => return (tokens, reason, output_tokens),
        }
    }
    panic!("request {} did not finish", stream.id)
}

/// Runs `arrivals` (each submitted before the call of `step` it names) to the end; returns each
/// request's outcome and the iterations finished, after checking that every KV block is free.
fn run(model: &Arc<Model>, config: EngineConfig, arrivals: &[(usize, Request)]) -> (Vec<Outcome>, Vec<IterationStats>) {
    let mut engine = Engine::new(model.clone(), config).unwrap();
    let mut streams = Vec::new();
    let mut iterations = Vec::new();
    let mut call = 0;
    while streams.len() < arrivals.len() || engine.has_work() {
        for (_, r) in arrivals.iter().skip(streams.len()).take_while(|(at, _)| *at <= call) {
            streams.push(engine.submit(r.clone()));
        }
        iterations.extend(engine.step().unwrap().stats);
        call += 1;
        assert!(call < 10_000, "the engine does not drain");
    }
    engine.audit_kv_blocks().unwrap();
    assert_eq!(engine.kv_free_blocks(), engine.kv_blocks(), "blocks still held after the work drained");
    (streams.into_iter().map(outcome).collect(), iterations)
}

fn greedy() -> SamplingParams {
    SamplingParams::default()
}

fn cpu(preset: &str) -> Arc<Model> {
    Arc::new(load_model(preset).unwrap())
}

fn cuda(preset: &str) -> Arc<Model> {
    let options = LoadOptions { device: Device::Cuda, quantization: Quantization::None };
    Arc::new(load_model_with(preset, options).unwrap_or_else(|e| panic!("{preset}: {e:#}")))
}

/// Requests of every kind, the first and sixth stopping on `stop`: greedy and seeded sampling,
/// logprobs, a one-token request, prompts arriving while others run.
fn mixed_arrivals(stop: u32) -> Vec<(usize, Request)> {
    let sampled = SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.9, seed: 11, logprobs: None };
    let with_logprobs = SamplingParams { logprobs: Some(3), ..greedy() };
    vec![
        (0, request(vec![5, 6, 7], 12, vec![stop], greedy())),
        (0, request(vec![9, 1, 4, 4, 2], 7, vec![], sampled.clone())),
        (1, request((1..40).collect(), 5, vec![], greedy())),
        (2, request(vec![3; 6], 9, vec![], with_logprobs.clone())),
        (3, request(vec![8, 2], 1, vec![], greedy())),
        (6, request(vec![11, 12, 13, 14], 10, vec![stop], sampled)),
        (6, request(vec![7, 7], 4, vec![], with_logprobs)),
        (9, request((20..70).collect(), 6, vec![], greedy())),
    ]
}

/// Runs the mixed requests with and without the overlap scheduler under `config` and requires
/// the same outcome for each; returns the outcomes.
fn mixed_alike(model: &Arc<Model>, config: EngineConfig) -> Vec<Outcome> {
    // The first token the greedy chain of the first prompt draws from its fourth step on that it
    // had not drawn before stops it there.
    let (free, _) = run(model, config.clone(), &[(0, request(vec![5, 6, 7], 12, vec![], greedy()))]);
    let chain: Vec<u32> = free[0].0.iter().map(|(t, _)| *t).collect();
    let at = (3..chain.len()).find(|&i| !chain[..i].contains(&chain[i])).unwrap_or_else(|| panic!("the chain repeats itself: {chain:?}"));
    let arrivals = mixed_arrivals(chain[at]);
    let (want, _) = run(model, config.clone(), &arrivals);
    assert_eq!(want[0].1, FinishReason::Stop, "the stop id ends the first request");
    assert_eq!(want[0].0.len(), at + 1);
    assert!(want[3].0.iter().all(|(_, lp)| lp.is_some()), "the logprobs request has them");
    let (got, _) = run(model, EngineConfig { overlap_scheduler: true, ..config }, &arrivals);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "request {i}");
    }
    want
}

/// Requests that all end on their lengths, arriving two calls apart.
fn length_arrivals() -> Vec<(usize, Request)> {
    (0..6).map(|i| (2 * i, request((1..5 + 3 * i as u32).collect(), 3 + 2 * i, vec![], greedy()))).collect()
}

/// Runs the length-only requests with and without the overlap scheduler under `config`: the same
/// outcomes, and the same iterations (tokens, completions, expert load), whose windows follow one
/// another. Returns the iterations.
fn lengths_alike(model: &Arc<Model>, config: EngineConfig) -> Vec<IterationStats> {
    let arrivals = length_arrivals();
    let (want, sync_stats) = run(model, config.clone(), &arrivals);
    let (got, overlap_stats) = run(model, EngineConfig { overlap_scheduler: true, ..config }, &arrivals);
    assert_eq!(got, want);
    let shape = |s: &IterationStats| (s.iter, s.num_ctx_tokens, s.num_gen_tokens, s.num_completed_requests, s.expert_load.clone());
    assert_eq!(overlap_stats.iter().map(shape).collect::<Vec<_>>(), sync_stats.iter().map(shape).collect::<Vec<_>>());
    // An iteration's window is the loop pass that launched it, so windows follow one another,
    // while its latency runs to its finish.
    for stats in [&sync_stats, &overlap_stats] {
        assert!(stats.windows(2).all(|w| w[0].end_ns <= w[1].start_ns), "iteration windows overlap");
        assert!(stats.iter().all(|s| s.iter_latency_ms * 1e6 >= (s.end_ns - s.start_ns) as f64 - 1.0));
    }
    overlap_stats
}

#[test]
fn every_request_gets_the_tokens_and_end_it_gets_without_the_overlap() {
    let model = cpu("tiny-untied");
    let sync = EngineConfig { max_batch_size: 4, max_num_tokens: 32, block_size: 4, ..EngineConfig::default() };
    mixed_alike(&model, sync.clone());
    // A cache that holds two requests at once, so the newest is preempted and recomputed.
    let small = EngineConfig { kv_budget: KvBudget::Tokens(48), scheduler_policy: SchedulerPolicy::MaxUtilization, ..sync };
    let stop = mixed_alike(&model, small.clone())[0].0.last().expect("the first request has tokens").0;
    let (_, iterations) = run(&model, small, &mixed_arrivals(stop));
    assert!(iterations.iter().any(|s| s.num_preempted_requests > 0), "the small cache preempts");
}

#[test]
fn steps_that_end_on_lengths_are_the_same_iterations_with_the_same_expert_load() {
    let config = EngineConfig { max_batch_size: 3, max_num_tokens: 16, block_size: 4, ..EngineConfig::default() };
    let iterations = lengths_alike(&cpu("tiny-olmoe"), config);
    assert!(iterations.iter().all(|s| !s.expert_load.is_empty()), "every iteration of the MoE model counts its expert load");
}

#[test]
fn on_cuda_the_device_takes_the_marked_tokens_and_graphs_replay_them() {
    if device_or_skip(lumen_backend::cuda::Gpu::open(0)).is_none() {
        return;
    }
    let config = EngineConfig {
        max_batch_size: 4,
        max_num_tokens: 64,
        block_size: 16,
        kv_budget: KvBudget::Tokens(4096),
        ..EngineConfig::default()
    };
    for preset in ["smollm2-135m-untied@7", "qwen3-30b-a3b+layers=2"] {
        let model = cuda(preset);
        let iterations = lengths_alike(&model, config.clone());
        assert!(iterations.iter().filter(|s| s.num_ctx_tokens + s.num_gen_tokens > 0).all(|s| s.device_step_ms.is_some()), "{preset}");
        let outcomes = mixed_alike(&model, EngineConfig { batch_invariant: true, ..config.clone() });
        for (i, (tokens, _, _)) in outcomes.iter().enumerate().filter(|(_, o)| o.0.len() > 2) {
            assert!(tokens.windows(2).any(|w| w[0].0 != w[1].0), "{preset}: request {i} repeats one token: {tokens:?}");
        }
    }
}
