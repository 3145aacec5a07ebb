//! Tensor parallelism on the CPU backend: a loaded dense decoder split, as Megatron splits it, into
//! N rank decoders that run over the same batch and paged KV layout, with the collectives done in
//! process.
//!
//! Each rank holds:
//! - the q rows of its `heads / N` query heads and the k/v rows (and biases) of the KV heads those
//!   query heads read: column-parallel QKV;
//! - the gate and up rows of its `intermediate / N` columns: column-parallel gate/up;
//! - the matching columns of the output and down projections: row-parallel, so each rank's
//!   product is a partial sum, and an all-reduce (the sum over ranks, in rank order) follows each;
//!   the output projection's bias is rank 0's alone, so that the sum counts it once;
//! - `vocab / N` rows of the embedding (a token outside them embeds to zeros, and an all-reduce
//!   joins the ranks' rows) and of the output head (the logits are gathered, rank after rank).
//!
//! KV heads: rank `r` keeps `max(kv / N, 1)` KV heads starting at `⌊r·kv / N⌋`. With at least as
//! many KV heads as ranks they are split evenly (`kv` must divide by N); with fewer, each KV head
//! is replicated on `N / kv` ranks (N must divide by `kv`), and rank r's query heads are exactly
//! those that read its one KV head. The norms and the residual stream are replicated: they are
//! computed once, since every rank would compute the same values.

use crate::config::ModelConfig;
use crate::llama::{Decoder, ForwardBatch, GroupedScratch};
use crate::plan::{Attention, FeedForward, Head, Layer, Quantization, SelfAttention, Weights};
use anyhow::{bail, ensure, Result};
use lumen_backend::cpu::{self, PackedMatrix};
use lumen_backend::KvStorage;

/// A dense decoder split into `ranks.len()` rank decoders; each rank's config holds its own
/// share of heads, KV heads, intermediate columns and vocabulary.
pub struct TensorParallel {
    /// The unsharded model's config.
    pub config: ModelConfig,
    ranks: Vec<Decoder>,
}

/// The paged KV cache of every rank: the same blocks and slots, each rank's own KV heads.
pub struct RankKv(Vec<KvStorage>);

/// Rank `r`'s share of `kv` KV heads over `ranks` ranks: its first KV head and how many it keeps.
pub fn kv_heads_of_rank(r: usize, kv: usize, ranks: usize) -> (usize, usize) {
    (r * kv / ranks, (kv / ranks).max(1))
}

/// The rows `[start, start + len)` of row-major `[_, cols]` values.
fn rows(values: &[f32], cols: usize, start: usize, len: usize) -> Vec<f32> {
    values[start * cols..(start + len) * cols].to_vec()
}

/// The columns `[start, start + len)` of row-major `[_, cols]` values.
fn columns(values: &[f32], cols: usize, start: usize, len: usize) -> Vec<f32> {
    values.chunks(cols).flat_map(|row| &row[start..start + len]).copied().collect()
}

/// The sum over ranks, in rank order, of each rank's partial result, into `out`.
fn all_reduce(partials: &[Vec<f32>], out: &mut [f32]) {
    out.copy_from_slice(&partials[0]);
    for p in &partials[1..] {
        out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
    }
}

