//! Mixture-of-experts layers on CUDA against the CPU, on the GPU machine (skipped, with a message,
//! without a GPU), on the real widths of OLMoE (Default routing, 64 experts, top 8), Qwen3-MoE
//! (RenormalizeNaive, 128 experts, top 8), Qwen1.5-MoE (Default, 60 experts, top 4, a gated
//! shared expert) and GPT-OSS-20B (Renormalize, 32 experts, top 4, a router bias and biased
//! clamped SwiGLU experts; attention sinks, q/k/v and output biases, YaRN, head_dim 64) cut to
//! two layers, and OLMoE with the planted Zipf skew. GPT-OSS's two layers are one sliding over 128
//! positions and one attending to all, and its prompts are 300 tokens long so that the window
//! cuts; it runs twice on CUDA: as served (the tensor-core prefill kernel, one KV split) and
//! batch-invariant (the CUDA-core kernel over 64-token KV splits merged by `attention_combine`),
//! so the sinks go through both kernels and the split merge.
//! - the engine's first token of each prompt has the CPU's log-probability within the bf16 bound;
//! - every MoE layer of the prefill step assigns each token to top-k experts (the loads sum to
//!   tokens × k) and differs from the CPU's choice in at most 2% of the assignments (near ties
//!   in bf16);
//! - with `LUMEN_PERFECT_ROUTER=1` the skewed model's experts each get exactly their share, and
//!   so do tiny DeepSeek-V3's under its group limit.
//!
//! DeepSeek's models run the same checks: multi-head latent attention (absorbed on CUDA in every
//! step, against the CPU's expanded prefill and absorbed decode), DeepSeekV3 routing (groups kept
//! by their two best corrected scores, the correction bias, the routed scaling) or V2's softmax,
//! ungated shared experts and dense first layers. The tiny presets (4 groups keeping 2), Moonlight
//! and DeepSeek-V2-Lite at their real widths cut to two layers (one dense, one MoE), and
//! DeepSeek-V3's attention at its real width (128 heads, a q LoRA of 1536, a 512-wide latent) in
//! one dense layer. Tiny DeepSeek-V3 also prefills 300-token prompts batch-invariant, through the
//! CUDA-core tiles and 64-token KV splits merged by `attention_combine`.
//!
//! Decode steps run on the device alone and replay as CUDA graphs: one sequence's slots through
//! `moe_gemv`, twelve sequences' (padded to the graph of sixteen) through the grouped expert GEMM.
//! For Qwen3-MoE, Qwen1.5-MoE and GPT-OSS widths, one sequence and then twelve, 12 greedy tokens
//! after each prompt (the first sequence's compared):
//! - each decode step's expert load, counted on the device, sums to top-k × sequences in every
//!   MoE layer;
//! - while the CUDA chain follows the CPU's, every token's log-probability is within the bf16
//!   bound of the CPU's, and the chains part only where the CPU's two likeliest tokens lie within
//!   twice that bound of each other (a near tie), after at least 4 equal tokens.

use lumen_engine::{Engine, EngineConfig, KvBudget, Request, SamplingParams, StopConditions};
use lumen_model::{load_model_with, Device, LoadOptions, Model, Quantization};
use lumen_test_support::gpu::device_or_skip;
use std::sync::Arc;

/// How far bf16 weights and activations may move a log-probability on these shapes.
const BF16_BOUND: f32 = 0.05;
/// Tokens of each prompt; GPT-OSS's are longer than its sliding window, and so are tiny
/// DeepSeek-V3's second ones (several KV splits).
const PROMPT: usize = 32;
const LONG_PROMPT: usize = 300;
/// Prompts of the prefill step.
const PROMPTS: usize = 2;
/// Sequences of the batched decode run: more slots (× top-k) than `moe_gemv` takes, so the grouped
/// expert GEMM runs, and between two CUDA-graph sizes, so each step replays the graph of 16 with
/// four padding rows (which must not join the expert load).
const DECODE_BATCH: usize = 12;

fn load(spec: &str, device: Device) -> Arc<Model> {
    Arc::new(load_model_with(spec, LoadOptions { device, quantization: Quantization::None }).unwrap_or_else(|e| panic!("{spec}: {e:#}")))
}

