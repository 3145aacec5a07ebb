//! What FP8 costs in accuracy on the real SmolLM2-135M-Instruct model (the GGUF that
//! `scripts/setup.sh` fetches), over the English text in `crates/model/tests/fixtures/english.txt`
//! (about 1,900 tokens, written for these tests), read in windows of 512 tokens, each from an
//! empty cache. At every position the next-token distributions of the FP8 model (layer weights
//! and product inputs in E4M3, `--quantization fp8`) and of the unquantized one are compared:
//! top-1 agreement, the mean KL divergence KL(unquantized ‖ FP8), and the perplexity of the text
//! under each; the same for an FP8 KV cache (`--kv-cache-dtype fp8`) against the f32 cache. On the
//! CPU the unquantized model runs in f32.
//!
//! The bounds (docs/testing.md says why): top-1 agreement ≥ 0.85, mean KL ≤ 0.05 nats, FP8
//! perplexity within 5% of the unquantized one.

use lumen_backend::AttentionSeq;
use lumen_model::{default_model_path, load_model_with, Device, ForwardBatch, LoadOptions, Model, Quantization};

const WINDOW: usize = 512;
const BLOCK: usize = 16;

/// The text's tokens, read by the model's own tokenizer.
fn text_tokens(model: &Model) -> Vec<u32> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../model/tests/fixtures/english.txt")).unwrap();
    model.tokenizer.as_ref().expect("the GGUF has a tokenizer").encode(&text, false)
}

/// Log-probabilities of every position of `window`, on the CPU, the KV cache rounded as an FP8
/// cache with `kv_fp8`.
fn cpu_log_probs(model: &Model, window: &[u32], kv_fp8: bool) -> Vec<Vec<f64>> {
    let decoder = model.cpu_decoder().unwrap();
    let kv = decoder.new_kv_storage(window.len().div_ceil(BLOCK), BLOCK);
    let mut kv = if kv_fp8 { kv.storing_fp8() } else { kv };
    let table: Vec<u32> = (0..window.len().div_ceil(BLOCK) as u32).collect();
    let positions: Vec<usize> = (0..window.len()).collect();
    let seqs = [AttentionSeq { start: 0, len: window.len(), first_pos: 0, block_table: &table }];
    let batch = ForwardBatch { tokens: window, positions: &positions, slots: &positions, seqs: &seqs, logit_rows: &positions };
    let logits = decoder.forward(&batch, &mut kv);
    logits.chunks(model.config().vocab_size).map(log_softmax).collect()
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row.iter().map(|&v| v as f64 - max - sum.ln()).collect()
}

fn argmax(row: &[f64]) -> usize {
    row.iter().enumerate().fold((0, f64::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
}

/// Agreement, mean KL and both perplexities of `quantized` against `reference`.
#[derive(Debug, Default)]
struct Accuracy {
    positions: usize,
    top1_agree: usize,
    kl_sum: f64,
    nll_reference: f64,
    nll_quantized: f64,
}

impl Accuracy {
    fn add(&mut self, reference: &[Vec<f64>], quantized: &[Vec<f64>], window: &[u32]) {
        for (p, (r, q)) in reference.iter().zip(quantized).enumerate().take(window.len() - 1) {
            self.positions += 1;
            self.top1_agree += (argmax(r) == argmax(q)) as usize;
            self.kl_sum += r.iter().zip(q).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
            let next = window[p + 1] as usize;
            self.nll_reference -= r[next];
            self.nll_quantized -= q[next];
        }
    }

    fn agreement(&self) -> f64 {
        self.top1_agree as f64 / self.positions as f64
    }
    fn mean_kl(&self) -> f64 {
        self.kl_sum / self.positions as f64
    }
    fn perplexities(&self) -> (f64, f64) {
        ((self.nll_reference / self.positions as f64).exp(), (self.nll_quantized / self.positions as f64).exp())
    }
}

fn load(quantization: Quantization) -> Model {
    let path = default_model_path();
    load_model_with(path.to_str().unwrap(), LoadOptions { device: Device::Cpu, quantization })
        .unwrap_or_else(|e| panic!("{e:#} (run scripts/setup.sh)"))
}

/// The measures of `quantized` (its cache FP8 with `kv_fp8`) against `reference` over the text,
/// printed under `what`.
fn measure(what: &str, reference: &Model, quantized: &Model, kv_fp8: bool) -> Accuracy {
    let tokens = text_tokens(reference);
    assert!(tokens.len() > 1500, "the text has {} tokens", tokens.len());
    let mut accuracy = Accuracy::default();
    for window in tokens.chunks(WINDOW).filter(|w| w.len() > 1) {
        accuracy.add(&cpu_log_probs(reference, window, false), &cpu_log_probs(quantized, window, kv_fp8), window);
    }
    let (ppl_reference, ppl_quantized) = accuracy.perplexities();
    eprintln!(
        "{what} over {} positions: top-1 agreement {:.4}, mean KL {:.4} nats, perplexity {ppl_reference:.3} and {ppl_quantized:.3}",
        accuracy.positions,
        accuracy.agreement(),
        accuracy.mean_kl()
    );
    accuracy
}

/// The bounds of the module doc, and a nonzero KL (the rounding applied).
fn assert_within_bounds(accuracy: &Accuracy) {
    let (ppl_reference, ppl_quantized) = accuracy.perplexities();
    assert!(accuracy.agreement() >= 0.85, "{accuracy:?}");
    assert!(accuracy.mean_kl() <= 0.05, "{accuracy:?}");
    assert!(ppl_quantized <= ppl_reference * 1.05, "{accuracy:?}");
    assert!(accuracy.mean_kl() > 0.0, "FP8 changed nothing: the quantization did not apply");
}

#[test]
fn fp8_on_the_cpu_stays_close_to_f32_on_english_text() {
    let (reference, quantized) = (load(Quantization::None), load(Quantization::Fp8));
    assert_within_bounds(&measure("FP8 weights against f32", &reference, &quantized, false));
}

#[test]
fn an_fp8_kv_cache_on_the_cpu_stays_close_to_f32_on_english_text() {
    let reference = load(Quantization::None);
    assert_within_bounds(&measure("an FP8 KV cache against f32", &reference, &reference, true));
}
