// Shared definitions for lumen's CUDA kernels. NVRTC compiles the kernel files as one program,
// this file first. bf16 is carried as its raw 16 bits, so no CUDA headers are needed.

typedef unsigned short bf16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define INFINITY __int_as_float(0x7f800000)

__device__ __forceinline__ float bf2f(bf16 x) { return __uint_as_float(((u32)x) << 16); }

// silu(g) = g · sigmoid(g) with the fast exponential and the fast quotient (a multiply by the
// hardware reciprocal instead of the IEEE division's refinement and range check), within two
// ulp before the bf16 rounding each caller applies; 0 where 1 + e^-g overflows, as g / inf is.
__device__ __forceinline__ float silu(float g) { return __fdividef(g, 1.f + __expf(-g)); }

// Round to nearest even; NaN stays NaN.
__device__ __forceinline__ bf16 f2bf(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);
    return (bf16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Programmatic dependent launch (sm_90+). Kernels are launched so that the next launch in the
// stream may start once every block of this one has called pdl_begin(): its blocks can then be
// resident, and may read what never changes (weights) while this kernel still runs. pdl_begin()
// waits until the launch before has finished and its writes are visible; every kernel calls it
// before it touches memory an earlier launch writes or a later launch reads. By default a block
// lets the next launch start once its wait is over, so a launch's early part overlaps one launch
// ahead and may also read what the launch two back wrote. With `lumen_pdl_early` set (at load,
// from LUMEN_PDL_EARLY=1) a block lets the next launch start before it waits: launches then
// start as deep ahead as the blocks waiting in them leave room on the multiprocessors, and what
// runs before pdl_begin may read weights only. Without PDL (another device, or LUMEN_PDL=0) both
// halves are no-ops.
__constant__ int lumen_pdl_early;

__device__ __forceinline__ void pdl_begin() {
#if __CUDA_ARCH__ >= 900
    if (lumen_pdl_early) {
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
        asm volatile("griddepcontrol.wait;" ::: "memory");
    } else {
        asm volatile("griddepcontrol.wait;" ::: "memory");
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    }
#endif
}

// Starts moving `bytes` (a multiple of 16, from a 16-byte aligned address) of global memory into
// L2 without waiting for them: a weight's rows fetched before pdl_begin().
__device__ __forceinline__ void prefetch_l2(const void* p, u32 bytes) {
#if __CUDA_ARCH__ >= 900
    if (bytes) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block, returned to every thread. `scratch` holds 32 floats.
__device__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

__device__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// n consecutive bf16 values (n = 1, 2 or 4) as floats, in one access.
template <int N>
__device__ __forceinline__ void load_bf16_row(const bf16* p, float (&out)[N]) {
    if constexpr (N == 4) {
        uint2 w = *(const uint2*)p;
        out[0] = __uint_as_float(w.x << 16);
        out[1] = __uint_as_float(w.x & 0xffff0000u);
        out[2] = __uint_as_float(w.y << 16);
        out[3] = __uint_as_float(w.y & 0xffff0000u);
    } else if constexpr (N == 2) {
        u32 w = *(const u32*)p;
        out[0] = __uint_as_float(w << 16);
        out[1] = __uint_as_float(w & 0xffff0000u);
    } else {
        out[0] = bf2f(p[0]);
    }
}

// Tensor-core pieces shared by prefill attention and the grouped expert GEMM: one warp's
// m16n8k16 product (bf16 in, f32 accumulate) and shared-memory fragment loads.
__device__ __forceinline__ void mma_bf16_m16n8k16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The same product on f16 values (the FP8-cache decode attention: E4M3 codes widen to f16 in
// one instruction, and a probability keeps more bits in f16 than in bf16).
__device__ __forceinline__ void mma_f16_m16n8k16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The bytes of `lo` (0-3) and `hi` (4-7) picked by the four selector nibbles of `select`, lowest
// result byte first.
__device__ __forceinline__ u32 byte_perm(u32 lo, u32 hi, u32 select) {
    u32 r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(lo), "r"(hi), "r"(select));
    return r;
}

// One warp's m16n8k32 product of E4M3 codes with f32 sums (sm_89+; on older devices it traps):
// a[0] holds A[g][4c..4c+3], a[1] A[g+8][4c..], a[2] A[g][16+4c..], a[3] A[g+8][16+4c..]; b0
// holds B[4c..4c+3][g], b1 B[16+4c..16+4c+3][g] (g = lane / 4, c = lane % 4); d as for the bf16
// product.
__device__ __forceinline__ void mma_e4m3_m16n8k32(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 890
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

// The shared-memory address (state space offset) of a generic pointer into shared memory.
__device__ __forceinline__ u32 shared_address(const void* p) {
    u32 addr;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(addr) : "l"(p));
    return addr;
}

// Four 8×8 bf16 matrices from shared memory (lanes 8i..8i+7 give matrix i's rows), at a shared
// state-space address (a base plus constant offsets, which the loads take as immediates).
__device__ __forceinline__ void ldmatrix_x4_at(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// The same, transposed: r[i] holds column pairs of matrix i instead of row pairs.
__device__ __forceinline__ void ldmatrix_x4_trans_at(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// The same two from generic pointers into shared memory.
__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], const bf16* row) { ldmatrix_x4_at(r, shared_address(row)); }
__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], const bf16* row) { ldmatrix_x4_trans_at(r, shared_address(row)); }

