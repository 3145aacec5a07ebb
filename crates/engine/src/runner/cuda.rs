//! The engine's step machinery on one GPU (one rank of a parallel layout): the KV cache's
//! blocks, a pinned staging area that carries a step's inputs in a single copy, the model's
//! forward pass ([`lumen_model::cuda::enqueue_forward`]) and sampling on the device, CUDA graphs
//! for decode-only batches, and device step time from events.
//!
//! A step's inputs live at fixed offsets of the staging area, sized for the largest step, so a
//! captured graph replays against new inputs after one host-to-device copy.
//!
//! Two steps may be in flight at once (the engine's overlap scheduler launches a step before it
//! reads the one before's tokens), so the host side of a step comes in two turns that steps take
//! in alternation: pinned inputs, the pinned rows its tokens and expert load come back into, and
//! the events around it. A token word marked [`lumen_backend::SAMPLED_TOKEN`] takes, on the device, the token
//! the step before drew for the row it names.
//!
//! A runner may drive one rank of a tensor-parallel model: it then runs that rank's shard with
//! the rank's config, joins the ranks through its [`RankCollectives`] (captured in its graphs
//! like any launch), and holds the whole vocabulary's logits; only rank 0 samples.

use super::StepResult;
use anyhow::{bail, ensure, Context, Result};
use lumen_backend::cuda::kernels::{heaviest_tiles_first, ATTENTION_MAX_ROWS, PREFILL_ATTENTION_MAX_ROWS};
use lumen_backend::cuda::nccl::Communicator;
use lumen_backend::cuda::{DeviceBuffer, Event, Gpu, Graph, Linear, PinnedBuffer};
use lumen_backend::sampled_row;
use lumen_model::cuda::{
    attention_blocks_per_token, enqueue_forward, expert_load, expert_load_words, moe_graphable, queue_expert_load, Activations,
    CudaWeights, KvCache, RankCollectives, StepInputs, StepShape,
};
use lumen_model::{Executor, ForwardBatch, Model, ModelConfig, Quantization};
use lumen_trace::instrument::{record_span, span, Category};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// KV positions one attention split covers in batch-invariant mode (a fixed size, so a row's
/// arithmetic never depends on its batch).
pub const INVARIANT_SPLIT_TOKENS: usize = 64;
/// Split sizes are multiples of the attention kernel's KV step.
const SPLIT_ALIGN: usize = 32;
/// Sequences with at least this many tokens in a step take the tensor-core prefill attention
/// (outside batch-invariant mode); shorter ones the decode tiles (`Kernels::attention` picks the
/// CUDA-core or the tensor-core decode kernel for them).
const PREFILL_ATTENTION_MIN_TOKENS: usize = 8;

/// How a sampled row draws its token (the engine's sampling parameters, flattened).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub seed: u64,
    /// Which output token of its request this is (0 for the first).
    pub index: u32,
}

impl SampleParams {
    pub const GREEDY: SampleParams = SampleParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, index: 0 };
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most tokens in one step.
    pub max_tokens: usize,
    /// Most sequences in one step.
    pub max_seqs: usize,
    pub block_size: usize,
    /// Decode batch sizes graphs are captured for (empty: no graphs), and whether a batch is
    /// padded up to the next captured size.
    pub graph_sizes: Vec<usize>,
    pub graph_padding: bool,
    /// Choose only split-K-free GEMM algorithms, so rows do not depend on their batch.
    pub batch_invariant: bool,
    /// Keep K and V in FP8 E4M3 (scale 1).
    pub kv_fp8: bool,
}

impl RunnerConfig {
    /// The captured batch size a decode-only batch of `n` sequences runs at: with padding the
    /// smallest captured size of at least `n`, without it `n` itself if captured. `None` means
    /// eager.
    pub fn graph_size(&self, n: usize) -> Option<usize> {
        if n == 0 {
            None
        } else if self.graph_padding {
            self.graph_sizes.iter().copied().find(|&g| g >= n)
        } else {
            self.graph_sizes.contains(&n).then_some(n)
        }
    }
}

/// Word offsets of the staging area's regions. The block tables come last: sized for every block
/// of the cache, they are copied only as far as a step fills them.
#[derive(Debug, Clone, Copy)]
struct Layout {
    tokens: usize,
    positions: usize,
    slots: usize,
    logit_rows: usize,
    tiles: usize,
    table_offsets: usize,
    params: usize,
    split_tokens: usize,
    real_tokens: usize,
    table_data: usize,
    words: usize,
}

impl Layout {
    fn new(max_tokens: usize, max_seqs: usize, table_words: usize) -> Self {
        let max_tiles = max_tokens + max_seqs;
        let tokens = 0;
        let positions = tokens + max_tokens;
        let slots = positions + max_tokens;
        let logit_rows = slots + max_tokens;
        let tiles = logit_rows + max_seqs;
        let table_offsets = tiles + 4 * max_tiles;
        let params = table_offsets + max_seqs + 1;
        let split_tokens = params + 6 * max_seqs;
        let real_tokens = split_tokens + 1;
        let table_data = real_tokens + 1;
        let words = table_data + table_words;
        Layout { tokens, positions, slots, logit_rows, tiles, table_offsets, params, split_tokens, real_tokens, table_data, words }
    }
}

