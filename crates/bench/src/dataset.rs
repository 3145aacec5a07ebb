//! Dataset preparation and reading with the semantics of `trtllm-bench`.
//!
//! A dataset is a JSON-lines file with one request per line:
//! `{"task_id":0,"input_ids":[...],"output_tokens":128}` (task ids count from 0). As in
//! trtllm-bench, a line may give its prompt as `logits` instead of `input_ids`, or as text under
//! `prompt`, tokenized when the dataset is read. This module owns that format ([`DatasetEntry`],
//! [`write_dataset`], [`read_dataset`]) and the three generators:
//!
//! * [`token_norm_dist`]: lengths from normal distributions. As in trtllm-bench (which reseeds
//!   numpy before each list), request `i` draws one standard-normal `z` that serves both
//!   lengths: `max(1, ceil(mean + z * stdev))` ([`normal_len`]).
//! * [`token_unif_dist`]: lengths uniform over inclusive ranges. As in trtllm-bench, the input
//!   and the output lengths are two lists, each drawn by a generator seeded with the same seed,
//!   each value an unbiased integer in `[min, max]` ([`uniform_lens`]).
//! * [`real_dataset`]: prompts from a local JSONL or plain-text file, tokenized
//!   by the caller, with output lengths drawn as in `token_norm_dist`.
//!
//! Synthetic token ids come from [`crate::sampling`]: no repeats within a request shorter than
//! the vocabulary, no special token, no EOS. A seed yields byte-identical datasets on every
//! platform; the generator is not numpy's, so the exact ids and lengths differ from those
//! trtllm-bench would produce for the same seed, while the distributions and rules are the same.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::sampling::{Rng, TokenSampler, Vocab};

/// `trtllm-bench prepare-dataset --random-seed` default.
pub const DEFAULT_RANDOM_SEED: u64 = 420;

/// Longest sequence (input or output, in tokens) a generator will produce;
/// larger requested lengths are rejected instead of exhausting memory.
pub const MAX_SEQUENCE_LEN: u64 = 1 << 24;

/// Keys searched, in this order, for the prompt text of a JSONL line.
pub const PROMPT_KEYS: [&str; 4] = ["prompt", "text", "input", "question"];

const ENTRY_SHAPE: &str =
    r#"{"task_id":<u64>,"input_ids":[<u32>,...],"output_tokens":<u32 >= 1>} (or "logits" for "input_ids", or a "prompt" string)"#;

/// Salt separating the token-id stream from the length stream of one seed, so
/// lengths do not depend on the vocabulary.
const TOKEN_STREAM_SALT: u64 = 0x746f_6b65_6e5f_6964;

/// One request of a benchmark dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetEntry {
    pub task_id: u64,
    pub input_ids: Vec<u32>,
    pub output_tokens: u32,
}

/// Parameters of `prepare-dataset token-norm-dist`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormDistParams {
    pub num_requests: usize,
    pub input_mean: f64,
    pub input_stdev: f64,
    pub output_mean: f64,
    pub output_stdev: f64,
    pub random_seed: u64,
}

/// Parameters of `prepare-dataset token-unif-dist` (ranges are inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnifDistParams {
    pub num_requests: usize,
    pub input_min: u32,
    pub input_max: u32,
    pub output_min: u32,
    pub output_max: u32,
    pub random_seed: u64,
}

/// A normal length distribution, as given by `--output-len-dist mean,stdev`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LenDist {
    pub mean: f64,
    pub stdev: f64,
}

/// Parameters of `prepare-dataset real-dataset`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RealDatasetParams<'a> {
    /// JSONL (prompt under one of [`PROMPT_KEYS`]) or plain text (one prompt
    /// per non-empty line). The file is read as JSONL when its extension is
    /// `.jsonl`/`.json` or its first non-empty line starts with `{`.
    pub path: &'a Path,
    pub output_len_dist: LenDist,
    /// Keep only the first `n` prompts; `None` keeps all.
    pub num_requests: Option<usize>,
    pub random_seed: u64,
}

/// Length for a normal draw `z`: `max(1, ceil(mean + z * stdev))`, saturating
/// at `u64::MAX`.
pub fn normal_len(mean: f64, stdev: f64, z: f64) -> u64 {
    // `as` saturates and maps NaN and negatives to 0, which `max(1)` lifts.
    ((mean + z * stdev).ceil() as u64).max(1)
}

