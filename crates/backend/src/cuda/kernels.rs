//! Typed launches of lumen's own kernels. Every launch is checked and named: a failed launch
//! says which kernel, and with `LUMEN_CUDA_SYNC=1` each launch is followed by a synchronisation
//! so that a fault inside a kernel is reported with that kernel's name.

use super::compile::{load_kernels, Module};
use super::device::{describe, Gpu};
use super::gemm::check_product;
use super::tensor::{DType, Tensor};
use crate::ExpertActivation;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{result as cu, sys};
use std::ffi::c_void;

/// Kernel parameters, each stored in an 8-byte slot (the driver reads each parameter's own size).
#[derive(Default)]
pub struct Args(Vec<u64>);

impl Args {
    pub fn ptr(mut self, p: u64) -> Self {
        self.0.push(p);
        self
    }
    pub fn i32(mut self, v: i32) -> Self {
        self.0.push(v as u32 as u64);
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.push(v as u64);
        self
    }
    pub fn f32(mut self, v: f32) -> Self {
        self.0.push(v.to_bits() as u64);
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.push(v);
        self
    }
}

#[derive(Clone, Copy)]
struct Kernel {
    name: &'static str,
    function: sys::CUfunction,
    /// Dynamic shared memory a launch gives each block, in bytes.
    shared: u32,
}

pub struct Kernels {
    pub module: Module,
    embed_rms_norm: Kernel,
    add_rms_norm: Kernel,
    rope_kv_write: Kernel,
    silu_mul: Kernel,
    clamped_swiglu: Kernel,
    add_bias: Kernel,
    gather_rows: Kernel,
    moe_route: Kernel,
    moe_route_ranked: Kernel,
    moe_combine: Kernel,
    moe_gemv: Kernel,
    moe_align: Kernel,
    moe_grouped_gemm: Kernel,
    rms_norm_rows: Kernel,
    mla_rope_latent_write: Kernel,
    mla_absorb_query: Kernel,
    /// One and four query rows a warp (mla.cu's `mla_attention_r1`, `mla_attention_r4`).
    mla_attention: (Kernel, Kernel),
    /// One query row a block, its keys spread over the warps (`mla_attention_row`).
    mla_attention_row: Kernel,
    mla_value_heads: Kernel,
    /// By head size: the one-row-per-warp (decode) and four-rows-per-warp (prefill) variants.
    attention: [(usize, Kernel, Kernel); 3],
    attention_prefill: [(usize, Kernel, Kernel); 3],
    /// By head size: decode on the tensor cores (attention_decode.cu), for a bf16 and an FP8 cache.
    attention_decode: [(usize, Kernel, Kernel); 3],
    attention_combine: Kernel,
    sample_tokens: Kernel,
    gemv: Kernel,
    /// gemv.cu's tensor-core bf16 GEMV, without and with the SwiGLU.
    gemv_tc: (Kernel, Kernel),
    preset_fill: Kernel,
    amax_bf16: Kernel,
    quantize_fp8: Kernel,
    quantize_fp8_rows: Kernel,
    silu_mul_fp8: Kernel,
    scale_rows: Kernel,
    /// The FP8 GEMV, without and with the SwiGLU, one kernel for each bound in FP8_GEMV_K_BOUNDS.
    gemv_fp8: [Kernel; 3],
    gemv_fp8_swiglu: [Kernel; 3],
    sync_each_launch: bool,
    /// Launch with programmatic dependent launch (prelude.cu's `pdl_begin`): on by default from
    /// compute capability 9.0, off with `LUMEN_PDL=0`; `LUMEN_PDL_EARLY=1` lets each launch
    /// start the next one before its own wait.
    pdl: bool,
}

unsafe impl Send for Kernels {}
unsafe impl Sync for Kernels {}

/// Threads per block of the row-wise kernels.
const ROW_THREADS: u32 = 256;
/// Groups of four values each thread of a norm kernel holds (`NORM_ITEMS` in elementwise.cu).
const NORM_ITEMS: usize = 4;

/// Threads for a norm kernel over rows of `hidden`: enough for every thread to hold at most
/// `NORM_ITEMS` groups of four, in whole warps.
fn norm_threads(hidden: usize) -> u32 {
    (hidden / 4).div_ceil(NORM_ITEMS).next_multiple_of(32).clamp(32, 1024) as u32
}
/// Groups of eight values each `silu_mul_fp8` thread holds (`SILU_ITEMS` in elementwise.cu).
const SILU_ITEMS: usize = 4;
/// Widest SwiGLU output `silu_mul_fp8` takes: a row held by one block of 1,024 threads.
pub const SILU_FP8_MAX_WIDTH: usize = 8 * SILU_ITEMS * 1024;

/// Where a kernel that writes bf16 rows also writes their FP8 E4M3 codes (`[rows, cols]` bytes)
/// and each row's f32 scale: a product's input, quantized by the kernel that makes it
/// ([`Linear::input_codes`](super::linear::Linear::input_codes)). `codes` 0 is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fp8Rows {
    pub codes: u64,
    pub scales: u64,
}

/// The f32 scales (device address; 0 for none) an FP8 product's output rows still need: cuBLASLt
/// multiplies by the weight's scale only, and the kernel that reads the output multiplies each
/// row by its activations' scale as it loads it (a power of two, so the bf16 value it gets is the
/// one a product with both scales would have written).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowScales(pub u64);
pub const SAMPLE_THREADS: u32 = 1024;
/// Most experts per token `moe_route` chooses (`MOE_MAX_TOP_K` in moe.cu).
pub const MOE_MAX_TOP_K: usize = 16;
/// Most experts a MoE layer may have on CUDA (`MOE_MAX_EXPERTS` in moe.cu).
pub const MOE_MAX_EXPERTS: usize = 512;
/// Most expert groups DeepSeekV3 routing splits the experts into on CUDA (`MOE_MAX_GROUPS`).
pub const MOE_MAX_GROUPS: usize = 32;
/// Rows of one tile of the grouped expert GEMM (`MG_BM` in moe_experts.cu), and its output
/// columns per block (`MG_BN`).
pub const MOE_TILE_ROWS: usize = 64;
const MOE_TILE_COLS: usize = 64;
const MOE_GEMM_THREADS: u32 = 128;

/// The most tiles `moe_align` can lay `slots` routed slots over `experts` experts out in: every
/// expert with slots starts a tile of its own.
pub fn moe_max_tiles(slots: usize, experts: usize) -> usize {
    slots.div_ceil(MOE_TILE_ROWS) + experts.min(slots)
}
/// The widest latent (kv_lora_rank), latent row (latent + rotary key) and no-RoPE query head the
/// MLA kernels take (`MLA_MAX_LATENT`, `MLA_MAX_WIDTH`, `MLA_MAX_NOPE` in mla.cu).
pub const MLA_MAX_LATENT: usize = 512;
pub const MLA_MAX_WIDTH: usize = 576;
pub const MLA_MAX_NOPE: usize = 256;
/// Query rows (token, head) one `mla_attention_r4` block holds (8 warps of 4 rows); the
/// one-row variant holds a quarter of them.
pub const MLA_BLOCK_ROWS: usize = 32;
const MLA_BLOCK_ROWS_R1: usize = MLA_BLOCK_ROWS / 4;
const MLA_THREADS: u32 = 256;
/// Tokens one block of the MLA per-head products takes (`MLA_HEAD_TOKENS`), the latent columns
/// of one `mla_absorb_query` block and the value rows of one `mla_value_heads` block.
const MLA_HEAD_TOKENS: usize = 16;
const MLA_ABSORB_COLS: usize = 64;
const MLA_VALUE_ROWS: usize = 32;

/// The sizes of one MLA layer's heads: `nope` and `rope` query/key values per head (the rotary
/// part shared by all heads as one key), `v_dim` value values, `latent` (kv_lora_rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlaShape {
    pub heads: usize,
    pub nope: usize,
    pub rope: usize,
    pub v_dim: usize,
    pub latent: usize,
}

impl MlaShape {
    /// Values of one token's cache row: the latent, then the rotary key.
    pub fn width(&self) -> usize {
        self.latent + self.rope
    }

    /// Whether the MLA kernels take this shape; the error says what they expect.
    pub fn check(&self) -> Result<()> {
        let MlaShape { nope, rope, latent, .. } = *self;
        let width = self.width();
        if latent == 0
            || latent > MLA_MAX_LATENT
            || !latent.is_multiple_of(8)
            || rope == 0
            || !rope.is_multiple_of(2)
            || width > MLA_MAX_WIDTH
            || !width.is_multiple_of(8)
        {
            bail!(
                "kv_lora_rank {latent} and qk_rope_head_dim {rope}: the CUDA MLA kernels expect a latent of at most {MLA_MAX_LATENT} and a \
                 multiple of 8, an even rotary size, and a cache row (their sum) of at most {MLA_MAX_WIDTH} values, a multiple of 8"
            );
        }
        if nope == 0 || nope > MLA_MAX_NOPE {
            bail!("qk_nope_head_dim {nope}: the CUDA MLA kernels expect 1 to {MLA_MAX_NOPE}");
        }
        Ok(())
    }
}

/// Whether the bf16 GEMV of `n` rows runs on the tensor cores (gemv.cu's `gemv_tc`, GTC_ROWS rows a
/// block) rather than a warp a row (`gemv`): once its blocks cover half the `multiprocessors`. A
/// weight of fewer rows, as a router's gate, spreads better over warps a row that share its k
/// ([`gemv_k_split`]). Depends on the shape alone, never on the batch.
pub fn gemv_on_tensor_cores(n: usize, multiprocessors: usize) -> bool {
    2 * n.div_ceil(GTC_ROWS as usize) >= multiprocessors
}