/// The host side of a step in flight: its pinned inputs (filled up to `staged_words`), the
/// pinned rows its tokens and expert-load counters come back into, and the events around it.
struct Turn {
    staging: PinnedBuffer<u32>,
    staged_words: usize,
    tokens: PinnedBuffer<u32>,
    expert_load: PinnedBuffer<u32>,
    events: (Event, Event),
}

impl Turn {
    fn new(gpu: &Gpu, layout: &Layout, rows: usize, expert_load_words: usize) -> Result<Self> {
        Ok(Turn {
            staging: PinnedBuffer::new(gpu, layout.words)?,
            staged_words: 0,
            tokens: PinnedBuffer::new(gpu, rows)?,
            expert_load: PinnedBuffer::new(gpu, expert_load_words)?,
            events: (gpu.event()?, gpu.event()?),
        })
    }
}

/// A step launched and not yet finished: the turn it took and its logits rows.
struct Launched {
    turn: usize,
    rows: usize,
}

pub struct CudaRunner {
    model: Arc<Model>,
    /// For one rank of a tensor-parallel model: its index and collectives.
    rank: Option<(usize, RankCollectives)>,
    gpu: Arc<Gpu>,
    linear: Linear,
    config: RunnerConfig,
    num_blocks: usize,
    kv: KvCache,
    act: Activations,
    sampled: DeviceBuffer,
    layout: Layout,
    staging_dev: DeviceBuffer,
    turns: [Turn; 2],
    /// The turn the next step takes.
    next_turn: usize,
    /// Steps launched and not finished, oldest first (at most two).
    in_flight: VecDeque<Launched>,
    /// Logits rows of the step launched last: the rows of `sampled` a marked token may name.
    last_rows: usize,
    graphs: HashMap<(usize, usize), Graph>,
    /// Whether a batch-invariant step has been reported as run unsplit (once a run).
    invariance_warned: bool,
    /// The fewest positions a KV split takes (`LUMEN_KV_SPLIT_MIN`, see [`kv_split_min`]).
    kv_split_min: usize,
}

/// The weights and config this runner computes with: the model's, or rank `rank`'s shard of it.
fn shard(model: &Model, rank: Option<usize>) -> Result<(&CudaWeights, &ModelConfig)> {
    match (&model.executor, rank) {
        (Executor::Cuda(w), None) => Ok((w, model.config())),
        (Executor::CudaRanks(ranks), Some(r)) => {
            let shard =
                ranks.get(r).with_context(|| format!("model {} has {} tensor-parallel ranks, not {}", model.name, ranks.len(), r + 1))?;
            Ok((&shard.weights, &shard.config))
        }
        (Executor::CudaRanks(ranks), None) => {
            bail!("model {} is split over {} GPUs; each needs its rank's runner", model.name, ranks.len())
        }
        (Executor::Cuda(_), Some(_)) => bail!("model {} is loaded on one GPU, not split over ranks", model.name),
        (Executor::Cpu(_), _) => bail!("model {} is not loaded on a CUDA device", model.name),
    }
}

impl CudaRunner {
    /// Allocates everything a step needs, then the KV cache: `kv_blocks(free, bytes_per_token)`
    /// says how many blocks to take given the device memory left free once weights and
    /// activations are allocated. With `rank`, the runner drives that rank of a tensor-parallel
    /// model through the communicator.
    pub fn new(
        model: Arc<Model>,
        config: RunnerConfig,
        rank: Option<(usize, Communicator)>,
        kv_blocks: impl FnOnce(u64, usize) -> Result<usize>,
    ) -> Result<Self> {
        let (w, c) = shard(&model, rank.as_ref().map(|(r, _)| *r))?;
        let gpu = w.gpu.clone();
        gpu.bind()?;
        let c = c.clone();
        ensure!(config.max_tokens > 0 && config.max_seqs > 0 && config.block_size > 0, "runner limits must be positive: {config:?}");
        let t = config.max_tokens.max(config.max_seqs).max(config.graph_sizes.iter().copied().max().unwrap_or(0));
        let s = config.max_seqs.max(config.graph_sizes.iter().copied().max().unwrap_or(0));
        // The logits span the whole vocabulary, also on a rank that computes only its rows of it.
        let split_rows = split_partial_rows(s, gpu.info.multiprocessors as usize, config.batch_invariant);
        let act = Activations::new(&gpu, &ModelConfig { vocab_size: model.config().vocab_size, ..c.clone() }, t, s, split_rows)?;
        let rank = match rank {
            Some((r, comm)) => Some((r, RankCollectives::new(&gpu, comm, s, c.vocab_size)?)),
            None => None,
        };
        let sampled = gpu.alloc(s * 4, "sampled tokens")?;
        let mut linear = Linear::new(&gpu, config.batch_invariant)?;
        if w.quantization == Quantization::Fp8 {
            let widest = c.hidden_size.max(c.num_heads * c.head_dim).max(c.intermediate_size);
            linear.reserve_fp8_inputs(&gpu, t, widest)?;
        }

        let bytes_per_token = KvCache::bytes_per_token(&c, config.kv_fp8);
        let bytes_per_block = bytes_per_token * config.block_size;
        // Room for the pinned staging copy's device side and CUDA graphs, outside the budget.
        let reserve = 64 << 20;
        let (free, _) = gpu.memory()?;
        let num_blocks = kv_blocks(free.saturating_sub(reserve) as u64, bytes_per_token)?;
        let want = (num_blocks + 1) * bytes_per_block;
        if num_blocks == 0 || want > free {
            bail!(
                "KV cache of {num_blocks} blocks x {} tokens ({:.2} GiB) does not fit: {:.2} GiB of GPU memory are free after weights and activations, and one block takes {} bytes",
                config.block_size,
                want as f64 / (1u64 << 30) as f64,
                free as f64 / (1u64 << 30) as f64,
                bytes_per_block
            );
        }
        // One block more than the engine hands out takes the writes of padded rows.
        let kv = KvCache::new(&gpu, &c, num_blocks + 1, config.block_size, config.kv_fp8)?;
        let layout = Layout::new(t, s, num_blocks + s + 1);
        let staging_dev = gpu.alloc(layout.words * 4, "step inputs")?;
        let load_words = expert_load_words(&act);
        let turns = [Turn::new(&gpu, &layout, s, load_words)?, Turn::new(&gpu, &layout, s, load_words)?];
        let config = RunnerConfig { max_tokens: t, max_seqs: s, ..config };
        if !config.batch_invariant {
            let (x, y) = act.scratch();
            linear.tune(&gpu, &w.kernels, &w.product_weights(), x, y, config.max_seqs)?;
        }
        Ok(CudaRunner {
            model: model.clone(),
            rank,
            gpu,
            linear,
            config,
            num_blocks,
            kv,
            act,
            sampled,
            layout,
            staging_dev,
            turns,
            next_turn: 0,
            in_flight: VecDeque::new(),
            last_rows: 0,
            graphs: HashMap::new(),
            invariance_warned: false,
            kv_split_min: kv_split_min(std::env::var("LUMEN_KV_SPLIT_MIN").ok().as_deref())?,
        })
    }

