//! Request life cycle through the engine: stop conditions, rejection of impossible requests,
//! abort, and the handle that runs the loop on its own thread.

use lumen_engine::{Engine, EngineConfig, EngineHandle, FinishReason, KvBudget, Request, RequestEvent, SamplingParams, StopConditions};
use lumen_model::load_model;
use std::sync::Arc;

fn engine(config: EngineConfig) -> Engine {
    Engine::new(Arc::new(load_model("tiny").unwrap()), config).unwrap()
}

fn greedy(prompt: Vec<u32>, max_tokens: usize, stop_ids: Vec<u32>, ignore_eos: bool) -> Request {
    Request { prompt, sampling: SamplingParams::default(), stop: StopConditions { max_tokens, stop_ids, ignore_eos } }
}

fn run(engine: &mut Engine, r: Request) -> (Vec<u32>, FinishReason, usize) {
    let s = engine.submit(r);
    while engine.has_work() {
        engine.step().unwrap();
    }
    match s.collect() {
        (tokens, RequestEvent::Finished { reason, output_tokens, .. }) => (tokens, reason, output_tokens),
        other => panic!("{other:?}"),
    }
}

#[test]
fn stop_ids_end_the_request_and_are_included() {
    let mut e = engine(EngineConfig::default());
    let (free, reason, _) = run(&mut e, greedy(vec![1, 2, 3], 12, vec![], true));
    assert_eq!((free.len(), reason), (12, FinishReason::Length));
    let stop = free[4];
    let first = free.iter().position(|&t| t == stop).unwrap();
    let (tokens, reason, n) = run(&mut e, greedy(vec![1, 2, 3], 12, vec![stop], true));
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(tokens, free[..=first].to_vec());
    assert_eq!(n, tokens.len());
}

#[test]
fn impossible_requests_are_rejected_with_the_reason() {
    let mut e = engine(EngineConfig { kv_budget: KvBudget::Tokens(64), ..EngineConfig::default() });
    for (prompt, max, want) in [
        (vec![], 4, "prompt is empty"),
        (vec![1, 600], 4, "token id 600 is out of range for a vocabulary of 512"),
        (vec![1; 60], 10, "exceeds the engine's limit of 64 tokens"),
        (vec![1], 0, "max_tokens is 0"),
    ] {
        let (tokens, reason, _) = run(&mut e, greedy(prompt, max, vec![], true));
        assert!(tokens.is_empty());
        match reason {
            FinishReason::Rejected(why) => assert!(why.contains(want), "{why}"),
            other => panic!("expected a rejection containing {want:?}, got {other:?}"),
        }
    }
    assert!(!e.has_work());
}

#[test]
fn abort_frees_the_request_and_reports_it() {
    let mut e = engine(EngineConfig::default());
    let s = e.submit(greedy(vec![4, 5, 6], 100, vec![], true));
    e.step().unwrap();
    e.step().unwrap();
    assert!(e.audit_kv_blocks().unwrap() > 0, "the running request holds blocks");
    e.abort(s.id);
    assert!(!e.has_work());
    assert_eq!(e.kv_free_blocks(), e.kv_blocks(), "the aborted request's blocks are free again");
    let (tokens, done) = s.collect();
    assert_eq!(tokens.len(), 2);
    assert!(matches!(done, RequestEvent::Finished { reason: FinishReason::Aborted, output_tokens: 2, .. }), "{done:?}");
}

