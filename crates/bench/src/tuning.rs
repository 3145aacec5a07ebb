//! The engine limits `bench throughput` picks when neither a flag nor `--config` sets them: the
//! largest batch the KV cache can hold for the dataset's mean request, and the token budget that
//! keeps such a batch's prefill and decode in one iteration, rounded as `trtllm-bench` rounds them.
//!
//! With `gb_tok` the KV cache GiB one token takes, `R` the requests whose mean sequence fits in the
//! KV share of the memory left after the weights:
//! ```text
//! gb_tok = 2·L·max(tp, kvh)·head_dim·b_kv / 2^30
//! R      = (M·tp·pp − P·b_w / 2^30)·f / (gb_tok·(ISL + OSL))
//! bs     = min(R, 4096) / pp ;  tok = min(bs·(1 + ISL/OSL), 32768)
//! ```
//! For latent attention (MLA) a token keeps one latent row of `width` values a layer, the same
//! row on every rank, so `2·max(tp, kvh)·head_dim` becomes `tp·width`: the cache holds what lumen
//! stores, not the keys and values MLA compresses.
//! `max_batch_size` rounds `bs` up to 32 (at least 64) below 256, to 128 below 1024, else to 256;
//! `max_num_tokens` rounds `tok` up to 256 (at least 2048) below 4096, to 512 below 8192, else to
//! 1024. lumen always chunks prefill, so no request's prompt has to fit one iteration.

use anyhow::{ensure, Result};

/// What the limits are computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct TuningInputs {
    /// Attention layers, KV heads and head size.
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// For latent attention, the values of the latent row a token keeps in each layer (then
    /// `kv_heads` and `head_dim` do not size the cache).
    pub latent_width: Option<usize>,
    /// Parameters, and bytes per weight (2 for bf16, 1 for FP8).
    pub params: usize,
    pub weight_bytes: f64,
    /// Bytes per KV cache element.
    pub kv_bytes: f64,
    pub tensor_parallel: usize,
    pub pipeline_parallel: usize,
    /// The dataset's mean prompt and output lengths.
    pub mean_isl: f64,
    pub mean_osl: f64,
    /// The KV cache's share of the memory left after the weights.
    pub kv_fraction: f64,
    /// One GPU's total memory in GiB.
    pub gpu_memory_gib: f64,
}

/// The chosen limits, with the figures that led to them.
#[derive(Debug, Clone, PartialEq)]
pub struct TunedLimits {
    pub max_batch_size: usize,
    pub max_num_tokens: usize,
    /// Requests of the mean length the KV cache holds (`R`).
    pub fitting_requests: f64,
    /// GiB of KV cache per token (`gb_tok`).
    pub kv_gib_per_token: f64,
}

impl TunedLimits {
    /// One line saying what was chosen and why, for the benchmark's status output. Where a
    /// 16-bit cache is what holds the batch below the 4,096 cap, it says how many requests an FP8
    /// cache would hold (at 2048/128 on an H100 that took FP8 weights from 2,237 to 2,704 tok/s).
    pub fn explain(&self, inputs: &TuningInputs) -> String {
        let fp8_cache = if inputs.kv_bytes > 1.0 && self.fitting_requests < 4096.0 {
            format!("; an FP8 KV cache (--kv-cache-dtype fp8) would hold about {:.0}", self.fitting_requests * inputs.kv_bytes)
        } else {
            String::new()
        };
        format!(
            "max batch size {} and max num tokens {} (the KV cache holds about {:.0} requests of {:.0}+{:.0} tokens: {:.2} GiB \
             of {:.1} GiB left after {:.2} GiB of weights, at {:.1} KiB per token{fp8_cache}; --max-batch-size and --max-num-tokens \
             replace them)",
            self.max_batch_size,
            self.max_num_tokens,
            self.fitting_requests,
            inputs.mean_isl,
            inputs.mean_osl,
            inputs.kv_fraction * free_gib(inputs),
            free_gib(inputs),
            weights_gib(inputs),
            self.kv_gib_per_token * (1u64 << 20) as f64,
        )
    }
}

fn weights_gib(i: &TuningInputs) -> f64 {
    i.params as f64 * i.weight_bytes / (1u64 << 30) as f64
}

