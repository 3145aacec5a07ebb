//! Tensor parallelism on the CPU backend: a loaded dense decoder split, as Megatron splits it, into
//! N rank decoders that run over the same batch and paged KV layout. Each rank is a thread of its
//! own (named `tp rank R`) holding its weights and its KV store, as each GPU's runner thread will;
//! the collectives go through [`LocalComm`], an in-process all-reduce and all-gather, each recorded
//! as a span with its bytes.
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
use crate::llama::{Decoder, ForwardBatch, GroupedScratch, OwnedBatch};
use crate::plan::{
    Attention, Entry, FeedForward, Head, Layer, ModelPlan, Part, PartSlice, Quantization, SelfAttention, WeightSpec, Weights,
};
use crate::weights::assemble_cpu;
use anyhow::{bail, ensure, Context, Result};
use lumen_backend::cpu::{self, PackedMatrix};
use lumen_backend::KvStorage;
use lumen_trace::instrument::{span, Category};
use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// A dense decoder split over rank threads; each rank's config holds its own share of heads, KV
/// heads, intermediate columns and vocabulary.
pub struct TensorParallel {
    /// The unsharded model's config.
    pub config: ModelConfig,
    jobs: Vec<Sender<Job>>,
    /// Every rank's answer to each forward pass, once its pass (and its recording) is over:
    /// rank 0's holds the gathered logits, the others' nothing; or why a rank failed.
    answers: Receiver<(usize, Result<Vec<f32>, RankFailed>)>,
    threads: Vec<JoinHandle<()>>,
}

/// What the rank threads are asked to do.
enum Job {
    /// Make a KV store of `blocks` blocks of `block_size` slots (FP8 when `fp8`).
    Kv {
        blocks: usize,
        block_size: usize,
        fp8: bool,
    },
    Forward(Arc<OwnedBatch>),
}

/// A rank failed (its thread panicked) and the collectives are broken: the others stop waiting
/// for it, and every later forward pass fails at once. Holds what the failing rank reported.
#[derive(Debug, Clone)]
pub struct RankFailed(pub String);

/// Where the ranks meet: like a barrier, but one a failing rank breaks, waking the others.
struct Meeting {
    ranks: usize,
    /// Ranks arrived in this round, the round's number, and why the meeting broke.
    state: Mutex<(usize, u64, Option<String>)>,
    turn: Condvar,
}

impl Meeting {
    fn wait(&self) -> Result<(), RankFailed> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = &s.2 {
            return Err(RankFailed(why.clone()));
        }
        let round = s.1;
        s.0 += 1;
        if s.0 == self.ranks {
            s.0 = 0;
            s.1 += 1;
            self.turn.notify_all();
            return Ok(());
        }
        while s.1 == round && s.2.is_none() {
            s = self.turn.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        match (&s.2, s.1 == round) {
            (Some(why), true) => Err(RankFailed(why.clone())),
            _ => Ok(()),
        }
    }

    fn break_off(&self, why: String) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.2.get_or_insert(why);
        self.turn.notify_all();
    }
}

/// The collectives of the rank threads of one process: each call waits for every rank, combines
/// the ranks' buffers in rank order (so every rank gets the same bits), and waits again before a
/// buffer can be reused. A rank that fails breaks them for all.
pub struct LocalComm {
    ranks: usize,
    meeting: Meeting,
    buffers: Mutex<Vec<Vec<f32>>>,
}

impl LocalComm {
    pub fn new(ranks: usize) -> Self {
        let meeting = Meeting { ranks, state: Mutex::new((0, 0, None)), turn: Condvar::new() };
        LocalComm { ranks, meeting, buffers: Mutex::new(vec![Vec::new(); ranks]) }
    }

    /// Breaks the collectives: rank `rank` failed, for `why`.
    pub fn fail(&self, rank: usize, why: &str) {
        self.meeting.break_off(format!("tensor-parallel rank {rank} failed: {why}"));
    }

    fn post(&self, rank: usize, values: &[f32]) {
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        buffers[rank].clear();
        buffers[rank].extend_from_slice(values);
    }

