//! The mixture-of-experts block's routing loads: the perfect router gives every routing method
//! an exactly balanced assignment for every batch size it caches (DeepSeekV3's within its group
//! limit), with the gate GEMM still run, and a preset's Zipf-skewed gate measurably unbalances the
//! experts while the plain one does not.

mod common;

use common::one_pass;
use lumen_model::moe::{route_limited, GroupLimit, RoutingMethod};
use lumen_model::perfect_router::{balanced_expert, balanced_logits, cached_keys, group_chunk, BalancedKey};
use lumen_model::plan::FeedForward;
use lumen_model::{load_model, Executor, Model};
use lumen_trace::instrument;

/// Batch sizes 1 to 64, then some that a prefill step reaches.
fn batch_sizes() -> Vec<usize> {
    (1..=64).chain([100, 128, 257, 512, 1000]).collect()
}

#[test]
fn every_routing_method_turns_the_balanced_logits_into_the_balanced_assignment() {
    let none = GroupLimit::NONE;
    let grouped = |n_group, topk_group| GroupLimit { n_group, topk_group };
    let shapes = [
        (8, 2, none),
        (16, 4, grouped(4, 2)),
        (32, 4, none),
        (64, 8, grouped(8, 1)),
        (128, 8, none),
        (6, 4, grouped(3, 2)),
        (4, 4, none),
        (256, 8, grouped(8, 4)),
        (64, 6, grouped(8, 3)),
    ];
    for (experts, k, groups) in shapes {
        for method in RoutingMethod::ALL {
            for tokens in batch_sizes() {
                let key = BalancedKey { tokens, num_experts: experts, top_k: k, method, ep_ranks: 1, groups };
                let routing = route_limited(&balanced_logits(key).unwrap(), experts, k, method, groups, None);
                let what = format!("{} with {tokens} tokens, {experts} experts, top {k}, {groups:?}", method.name());
                for chosen in routing.experts.chunks(k) {
                    let mut distinct = chosen.to_vec();
                    distinct.sort();
                    distinct.dedup();
                    assert_eq!(distinct.len(), k, "{what}: a token's experts repeat: {chosen:?}");
                    if method == RoutingMethod::DeepSeekV3 {
                        let mut used: Vec<usize> = chosen.iter().map(|&e| e as usize / groups.group_size(experts)).collect();
                        used.sort();
                        used.dedup();
                        assert!(used.len() <= groups.topk_group, "{what}: a token's experts span groups {used:?}");
                    }
                }
                let load = routing.load(experts);
                assert_eq!(load.iter().sum::<u32>() as usize, tokens * k, "{what}");
                let (min, max) = (*load.iter().min().unwrap(), *load.iter().max().unwrap());
                if (tokens * k) % experts == 0 {
                    assert!(load.iter().all(|&l| l as usize == tokens * k / experts), "{what}: {load:?}");
                } else {
                    assert!(max - min <= 1, "{what}: {load:?}");
                }
                assert!(cached_keys().contains(&key), "{what}: not cached");
            }
        }
    }
}

/// DeepSeek-V3's shape on 8 expert-parallel ranks, one group a rank: each token's 8 experts come
/// in 4 chunks of 2, each within one group, on 4 different ranks; every expert gets the same load.
#[test]
fn with_expert_parallelism_the_group_limit_holds_and_the_load_stays_exact() {
    let groups = GroupLimit { n_group: 8, topk_group: 4 };
    let key = BalancedKey { tokens: 64, num_experts: 256, top_k: 8, method: RoutingMethod::DeepSeekV3, ep_ranks: 8, groups };
    assert_eq!(group_chunk(&key).unwrap(), 2);
    let routing = route_limited(&balanced_logits(key).unwrap(), 256, 8, RoutingMethod::DeepSeekV3, groups, None);
    for chosen in routing.experts.chunks(8) {
        let mut used: Vec<u32> = chosen.iter().map(|e| e / 32).collect();
        used.sort();
        used.dedup();
        assert_eq!(used.len(), 4, "{chosen:?}");
    }
    assert!(routing.load(256).iter().all(|&l| l == 2), "64 tokens × 8 over 256 experts");
}

#[test]
fn with_expert_parallelism_each_token_spreads_over_the_ranks() {
    for (experts, k, ranks) in [(8, 2, 4), (32, 4, 4), (128, 8, 8), (64, 8, 2)] {
        let per_rank = experts / ranks;
        for token in 0..64 {
            let mut token_ranks: Vec<usize> = (0..k).map(|j| balanced_expert(token * k + j, experts, ranks, 1) / per_rank).collect();
            token_ranks.sort();
            token_ranks.dedup();
            assert_eq!(token_ranks.len(), k.min(ranks), "{experts} experts on {ranks} ranks, top {k}, token {token}");
        }
        // A rank's own batch of 3 tokens reaches every rank's experts once 3·k ≥ ranks.
        let reached: std::collections::BTreeSet<usize> = (0..3 * k).map(|a| balanced_expert(a, experts, ranks, 1) / per_rank).collect();
        assert_eq!(reached.len(), ranks.min(3 * k));
    }
}