    /// Whether the MoE layers route with the perfect router (whose logits come from the host).
    fn perfect_router(&self) -> bool {
        shard(&self.model, self.rank_index()).is_ok_and(|(w, _)| w.perfect_router)
    }

    /// KV blocks the engine may hand out (one more, reserved, takes padded rows' writes).
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Number of CUDA graphs captured so far.
    pub fn graphs_captured(&self) -> usize {
        self.graphs.len()
    }

    fn dev(&self, word: usize) -> u64 {
        self.staging_dev.at(word * 4)
    }

    /// Launches the step: copies its inputs, then runs the model and the sampler (through a CUDA
    /// graph when the batch is decode-only and a captured size fits), then queues the copies of
    /// its tokens and expert load. Returns at once; `finish` waits for it. One step may be in
    /// flight already: the token words it marks [`lumen_backend::SAMPLED_TOKEN`] take that step's tokens.
    pub fn launch(&mut self, batch: &ForwardBatch, params: &[SampleParams]) -> Result<()> {
        ensure!(params.len() == batch.logit_rows.len(), "{} sampling rows for {} logit rows", params.len(), batch.logit_rows.len());
        ensure!(self.in_flight.len() < 2, "two steps are in flight already; finish one before launching another");
        self.gpu.bind()?;
        let turn = self.next_turn;
        let shape = self.stage(batch, params)?;
        let t = &self.turns[turn];
        t.events.0.record(&self.gpu)?;
        self.gpu.copy_to_device(self.staging_dev.ptr, &t.staging.as_slice()[..t.staged_words])?;
        let (Staged::Graph(_, launched) | Staged::Eager(launched)) = shape;
        self.record_collectives(launched)?;
        let rows = match shape {
            Staged::Graph(key, shape) => {
                if !self.graphs.contains_key(&key) {
                    let _s = span(Category::Debug, "capture cuda graph");
                    self.gpu.begin_capture()?;
                    let captured = self.enqueue(shape, true);
                    let graph = self.gpu.end_capture();
                    captured.context("while capturing a CUDA graph")?;
                    self.graphs.insert(key, graph?);
                }
                self.gpu.launch_graph(&self.graphs[&key])?;
                batch.logit_rows.len()
            }
            Staged::Eager(shape) => {
                self.enqueue(shape, true)?;
                shape.rows
            }
        };
        // Eager or replayed, the step counted its expert load on the device.
        let t = &mut self.turns[turn];
        self.gpu.copy_to_host(&mut t.tokens.as_mut_slice()[..rows], self.sampled.ptr)?;
        queue_expert_load(&self.act, &self.gpu, t.expert_load.as_mut_slice())?;
        t.events.1.record(&self.gpu)?;
        self.in_flight.push_back(Launched { turn, rows });
        self.last_rows = rows;
        self.next_turn = 1 - turn;
        Ok(())
    }

    /// Waits for the oldest step in flight and returns its sampled tokens, expert load and device
    /// time.
    pub fn finish(&mut self) -> Result<StepResult> {
        let Some(step) = self.in_flight.pop_front() else { bail!("no step is in flight to finish") };
        let t = &self.turns[step.turn];
        t.events.1.synchronize().context("the forward step failed on the GPU (rerun with LUMEN_CUDA_SYNC=1 to name the kernel)")?;
        Ok(StepResult {
            tokens: t.tokens.as_slice()[..step.rows].to_vec(),
            expert_load: expert_load(&self.act, t.expert_load.as_slice()),
            device_ms: t.events.0.elapsed_ms(&t.events.1),
        })
    }