/// Whether a step of `tokens` is routed a block a token (moe.cu's `moe_route_ranked`, every
/// expert ranked at once) rather than a warp a token (`moe_route`, k arg-max rounds one after
/// another): while the tokens are at most one a multiprocessor, where `moe_route`'s few warps leave
/// the GPU waiting on their rounds. Both route bit for bit alike.
pub fn route_ranked(tokens: usize, multiprocessors: usize) -> bool {
    tokens <= multiprocessors
}

/// How many warps of the bf16 `gemv` share each of `n` rows of `k` values on a GPU of
/// `multiprocessors`: doubled from 1 (up to 8, a block's warps) while the blocks would not cover
/// the multiprocessors and each warp keeps at least 32 groups of 8 values (one 16-byte load a
/// lane). A weight of few rows, as a router's gate, spreads over more blocks; the split depends on
/// the shape alone, never on the batch.
pub fn gemv_k_split(n: usize, k: usize, multiprocessors: usize) -> usize {
    let warps = (GEMV_THREADS / 32) as usize;
    let mut split = 1;
    while split < warps && n.div_ceil(warps / split) < multiprocessors && k / 8 / (2 * split) >= 32 {
        split *= 2;
    }
    split
}

/// How many warps of `moe_gemv` share each weight row of `k` values. With an `activation` the
/// gate and up rows already have a warp each and one warp a row is fastest (H100, batch 1,
/// `examples/moe_gemv_speed`: qwen3-30b-a3b's gate/up 21.1 µs a layer whole, 21.3 in two shares,
/// 24.7 in four; gpt-oss-20b's 50.9, 56.3, 59.1). A plain product's row is shared by two warps
/// once it takes more than two rounds of loads (32 lanes × `GEMV_UNROLL` 16-byte loads, 128
/// groups of 8 values): gpt-oss-20b's down rows of 2,880 took 29.0 µs in two shares against 30.7
/// whole, qwen3-30b-a3b's of 768 15.6 against 11.4. Depends on the shape alone.
pub fn moe_gemv_k_split(k: usize, activation: bool) -> usize {
    if activation || k / 8 <= 2 * 128 {
        1
    } else {
        2
    }
}

/// Most rows `gemv` takes (`GEMV_MAX_T` in gemv.cu), and its block size.
pub const GEMV_MAX_TOKENS: usize = 4;
const GEMV_THREADS: u32 = 256;
/// Output rows and threads of one block of the tensor-core GEMVs, bf16 and FP8 (`GTC_ROWS`,
/// `GTC_THREADS` in gemv.cu).
const GTC_ROWS: u32 = 16;
const GTC_THREADS: u32 = 256;

/// Bytes fp8.cu's `gemv_fp8` leaves after each token's row of codes in shared memory
/// (F8G_CODES_PAD).
const FP8_GEMV_CODES_PAD: usize = 64;
/// Bytes of dynamic shared memory `gemv_fp8` may take for its tokens' codes: four rows of 16,384.
const FP8_GEMV_CODES_BYTES: usize = GEMV_MAX_TOKENS * (16384 + FP8_GEMV_CODES_PAD);

/// The bounds on k of fp8.cu's FP8 GEMV kernels (`gemv_fp8_k4096`, ...): a thread holds
/// k / 2,048 uint4 loads of a token's values in registers, so each kernel is built for its bound,
/// and a launch takes the smallest bound at or above its k.
const FP8_GEMV_K_BOUNDS: [usize; 3] = [4096, 8192, 16384];

/// Shared memory `gemv_fp8` takes for `t` tokens of `k` values: their codes, a row each.
fn fp8_gemv_codes_bytes(t: usize, k: usize) -> usize {
    t * (k + FP8_GEMV_CODES_PAD)
}

/// Whether the GEMV kernels take `t` rows times the weight `w`: at most GEMV_MAX_TOKENS rows; k a
/// multiple of 8 (16-byte loads of eight bf16 weights) or, for FP8, of 32 (the tensor-core
/// product's k steps), with the tokens' codes within `gemv_fp8`'s shared memory.
pub fn gemv_takes(t: usize, w: Tensor) -> bool {
    let k = w.cols;
    t <= GEMV_MAX_TOKENS
        && if w.dtype == DType::Fp8E4M3 {
            k.is_multiple_of(32) && fp8_gemv_codes_bytes(t, k) <= FP8_GEMV_CODES_BYTES
        } else {
            k.is_multiple_of(8)
        }
}
pub const ATTENTION_THREADS: u32 = 128;
/// Threads of a `rope_kv_write` block (`ROPE_THREADS` in elementwise.cu).
const ROPE_THREADS: u32 = 256;
/// Most elements `quantize_fp8` quantizes in one block and one launch.
pub const FP8_ONE_BLOCK_ELEMENTS: usize = 1 << 16;
/// Query rows (tokens × heads of one GQA group) one attention block holds.
pub const ATTENTION_MAX_ROWS: usize = 16;
/// Query rows one tensor-core prefill attention block holds (`PF_ROWS` in attention_prefill.cu).
pub const PREFILL_ATTENTION_MAX_ROWS: usize = 128;
/// Positions a tensor-core prefill attention block stages a step (`PF_KV` in attention_prefill.cu).
const PREFILL_ATTENTION_STEP: usize = 64;
/// The head size whose prefill attention runs on warp-group products (`wgmma`, sm_90a).
const PREFILL_ATTENTION_WGMMA_HEAD_DIM: usize = 128;
/// Largest GQA group (query heads a KV head) the tensor-core decode attention takes
/// (attention_decode.cu's `DEC_MAX_GROUP`); larger groups keep the CUDA-core kernel.
pub const DECODE_ATTENTION_MAX_GROUP: usize = 8;
/// Stages of each warp's copy ring in the decode attention, for a bf16 and an FP8 cache
/// (`DEC_STAGES_BF16`, `DEC_STAGES_FP8` in attention_decode.cu).
const DECODE_ATTENTION_STAGES: (usize, usize) = (3, 4);

/// Dynamic shared memory of one decode-attention block: 4 warps' rings of stages, each the K and
/// V rows of 16 positions, padded by 16 bytes.
fn decode_attention_shared_bytes(head_dim: usize, fp8: bool) -> u32 {
    let (stages, elem) = if fp8 { (DECODE_ATTENTION_STAGES.1, 1) } else { (DECODE_ATTENTION_STAGES.0, 2) };
    (4 * stages * 2 * 16 * (head_dim * elem + 16)) as u32
}

/// Dynamic shared memory of one prefill-attention block. Head sizes 32 and 64 (the mma.sync
/// kernel): rows of `head_dim` 16-bit values and 16 bytes of padding, first the block's query
/// rows, then two stages of a step's K and V rows for a bf16 cache; for an FP8 cache one such
/// K-and-V tile (the codes widened to f16) and two stages of unpadded codes. Head size 128 (the
/// warp-group kernel): unpadded swizzled rows in regions on 1,024-byte boundaries, so 1 KiB more
/// to align them: the query rows, then two stages of K and V (for an FP8 cache widened to f16),
/// then for an FP8 cache one stage of codes (each thread widens the codes it copied, so they need
/// no second stage). Two such blocks fill a Hopper multiprocessor's 228 KiB exactly with the
/// 1 KiB each block reserves.
fn prefill_attention_shared_bytes(head_dim: usize, fp8: bool) -> u32 {
    let wgmma = head_dim == PREFILL_ATTENTION_WGMMA_HEAD_DIM;
    let (row, align) = if wgmma { (head_dim * 2, 1024) } else { (head_dim * 2 + 16, 0) };
    let tile = 2 * PREFILL_ATTENTION_STEP * row;
    let codes = 2 * PREFILL_ATTENTION_STEP * head_dim;
    let kv = match (fp8, wgmma) {
        (false, _) => 2 * tile,
        (true, false) => tile + 2 * codes,
        (true, true) => 2 * tile + codes,
    };
    (align + PREFILL_ATTENTION_MAX_ROWS * row + kv) as u32
}

/// Threads of a prefill-attention block: two warp groups for the warp-group kernel (head size
/// 128, `PFW_THREADS`), four warps otherwise (`PF_THREADS`).
fn prefill_attention_threads(head_dim: usize) -> u32 {
    if head_dim == PREFILL_ATTENTION_WGMMA_HEAD_DIM {
        256
    } else {
        ATTENTION_THREADS
    }
}

/// Orders prefill attention tiles (`[sequence, first row, rows, first position]`) by the positions
/// they read, most first (stable among equals). The prefill kernel starts its blocks in that
/// order, so a launch of tiles of unequal length ends on its shortest instead of on a last wave of
/// its longest, with most multiprocessors idle.
pub fn heaviest_tiles_first(tiles: &mut [[u32; 4]]) {
    tiles.sort_by_key(|t| std::cmp::Reverse(t[2] + t[3]));
}