    /// Replaces `values` on every rank with the sum over ranks, added in rank order.
    pub fn all_reduce(&self, rank: usize, values: &mut [f32]) -> Result<(), RankFailed> {
        let mut s = span(Category::Debug, "all_reduce");
        s.set_args(|| format!("{{\"bytes\":{},\"ranks\":{}}}", std::mem::size_of_val(values), self.ranks));
        self.post(rank, values);
        self.meeting.wait()?;
        {
            let buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
            values.copy_from_slice(&buffers[0]);
            for b in &buffers[1..] {
                values.iter_mut().zip(b).for_each(|(v, x)| *v += x);
            }
        }
        self.meeting.wait()
    }

    /// Every rank's `part` (`[rows, cols]` each) joined column-wise in rank order:
    /// `[rows, ranks * cols]`, on every rank.
    pub fn all_gather_columns(&self, rank: usize, part: &[f32], cols: usize) -> Result<Vec<f32>, RankFailed> {
        let mut s = span(Category::Debug, "all_gather");
        s.set_args(|| format!("{{\"bytes\":{},\"ranks\":{}}}", std::mem::size_of_val(part) * self.ranks, self.ranks));
        self.post(rank, part);
        self.meeting.wait()?;
        let mut out = Vec::with_capacity(part.len() * self.ranks);
        {
            let buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
            for row in 0..part.len() / cols.max(1) {
                for b in buffers.iter() {
                    out.extend_from_slice(&b[row * cols..(row + 1) * cols]);
                }
            }
        }
        self.meeting.wait()?;
        Ok(out)
    }
}

/// Rank `r`'s share of `kv` KV heads over `ranks` ranks: its first KV head and how many it keeps.
pub fn kv_heads_of_rank(r: usize, kv: usize, ranks: usize) -> (usize, usize) {
    (r * kv / ranks, (kv / ranks).max(1))
}

/// Why `n` ranks cannot split the model of `c`, if they cannot.
pub fn check_split(c: &ModelConfig, n: usize) -> Result<()> {
    if c.moe.is_some() || c.mla.is_some() {
        bail!(
            "tensor parallelism supports dense models so far; {} is {}",
            c.arch,
            if c.mla.is_some() { "latent-attention" } else { "mixture-of-experts" }
        );
    }
    ensure!(n > 0, "tensor parallelism needs at least one rank");
    ensure!(!c.qk_norm_full_width, "tensor parallelism cannot split a q/k norm that spans every head");
    ensure!(c.num_heads.is_multiple_of(n), "{n} ranks do not divide the {} attention heads", c.num_heads);
    let kv = c.num_kv_heads;
    ensure!(kv.is_multiple_of(n) || n.is_multiple_of(kv), "{n} ranks cannot share {kv} KV heads: one of the two must divide the other");
    ensure!(c.intermediate_size.is_multiple_of(n), "{n} ranks do not divide the {} intermediate columns", c.intermediate_size);
    ensure!(c.vocab_size.is_multiple_of(n), "{n} ranks do not divide the vocabulary of {}", c.vocab_size);
    Ok(())
}

/// A rank's config among `n`: its heads, KV heads, intermediate columns and vocabulary rows
/// (of the output head; its own head, never tied).
pub fn rank_config(c: &ModelConfig, n: usize) -> ModelConfig {
    ModelConfig {
        num_heads: c.num_heads / n,
        num_kv_heads: (c.num_kv_heads / n).max(1),
        intermediate_size: c.intermediate_size / n,
        vocab_size: c.vocab_size / n,
        tie_word_embeddings: false,
        ..c.clone()
    }
}