impl TensorParallel {
    /// Splits `decoder` over `n` ranks; fails, saying why, for a model or an `n` that cannot be split.
    pub fn shard(decoder: &Decoder, n: usize) -> Result<Self> {
        let c = &decoder.config;
        if c.moe.is_some() || c.mla.is_some() {
            bail!(
                "tensor parallelism supports dense models so far; {} is {}",
                c.arch,
                if c.mla.is_some() { "latent-attention" } else { "mixture-of-experts" }
            );
        }
        ensure!(n > 0, "tensor parallelism needs at least one rank");
        ensure!(
            decoder.quantization == Quantization::None,
            "tensor parallelism runs unquantized weights so far, not {}",
            decoder.quantization
        );
        ensure!(!c.qk_norm_full_width, "tensor parallelism cannot split a q/k norm that spans every head");
        ensure!(c.num_heads.is_multiple_of(n), "{n} ranks do not divide the {} attention heads", c.num_heads);
        let kv = c.num_kv_heads;
        ensure!(kv.is_multiple_of(n) || n.is_multiple_of(kv), "{n} ranks cannot share {kv} KV heads: one of the two must divide the other");
        ensure!(c.intermediate_size.is_multiple_of(n), "{n} ranks do not divide the {} intermediate columns", c.intermediate_size);
        ensure!(c.vocab_size.is_multiple_of(n), "{n} ranks do not divide the vocabulary of {}", c.vocab_size);
        let ranks = (0..n).map(|r| Self::rank(decoder, r, n)).collect::<Result<_>>()?;
        Ok(TensorParallel { config: c.clone(), ranks })
    }

    /// Rank `r` of `n`: its config and its slices of every weight.
    fn rank(decoder: &Decoder, r: usize, n: usize) -> Result<Decoder> {
        let c = &decoder.config;
        let (h, d) = (c.hidden_size, c.head_dim);
        let heads = c.num_heads / n;
        let (kv0, kvs) = kv_heads_of_rank(r, c.num_kv_heads, n);
        let f = c.intermediate_size / n;
        let vocab = c.vocab_size / n;
        let w = &decoder.weights;
        // q rows of the rank's heads, then the k rows and the v rows of its KV heads.
        let qkv_rows = |values: &[f32], cols: usize| {
            let (q, k) = (c.num_heads * d, c.num_kv_heads * d);
            let mut out = rows(values, cols, r * heads * d, heads * d);
            out.extend(rows(values, cols, q + kv0 * d, kvs * d));
            out.extend(rows(values, cols, q + k + kv0 * d, kvs * d));
            out
        };
        let layers = w
            .layers
            .iter()
            .map(|l| {
                let SelfAttention::Grouped(a) = &l.attention else { bail!("tensor parallelism supports dense models so far") };
                let FeedForward::Dense { gate_up, down } = &l.feed_forward else {
                    bail!("tensor parallelism supports dense models so far")
                };
                let attention = Attention {
                    qkv: PackedMatrix::pack(&qkv_rows(&a.qkv.unpack(), h), (heads + 2 * kvs) * d, h),
                    qkv_bias: a.qkv_bias.as_ref().map(|b| qkv_rows(b, 1)),
                    q_norm: a.q_norm.clone(),
                    k_norm: a.k_norm.clone(),
                    output: PackedMatrix::pack(&columns(&a.output.unpack(), c.num_heads * d, r * heads * d, heads * d), h, heads * d),
                    output_bias: a.output_bias.clone().filter(|_| r == 0),
                    sinks: a.sinks.as_ref().map(|s| s[r * heads..(r + 1) * heads].to_vec()),
                };
                let full = gate_up.unpack();
                let mut rank_gate_up = rows(&full, h, r * f, f);
                rank_gate_up.extend(rows(&full, h, c.intermediate_size + r * f, f));
                let feed_forward = FeedForward::Dense {
                    gate_up: PackedMatrix::pack(&rank_gate_up, 2 * f, h),
                    down: PackedMatrix::pack(&columns(&down.unpack(), c.intermediate_size, r * f, f), h, f),
                };
                Ok(Layer {
                    input_norm: l.input_norm.clone(),
                    attention: SelfAttention::Grouped(attention),
                    post_attention_norm: l.post_attention_norm.clone(),
                    feed_forward,
                })
            })
            .collect::<Result<_>>()?;
        let head = match &w.head {
            Head::Own(m) => rows(&m.unpack(), h, r * vocab, vocab),
            Head::Tied => rows(&w.embed, h, r * vocab, vocab),
        };
        let weights = Weights {
            embed: rows(&w.embed, h, r * vocab, vocab),
            layers,
            final_norm: w.final_norm.clone(),
            head: Head::Own(PackedMatrix::pack(&head, vocab, h)),
        };
        let config = ModelConfig {
            num_heads: heads,
            num_kv_heads: kvs,
            intermediate_size: f,
            vocab_size: vocab,
            tie_word_embeddings: false,
            ..c.clone()
        };
        Ok(Decoder::new(config, weights, None, Quantization::None))
    }