impl Kernels {
    pub fn load(gpu: &Gpu) -> Result<Self> {
        let module = load_kernels(gpu)?;
        let pdl = gpu.info.compute_capability.0 >= 9 && std::env::var("LUMEN_PDL").map_or(true, |v| v != "0");
        if pdl && std::env::var("LUMEN_PDL_EARLY").is_ok_and(|v| v == "1") {
            module.set_constant_i32("lumen_pdl_early", 1)?;
        }
        let get = |name: &'static str| -> Result<Kernel> { Ok(Kernel { name, function: module.function(name)?, shared: 0 }) };
        // A kernel whose blocks take `shared` bytes of dynamic shared memory (above the 48 KiB a
        // launch may give without asking).
        let get_shared = |name: &'static str, shared: u32| -> Result<Kernel> {
            let k = get(name)?;
            let attribute = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            unsafe { sys::cuFuncSetAttribute(k.function, attribute, shared as i32) }
                .result()
                .map_err(|e| anyhow!("kernel {name}: {shared} bytes of dynamic shared memory refused: {}", describe(e)))?;
            Ok(Kernel { shared, ..k })
        };
        let decode = |name: &'static str, hd: usize, fp8: bool| get_shared(name, decode_attention_shared_bytes(hd, fp8));
        // Two prefill blocks a multiprocessor need the largest shared-memory carveout (an FP8
        // cache's head-size-128 blocks fill all 228 KiB); asked for, not left to the driver.
        let prefill = |name: &'static str, hd: usize, fp8: bool| -> Result<Kernel> {
            let k = get_shared(name, prefill_attention_shared_bytes(hd, fp8))?;
            let carveout = sys::CUshared_carveout::CU_SHAREDMEM_CARVEOUT_MAX_SHARED as i32;
            unsafe {
                sys::cuFuncSetAttribute(k.function, sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, carveout)
            }
            .result()
            .map_err(|e| anyhow!("kernel {name}: the shared-memory carveout refused: {}", describe(e)))?;
            Ok(k)
        };
        Ok(Kernels {
            embed_rms_norm: get("embed_rms_norm")?,
            add_rms_norm: get("add_rms_norm")?,
            rope_kv_write: get("rope_kv_write")?,
            silu_mul: get("silu_mul")?,
            clamped_swiglu: get("clamped_swiglu")?,
            add_bias: get("add_bias")?,
            gather_rows: get("gather_rows")?,
            moe_route: get("moe_route")?,
            moe_route_ranked: get("moe_route_ranked")?,
            moe_combine: get("moe_combine")?,
            moe_gemv: get("moe_gemv")?,
            moe_align: get("moe_align")?,
            moe_grouped_gemm: get("moe_grouped_gemm")?,
            rms_norm_rows: get("rms_norm_rows")?,
            mla_rope_latent_write: get("mla_rope_latent_write")?,
            mla_absorb_query: get("mla_absorb_query")?,
            mla_attention: (get("mla_attention_r1")?, get("mla_attention_r4")?),
            mla_attention_row: get("mla_attention_row")?,
            mla_value_heads: get("mla_value_heads")?,
            attention: [
                (32, get("attention_hd32_r1")?, get("attention_hd32_r4")?),
                (64, get("attention_hd64_r1")?, get("attention_hd64_r4")?),
                (128, get("attention_hd128_r1")?, get("attention_hd128_r4")?),
            ],
            attention_prefill: [
                (32, prefill("attention_prefill_hd32_bf16", 32, false)?, prefill("attention_prefill_hd32_fp8", 32, true)?),
                (64, prefill("attention_prefill_hd64_bf16", 64, false)?, prefill("attention_prefill_hd64_fp8", 64, true)?),
                (128, prefill("attention_prefill_hd128_bf16", 128, false)?, prefill("attention_prefill_hd128_fp8", 128, true)?),
            ],
            attention_decode: [
                (32, decode("attention_decode_hd32_bf16", 32, false)?, decode("attention_decode_hd32_fp8", 32, true)?),
                (64, decode("attention_decode_hd64_bf16", 64, false)?, decode("attention_decode_hd64_fp8", 64, true)?),
                (128, decode("attention_decode_hd128_bf16", 128, false)?, decode("attention_decode_hd128_fp8", 128, true)?),
            ],
            attention_combine: get("attention_combine")?,
            sample_tokens: get("sample_tokens")?,
            gemv: get("gemv")?,
            gemv_tc: (get("gemv_tc")?, get("gemv_tc_swiglu")?),
            preset_fill: get("preset_fill")?,
            amax_bf16: get("amax_bf16")?,
            quantize_fp8: get("quantize_fp8")?,
            quantize_fp8_rows: get("quantize_fp8_rows")?,
            silu_mul_fp8: get("silu_mul_fp8")?,
            scale_rows: get("scale_rows")?,
            gemv_fp8: [
                get_shared("gemv_fp8_k4096", FP8_GEMV_CODES_BYTES as u32)?,
                get_shared("gemv_fp8_k8192", FP8_GEMV_CODES_BYTES as u32)?,
                get_shared("gemv_fp8_k16384", FP8_GEMV_CODES_BYTES as u32)?,
            ],
            gemv_fp8_swiglu: [
                get_shared("gemv_fp8_swiglu_k4096", FP8_GEMV_CODES_BYTES as u32)?,
                get_shared("gemv_fp8_swiglu_k8192", FP8_GEMV_CODES_BYTES as u32)?,
                get_shared("gemv_fp8_swiglu_k16384", FP8_GEMV_CODES_BYTES as u32)?,
            ],
            sync_each_launch: std::env::var("LUMEN_CUDA_SYNC").is_ok_and(|v| v == "1"),
            pdl,
            module,
        })
    }

    /// Synchronises after every launch, so a fault is reported with its kernel's name (what
    /// `LUMEN_CUDA_SYNC=1` turns on).
    pub fn set_sync_each_launch(&mut self, on: bool) {
        self.sync_each_launch = on;
    }

    /// Blocks of the tensor-core prefill attention for `head_dim` (an FP8 cache or a 16-bit one)
    /// that one multiprocessor holds at once, with the shared memory its launches give.
    pub fn prefill_attention_blocks_per_sm(&self, head_dim: usize, kv_fp8: bool) -> Result<i32> {
        let Some(k) = self.prefill_attention_kernel(head_dim, kv_fp8) else {
            bail!("prefill attention: head_dim {head_dim} is not supported on CUDA (expected 32, 64 or 128)");
        };
        let threads = prefill_attention_threads(head_dim) as i32;
        unsafe { cu::occupancy::max_active_block_per_multiprocessor(k.function, threads, k.shared as usize) }
            .map_err(|e| anyhow!("kernel {}: occupancy query failed: {}", k.name, describe(e)))
    }

    /// The tensor-core prefill attention kernel for `head_dim` and the cache's type, if built.
    fn prefill_attention_kernel(&self, head_dim: usize, kv_fp8: bool) -> Option<Kernel> {
        let &(_, bf16, fp8) = self.attention_prefill.iter().find(|(hd, ..)| *hd == head_dim)?;
        Some(if kv_fp8 { fp8 } else { bf16 })
    }

    /// Head sizes the attention kernel is built for.
    pub fn supports_head_dim(head_dim: usize) -> bool {
        [32, 64, 128].contains(&head_dim)
    }

    /// Hidden (and intermediate) sizes the row kernels take: a multiple of 8 up to 16384.
    pub fn supports_hidden_size(hidden: usize) -> bool {
        hidden.is_multiple_of(8) && hidden <= 4 * NORM_ITEMS * 1024
    }

    fn launch(&self, gpu: &Gpu, k: Kernel, grid: (u32, u32, u32), block: u32, args: Args) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let mut slots = args.0;
        let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
        let launched = if self.pdl {
            // The next launch may start once every block of this one has passed `pdl_begin`.
            let mut attribute = sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                value: sys::CUlaunchAttributeValue { programmaticStreamSerializationAllowed: 1 },
            };
            let config = sys::CUlaunchConfig {
                gridDimX: grid.0,
                gridDimY: grid.1,
                gridDimZ: grid.2,
                blockDimX: block,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: k.shared,
                hStream: gpu.stream,
                attrs: &mut attribute,
                numAttrs: 1,
            };
            unsafe { sys::cuLaunchKernelEx(&config, k.function, params.as_mut_ptr(), std::ptr::null_mut()) }.result()
        } else {
            unsafe { cu::launch_kernel(k.function, grid, (block, 1, 1), k.shared, gpu.stream, &mut params) }
        };
        launched.map_err(|e| anyhow!("CUDA kernel {} failed to launch (grid {grid:?}, block {block}): {}", k.name, describe(e)))?;
        if self.sync_each_launch && !gpu.is_capturing() {
            unsafe { cu::stream::synchronize(gpu.stream) }.map_err(|e| anyhow!("CUDA kernel {} failed: {}", k.name, describe(e)))?;
        }
        Ok(())
    }

    /// With `codes`, the normed rows' FP8 codes and per-row scales are written there too, as
    /// [`Kernels::quantize_fp8_rows`] would make them. A token word with [`crate::SAMPLED_TOKEN`] set
    /// takes the token of that row of `sampled` (the tokens the step before drew; 0 where no
    /// token is marked).
    #[allow(clippy::too_many_arguments)]
    pub fn embed_rms_norm(
        &self,
        gpu: &Gpu,
        tokens: u64,
        sampled: u64,
        n: usize,
        embed: u64,
        weight: u64,
        eps: f32,
        hidden: usize,
        vocab: usize,
        residual: u64,
        normed: u64,
        codes: Fp8Rows,
    ) -> Result<()> {
        let args = Args::default()
            .ptr(tokens)
            .ptr(sampled)
            .ptr(embed)
            .ptr(weight)
            .f32(eps)
            .i32(hidden as i32)
            .u32(vocab as u32)
            .ptr(residual)
            .ptr(normed)
            .ptr(codes.codes)
            .ptr(codes.scales);
        self.launch(gpu, self.embed_rms_norm, (n as u32, 1, 1), norm_threads(hidden), args)
    }

    /// `residual += delta · delta_scale` (a row's scale: an FP8 product's output whose row scales
    /// were left to this reader, [`RowScales`]), then the norm into `normed`; `codes` as for
    /// [`Kernels::embed_rms_norm`].
    #[allow(clippy::too_many_arguments)]
    pub fn add_rms_norm(
        &self,
        gpu: &Gpu,
        n: usize,
        residual: u64,
        delta: u64,
        delta_scale: RowScales,
        weight: u64,
        eps: f32,
        hidden: usize,
        normed: u64,
        codes: Fp8Rows,
    ) -> Result<()> {
        let args = Args::default()
            .ptr(residual)
            .ptr(delta)
            .ptr(delta_scale.0)
            .ptr(weight)
            .f32(eps)
            .i32(hidden as i32)
            .ptr(normed)
            .ptr(codes.codes)
            .ptr(codes.scales);
        self.launch(gpu, self.add_rms_norm, (n as u32, 1, 1), norm_threads(hidden), args)
    }

    /// A block per token and `ROPE_THREADS · 8 / head_dim` heads (head_dim a multiple of 8, at
    /// most 128); `bias`, `q_norm`, `k_norm` may be 0 (absent).
    #[allow(clippy::too_many_arguments)]
    pub fn rope_kv_write(&self, gpu: &Gpu, n: usize, a: &RopeArgs) -> Result<()> {
        let args = Args::default()
            .ptr(a.qkv)
            .ptr(a.row_scale.0)
            .ptr(a.bias)
            .ptr(a.q_norm)
            .ptr(a.k_norm)
            .i32(a.norm_full_width as i32)
            .f32(a.eps)
            .ptr(a.positions)
            .ptr(a.slots)
            .ptr(a.inv_freq)
            .f32(a.attention_factor)
            .i32(a.heads as i32)
            .i32(a.kv_heads as i32)
            .i32(a.head_dim as i32)
            .i32(a.block_size as i32)
            .ptr(a.q_out)
            .ptr(a.k_cache)
            .ptr(a.v_cache)
            .i32(a.kv_fp8 as i32);
        let heads = a.heads + 2 * a.kv_heads;
        let heads_per_block = ROPE_THREADS as usize * 8 / a.head_dim;
        self.launch(gpu, self.rope_kv_write, (n as u32, heads.div_ceil(heads_per_block) as u32, 1), ROPE_THREADS, args)
    }

    /// `f` must be a multiple of 8; `row_scale`: the scales gate_up's rows still need
    /// ([`RowScales`]).
    pub fn silu_mul(&self, gpu: &Gpu, n: usize, f: usize, gate_up: u64, row_scale: RowScales, out: u64) -> Result<()> {
        let blocks = (f / 8).div_ceil(ROW_THREADS as usize) as u32;
        let args = Args::default().ptr(gate_up).ptr(row_scale.0).i32(f as i32).ptr(out);
        self.launch(gpu, self.silu_mul, (blocks, n as u32, 1), ROW_THREADS, args)
    }

    /// `x[t] *= scales[t]` in place over bf16 rows (columns a multiple of 8): an FP8 product's
    /// output given the row scales no reader took.
    pub fn scale_rows(&self, gpu: &Gpu, x: Tensor, scales: RowScales) -> Result<()> {
        if x.dtype != DType::Bf16 || !x.cols.is_multiple_of(8) || scales.0 == 0 {
            bail!("scale_rows of {x}: bf16 rows of a multiple of 8 values and their scales expected");
        }
        let blocks = (x.cols / 8).div_ceil(ROW_THREADS as usize) as u32;
        let args = Args::default().ptr(x.ptr).i32(x.cols as i32).ptr(scales.0);
        self.launch(gpu, self.scale_rows, (blocks, x.rows as u32, 1), ROW_THREADS, args)
    }

    /// The row scales an FP8 product left on `out`: applied here ([`Kernels::scale_rows`]) unless
    /// `leave`, in which case they are handed back for the kernel that reads `out`.
    pub fn settle_row_scales(&self, gpu: &Gpu, out: Tensor, pending: RowScales, leave: bool) -> Result<RowScales> {
        if leave || pending.0 == 0 {
            return Ok(pending);
        }
        self.scale_rows(gpu, out, pending)?;
        Ok(RowScales::default())
    }

    /// `silu_mul`'s `n` rows of `f` values as FP8 codes with one scale a row, written to `out`
    /// (its scale pointer the rows' scales) without the bf16 rows: what [`Kernels::silu_mul`]
    /// and then [`Kernels::quantize_fp8_rows`] give. `f` a multiple of 8, at most
    /// [`SILU_FP8_MAX_WIDTH`].
    pub fn silu_mul_fp8(&self, gpu: &Gpu, gate_up: u64, row_scale: RowScales, out: Tensor) -> Result<()> {
        let f = out.cols;
        if out.dtype != DType::Fp8E4M3 || out.scale == 0 || !f.is_multiple_of(8) || f > SILU_FP8_MAX_WIDTH {
            bail!("silu_mul_fp8 into {out}: scaled FP8 rows of a multiple of 8 values, at most {SILU_FP8_MAX_WIDTH}, expected");
        }
        let threads = (f / 8).div_ceil(SILU_ITEMS).next_multiple_of(32).clamp(32, 1024) as u32;
        let args = Args::default().ptr(gate_up).ptr(row_scale.0).i32(f as i32).ptr(out.ptr).ptr(out.scale);
        self.launch(gpu, self.silu_mul_fp8, (out.rows as u32, 1, 1), threads, args)
    }

    /// GPT-OSS's expert activation (see moe.cu) on `n` rows of `[gate (f), up (f)]` bf16 values
    /// into `n` rows of `f`.
    #[allow(clippy::too_many_arguments)]
    pub fn clamped_swiglu(&self, gpu: &Gpu, n: usize, f: usize, gate_up: u64, alpha: f32, limit: f32, out: u64) -> Result<()> {
        let blocks = f.div_ceil(ROW_THREADS as usize) as u32;
        let args = Args::default().ptr(gate_up).i32(f as i32).f32(alpha).f32(limit).ptr(out);
        self.launch(gpu, self.clamped_swiglu, (blocks, n as u32, 1), ROW_THREADS, args)
    }

    /// Adds `bias` (`[width]` bf16) to each of `n` rows of `width` bf16 values at `x`, in place.
    pub fn add_bias(&self, gpu: &Gpu, n: usize, width: usize, x: u64, bias: u64) -> Result<()> {
        let blocks = width.div_ceil(ROW_THREADS as usize) as u32;
        let args = Args::default().ptr(x).ptr(bias).i32(width as i32);
        self.launch(gpu, self.add_bias, (blocks, n as u32, 1), ROW_THREADS, args)
    }

    pub fn gather_rows(&self, gpu: &Gpu, src: u64, rows: u64, n_rows: usize, width: usize, dst: u64) -> Result<()> {
        let args = Args::default().ptr(src).ptr(rows).i32(width as i32).ptr(dst);
        self.launch(gpu, self.gather_rows, (n_rows as u32, 1, 1), ROW_THREADS, args)
    }

    /// Routes `tokens` rows of f32 router logits (`[tokens, experts]`, plus the router's bf16
    /// `router_bias` and the f32 `bias`, each when non-zero) to their `k` experts: `experts`
    /// (u32) and `weights` (f32), `[tokens, k]` each; `method` is the routing method's index
    /// (Default 0, Renormalize 1, RenormalizeNaive 2, Llama4 3, DeepSeekV3 4), and the weights
    /// are scaled by `scale`. DeepSeekV3 adds the bf16 `correction` bias (when non-zero) to the
    /// sigmoid scores that choose, and keeps the best `groups.1` of `groups.0` expert groups.
    /// The choices of the step's real tokens (`real_tokens`, a device u32; padding rows of a
    /// replayed graph follow them) are added to `load` (u32 per expert, zeroed by the caller).
    #[allow(clippy::too_many_arguments)]
    pub fn moe_route(
        &self,
        gpu: &Gpu,
        logits: u64,
        router_bias: u64,
        bias: u64,
        correction: u64,
        groups: (usize, usize),
        tokens: usize,
        experts: usize,
        k: usize,
        method: u32,
        scale: f32,
        real_tokens: u64,
        out_experts: u64,
        out_weights: u64,
        load: u64,
    ) -> Result<()> {
        anyhow::ensure!(k <= MOE_MAX_TOP_K, "moe_route: top {k} experts, at most {MOE_MAX_TOP_K} on CUDA");
        anyhow::ensure!(experts <= MOE_MAX_EXPERTS, "moe_route: {experts} experts, at most {MOE_MAX_EXPERTS} on CUDA");
        let (n_group, topk_group) = groups;
        anyhow::ensure!(
            (1..=MOE_MAX_GROUPS).contains(&n_group) && experts.is_multiple_of(n_group) && (1..=n_group).contains(&topk_group),
            "moe_route: keeping {topk_group} of {n_group} expert groups over {experts} experts, expected 1 ≤ kept ≤ groups ≤ {MOE_MAX_GROUPS} \
             and groups dividing the experts"
        );
        let args = Args::default()
            .ptr(logits)
            .ptr(router_bias)
            .ptr(bias)
            .ptr(correction)
            .i32(n_group as i32)
            .i32(topk_group as i32)
            .i32(tokens as i32)
            .i32(experts as i32)
            .i32(k as i32)
            .i32(method as i32)
            .f32(scale)
            .ptr(real_tokens)
            .ptr(out_experts)
            .ptr(out_weights)
            .ptr(load);
        let (kernel, blocks) = if route_ranked(tokens, gpu.info.multiprocessors as usize) {
            (self.moe_route_ranked, tokens as u32)
        } else {
            (self.moe_route, (tokens as u32).div_ceil(ROW_THREADS / 32))
        };
        self.launch(gpu, kernel, (blocks, 1, 1), ROW_THREADS, args)
    }

    /// Lays `slots` routed slots (`experts`, u32) out expert by expert in tiles of
    /// [`MOE_TILE_ROWS`] rows (moe_experts.cu): `tile_expert` (u32 per tile), `rows` (u32 per
    /// padded row: its slot, or `u32::MAX` for padding), `position` (u32 per slot: its padded row)
    /// and `num_tiles` (one u32), all on the device. The buffers hold
    /// [`moe_max_tiles`]`(slots, num_experts)` tiles.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_align(
        &self,
        gpu: &Gpu,
        experts: u64,
        slots: usize,
        num_experts: usize,
        tile_expert: u64,
        rows: u64,
        position: u64,
        num_tiles: u64,
    ) -> Result<()> {
        anyhow::ensure!(num_experts <= MOE_MAX_EXPERTS, "moe_align: {num_experts} experts, at most {MOE_MAX_EXPERTS} on CUDA");
        let args =
            Args::default().ptr(experts).i32(slots as i32).i32(num_experts as i32).ptr(tile_expert).ptr(rows).ptr(position).ptr(num_tiles);
        self.launch(gpu, self.moe_align, (1, 1, 1), 1024, args)
    }

    /// Every tile [`Kernels::moe_align`] laid out against its expert (moe_experts.cu):
    /// `y[p] = x[row(p)] · W_eᵀ (+ b_e)`, `n` outputs of `k` inputs in bf16, for up to `max_tiles`
    /// tiles; `row(p)` is `rows[p] / x_div` where `rows` is non-zero, else `p` itself. `weights`
    /// and `biases` are device tables of one pointer per expert, as for [`Kernels::moe_gemv`].
    #[allow(clippy::too_many_arguments)]
    pub fn moe_grouped_gemm(
        &self,
        gpu: &Gpu,
        x: u64,
        x_div: usize,
        rows: u64,
        tile_expert: u64,
        num_tiles: u64,
        max_tiles: usize,
        weights: u64,
        biases: u64,
        n: usize,
        k: usize,
        y: u64,
    ) -> Result<()> {
        anyhow::ensure!(
            k.is_multiple_of(8) && n.is_multiple_of(2),
            "moe_grouped_gemm: {n} outputs of {k} inputs, expected an even count of multiples of 8"
        );
        let args = Args::default()
            .ptr(x)
            .i32(x_div as i32)
            .ptr(rows)
            .ptr(tile_expert)
            .ptr(num_tiles)
            .ptr(weights)
            .ptr(biases)
            .i32(n as i32)
            .i32(k as i32)
            .ptr(y);
        self.launch(gpu, self.moe_grouped_gemm, (max_tiles as u32, n.div_ceil(MOE_TILE_COLS) as u32, 1), MOE_GEMM_THREADS, args)
    }

    /// For each of `slots` routed slots (`experts[s]` its expert, u32), `y[s] = x[s / x_div] · W_e`
    /// (+ `b_e`): `n` outputs of `k` inputs, bf16, with each expert's weight and bias found
    /// through `weights` and `biases` (device tables of one u64 pointer per expert; `biases` or an
    /// entry of it 0 where there is none). With an `activation`, each expert's weight holds `2n`
    /// rows (gate, then up) and `y[s]` is the activation of the two halves: the product and the
    /// activation kernel in one launch, bit for bit. Reads everything on the device (moe_decode.cu).
    /// `routed_earlier` says `experts` was written at least two launches before this one (the
    /// down product after the gate/up one): the weight rows then start towards L2 before the
    /// kernel waits for the launch before it. `k_split` warps share each weight row
    /// ([`moe_gemv_k_split`]'s choice where `None`).
    #[allow(clippy::too_many_arguments)]
    pub fn moe_gemv(
        &self,
        gpu: &Gpu,
        x: u64,
        x_div: usize,
        experts: u64,
        weights: u64,
        biases: u64,
        slots: usize,
        n: usize,
        k: usize,
        activation: Option<ExpertActivation>,
        routed_earlier: bool,
        k_split: Option<usize>,
        y: u64,
    ) -> Result<()> {
        anyhow::ensure!(k.is_multiple_of(8), "moe_gemv: {k} inputs, expected a multiple of 8");
        let halves = if activation.is_some() { 2 } else { 1 };
        let k_split = k_split.unwrap_or_else(|| moe_gemv_k_split(k, activation.is_some()));
        let warps = (GEMV_THREADS / 32) as usize;
        anyhow::ensure!(
            k_split.is_power_of_two() && k_split * halves <= warps,
            "moe_gemv: {k_split} warps a weight row, expected 1, 2, 4 or 8 with at most {warps} warps an output row"
        );
        let rows_per_block = warps / (k_split * halves);
        let (code, alpha, limit) = match activation {
            None => (0, 0.0, 0.0),
            Some(ExpertActivation::SwiGlu) => (1, 0.0, 0.0),
            Some(ExpertActivation::ClampedSwiGlu { alpha, limit }) => (2, alpha, limit),
        };
        let args = Args::default().ptr(x).i32(x_div as i32).ptr(experts).ptr(weights).ptr(biases).i32(n as i32).i32(k as i32);
        let args = args.i32(code).f32(alpha).f32(limit).i32(routed_earlier as i32).i32(k_split as i32).ptr(y);
        self.launch(gpu, self.moe_gemv, (n.div_ceil(rows_per_block) as u32, slots as u32, 1), GEMV_THREADS, args)
    }

    /// `out[t] = Σ_j weights[t·k + j] · y[pos[t·k + j]]` (`y[t·k + j]` when `pos` is 0) over
    /// `tokens` rows of `h` bf16 values,
    /// plus the shared expert's row `shared[t]` when `shared` is non-zero, scaled by
    /// `sigmoid(shared_gate[t])` when `shared_gate` is.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_combine(
        &self,
        gpu: &Gpu,
        y: u64,
        pos: u64,
        weights: u64,
        tokens: usize,
        k: usize,
        h: usize,
        shared: u64,
        shared_gate: u64,
        out: u64,
    ) -> Result<()> {
        let args = Args::default().ptr(y).ptr(pos).ptr(weights).i32(k as i32).i32(h as i32).ptr(shared).ptr(shared_gate).ptr(out);
        self.launch(gpu, self.moe_combine, (tokens as u32, (h as u32).div_ceil(ROW_THREADS), 1), ROW_THREADS, args)
    }

    /// `normed[t] = rms_norm(x[t]) · weight` over `n` rows of `width` bf16 values (a multiple of 8,
    /// see [`Kernels::supports_hidden_size`]).
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_rows(&self, gpu: &Gpu, n: usize, x: u64, weight: u64, eps: f32, width: usize, normed: u64) -> Result<()> {
        let args = Args::default().ptr(x).ptr(weight).f32(eps).i32(width as i32).ptr(normed);
        self.launch(gpu, self.rms_norm_rows, (n as u32, 1, 1), norm_threads(width), args)
    }

    /// MLA's cache write (mla.cu): for each of `n` tokens, the kv_a row `[latent, k_pe]` at
    /// `compressed` becomes the cache row `[rms_norm(latent) · kv_norm, rope(k_pe)]` at its slot,
    /// and every head's rotary query part (`q`, rows of `heads × (nope + rope)`) is rotated into
    /// the tail of its absorbed query (`q_lat`, rows of `heads × width`).
    #[allow(clippy::too_many_arguments)]
    pub fn mla_rope_latent_write(
        &self,
        gpu: &Gpu,
        n: usize,
        shape: MlaShape,
        compressed: u64,
        kv_norm: u64,
        eps: f32,
        q: u64,
        positions: u64,
        slots: u64,
        inv_freq: u64,
        attention_factor: f32,
        q_lat: u64,
        cache: u64,
    ) -> Result<()> {
        shape.check()?;
        let args = Args::default()
            .ptr(compressed)
            .ptr(kv_norm)
            .f32(eps)
            .ptr(q)
            .ptr(positions)
            .ptr(slots)
            .ptr(inv_freq)
            .f32(attention_factor)
            .i32(shape.heads as i32)
            .i32(shape.nope as i32)
            .i32(shape.rope as i32)
            .i32(shape.latent as i32)
            .ptr(q_lat)
            .ptr(cache);
        self.launch(gpu, self.mla_rope_latent_write, (n as u32, 1, 1), MLA_THREADS, args)
    }

    /// The absorbed query heads of `n` tokens: `q_lat[t, h, :latent] = q_nope[t, h] · W_UK_h`,
    /// with W_UK_h the head's key rows of `kv_b` (`[heads·(nope + v_dim), latent]` bf16).
    pub fn mla_absorb_query(&self, gpu: &Gpu, n: usize, shape: MlaShape, q: u64, kv_b: u64, q_lat: u64) -> Result<()> {
        self.mla_head_product(gpu, self.mla_absorb_query, shape.latent.div_ceil(MLA_ABSORB_COLS), n, shape, q, kv_b, q_lat)
    }

    /// Each head's output of `n` tokens: `out[t, h] = W_UV_h · o_lat[t, h]`, with W_UV_h the
    /// head's value rows of `kv_b`; `out` is `[n, heads·v_dim]` bf16, the output projection's input.
    pub fn mla_value_heads(&self, gpu: &Gpu, n: usize, shape: MlaShape, o_lat: u64, kv_b: u64, out: u64) -> Result<()> {
        self.mla_head_product(gpu, self.mla_value_heads, shape.v_dim.div_ceil(MLA_VALUE_ROWS), n, shape, o_lat, kv_b, out)
    }

    /// One of MLA's per-head products with `kv_b` (both kernels take the same parameters): blocks
    /// per head, `chunks` of its outputs, and `MLA_HEAD_TOKENS` tokens.
    #[allow(clippy::too_many_arguments)]
    fn mla_head_product(
        &self,
        gpu: &Gpu,
        kernel: Kernel,
        chunks: usize,
        n: usize,
        shape: MlaShape,
        x: u64,
        kv_b: u64,
        out: u64,
    ) -> Result<()> {
        shape.check()?;
        let args = Args::default()
            .ptr(x)
            .ptr(kv_b)
            .i32(n as i32)
            .i32(shape.heads as i32)
            .i32(shape.nope as i32)
            .i32(shape.rope as i32)
            .i32(shape.v_dim as i32)
            .i32(shape.latent as i32)
            .ptr(out);
        let grid = (shape.heads as u32, chunks as u32, n.div_ceil(MLA_HEAD_TOKENS) as u32);
        self.launch(gpu, kernel, grid, MLA_THREADS, args)
    }

    /// Absorbed latent attention (mla.cu) over the step's tiles, as [`Kernels::attention`] takes
    /// them, with these meanings for MLA: `q` is the absorbed queries (`[tokens, heads, width]`),
    /// `k_cache` the layer's latent cache, `head_dim` the latent (each head's output, `out` being
    /// `[tokens, heads, latent]`), and `kv_fp8`, `kv_heads`, `v_cache`, `window` and `sinks` are
    /// not read. `scale` is the softmax scale.
    pub fn mla_attention(&self, gpu: &Gpu, a: &AttentionArgs, shape: MlaShape, scale: f64) -> Result<()> {
        shape.check()?;
        anyhow::ensure!(a.head_dim == shape.latent, "mla_attention: head_dim {} is not the latent {}", a.head_dim, shape.latent);
        let scale_log2 = (scale * std::f64::consts::LOG2_E) as f32;
        let args = |tiles: u64| {
            Args::default()
                .ptr(a.q)
                .ptr(a.k_cache)
                .ptr(tiles)
                .ptr(a.table_offsets)
                .ptr(a.table_data)
                .i32(a.heads as i32)
                .i32(shape.latent as i32)
                .i32(shape.rope as i32)
                .i32(a.block_size as i32)
                .f32(scale_log2)
                .ptr(a.split_tokens)
                .ptr(a.out)
                .ptr(a.part_acc)
                .ptr(a.part_ml)
        };
        let row_blocks = |tokens: usize, rows: usize| (tokens * a.heads).div_ceil(rows) as u32;
        let (r1, r4) = self.mla_attention;
        if a.num_tiles > 0 {
            // A step whose four-row blocks would leave multiprocessors idle (a decode batch of a
            // few tokens) takes a block a query row, its keys spread over the warps; in
            // batch-invariant mode, whose rows must keep their bits in any step, four times the
            // blocks of one row a warp instead (the bits of four rows a warp).
            let blocks = a.num_tiles * row_blocks(a.max_tile_rows, MLA_BLOCK_ROWS) as usize * a.splits;
            let (kernel, rows) = match (blocks < gpu.info.multiprocessors as usize, a.batch_invariant) {
                (false, _) => (r4, MLA_BLOCK_ROWS),
                (true, true) => (r1, MLA_BLOCK_ROWS_R1),
                (true, false) => (self.mla_attention_row, 1),
            };
            let grid = (a.num_tiles as u32, row_blocks(a.max_tile_rows, rows), a.splits as u32);
            self.launch(gpu, kernel, grid, MLA_THREADS, args(a.tiles))?;
        }
        if a.prefill_tiles > 0 {
            let tiles = a.tiles + 16 * a.num_tiles as u64;
            let grid = (a.prefill_tiles as u32, row_blocks(PREFILL_ATTENTION_MAX_ROWS, MLA_BLOCK_ROWS), a.prefill_splits as u32);
            self.launch(gpu, r4, grid, MLA_THREADS, args(tiles))?;
        }
        self.combine_splits(gpu, a)
    }

    /// Merges the KV splits' partial sums of an attention launch, when it had several.
    fn combine_splits(&self, gpu: &Gpu, a: &AttentionArgs) -> Result<()> {
        // The split launches' partials share one layout: (token, head) rows of `splits` each.
        let split_launches = [(a.num_tiles, a.splits), (a.prefill_tiles, a.prefill_splits)];
        let mut split_counts = split_launches.iter().filter(|&&(tiles, splits)| tiles > 0 && splits > 1).map(|&(_, splits)| splits);
        let Some(splits) = split_counts.next() else { return Ok(()) };
        if let Some(other) = split_counts.next().filter(|&other| other != splits) {
            bail!(
                "attention: decode tiles in {splits} KV splits and prefill tiles in {other}; split tiles of both kinds must take the same"
            );
        }
        let args = Args::default()
            .ptr(a.part_acc)
            .ptr(a.part_ml)
            .ptr(a.positions)
            .i32(a.heads as i32)
            .i32(a.head_dim as i32)
            .i32(splits as i32)
            .ptr(a.split_tokens)
            .ptr(a.out);
        self.launch(gpu, self.attention_combine, (a.merged_tokens as u32, a.heads as u32, 1), a.head_dim as u32, args)
    }

    /// Paged attention over `tiles` work items (see attention.cu): the first `num_tiles` in
    /// `splits` KV splits each, on the CUDA cores, or on the tensor-core decode kernel
    /// (attention_decode.cu) where they are one token each and it is the faster; the
    /// `prefill_tiles` after them in `prefill_splits` each, on the tensor-core prefill kernel.
    pub fn attention(&self, gpu: &Gpu, a: &AttentionArgs) -> Result<()> {
        let Some(&(_, one_row, four_rows)) = self.attention.iter().find(|(hd, _, _)| *hd == a.head_dim) else {
            bail!("attention: head_dim {} is not supported on CUDA (expected 32, 64 or 128)", a.head_dim);
        };
        let prefill = self.prefill_attention_kernel(a.head_dim, a.kv_fp8).expect("the same head sizes");
        let scale_log2 = (1.0 / (a.head_dim as f64).sqrt() * std::f64::consts::LOG2_E) as f32;
        let args = |tiles: u64| {
            Args::default()
                .ptr(a.q)
                .ptr(a.k_cache)
                .ptr(a.v_cache)
                .i32(a.kv_fp8 as i32)
                .ptr(tiles)
                .ptr(a.table_offsets)
                .ptr(a.table_data)
                .i32(a.heads as i32)
                .i32(a.kv_heads as i32)
                .i32(a.block_size as i32)
                .i32(a.window as i32)
                .ptr(a.sinks)
                .f32(scale_log2)
                .ptr(a.split_tokens)
                .ptr(a.out)
                .ptr(a.part_acc)
                .ptr(a.part_ml)
        };
        if a.num_tiles > 0 {
            // Tiles of one token each (a tile's rows are its tokens times the group) take the
            // tensor-core decode kernel, outside batch-invariant mode, where their group fits its
            // rows and the CUDA-core kernel is slower: always for an FP8 cache (that kernel is
            // bound by its conversions), and for a bf16 cache beyond one row a warp (groups of at
            // most four it reads as fast; measured in docs/cuda-performance.md).
            let group = a.heads / a.kv_heads;
            let one_row_a_warp = group <= (ATTENTION_THREADS / 32) as usize;
            let decode =
                !a.batch_invariant && a.max_tile_rows <= group && group <= DECODE_ATTENTION_MAX_GROUP && (a.kv_fp8 || !one_row_a_warp);
            let &(_, decode_bf16, decode_fp8) =
                self.attention_decode.iter().find(|(hd, ..)| *hd == a.head_dim).expect("the same head sizes");
            let k = match (decode, a.kv_fp8) {
                (true, false) => decode_bf16,
                (true, true) => decode_fp8,
                (false, _) if a.max_tile_rows <= (ATTENTION_THREADS / 32) as usize => one_row,
                (false, _) => four_rows,
            };
            self.launch(gpu, k, (a.num_tiles as u32, a.kv_heads as u32, a.splits as u32), ATTENTION_THREADS, args(a.tiles))?;
        }
        if a.prefill_tiles > 0 {
            let tiles = a.tiles + 16 * a.num_tiles as u64;
            self.launch(
                gpu,
                prefill,
                (a.prefill_tiles as u32, a.kv_heads as u32, a.prefill_splits as u32),
                prefill_attention_threads(a.head_dim),
                args(tiles),
            )?;
        }
        self.combine_splits(gpu, a)
    }

    /// `y[t, n] = x[t, k] · w[n, k]ᵀ` for `t <= GEMV_MAX_TOKENS` bf16 rows: bf16 weights (k a
    /// multiple of 8, one warp per output), or scaled FP8 ones (k a multiple of 32, sixteen
    /// outputs a block on the tensor cores), for which the kernel quantizes the rows as
    /// [`Kernels::quantize_fp8_rows`] would, so it gives the FP8 GEMM path's product without that
    /// launch.
    pub fn gemv(&self, gpu: &Gpu, x: Tensor, w: Tensor, y: Tensor) -> Result<()> {
        self.gemv_launch(gpu, x, w, y, false)
    }

    /// `y[t, j] = silu(g) · u` with g and u the bf16 outputs `x[t] · w[j]ᵀ` and `x[t] · w[f + j]ᵀ`
    /// of a fused gate/up weight `w` (`[2f, k]`, gate rows first) into `y` (`[t, f]`): the GEMV and
    /// `silu_mul` in one launch, bit for bit their result.
    pub fn gemv_swiglu(&self, gpu: &Gpu, x: Tensor, w: Tensor, y: Tensor) -> Result<()> {
        if !w.rows.is_multiple_of(2) || w.rows / 2 != y.cols {
            bail!("gemv_swiglu: a gate/up weight {w} of gate rows then up rows, and {y} of one column per pair, expected");
        }
        self.gemv_launch(gpu, x, Tensor { rows: w.rows / 2, ..w }, y, true)
    }

    fn gemv_launch(&self, gpu: &Gpu, x: Tensor, w: Tensor, y: Tensor, swiglu: bool) -> Result<()> {
        let fp8 = w.dtype == DType::Fp8E4M3;
        if fp8 && w.scale == 0 {
            bail!("gemv: the FP8 weight {w} has no scale");
        }
        if fp8 && !w.ptr.is_multiple_of(16) {
            bail!("gemv: the FP8 weight {w} must start on a 16-byte boundary (its rows are read 16 bytes at a time)");
        }
        // The rows are bf16 either way: an FP8 weight is checked as the bf16 matrix it stands for.
        let (t, n, k) = check_product(x, Tensor { dtype: DType::Bf16, ..w }, y)?;
        if !gemv_takes(t, w) {
            bail!(
                "gemv takes at most {GEMV_MAX_TOKENS} rows and k a multiple of 8 (32 for FP8 weights, whose rows of codes take k + \
                 {FP8_GEMV_CODES_PAD} bytes each of at most {FP8_GEMV_CODES_BYTES}) (got {x} · ({w})ᵀ)"
            );
        }
        let out_f32 = y.dtype == DType::F32;
        let args = Args::default().ptr(x.ptr).ptr(w.ptr);
        let args = if fp8 { args.ptr(w.scale) } else { args };
        let args = args.i32(t as i32).i32(n as i32).i32(k as i32).ptr(y.ptr).i32(out_f32 as i32);
        if fp8 {
            // gemv_takes bounds k by the codes' shared memory, which FP8_GEMV_K_BOUNDS's last covers.
            let bound = FP8_GEMV_K_BOUNDS.iter().position(|&b| k <= b).unwrap_or(FP8_GEMV_K_BOUNDS.len() - 1);
            let kernel = if swiglu { self.gemv_fp8_swiglu[bound] } else { self.gemv_fp8[bound] };
            let kernel = Kernel { shared: fp8_gemv_codes_bytes(t, k) as u32, ..kernel };
            self.launch(gpu, kernel, ((n as u32).div_ceil(GTC_ROWS), 1, 1), GTC_THREADS, args)
        } else if gemv_on_tensor_cores(n, gpu.info.multiprocessors as usize) {
            let kernel = if swiglu { self.gemv_tc.1 } else { self.gemv_tc.0 };
            self.launch(gpu, kernel, ((n as u32).div_ceil(GTC_ROWS), 1, 1), GTC_THREADS, args)
        } else {
            let k_split = gemv_k_split(n, k, gpu.info.multiprocessors as usize);
            let rows_per_block = (GEMV_THREADS / 32) as usize / k_split;
            let args = args.i32(swiglu as i32).i32(k_split as i32);
            self.launch(gpu, self.gemv, (n.div_ceil(rows_per_block) as u32, 1, 1), GEMV_THREADS, args)
        }
    }

    /// Quantizes the bf16 tensor `x` into the FP8 tensor `out` of the same shape with one dynamic
    /// scale (a weight at load): `out.scale` gets the power of two at or above amax / 448
    /// (`lumen_backend::fp8::scale_for`), and each code is x / scale rounded to nearest even. Up
    /// to [`FP8_ONE_BLOCK_ELEMENTS`] elements take one launch; larger tensors three, `amax` (a
    /// device u32) taking the largest magnitude. Elements must be a multiple of 8.
    pub fn quantize_fp8(&self, gpu: &Gpu, x: Tensor, out: Tensor, amax: u64) -> Result<()> {
        let n = x.rows * x.cols;
        if x.dtype != DType::Bf16 || out.dtype != DType::Fp8E4M3 || (out.rows, out.cols) != (x.rows, x.cols) || out.scale == 0 {
            bail!("FP8 quantization of {x} into {out}: expected bf16 in and a scaled FP8 tensor of the same shape out");
        }
        if !n.is_multiple_of(8) {
            bail!("FP8 quantization of {x}: the element count is not a multiple of 8");
        }
        if n <= FP8_ONE_BLOCK_ELEMENTS {
            // One block: the whole tensor as one row of `quantize_fp8_rows`.
            let row = |t: Tensor| Tensor { rows: 1, cols: n, ..t };
            return self.quantize_fp8_rows(gpu, row(x), row(out));
        }
        let blocks = (n / 8).div_ceil(ROW_THREADS as usize).clamp(1, 2048) as u32;
        gpu.fill(amax, 0, 4)?;
        self.launch(gpu, self.amax_bf16, (blocks, 1, 1), ROW_THREADS, Args::default().ptr(x.ptr).u64(n as u64).ptr(amax))?;
        let args = Args::default().ptr(x.ptr).u64(n as u64).ptr(amax).ptr(out.ptr).ptr(out.scale);
        self.launch(gpu, self.quantize_fp8, (blocks, 1, 1), ROW_THREADS, args)
    }

    /// Quantizes the bf16 rows `x` (a product's activations) into the FP8 tensor `out` of the
    /// same shape with one dynamic scale a row: `out.scale` points to `rows` f32 scales, each the
    /// power of two at or above its row's amax / 448, and each code is x / scale rounded to
    /// nearest even (`lumen_backend::fp8::fake_quantize_rows`). One launch, a block a row;
    /// columns must be a multiple of 8.
    pub fn quantize_fp8_rows(&self, gpu: &Gpu, x: Tensor, out: Tensor) -> Result<()> {
        if x.dtype != DType::Bf16 || out.dtype != DType::Fp8E4M3 || (out.rows, out.cols) != (x.rows, x.cols) || out.scale == 0 {
            bail!("FP8 quantization of the rows {x} into {out}: expected bf16 in and a scaled FP8 tensor of the same shape out");
        }
        if !x.cols.is_multiple_of(8) {
            bail!("FP8 quantization of the rows {x}: the row length is not a multiple of 8");
        }
        let args = Args::default().ptr(x.ptr).i32(x.cols as i32).ptr(out.ptr).ptr(out.scale);
        self.launch(gpu, self.quantize_fp8_rows, (x.rows as u32, 1, 1), ROW_THREADS, args)
    }

    /// Writes `n` bf16 values of a random-weight preset to `out`: `offset + scale * r_i` (`scale *
    /// r_i` when `offset` is 0) with `r_i` drawn from splitmix64 at `base + i`, exactly as
    /// `lumen_model::presets` computes them on the host.
    pub fn preset_fill(&self, gpu: &Gpu, out: u64, n: usize, base: u64, scale: f32, offset: f32) -> Result<()> {
        let blocks = n.div_ceil(ROW_THREADS as usize).min(65536) as u32;
        let args = Args::default().ptr(out).u64(n as u64).u64(base).f32(scale).f32(offset);
        self.launch(gpu, self.preset_fill, (blocks, 1, 1), ROW_THREADS, args)
    }

    pub fn sample_tokens(&self, gpu: &Gpu, logits: u64, params: u64, rows: usize, vocab: usize, out: u64) -> Result<()> {
        let args = Args::default().ptr(logits).ptr(params).i32(vocab as i32).ptr(out);
        self.launch(gpu, self.sample_tokens, (rows as u32, 1, 1), SAMPLE_THREADS, args)
    }
}

