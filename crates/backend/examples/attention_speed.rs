//! Attention kernel speed on the GPU machine: for decode batches and prefill chunks of the
//! Llama-3.1-8B attention shape (32 query heads, 8 KV heads, head size 128, bf16 or FP8 cache,
//! blocks of 16), the median time of one launch of the CUDA-core kernel, of the kernel a decode
//! step gets (one-token tiles) and of the tensor-core prefill kernel (CUDA events), with the KV bytes read per second and the attention FLOP rate
//! (causal work only). `attention_speed [heads kv_heads head_dim] [--shape TEXT]`: `--shape` keeps the
//! shapes whose name holds TEXT (one kernel under a profiler, say).

use lumen_backend::cuda::kernels::{heaviest_tiles_first, ATTENTION_MAX_ROWS, PREFILL_ATTENTION_MAX_ROWS};
use lumen_backend::cuda::{AttentionArgs, Gpu, Kernels};

const BLOCK: usize = 16;

/// `seqs` sequences, each querying `len` tokens at positions `ctx - len .. ctx`.
struct Shape {
    name: &'static str,
    seqs: usize,
    len: usize,
    ctx: usize,
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let shape_filter = match args.iter().position(|a| a == "--shape") {
        Some(i) if i + 1 < args.len() => {
            let text = args.remove(i + 1);
            args.remove(i);
            Some(text)
        }
        Some(_) => anyhow::bail!("--shape needs a text the shape names are matched against, e.g. --shape \"prefill 4\""),
        None => None,
    };
    let args: Vec<usize> = args
        .iter()
        .map(|a| a.parse().map_err(|_| anyhow::anyhow!("expected sizes `heads kv_heads head_dim` as integers, got `{a}`")))
        .collect::<anyhow::Result<_>>()?;
    let [heads, kv_heads, hd] = if args.len() == 3 { [args[0], args[1], args[2]] } else { [32, 8, 128] };
    let group = heads / kv_heads;
    let gpu = Gpu::open(0)?;
    let kernels = Kernels::load(&gpu)?;
    println!("{} | heads {heads}/{kv_heads}, head_dim {hd}, median of 20 runs", gpu.info.name);
    println!("{:>26} {:>5} {:>12} {:>9} {:>8} {:>9}", "shape", "cache", "kernel", "time us", "KV GB/s", "TFLOP/s");
    let shapes = [
        Shape { name: "decode 64 x ctx 2048", seqs: 64, len: 1, ctx: 2048 },
        Shape { name: "decode 256 x ctx 2048", seqs: 256, len: 1, ctx: 2048 },
        Shape { name: "decode 512 x ctx 256", seqs: 512, len: 1, ctx: 256 },
        Shape { name: "decode 512 x ctx 1152", seqs: 512, len: 1, ctx: 1152 },
        Shape { name: "prefill 4 x 2048", seqs: 4, len: 2048, ctx: 2048 },
        Shape { name: "prefill 1 x 2048", seqs: 1, len: 2048, ctx: 2048 },
        Shape { name: "chunk 1 x 2048 at 6144", seqs: 1, len: 2048, ctx: 8192 },
        Shape { name: "prefill 60 x 128", seqs: 60, len: 128, ctx: 128 },
    ];
    for s in shapes.iter().filter(|s| shape_filter.as_ref().is_none_or(|f| s.name.contains(f.as_str()))) {
        let blocks_per_seq = s.ctx.div_ceil(BLOCK);
        let num_blocks = s.seqs * blocks_per_seq;
        let tokens = s.seqs * s.len;
        let table: Vec<u32> = (0..num_blocks as u32).collect();
        let offsets: Vec<u32> = (0..=s.seqs).map(|i| (i * blocks_per_seq) as u32).collect();
        let positions: Vec<u32> = (0..s.seqs).flat_map(|_| (s.ctx - s.len..s.ctx).map(|p| p as u32)).collect();
        let q = gpu.upload(
            &(0..tokens * heads * hd).map(|i| lumen_backend::cuda::to_bf16(((i * 37 % 101) as f32 - 50.0) / 60.0)).collect::<Vec<u16>>(),
            "q",
        )?;
        let cache_elems = num_blocks * kv_heads * BLOCK * hd;
        let k = gpu.alloc(cache_elems * 2, "k")?;
        let v = gpu.alloc(cache_elems * 2, "v")?;
        gpu.fill(k.ptr, 0x3c, cache_elems * 2)?;
        gpu.fill(v.ptr, 0x3c, cache_elems * 2)?;
        let (table, offsets, positions) =
            (gpu.upload(&table, "table")?, gpu.upload(&offsets, "offsets")?, gpu.upload(&positions, "positions")?);
        let split = gpu.upload(&[s.ctx.next_multiple_of(32) as u32], "split")?;
        let out = gpu.alloc(tokens * heads * hd * 2, "out")?;
        let causal_pairs: f64 = (s.ctx - s.len + 1..=s.ctx).map(|c| c as f64).sum::<f64>() * s.seqs as f64;
        let flops = 4.0 * causal_pairs * (heads * hd) as f64;
        for fp8 in [false, true] {
            let bytes = s.seqs as f64 * s.ctx as f64 * (kv_heads * hd * 2) as f64 * if fp8 { 1.0 } else { 2.0 };
            // The CUDA-core kernel (as batch-invariant runs keep it), the kernel a decode step
            // gets (one-token tiles only: the tensor-core decode kernel where it is chosen), the
            // tensor-core prefill kernel.
            for (kernel, tensor_cores, batch_invariant) in
                [("cuda-core", false, true), ("decode", false, false), ("tensor-core", true, false)]
            {
                if kernel == "decode" && s.len > 1 {
                    continue;
                }
                let rows_per_tile = (if tensor_cores { PREFILL_ATTENTION_MAX_ROWS } else { ATTENTION_MAX_ROWS } / group).max(1);
                let mut tiles = Vec::new();
                for si in 0..s.seqs {
                    for off in (0..s.len).step_by(rows_per_tile) {
                        let n = rows_per_tile.min(s.len - off);
                        tiles.push([si as u32, (si * s.len + off) as u32, n as u32, (s.ctx - s.len + off) as u32]);
                    }
                }
                if tensor_cores {
                    heaviest_tiles_first(&mut tiles);
                }
                let num_tiles = tiles.len();
                let tiles = gpu.upload(tiles.as_flattened(), "tiles")?;
                let args = AttentionArgs {
                    q: q.ptr,
                    k_cache: k.ptr,
                    v_cache: v.ptr,
                    kv_fp8: fp8,
                    tiles: tiles.ptr,
                    num_tiles: if tensor_cores { 0 } else { num_tiles },
                    max_tile_rows: rows_per_tile.min(s.len) * group,
                    prefill_tiles: if tensor_cores { num_tiles } else { 0 },
                    table_offsets: offsets.ptr,
                    table_data: table.ptr,
                    positions: positions.ptr,
                    num_tokens: tokens,
                    heads,
                    kv_heads,
                    head_dim: hd,
                    block_size: BLOCK,
                    window: 0,
                    sinks: 0,
                    split_tokens: split.ptr,
                    splits: 1,
                    prefill_splits: 1,
                    merged_tokens: 0,
                    batch_invariant,
                    out: out.ptr,
                    part_acc: 0,
                    part_ml: 0,
                };
                let ms = gpu.median_ms(3, 20, || kernels.attention(&gpu, &args))?;
                println!(
                    "{:>26} {:>5} {:>12} {:>9.1} {:>8.0} {:>9.1}",
                    s.name,
                    if fp8 { "fp8" } else { "bf16" },
                    kernel,
                    ms * 1e3,
                    bytes / ms / 1e6,
                    flops / ms / 1e9
                );
            }
        }
    }
    Ok(())
}
