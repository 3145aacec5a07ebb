//! Headroom: what the engine's own limits left on the table, read from its iteration rows and
//! the limits in the trace's meta (`max_batch_size`, `max_num_tokens`, `kv_block_size`): how
//! often the batch sat at its cap while the KV cache stayed idle, how often the token budget
//! filled while requests waited, and the batch size the KV cache would hold. A suggested batch
//! size comes with its expected gain and the basis of the estimate: a roofline of the bytes and
//! FLOPs the iterations recorded against the GPU's peaks, else a linear fit of iteration time
//! against batch tokens, else only the ratio of batch sizes.

use lumen_trace::model::{IterationRow, TraceData};
use serde::Serialize;

use crate::measured::Measured;
use crate::sol::{self, Peaks};
use crate::stats::Distribution;
use crate::steps::StepWindows;
use crate::text;
use crate::view::{fact, missing, Block};

/// The KV cache is filled to at most this share by the suggested batch.
pub const KV_TARGET: f64 = 0.9;
/// Of the DRAM peak, what a whole decode iteration can sustain.
pub const PRACTICAL_DRAM_SHARE: f64 = 0.8;
/// Of the dense BF16 tensor peak, what a whole iteration (GEMMs, attention, the rest) sustains:
/// lumen's prefill-heavy Llama-3.1-8B run on an H200 reaches 260 TFLOP/s, about a third.
pub const PRACTICAL_TENSOR_SHARE: f64 = 0.3;
/// The suggested batch is the smallest power of two whose estimated throughput is within this
/// share of the best one the KV cache allows.
const NEAR_BEST: f64 = 0.95;
/// Without a model of the iteration time, the suggestion goes at most this many times higher.
const BLIND_STEP: u64 = 4;
/// A fit of iteration time needs this many distinct batch sizes.
const FIT_MIN_SIZES: usize = 3;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Headroom {
    /// Steady iterations that ran work.
    pub iterations: usize,
    pub max_batch_size: Option<u64>,
    pub max_num_tokens: Option<u64>,
    pub median_batch: f64,
    /// Share of iterations whose requests filled `max_batch_size`.
    pub at_batch_cap: Option<f64>,
    /// Share of iterations whose tokens filled `max_num_tokens`.
    pub at_token_budget: Option<f64>,
    /// Share of iterations that left requests waiting, when the rows record the queue.
    pub queued: Option<f64>,
    pub mean_queued: Option<f64>,
    /// The highest KV-cache use.
    pub kv_peak: Option<f64>,
    pub suggestion: Option<Suggestion>,
}

/// A larger batch, and what it should buy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suggestion {
    pub max_batch_size: u64,
    pub max_num_tokens: u64,
    /// Requests the KV cache holds at [`KV_TARGET`].
    pub kv_fit: u64,
    pub blocks_per_request: f64,
    /// Expected throughput over today's, when it can be estimated.
    pub gain: Option<f64>,
    /// How the gain was estimated.
    pub basis: String,
}

fn meta_u64(trace: &TraceData, key: &str) -> Option<u64> {
    trace.meta(key).and_then(|v| v.parse().ok()).filter(|&v| v > 0)
}

fn batch(r: &IterationRow) -> u64 {
    r.ctx_reqs + r.gen_reqs
}

fn tokens(r: &IterationRow) -> u64 {
    r.ctx_tokens + r.gen_tokens
}