/// Inputs of `rope_kv_write`; pointer fields of 0 mean "absent".
pub struct RopeArgs {
    pub qkv: u64,
    /// The scales qkv's rows still need ([`RowScales`]).
    pub row_scale: RowScales,
    pub bias: u64,
    pub q_norm: u64,
    pub k_norm: u64,
    /// The q and k norms each span every head of their kind (OLMoE), not one head.
    pub norm_full_width: bool,
    pub eps: f32,
    pub positions: u64,
    pub slots: u64,
    pub inv_freq: u64,
    /// The factor on RoPE's cosines and sines (YaRN's attention factor, else 1).
    pub attention_factor: f32,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub q_out: u64,
    pub k_cache: u64,
    pub v_cache: u64,
    /// The cache holds FP8 E4M3 codes (scale 1) instead of bf16.
    pub kv_fp8: bool,
}

/// Inputs of the attention launch.
pub struct AttentionArgs {
    pub q: u64,
    pub k_cache: u64,
    pub v_cache: u64,
    /// The cache holds FP8 E4M3 codes (scale 1) instead of bf16.
    pub kv_fp8: bool,
    pub tiles: u64,
    /// Tiles of decode tokens and short chunks, first in `tiles`.
    pub num_tiles: usize,
    /// Most query rows (tokens × heads of a group) in one of those.
    pub max_tile_rows: usize,
    /// Tiles for the tensor-core prefill kernel, after them (at most
    /// `PREFILL_ATTENTION_MAX_ROWS` rows each).
    pub prefill_tiles: usize,
    pub table_offsets: u64,
    pub table_data: u64,
    pub positions: u64,
    pub num_tokens: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    /// Attend to at most this many most recent positions; 0: every position.
    pub window: usize,
    /// `[heads]` bf16: each query head's sink logit, joining its softmax's denominator; 0: none.
    pub sinks: u64,
    /// Device address of one u32: the KV positions per split.
    pub split_tokens: u64,
    /// Splits in the grid of the first `num_tiles` tiles (blocks of splits past the context exit
    /// at once).
    pub splits: usize,
    /// Splits in the grid of the prefill tiles: `splits`, or one (every position) in a step whose
    /// decode tiles alone are split.
    pub prefill_splits: usize,
    /// The first tokens whose split partials `attention_combine` merges: every token, or the
    /// decode tiles' tokens (before any prefill tile's) when only those are split.
    pub merged_tokens: usize,
    /// Batch-invariant mode: every row must get the bits it gets in any other step, so kernels
    /// whose sums run in another order for small steps are not used.
    pub batch_invariant: bool,
    pub out: u64,
    pub part_acc: u64,
    pub part_ml: u64,
}

