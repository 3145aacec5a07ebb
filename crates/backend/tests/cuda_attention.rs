//! The attention kernels against a host reference in f64, on the GPU machine (skipped without a
//! GPU). One launch holds a decode tile (the tensor-core decode kernel, or the CUDA-core one for
//! groups above eight) and prefill tiles (the tensor-core prefill kernel) over a paged cache with
//! scattered blocks: a 100-token chunk at positions 200..299 and a fresh 37-token prompt. A decode
//! step of five sequences (contexts of 1 to 1,000 positions) runs alone too. Every case of head size (32, 64, 128), GQA group (1, 4, 8), sliding
//! window, KV splits (merged by `attention_combine`), attention sinks (GPT-OSS's per-head logit in
//! every softmax's denominator, with and without splits) and FP8 cache gives every output element
//! within [`ABS_TOL`] of the reference; the same rows cut into CUDA-core tiles only meet the same
//! bound, and so does the mixed launch with its decode tile alone split (32 positions a split)
//! beside unsplit prefill tiles.

use lumen_backend::cuda::kernels::{heaviest_tiles_first, ATTENTION_MAX_ROWS, PREFILL_ATTENTION_MAX_ROWS};
use lumen_backend::cuda::{to_bf16, AttentionArgs, DeviceBuffer, Gpu, Kernels};
use lumen_backend::fp8::{from_e4m3, to_e4m3};
use lumen_backend::rng::splitmix64;
use std::sync::Arc;

/// Values lie in [-1, 1]; the tensor-core kernel rounds the softmax weights to bf16 (relative
/// 2^-9) before P·V and the output is bf16, so errors near 4e-3 are expected.
const ABS_TOL: f64 = 1e-2;
const BLOCK: usize = 16;

struct Case {
    head_dim: usize,
    heads: usize,
    kv_heads: usize,
    window: usize,
    split_tokens: Option<usize>,
    kv_fp8: bool,
    /// Whether each head has a sink logit.
    sinks: bool,
}

/// One sequence of the step: its context in the cache and the tokens this step queries.
struct Seq {
    first_pos: usize,
    len: usize,
    blocks: Vec<u32>,
}