// The block's dynamic shared memory (its size is the launch's).
__device__ __forceinline__ unsigned char* dynamic_shared() {
    extern __shared__ __align__(16) unsigned char lumen_dynamic_shared[];
    return lumen_dynamic_shared;
}

// Asynchronous 16-byte copies from global to shared memory (sm_80+), each lane's own: `valid`
// false writes 16 zero bytes and reads nothing. A group of them is committed, then awaited until
// at most N of this lane's groups are still in flight; other lanes' copies are visible after
// their wait and a __syncwarp.
// The destination is a shared state-space address, or a generic pointer into shared memory.
__device__ __forceinline__ void cp_async16_at(u32 smem, const void* gmem, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) { cp_async16_at(shared_address(smem), gmem, valid); }
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Two floats as a bf16 pair, `lo` at the lower address, rounded as f2bf rounds (one instruction,
// sm_80+; a NaN becomes the canonical one).
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// 2^x in one instruction (relative error about 2^-22; subnormal results flush to zero), for
// softmax weights.
__device__ __forceinline__ float fast_exp2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// FP8 E4M3 conversions (Hopper's cvt instructions, sm_89+; on older devices they trap), shared by
// the FP8 products (fp8.cu), the kernels that write a product's input as codes (elementwise.cu)
// and the FP8 KV cache (elementwise.cu, attention.cu); then the quantization rule (a power-of-two
// scale at or above amax / 448) and the codes of bf16 values under it.
#define FP8_MAX 448.0f

// Two floats to two E4M3 codes: `hi` in the upper byte, `lo` in the lower.
__device__ __forceinline__ u32 f32x2_to_e4m3x2(float hi, float lo) {
#if __CUDA_ARCH__ >= 890
    unsigned short r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    return r;
#else
    __trap();
    return 0;
#endif
}

// Two E4M3 codes (upper and lower byte of `v`) to an f16 pair in the same order: exact, every
// E4M3 value being an f16 value.
__device__ __forceinline__ u32 e4m3x2_to_f16x2(unsigned short v) {
#if __CUDA_ARCH__ >= 890
    u32 h2;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(v));
    return h2;
#else
    __trap();
    return 0;
#endif
}

// Two floats as an f16 pair (round to nearest even), `lo` in the lower half.
__device__ __forceinline__ u32 pack_f16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Two E4M3 codes (upper and lower byte of `v`) to floats.
__device__ __forceinline__ void e4m3x2_to_f32x2(unsigned short v, float& hi, float& lo) {
    const u32 h2 = e4m3x2_to_f16x2(v);
    unsigned short h_lo = (unsigned short)(h2 & 0xffffu), h_hi = (unsigned short)(h2 >> 16);
    asm("cvt.f32.f16 %0, %1;" : "=f"(lo) : "h"(h_lo));
    asm("cvt.f32.f16 %0, %1;" : "=f"(hi) : "h"(h_hi));
}

// The scale for a largest magnitude `a`: the power of two at or above a / 448 (1 when a is 0).
// A power of two makes x / scale exact, and a slightly different amax (another device's rounding)
// leaves the scale, and so every code, unchanged.
__device__ __forceinline__ float fp8_scale(float a) {
    if (!(a > 0.f)) return 1.f;
    return __uint_as_float((__float_as_uint(__fdiv_rn(a, FP8_MAX)) + 0x007fffffu) & 0xff800000u);
}

// x / scale for a power-of-two scale, as a product by its reciprocal where that is a normal
// float (every scale of at least 2^-126): the exact quotient rounded once, either way, without a
// division for each value.
struct Fp8Divisor {
    float scale, reciprocal;
    __device__ __forceinline__ explicit Fp8Divisor(float s) : scale(s), reciprocal(s >= 1.17549435e-38f ? 1.f / s : 0.f) {}
    __device__ __forceinline__ float of(float v) const { return reciprocal != 0.f ? v * reciprocal : v / scale; }
};

// Four bf16 values packed in two words divided by the scale, as four E4M3 codes packed low to high.
__device__ __forceinline__ u32 quantize4_bits(uint2 v, Fp8Divisor d) {
    const float f0 = __uint_as_float(v.x << 16), f1 = __uint_as_float(v.x & 0xffff0000u);
    const float f2 = __uint_as_float(v.y << 16), f3 = __uint_as_float(v.y & 0xffff0000u);
    return f32x2_to_e4m3x2(d.of(f1), d.of(f0)) | (f32x2_to_e4m3x2(d.of(f3), d.of(f2)) << 16);
}

// Eight bf16 values packed in four words (a 16-byte load) as quantize4_bits codes them, low to high.
__device__ __forceinline__ uint2 quantize8_bits(uint4 v, Fp8Divisor d) {
    return make_uint2(quantize4_bits(make_uint2(v.x, v.y), d), quantize4_bits(make_uint2(v.z, v.w), d));
}

// Four consecutive bf16 values (one 8-byte load) as quantize4_bits codes them.
__device__ __forceinline__ u32 quantize4(const bf16* __restrict__ x, Fp8Divisor d) { return quantize4_bits(*(const uint2*)x, d); }

// Codes of elements [8 i, 8 i + 8) of x divided by the scale.
__device__ __forceinline__ uint2 quantize8(const bf16* __restrict__ x, u64 i, Fp8Divisor d) {
    return make_uint2(quantize4(x + 8 * i, d), quantize4(x + 8 * i + 4, d));
}