    /// The `[rows, vocab]` f32 logits the step finished last sampled from (for checks: a graph
    /// replay and an eager step must leave the same bits). No step may be in flight.
    pub fn last_logits(&mut self) -> Result<Vec<f32>> {
        ensure!(self.in_flight.is_empty(), "the logits are read with no step in flight; {} are", self.in_flight.len());
        let rows = self.last_rows;
        let mut out = vec![0f32; rows * self.model.config().vocab_size];
        self.gpu.download(&mut out, self.act.logits.ptr).context("reading the last step's logits")?;
        Ok(out)
    }

    /// Runs the batch eagerly and returns `[logit_rows, vocab]` f32 logits (for checks). No step
    /// may be in flight.
    pub fn logits(&mut self, batch: &ForwardBatch) -> Result<Vec<f32>> {
        ensure!(self.in_flight.is_empty(), "logits are computed with no step in flight; {} are", self.in_flight.len());
        let params = vec![SampleParams::GREEDY; batch.logit_rows.len()];
        self.gpu.bind()?;
        let shape = match self.stage_eager(batch, &params)? {
            Staged::Eager(s) | Staged::Graph(_, s) => s,
        };
        let t = &self.turns[self.next_turn];
        self.gpu.copy_to_device(self.staging_dev.ptr, &t.staging.as_slice()[..t.staged_words])?;
        self.act.poison(&self.gpu)?;
        self.enqueue(shape, false)?;
        let vocab = self.model.config().vocab_size;
        let mut out = vec![0f32; shape.rows * vocab];
        self.gpu.download(&mut out, self.act.logits.ptr).context("the forward step failed on the GPU")?;
        Ok(out)
    }

    /// Writes the batch into the staging area, deciding graph or eager.
    fn stage(&mut self, batch: &ForwardBatch, params: &[SampleParams]) -> Result<Staged> {
        let n = batch.seqs.len();
        let decode_only = !batch.seqs.is_empty()
            && batch.seqs.iter().enumerate().all(|(i, s)| s.len == 1 && s.start == i)
            && batch.logit_rows.iter().enumerate().all(|(i, &r)| r == i)
            && batch.logit_rows.len() == n;
        // A MoE step replays unless the perfect router uploads its logits; its padding rows are
        // routed too, but only the real tokens' slots join the expert load (`real_tokens`).
        let c = self.model.config();
        let replayable = decode_only && moe_graphable(c, self.perfect_router());
        let graph_size = self.config.graph_size(n).filter(|_| replayable);
        let Some(size) = graph_size else { return self.stage_eager(batch, params) };
        let max_ctx = batch.seqs.iter().map(|s| s.first_pos + s.len).max().unwrap_or(1);
        let (splits, split_tokens) = self.split_plan(size, max_ctx, size);
        let grid = splits.next_power_of_two();
        if grid * size > self.act.part_capacity {
            return self.stage_eager(batch, params);
        }
        self.fill(batch, params, size)?;
        self.turns[self.next_turn].staging.as_mut_slice()[self.layout.split_tokens] = split_tokens as u32;
        let c = self.config_computed()?;
        let group = c.num_heads / c.num_kv_heads;
        let batch_invariant = self.config.batch_invariant;
        let shape = StepShape {
            tokens: size,
            tiles: size,
            tile_rows: group,
            prefill_tiles: 0,
            rows: size,
            splits: grid,
            prefill_splits: grid,
            merged_tokens: size,
            batch_invariant,
        };
        Ok(Staged::Graph((size, grid), shape))
    }

    /// How many KV splits attention uses, and of what size (see [`plan_splits`]). The first
    /// batch-invariant step that must run unsplit is reported: its tokens' bits can differ from
    /// those the same tokens get in a split step.
    fn split_plan(&mut self, tiles: usize, max_ctx: usize, tokens: usize) -> (usize, usize) {
        let blocks_per_tile = self.config_computed().map_or(1, attention_blocks_per_token);
        let multiprocessors = self.gpu.info.multiprocessors as usize;
        let plan = SplitPlanInputs {
            blocks_per_tile,
            multiprocessors,
            batch_invariant: self.config.batch_invariant,
            min_split: self.kv_split_min,
        };
        let capacity = self.act.part_capacity;
        let planned = plan_splits(plan, tiles, max_ctx, tokens, capacity);
        if let Some(rows) = planned.invariant_rows_short.filter(|_| !self.invariance_warned) {
            self.invariance_warned = true;
            lumen_trace::status!(
                "[lumen] warning: batch-invariant mode: a step of {tokens} tokens at {max_ctx} positions needs {rows} rows of attention \
                 split partials and {capacity} are allocated, so it runs unsplit and its tokens' bits can differ from a split step's; \
                 a lower --max-num-tokens makes prefill chunks short enough to fit"
            );
        }
        (planned.splits, planned.size)
    }