/// `count` lengths uniform over `[min, max]` (for `min <= max`), from a generator seeded with
/// `seed`: `min + below(max - min + 1)` each.
pub fn uniform_lens(min: u32, max: u32, count: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    let span = u64::from(max.saturating_sub(min)) + 1;
    // below(span) < span <= u32::MAX - min + 1, so the sum fits in u32.
    (0..count).map(|_| min + rng.below(span) as u32).collect()
}

/// Parses `--output-len-dist` given as `"mean,stdev"`.
pub fn parse_len_dist(text: &str) -> Result<LenDist> {
    let expected = "expected \"mean,stdev\": two numbers separated by a comma, e.g. \"128,16\"";
    let Some((mean, stdev)) = text.split_once(',') else {
        bail!("--output-len-dist {text:?}: no comma found; {expected}");
    };
    let mean: f64 =
        mean.trim().parse().with_context(|| format!("--output-len-dist {text:?}: mean {mean:?} is not a number; {expected}"))?;
    let stdev: f64 =
        stdev.trim().parse().with_context(|| format!("--output-len-dist {text:?}: stdev {stdev:?} is not a number; {expected}"))?;
    check_mean("--output-len-dist mean", mean)?;
    check_stdev("--output-len-dist stdev", stdev)?;
    Ok(LenDist { mean, stdev })
}

/// `token-norm-dist`: one standard-normal `z` per request gives both lengths.
pub fn token_norm_dist(params: &NormDistParams, vocab: &Vocab) -> Result<Vec<DatasetEntry>> {
    check_num_requests(params.num_requests)?;
    check_mean("--input-mean", params.input_mean)?;
    check_stdev("--input-stdev", params.input_stdev)?;
    check_mean("--output-mean", params.output_mean)?;
    check_stdev("--output-stdev", params.output_stdev)?;
    let sampler = TokenSampler::new(vocab)?;
    let mut lengths = Rng::new(params.random_seed);
    let mut tokens = Rng::new(params.random_seed ^ TOKEN_STREAM_SALT);
    let mut entries = Vec::new();
    for task_id in 0..params.num_requests as u64 {
        let z = lengths.normal();
        let input_len = checked_len(normal_len(params.input_mean, params.input_stdev, z), "input (--input-mean/--input-stdev)", task_id)?;
        let output_tokens =
            checked_len(normal_len(params.output_mean, params.output_stdev, z), "output (--output-mean/--output-stdev)", task_id)?;
        let input_ids = sampler.sample(&mut tokens, input_len);
        entries.push(DatasetEntry { task_id, input_ids, output_tokens });
    }
    Ok(entries)
}

/// `token-unif-dist`: the input and the output lengths are two lists drawn from the same seed.
pub fn token_unif_dist(params: &UnifDistParams, vocab: &Vocab) -> Result<Vec<DatasetEntry>> {
    check_num_requests(params.num_requests)?;
    check_range("--input-min", params.input_min, "--input-max", params.input_max)?;
    check_range("--output-min", params.output_min, "--output-max", params.output_max)?;
    let sampler = TokenSampler::new(vocab)?;
    let inputs = uniform_lens(params.input_min, params.input_max, params.num_requests, params.random_seed);
    let outputs = uniform_lens(params.output_min, params.output_max, params.num_requests, params.random_seed);
    let mut tokens = Rng::new(params.random_seed ^ TOKEN_STREAM_SALT);
    Ok((0..params.num_requests as u64)
        .zip(inputs.into_iter().zip(outputs))
        .map(|(task_id, (input_len, output_tokens))| DatasetEntry {
            task_id,
            input_ids: sampler.sample(&mut tokens, input_len),
            output_tokens,
        })
        .collect())
}