/// The prefill step's expert loads per MoE layer, and each prompt's first-token log-probability,
/// for prompts of `len` tokens; `batch_invariant` as the engine's option.
fn prefill(model: Arc<Model>, len: usize, batch_invariant: bool) -> (Vec<Vec<u32>>, Vec<f32>) {
    let vocab = model.config().vocab_size as u32;
    let config = EngineConfig { kv_budget: KvBudget::Tokens(4096), batch_invariant, ..EngineConfig::default() };
    let mut engine = Engine::new(model, config).unwrap();
    let sampling = SamplingParams { logprobs: Some(1), ..SamplingParams::default() };
    let streams: Vec<_> = [5u32, 11][..PROMPTS]
        .iter()
        .map(|salt| {
            let prompt = (0..len as u32).map(|i| (i * 977 + salt * 131) % vocab).collect();
            let stop = StopConditions { max_tokens: 1, stop_ids: vec![], ignore_eos: true };
            engine.submit(Request { prompt, sampling: sampling.clone(), stop })
        })
        .collect();
    let loads = engine.step().unwrap().stats.expect("without the overlap scheduler a call finishes its step").expert_load;
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

/// A token with its log-probability and the likeliest tokens' (id, log-probability).
type DecodedToken = (u32, f32, Vec<(u32, f32)>);
/// One step's expert load: per MoE layer, the slots each expert received.
type StepLoad = Vec<Vec<u32>>;

/// Greedy decode of `sequences` prompts of `len` tokens for `steps` tokens each: the first
/// sequence's tokens, each with its log-probability and the two likeliest, and the expert load of
/// every decode step.
fn decode(model: Arc<Model>, len: usize, steps: usize, sequences: usize) -> (Vec<DecodedToken>, Vec<StepLoad>) {
    let vocab = model.config().vocab_size as u32;
    let config = EngineConfig { kv_budget: KvBudget::Tokens(4096 * sequences), ..EngineConfig::default() };
    let mut engine = Engine::new(model, config).unwrap();
    let stop = StopConditions { max_tokens: steps, stop_ids: vec![], ignore_eos: true };
    let streams: Vec<_> = (0..sequences as u32)
        .map(|salt| {
            let prompt = (0..len as u32).map(|i| (i * 577 + 19 + salt * 7919) % vocab).collect();
            let sampling = SamplingParams { logprobs: Some(2), ..SamplingParams::default() };
            engine.submit(Request { prompt, sampling, stop: stop.clone() })
        })
        .collect();
    let stream = &streams[0];
    let mut loads = Vec::new();
    let mut first = true;
    while engine.has_work() {
        let stats = engine.step().unwrap().stats.expect("without the overlap scheduler a call finishes its step");
        if !std::mem::take(&mut first) {
            loads.push(stats.expert_load);
        }
    }
    let tokens = stream
        .events
        .try_iter()
        .filter_map(|e| match e {
            lumen_engine::RequestEvent::Token { id, logprobs } => {
                let lp = logprobs.expect("asked for");
                Some((id, lp.logprob, lp.top))
            }
            _ => None,
        })
        .collect();
    (tokens, loads)
}

/// The decode checks of the module doc.
fn decode_steps_follow_the_cpu() {
    const STEPS: usize = 12;
    let specs = [
        "qwen3-30b-a3b+layers=2",
        "qwen1.5-moe-a2.7b+layers=2",
        "gpt-oss-20b+layers=2",
        "tiny-deepseek-v3",
        "moonlight-16b-a3b+layers=2",
        "deepseek-v3+layers=1",
    ];
    for (spec, sequences) in specs.into_iter().flat_map(|spec| [(spec, 1), (spec, DECODE_BATCH)]) {
        let (cpu, _) = decode(load(spec, Device::Cpu), PROMPT, STEPS, sequences);
        let cuda_model = load(spec, Device::Cuda);
        let top_k = cuda_model.config().moe.as_ref().expect("a MoE preset").top_k as u32;
        let moe_layers = cuda_model.config().num_moe_layers();
        let (cuda, loads) = decode(cuda_model, PROMPT, STEPS, sequences);
        assert_eq!((cpu.len(), cuda.len()), (STEPS, STEPS), "{spec} ×{sequences}: every token delivered");
        assert_eq!(loads.len(), STEPS - 1, "{spec} ×{sequences}: one load per decode step");
        let slots = top_k * sequences as u32;
        for (step, layers) in loads.iter().enumerate() {
            assert_eq!(layers.len(), moe_layers, "{spec} ×{sequences} step {step}: one expert load per MoE layer");
            for (layer, load) in layers.iter().enumerate() {
                assert_eq!(
                    load.iter().sum::<u32>(),
                    slots,
                    "{spec} ×{sequences} step {step} layer {layer}: top-{top_k} of each token: {load:?}"
                );
            }
        }
        for (i, (c, g)) in cpu.iter().zip(&cuda).enumerate() {
            if c.0 != g.0 {
                let gap = c.2[0].1 - c.2[1].1;
                assert!(
                    i >= 4 && gap < 2.0 * BF16_BOUND,
                    "{spec} ×{sequences}: token {i} is {} on CUDA, {} on the CPU, whose top two lie {gap} apart",
                    g.0,
                    c.0
                );
                break;
            }
            assert!((c.1 - g.1).abs() < BF16_BOUND, "{spec} ×{sequences} token {i}: log-probability CPU {}, CUDA {}", c.1, g.1);
        }
    }
}

#[test]
fn moe_layers_on_cuda_follow_the_cpu_and_the_perfect_router_balances_them() {
    if device_or_skip(lumen_backend::cuda::Gpu::open(0)).is_none() {
        return;
    }
    let gpt_oss = "gpt-oss-20b+layers=2";
    // (preset, prompt tokens, also batch-invariant)
    let runs = [
        ("olmoe-1b-7b+layers=2", PROMPT, false),
        ("qwen3-30b-a3b+layers=2", PROMPT, false),
        ("qwen1.5-moe-a2.7b+layers=2", PROMPT, false),
        ("olmoe-1b-7b+layers=2+zipf=1.5", PROMPT, false),
        (gpt_oss, LONG_PROMPT, true),
        ("tiny-deepseek-v3", PROMPT, false),
        ("tiny-deepseek-v3", LONG_PROMPT, true),
        ("tiny-deepseek-v2-lite", PROMPT, false),
        ("moonlight-16b-a3b+layers=2", PROMPT, false),
        ("deepseek-v2-lite+layers=2", PROMPT, false),
        ("deepseek-v3+layers=1", PROMPT, false),
    ];
    for (spec, len, invariant_too) in runs {
        let (cpu_loads, cpu_first) = prefill(load(spec, Device::Cpu), len, false);
        let cuda = load(spec, Device::Cuda);
        let c = cuda.config().clone();
        if spec == gpt_oss {
            let windows: Vec<Option<usize>> = (0..c.num_layers).map(|l| c.layer_window(l)).collect();
            assert_eq!(windows, vec![Some(128), None], "{spec}: one sliding layer and one full one");
            assert!(windows[0].is_some_and(|w| w < len), "{spec}: the prompts outgrow the window");
            assert!(c.attention_sinks && c.attention_output_bias && c.moe.as_ref().is_some_and(|m| m.biases), "{spec}: GPT-OSS's blocks");
        }
        let top_k = c.moe.as_ref().expect("a MoE preset").top_k as u32;
        let modes: &[bool] = if invariant_too { &[false, true] } else { &[false] };
        for &batch_invariant in modes {
            let what = format!("{spec}{}", if batch_invariant { " (batch-invariant)" } else { "" });
            let (cuda_loads, cuda_first) = prefill(cuda.clone(), len, batch_invariant);
            for (c, g) in cpu_first.iter().zip(&cuda_first) {
                assert!((c - g).abs() < BF16_BOUND, "{what}: first-token log-probability CPU {c}, CUDA {g}");
            }
            let assignments = (PROMPTS * len) as u32 * top_k;
            assert_eq!(cuda_loads.len(), cpu_loads.len(), "{what}: one load per MoE layer");
            for (layer, (c, g)) in cpu_loads.iter().zip(&cuda_loads).enumerate() {
                assert_eq!(g.iter().sum::<u32>(), assignments, "{what} layer {layer}: every token's top-{top_k}");
                let moved: u32 = c.iter().zip(g).map(|(a, b)| a.abs_diff(*b)).sum::<u32>() / 2;
                assert!(moved * 50 <= assignments, "{what} layer {layer}: {moved} assignments differ from the CPU's");
            }
        }
    }
    decode_steps_follow_the_cpu();
    // The perfect router is read from the environment at load; this test is its binary's only one.
    std::env::set_var("LUMEN_PERFECT_ROUTER", "1");
    let perfect = load("olmoe-1b-7b+layers=2+zipf=1.5", Device::Cuda);
    std::env::remove_var("LUMEN_PERFECT_ROUTER");
    assert!(perfect.perfect_router());
    let experts = perfect.config().moe.as_ref().unwrap().num_experts as u32;
    let share = (PROMPTS * PROMPT) as u32 * 8 / experts;
    for (layer, load) in prefill(perfect, PROMPT, false).0.iter().enumerate() {
        assert!(load.iter().all(|&l| l == share), "layer {layer}: every expert gets {share}: {load:?}");
    }
    // DeepSeek-V3's routing under the perfect router: the balanced logits decide within the group
    // limit, the correction bias left out.
    std::env::set_var("LUMEN_PERFECT_ROUTER", "1");
    let perfect = load("tiny-deepseek-v3", Device::Cuda);
    std::env::remove_var("LUMEN_PERFECT_ROUTER");
    let m = perfect.config().moe.clone().unwrap();
    let share = (PROMPTS * PROMPT * m.top_k / m.num_experts) as u32;
    for (layer, load) in prefill(perfect, PROMPT, false).0.iter().enumerate() {
        assert!(load.iter().all(|&l| l == share), "tiny-deepseek-v3 layer {layer}: every expert gets {share}: {load:?}");
    }
}