    fn stage_eager(&mut self, batch: &ForwardBatch, params: &[SampleParams]) -> Result<Staged> {
        let tiling = self.fill(batch, params, 0)?;
        let max_ctx = batch.seqs.iter().map(|s| s.first_pos + s.len).max().unwrap_or(1);
        let t = batch.tokens.len();
        let (splits, prefill_splits, merged_tokens, split_tokens) = if decode_tiles_split_alone(&tiling) {
            // The prefill tiles fill the GPU by themselves and run unsplit; the few decode tiles
            // beside them split as a decode step of their own would, their partials in the rows
            // of the step's first tokens.
            let (splits, split_tokens) = self.split_plan(tiling.tiles, tiling.decode_max_ctx, tiling.decode_tokens_end);
            (splits, 1, tiling.decode_tokens_end, split_tokens)
        } else {
            let (splits, split_tokens) = self.split_plan(tiling.tiles + tiling.prefill_tiles, max_ctx, t);
            (splits, splits, t, split_tokens)
        };
        self.turns[self.next_turn].staging.as_mut_slice()[self.layout.split_tokens] = split_tokens as u32;
        Ok(Staged::Eager(StepShape {
            tokens: t,
            tiles: tiling.tiles,
            tile_rows: tiling.tile_rows,
            prefill_tiles: tiling.prefill_tiles,
            rows: batch.logit_rows.len(),
            splits,
            prefill_splits,
            merged_tokens,
            batch_invariant: self.config.batch_invariant,
        }))
    }

    /// Fills the staging area; with `pad_to > 0` (decode-only graph batches) adds dummy rows up
    /// to that size, writing to the reserved block. Returns how the attention tiles were cut.
    fn fill(&mut self, batch: &ForwardBatch, params: &[SampleParams], pad_to: usize) -> Result<Tiling> {
        let model = self.model.clone();
        let c = shard(&model, self.rank_index())?.1;
        let l = self.layout;
        let t = batch.tokens.len();
        let n = batch.seqs.len();
        let (max_t, max_s) = (self.config.max_tokens, self.config.max_seqs);
        ensure!(t > 0, "empty batch");
        ensure!(
            t <= max_t && n <= max_s,
            "batch of {t} tokens in {n} sequences exceeds the runner's limits ({max_t} tokens, {max_s} sequences)"
        );
        ensure!(batch.logit_rows.len() <= max_s, "{} logit rows exceed the limit of {max_s}", batch.logit_rows.len());
        let vocab = model.config().vocab_size;
        let slots_total = (self.num_blocks + 1) * self.config.block_size;
        // Only a runner that samples holds the tokens a marked word names.
        let sampled_rows = if self.rank.is_none() { self.last_rows } else { 0 };
        let w = self.turns[self.next_turn].staging.as_mut_slice();
        w[l.real_tokens] = t as u32;
        for (i, ((&tok, &pos), &slot)) in batch.tokens.iter().zip(batch.positions).zip(batch.slots).enumerate() {
            if let Some(row) = sampled_row(tok) {
                ensure!(
                    row < sampled_rows,
                    "row {i} takes the token sampled for row {row} of the step before, which drew {sampled_rows} tokens on this GPU"
                );
            } else {
                ensure!((tok as usize) < vocab, "token id {tok} at row {i} is out of range for a vocabulary of {vocab}");
            }
            ensure!(slot < slots_total, "KV slot {slot} at row {i} is beyond the cache's {slots_total} slots");
            w[l.tokens + i] = tok;
            w[l.positions + i] = pos as u32;
            w[l.slots + i] = slot as u32;
        }
        let group = c.num_heads / c.num_kv_heads;
        let tensor_core_prefill = !self.config.batch_invariant && pad_to == 0;
        let is_prefill = |len: usize| tensor_core_prefill && len >= PREFILL_ATTENTION_MIN_TOKENS;
        let mut tiling = Tiling::default();
        let mut table = 0;
        let blocks_total = self.num_blocks + 1;
        for (si, s) in batch.seqs.iter().enumerate() {
            w[l.table_offsets + si] = table as u32;
            let needed = (s.first_pos + s.len).div_ceil(self.config.block_size);
            ensure!(
                s.block_table.len() >= needed,
                "sequence {si} has {} blocks for {} positions",
                s.block_table.len(),
                s.first_pos + s.len
            );
            ensure!(table + needed <= l.words - l.table_data, "block tables exceed the staging area");
            for (j, &b) in s.block_table[..needed].iter().enumerate() {
                ensure!((b as usize) < blocks_total, "block {b} of sequence {si} is beyond the cache's {blocks_total} blocks");
                w[l.table_data + table + j] = b;
            }
            table += needed;
        }
        // CUDA-core tiles first, then the prefill ones (heaviest first), so each kernel takes a
        // contiguous run.
        let mut at = l.tiles;
        for prefill in [false, true] {
            let rows_per_tile = (if prefill { PREFILL_ATTENTION_MAX_ROWS } else { ATTENTION_MAX_ROWS } / group).max(1);
            let first = at;
            for (si, s) in batch.seqs.iter().enumerate().filter(|(_, s)| is_prefill(s.len) == prefill) {
                let mut off = 0;
                while off < s.len {
                    let rows = rows_per_tile.min(s.len - off);
                    w[at..at + 4].copy_from_slice(&[si as u32, (s.start + off) as u32, rows as u32, (s.first_pos + off) as u32]);
                    at += 4;
                    if prefill {
                        tiling.prefill_tiles += 1;
                        tiling.prefill_tokens_start = tiling.prefill_tokens_start.min(s.start + off);
                    } else {
                        tiling.tiles += 1;
                        tiling.tile_rows = tiling.tile_rows.max(rows * group);
                        tiling.decode_tokens_end = tiling.decode_tokens_end.max(s.start + off + rows);
                        tiling.decode_max_ctx = tiling.decode_max_ctx.max(s.first_pos + off + rows);
                    }
                    off += rows;
                }
            }
            if prefill {
                heaviest_tiles_first(w[first..at].as_chunks_mut::<4>().0);
            }
        }
        w[l.table_offsets + n] = table as u32;
        for (i, &r) in batch.logit_rows.iter().enumerate() {
            w[l.logit_rows + i] = r as u32;
        }
        let write_params = |w: &mut [u32], i: usize, p: &SampleParams| {
            let at = l.params + 6 * i;
            w[at..at + 6].copy_from_slice(&[
                p.temperature.to_bits(),
                p.top_k,
                p.top_p.to_bits(),
                p.seed as u32,
                (p.seed >> 32) as u32,
                p.index,
            ]);
        };
        for (i, p) in params.iter().enumerate() {
            write_params(w, i, p);
        }
        let reserved = self.num_blocks as u32;
        for i in n..pad_to {
            w[l.tokens + i] = 0;
            w[l.positions + i] = 0;
            w[l.slots + i] = reserved * self.config.block_size as u32;
            w[l.table_offsets + i] = table as u32;
            w[l.table_offsets + i + 1] = table as u32 + 1;
            let at = l.tiles + 4 * i;
            w[at..at + 4].copy_from_slice(&[i as u32, i as u32, 1, 0]);
            w[l.logit_rows + i] = i as u32;
            write_params(w, i, &SampleParams::GREEDY);
        }
        if pad_to > n {
            w[l.table_data + table] = reserved;
            table += 1;
        }
        self.turns[self.next_turn].staged_words = l.table_data + table;
        Ok(tiling)
    }