#[cfg(test)]
mod tests {
    use super::{gemv_k_split, gemv_on_tensor_cores, moe_gemv_k_split, moe_max_tiles, route_ranked, MOE_TILE_ROWS};
    use crate::cuda::compile::SOURCES;

    /// Under programmatic dependent launch a kernel is only ordered after the launch before it by
    /// its own `pdl_begin`, and the launch after it only by that one's: a kernel without it would
    /// let the next kernel start before the previous one's writes land. Every kernel body in the
    /// sources, macro-made ones included, must call it.
    #[test]
    fn every_kernel_waits_for_the_launch_before_it() {
        let mut kernels = 0;
        for (file, source) in SOURCES {
            for (at, _) in source.match_indices("__global__") {
                let open = at + source[at..].find('{').expect("a kernel has a body");
                let mut depth = 0;
                let close = source[open..]
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '{' => 1,
                            '}' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map(|(i, _)| open + i)
                    .expect("a kernel body closes");
                let head = &source[at..open];
                let name = head[..head.rfind('(').unwrap_or(head.len())].split_whitespace().last().unwrap_or_default();
                assert!(source[open..close].contains("pdl_begin();"), "kernel {name} in {file} never calls pdl_begin()");
                kernels += 1;
            }
        }
        assert!(kernels >= 27, "found only {kernels} kernels in the sources");
    }