    /// How many ranks the model is split over.
    pub fn num_ranks(&self) -> usize {
        self.ranks.len()
    }

    /// Each rank's KV store of `num_blocks` blocks of `block_size` slots.
    pub fn new_kv_storage(&self, num_blocks: usize, block_size: usize) -> RankKv {
        RankKv(self.ranks.iter().map(|d| d.new_kv_storage(num_blocks, block_size)).collect())
    }

    /// Runs the batch on every rank, writing each rank's K/V into its store in `kv`; returns
    /// the gathered `[logit_rows.len(), vocab]`.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut RankKv) -> Vec<f32> {
        let c = &self.config;
        let t = batch.tokens.len();
        let h = c.hidden_size;
        let mut partials = vec![vec![0.0f32; t * h]; self.ranks.len()];

        for (r, (rank, partial)) in self.ranks.iter().zip(&mut partials).enumerate() {
            let vocab = rank.config.vocab_size;
            for (row, &tok) in partial.chunks_mut(h).zip(batch.tokens) {
                match (tok as usize).checked_sub(r * vocab).filter(|&local| local < vocab) {
                    Some(local) => row.copy_from_slice(&rank.weights.embed[local * h..(local + 1) * h]),
                    None => row.fill(0.0),
                }
            }
        }
        let mut residual = vec![0.0f32; t * h];
        all_reduce(&partials, &mut residual);
        let mut normed = vec![0.0f32; t * h];
        cpu::rms_norm(&residual, &self.ranks[0].weights.layers[0].input_norm, c.rms_eps, &mut normed);

        let mut scratch: Vec<GroupedScratch> = self.ranks.iter().map(|d| GroupedScratch::new(&d.config, t)).collect();
        let f = self.ranks[0].config.intermediate_size;
        let (mut gate_up, mut act) = (vec![0.0f32; t * 2 * f], vec![0.0f32; t * f]);
        let mut delta = vec![0.0f32; t * h];
        for li in 0..c.num_layers {
            for (r, rank) in self.ranks.iter().enumerate() {
                // `shard` builds grouped attention only.
                if let SelfAttention::Grouped(a) = &rank.weights.layers[li].attention {
                    rank.grouped_attention(a, li, batch, &mut kv.0[r], &normed, &mut scratch[r], &mut partials[r]);
                }
            }
            all_reduce(&partials, &mut delta);
            let layer = &self.ranks[0].weights.layers[li];
            cpu::add_rms_norm(&mut residual, &delta, &layer.post_attention_norm, c.rms_eps, &mut normed);
            for (rank, partial) in self.ranks.iter().zip(&mut partials) {
                rank.feed_forward(li, &normed, t, partial, &mut gate_up, &mut act);
            }
            all_reduce(&partials, &mut delta);
            let next_norm = self.ranks[0].weights.layers.get(li + 1).map_or(&self.ranks[0].weights.final_norm, |l| &l.input_norm);
            cpu::add_rms_norm(&mut residual, &delta, next_norm, c.rms_eps, &mut normed);
        }

        let wanted = batch.logit_rows;
        let last: Vec<f32> = wanted.iter().flat_map(|&r| &normed[r * h..(r + 1) * h]).copied().collect();
        let vocab = self.ranks[0].config.vocab_size;
        let mut logits = vec![0.0f32; wanted.len() * c.vocab_size];
        let mut shard = vec![0.0f32; wanted.len() * vocab];
        for (r, rank) in self.ranks.iter().enumerate() {
            cpu::matmul(&last, wanted.len(), rank.head(), &mut shard);
            for (out, part) in logits.chunks_mut(c.vocab_size).zip(shard.chunks(vocab)) {
                out[r * vocab..(r + 1) * vocab].copy_from_slice(part);
            }
        }
        logits
    }
}
