//! Tensor parallelism on CUDA through NCCL, on the GPU machine (skipped, with a message, without a
//! GPU or NCCL). Each engine runs the same greedy requests with log-probabilities, which carry
//! every step's logits' top entries:
//! - one rank through NCCL gives the single-GPU engine's tokens, its log-probabilities within
//!   1e-3, and the same KV block count;
//! - with two GPUs or more, `llama-3.2-1b-untied` split over 2 (and 4, with four) gives the
//!   one-GPU run's greedy chains, a chain allowed to part only where the one-GPU run's two best
//!   tokens were within the bf16 bound of each other, and the first token's log-probabilities
//!   within that bound.

use lumen_backend::cuda::nccl::nccl_present;
use lumen_backend::cuda::Gpu;
use lumen_engine::{Engine, EngineConfig, KvBudget, Request, RequestEvent, SamplingParams, StopConditions, TokenLogprobs};
use lumen_model::{load_model_ranks, load_model_with, Device, LoadOptions, Model, Quantization};
use lumen_test_support::gpu::{device_or_skip, skip};
use std::sync::Arc;

const STEPS: usize = 16;
/// How far bf16 rounding in a different order (the ranks' partial sums) may move a
/// log-probability on these shapes.
const BF16_BOUND: f32 = 0.05;

/// The GPU and NCCL are there, or the test says why it cannot run.
fn ready() -> bool {
    if device_or_skip(Gpu::open(0)).is_none() {
        return false;
    }
    if !nccl_present() {
        skip("NCCL could not be loaded (libnccl.so on LD_LIBRARY_PATH; scripts/gpu_tests.sh links the wheel's)");
        return false;
    }
    true
}

fn options() -> LoadOptions {
    LoadOptions { device: Device::Cuda, quantization: Quantization::None }
}

/// Each prompt's greedy tokens with their log-probabilities (top 3), and the engine's KV blocks.
fn greedy(model: Arc<Model>, ranks: usize, prompts: &[Vec<u32>]) -> (Vec<Vec<(u32, TokenLogprobs)>>, usize) {
    let config = EngineConfig { tensor_parallel_size: ranks, kv_budget: KvBudget::Tokens(8192), ..EngineConfig::default() };
    let mut engine = Engine::new(model, config).unwrap();
    let sampling = SamplingParams { logprobs: Some(3), ..SamplingParams::default() };
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| {
            let stop = StopConditions { max_tokens: STEPS, stop_ids: vec![], ignore_eos: true };
            engine.submit(Request { prompt: p.clone(), sampling: sampling.clone(), stop })
        })
        .collect();
    while engine.has_work() {
        engine.step().unwrap();
    }
    let blocks = engine.kv_blocks();
    let chains = streams
        .into_iter()
        .map(|s| {
            let mut out = Vec::new();
            while let Ok(event) = s.events.recv() {
                match event {
                    RequestEvent::Token { id, logprobs } => out.push((id, logprobs.expect("asked for"))),
                    RequestEvent::Finished { .. } => break,
                }
            }
            out
        })
        .collect();
    (chains, blocks)
}

fn prompts(vocab: u32) -> Vec<Vec<u32>> {
    vec![(0..7).map(|i| (i * 977 + 13) % vocab).collect(), (0..40).map(|i| (i * 331 + 5) % vocab).collect()]
}

#[test]
fn one_rank_through_nccl_gives_the_single_gpu_engine_s_tokens() {
    if !ready() {
        return;
    }
    let spec = "smollm2-135m-untied";
    let single = Arc::new(load_model_with(spec, options()).unwrap());
    let ranked = Arc::new(load_model_ranks(spec, options(), 1).unwrap());
    assert_eq!(ranked.tensor_parallel_size(), 1);
    let prompts = prompts(single.config().vocab_size as u32);
    let (want, want_blocks) = greedy(single, 1, &prompts);
    let (got, got_blocks) = greedy(ranked, 1, &prompts);
    assert_eq!(got_blocks, want_blocks, "one rank holds the single GPU's KV blocks");
    for (w, g) in want.iter().zip(&got) {
        let ids = |c: &[(u32, TokenLogprobs)]| c.iter().map(|t| t.0).collect::<Vec<_>>();
        assert_eq!(ids(g), ids(w), "greedy tokens");
        for ((_, a), (_, b)) in w.iter().zip(g) {
            assert!((a.logprob - b.logprob).abs() < 1e-3, "single {a:?}, one rank {b:?}");
        }
    }
}

#[test]
fn two_and_four_ranks_give_one_gpu_s_greedy_chains() {
    if !ready() {
        return;
    }
    let count = Gpu::count();
    if count < 2 {
        eprintln!("split runs need two GPUs; this machine has {count}: only the one-rank test applies");
        return;
    }
    let spec = "llama-3.2-1b-untied";
    let one = Arc::new(load_model_with(spec, options()).unwrap());
    let prompts = prompts(one.config().vocab_size as u32);
    let (want, _) = greedy(one, 1, &prompts);
    for ranks in [2, 4].into_iter().filter(|&n| n <= count) {
        let split = Arc::new(load_model_ranks(spec, options(), ranks).unwrap());
        let (got, _) = greedy(split, ranks, &prompts);
        for (p, (w, g)) in want.iter().zip(&got).enumerate() {
            let (first_w, first_g) = (&w[0].1, &g[0].1);
            assert!((first_w.logprob - first_g.logprob).abs() < BF16_BOUND, "TP{ranks} prompt {p}: {first_w:?} against {first_g:?}");
            for (step, ((wid, wlp), (gid, _))) in w.iter().zip(g).enumerate() {
                if wid != gid {
                    let margin = wlp.top[0].1 - wlp.top[1].1;
                    assert!(margin < BF16_BOUND, "TP{ranks} prompt {p} parts at step {step} with a margin of {margin}: {wlp:?}");
                    break;
                }
            }
        }
    }
}