    /// The number a kernel source file `file` gives `#define name`.
    fn define(file: &str, name: &str) -> usize {
        let (_, source) = SOURCES.iter().find(|(f, _)| *f == file).unwrap_or_else(|| panic!("the kernel source {file}"));
        let line =
            source.lines().find(|l| l.starts_with(&format!("#define {name} "))).unwrap_or_else(|| panic!("#define {name} in {file}"));
        line.split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("a number in {line:?}"))
    }

    /// The decode attention's shared memory is sized from the stage counts its source defines.
    #[test]
    fn decode_attention_stages_match_the_kernel_source() {
        let define = |name: &str| define("attention_decode.cu", name);
        assert_eq!(super::DECODE_ATTENTION_STAGES, (define("DEC_STAGES_BF16"), define("DEC_STAGES_FP8")));
        assert_eq!(super::DECODE_ATTENTION_MAX_GROUP, define("DEC_MAX_GROUP"));
        assert_eq!(define("DEC_THREADS"), 128, "four warps a block, as decode_attention_shared_bytes counts");
        assert_eq!(super::decode_attention_shared_bytes(128, true), 73_728);
    }

    /// The prefill attention's shared memory is sized from the step its source defines, and two
    /// blocks of each kernel fit a Hopper SM (228 KiB, of which each block reserves 1 KiB).
    #[test]
    fn prefill_attention_shared_memory_matches_the_kernel_source() {
        let define = |name: &str| define("attention_prefill.cu", name);
        assert_eq!(super::PREFILL_ATTENTION_STEP, define("PF_KV"));
        assert_eq!(super::PREFILL_ATTENTION_MAX_ROWS, define("PF_THREADS") / 32 * define("PF_MT") * 16);
        assert_eq!(super::prefill_attention_threads(64), define("PF_THREADS") as u32);
        assert_eq!(super::prefill_attention_threads(128), define("PFW_THREADS") as u32);
        assert_eq!(super::prefill_attention_shared_bytes(64, false), 55_296);
        assert_eq!(super::prefill_attention_shared_bytes(128, false), 99_328);
        assert_eq!(super::prefill_attention_shared_bytes(128, true), 115_712);
        for (hd, fp8) in [(32, false), (32, true), (64, false), (64, true), (128, false), (128, true)] {
            assert!(2 * (super::prefill_attention_shared_bytes(hd, fp8) + 1024) <= 228 * 1024, "head size {hd}, fp8 {fp8}");
        }
    }

    /// `gemv_fp8`'s shared memory is sized with the padding its source puts after each token's
    /// codes, and its largest size fits beside the kernel's static shared memory on Hopper.
    #[test]
    fn fp8_gemv_shared_memory_matches_the_kernel_source() {
        assert_eq!(super::FP8_GEMV_CODES_PAD, define("fp8.cu", "F8G_CODES_PAD"));
        assert_eq!(super::fp8_gemv_codes_bytes(4, 4096), 4 * 4160);
        const { assert!(super::FP8_GEMV_CODES_BYTES <= 200 * 1024) };
        // Every k gemv_takes has a kernel: the last bound is the codes' row.
        assert_eq!(super::FP8_GEMV_CODES_BYTES, super::GEMV_MAX_TOKENS * (super::FP8_GEMV_K_BOUNDS[2] + super::FP8_GEMV_CODES_PAD));
        let (_, source) = SOURCES.iter().find(|(f, _)| *f == "fp8.cu").expect("fp8.cu among the kernel sources");
        for (bound, xv) in super::FP8_GEMV_K_BOUNDS.iter().zip([2, 4, 8]) {
            assert_eq!(bound / (8 * define("gemv.cu", "GTC_THREADS")), xv);
            for name in ["gemv_fp8", "gemv_fp8_swiglu"] {
                let line = format!("GEMV_FP8_KERNEL({name}_k{bound}, {}, {xv})", name.ends_with("swiglu"));
                assert!(source.contains(&line), "fp8.cu lacks `{line}`");
            }
        }
    }

    /// Prefill tiles go longest first by the positions they read (first position + rows), ties in
    /// their order, whatever sequence they come from.
    #[test]
    fn prefill_tiles_are_ordered_by_the_positions_they_read() {
        let mut tiles =
            [[0, 0, 16, 0], [0, 16, 16, 16], [0, 32, 5, 32], [1, 37, 16, 100], [1, 53, 16, 116], [2, 69, 16, 21], [3, 85, 16, 28]];
        super::heaviest_tiles_first(&mut tiles);
        let ends: Vec<u32> = tiles.iter().map(|t| t[2] + t[3]).collect();
        assert_eq!(ends, [132, 116, 44, 37, 37, 32, 16]);
        assert_eq!(tiles[2], [3, 85, 16, 28], "a full tile ending later goes before a short one starting later");
        assert_eq!(tiles[3], [0, 32, 5, 32], "equal ends keep their order");
        assert_eq!(tiles[4], [2, 69, 16, 21]);
    }

    /// The tiles `moe_align` lays `counts` (slots per expert) out in: each expert's own, whole.
    fn tiles(counts: &[usize]) -> usize {
        counts.iter().map(|c| c.div_ceil(MOE_TILE_ROWS)).sum()
    }

    /// The MoE buffers are sized by `moe_max_tiles`: no routing of the slots may need more tiles,
    /// or the grouped GEMM would write past them. Checked on the extremes (every slot on one
    /// expert, one slot per expert, just over a tile on as many experts as possible) and on
    /// pseudo-random skewed routings.
    #[test]
    fn no_routing_needs_more_tiles_than_the_buffers_hold() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        for experts in [8, 16, 32, 60, 64, 128, 256, 512] {
            for slots in [33, 64, 65, 100, 512, 4096, 16_384, 65_536] {
                let bound = moe_max_tiles(slots, experts);
                let mut one = vec![0; experts];
                one[0] = slots;
                let spread: Vec<usize> = (0..experts).map(|e| slots / experts + usize::from(e < slots % experts)).collect();
                let mut over = vec![0; experts];
                let mut left = slots;
                for c in over.iter_mut() {
                    let take = left.min(MOE_TILE_ROWS + 1);
                    *c = take;
                    left -= take;
                }
                over[0] += left;
                for counts in [one, spread, over] {
                    assert!(tiles(&counts) <= bound, "{experts} experts, {slots} slots: {} tiles > {bound}", tiles(&counts));
                }
                for _ in 0..50 {
                    let mut counts = vec![0; experts];
                    for _ in 0..slots {
                        // Skewed: half the slots on the first eighth of the experts.
                        let e = if next() % 2 == 0 { next() % experts.div_ceil(8) } else { next() % experts };
                        counts[e] += 1;
                    }
                    assert!(tiles(&counts) <= bound, "{experts} experts, {slots} slots: {} tiles > {bound}", tiles(&counts));
                }
            }
        }
    }

    #[test]
    fn few_row_gemvs_split_k_over_the_warps_until_the_blocks_cover_the_gpu() {
        // qwen3-30b-a3b's router (128 × 2048) and gpt-oss-20b's (32 × 2880) on 132 multiprocessors.
        assert_eq!(gemv_k_split(128, 2048, 132), 8);
        assert_eq!(gemv_k_split(32, 2880, 132), 8);
        // 1,024 rows in 128 blocks of 8: twice the blocks at 2 warps a row.
        assert_eq!(gemv_k_split(1024, 2048, 132), 2);
        // Enough rows already, or too short a k to share: one warp a row.
        assert_eq!(gemv_k_split(5120, 2048, 132), 1);
        assert_eq!(gemv_k_split(64, 576, 132), 2);
        assert_eq!(gemv_k_split(64, 256, 132), 1);
    }

    #[test]
    fn many_row_bf16_gemvs_run_on_the_tensor_cores_few_row_ones_a_warp_a_row() {
        // Llama-3.1-8B's output projection and qwen3-30b-a3b's (2,048 rows: 128 blocks of 16) on
        // 132 multiprocessors; 1,056 rows are the first to reach 66 blocks.
        assert!(gemv_on_tensor_cores(4096, 132));
        assert!(gemv_on_tensor_cores(2048, 132));
        assert!(gemv_on_tensor_cores(1056, 132));
        // Routers' gates (qwen3-30b-a3b's 128, DeepSeek-V3's 256 rows) and 1,040 rows (65 blocks).
        assert!(!gemv_on_tensor_cores(128, 132));
        assert!(!gemv_on_tensor_cores(256, 132));
        assert!(!gemv_on_tensor_cores(1040, 132));
    }

    #[test]
    fn steps_of_at_most_a_token_a_multiprocessor_are_routed_a_block_a_token() {
        // Batch-1 decode, and a decode batch of one token a multiprocessor on 132.
        assert!(route_ranked(1, 132));
        assert!(route_ranked(132, 132));
        // One more token, and a prefill chunk: a warp a token.
        assert!(!route_ranked(133, 132));
        assert!(!route_ranked(8192, 132));
    }

    #[test]
    fn expert_gemv_rows_split_only_where_a_plain_row_takes_more_than_two_rounds() {
        // Gate/up rows: one warp each, whatever k (qwen3-30b-a3b's 2,048, gpt-oss-20b's 2,880).
        assert_eq!(moe_gemv_k_split(2048, true), 1);
        assert_eq!(moe_gemv_k_split(2880, true), 1);
        // Down rows: qwen3-30b-a3b's 768 and a 2,048 row of two rounds exactly stay whole;
        // gpt-oss-20b's 2,880 (360 groups) take two warps.
        assert_eq!(moe_gemv_k_split(768, false), 1);
        assert_eq!(moe_gemv_k_split(2048, false), 1);
        assert_eq!(moe_gemv_k_split(2880, false), 2);
    }
}
