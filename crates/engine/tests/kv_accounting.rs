//! KV block accounting under random traffic: seeded sequences of submits, aborts (of waiting,
//! running, finished and unknown requests) and steps run through one engine whose KV cache is
//! small enough to force preemption, with and without the overlap scheduler. After every
//! operation the free list and the block tables hold each block exactly once; when the work is
//! drained every block is free, and every request that was not aborted has all its tokens.

use lumen_engine::{Engine, EngineConfig, KvBudget, Request, RequestId, SamplingParams, SchedulerPolicy, StopConditions};
use lumen_model::load_model;
use std::sync::Arc;

const SEEDS: u64 = 40;
const OPERATIONS: usize = 120;

/// A small deterministic generator (xorshift64*), so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D) % n
    }
}

/// What the random runs did, so the test can show that each path was taken.
#[derive(Default, Debug)]
struct Coverage {
    preemptions: usize,
    aborts_before_a_token: usize,
    aborts_after_tokens: usize,
    finished: usize,
}

fn random_run(engine: &mut Engine, seed: u64, coverage: &mut Coverage) {
    let mut rng = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let mut ids: Vec<RequestId> = Vec::new();
    let mut streams = Vec::new();
    let check = |engine: &Engine, what: &str| {
        if let Err(e) = engine.audit_kv_blocks() {
            panic!("seed {seed}, after {what}: {e}");
        }
    };
    for op in 0..OPERATIONS {
        match rng.below(10) {
            0..=3 => {
                let len = 1 + rng.below(40) as usize;
                let prompt = (0..len).map(|_| rng.below(512) as u32).collect();
                let max_tokens = 1 + rng.below(24) as usize;
                let stream = engine.submit(Request {
                    prompt,
                    sampling: SamplingParams::default(),
                    stop: StopConditions { max_tokens, stop_ids: Vec::new(), ignore_eos: true },
                });
                ids.push(stream.id);
                streams.push((stream, max_tokens));
                check(engine, &format!("submit (operation {op})"));
            }
            4 => {
                // Any id ever issued, or one never issued.
                let id = if ids.is_empty() || rng.below(8) == 0 { 1_000_000 } else { ids[rng.below(ids.len() as u64) as usize] };
                engine.abort(id);
                check(engine, &format!("abort of {id} (operation {op})"));
            }
            _ => {
                let out = engine.step().unwrap();
                coverage.preemptions += out.stats.map_or(0, |s| s.num_preempted_requests);
                check(engine, &format!("step (operation {op})"));
            }
        }
    }
    while engine.has_work() {
        engine.step().unwrap();
        check(engine, "a draining step");
    }
    assert_eq!(engine.kv_free_blocks(), engine.kv_blocks(), "seed {seed}: blocks still held after the work drained");
    for (s, max_tokens) in streams {
        let (tokens, done) = s.collect();
        match done {
            lumen_engine::RequestEvent::Finished { reason: lumen_engine::FinishReason::Aborted, .. } if tokens.is_empty() => {
                coverage.aborts_before_a_token += 1
            }
            lumen_engine::RequestEvent::Finished { reason: lumen_engine::FinishReason::Aborted, .. } => coverage.aborts_after_tokens += 1,
            lumen_engine::RequestEvent::Finished { reason: lumen_engine::FinishReason::Length, output_tokens, .. } => {
                assert_eq!((tokens.len(), output_tokens), (max_tokens, max_tokens), "seed {seed}: a request's tokens");
                coverage.finished += 1
            }
            other => panic!("seed {seed}: a request ended with {other:?}"),
        }
    }
}

#[test]
fn random_submits_aborts_and_steps_never_lose_or_double_a_block() {
    let model = Arc::new(load_model("tiny").unwrap());
    let config = EngineConfig {
        max_batch_size: 4,
        max_num_tokens: 24,
        block_size: 4,
        kv_budget: KvBudget::Tokens(96),
        scheduler_policy: SchedulerPolicy::MaxUtilization,
        ..EngineConfig::default()
    };
    for overlap_scheduler in [false, true] {
        let config = EngineConfig { overlap_scheduler, ..config.clone() };
        let mut coverage = Coverage::default();
        for seed in 0..SEEDS {
            let mut engine = Engine::new(model.clone(), config.clone()).unwrap();
            assert_eq!(engine.overlaps(), overlap_scheduler);
            random_run(&mut engine, seed, &mut coverage);
        }
        eprintln!("overlap scheduler {overlap_scheduler}: {coverage:?}");
        assert!(coverage.preemptions > 0, "no run preempted a request: {coverage:?}");
        assert!(coverage.aborts_before_a_token > 0 && coverage.aborts_after_tokens > 0, "both kinds of abort must happen: {coverage:?}");
        assert!(coverage.finished > 0, "{coverage:?}");
    }
}
