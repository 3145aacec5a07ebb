//! The randomness behind synthetic datasets and warm-up picks, reproducible on every platform:
//! a self-contained xoshiro256** generator seeded through splitmix64, unbiased bounded integers,
//! normals from Box–Muller with its logarithm and cosine evaluated in plain IEEE-754 arithmetic
//! (no platform libm), and the token-id sampler of `prepare-dataset`.
//!
//! Token ids are drawn as `trtllm-bench`'s `prepare_dataset.py` draws them: from the vocabulary
//! without its special tokens, without replacement while the request is shorter than that
//! population (with replacement otherwise), and with the EOS id, where the tokenizer does not
//! mark it special, replaced. trtllm-bench replaces EOS by the id after it, which can repeat an
//! id; here it becomes the next id of the population the request does not hold yet, so ids stay
//! distinct. The generator is not numpy's, so the exact ids differ from trtllm-bench's for the
//! same seed; the rules are the same.

use std::collections::HashSet;
use std::f64::consts::{LN_2, SQRT_2, TAU};

use anyhow::{bail, Result};

/// The token space of a model's dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    pub size: usize,
    pub eos_id: Option<u32>,
    /// Ids never drawn: the tokenizer's special (control) tokens.
    pub special: Vec<u32>,
}

/// Draws the token ids of one request at a time (see the module doc).
pub(crate) struct TokenSampler {
    /// The ids that may be drawn, ascending.
    population: Vec<u32>,
    /// The EOS id when it is part of the population and so must be replaced.
    eos: Option<u32>,
}

impl TokenSampler {
    pub(crate) fn new(vocab: &Vocab) -> Result<Self> {
        let size = vocab.size as u64;
        if size == 0 || size > u64::from(u32::MAX) + 1 {
            bail!("vocab size must be in 1..={}, got {}", u64::from(u32::MAX) + 1, vocab.size);
        }
        let special: HashSet<u32> = vocab.special.iter().copied().collect();
        let population: Vec<u32> = (0..size).map(|id| id as u32).filter(|id| !special.contains(id)).collect();
        let eos = vocab.eos_id.filter(|eos| population.binary_search(eos).is_ok());
        if population.len() < 1 + usize::from(eos.is_some()) {
            bail!(
                "vocab size {size} leaves no token id to draw besides {} special token(s) and the EOS id {:?}; expected ordinary tokens",
                special.len(),
                vocab.eos_id
            );
        }
        Ok(TokenSampler { population, eos })
    }

    /// `len` ids: distinct while `len` is below the population, each EOS replaced.
    pub(crate) fn sample(&self, rng: &mut Rng, len: u32) -> Vec<u32> {
        let n = self.population.len();
        let len = len as usize;
        let mut picks: Vec<usize> = if len >= n {
            (0..len).map(|_| rng.below(n as u64) as usize).collect()
        } else if len <= n / 2 {
            let mut seen = HashSet::with_capacity(len);
            let mut picks = Vec::with_capacity(len);
            while picks.len() < len {
                let i = rng.below(n as u64) as usize;
                if seen.insert(i) {
                    picks.push(i);
                }
            }
            picks
        } else {
            // A partial Fisher–Yates shuffle of the population's indices.
            let mut order: Vec<usize> = (0..n).collect();
            for k in 0..len {
                let j = k + rng.below((n - k) as u64) as usize;
                order.swap(k, j);
            }
            order.truncate(len);
            order
        };
        if let Some(eos) = self.eos {
            let eos_index = self.population.binary_search(&eos).unwrap_or_default();
            let held: HashSet<usize> = if len < n { picks.iter().copied().collect() } else { HashSet::new() };
            let replacement = (1..n).map(|step| (eos_index + step) % n).find(|i| !held.contains(i)).unwrap_or((eos_index + 1) % n);
            for pick in picks.iter_mut().filter(|p| **p == eos_index) {
                *pick = replacement;
            }
        }
        picks.into_iter().map(|i| self.population[i]).collect()
    }
}

/// `k` indices into `0..n` drawn with replacement from `seed` (empty when `n` is 0), as
/// trtllm-bench picks its warm-up requests.
pub fn pick_with_replacement(n: usize, k: usize, seed: u64) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let mut rng = Rng::new(seed);
    (0..k).map(|_| rng.below(n as u64) as usize).collect()
}