/// `real-dataset`: prompts from a local file, tokenized by `tokenize`, with
/// output lengths drawn from `output_len_dist` (one normal `z` per request).
pub fn real_dataset(params: &RealDatasetParams<'_>, tokenize: &dyn Fn(&str) -> Result<Vec<u32>>) -> Result<Vec<DatasetEntry>> {
    if let Some(n) = params.num_requests {
        check_num_requests(n)?;
    }
    let dist = params.output_len_dist;
    check_mean("--output-len-dist mean", dist.mean)?;
    check_stdev("--output-len-dist stdev", dist.stdev)?;
    let file = params.path.display();
    let text = fs::read_to_string(params.path).with_context(|| format!("reading prompt file {file}"))?;
    let jsonl = is_jsonl(params.path, &text);
    let limit = params.num_requests.unwrap_or(usize::MAX);
    let mut lengths = Rng::new(params.random_seed);
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if entries.len() == limit {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let line_no = index + 1;
        let prompt = if jsonl { jsonl_prompt(line, &file, line_no)? } else { line.to_owned() };
        let input_ids = tokenize(&prompt).with_context(|| format!("{file}:{line_no}: tokenizing the prompt failed"))?;
        if input_ids.is_empty() {
            bail!("{file}:{line_no}: the prompt tokenized to 0 tokens; expected at least 1");
        }
        let task_id = entries.len() as u64;
        let z = lengths.normal();
        let output_tokens = checked_len(normal_len(dist.mean, dist.stdev, z), "output (--output-len-dist)", task_id)?;
        entries.push(DatasetEntry { task_id, input_ids, output_tokens });
    }
    if entries.is_empty() {
        let shape = if jsonl {
            format!("one JSON object per line with the prompt under one of {PROMPT_KEYS:?}")
        } else {
            "one prompt per non-empty line".to_owned()
        };
        bail!("{file}: no prompts found; expected {shape}");
    }
    Ok(entries)
}

/// Writes `entries` as JSON lines, one request per line.
pub fn write_dataset(path: &Path, entries: &[DatasetEntry]) -> Result<()> {
    let file = path.display();
    let handle = fs::File::create(path).with_context(|| format!("creating dataset {file}"))?;
    let mut out = BufWriter::new(handle);
    for entry in entries {
        serde_json::to_writer(&mut out, entry).with_context(|| format!("writing task {} to dataset {file}", entry.task_id))?;
        out.write_all(b"\n").with_context(|| format!("writing dataset {file}"))?;
    }
    out.flush().with_context(|| format!("writing dataset {file}"))
}

/// One dataset line as written: the prompt as `input_ids`, `logits` or `prompt` text.
#[derive(Deserialize)]
struct DatasetLine {
    task_id: u64,
    input_ids: Option<Vec<u32>>,
    logits: Option<Vec<u32>>,
    prompt: Option<String>,
    output_tokens: u32,
}

/// Turns a prompt's text into token ids.
pub type Tokenize<'a> = dyn Fn(&str) -> Result<Vec<u32>> + 'a;

/// Reads and validates a JSON-lines dataset. Blank lines are skipped. A line's prompt is its
/// `input_ids`, else its `logits`, else its `prompt` text run through `tokenize` (an error when
/// there is none). With `vocab_size`, every token id must be below it.
pub fn read_dataset(path: &Path, vocab_size: Option<usize>, tokenize: Option<&Tokenize>) -> Result<Vec<DatasetEntry>> {
    let file = path.display();
    let text = fs::read_to_string(path).with_context(|| format!("reading dataset {file}"))?;
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_no = index + 1;
        let raw: DatasetLine = serde_json::from_str(line).map_err(|err| {
            let kind = match err.classify() {
                serde_json::error::Category::Data => "invalid dataset entry",
                _ => "malformed JSON",
            };
            let message = err.to_string();
            let message = message.split(" at line ").next().unwrap_or_default();
            anyhow::anyhow!("{file}:{line_no}:{}: {kind}: {message}; expected one object per line like {ENTRY_SHAPE}", err.column())
        })?;
        let task_id = raw.task_id;
        let input_ids = match (raw.input_ids.or(raw.logits), raw.prompt) {
            (Some(ids), _) => ids,
            (None, Some(prompt)) => {
                let Some(tokenize) = tokenize else {
                    bail!("{file}:{line_no}: task {task_id}: the prompt is text but the model has no tokenizer; expected input_ids");
                };
                tokenize(&prompt).with_context(|| format!("{file}:{line_no}: task {task_id}: tokenizing the prompt failed"))?
            }
            (None, None) => bail!("{file}:{line_no}: task {task_id}: no input_ids, logits or prompt; expected one of them"),
        };
        if input_ids.is_empty() {
            bail!("{file}:{line_no}: task {task_id}: input_ids is empty; expected at least 1 token");
        }
        if raw.output_tokens == 0 {
            bail!("{file}:{line_no}: task {task_id}: output_tokens is 0; expected at least 1");
        }
        if let Some(vocab) = vocab_size {
            if let Some((pos, id)) = input_ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
                bail!(
                    "{file}:{line_no}: task {task_id}: token id {id} (input_ids[{pos}]) is out of range; \
                     expected ids < vocab size {vocab}"
                );
            }
        }
        entries.push(DatasetEntry { task_id, input_ids, output_tokens: raw.output_tokens });
    }
    if entries.is_empty() {
        bail!("{file}: dataset is empty; expected one object per line like {ENTRY_SHAPE}");
    }
    Ok(entries)
}