    /// For a tensor-parallel rank, records the collectives a step of `shape` queues, each as an
    /// instant span with its bytes and rank count on this rank's thread, replayed graphs
    /// included (the analyzer joins the sizes to the NCCL kernels' times).
    fn record_collectives(&self, shape: StepShape) -> Result<()> {
        let Some((_, rank)) = &self.rank else { return Ok(()) };
        let c = self.config_computed()?;
        let ranks = rank.comm.ranks;
        let now = lumen_trace::now_ns();
        let reduce = format!("{{\"bytes\":{},\"ranks\":{ranks}}}", shape.tokens * c.hidden_size * 2);
        for _ in 0..2 * c.num_layers {
            record_span(Category::Debug, "all_reduce", now, now, Some(reduce.clone()));
        }
        let gather = format!("{{\"bytes\":{},\"ranks\":{ranks}}}", ranks * shape.rows * c.vocab_size * 4);
        record_span(Category::Debug, "all_gather", now, now, Some(gather));
        Ok(())
    }

    fn rank_index(&self) -> Option<usize> {
        self.rank.as_ref().map(|(r, _)| *r)
    }

    /// The config the forward pass computes with: the model's, or this rank's.
    fn config_computed(&self) -> Result<&ModelConfig> {
        Ok(shard(&self.model, self.rank_index())?.1)
    }

    /// Queues the model's forward pass for `shape`, and the sampler when `sample` (on rank 0 only,
    /// for a tensor-parallel rank).
    fn enqueue(&mut self, shape: StepShape, sample: bool) -> Result<()> {
        let model = self.model.clone();
        let (w, c) = shard(&model, self.rank_index())?;
        let l = self.layout;
        let inputs = StepInputs {
            tokens: self.dev(l.tokens),
            positions: self.dev(l.positions),
            slots: self.dev(l.slots),
            logit_rows: self.dev(l.logit_rows),
            tiles: self.dev(l.tiles),
            table_offsets: self.dev(l.table_offsets),
            table_data: self.dev(l.table_data),
            split_tokens: self.dev(l.split_tokens),
            real_tokens: self.dev(l.real_tokens),
            sampled: self.sampled.ptr,
        };
        enqueue_forward(w, c, &mut self.linear, &self.act, &self.kv, &inputs, shape, self.rank.as_ref().map(|(_, r)| r))?;
        if sample && self.rank_index().unwrap_or(0) == 0 {
            let vocab = model.config().vocab_size;
            w.kernels.sample_tokens(&self.gpu, self.act.logits.ptr, self.dev(l.params), shape.rows, vocab, self.sampled.ptr)?;
        }
        Ok(())
    }
}

/// How a step's attention tiles were cut (see [`StepShape`]).
#[derive(Debug, Clone, Copy)]
struct Tiling {
    tiles: usize,
    tile_rows: usize,
    prefill_tiles: usize,
    /// The CUDA-core tiles' last token (step index) plus one, and their longest context.
    decode_tokens_end: usize,
    decode_max_ctx: usize,
    /// The prefill tiles' first token (step index); usize::MAX without any.
    prefill_tokens_start: usize,
}

impl Default for Tiling {
    fn default() -> Self {
        Tiling { tiles: 0, tile_rows: 0, prefill_tiles: 0, decode_tokens_end: 0, decode_max_ctx: 0, prefill_tokens_start: usize::MAX }
    }
}

enum Staged {
    Graph((usize, usize), StepShape),
    Eager(StepShape),
}

/// What the split plan of a step depends on besides the step: attention blocks per tile of one
/// token, the GPU's multiprocessors, batch-invariant mode, and the fewest positions a split takes.
#[derive(Clone, Copy, Debug)]
struct SplitPlanInputs {
    blocks_per_tile: usize,
    multiprocessors: usize,
    batch_invariant: bool,
    min_split: usize,
}