/// xoshiro256** seeded through splitmix64.
pub(crate) struct Rng {
    pub(crate) state: [u64; 4],
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        let mut counter = seed;
        let mut splitmix = || {
            counter = counter.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = counter;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng { state: [splitmix(), splitmix(), splitmix(), splitmix()] }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)` for `n >= 1`, without bias: Lemire's multiply-shift, redrawing the
    /// few words that would favour some values (the method numpy's `Generator.integers` uses).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let mut product = u128::from(self.next_u64()) * u128::from(n);
        if (product as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (product as u64) < threshold {
                product = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (product >> 64) as u64
    }

    /// Standard normal by Box–Muller (cosine branch).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * portable_ln(u1)).sqrt() * portable_cos_tau(u2)
    }
}

/// Natural logarithm of a positive normal `x` using only IEEE-754 basic
/// operations: `x = m * 2^e` with `m` in `[sqrt(1/2), sqrt(2)]`, then
/// `ln m = 2 atanh((m - 1) / (m + 1))` by its power series.
fn portable_ln(x: f64) -> f64 {
    let bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut mantissa = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if mantissa > SQRT_2 {
        mantissa *= 0.5;
        exponent += 1;
    }
    let s = (mantissa - 1.0) / (mantissa + 1.0);
    let s2 = s * s;
    // |s| <= 0.1716, so 16 odd terms reach far below one ulp.
    let series = (0..16).rev().fold(0.0, |acc, k| acc * s2 + 1.0 / f64::from(2 * k + 1));
    2.0 * s * series + exponent as f64 * LN_2
}

/// `cos(2 pi u)` for `u` in `[0, 1)` using only IEEE-754 basic operations.
/// The argument is folded exactly into `[0, 1/8]` by the symmetries of cosine,
/// then a Taylor series on `[0, pi/4]` finishes it.
fn portable_cos_tau(u: f64) -> f64 {
    let v = if u > 0.5 { 1.0 - u } else { u };
    let (w, sign) = if v > 0.25 { (0.5 - v, -1.0) } else { (v, 1.0) };
    let magnitude = if w > 0.125 { taylor_sin(TAU * (0.25 - w)) } else { taylor_cos(TAU * w) };
    sign * magnitude
}

fn taylor_cos(x: f64) -> f64 {
    let x2 = x * x;
    (1..=10).rev().fold(1.0, |acc, k| 1.0 - acc * x2 / f64::from((2 * k - 1) * (2 * k)))
}

fn taylor_sin(x: f64) -> f64 {
    let x2 = x * x;
    x * (1..=10).rev().fold(1.0, |acc, k| 1.0 - acc * x2 / f64::from((2 * k) * (2 * k + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(size: usize, eos_id: Option<u32>, special: &[u32]) -> Vocab {
        Vocab { size, eos_id, special: special.to_vec() }
    }

    #[test]
    fn generator_is_pinned() {
        // Golden values: a change here changes every dataset ever generated.
        let mut rng = Rng::new(420);
        let words: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(words, [6067513667249323982, 1007554958731235935, 10153337446353610092]);
        // Exact equality: the normal path uses no platform libm.
        let mut rng = Rng::new(420);
        let normals: Vec<f64> = (0..4).map(|_| rng.normal()).collect();
        assert_eq!(normals, [0.8410780804670909, -0.26003950597542785, 1.3078737127281108, 0.7080260221270693]);
        let mut reference = Rng { state: [1, 2, 3, 4] };
        // xoshiro256** reference output for state {1, 2, 3, 4}.
        assert_eq!(reference.next_u64(), 11520);
        assert_eq!(reference.next_u64(), 0);
        assert_eq!(reference.next_u64(), 1509978240);
        assert_eq!(reference.next_u64(), 1215971899390074240);
    }

    #[test]
    fn below_is_lemire_with_rejection() {
        // Word w maps to floor(w * n / 2^64) unless its low product falls under 2^64 mod n.
        let mut rng = Rng { state: [1, 2, 3, 4] };
        // The first word, 11520, times 3 leaves a low product of 34560 >= 2^64 mod 3 = 1: 0.
        assert_eq!(rng.below(3), 0);
        // The second word is 0: its low product 0 is under the threshold 1, so it is redrawn and
        // the third word, 1509978240, gives floor(1509978240 * 3 / 2^64) = 0 too.
        assert_eq!(rng.below(3), 0);
        let mut rng = Rng { state: [1, 2, 3, 4] };
        rng.next_u64();
        rng.next_u64();
        rng.next_u64();
        // The fourth word 1215971899390074240 * 100 / 2^64 = 6.59...: 6.
        assert_eq!(rng.below(100), 6);
        // Uniform: 60,000 draws of 6 values land within 3% of 10,000 each.
        let mut rng = Rng::new(7);
        let mut counts = [0u32; 6];
        (0..60_000).for_each(|_| counts[rng.below(6) as usize] += 1);
        assert!(counts.iter().all(|&c| (9_700..=10_300).contains(&c)), "{counts:?}");
    }

    #[test]
    fn ids_are_distinct_below_the_population_and_never_special_or_eos() {
        // SmolLM2-like: ids 0..=16 special (EOS 2 among them), a vocabulary of 200.
        let special: Vec<u32> = (0..17).collect();
        let sampler = TokenSampler::new(&vocab(200, Some(2), &special)).unwrap();
        let mut rng = Rng::new(420);
        for len in [1, 20, 91, 150, 182] {
            let ids = sampler.sample(&mut rng, len);
            assert_eq!(ids.len(), len as usize);
            let distinct: HashSet<u32> = ids.iter().copied().collect();
            assert_eq!(distinct.len(), ids.len(), "a repeated id in a request of {len} from a population of 183: {ids:?}");
            assert!(ids.iter().all(|&id| (17..200).contains(&id)), "a special id or one outside the vocabulary: {ids:?}");
        }
        // At the population's size and beyond, ids repeat (with replacement), still never special.
        let ids = sampler.sample(&mut rng, 400);
        assert!(ids.iter().all(|&id| (17..200).contains(&id)));
        assert!(ids.iter().collect::<HashSet<_>>().len() < 400);
    }

    #[test]
    fn an_eos_the_tokenizer_does_not_mark_is_replaced_by_an_id_the_request_lacks() {
        // A preset: no special tokens, EOS 2, a vocabulary of 8. Requests of 7 hold every id
        // but one; EOS must never appear and the 7 ids stay distinct.
        let sampler = TokenSampler::new(&vocab(8, Some(2), &[])).unwrap();
        let mut rng = Rng::new(1);
        let mut replaced = 0;
        for _ in 0..50 {
            let ids = sampler.sample(&mut rng, 7);
            assert!(!ids.contains(&2), "EOS in {ids:?}");
            assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 7, "{ids:?}");
            // Without the EOS rule 7 of 8 ids would hold EOS 7 times in 8.
            replaced += usize::from(ids.iter().all(|&id| id != 2));
        }
        assert_eq!(replaced, 50);
        // With replacement (a request longer than the vocabulary) EOS becomes the next id.
        let ids = sampler.sample(&mut rng, 64);
        assert!(!ids.contains(&2) && ids.contains(&3), "{ids:?}");
    }

    #[test]
    fn vocabularies_with_nothing_to_draw_are_errors() {
        let text = |v: Vocab| format!("{:#}", TokenSampler::new(&v).err().expect("an error"));
        assert!(text(vocab(0, None, &[])).contains("vocab size must be in 1..=4294967296, got 0"));
        assert!(text(vocab(1, Some(0), &[])).contains("leaves no token id to draw"));
        assert!(text(vocab(3, Some(2), &[0, 1])).contains("besides 2 special token(s) and the EOS id Some(2)"));
    }

    #[test]
    fn warm_up_picks_repeat_a_seed_and_cover_the_dataset() {
        let picks = pick_with_replacement(5, 200, 9);
        assert_eq!(picks, pick_with_replacement(5, 200, 9));
        assert!(picks.iter().all(|&i| i < 5));
        assert_eq!(picks.iter().collect::<HashSet<_>>().len(), 5, "200 picks of 5 miss one");
        assert_ne!(picks[..20], pick_with_replacement(5, 200, 10)[..20]);
        assert!(pick_with_replacement(0, 3, 1).is_empty());
    }

    #[test]
    fn portable_math_matches_libm() {
        let mut rng = Rng::new(1);
        for _ in 0..10_000 {
            let u = rng.unit();
            let x = 1.0 - u;
            assert!((portable_ln(x) - x.ln()).abs() <= 1e-14 * x.ln().abs().max(1.0), "ln({x})");
            assert!((portable_cos_tau(u) - (TAU * u).cos()).abs() <= 1e-14, "cos(2pi {u})");
        }
        for u in [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875] {
            assert!((portable_cos_tau(u) - (TAU * u).cos()).abs() <= 1e-15, "cos(2pi {u})");
        }
        assert_eq!(portable_ln(1.0), 0.0);
        assert!((portable_ln(f64::EPSILON / 2.0) - (f64::EPSILON / 2.0).ln()).abs() < 1e-13);
    }

    #[test]
    fn normals_look_standard() {
        let mut rng = Rng::new(420);
        let n = 100_000;
        let draws: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let var = draws.iter().map(|z| (z - mean) * (z - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }
}