pub(crate) fn analyze(trace: &TraceData, steps: &StepWindows, peaks: Option<&Peaks>) -> Measured<Headroom> {
    let rows: Vec<&IterationRow> = trace.iterations.iter().filter(|r| batch(r) > 0 && !steps.in_outlier(r.start_ns)).collect();
    if rows.is_empty() {
        return Measured::NotAvailable(
            "the trace has no iteration rows with requests; record lumen's engine with `--trace` or LUMEN_TRACE".into(),
        );
    }
    let n = rows.len() as f64;
    let max_batch_size = meta_u64(trace, "max_batch_size");
    let max_num_tokens = meta_u64(trace, "max_num_tokens");
    let share_of = |pred: &dyn Fn(&IterationRow) -> bool| rows.iter().filter(|r| pred(r)).count() as f64 / n;
    let at_batch_cap = max_batch_size.map(|cap| share_of(&|r| batch(r) >= cap));
    let at_token_budget = max_num_tokens.map(|cap| share_of(&|r| tokens(r) >= cap));
    let with_queue: Vec<u64> = rows.iter().filter_map(|r| r.queued_reqs).collect();
    let queued = (!with_queue.is_empty()).then(|| with_queue.iter().filter(|&&q| q > 0).count() as f64 / with_queue.len() as f64);
    let mean_queued = (!with_queue.is_empty()).then(|| with_queue.iter().sum::<u64>() as f64 / with_queue.len() as f64);
    let kv: Vec<f64> = rows.iter().filter(|r| r.kv_total_blocks > 0).map(|r| r.kv_used_blocks as f64 / r.kv_total_blocks as f64).collect();
    let kv_peak = kv.iter().copied().reduce(f64::max);
    let median_batch = median(rows.iter().map(|r| batch(r) as f64).collect()).expect("rows are not empty");
    let suggestion = max_batch_size.and_then(|cap| suggest(trace, &rows, cap, max_num_tokens, peaks));
    Measured::Available(Headroom {
        iterations: rows.len(),
        max_batch_size,
        max_num_tokens,
        median_batch,
        at_batch_cap,
        at_token_budget,
        queued,
        mean_queued,
        kv_peak,
        suggestion,
    })
}

/// KV blocks one request holds at its end: from the finished requests' lengths, else from the
/// fullest iteration's blocks per request.
fn blocks_per_request(trace: &TraceData, rows: &[&IterationRow]) -> Option<f64> {
    let block = meta_u64(trace, "kv_block_size");
    if let (Some(block), false) = (block, trace.requests.is_empty()) {
        let blocks: f64 = trace.requests.iter().map(|r| (r.input_len + r.output_len).div_ceil(block) as f64).sum();
        return Some(blocks / trace.requests.len() as f64);
    }
    rows.iter().filter(|r| r.kv_used_blocks > 0).map(|r| r.kv_used_blocks as f64 / batch(r) as f64).reduce(f64::max)
}

/// Iteration time at batch `b` under a model built from today's iterations.
enum TimeModel {
    /// Bytes and FLOPs per iteration against practical peaks, plus today's unexplained time.
    Roofline { weight_bytes: f64, kv_per_request: f64, flops_per_request: f64, dram_b_s: f64, flop_s: f64, fixed_s: f64 },
    /// Least squares of seconds against batch tokens.
    Linear { intercept_s: f64, per_token_s: f64, sizes: usize },
}

impl TimeModel {
    fn seconds(&self, b: f64) -> f64 {
        match *self {
            TimeModel::Roofline { weight_bytes, kv_per_request, flops_per_request, dram_b_s, flop_s, fixed_s } => {
                ((weight_bytes + kv_per_request * b) / dram_b_s).max(flops_per_request * b / flop_s) + fixed_s
            }
            TimeModel::Linear { intercept_s, per_token_s, .. } => intercept_s + per_token_s * b,
        }
    }

