//! The scheduler policies keep their promises on a real engine with a KV cache too small for the
//! whole load: guaranteed-no-evict never preempts a request, max-utilization does and recomputes
//! each preempted request to exactly the tokens it produces alone. The preset is `tiny-untied`,
//! whose outputs depend on the input (a tied random preset repeats the last prompt token).

use lumen_engine::{Engine, EngineConfig, KvBudget, Request, SamplingParams, SchedulerPolicy, StopConditions};
use lumen_model::{load_model, Model};
use std::sync::Arc;

fn requests() -> Vec<Request> {
    (0..8u32)
        .map(|i| Request {
            prompt: (0..10 + i).map(|k| (k * 37 + i * 11 + 5) % 512).collect(),
            sampling: SamplingParams::default(),
            stop: StopConditions { max_tokens: 14, stop_ids: Vec::new(), ignore_eos: true },
        })
        .collect()
}

/// Runs `requests` together; returns each one's tokens and the preemptions per iteration.
fn run(model: &Arc<Model>, requests: &[Request], config: EngineConfig) -> (Vec<Vec<u32>>, Vec<usize>) {
    let mut engine = Engine::new(model.clone(), config).unwrap();
    let streams: Vec<_> = requests.iter().map(|r| engine.submit(r.clone())).collect();
    let mut preemptions = Vec::new();
    while engine.has_work() {
        preemptions
            .push(engine.step().unwrap().stats.expect("without the overlap scheduler a call finishes its step").num_preempted_requests);
    }
    (streams.into_iter().map(|s| s.collect().0).collect(), preemptions)
}

fn small_cache(policy: SchedulerPolicy) -> EngineConfig {
    // 64 slots in blocks of 4: two requests of up to 31 tokens fit at their full length, eight do not.
    EngineConfig {
        max_batch_size: 8,
        max_num_tokens: 32,
        block_size: 4,
        kv_budget: KvBudget::Tokens(64),
        scheduler_policy: policy,
        ..EngineConfig::default()
    }
}

#[test]
fn guaranteed_no_evict_never_preempts_and_max_utilization_recomputes_exactly() {
    let model = Arc::new(load_model("tiny-untied@3").unwrap());
    let requests = requests();
    let alone: Vec<Vec<u32>> = requests.iter().map(|r| run(&model, std::slice::from_ref(r), EngineConfig::default()).0.remove(0)).collect();
    for (r, out) in requests.iter().zip(&alone) {
        assert_eq!(out.len(), 14);
        assert!(out.iter().any(|t| t != r.prompt.last().unwrap()), "a request repeats its last prompt token: {out:?}");
    }

    let (no_evict, preemptions) = run(&model, &requests, small_cache(SchedulerPolicy::GuaranteedNoEvict));
    assert!(preemptions.iter().all(|&p| p == 0), "guaranteed-no-evict preempted: {preemptions:?}");
    assert_eq!(no_evict, alone, "guaranteed-no-evict changed a request's tokens");

    let (max_util, preemptions) = run(&model, &requests, small_cache(SchedulerPolicy::MaxUtilization));
    assert!(preemptions.iter().sum::<usize>() > 0, "max-utilization never preempted, so recompute went untested");
    assert_eq!(max_util, alone, "a recomputed request produced different tokens");
}