fn free_gib(i: &TuningInputs) -> f64 {
    i.gpu_memory_gib * (i.tensor_parallel * i.pipeline_parallel) as f64 - weights_gib(i)
}

/// Rounds `value` up to a multiple of `step`.
fn round_up(value: f64, step: f64) -> usize {
    ((value / step).ceil() * step) as usize
}

/// The limits for `inputs`; an error when the weights leave no room for one request.
pub fn tune(inputs: &TuningInputs) -> Result<TunedLimits> {
    let i = inputs;
    ensure!(
        i.mean_osl > 0.0 && i.mean_isl >= 0.0,
        "the dataset's mean lengths ({} in, {} out) cannot size a batch",
        i.mean_isl,
        i.mean_osl
    );
    ensure!(i.tensor_parallel >= 1 && i.pipeline_parallel >= 1, "parallel sizes must be at least 1");
    let values_per_layer = match i.latent_width {
        Some(width) => i.tensor_parallel * width,
        None => 2 * i.tensor_parallel.max(i.kv_heads) * i.head_dim,
    };
    let kv_gib_per_token = i.layers as f64 * values_per_layer as f64 * i.kv_bytes / (1u64 << 30) as f64;
    let fitting_requests = free_gib(i) * i.kv_fraction / (kv_gib_per_token * (i.mean_isl + i.mean_osl));
    ensure!(
        fitting_requests >= 1.0,
        "the KV cache left after {:.2} GiB of weights on {:.1} GiB of GPU memory holds {fitting_requests:.2} requests of the dataset's mean \
         length ({:.0}+{:.0} tokens), expected room for at least one; give --max-batch-size and --max-num-tokens, or a smaller model",
        weights_gib(i),
        i.gpu_memory_gib,
        i.mean_isl,
        i.mean_osl
    );
    let batch = fitting_requests.min(4096.0) / i.pipeline_parallel as f64;
    let tokens = (batch * (1.0 + i.mean_isl / i.mean_osl)).min(32768.0);
    let max_batch_size = match batch {
        b if b < 256.0 => round_up(b, 32.0).max(64),
        b if b < 1024.0 => round_up(b, 128.0),
        b => round_up(b, 256.0),
    };
    let max_num_tokens = match tokens {
        t if t < 4096.0 => round_up(t, 256.0).max(2048),
        t if t < 8192.0 => round_up(t, 512.0),
        t => round_up(t, 1024.0),
    };
    Ok(TunedLimits { max_batch_size, max_num_tokens, fitting_requests, kv_gib_per_token })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama-3.1-8B's shape in bf16 on an H200 (143,771 MiB).
    fn llama_8b(isl: f64, osl: f64) -> TuningInputs {
        TuningInputs {
            layers: 32,
            kv_heads: 8,
            head_dim: 128,
            latent_width: None,
            params: 8_030_261_248,
            weight_bytes: 2.0,
            kv_bytes: 2.0,
            tensor_parallel: 1,
            pipeline_parallel: 1,
            mean_isl: isl,
            mean_osl: osl,
            kv_fraction: 0.9,
            gpu_memory_gib: 143_771.0 / 1024.0,
        }
    }

    #[test]
    fn the_8b_shape_on_an_h200_at_128_128_gets_3840_and_7680() {
        let t = tune(&llama_8b(128.0, 128.0)).unwrap();
        assert!((t.fitting_requests - 3613.0).abs() < 5.0, "{t:?}");
        assert_eq!((t.max_batch_size, t.max_num_tokens), (3840, 7680));
    }

    #[test]
    fn each_range_rounds_to_its_own_step() {
        // 2048/128: requests 8.5 times as long, 425 of them fit; 17 tokens per request.
        let long_prompts = tune(&llama_8b(2048.0, 128.0)).unwrap();
        assert!((long_prompts.fitting_requests - 425.0).abs() < 1.0, "{long_prompts:?}");
        assert_eq!((long_prompts.max_batch_size, long_prompts.max_num_tokens), (512, 7680));
        let long_outputs = tune(&llama_8b(128.0, 2048.0)).unwrap();
        assert_eq!((long_outputs.max_batch_size, long_outputs.max_num_tokens), (512, 2048));
        // A tiny GPU: fewer than 256 requests rounds to 32, never below 64; tokens never below 2048.
        let small = tune(&TuningInputs { gpu_memory_gib: 16.0, ..llama_8b(128.0, 128.0) }).unwrap();
        assert_eq!((small.max_batch_size, small.max_num_tokens), (64, 2048));
        let mid = tune(&TuningInputs { gpu_memory_gib: 20.0, ..llama_8b(128.0, 128.0) }).unwrap();
        assert!((mid.fitting_requests - 145.2).abs() < 1.0, "{mid:?}");
        assert_eq!((mid.max_batch_size, mid.max_num_tokens), (160, 2048));
        // Beyond 4,096 requests the batch stops growing, and tokens stop at 32,768.
        let huge = tune(&TuningInputs { gpu_memory_gib: 4096.0, ..llama_8b(2048.0, 128.0) }).unwrap();
        assert_eq!((huge.max_batch_size, huge.max_num_tokens), (4096, 32768));
    }

    #[test]
    fn latent_attention_sizes_the_cache_by_its_latent_row() {
        // deepseek-v3+layers=5 in bf16 on an H100 (81,559 MiB): 128 heads of 128 would give 160
        // KiB a token and about 680 requests of 128+128; the 576-value latent rows take 5.6 KiB.
        let deepseek = TuningInputs {
            layers: 5,
            kv_heads: 128,
            head_dim: 128,
            latent_width: Some(576),
            params: 26_620_000_000,
            gpu_memory_gib: 81_559.0 / 1024.0,
            ..llama_8b(128.0, 128.0)
        };
        let t = tune(&deepseek).unwrap();
        assert!((t.kv_gib_per_token * (1u64 << 20) as f64 - 5.625).abs() < 1e-9, "{t:?}");
        assert!((t.fitting_requests - 19_700.0).abs() < 50.0, "{t:?}");
        assert_eq!((t.max_batch_size, t.max_num_tokens), (4096, 8192));
        // Under tensor parallelism every rank keeps the whole latent row.
        let tp2 = tune(&TuningInputs { tensor_parallel: 2, ..deepseek }).unwrap();
        assert!((tp2.kv_gib_per_token - 2.0 * t.kv_gib_per_token).abs() < 1e-15, "{tp2:?}");
    }

    #[test]
    fn fp8_weights_and_cache_double_the_room() {
        let bf16 = tune(&llama_8b(128.0, 128.0)).unwrap();
        let fp8 = tune(&TuningInputs { weight_bytes: 1.0, kv_bytes: 1.0, ..llama_8b(128.0, 128.0) }).unwrap();
        assert!(fp8.fitting_requests > 2.0 * bf16.fitting_requests, "{fp8:?} vs {bf16:?}");
        assert_eq!(fp8.max_batch_size, 4096);
    }

    /// A bf16 cache that holds the batch below the cap: the line names what an FP8 cache would
    /// hold; an FP8 cache, or a batch at the cap, is not told so.
    #[test]
    fn the_explanation_names_an_fp8_cache_where_the_cache_holds_the_batch() {
        let inputs = llama_8b(2048.0, 128.0);
        let line = tune(&inputs).unwrap().explain(&inputs);
        assert!(
            line.contains("holds about 425 requests of 2048+128") && line.contains("(--kv-cache-dtype fp8) would hold about 850"),
            "{line}"
        );
        let fp8 = TuningInputs { kv_bytes: 1.0, ..llama_8b(2048.0, 128.0) };
        assert!(!tune(&fp8).unwrap().explain(&fp8).contains("--kv-cache-dtype"));
        let capped = TuningInputs { gpu_memory_gib: 4096.0, ..llama_8b(128.0, 128.0) };
        assert!(!tune(&capped).unwrap().explain(&capped).contains("--kv-cache-dtype"));
    }

    #[test]
    fn a_model_that_leaves_no_room_is_an_error_naming_the_flags() {
        let e = tune(&TuningInputs { gpu_memory_gib: 14.9, ..llama_8b(128.0, 128.0) }).unwrap_err().to_string();
        assert!(e.contains("--max-batch-size") && e.contains("at least one"), "{e}");
        let e = tune(&llama_8b(128.0, 0.0)).unwrap_err().to_string();
        assert!(e.contains("mean lengths"), "{e}");
    }
}
