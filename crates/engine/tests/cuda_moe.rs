//! Mixture-of-experts layers on CUDA against the CPU, on the GPU machine (skipped, with a message,
//! without a GPU), on the real widths of OLMoE (Default routing, 64 experts, top 8), Qwen3-MoE
//! (RenormalizeNaive, 128 experts, top 8) and Qwen1.5-MoE (Default, 60 experts, top 4, a gated
//! shared expert) cut to two layers, and OLMoE with the planted Zipf skew:
//! - the engine's first token of each prompt has the CPU's log-probability within the bf16 bound;
//! - every MoE layer of the prefill step assigns each token to top-k experts (the loads sum to
//!   tokens × k) and differs from the CPU's choice in at most 2% of the assignments (near ties
//!   in bf16);
//! - with `LUMEN_PERFECT_ROUTER=1` the skewed model's experts each get exactly their share.

use lumen_engine::{Engine, EngineConfig, KvBudget, Request, SamplingParams, StopConditions};
use lumen_model::{load_model_with, Device, LoadOptions, Model, Quantization};
use lumen_test_support::gpu::device_or_skip;
use std::sync::Arc;

/// How far bf16 weights and activations may move a log-probability on these shapes.
const BF16_BOUND: f32 = 0.05;
/// Tokens of the prefill step.
const TOKENS: usize = 64;

fn load(spec: &str, device: Device) -> Arc<Model> {
    Arc::new(load_model_with(spec, LoadOptions { device, quantization: Quantization::None }).unwrap_or_else(|e| panic!("{spec}: {e:#}")))
}

/// The prefill step's expert loads per MoE layer, and each prompt's first-token log-probability.
fn prefill(model: Arc<Model>) -> (Vec<Vec<u32>>, Vec<f32>) {
    let vocab = model.config().vocab_size as u32;
    let config = EngineConfig { kv_budget: KvBudget::Tokens(4096), ..EngineConfig::default() };
    let mut engine = Engine::new(model, config).unwrap();
    let sampling = SamplingParams { logprobs: Some(1), ..SamplingParams::default() };
    let streams: Vec<_> = [5u32, 11]
        .iter()
        .map(|salt| {
            let prompt = (0..TOKENS as u32 / 2).map(|i| (i * 977 + salt * 131) % vocab).collect();
            let stop = StopConditions { max_tokens: 1, stop_ids: vec![], ignore_eos: true };
            engine.submit(Request { prompt, sampling: sampling.clone(), stop })
        })
        .collect();
    let loads = engine.step().unwrap().stats.expert_load;
    while engine.has_work() {
        engine.step().unwrap();
    }
    let first = streams
        .into_iter()
        .map(|s| match s.events.recv().unwrap() {
            lumen_engine::RequestEvent::Token { logprobs, .. } => logprobs.expect("asked for").logprob,
            other => panic!("{other:?}"),
        })
        .collect();
    (loads, first)
}

#[test]
fn moe_layers_on_cuda_follow_the_cpu_and_the_perfect_router_balances_them() {
    if device_or_skip(lumen_backend::cuda::Gpu::open(0)).is_none() {
        return;
    }
    for spec in ["olmoe-1b-7b+layers=2", "qwen3-30b-a3b+layers=2", "qwen1.5-moe-a2.7b+layers=2", "olmoe-1b-7b+layers=2+zipf=1.5"] {
        let (cpu_loads, cpu_first) = prefill(load(spec, Device::Cpu));
        let cuda = load(spec, Device::Cuda);
        let top_k = cuda.config().moe.as_ref().expect("a MoE preset").top_k as u32;
        let (cuda_loads, cuda_first) = prefill(cuda);
        for (c, g) in cpu_first.iter().zip(&cuda_first) {
            assert!((c - g).abs() < BF16_BOUND, "{spec}: first-token log-probability CPU {c}, CUDA {g}");
        }
        assert_eq!(cuda_loads.len(), cpu_loads.len(), "{spec}: one load per MoE layer");
        for (layer, (c, g)) in cpu_loads.iter().zip(&cuda_loads).enumerate() {
            assert_eq!(g.iter().sum::<u32>(), TOKENS as u32 * top_k, "{spec} layer {layer}: every token's top-{top_k}");
            let moved: u32 = c.iter().zip(g).map(|(a, b)| a.abs_diff(*b)).sum::<u32>() / 2;
            assert!(moved * 50 <= TOKENS as u32 * top_k, "{spec} layer {layer}: {moved} assignments differ from the CPU's");
        }
    }
    // The perfect router is read from the environment at load; this test is its binary's only one.
    std::env::set_var("LUMEN_PERFECT_ROUTER", "1");
    let perfect = load("olmoe-1b-7b+layers=2+zipf=1.5", Device::Cuda);
    std::env::remove_var("LUMEN_PERFECT_ROUTER");
    assert!(perfect.perfect_router());
    let experts = perfect.config().moe.as_ref().unwrap().num_experts as u32;
    let share = TOKENS as u32 * 8 / experts;
    for (layer, load) in prefill(perfect).0.iter().enumerate() {
        assert!(load.iter().all(|&l| l == share), "layer {layer}: every expert gets {share}: {load:?}");
    }
}