/// Rank `r`'s plan among `n`, from the full model's `plan` (of config `c`, already checked by
/// [`check_split`]): every sharded weight's parts cut to the rank's rows or columns, as the
/// module's rule says. The embedding is split by vocabulary rows with `vocab_parallel_embedding`,
/// else replicated whole (TensorRT-LLM's default); the output head is always split, and a tied
/// head becomes the rank's rows of the embedding.
pub fn rank_plan(c: &ModelConfig, plan: &ModelPlan, r: usize, n: usize, vocab_parallel_embedding: bool) -> Result<ModelPlan> {
    let d = c.head_dim;
    let heads = c.num_heads / n;
    let (kv0, kvs) = kv_heads_of_rank(r, c.num_kv_heads, n);
    let f = c.intermediate_size / n;
    let vocab = c.vocab_size / n;
    let cut = |spec: &WeightSpec, slices: &[PartSlice]| -> WeightSpec {
        let parts: Vec<Part> = spec.parts.iter().zip(slices).map(|(p, s)| Part { slice: Some(*s), ..p.clone() }).collect();
        let mut shape = parts[0].kept_shape();
        shape[0] = parts.iter().map(|p| p.kept_shape()[0]).sum();
        WeightSpec { parts, shape, dtype: spec.dtype }
    };
    let rows = |start, len| PartSlice::Rows { start, len };
    let cols = |start, len| PartSlice::Cols { start, len };
    let qkv = [rows(r * heads * d, heads * d), rows(kv0 * d, kvs * d), rows(kv0 * d, kvs * d)];
    let layers = plan
        .layers
        .iter()
        .map(|l| {
            let SelfAttention::Grouped(a) = &l.attention else { bail!("tensor parallelism supports dense models so far") };
            let FeedForward::Dense { gate_up, down } = &l.feed_forward else { bail!("tensor parallelism supports dense models so far") };
            Ok(Layer {
                input_norm: l.input_norm.clone(),
                attention: SelfAttention::Grouped(Attention {
                    qkv: cut(&a.qkv, &qkv),
                    qkv_bias: a.qkv_bias.as_ref().map(|b| cut(b, &qkv)),
                    q_norm: a.q_norm.clone(),
                    k_norm: a.k_norm.clone(),
                    output: cut(&a.output, &[cols(r * heads * d, heads * d)]),
                    output_bias: a.output_bias.clone().filter(|_| r == 0),
                    sinks: a.sinks.as_ref().map(|s| cut(s, &[rows(r * heads, heads)])),
                }),
                post_attention_norm: l.post_attention_norm.clone(),
                feed_forward: FeedForward::Dense {
                    gate_up: cut(gate_up, &[rows(r * f, f), rows(r * f, f)]),
                    down: cut(down, &[cols(r * f, f)]),
                },
            })
        })
        .collect::<Result<_>>()?;
    let vocab_rows = [rows(r * vocab, vocab)];
    let head = match &plan.head {
        Head::Own(spec) => cut(spec, &vocab_rows),
        Head::Tied => cut(&plan.embed, &vocab_rows),
    };
    Ok(Weights {
        embed: if vocab_parallel_embedding { cut(&plan.embed, &vocab_rows) } else { plan.embed.clone() },
        layers,
        final_norm: plan.final_norm.clone(),
        head: Head::Own(head),
    })
}

/// A fetch of checkpoint parts by name from the weights of `decoder`, which `plan` (the plan it
/// was filled from) says where each part lies: in which weight, from which row. The weight a
/// part lies in is unpacked once for all its parts in a row.
fn loaded_parts<'d>(decoder: &'d Decoder, plan: &ModelPlan) -> impl FnMut(&str, &[usize]) -> Result<Vec<f32>> + 'd {
    let mut weights: HashMap<String, Entry<'d, PackedMatrix, Vec<f32>>> = HashMap::new();
    decoder.weights.visit(&mut |label, entry| {
        weights.insert(label.to_string(), entry);
    });
    let mut parts: HashMap<String, (String, usize)> = HashMap::new();
    plan.visit(&mut |label, entry| {
        let (Entry::Matrix(spec) | Entry::Vector(spec)) = entry;
        let mut row = 0;
        for part in &spec.parts {
            parts.insert(part.name.clone(), (label.to_string(), row));
            row += part.shape[0];
        }
    });
    let mut unpacked: Option<(String, Vec<f32>)> = None;
    move |name, shape| {
        let (label, row) = parts.get(name).with_context(|| format!("tensor parallelism: the model has no part {name}"))?;
        if unpacked.as_ref().is_none_or(|(held, _)| held != label) {
            let values = match weights.get(label).with_context(|| format!("tensor parallelism: the model has no weight {label}"))? {
                Entry::Matrix(m) => m.unpack(),
                Entry::Vector(v) => v.to_vec(),
            };
            unpacked = Some((label.clone(), values));
        }
        let values = &unpacked.as_ref().expect("unpacked above").1;
        let cols = shape.get(1).copied().unwrap_or(1);
        Ok(values[row * cols..(row + shape[0]) * cols].to_vec())
    }
}