fn check_num_requests(n: usize) -> Result<()> {
    if n == 0 {
        bail!("--num-requests must be > 0, got 0");
    }
    Ok(())
}

fn check_mean(flag: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        bail!("{flag} must be a finite number > 0, got {value}");
    }
    Ok(())
}

fn check_stdev(flag: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value >= 0.0) {
        bail!("{flag} must be a finite number >= 0, got {value}");
    }
    Ok(())
}

fn check_range(min_flag: &str, min: u32, max_flag: &str, max: u32) -> Result<()> {
    if min < 1 {
        bail!("{min_flag} must be >= 1, got {min}");
    }
    if min > max {
        bail!("{min_flag} ({min}) must be <= {max_flag} ({max})");
    }
    if u64::from(max) > MAX_SEQUENCE_LEN {
        bail!("{max_flag} must be <= {MAX_SEQUENCE_LEN} tokens, got {max}");
    }
    Ok(())
}

fn checked_len(len: u64, what: &str, task_id: u64) -> Result<u32> {
    if len > MAX_SEQUENCE_LEN {
        bail!(
            "task {task_id}: drawn {what} length {len} exceeds the limit of {MAX_SEQUENCE_LEN} \
             tokens; expected a smaller mean or stdev"
        );
    }
    // MAX_SEQUENCE_LEN < u32::MAX, so the conversion is lossless.
    Ok(len as u32)
}

fn is_jsonl(path: &Path, text: &str) -> bool {
    let by_extension = path
        .extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| ext.eq_ignore_ascii_case("jsonl") || ext.eq_ignore_ascii_case("json"));
    by_extension || text.lines().find(|line| !line.trim().is_empty()).is_some_and(|line| line.trim_start().starts_with('{'))
}

