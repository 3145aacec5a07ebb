//! The requests of a `bench serve` run: the lines of a `prepare-dataset` file, or `vllm bench
//! serve`'s random dataset (input and output lengths uniform within `range_ratio` of their
//! targets, prompt ids uniform over the first `vocab_size` ids).

use super::client::{BenchRequest, PromptBody};
use crate::dataset::DatasetEntry;
use crate::sampling::Rng;
use anyhow::{ensure, Result};

pub struct RandomDataset {
    pub num_prompts: usize,
    pub input_len: u32,
    pub output_len: u32,
    pub range_ratio: f64,
    pub vocab_size: u32,
    pub seed: u64,
}

/// A length uniform over `[len·(1 − ratio), len·(1 + ratio)]`, at least 1.
fn around(rng: &mut Rng, len: u32, ratio: f64) -> u32 {
    let low = ((f64::from(len) * (1.0 - ratio)) as u64).max(1);
    let high = ((f64::from(len) * (1.0 + ratio)) as u64).max(low);
    (low + rng.below(high - low + 1)) as u32
}

pub fn random_requests(d: &RandomDataset) -> Result<Vec<BenchRequest>> {
    ensure!((0.0..1.0).contains(&d.range_ratio), "--random-range-ratio {}: expected a number in [0, 1)", d.range_ratio);
    ensure!(d.input_len > 0 && d.output_len > 0, "--random-input-len and --random-output-len must be at least 1");
    ensure!(d.vocab_size > 0, "--random-vocab-size must be at least 1");
    let mut rng = Rng::new(d.seed);
    Ok((0..d.num_prompts)
        .map(|_| {
            let input_len = around(&mut rng, d.input_len, d.range_ratio);
            let output_len = around(&mut rng, d.output_len, d.range_ratio);
            let ids = (0..input_len).map(|_| rng.below(u64::from(d.vocab_size)) as u32).collect();
            BenchRequest { prompt: PromptBody::Ids(ids), input_len: input_len as usize, output_len }
        })
        .collect())
}

/// The first `num_prompts` dataset lines (all of them when 0) as requests.
pub fn dataset_requests(entries: &[DatasetEntry], num_prompts: usize) -> Vec<BenchRequest> {
    let n = if num_prompts == 0 { entries.len() } else { num_prompts.min(entries.len()) };
    entries[..n]
        .iter()
        .map(|e| BenchRequest { prompt: PromptBody::Ids(e.input_ids.clone()), input_len: e.input_ids.len(), output_len: e.output_tokens })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_lengths_stay_within_the_ratio_and_ids_within_the_vocabulary() {
        let d = RandomDataset { num_prompts: 500, input_len: 100, output_len: 20, range_ratio: 0.5, vocab_size: 37, seed: 3 };
        let requests = random_requests(&d).unwrap();
        assert_eq!(requests.len(), 500);
        let inputs: Vec<usize> = requests.iter().map(|r| r.input_len).collect();
        assert!(inputs.iter().all(|&n| (50..=150).contains(&n)));
        assert!(inputs.contains(&50) && inputs.contains(&150), "both ends are reached");
        assert!(requests.iter().all(|r| (10..=30).contains(&r.output_len)));
        for r in &requests {
            let PromptBody::Ids(ids) = &r.prompt else { panic!("ids") };
            assert!(ids.len() == r.input_len && ids.iter().all(|&id| id < 37));
        }
        let fixed = RandomDataset { range_ratio: 0.0, ..d };
        assert!(random_requests(&fixed).unwrap().iter().all(|r| r.input_len == 100 && r.output_len == 20));
        assert!(random_requests(&RandomDataset { range_ratio: 1.0, ..fixed }).unwrap_err().to_string().contains("[0, 1)"));
    }
}