impl TensorParallel {
    /// Splits `decoder` over `n` ranks; fails, saying why, for a model or an `n` that cannot be split.
    pub fn shard(decoder: &Decoder, n: usize) -> Result<Self> {
        let c = &decoder.config;
        check_split(c, n)?;
        ensure!(
            decoder.quantization == Quantization::None,
            "tensor parallelism runs unquantized weights so far, not {}",
            decoder.quantization
        );
        // The decoder was filled from this plan; each rank's plan takes its slices of the parts.
        let plan = ModelPlan::for_config(c);
        let mut fetch = loaded_parts(decoder, &plan);
        let ranks = (0..n)
            .map(|r| {
                let config = rank_config(c, n);
                let (weights, tied) = assemble_cpu(&config, &rank_plan(c, &plan, r, n, true)?, &mut fetch)?;
                Ok(Decoder::new(config, weights, tied, Quantization::None))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_ranks(c, ranks)
    }

    /// Starts a thread per rank decoder (rank r's shard of the model of `config`, as
    /// [`rank_config`] and [`rank_plan`] describe it).
    pub fn from_ranks(config: &ModelConfig, ranks: Vec<Decoder>) -> Result<Self> {
        let (c, n) = (config, ranks.len());
        ensure!(n > 0, "tensor parallelism needs at least one rank");
        let comm = Arc::new(LocalComm::new(n));
        let (answers_tx, answers) = channel();
        let (mut jobs, mut threads) = (Vec::new(), Vec::new());
        for (r, rank) in ranks.into_iter().enumerate() {
            let (tx, rx) = channel();
            let (comm, full, answer) = (comm.clone(), c.clone(), answers_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("tp rank {r}"))
                .spawn(move || serve_rank(r, &rank, &full, &comm, rx, answer))
                .with_context(|| format!("cannot start the thread of tensor-parallel rank {r}"))?;
            jobs.push(tx);
            threads.push(thread);
        }
        Ok(TensorParallel { config: c.clone(), jobs, answers, threads })
    }

    /// How many ranks the model is split over.
    pub fn num_ranks(&self) -> usize {
        self.jobs.len()
    }

    /// Gives every rank a fresh KV store of `num_blocks` blocks of `block_size` slots (FP8 when
    /// `fp8`): the same blocks and slots on each, holding the rank's own KV heads.
    pub fn allocate_kv(&self, num_blocks: usize, block_size: usize, fp8: bool) -> Result<()> {
        for tx in &self.jobs {
            tx.send(Job::Kv { blocks: num_blocks, block_size, fp8 }).context("a tensor-parallel rank thread has stopped")?;
        }
        Ok(())
    }

    /// Runs the batch on every rank, each writing its K/V into its own store; returns the
    /// gathered `[logit_rows.len(), vocab]`.
    pub fn forward(&self, batch: &ForwardBatch) -> Result<Vec<f32>> {
        let owned = Arc::new(OwnedBatch::of(batch));
        for tx in &self.jobs {
            tx.send(Job::Forward(owned.clone())).context("a tensor-parallel rank thread has stopped")?;
        }
        let (mut logits, mut failure) = (None, None);
        for _ in 0..self.jobs.len() {
            match self.answers.recv().context("a tensor-parallel rank thread has stopped")? {
                (0, Ok(l)) => logits = Some(l),
                (_, Ok(_)) => {}
                (_, Err(f)) => failure = failure.or(Some(f)),
            }
        }
        if let Some(f) = failure {
            bail!(f.0);
        }
        let logits = logits.context("tensor-parallel rank 0 gave no logits")?;
        ensure!(
            logits.len() == batch.logit_rows.len() * self.config.vocab_size,
            "tensor parallelism: no KV store yet; call allocate_kv first"
        );
        Ok(logits)
    }
}

impl Drop for TensorParallel {
    fn drop(&mut self) {
        self.jobs.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A rank thread: runs its jobs until the model is dropped, answering each pass when it is over
/// (rank 0 with the logits). A rank whose pass panics breaks the collectives, so no rank waits
/// for it, and answers with the failure.
fn serve_rank(
    r: usize,
    rank: &Decoder,
    full: &ModelConfig,
    comm: &LocalComm,
    jobs: Receiver<Job>,
    answer: Sender<(usize, Result<Vec<f32>, RankFailed>)>,
) {
    let mut kv: Option<KvStorage> = None;
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Kv { blocks, block_size, fp8 } => {
                let storage = rank.new_kv_storage(blocks, block_size);
                kv = Some(if fp8 { storage.storing_fp8() } else { storage });
            }
            Job::Forward(b) => {
                let Some(kv) = kv.as_mut() else {
                    // Every rank gets the same jobs, so none has a store: nothing runs.
                    let _ = answer.send((r, Ok(Vec::new())));
                    continue;
                };
                let run =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.with(|batch| rank_forward(r, rank, full, batch, kv, comm))));
                let logits = run.unwrap_or_else(|panic| {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "a panic".into());
                    comm.fail(r, &why);
                    Err(RankFailed(format!("tensor-parallel rank {r} failed: {why}")))
                });
                // Only rank 0's logits are read; the others' copies stay here.
                let logits = if r == 0 { logits } else { logits.map(|_| Vec::new()) };
                if answer.send((r, logits)).is_err() {
                    return;
                }
            }
        }
    }
}