    fn basis(&self) -> String {
        match *self {
            TimeModel::Roofline { weight_bytes, kv_per_request, flops_per_request, dram_b_s, flop_s, fixed_s } => format!(
                "roofline of today's iterations: {} of weights and {} of KV cache per request at {:.0} GB/s \
                 ({:.0}% of the DRAM peak), {:.1} GFLOP per request at {:.0} TFLOP/s ({:.0}% of the tensor peak), \
                 plus {} per iteration that neither explains",
                text::bytes(weight_bytes as u64),
                text::bytes(kv_per_request as u64),
                dram_b_s / 1e9,
                PRACTICAL_DRAM_SHARE * 100.0,
                flops_per_request / 1e9,
                flop_s / 1e12,
                PRACTICAL_TENSOR_SHARE * 100.0,
                text::duration(fixed_s * 1e9)
            ),
            TimeModel::Linear { intercept_s, per_token_s, sizes } => format!(
                "linear fit of iteration time over {sizes} batch sizes: {} + {} per token",
                text::duration(intercept_s * 1e9),
                text::duration(per_token_s * 1e9)
            ),
        }
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    Distribution::of(&mut values).map(|d| d.median)
}

fn time_model(rows: &[&IterationRow], at_cap: &[&IterationRow], peaks: Option<&Peaks>, fp8_unsaid: bool) -> Option<TimeModel> {
    let seconds = |r: &IterationRow| r.host_ms / 1e3;
    if let Some(p) = peaks {
        let b = median(at_cap.iter().map(|r| batch(r) as f64).collect())?;
        let weight_bytes = median(at_cap.iter().filter_map(|r| r.weight_bytes).map(|v| v as f64).collect());
        let kv = median(at_cap.iter().filter_map(|r| r.kv_bytes_read).map(|v| v as f64).collect());
        let flops = median(at_cap.iter().filter_map(|r| r.flops).collect());
        let fp8_flops = median(at_cap.iter().map(|r| sol::fp8_flops(r, fp8_unsaid)).collect()).unwrap_or(0.0);
        if let (Some(weight_bytes), Some(kv), Some(flops)) = (weight_bytes, kv, flops) {
            let now_s = median(at_cap.iter().map(|r| seconds(r)).collect())?;
            let dram_b_s = PRACTICAL_DRAM_SHARE * p.dram_gb_s * 1e9;
            // The tensor rate of this mix of work: FP8 products at the FP8 peak, the rest at BF16's.
            let mix_flop_s = if flops > 0.0 { flops / p.tensor_seconds(flops, fp8_flops) } else { p.tensor_tflops * 1e12 };
            let flop_s = PRACTICAL_TENSOR_SHARE * mix_flop_s;
            let (kv_per_request, flops_per_request) = (kv / b, flops / b);
            let modelled = ((weight_bytes + kv) / dram_b_s).max(flops / flop_s);
            let fixed_s = (now_s - modelled).max(0.0);
            return Some(TimeModel::Roofline { weight_bytes, kv_per_request, flops_per_request, dram_b_s, flop_s, fixed_s });
        }
    }
    let mut sizes: Vec<u64> = rows.iter().map(|r| tokens(r)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.len() < FIT_MIN_SIZES {
        return None;
    }
    let n = rows.len() as f64;
    let mean_x = rows.iter().map(|r| tokens(r) as f64).sum::<f64>() / n;
    let mean_y = rows.iter().map(|r| seconds(r)).sum::<f64>() / n;
    let sxy: f64 = rows.iter().map(|r| (tokens(r) as f64 - mean_x) * (seconds(r) - mean_y)).sum();
    let sxx: f64 = rows.iter().map(|r| (tokens(r) as f64 - mean_x).powi(2)).sum();
    let per_token_s = (sxy / sxx).max(0.0);
    Some(TimeModel::Linear { intercept_s: (mean_y - per_token_s * mean_x).max(0.0), per_token_s, sizes: sizes.len() })
}

fn suggest(trace: &TraceData, rows: &[&IterationRow], cap: u64, max_num_tokens: Option<u64>, peaks: Option<&Peaks>) -> Option<Suggestion> {
    let total_blocks = rows.iter().map(|r| r.kv_total_blocks).max().filter(|&t| t > 0)?;
    let blocks_per_request = blocks_per_request(trace, rows)?.max(1.0);
    let kv_fit = (KV_TARGET * total_blocks as f64 / blocks_per_request).floor() as u64;
    if kv_fit < 2 * cap {
        return None;
    }
    let at_cap: Vec<&IterationRow> = rows.iter().copied().filter(|r| batch(r) >= cap).collect();
    let now = cap as f64;
    let candidates: Vec<u64> = (1..).map(|k| cap << k).take_while(|&b| b <= kv_fit).collect();
    let (max_batch_size, gain, basis) = match time_model(rows, &at_cap, peaks, sol::fp8_unsaid(trace)) {
        Some(model) => {
            let now_s = median(at_cap.iter().map(|r| r.host_ms / 1e3).collect()).unwrap_or(model.seconds(now));
            let measured_now = now / now_s.max(1e-12);
            let rate = |b: u64| b as f64 / model.seconds(b as f64);
            let best = candidates.iter().map(|&b| rate(b)).fold(0.0, f64::max);
            let chosen = candidates.iter().copied().find(|&b| rate(b) >= NEAR_BEST * best).unwrap_or(2 * cap);
            (chosen, Some(rate(chosen) / measured_now), model.basis())
        }
        None => {
            let chosen = candidates.iter().copied().filter(|&b| b <= cap * BLIND_STEP).max().unwrap_or(2 * cap);
            (
                chosen,
                None,
                format!(
                    "no model of the iteration time (no per-iteration bytes and FLOPs with known peaks, and fewer than \
                     {FIT_MIN_SIZES} batch sizes to fit): up to {}× if the iteration time held",
                    chosen / cap
                ),
            )
        }
    };
    let max_num_tokens = max_num_tokens.unwrap_or(0).max((8 * max_batch_size).min(16_384));
    Some(Suggestion { max_batch_size, max_num_tokens, kv_fit, blocks_per_request, gain, basis })
}

/// The section's blocks, for the terminal and the page.
pub fn view(headroom: &Measured<Headroom>) -> Vec<Block> {
    let h = match headroom {
        Measured::Available(h) => h,
        Measured::NotAvailable(why) => return vec![Block::Facts(vec![missing("headroom", why)])],
    };
    let limit = |v: Option<u64>| v.map_or("not recorded".to_string(), |v| v.to_string());
    let at = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{} of iterations", text::percent(s)));
    let mut facts = vec![
        fact("iterations", h.iterations.to_string()),
        fact("batch", format!("median {:.0}, cap {} (at the cap: {})", h.median_batch, limit(h.max_batch_size), at(h.at_batch_cap))),
        fact("token budget", format!("{} (full: {})", limit(h.max_num_tokens), at(h.at_token_budget))),
        match (h.queued, h.mean_queued) {
            (Some(q), Some(mean)) => fact("queue", format!("requests waiting in {} of iterations, {mean:.1} on average", text::percent(q))),
            _ => missing("queue", "the iteration rows do not record waiting requests"),
        },
        match h.kv_peak {
            Some(kv) => fact("KV cache peak", text::percent(kv)),
            None => missing("KV cache peak", "the iteration rows have no KV block totals"),
        },
    ];
    if let Some(s) = &h.suggestion {
        let gain = s.gain.map_or("not estimable".to_string(), |g| format!("{g:.2}×"));
        facts.push(fact(
            "suggested",
            format!(
                "--max-batch-size {} --max-num-tokens {} (the KV cache holds {} requests of {:.1} blocks); expected gain {gain}",
                s.max_batch_size, s.max_num_tokens, s.kv_fit, s.blocks_per_request
            ),
        ));
        facts.push(fact("basis", s.basis.clone()));
    }
    vec![Block::Facts(facts)]
}

/// `lumen bench ...` from the trace's command with the named flags set to new values.
pub fn command_with(trace: &TraceData, flags: &[(&str, u64)]) -> String {
    let command = trace.meta("command").unwrap_or("lumen bench throughput ...");
    let mut words: Vec<String> = Vec::new();
    let mut skip = false;
    for word in command.split_whitespace() {
        if std::mem::take(&mut skip) {
            continue;
        }
        let flag = word.split('=').next().unwrap_or(word);
        if flags.iter().any(|(f, _)| *f == flag) {
            skip = !word.contains('=');
            continue;
        }
        words.push(word.to_string());
    }
    let program = words.first().and_then(|w| w.rsplit('/').next()).map(str::to_string);
    if let (Some(first), Some(program)) = (words.first_mut(), program) {
        *first = program;
    }
    for (flag, value) in flags {
        words.push(format!("{flag} {value}"));
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_test_support::rows::iteration;

    fn meta(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// `n` decode iterations at a full batch of `cap` with 1.8% of the KV cache used.
    fn capped(cap: u64, n: u64) -> TraceData {
        let row = |i: u64| IterationRow {
            ctx_reqs: 0,
            gen_reqs: cap,
            ctx_tokens: 0,
            gen_tokens: cap,
            kv_used_blocks: 18 * cap / 64,
            kv_total_blocks: 1_000,
            queued_reqs: Some(100),
            ..iteration(i, i * 10_000_000, i * 10_000_000 + 7_000_000, 7.0)
        };
        TraceData {
            meta: meta(&[
                ("max_batch_size", &cap.to_string()),
                ("max_num_tokens", "2048"),
                ("command", "/x/target/release/lumen bench throughput --model llama-3.1-8b --max-batch-size 64 --dataset d.jsonl"),
            ]),
            iterations: (0..n).map(row).collect(),
            ..TraceData::default()
        }
    }

    #[test]
    fn a_full_batch_with_an_idle_kv_cache_gets_a_larger_batch_blind() {
        let h = analyze(&capped(64, 10), &StepWindows::default(), None).get().cloned().unwrap();
        assert_eq!((h.at_batch_cap, h.queued, h.kv_peak), (Some(1.0), Some(1.0), Some(0.018)));
        let s = h.suggestion.unwrap();
        // 18 blocks per 64 requests: 0.28 blocks each, so at least one; 900 requests fit.
        assert_eq!((s.kv_fit, s.max_batch_size, s.max_num_tokens, s.gain), (900, 256, 2048, None));
        assert!(s.basis.contains("up to 4×"), "{}", s.basis);
    }

    #[test]
    fn with_bytes_flops_and_peaks_the_roofline_picks_the_knee() {
        let mut trace = capped(64, 10);
        for r in &mut trace.iterations {
            r.kv_total_blocks = 1_000_000;
            r.kv_used_blocks = 64 * 16;
            r.weight_bytes = Some(16_060_000_000);
            r.kv_bytes_read = Some(64 * 25_000_000);
            r.flops = Some(64.0 * 16e9);
            r.host_ms = 7.3;
        }
        let peaks = Peaks {
            gpu: "H200".into(),
            dram_gb_s: 4800.0,
            dram_source: "datasheet".into(),
            tensor_tflops: 989.0,
            fp8_tflops: Some(1979.0),
            fp32_tflops: 67.0,
        };
        let s = analyze(&trace, &StepWindows::default(), Some(&peaks)).get().cloned().unwrap().suggestion.unwrap();
        assert_eq!(s.max_batch_size, 1024);
        assert_eq!(s.max_num_tokens, 8192);
        let gain = s.gain.unwrap();
        assert!((1.8..2.2).contains(&gain), "{gain}");
        assert!(s.basis.starts_with("roofline"), "{}", s.basis);
    }

    #[test]
    fn varied_batches_without_peaks_fit_a_line() {
        let mut trace = capped(2, 6);
        trace.meta.push(("kv_block_size".into(), "16".into()));
        for (i, r) in trace.iterations.iter_mut().enumerate() {
            (r.gen_reqs, r.gen_tokens, r.kv_used_blocks, r.kv_total_blocks) = (1 + i as u64 % 2, 1 + i as u64 % 2, 2, 100);
            r.ctx_tokens = if i == 0 { 30 } else { 0 };
            r.ctx_reqs = u64::from(i == 0);
            r.host_ms = 1.0 + 0.1 * (r.ctx_tokens + r.gen_tokens) as f64;
        }
        let h = analyze(&trace, &StepWindows::default(), None).get().cloned().unwrap();
        let s = h.suggestion.expect("2 blocks per 2 requests, 90 fit");
        assert!(s.basis.starts_with("linear fit of iteration time over 3 batch sizes: 1000.0 µs + 100.0 µs per token"), "{}", s.basis);
        assert!(s.gain.unwrap() > 1.0);
    }

    #[test]
    fn the_command_to_try_replaces_the_flags() {
        let trace = capped(64, 1);
        assert_eq!(
            command_with(&trace, &[("--max-batch-size", 1024), ("--max-num-tokens", 8192)]),
            "lumen bench throughput --model llama-3.1-8b --dataset d.jsonl --max-batch-size 1024 --max-num-tokens 8192"
        );
    }

    #[test]
    fn without_rows_or_limits_it_says_why() {
        assert!(analyze(&TraceData::default(), &StepWindows::default(), None).get().is_none());
        let mut trace = capped(64, 3);
        trace.meta.clear();
        let h = analyze(&trace, &StepWindows::default(), None).get().cloned().unwrap();
        assert_eq!((h.at_batch_cap, h.suggestion), (None, None));
    }
}
