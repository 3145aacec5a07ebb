//! The GPU sampler's semantics, on the GPU machine (skipped without a GPU): greedy takes the
//! first maximum; top-k and top-p never draw outside their sets; draws follow the softmax within
//! a statistical bound; a (seed, index) pair always gives the same token.

use lumen_backend::cuda::{Gpu, Kernels};
use std::sync::Arc;

struct Sampler {
    gpu: Arc<Gpu>,
    kernels: Kernels,
}

#[derive(Clone, Copy)]
struct Params {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    seed: u64,
    index: u32,
}

impl Sampler {
    fn new() -> Option<Self> {
        let gpu = lumen_test_support::gpu::device_or_skip(Gpu::open(0))?;
        Some(Sampler { kernels: Kernels::load(&gpu).unwrap(), gpu })
    }

    /// Samples one token per params entry from the same logits row.
    fn sample(&self, logits: &[f32], params: &[Params]) -> Vec<u32> {
        let rows: Vec<f32> = params.iter().flat_map(|_| logits.iter().copied()).collect();
        let words: Vec<u32> = params
            .iter()
            .flat_map(|p| [p.temperature.to_bits(), p.top_k, p.top_p.to_bits(), p.seed as u32, (p.seed >> 32) as u32, p.index])
            .collect();
        let x = self.gpu.upload(&rows, "logits").unwrap();
        let w = self.gpu.upload(&words, "params").unwrap();
        let out = self.gpu.upload(&vec![u32::MAX; params.len()], "tokens").unwrap();
        self.kernels.sample_tokens(&self.gpu, x.ptr, w.ptr, params.len(), logits.len(), out.ptr).unwrap();
        let mut tokens = vec![0u32; params.len()];
        self.gpu.download(&mut tokens, out.ptr).unwrap();
        assert!(tokens.iter().all(|&t| (t as usize) < logits.len()), "every row was written with a valid id: {tokens:?}");
        tokens
    }
}

fn draws(n: u32, temperature: f32, top_k: u32, top_p: f32, seed: u64) -> Vec<Params> {
    (0..n).map(|index| Params { temperature, top_k, top_p, seed, index }).collect()
}

#[test]
fn greedy_takes_the_first_maximum() {
    let Some(s) = Sampler::new() else { return };
    let mut logits: Vec<f32> = (0..50_000).map(|i| ((i * 37) % 1000) as f32 / 1000.0).collect();
    logits[31_000] = 7.0;
    logits[9_000] = 7.0;
    let greedy = s.sample(&logits, &draws(4, 0.0, 0, 1.0, 1));
    assert_eq!(greedy, vec![9_000; 4]);
    assert_eq!(s.sample(&logits, &draws(2, 1.0, 1, 1.0, 1)), vec![9_000; 2], "top_k 1 is greedy");
}

#[test]
fn top_k_and_top_p_stay_in_their_sets_and_follow_the_softmax() {
    let Some(s) = Sampler::new() else { return };
    let vocab = 32_000;
    let mut logits = vec![0.0f32; vocab];
    let top = [(100usize, 3.0f32), (2_000, 2.5), (30_000, 2.0), (5, 1.5)];
    for (i, v) in top {
        logits[i] = v;
    }
    let n = 4000;
    let k3 = s.sample(&logits, &draws(n, 1.0, 3, 1.0, 42));
    let mut counts = [0u32; 3];
    for t in &k3 {
        let at = top[..3].iter().position(|(i, _)| *i == *t as usize).unwrap_or_else(|| panic!("token {t} is outside the top 3"));
        counts[at] += 1;
    }
    let z: f64 = top[..3].iter().map(|(_, v)| (*v as f64).exp()).sum();
    for (j, (_, v)) in top[..3].iter().enumerate() {
        let p = (*v as f64).exp() / z;
        let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
        assert!((counts[j] as f64 - mean).abs() < 5.0 * sd, "top-3 token {j}: {} draws, expected {mean:.0} ± {sd:.0}", counts[j]);
    }
    // With a peaked row the top token alone holds over 90% of the mass.
    let mut peaked = vec![0.0f32; vocab];
    peaked[777] = 14.0;
    assert!(s.sample(&peaked, &draws(500, 1.0, 0, 0.9, 7)).iter().all(|&t| t == 777), "top_p 0.9 keeps only the peak");
    // Plain temperature sampling reaches the tail of a flat row.
    let flat = s.sample(&vec![0.0f32; vocab], &draws(500, 1.0, 0, 1.0, 9));
    let distinct: std::collections::HashSet<u32> = flat.iter().copied().collect();
    assert!(distinct.len() > 450, "a flat row gives spread-out draws: {} distinct of 500", distinct.len());
}

#[test]
fn the_seed_and_index_decide_the_draw() {
    let Some(s) = Sampler::new() else { return };
    let logits: Vec<f32> = (0..10_000).map(|i| ((i * 7919) % 613) as f32 / 200.0).collect();
    let a = s.sample(&logits, &draws(64, 0.8, 50, 0.95, 3));
    let b = s.sample(&logits, &draws(64, 0.8, 50, 0.95, 3));
    let c = s.sample(&logits, &draws(64, 0.8, 50, 0.95, 4));
    assert_eq!(a, b, "same seed, same tokens");
    assert_ne!(a, c, "another seed, other tokens");
}
