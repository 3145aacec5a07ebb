//! Tensor parallelism on the CPU (`lumen_model::tensor_parallel`): the model split over N ranks,
//! with the all-reduces and the logit gather done in process, gives the unsharded decoder's
//! logits within float tolerance, over two sequences batched together through chunked prefill
//! and decode steps on one paged layout; models and rank counts that cannot be split are refused
//! with the reason.

use lumen_backend::AttentionSeq;
use lumen_model::plan::{ModelPlan, Quantization};
use lumen_model::presets::{preset_config, random_tensor};
use lumen_model::tensor_parallel::{kv_heads_of_rank, rank_config, rank_plan, TensorParallel};
use lumen_model::weights::assemble_cpu;
use lumen_model::{load_model_with, Decoder, Device, Executor, ForwardBatch, LoadOptions, ModelConfig};

const BLOCK: usize = 4;

/// Sequence A's and B's chunk sizes at each step: prefill chunks, then decode steps, with one
/// sequence prefilling while the other decodes.
const STEPS: [(usize, usize); 5] = [(9, 3), (5, 1), (1, 7), (1, 1), (1, 1)];

/// Logits of every token of every step, run through `forward`: sequence A and B batched
/// together, each with its own (interleaved) blocks of one cache.
fn stepped_logits(vocab: usize, forward: &mut dyn FnMut(&ForwardBatch) -> Vec<f32>) -> Vec<f32> {
    let blocks_per_seq = 20usize.div_ceil(BLOCK);
    let tables: [Vec<u32>; 2] = [0, 1].map(|s| (0..blocks_per_seq as u32).map(|b| 2 * b + s).collect());
    let (mut at, mut out) = ([0usize; 2], Vec::new());
    for (a, b) in STEPS {
        let (mut tokens, mut positions, mut slots, mut seqs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (s, n) in [a, b].into_iter().enumerate() {
            seqs.push(AttentionSeq { start: tokens.len(), len: n, first_pos: at[s], block_table: &tables[s] });
            for p in at[s]..at[s] + n {
                tokens.push(((p * 131 + s * 71 + 5) % vocab) as u32);
                positions.push(p);
                slots.push(tables[s][p / BLOCK] as usize * BLOCK + p % BLOCK);
            }
            at[s] += n;
        }
        let rows: Vec<usize> = (0..tokens.len()).collect();
        out.extend(forward(&ForwardBatch { tokens: &tokens, positions: &positions, slots: &slots, seqs: &seqs, logit_rows: &rows }));
    }
    out
}

fn unsharded_logits(decoder: &Decoder) -> Vec<f32> {
    let mut kv = decoder.new_kv_storage(2 * 20usize.div_ceil(BLOCK), BLOCK);
    stepped_logits(decoder.config.vocab_size, &mut |batch| decoder.forward(batch, &mut kv))
}

fn sharded_logits(decoder: &Decoder, n: usize) -> Vec<f32> {
    let tp = TensorParallel::shard(decoder, n).unwrap_or_else(|e| panic!("{} over {n} ranks: {e:#}", decoder.config.arch));
    assert_eq!(tp.num_ranks(), n);
    tp.allocate_kv(2 * 20usize.div_ceil(BLOCK), BLOCK, false).unwrap();
    stepped_logits(decoder.config.vocab_size, &mut |batch| tp.forward(batch).unwrap())
}

/// The model of `config` with preset-drawn weights, each rank filled from its own plan (the
/// checkpoint's parts cut to the rank's rows and columns), split over `n` ranks.
fn plan_sharded_logits(config: &ModelConfig, n: usize) -> Vec<f32> {
    let plan = ModelPlan::for_config(config);
    let ranks = (0..n)
        .map(|r| {
            let rank = rank_config(config, n);
            let rank_plan = rank_plan(config, &plan, r, n, true).unwrap();
            let (weights, tied) = assemble_cpu(&rank, &rank_plan, &mut |name, shape| Ok(random_tensor(0, name, shape))).unwrap();
            Decoder::new(rank, weights, tied, Quantization::None)
        })
        .collect();
    let tp = TensorParallel::from_ranks(config, ranks).unwrap();
    tp.allocate_kv(2 * 20usize.div_ceil(BLOCK), BLOCK, false).unwrap();
    stepped_logits(config.vocab_size, &mut |batch| tp.forward(batch).unwrap())
}

/// A decoder of `config` with preset-drawn weights.
fn decoder_of(config: ModelConfig) -> Decoder {
    let plan = ModelPlan::for_config(&config);
    let (weights, tied) = assemble_cpu(&config, &plan, &mut |name, shape| Ok(random_tensor(0, name, shape))).unwrap();
    Decoder::new(config, weights, tied, Quantization::None)
}

fn assert_close(what: &str, want: &[f32], got: &[f32]) {
    assert_eq!(want.len(), got.len(), "{what}");
    let rms = (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt();
    let worst = want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= 1e-4 * rms.max(1.0), "{what}: sharded logits differ from the unsharded ones by {worst} (rms {rms})");
}

/// Every dense preset shape, over each rank count of 2, 4 and 8 that divides its heads (the others
/// are refused, below): `tiny` (tied head; 2 KV heads, split at N=2, replicated at N=4),
/// `tiny-qwen2` (q/k/v biases), `tiny-qwen3` (per-head q/k norms), `tiny-mistral` (one KV head,
/// replicated on every rank; sliding window), `smollm2-135m` (9 heads, 3 KV heads: none of 2, 4
/// or 8 divides 9, so N=3, one KV head per rank, at two layers), and the tiny shape widened to 8
/// heads over 2 KV heads (the 4:1 grouping of the Llama 3 presets, too large to draw here) for
/// N=8, each KV head replicated on four ranks.
#[test]
fn sharded_forward_gives_the_unsharded_logits() {
    let wide = ModelConfig { num_heads: 8, head_dim: 8, ..preset_config("tiny").unwrap() };
    let cases: [(&str, ModelConfig, &[usize]); 6] = [
        ("tiny", preset_config("tiny").unwrap(), &[2, 4]),
        ("tiny-qwen2", preset_config("tiny-qwen2").unwrap(), &[2, 4]),
        ("tiny-qwen3", preset_config("tiny-qwen3").unwrap(), &[2, 4]),
        ("tiny-mistral", preset_config("tiny-mistral").unwrap(), &[2, 4]),
        ("smollm2-135m+layers=2", preset_config("smollm2-135m+layers=2").unwrap(), &[3]),
        ("tiny, 8 heads", wide, &[2, 4, 8]),
    ];
    for (name, config, ranks) in cases {
        let decoder = decoder_of(config.clone());
        let want = unsharded_logits(&decoder);
        for &n in ranks {
            assert_close(&format!("{name} over {n} ranks"), &want, &sharded_logits(&decoder, n));
            assert_close(&format!("{name} over {n} ranks, filled from the rank plans"), &want, &plan_sharded_logits(&config, n));
        }
    }
}

/// The replication rule: with fewer KV heads than ranks, rank r keeps KV head ⌊r·kv/N⌋, which is
/// the one its query heads read; with more, the KV heads are split evenly.
#[test]
fn kv_heads_are_split_or_replicated_by_rank() {
    let of = |kv, n| (0..n).map(|r| kv_heads_of_rank(r, kv, n)).collect::<Vec<_>>();
    assert_eq!(of(1, 4), [(0, 1); 4]);
    assert_eq!(of(2, 8), [(0, 1), (0, 1), (0, 1), (0, 1), (1, 1), (1, 1), (1, 1), (1, 1)]);
    assert_eq!(of(8, 4), [(0, 2), (2, 2), (4, 2), (6, 2)]);
    // Query heads per rank over query heads per KV head gives the same KV head.
    let (heads, kv, n) = (8, 2, 8);
    for r in 0..n {
        assert_eq!(kv_heads_of_rank(r, kv, n).0, r * (heads / n) / (heads / kv));
    }
}

#[test]
fn models_and_rank_counts_that_cannot_be_split_are_refused_by_name() {
    let refusal = |decoder: &Decoder, n: usize| TensorParallel::shard(decoder, n).err().map(|e| e.to_string()).unwrap_or_default();
    let six_heads = decoder_of(ModelConfig { num_heads: 6, ..preset_config("tiny").unwrap() });
    let cases: [(&str, Decoder, usize, &str); 7] = [
        ("tiny", decoder_of(preset_config("tiny").unwrap()), 0, "at least one rank"),
        ("tiny", decoder_of(preset_config("tiny").unwrap()), 8, "8 ranks do not divide the 4 attention heads"),
        ("smollm2-135m", decoder_of(preset_config("smollm2-135m+layers=1").unwrap()), 2, "2 ranks do not divide the 9 attention heads"),
        ("tiny, 6 heads", six_heads, 3, "3 ranks cannot share 2 KV heads"),
        ("tiny-mixtral", loaded("tiny-mixtral", Quantization::None), 2, "tensor parallelism supports dense models so far"),
        ("tiny-deepseek-v3", loaded("tiny-deepseek-v3", Quantization::None), 2, "tensor parallelism supports dense models so far"),
        ("tiny-qwen3 in fp8", loaded("tiny-qwen3", Quantization::Fp8), 2, "tensor parallelism runs unquantized weights so far"),
    ];
    for (name, decoder, n, says) in cases {
        let got = refusal(&decoder, n);
        assert!(got.contains(says), "{name} over {n} ranks: got {got:?}, want {says:?}");
    }
}

/// The CPU decoder of a model spec, its projections quantized as asked.
fn loaded(spec: &str, quantization: Quantization) -> Decoder {
    let options = LoadOptions { device: Device::Cpu, quantization };
    match load_model_with(spec, options).unwrap_or_else(|e| panic!("{spec}: {e:#}")).executor {
        Executor::Cpu(decoder) => decoder,
        Executor::Cuda(_) | Executor::CudaRanks(_) => unreachable!("loaded on the CPU"),
    }
}

/// A rank whose pass panics (here rank 1, given one layer of a two-layer model) breaks the
/// collectives: rank 0 stops waiting for it, the pass fails naming the rank, and so does the next,
/// at once, instead of every rank waiting forever.
#[test]
fn a_failing_rank_ends_the_pass_with_an_error_not_a_hang() {
    let config = preset_config("tiny").unwrap();
    let plan = ModelPlan::for_config(&config);
    let rank_decoder = |config: &ModelConfig, plan: &ModelPlan, r: usize| {
        let rank = rank_config(config, 2);
        let rank_plan = rank_plan(config, plan, r, 2, true).unwrap();
        let (weights, tied) = assemble_cpu(&rank, &rank_plan, &mut |name, shape| Ok(random_tensor(0, name, shape))).unwrap();
        Decoder::new(rank, weights, tied, Quantization::None)
    };
    let short = ModelConfig { num_layers: 1, ..config.clone() };
    let ranks = vec![rank_decoder(&config, &plan, 0), rank_decoder(&short, &ModelPlan::for_config(&short), 1)];
    let tp = TensorParallel::from_ranks(&config, ranks).unwrap();
    tp.allocate_kv(8, BLOCK, false).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let table = [0u32, 1];
        let seqs = [AttentionSeq { start: 0, len: 3, first_pos: 0, block_table: &table }];
        let (tokens, positions, slots, rows) = ([1u32, 2, 3], [0usize, 1, 2], [0usize, 1, 2], [2usize]);
        let batch = ForwardBatch { tokens: &tokens, positions: &positions, slots: &slots, seqs: &seqs, logit_rows: &rows };
        let first = tp.forward(&batch).map(|_| ()).map_err(|e| e.to_string());
        let second = tp.forward(&batch).map(|_| ()).map_err(|e| e.to_string());
        let _ = tx.send((first, second));
    });
    let (first, second) = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the passes end instead of hanging");
    let first = first.expect_err("rank 1 has no second layer");
    assert!(first.contains("tensor-parallel rank 1 failed"), "{first}");
    assert!(second.expect_err("the collectives stay broken").contains("rank 1 failed"));
}