/// The fewest positions a KV split of a step takes outside batch-invariant mode: `LUMEN_KV_SPLIT_MIN`
/// (rounded up to a multiple of 32), else 32.
fn kv_split_min(setting: Option<&str>) -> Result<usize> {
    let Some(text) = setting else { return Ok(SPLIT_ALIGN) };
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n.next_multiple_of(SPLIT_ALIGN)),
        _ => bail!("LUMEN_KV_SPLIT_MIN={text:?}: expected a positive number of positions (the fewest a KV split of attention takes)"),
    }
}

/// Whether a step's decode tiles take KV splits of their own while its prefill tiles run unsplit:
/// when it has both, and every decode tile's tokens come before the first prefill tile's (the
/// scheduler puts running sequences first), so the decode tokens' split partials fit the rows of
/// the step's first tokens. Batch-invariant steps have no prefill tiles.
fn decode_tiles_split_alone(tiling: &Tiling) -> bool {
    tiling.tiles > 0 && tiling.prefill_tiles > 0 && tiling.decode_tokens_end <= tiling.prefill_tokens_start
}

/// A step's KV splits: how many and of what size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SplitPlan {
    splits: usize,
    size: usize,
    /// In batch-invariant mode, the partial rows a step needed and could not have: it runs
    /// unsplit, so its rows sum in another order than the fixed splits give them.
    invariant_rows_short: Option<usize>,
}

/// How many KV splits attention uses for a step of `tiles` tiles and `tokens` tokens whose
/// longest context is `max_ctx`, and of what size. Batch-invariant mode fixes the size;
/// otherwise enough splits to give every multiprocessor two blocks, no smaller than one KV step,
/// and none when the partial sums (`splits × tokens` rows) would not fit `part_capacity`.
fn plan_splits(p: SplitPlanInputs, tiles: usize, max_ctx: usize, tokens: usize, part_capacity: usize) -> SplitPlan {
    let (splits, size) = if p.batch_invariant {
        (max_ctx.div_ceil(INVARIANT_SPLIT_TOKENS), INVARIANT_SPLIT_TOKENS)
    } else {
        let blocks = tiles * p.blocks_per_tile;
        let want = (2 * p.multiprocessors).div_ceil(blocks.max(1)).max(1);
        let splits = want.min(max_ctx.div_ceil(p.min_split));
        let size = max_ctx.div_ceil(splits).next_multiple_of(SPLIT_ALIGN);
        (max_ctx.div_ceil(size), size)
    };
    if splits > 1 && splits * tokens <= part_capacity {
        SplitPlan { splits, size, invariant_rows_short: None }
    } else {
        let invariant_rows_short = (p.batch_invariant && splits > 1).then_some(splits * tokens);
        SplitPlan { splits: 1, size: max_ctx.next_multiple_of(SPLIT_ALIGN), invariant_rows_short }
    }
}