/// Runs `tokens` in one forward pass; returns each MoE layer's expert load.
fn expert_load(model: &Model, tokens: &[u32]) -> Vec<Vec<u32>> {
    one_pass(model, tokens, &[tokens.len() - 1]).expert_load
}

fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 97 + 11) % 512).collect()
}

#[test]
fn the_perfect_router_balances_a_real_forward_pass_and_still_runs_the_gate() {
    let mut model = load_model("tiny-olmoe").unwrap();
    let Executor::Cpu(decoder) = &mut model.executor else { unreachable!("loaded on the CPU") };
    decoder.perfect_router = true;
    assert!(model.perfect_router());
    instrument::configure(true, false, false, false);
    instrument::start_recording();
    let loads = expert_load(&model, &prompt(45));
    instrument::stop_recording();
    let recorded = instrument::drain();
    // The recorder is the process's: count this test thread's spans only (the harness names the
    // thread after the test), not those of tests running beside it.
    let this = std::thread::current().name().expect("the test harness names its threads").to_string();
    let tids: Vec<u64> = recorded.threads.iter().filter(|(_, name)| *name == this).map(|(tid, _)| *tid).collect();
    let gates = recorded.spans.iter().filter(|s| s.name == "moe gate" && tids.contains(&s.tid)).count();
    assert_eq!(gates, 2, "one gate GEMM per MoE layer");
    // 45 tokens × 4 experts over 16 experts: 180 / 16 = 11.25, so every expert gets 11 or 12.
    for load in &loads {
        assert!(load.iter().all(|&l| l == 11 || l == 12), "{load:?}");
        assert_eq!(load.iter().sum::<u32>(), 180);
    }
}

#[test]
fn under_the_perfect_router_deepseek_s_correction_bias_does_not_choose() {
    let mut model = load_model("tiny-deepseek-v3").unwrap();
    let Executor::Cpu(decoder) = &mut model.executor else { unreachable!("loaded on the CPU") };
    decoder.perfect_router = true;
    // A bias large enough to outweigh the balanced logits: left in, every token would take expert 0.
    let mut biased = 0;
    for layer in &mut decoder.weights.layers {
        if let FeedForward::Moe(moe) = &mut layer.feed_forward {
            let bias = moe.score_correction_bias.as_mut().expect("DeepSeek-V3 layers have a correction bias");
            bias.iter_mut().enumerate().for_each(|(e, b)| *b = if e == 0 { 5.0 } else { 0.0 });
            biased += 1;
        }
    }
    assert!(biased > 0, "tiny-deepseek-v3 has MoE layers");
    let c = model.config().moe.clone().expect("a mixture of experts");
    let tokens = 8 * c.num_experts / c.top_k;
    for load in expert_load(&model, &prompt(tokens)) {
        assert!(load.iter().all(|&l| l == 8), "every expert gets 8 of {tokens} tokens × top-{}: {load:?}", c.top_k);
    }
}

/// The busiest expert's load over the mean, the worst layer's.
fn max_over_mean(loads: &[Vec<u32>]) -> f64 {
    loads.iter().map(|l| *l.iter().max().unwrap() as f64 * l.len() as f64 / l.iter().sum::<u32>() as f64).fold(0.0, f64::max)
}

/// With 256 tokens over 16 experts, top 4 (64 assignments per expert on average), the plain
/// random gate keeps every layer's busiest expert under 1.6× the mean (1.44 when written); the
/// Zipf gate of exponent 1.5 pushes it past 3× (4.0 when written: its first expert is in every
/// token's top 4, the most a top-4 of 16 allows).
#[test]
fn the_zipf_gate_skews_the_expert_load_and_the_plain_gate_does_not() {
    let tokens = prompt(256);
    let plain = max_over_mean(&expert_load(&load_model("tiny-olmoe").unwrap(), &tokens));
    let skewed = max_over_mean(&expert_load(&load_model("tiny-olmoe+zipf=1.5").unwrap(), &tokens));
    eprintln!("busiest expert over the mean: plain {plain:.2}, zipf 1.5 {skewed:.2}");
    assert!(plain < 1.6, "plain gate: {plain:.2}");
    assert!(skewed > 3.0, "Zipf gate: {skewed:.2}");
}

#[test]
fn a_dense_model_reports_no_expert_load() {
    assert!(expert_load(&load_model("tiny").unwrap(), &prompt(9)).is_empty());
}