fn uniform(i: u64, salt: u64) -> f32 {
    (splitmix64(salt.wrapping_mul(0x9e37_79b9) ^ i) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
}

fn bf16_value(x: f32) -> f32 {
    half::bf16::from_bits(to_bf16(x)).to_f32()
}

struct Problem {
    seqs: Vec<Seq>,
    /// (sequence, position) of each query token, in token order.
    rows: Vec<(usize, usize)>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Per head, its sink logit (bf16 values in [0, 6]: from a small share of a long row's
    /// softmax to most of it), used where the case has sinks.
    sinks: Vec<f32>,
}

impl Problem {
    /// A decode token at position 80, a 100-token chunk at 200..299, a 37-token prompt.
    fn new(c: &Case) -> Self {
        Self::of(c, &[(80, 1), (200, 100), (0, 37)])
    }

    /// A decode step alone: one token each of sequences whose contexts hold 1 to 1,000 positions.
    fn decode(c: &Case) -> Self {
        Self::of(c, &[(0, 1), (16, 1), (80, 1), (300, 1), (999, 1)])
    }

    /// Sequences of (first position, tokens queried).
    fn of(c: &Case, shapes: &[(usize, usize)]) -> Self {
        let mut num_blocks = 0;
        let mut seqs = Vec::new();
        for &(first_pos, len) in shapes {
            let n = (first_pos + len).div_ceil(BLOCK);
            seqs.push(Seq { first_pos, len, blocks: (num_blocks as u32..(num_blocks + n) as u32).collect() });
            num_blocks += n;
        }
        // Scatter the blocks: a fixed permutation of the cache.
        let mut perm: Vec<u32> = (0..num_blocks as u32).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, (splitmix64(i as u64) % (i as u64 + 1)) as usize);
        }
        for s in &mut seqs {
            s.blocks.iter_mut().for_each(|b| *b = perm[*b as usize]);
        }
        let rows: Vec<(usize, usize)> =
            seqs.iter().enumerate().flat_map(|(si, s)| (s.first_pos..s.first_pos + s.len).map(move |p| (si, p))).collect();
        let hd = c.head_dim;
        let q = (0..rows.len() * c.heads * hd).map(|i| bf16_value(uniform(i as u64, 1))).collect();
        let cache = |salt| {
            (0..num_blocks * c.kv_heads * BLOCK * hd)
                .map(|i| {
                    let x = uniform(i as u64, salt);
                    if c.kv_fp8 {
                        from_e4m3(to_e4m3(x))
                    } else {
                        bf16_value(x)
                    }
                })
                .collect()
        };
        let sinks = (0..c.heads).map(|h| bf16_value(3.0 + 3.0 * uniform(h as u64, 4))).collect();
        Problem { seqs, rows, q, k: cache(2), v: cache(3), sinks }
    }

    fn cache_index(&self, c: &Case, s: &Seq, kvh: usize, pos: usize) -> usize {
        ((s.blocks[pos / BLOCK] as usize * c.kv_heads + kvh) * BLOCK + pos % BLOCK) * c.head_dim
    }

    /// softmax(q·kᵀ/√d)·v over each row's causal (and windowed) context, in f64, the head's sink
    /// (where the case has sinks) joining the softmax's denominator.
    fn reference(&self, c: &Case) -> Vec<f64> {
        let hd = c.head_dim;
        let group = c.heads / c.kv_heads;
        let mut out = vec![0.0; self.rows.len() * c.heads * hd];
        for (t, &(si, pos)) in self.rows.iter().enumerate() {
            let s = &self.seqs[si];
            let lo = if c.window > 0 { (pos + 1).saturating_sub(c.window) } else { 0 };
            for h in 0..c.heads {
                let q = &self.q[(t * c.heads + h) * hd..][..hd];
                let scores: Vec<f64> = (lo..=pos)
                    .map(|j| {
                        let k = &self.k[self.cache_index(c, s, h / group, j)..][..hd];
                        q.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let sink = c.sinks.then(|| self.sinks[h] as f64);
                let max = scores.iter().chain(&sink).cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = weights.iter().sum::<f64>() + sink.map_or(0.0, |s| (s - max).exp());
                let o = &mut out[(t * c.heads + h) * hd..][..hd];
                for (j, w) in (lo..=pos).zip(&weights) {
                    let v = &self.v[self.cache_index(c, s, h / group, j)..][..hd];
                    o.iter_mut().zip(v).for_each(|(o, &v)| *o += w / total * v as f64);
                }
            }
        }
        out
    }

    /// Tiles in the runner's format: (sequence, first row, rows, first position); the CUDA-core
    /// ones first, then as the runner orders them, the prefill ones heaviest first. With `prefill`,
    /// sequences of more than one token go to the tensor-core kernel.
    fn tiles(&self, c: &Case, prefill: bool) -> (Vec<u32>, usize, usize, usize) {
        let group = c.heads / c.kv_heads;
        let (mut words, mut small, mut large, mut small_rows) = (Vec::new(), 0, 0, 0);
        for want_prefill in [false, true] {
            let mut tiles = Vec::new();
            let mut start = 0;
            for (si, s) in self.seqs.iter().enumerate() {
                let is_prefill = prefill && s.len > 1;
                if is_prefill == want_prefill {
                    let per_tile = (if is_prefill { PREFILL_ATTENTION_MAX_ROWS } else { ATTENTION_MAX_ROWS } / group).max(1);
                    let mut off = 0;
                    while off < s.len {
                        let n = per_tile.min(s.len - off);
                        tiles.push([si as u32, (start + off) as u32, n as u32, (s.first_pos + off) as u32]);
                        if is_prefill {
                            large += 1;
                        } else {
                            small += 1;
                            small_rows = small_rows.max(n * group);
                        }
                        off += n;
                    }
                }
                start += s.len;
            }
            if want_prefill {
                heaviest_tiles_first(&mut tiles);
            }
            words.extend(tiles.as_flattened());
        }
        (words, small, small_rows, large)
    }
}

struct Device {
    gpu: Arc<Gpu>,
    kernels: Kernels,
}

/// Runs one attention launch over `p` and returns its output as floats. With
/// `decode_split_alone`, its decode tiles (tokens first in the step) take KV splits of that many
/// positions while its prefill tiles run unsplit, as the runner launches a step of both.
fn run(d: &Device, c: &Case, p: &Problem, prefill: bool, decode_split_alone: Option<usize>) -> Vec<f32> {
    let gpu = &d.gpu;
    let hd = c.head_dim;
    let up = |v: &[u32], what: &str| gpu.upload(v, what).unwrap();
    let cache = |v: &[f32], what: &str| -> DeviceBuffer {
        if c.kv_fp8 {
            gpu.upload(&v.iter().map(|&x| to_e4m3(x)).collect::<Vec<u8>>(), what).unwrap()
        } else {
            gpu.upload(&v.iter().map(|&x| to_bf16(x)).collect::<Vec<u16>>(), what).unwrap()
        }
    };
    let q = gpu.upload(&p.q.iter().map(|&x| to_bf16(x)).collect::<Vec<u16>>(), "q").unwrap();
    let sinks = gpu.upload(&p.sinks.iter().map(|&x| to_bf16(x)).collect::<Vec<u16>>(), "sinks").unwrap();
    let (k, v) = (cache(&p.k, "k"), cache(&p.v, "v"));
    let (tiles, num_tiles, max_tile_rows, prefill_tiles) = p.tiles(c, prefill);
    let tiles = up(&tiles, "tiles");
    let mut offsets = vec![0u32];
    let mut table = Vec::new();
    for s in &p.seqs {
        table.extend(&s.blocks);
        offsets.push(table.len() as u32);
    }
    let (offsets, table) = (up(&offsets, "offsets"), up(&table, "table"));
    let positions = up(&p.rows.iter().map(|&(_, pos)| pos as u32).collect::<Vec<_>>(), "positions");
    let max_ctx = p.seqs.iter().map(|s| s.first_pos + s.len).max().unwrap();
    let t = p.rows.len();
    let (split, splits, prefill_splits, merged_tokens) = match decode_split_alone {
        Some(split) => {
            let decode: Vec<&Seq> = p.seqs.iter().take_while(|s| s.len == 1).collect();
            let decode_ctx = decode.iter().map(|s| s.first_pos + 1).max().expect("a decode token first");
            (split, decode_ctx.div_ceil(split), 1, decode.len())
        }
        None => {
            let split = c.split_tokens.unwrap_or(max_ctx.next_multiple_of(32));
            (split, max_ctx.div_ceil(split), max_ctx.div_ceil(split), t)
        }
    };
    let split_tokens = up(&[split as u32], "split");
    let out = gpu.alloc(t * c.heads * hd * 2, "out").unwrap();
    gpu.fill(out.ptr, 0xff, t * c.heads * hd * 2).unwrap();
    let part_acc = gpu.alloc(t * c.heads * splits * hd * 4, "partials").unwrap();
    let part_ml = gpu.alloc(t * c.heads * splits * 2 * 4, "maxima").unwrap();
    let args = AttentionArgs {
        q: q.ptr,
        k_cache: k.ptr,
        v_cache: v.ptr,
        kv_fp8: c.kv_fp8,
        tiles: tiles.ptr,
        num_tiles,
        max_tile_rows,
        prefill_tiles,
        table_offsets: offsets.ptr,
        table_data: table.ptr,
        positions: positions.ptr,
        num_tokens: t,
        heads: c.heads,
        kv_heads: c.kv_heads,
        head_dim: hd,
        block_size: BLOCK,
        window: c.window,
        sinks: if c.sinks { sinks.ptr } else { 0 },
        split_tokens: split_tokens.ptr,
        splits,
        prefill_splits,
        merged_tokens,
        batch_invariant: false,
        out: out.ptr,
        part_acc: part_acc.ptr,
        part_ml: part_ml.ptr,
    };
    d.kernels.attention(gpu, &args).unwrap();
    let mut bits = vec![0u16; t * c.heads * hd];
    gpu.download(&mut bits, out.ptr).unwrap();
    bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect()
}

fn worst_error(got: &[f32], want: &[f64]) -> (f64, usize) {
    got.iter().zip(want).enumerate().fold((0.0, 0), |(w, at), (i, (&g, &r))| {
        let e = if g.is_finite() { (g as f64 - r).abs() } else { f64::INFINITY };
        if e > w {
            (e, i)
        } else {
            (w, at)
        }
    })
}

#[test]
fn tensor_core_and_cuda_core_attention_match_the_host() {
    let Some(gpu) = lumen_test_support::gpu::device_or_skip(Gpu::open(0)) else { return };
    let d = Device { kernels: Kernels::load(&gpu).unwrap(), gpu };
    let case = |head_dim, heads, kv_heads, window, split_tokens, kv_fp8| Case {
        head_dim,
        heads,
        kv_heads,
        window,
        split_tokens,
        kv_fp8,
        sinks: false,
    };
    let sunk = |c: Case| Case { sinks: true, ..c };
    let cases = [
        case(128, 8, 2, 0, None, false),
        case(128, 8, 1, 0, None, false),
        case(64, 6, 6, 0, None, false),
        case(32, 4, 1, 0, None, false),
        case(128, 8, 2, 64, None, false),
        case(64, 8, 2, 0, Some(128), false),
        case(128, 4, 1, 48, Some(64), false),
        case(128, 8, 2, 0, None, true),
        case(64, 8, 2, 0, Some(96), true),
        sunk(case(64, 8, 1, 0, None, false)),
        sunk(case(64, 8, 8, 128, None, false)),
        sunk(case(64, 8, 1, 128, Some(64), false)),
        sunk(case(128, 8, 2, 0, Some(96), true)),
    ];
    for c in &cases {
        let p = Problem::new(c);
        let want = p.reference(c);
        let what = format!(
            "head_dim {} heads {}/{} window {} split {:?} fp8 {} sinks {}",
            c.head_dim, c.heads, c.kv_heads, c.window, c.split_tokens, c.kv_fp8, c.sinks
        );
        let (tensor_core, at) = worst_error(&run(&d, c, &p, true, None), &want);
        let (cuda_core, _) = worst_error(&run(&d, c, &p, false, None), &want);
        let (decode_split_alone, _) = worst_error(&run(&d, c, &p, true, Some(32)), &want);
        let decode_problem = Problem::decode(c);
        let (decode, _) = worst_error(&run(&d, c, &decode_problem, false, None), &decode_problem.reference(c));
        eprintln!(
            "{what}: worst error tensor-core {tensor_core:.2e}, CUDA-core {cuda_core:.2e}, decode tile split alone \
             {decode_split_alone:.2e}, decode step {decode:.2e} (bound {ABS_TOL:.0e})"
        );
        assert!(decode <= ABS_TOL, "{what}: decode-step error {decode:.2e}");
        assert!(decode_split_alone <= ABS_TOL, "{what}: error {decode_split_alone:.2e} with the decode tile split alone");
        let (token, rest) = (at / (c.heads * c.head_dim), at % (c.heads * c.head_dim));
        assert!(
            tensor_core <= ABS_TOL,
            "{what}: tensor-core error {tensor_core:.2e} at token {token} (position {}), head {}, dim {}",
            p.rows[token].1,
            rest / c.head_dim,
            rest % c.head_dim
        );
        assert!(cuda_core <= ABS_TOL, "{what}: CUDA-core error {cuda_core:.2e}");
    }
}

/// Two blocks of every tensor-core prefill kernel fit a multiprocessor: with one, the head-size-128
/// kernel measured 35-45% slower (docs/cuda-performance.md), so a shared-memory or register
/// budget that drops a block is a speed regression this catches.
#[test]
fn two_prefill_attention_blocks_fit_a_multiprocessor() {
    let Some(gpu) = lumen_test_support::gpu::device_or_skip(Gpu::open(0)) else { return };
    let kernels = Kernels::load(&gpu).unwrap();
    for head_dim in [32, 64, 128] {
        for kv_fp8 in [false, true] {
            let blocks = kernels.prefill_attention_blocks_per_sm(head_dim, kv_fp8).unwrap();
            eprintln!("head size {head_dim}, FP8 cache {kv_fp8}: {blocks} prefill attention blocks a multiprocessor");
            assert!(blocks >= 2, "head size {head_dim}, FP8 cache {kv_fp8}: {blocks} block(s) a multiprocessor, expected at least 2");
        }
    }
}