#[test]
fn a_failed_engine_ends_every_request_and_frees_every_block() {
    let mut e = engine(EngineConfig { max_batch_size: 2, ..EngineConfig::default() });
    let streams: Vec<_> = (0..4).map(|i| e.submit(greedy(vec![i + 1, 2, 3], 50, vec![], true))).collect();
    e.step().unwrap();
    let queued = e.submit(greedy(vec![8, 9], 5, vec![], true));
    assert!(e.audit_kv_blocks().unwrap() > 0);
    e.fail_all("a planted device error");
    assert!(!e.has_work());
    assert_eq!(e.kv_free_blocks(), e.kv_blocks());
    for s in streams.into_iter().chain([queued]) {
        match s.collect().1 {
            RequestEvent::Finished { reason: FinishReason::Rejected(why), .. } => assert!(why.contains("a planted device error"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn the_handle_serves_concurrent_callers_and_reports_iterations() {
    let (stats_tx, stats_rx) = std::sync::mpsc::channel();
    let handle = EngineHandle::spawn(engine(EngineConfig::default()), Some(stats_tx));
    let streams: Vec<_> = (0..4).map(|i| handle.submit(greedy(vec![i + 1, 7, 9], 5, vec![], true))).collect();
    let victim = handle.submit(greedy(vec![3, 3, 3], 400, vec![], true));
    handle.abort(victim.id);
    for s in streams {
        let (tokens, done) = s.collect();
        assert_eq!(tokens.len(), 5);
        assert!(matches!(done, RequestEvent::Finished { reason: FinishReason::Length, .. }));
    }
    let (_, done) = victim.collect();
    assert!(matches!(done, RequestEvent::Finished { reason: FinishReason::Aborted, .. }), "{done:?}");
    drop(handle);
    let iterations: Vec<_> = stats_rx.iter().collect();
    assert!(!iterations.is_empty());
    assert!(iterations.windows(2).all(|w| w[1].iter == w[0].iter + 1), "iterations are numbered in order");
}

/// Every token event of a finished stream.
fn token_events(s: lumen_engine::RequestStream) -> Vec<(u32, Option<lumen_engine::TokenLogprobs>)> {
    let mut out = Vec::new();
    while let Ok(event) = s.events.recv() {
        match event {
            RequestEvent::Token { id, logprobs } => out.push((id, logprobs)),
            RequestEvent::Finished { .. } => break,
        }
    }
    out
}

fn with_logprobs(prompt: Vec<u32>, max_tokens: usize, logprobs: Option<usize>) -> Request {
    let sampling = SamplingParams { logprobs, ..SamplingParams::default() };
    Request { prompt, sampling, stop: StopConditions { max_tokens, stop_ids: vec![], ignore_eos: true } }
}

#[test]
fn logprobs_follow_each_request_through_a_mixed_batch() {
    let model = Arc::new(load_model("tiny-untied").unwrap());
    let mut e = Engine::new(model.clone(), EngineConfig::default()).unwrap();
    let plain = e.submit(with_logprobs(vec![20, 21], 12, None));
    e.step().unwrap();
    e.step().unwrap();
    // Prefills of two requests with logprobs after the decode of one without: their rows are not
    // the batch's first.
    let asked = e.submit(with_logprobs(vec![7, 8, 9, 10], 12, Some(3)));
    let bare = e.submit(with_logprobs(vec![30, 31, 32, 33, 34, 35], 12, Some(0)));
    while e.has_work() {
        e.step().unwrap();
    }
    let asked = token_events(asked);
    assert_eq!(asked.len(), 12);
    for (id, lp) in &asked {
        let lp = lp.as_ref().expect("logprobs on every token");
        assert_eq!(lp.top.len(), 3);
        assert_eq!(lp.top[0], (*id, lp.logprob), "greedy takes the likeliest token");
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1) && lp.logprob <= 0.0, "{lp:?}");
    }
    assert!(token_events(plain).iter().all(|(_, lp)| lp.is_none()), "no logprobs unless asked");
    assert!(token_events(bare).iter().all(|(_, lp)| lp.as_ref().is_some_and(|lp| lp.top.is_empty())));
    // The same figures from a lone prefill of each prefix: the row read was the request's own.
    let tokens: Vec<u32> = asked.iter().map(|(id, _)| *id).collect();
    for i in [0, 1, 5, 11] {
        let mut solo = Engine::new(model.clone(), EngineConfig::default()).unwrap();
        let prompt = [vec![7, 8, 9, 10], tokens[..i].to_vec()].concat();
        let s = solo.submit(with_logprobs(prompt, 1, Some(3)));
        while solo.has_work() {
            solo.step().unwrap();
        }
        let (id, lp) = token_events(s).remove(0);
        let (want, got) = (lp.unwrap(), asked[i].1.clone().unwrap());
        assert_eq!(id, tokens[i]);
        assert!((want.logprob - got.logprob).abs() < 1e-4, "token {i}: lone {want:?}, batched {got:?}");
        for (w, g) in want.top.iter().zip(&got.top) {
            assert!(w.0 == g.0 && (w.1 - g.1).abs() < 1e-4, "token {i}: lone {want:?}, batched {got:?}");
        }
    }
}
