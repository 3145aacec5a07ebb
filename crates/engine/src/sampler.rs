//! Token sampling from one row of logits: greedy, or temperature with top-k and top-p, drawn from
//! a per-request stream seeded by the request's seed and the token's index, so a request samples
//! the same tokens whatever batch it runs in.

use crate::request::{SamplingParams, TokenLogprobs};
use lumen_backend::rng::splitmix64;

/// Index of the largest logit; the lowest index wins ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Samples token number `index` of a request (0 for its first output token).
pub fn sample(logits: &[f32], params: &SamplingParams, index: usize) -> u32 {
    if params.temperature <= 0.0 || params.top_k == 1 {
        return argmax(logits);
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let k = if params.top_k == 0 { logits.len() } else { params.top_k.min(logits.len()) };
    if k < logits.len() {
        order.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        order.truncate(k);
    }
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    let max = logits[order[0] as usize];
    let mut probs: Vec<f64> = order.iter().map(|&i| (((logits[i as usize] - max) / params.temperature) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if params.top_p < 1.0 {
        let mut cumulative = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                cumulative += p;
                cumulative >= params.top_p as f64
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let u = (splitmix64(splitmix64(params.seed) ^ index as u64) >> 11) as f64 / (1u64 << 53) as f64 * total;
    let mut acc = 0.0;
    for (p, &id) in probs.iter().zip(&order) {
        acc += p;
        if u < acc {
            return id;
        }
    }
    *order.last().expect("at least one candidate")
}

/// The log-probabilities of `token` and of the `top` likeliest tokens under `logits` (the
/// log-softmax, in f64; ties go to the lower id).
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> TokenLogprobs {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let log_total = max + logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    let logprob = |id: u32| (logits[id as usize] as f64 - log_total) as f32;
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let top = top.min(logits.len());
    if top > 0 && top < order.len() {
        order.select_nth_unstable_by(top - 1, by_logit);
    }
    order.truncate(top);
    order.sort_by(by_logit);
    TokenLogprobs { logprob: logprob(token), top: order.into_iter().map(|id| (id, logprob(id))).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_the_log_softmax_with_the_likeliest_first() {
        let logits = [1.0f32, 3.0, 3.0, -2.0, 0.5];
        let total: f64 = logits.iter().map(|&v| (v as f64).exp()).sum();
        let expected = |i: usize| ((logits[i] as f64).exp() / total).ln() as f32;
        let got = logprobs(&logits, 4, 3);
        assert!((got.logprob - expected(4)).abs() < 1e-6, "{got:?}");
        assert_eq!(got.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 0]);
        for &(id, lp) in &got.top {
            assert!((lp - expected(id as usize)).abs() < 1e-6, "{got:?}");
        }
        assert!(logprobs(&logits, 0, 0).top.is_empty());
        assert_eq!(logprobs(&logits, 0, 9).top.len(), 5, "at most the vocabulary");
        let wide: Vec<f32> = (0..4000).map(|i| (i % 97) as f32 * 0.5 - 900.0).collect();
        let lp = logprobs(&wide, 96, 1);
        assert!(lp.logprob.is_finite() && lp.logprob < 0.0 && lp.top[0].0 == 96, "large negative logits stay finite: {lp:?}");
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(sample(&[1.0, 3.0, 0.0], &SamplingParams::default(), 0), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let logits = [0.0, 5.0, 4.9, -3.0, 4.8];
        let top2 = SamplingParams { temperature: 1.0, top_k: 2, top_p: 1.0, seed: 0, logprobs: None };
        let nucleus = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.3, seed: 0, logprobs: None };
        for i in 0..200 {
            assert!([1, 2].contains(&sample(&logits, &top2, i)));
            assert_eq!(sample(&logits, &nucleus, i), 1, "the top token alone holds over 30%");
        }
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_varies_with_the_seed() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed| {
            (0..40)
                .map(|i| sample(&logits, &SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed, logprobs: None }, i))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