/// Rank `r`'s forward pass: its share of every layer, the all-reduces that join the shares, and
/// the logit gather; the residual stream and the norms are computed on every rank alike.
fn rank_forward(
    r: usize,
    rank: &Decoder,
    full: &ModelConfig,
    batch: &ForwardBatch,
    kv: &mut KvStorage,
    comm: &LocalComm,
) -> Result<Vec<f32>, RankFailed> {
    let t = batch.tokens.len();
    let h = full.hidden_size;
    let vocab = rank.config.vocab_size;
    let mut residual = vec![0.0f32; t * h];
    for (row, &tok) in residual.chunks_mut(h).zip(batch.tokens) {
        if let Some(local) = (tok as usize).checked_sub(r * vocab).filter(|&local| local < vocab) {
            row.copy_from_slice(&rank.weights.embed[local * h..(local + 1) * h]);
        }
    }
    comm.all_reduce(r, &mut residual)?;
    let mut normed = vec![0.0f32; t * h];
    cpu::rms_norm(&residual, &rank.weights.layers[0].input_norm, full.rms_eps, &mut normed);

    let mut scratch = GroupedScratch::new(&rank.config, t);
    let f = rank.config.intermediate_size;
    let (mut gate_up, mut act) = (vec![0.0f32; t * 2 * f], vec![0.0f32; t * f]);
    let mut delta = vec![0.0f32; t * h];
    for li in 0..full.num_layers {
        let layer = &rank.weights.layers[li];
        // `shard` builds grouped attention only.
        if let SelfAttention::Grouped(a) = &layer.attention {
            rank.grouped_attention(a, li, batch, kv, &normed, &mut scratch, &mut delta);
        }
        comm.all_reduce(r, &mut delta)?;
        cpu::add_rms_norm(&mut residual, &delta, &layer.post_attention_norm, full.rms_eps, &mut normed);
        rank.feed_forward(li, &normed, t, &mut delta, &mut gate_up, &mut act);
        comm.all_reduce(r, &mut delta)?;
        let next_norm = rank.weights.layers.get(li + 1).map_or(&rank.weights.final_norm, |l| &l.input_norm);
        cpu::add_rms_norm(&mut residual, &delta, next_norm, full.rms_eps, &mut normed);
    }

    let wanted = batch.logit_rows;
    let last: Vec<f32> = wanted.iter().flat_map(|&row| &normed[row * h..(row + 1) * h]).copied().collect();
    let mut shard = vec![0.0f32; wanted.len() * vocab];
    cpu::matmul(&last, wanted.len(), rank.head(), &mut shard);
    comm.all_gather_columns(r, &shard, vocab)
}