fn jsonl_prompt(line: &str, file: &impl std::fmt::Display, line_no: usize) -> Result<String> {
    let expected = format!("expected a JSON object with a string prompt under one of {PROMPT_KEYS:?}");
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|err| anyhow::anyhow!("{file}:{line_no}: malformed JSON ({err}); {expected}"))?;
    let Some(object) = value.as_object() else {
        bail!("{file}:{line_no}: the line is not a JSON object; {expected}");
    };
    let Some((key, prompt)) = PROMPT_KEYS.iter().find_map(|key| object.get(*key).map(|v| (key, v))) else {
        let found: Vec<&String> = object.keys().collect();
        bail!("{file}:{line_no}: no prompt key found (keys present: {found:?}); {expected}");
    };
    match prompt.as_str() {
        Some(text) => Ok(text.to_owned()),
        None => bail!("{file}:{line_no}: key {key:?} holds {prompt}, not a string; {expected}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_test_support::scratch::Scratch;
    use std::path::PathBuf;

    const VOCAB: Vocab = Vocab { size: 32, eos_id: Some(2), special: Vec::new() };

    fn norm(num_requests: usize, seed: u64) -> NormDistParams {
        NormDistParams { num_requests, input_mean: 64.0, input_stdev: 16.0, output_mean: 32.0, output_stdev: 8.0, random_seed: seed }
    }

    fn unif(num_requests: usize, seed: u64) -> UnifDistParams {
        UnifDistParams { num_requests, input_min: 10, input_max: 20, output_min: 100, output_max: 110, random_seed: seed }
    }

    fn err_text<T: std::fmt::Debug>(result: Result<T>) -> String {
        format!("{:#}", result.expect_err("expected an error"))
    }

    #[test]
    fn normal_len_follows_formula() {
        // z = 0.5: 100 + 0.5 * 10 = 105 exactly.
        assert_eq!(normal_len(100.0, 10.0, 0.5), 105);
        // z = 0.25: 100 + 2.5 = 102.5 -> ceil 103.
        assert_eq!(normal_len(100.0, 10.0, 0.25), 103);
        // z = -1.26: 100 - 12.6 = 87.4 -> 88.
        assert_eq!(normal_len(100.0, 10.0, -1.26), 88);
        // Negative or tiny values clamp to 1.
        assert_eq!(normal_len(5.0, 10.0, -3.0), 1);
        assert_eq!(normal_len(0.2, 0.0, 0.0), 1);
        assert_eq!(normal_len(1e30, 0.0, 0.0), u64::MAX);
    }

    #[test]
    fn uniform_lens_are_min_plus_an_unbiased_draw_below_the_span() {
        let mut rng = Rng::new(5);
        let expected: Vec<u32> = (0..100).map(|_| 10 + rng.below(11) as u32).collect();
        assert_eq!(uniform_lens(10, 20, 100, 5), expected);
        let lens = uniform_lens(10, 20, 1000, 5);
        assert!(lens.iter().all(|l| (10..=20).contains(l)));
        assert!(lens.contains(&10) && lens.contains(&20), "1000 draws miss an end of [10, 20]");
        assert_eq!(uniform_lens(7, 7, 3, 1), [7, 7, 7]);
        assert!(uniform_lens(1, u32::MAX, 50, 1).iter().any(|&l| l > u32::MAX / 2));
    }

    #[test]
    fn same_seed_same_dataset() {
        assert_eq!(token_norm_dist(&norm(50, 7), &VOCAB).unwrap(), token_norm_dist(&norm(50, 7), &VOCAB).unwrap());
        assert_ne!(token_norm_dist(&norm(50, 7), &VOCAB).unwrap(), token_norm_dist(&norm(50, 8), &VOCAB).unwrap());
        assert_eq!(token_unif_dist(&unif(50, 7), &VOCAB).unwrap(), token_unif_dist(&unif(50, 7), &VOCAB).unwrap());
        assert_ne!(token_unif_dist(&unif(50, 7), &VOCAB).unwrap(), token_unif_dist(&unif(50, 8), &VOCAB).unwrap());
    }

    #[test]
    fn norm_dist_uses_one_z_for_both_lengths() {
        let params = norm(200, 3);
        let entries = token_norm_dist(&params, &VOCAB).unwrap();
        let mut rng = Rng::new(3);
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(entry.task_id, i as u64);
            let z = rng.normal();
            assert_eq!(entry.input_ids.len() as u64, normal_len(64.0, 16.0, z));
            assert_eq!(u64::from(entry.output_tokens), normal_len(32.0, 8.0, z));
        }
    }

    #[test]
    fn unif_dist_draws_each_length_list_from_the_seed() {
        let entries = token_unif_dist(&unif(200, 3), &VOCAB).unwrap();
        let inputs: Vec<u32> = entries.iter().map(|e| e.input_ids.len() as u32).collect();
        let outputs: Vec<u32> = entries.iter().map(|e| e.output_tokens).collect();
        assert_eq!(inputs, uniform_lens(10, 20, 200, 3));
        assert_eq!(outputs, uniform_lens(100, 110, 200, 3));
        // Equal ranges give equal lists, as two generators seeded alike do in trtllm-bench.
        let same = token_unif_dist(&UnifDistParams { output_min: 10, output_max: 20, ..unif(50, 3) }, &VOCAB).unwrap();
        assert!(same.iter().all(|e| e.input_ids.len() as u32 == e.output_tokens));
    }

    #[test]
    fn stdev_zero_gives_exact_lengths() {
        let params = NormDistParams { input_stdev: 0.0, output_stdev: 0.0, ..norm(20, 1) };
        for entry in token_norm_dist(&params, &VOCAB).unwrap() {
            assert_eq!(entry.input_ids.len(), 64);
            assert_eq!(entry.output_tokens, 32);
        }
    }

    #[test]
    fn no_eos_ids_and_all_in_vocab() {
        let vocab = Vocab { size: 4, eos_id: Some(1), special: Vec::new() };
        let entries = token_norm_dist(&norm(100, 11), &vocab).unwrap();
        let mut seen = [false; 4];
        for id in entries.iter().flat_map(|e| e.input_ids.iter()) {
            assert!(*id < 4 && *id != 1, "id {id}");
            seen[*id as usize] = true;
        }
        assert_eq!(seen, [true, false, true, true]);
        // EOS at the top of the vocabulary and EOS outside of it.
        for vocab in [Vocab { size: 3, eos_id: Some(2), special: Vec::new() }, Vocab { size: 3, eos_id: Some(9), special: Vec::new() }] {
            let entries = token_unif_dist(&unif(30, 5), &vocab).unwrap();
            assert!(entries.iter().flat_map(|e| &e.input_ids).all(|&id| id < 3 && Some(id) != vocab.eos_id));
        }
    }

    #[test]
    fn requests_below_the_vocabulary_repeat_no_id_and_hold_no_special_token() {
        // 17 special ids (EOS 2 among them) in a vocabulary of 300: 283 ids to draw from.
        let vocab = Vocab { size: 300, eos_id: Some(2), special: (0..17).collect() };
        let params =
            NormDistParams { num_requests: 40, input_mean: 200.0, input_stdev: 60.0, output_mean: 4.0, output_stdev: 0.0, random_seed: 1 };
        let norm = token_norm_dist(&params, &vocab).unwrap();
        let unif = token_unif_dist(
            &UnifDistParams { num_requests: 40, input_min: 1, input_max: 282, output_min: 1, output_max: 2, random_seed: 1 },
            &vocab,
        )
        .unwrap();
        let mut checked = 0;
        for e in norm.iter().chain(&unif) {
            assert!(e.input_ids.iter().all(|&id| (17..300).contains(&id)), "task {}: a special id: {:?}", e.task_id, e.input_ids);
            if e.input_ids.len() < 283 {
                let distinct: std::collections::HashSet<&u32> = e.input_ids.iter().collect();
                assert_eq!(distinct.len(), e.input_ids.len(), "task {}: a repeated id", e.task_id);
                checked += 1;
            }
        }
        assert!(checked > 60, "too few requests below the population: {checked}");
    }

    #[test]
    fn bad_generator_inputs_are_named() {
        let cases: Vec<(Result<Vec<DatasetEntry>>, &str)> = vec![
            (token_norm_dist(&norm(0, 1), &VOCAB), "--num-requests must be > 0, got 0"),
            (token_norm_dist(&NormDistParams { input_mean: 0.0, ..norm(1, 1) }, &VOCAB), "--input-mean must be a finite number > 0, got 0"),
            (
                token_norm_dist(&NormDistParams { output_mean: f64::NAN, ..norm(1, 1) }, &VOCAB),
                "--output-mean must be a finite number > 0, got NaN",
            ),
            (
                token_norm_dist(&NormDistParams { input_stdev: -1.0, ..norm(1, 1) }, &VOCAB),
                "--input-stdev must be a finite number >= 0, got -1",
            ),
            (
                token_norm_dist(&NormDistParams { output_stdev: -0.5, ..norm(1, 1) }, &VOCAB),
                "--output-stdev must be a finite number >= 0, got -0.5",
            ),
            (token_norm_dist(&NormDistParams { input_mean: 1e12, ..norm(1, 1) }, &VOCAB), "input (--input-mean/--input-stdev) length"),
            (token_unif_dist(&unif(0, 1), &VOCAB), "--num-requests must be > 0, got 0"),
            (token_unif_dist(&UnifDistParams { input_min: 0, ..unif(1, 1) }, &VOCAB), "--input-min must be >= 1, got 0"),
            (
                token_unif_dist(&UnifDistParams { output_min: 200, ..unif(1, 1) }, &VOCAB),
                "--output-min (200) must be <= --output-max (110)",
            ),
            (token_unif_dist(&UnifDistParams { input_max: u32::MAX, ..unif(1, 1) }, &VOCAB), "--input-max must be <= 16777216 tokens"),
            (
                token_unif_dist(&unif(1, 1), &Vocab { size: 0, eos_id: None, special: Vec::new() }),
                "vocab size must be in 1..=4294967296, got 0",
            ),
            (token_unif_dist(&unif(1, 1), &Vocab { size: 1, eos_id: Some(0), special: Vec::new() }), "leaves no token id to draw"),
        ];
        for (result, expected) in cases {
            let text = err_text(result);
            assert!(text.contains(expected), "{text:?} should contain {expected:?}");
        }
    }

    #[test]
    fn parse_len_dist_accepts_and_rejects() {
        assert_eq!(parse_len_dist("128, 16").unwrap(), LenDist { mean: 128.0, stdev: 16.0 });
        for (input, expected) in [
            ("128", "--output-len-dist \"128\": no comma found; expected \"mean,stdev\""),
            ("abc,1", "mean \"abc\" is not a number"),
            ("128,x", "stdev \"x\" is not a number"),
            ("0,1", "--output-len-dist mean must be a finite number > 0, got 0"),
            ("10,-1", "--output-len-dist stdev must be a finite number >= 0, got -1"),
        ] {
            let text = err_text(parse_len_dist(input));
            assert!(text.contains(expected), "{text:?} should contain {expected:?}");
        }
    }

    fn fake_tokenize(text: &str) -> Result<Vec<u32>> {
        if text.contains("FAIL") {
            bail!("tokenizer refused");
        }
        Ok(text.split_whitespace().map(|w| w.len() as u32).collect())
    }

    fn real(path: &Path, num_requests: Option<usize>) -> RealDatasetParams<'_> {
        RealDatasetParams { path, output_len_dist: LenDist { mean: 50.0, stdev: 0.0 }, num_requests, random_seed: DEFAULT_RANDOM_SEED }
    }

    #[test]
    fn real_dataset_reads_jsonl_keys_in_order() {
        let s = Scratch::new("dataset-keys");
        let file = PathBuf::from(s.write(
            "keys.jsonl",
            "{\"prompt\":\"a bb\",\"text\":\"ignored\"}\n\n{\"text\":\"ccc\"}\n{\"input\":\"d\"}\n{\"question\":\"ee ff g\"}\n",
        ));
        let entries = real_dataset(&real(&file, None), &fake_tokenize).unwrap();
        let ids: Vec<Vec<u32>> = entries.iter().map(|e| e.input_ids.clone()).collect();
        assert_eq!(ids, vec![vec![1, 2], vec![3], vec![1], vec![2, 2, 1]]);
        assert!(entries.iter().enumerate().all(|(i, e)| e.task_id == i as u64 && e.output_tokens == 50));
        let limited = real_dataset(&real(&file, Some(2)), &fake_tokenize).unwrap();
        assert_eq!(limited.len(), 2);
    }

    #[test]
    fn real_dataset_reads_plain_text_with_normal_output_lengths() {
        let s = Scratch::new("dataset-plain");
        let file = PathBuf::from(s.write("plain.txt", "hello world\n\n  \nsecond prompt here\nthird\n"));
        let params = RealDatasetParams { output_len_dist: LenDist { mean: 20.0, stdev: 5.0 }, ..real(&file, None) };
        let entries = real_dataset(&params, &fake_tokenize).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].input_ids, vec![6, 6, 4]);
        let mut rng = Rng::new(DEFAULT_RANDOM_SEED);
        for entry in &entries {
            assert_eq!(u64::from(entry.output_tokens), normal_len(20.0, 5.0, rng.normal()));
        }
    }

    #[test]
    fn real_dataset_errors_name_file_and_line() {
        let s = Scratch::new("dataset-errors");
        let missing = PathBuf::from(s.write("nokey.jsonl", "{\"prompt\":\"ok\"}\n{\"body\":\"x\",\"id\":1}\n"));
        let text = err_text(real_dataset(&real(&missing, None), &fake_tokenize));
        assert!(text.contains("nokey.jsonl:2: no prompt key found (keys present: [\"body\", \"id\"])"), "{text}");
        assert!(text.contains("[\"prompt\", \"text\", \"input\", \"question\"]"), "{text}");

        let not_string = PathBuf::from(s.write("num.jsonl", "{\"prompt\":5}\n"));
        let text = err_text(real_dataset(&real(&not_string, None), &fake_tokenize));
        assert!(text.contains("num.jsonl:1: key \"prompt\" holds 5, not a string"), "{text}");

        let broken = PathBuf::from(s.write("broken.jsonl", "{\"prompt\":\"a\"}\n{oops\n"));
        let text = err_text(real_dataset(&real(&broken, None), &fake_tokenize));
        assert!(text.contains("broken.jsonl:2: malformed JSON"), "{text}");

        let failing = PathBuf::from(s.write("fail.txt", "fine\nFAIL here\n"));
        let text = err_text(real_dataset(&real(&failing, None), &fake_tokenize));
        assert!(text.contains("fail.txt:2: tokenizing the prompt failed: tokenizer refused"), "{text}");

        let empty = PathBuf::from(s.write("empty.txt", "\n \n"));
        let text = err_text(real_dataset(&real(&empty, None), &fake_tokenize));
        assert!(text.contains("empty.txt: no prompts found; expected one prompt per non-empty line"), "{text}");

        let text = err_text(real_dataset(&real(&empty, Some(0)), &fake_tokenize));
        assert!(text.contains("--num-requests must be > 0, got 0"), "{text}");

        let nothing = Path::new("/nonexistent/lumen/prompts.txt");
        let text = err_text(real_dataset(&real(nothing, None), &fake_tokenize));
        assert!(text.contains("reading prompt file /nonexistent/lumen/prompts.txt"), "{text}");
    }

    #[test]
    fn write_then_read_round_trips() {
        let entries = token_norm_dist(&norm(10, 9), &VOCAB).unwrap();
        let s = Scratch::new("dataset-roundtrip");
        let file = PathBuf::from(s.path("roundtrip.jsonl"));
        write_dataset(&file, &entries).unwrap();
        let text = fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 10);
        assert!(text.starts_with("{\"task_id\":0,\"input_ids\":["));
        assert_eq!(read_dataset(&file, Some(32), None).unwrap(), entries);
    }

    #[test]
    fn read_dataset_errors_name_line() {
        let good = r#"{"task_id":0,"input_ids":[1,2],"output_tokens":3}"#;
        let cases = [
            ("malformed", format!("{good}\n{{\"task_id\":1,"), "malformed.jsonl:2:"),
            ("missing", format!("{good}\n\n{{\"task_id\":1,\"input_ids\":[1]}}"), "missing.jsonl:3:"),
            (
                "emptyids",
                format!("{good}\n{{\"task_id\":1,\"input_ids\":[],\"output_tokens\":3}}"),
                "emptyids.jsonl:2: task 1: input_ids is empty",
            ),
            ("zeroout", r#"{"task_id":4,"input_ids":[1],"output_tokens":0}"#.to_owned(), "zeroout.jsonl:1: task 4: output_tokens is 0"),
            (
                "vocab",
                format!("{good}\n{{\"task_id\":1,\"input_ids\":[5,32,1],\"output_tokens\":3}}"),
                "vocab.jsonl:2: task 1: token id 32 (input_ids[1]) is out of range; expected ids < vocab size 32",
            ),
            ("negative", r#"{"task_id":0,"input_ids":[-1],"output_tokens":3}"#.to_owned(), "negative.jsonl:1:"),
            ("blank", "\n  \n".to_owned(), "blank.jsonl: dataset is empty"),
        ];
        let s = Scratch::new("dataset-read-errors");
        for (name, contents, expected) in cases {
            let file = PathBuf::from(s.write(&format!("{name}.jsonl"), &contents));
            let text = err_text(read_dataset(&file, Some(32), None));
            assert!(text.contains(expected), "{text:?} should contain {expected:?}");
        }
        let file = PathBuf::from(s.write("shape.jsonl", "{\"task_id\":1,\"input_ids\":[1]}"));
        let text = err_text(read_dataset(&file, None, None));
        assert!(text.contains("invalid dataset entry: missing field `output_tokens`; expected one object per line like"), "{text}");
        let file = PathBuf::from(s.write("syntax.jsonl", "not json"));
        let text = err_text(read_dataset(&file, None, None));
        assert!(text.contains("syntax.jsonl:1:2: malformed JSON: expected ident"), "{text}");
    }

    #[test]
    fn lines_may_carry_logits_or_a_prompt_tokenized_on_load() {
        let s = Scratch::new("dataset-prompt");
        let file = PathBuf::from(s.write(
            "mixed.jsonl",
            "{\"task_id\":0,\"logits\":[4,5],\"output_tokens\":3}\n\
             {\"task_id\":1,\"prompt\":\"a bb ccc\",\"output_tokens\":2}\n\
             {\"task_id\":2,\"input_ids\":[7],\"prompt\":\"ignored\",\"output_tokens\":1}\n",
        ));
        let entries = read_dataset(&file, Some(32), Some(&fake_tokenize)).unwrap();
        let ids: Vec<(u64, Vec<u32>, u32)> = entries.into_iter().map(|e| (e.task_id, e.input_ids, e.output_tokens)).collect();
        assert_eq!(ids, vec![(0, vec![4, 5], 3), (1, vec![1, 2, 3], 2), (2, vec![7], 1)]);
        let text = err_text(read_dataset(&file, Some(32), None));
        assert!(text.contains("mixed.jsonl:2: task 1: the prompt is text but the model has no tokenizer; expected input_ids"), "{text}");
        let failing = PathBuf::from(s.write("fail.jsonl", "{\"task_id\":3,\"prompt\":\"FAIL\",\"output_tokens\":2}\n"));
        let text = err_text(read_dataset(&failing, None, Some(&fake_tokenize)));
        assert!(text.contains("fail.jsonl:1: task 3: tokenizing the prompt failed: tokenizer refused"), "{text}");
        let none = PathBuf::from(s.write("none.jsonl", "{\"task_id\":4,\"output_tokens\":2}\n"));
        let text = err_text(read_dataset(&none, None, Some(&fake_tokenize)));
        assert!(text.contains("none.jsonl:1: task 4: no input_ids, logits or prompt; expected one of them"), "{text}");
    }
}
