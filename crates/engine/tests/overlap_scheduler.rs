//! The overlap scheduler against the engine without it, on the CPU: every request gets the same
//! tokens, logprobs and end (stops on a token seen a step late, lengths, logprobs steps finished
//! before the next launch, requests arriving while others run, preemption), and a workload that
//! ends on lengths only runs the same iterations with the same counts and expert load.

use lumen_engine::{
    Engine, EngineConfig, FinishReason, IterationStats, KvBudget, Request, RequestEvent, RequestStream, SamplingParams, SchedulerPolicy,
    StopConditions, TokenLogprobs,
};
use lumen_model::load_model;
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
fn run(model: &str, config: EngineConfig, arrivals: &[(usize, Request)]) -> (Vec<Outcome>, Vec<IterationStats>) {
    let mut engine = Engine::new(Arc::new(load_model(model).unwrap()), config).unwrap();
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

#[test]
fn every_request_gets_the_tokens_and_end_it_gets_without_the_overlap() {
    let model = "tiny-untied";
    let sync = EngineConfig { max_batch_size: 4, max_num_tokens: 32, block_size: 4, ..EngineConfig::default() };
    // A token the greedy chain of the first prompt draws at its fourth step stops it there.
    let (free, _) = run(model, sync.clone(), &[(0, request(vec![5, 6, 7], 12, vec![], greedy()))]);
    let stop = free[0].0[3].0;
    let sampled = SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.9, seed: 11, logprobs: None };
    let with_logprobs = SamplingParams { logprobs: Some(3), ..greedy() };
    let arrivals = vec![
        (0, request(vec![5, 6, 7], 12, vec![stop], greedy())),
        (0, request(vec![9, 1, 4, 4, 2], 7, vec![], sampled.clone())),
        (1, request((1..40).collect(), 5, vec![], greedy())),
        (2, request(vec![3; 6], 9, vec![], with_logprobs.clone())),
        (3, request(vec![8, 2], 1, vec![], greedy())),
        (6, request(vec![11, 12, 13, 14], 10, vec![stop], sampled)),
        (6, request(vec![7, 7], 4, vec![], with_logprobs)),
        (9, request((20..70).collect(), 6, vec![], greedy())),
    ];
    let (want, _) = run(model, sync.clone(), &arrivals);
    assert_eq!(want[0].1, FinishReason::Stop, "the stop id ends the first request");
    assert_eq!(want[0].0.len(), 4);
    assert!(want[3].0.iter().all(|(_, lp)| lp.is_some()), "the logprobs request has them");
    let overlap = EngineConfig { overlap_scheduler: true, ..sync.clone() };
    let (got, _) = run(model, overlap.clone(), &arrivals);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "request {i}");
    }
    // A cache that holds two requests at once, so the newest is preempted and recomputed.
    let small = |c: EngineConfig| EngineConfig { kv_budget: KvBudget::Tokens(48), scheduler_policy: SchedulerPolicy::MaxUtilization, ..c };
    let (want, sync_iterations) = run(model, small(sync), &arrivals);
    let (got, _) = run(model, small(overlap), &arrivals);
    assert!(sync_iterations.iter().any(|s| s.num_preempted_requests > 0), "the small cache preempts");
    assert_eq!(got, want, "with preemption");
}

#[test]
fn steps_that_end_on_lengths_are_the_same_iterations_with_the_same_expert_load() {
    let arrivals: Vec<(usize, Request)> =
        (0..6).map(|i| (2 * i, request((1..5 + 3 * i as u32).collect(), 3 + 2 * i, vec![], greedy()))).collect();
    let sync = EngineConfig { max_batch_size: 3, max_num_tokens: 16, block_size: 4, ..EngineConfig::default() };
    let (want, sync_stats) = run("tiny-olmoe", sync.clone(), &arrivals);
    let (got, overlap_stats) = run("tiny-olmoe", EngineConfig { overlap_scheduler: true, ..sync }, &arrivals);
    assert_eq!(got, want);
    let shape = |s: &IterationStats| (s.iter, s.num_ctx_tokens, s.num_gen_tokens, s.num_completed_requests, s.expert_load.clone());
    let want: Vec<_> = sync_stats.iter().map(shape).collect();
    assert!(want.iter().all(|w| !w.4.is_empty()), "every iteration of the MoE model counts its expert load");
    assert_eq!(overlap_stats.iter().map(shape).collect::<Vec<_>>(), want);
}