/// Rows of attention split partials the runner allocates beside its `max_tokens` (each row is one
/// token's partial sums for every head, 256 KiB at DeepSeek-V3's 128 heads of 512 latents).
/// Batch-invariant steps split every sequence of `max_seqs` into parts of
/// [`INVARIANT_SPLIT_TOKENS`], up to 64 of them. Otherwise a step of `n` one-token sequences
/// takes `s ≥ 2` splits only when `n·(s − 1) < 2·SMs` (each sequence's blocks times `s − 1`
/// fall short of two blocks a multiprocessor), and its graph's split grid, `s` rounded up to a
/// power of two, is at most `2·(s − 1)`: fewer than `4·SMs` rows, whatever the batch limits.
fn split_partial_rows(max_seqs: usize, multiprocessors: usize, batch_invariant: bool) -> usize {
    if batch_invariant {
        max_seqs * 64
    } else {
        4 * multiprocessors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(graph_padding: bool, graph_sizes: Vec<usize>) -> RunnerConfig {
        RunnerConfig { max_tokens: 64, max_seqs: 8, block_size: 16, graph_sizes, graph_padding, batch_invariant: false, kv_fp8: false }
    }

    #[test]
    fn padded_batches_take_the_next_captured_size() {
        let c = config(true, vec![1, 2, 4, 8, 16, 24, 32]);
        assert_eq!(c.graph_size(1), Some(1));
        assert_eq!(c.graph_size(3), Some(4));
        assert_eq!(c.graph_size(17), Some(24));
        assert_eq!(c.graph_size(32), Some(32));
        assert_eq!(c.graph_size(33), None, "above every captured size");
        assert_eq!(c.graph_size(0), None, "an empty batch has no graph");
    }

    /// Every decode step a graph replays keeps the splits the plan wants within the partial rows
    /// allocated outside batch-invariant mode (the graph's split grid is the next power of two),
    /// for the head layouts lumen runs (1 to 16 blocks a token) on GPUs of 78 to 144
    /// multiprocessors, from one sequence to 4,096 and contexts of 1 to 131,072 tokens.
    #[test]
    fn split_partials_hold_every_decode_steps_splits() {
        for multiprocessors in [78, 114, 132, 144] {
            let rows = split_partial_rows(4096, multiprocessors, false);
            for blocks_per_tile in [1, 2, 4, 8, 16] {
                let p = SplitPlanInputs { blocks_per_tile, multiprocessors, batch_invariant: false, min_split: SPLIT_ALIGN };
                for n in 1..=4096 {
                    for max_ctx in [1, 33, 150, 2048, 131_072] {
                        let wanted = plan_splits(p, n, max_ctx, n, usize::MAX).splits;
                        let grid = wanted.next_power_of_two();
                        assert!(
                            wanted == 1 || grid * n <= rows,
                            "{n} sequences at {max_ctx} tokens, {blocks_per_tile} blocks a token, {multiprocessors} SMs: \
                             {wanted} splits need {} rows of {rows}",
                            grid * n
                        );
                        assert_eq!(plan_splits(p, n, max_ctx, n, rows).splits, if grid * n <= rows { wanted } else { 1 });
                    }
                }
            }
        }
    }

    /// A batch-invariant step is reported exactly when the plan runs it unsplit although its
    /// context spans several fixed splits: a 2,048-token prefill chunk at 2,048 positions needs
    /// 32 rows a token, beyond 64 sequences' 64 rows each; a 300-token prompt fits.
    #[test]
    fn batch_invariant_steps_that_run_unsplit_are_the_ones_reported() {
        let p = SplitPlanInputs { blocks_per_tile: 8, multiprocessors: 132, batch_invariant: true, min_split: SPLIT_ALIGN };
        let capacity = split_partial_rows(64, 132, true).max(2048);
        let cases = [
            (2048, 2048, Some(65_536)),
            (300, 300, None),
            (1, 131_072, None),
            (64, 4096, None),
            (1, 64, None),
            (100, 65, None),
            (4096, 4096, Some(262_144)),
        ];
        for (tokens, max_ctx, short) in cases {
            let plan = plan_splits(p, 1, max_ctx, tokens, capacity);
            assert_eq!(plan.invariant_rows_short, short, "{tokens} tokens at {max_ctx} positions: {plan:?}");
            let unsplit = plan.splits == 1 && max_ctx.div_ceil(INVARIANT_SPLIT_TOKENS) > 1;
            assert_eq!(plan.invariant_rows_short.is_some(), unsplit, "{tokens} tokens at {max_ctx} positions: {plan:?}");
        }
        let not_invariant = SplitPlanInputs { batch_invariant: false, ..p };
        let plan = plan_splits(not_invariant, 1, 2048, 2048, capacity);
        assert_eq!((plan.splits, plan.invariant_rows_short), (1, None), "only batch-invariant steps promise their bits: {plan:?}");
    }

    /// A step of 18 decode tokens beside 7,662 prefill tokens (448 prefill tiles), the decode
    /// tokens first: planned together, the prefill tiles fill the GPU and nothing splits, leaving
    /// the decode launch 144 blocks on 132 multiprocessors; planned alone, the decode tiles take
    /// two splits. A short prompt after the prefill tokens keeps the step planned as one.
    #[test]
    fn decode_tiles_beside_prefill_tiles_split_on_their_own() {
        let p = SplitPlanInputs { blocks_per_tile: 8, multiprocessors: 132, batch_invariant: false, min_split: SPLIT_ALIGN };
        let tiling =
            Tiling { tiles: 18, tile_rows: 4, prefill_tiles: 448, decode_tokens_end: 18, decode_max_ctx: 2100, prefill_tokens_start: 18 };
        assert!(decode_tiles_split_alone(&tiling));
        assert_eq!(plan_splits(p, tiling.tiles + tiling.prefill_tiles, 2100, 7680, 7680).splits, 1);
        assert_eq!(plan_splits(p, tiling.tiles, tiling.decode_max_ctx, tiling.decode_tokens_end, 7680).splits, 2);
        let prompt_after = Tiling { decode_tokens_end: 7680, ..tiling };
        assert!(!decode_tiles_split_alone(&prompt_after));
        assert!(!decode_tiles_split_alone(&Tiling { prefill_tiles: 0, prefill_tokens_start: usize::MAX, ..tiling }));
        assert!(!decode_tiles_split_alone(&Tiling { tiles: 0, decode_tokens_end: 0, decode_max_ctx: 0, ..tiling }));
    }

    /// One decode token at 200 positions wants 33 splits (two blocks for each of 132
    /// multiprocessors over 8 KV heads): 7 of 32 positions by default, fewer and longer with
    /// `LUMEN_KV_SPLIT_MIN`, none once a split would hold the whole context.
    #[test]
    fn the_fewest_positions_a_split_takes_bounds_the_split_count() {
        assert_eq!(kv_split_min(None).unwrap(), 32);
        assert_eq!(kv_split_min(Some("100")).unwrap(), 128);
        for bad in ["0", "-5", "many", ""] {
            let e = kv_split_min(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("LUMEN_KV_SPLIT_MIN") && e.contains("positive number of positions"), "{e}");
        }
        let plan = |min_split| {
            let p = SplitPlanInputs { blocks_per_tile: 8, multiprocessors: 132, batch_invariant: false, min_split };
            let planned = plan_splits(p, 1, 200, 1, 4096);
            (planned.splits, planned.size)
        };
        assert_eq!(plan(32), (7, 32));
        assert_eq!(plan(128), (2, 128));
        assert_eq!(plan(256), (1, 224));
    }

    #[test]
    fn unpadded_batches_run_eagerly_between_captured_sizes() {
        let c = config(false, vec![1, 2, 3, 32, 64]);
        assert_eq!(c.graph_size(3), Some(3));
        assert_eq!(c.graph_size(64), Some(64));
        assert_eq!(c.graph_size(33), None);
        assert_eq!(config(true, vec![]).graph_size(1), None, "graphs off");
    }
}
