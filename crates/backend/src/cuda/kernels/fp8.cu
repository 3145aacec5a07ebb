// FP8 E4M3 tensors: the dynamic quantization of bf16 tensors (the largest magnitude, then codes of
// x / scale with scale the power of two at or above amax / 448, rounded to nearest even and
// saturated at ±448), with one f32 scale a tensor (weights at load) or one a row (a product's
// activations: each token has its own scale, so its codes do not depend on the other tokens of
// the step), and the matrix-vector product of a few bf16 rows, quantized as they are read, with
// FP8 weights for small decode steps. The conversions (prelude.cu) use Hopper's (sm_89+) cvt
// instructions; on older devices they trap.

// The largest magnitude among x's groups of eight values first, first + stride, ... of n bf16
// values (n % 8 == 0): this thread's share of a tensor's amax.
__device__ __forceinline__ float strided_amax(const bf16* __restrict__ x, u64 n, u64 first, u64 stride) {
    float m = 0.f;
    for (u64 i = first; i < n / 8; i += stride) {
        float f[8];
        unpack8(((const uint4*)x)[i], f);
#pragma unroll
        for (int j = 0; j < 8; j++) m = fmaxf(m, fabsf(f[j]));
    }
    return m;
}

// amax = max(amax, max |x_i|) over n bf16 values (n % 8 == 0), as f32 bits (ordered as unsigned
// integers for non-negative floats). The caller zeroes amax first.
extern "C" __global__ void amax_bf16(const bf16* __restrict__ x, u64 n, u32* __restrict__ amax) {
    pdl_begin();
    __shared__ float scratch[32];
    const float m = block_max(strided_amax(x, n, (u64)blockIdx.x * blockDim.x + threadIdx.x, (u64)gridDim.x * blockDim.x), scratch);
    if (threadIdx.x == 0) atomicMax(amax, __float_as_uint(m));
}

// out = E4M3 codes of x / scale, scale = fp8_scale(amax), written to *scale_out.
extern "C" __global__ void quantize_fp8(const bf16* __restrict__ x, u64 n, const u32* __restrict__ amax, unsigned char* __restrict__ out,
                                        float* __restrict__ scale_out) {
    pdl_begin();
    float scale = fp8_scale(__uint_as_float(*amax));
    if (blockIdx.x == 0 && threadIdx.x == 0) *scale_out = scale;
    u64 n8 = n / 8, stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += stride) ((uint2*)out)[i] = quantize8(x, i, Fp8Divisor(scale));
}

// Activations, one scale a row: out[r] = E4M3 codes of x[r] / scales[r], scales[r] the power of
// two at or above the row's largest magnitude / 448. One block per row of `cols` values (cols % 8
// == 0); the row is read twice, the second time from L2.
extern "C" __global__ void quantize_fp8_rows(const bf16* __restrict__ x, int cols, unsigned char* __restrict__ out, float* __restrict__ scales) {
    pdl_begin();
    __shared__ float scratch[32];
    const u64 base = (u64)blockIdx.x * cols;
    const float scale = fp8_scale(block_max(strided_amax(x + base, cols, threadIdx.x, blockDim.x), scratch));
    if (threadIdx.x == 0) scales[blockIdx.x] = scale;
    const Fp8Divisor divisor(scale);
    for (int i = threadIdx.x; i < cols / 8; i += blockDim.x) ((uint2*)(out + base))[i] = quantize8(x + base, i, divisor);
}

// Bytes between two tokens' codes in gemv_fp8's shared memory: a row of k codes and F8G_CODES_PAD
// more, so that the lanes of two tokens reading the same chunk fall in different banks.
#define F8G_CODES_PAD 64
#define F8G_CODES_STRIDE(k) ((k) + F8G_CODES_PAD)

// Sixteen weight rows from `row0` (of n) as mma.sync's A fragments for the k step at byte `at`:
// this lane's rows g and g + 8, bytes 4c.. and 16 + 4c.. (zero past the last row).
__device__ __forceinline__ void fp8_rows_fragment(const unsigned char* __restrict__ w, int row0, int n, int k, int at, u32 (&a)[4]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int row = row0 + g + 8 * half;
        const unsigned char* p = w + (u64)row * k + at + 4 * c;
        a[half] = row < n ? *(const u32*)p : 0u;
        a[2 + half] = row < n ? *(const u32*)(p + 16) : 0u;
    }
}

// The products of a 64-byte chunk. A product is the same under any order of k taken alike by both
// operands, so a chunk's bytes are dealt to the two k steps of 32 as a lane loaded them: for the
// lane of column c, step 0's fragment positions 4c.. and 16 + 4c.. are its bytes 0..3 and 4..7,
// step 1's its bytes 8..11 and 12..15 (16c + those in the chunk); b holds the codes of the same
// 16 values of this lane's token.
__device__ __forceinline__ void fp8_chunk_product(float (&acc)[4], const RowsChunk& chunk, const u32 (&b)[4]) {
    const u32 step0[4] = {chunk.row[0].x, chunk.row[1].x, chunk.row[0].y, chunk.row[1].y};
    const u32 step1[4] = {chunk.row[0].z, chunk.row[1].z, chunk.row[0].w, chunk.row[1].w};
    mma_e4m3_m16n8k32(acc, step0, b[0], b[1]);
    mma_e4m3_m16n8k32(acc, step1, b[2], b[3]);
}

// y[t, n] = x_scale[t] · w_scale · (codes(x[t, :]) · w[n, :]) for bf16 x, E4M3 w and t < t_count
// <= GEMV_MAX_T: the product of the FP8 GEMM path (quantize_fp8_rows of x, then cuBLASLt) done
// without the quantization's launch, as gemv.cu's tensor-core GEMV (mma.sync m16n8k32, E4M3 in,
// f32 sums), so that the weights' bytes, not their decoding, set its speed. While the first chunks
// arrive, the block makes the tokens' codes once, into dynamic shared memory
// (gemv_fp8_token_codes), so that the loop over the chunks only reads them. Where k % 64 is 32,
// the last step of 32 is read in fragment order by one warp. k % 32 == 0 and w 16-byte aligned.
// The kernels are at the end of this file, one for each bound on k (the registers a thread holds
// a token's values in); the helpers below are their parts.

// Each token's scale, as quantize_fp8_rows finds it (the power of two at or above the row's amax
// / 448), into token_scale, and its codes, as quantize8 makes them, into `codes` (t_count rows of
// F8G_CODES_STRIDE(k) bytes). A thread loads its XV groups of eight values of a token at once and
// keeps them for the codes, so each row is read once, all its loads in flight together
// (k <= 8 · XV · GTC_THREADS). Each token's warp maxima get slots of their own, so one barrier a
// token does where block_max takes two.
template <int XV>
__device__ __forceinline__ void gemv_fp8_token_codes(const bf16* __restrict__ x, int t_count, int k, unsigned char* __restrict__ codes,
                                                     float* __restrict__ token_scale) {
    __shared__ float warp_amax[GEMV_MAX_T][GTC_WARPS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, groups = k / 8;
    for (int t = 0; t < t_count; t++) {
        const uint4* row = (const uint4*)(x + (u64)t * k);
        uint4 v[XV];
#pragma unroll
        for (int j = 0; j < XV; j++) {
            const int i = threadIdx.x + j * GTC_THREADS;
            v[j] = i < groups ? row[i] : make_uint4(0, 0, 0, 0);
        }
        float m = 0.f;
#pragma unroll
        for (int j = 0; j < XV; j++) m = fmaxf(m, bf16x8_amax(v[j]));
        m = warp_max(m);
        if (lane == 0) warp_amax[t][warp] = m;
        __syncthreads();
        float amax = 0.f;
#pragma unroll
        for (int w = 0; w < GTC_WARPS; w++) amax = fmaxf(amax, warp_amax[t][w]);
        const float scale = fp8_scale(amax);
        if (threadIdx.x == 0) token_scale[t] = scale;
        const Fp8Divisor divisor(scale);
        uint2* out = (uint2*)(codes + t * F8G_CODES_STRIDE(k));
#pragma unroll
        for (int j = 0; j < XV; j++) {
            const int i = threadIdx.x + j * GTC_THREADS;
            if (i < groups) out[i] = quantize8_bits(v[j], divisor);
        }
    }
    __syncthreads();
}

// The rest of the product, after pdl_begin, from the first chunks in flight.
template <bool swiglu, int XV>
__device__ __forceinline__ void gemv_fp8_rows(const bf16* __restrict__ x, const unsigned char* __restrict__ w, const float* __restrict__ w_scale,
                                              int t_count, int n, int k, void* __restrict__ y, int out_f32, RowsChunk (&gate)[GTC_AHEAD],
                                              RowsChunk (&up)[GTC_AHEAD]) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int row0 = blockIdx.x * GTC_ROWS, chunks = k / 64;
    const unsigned char* up_w = w + (u64)n * k;
    __shared__ float token_scale[GEMV_MAX_T];
    unsigned char* codes = dynamic_shared();
    const int stride = F8G_CODES_STRIDE(k);
    gemv_fp8_token_codes<XV>(x, t_count, k, codes, token_scale);
    // This lane's token's codes (g, when a real one).
    const unsigned char* my_codes = g < t_count ? codes + g * stride : nullptr;
    float acc[2][4] = {};
    gtc_walk_chunks<swiglu, false>(w, n, k, chunks, gate, up, [&](int chunk, const RowsChunk& gate_rows, const RowsChunk& up_rows) {
        const uint4 v = my_codes ? *(const uint4*)(my_codes + 64 * chunk + 16 * c) : make_uint4(0, 0, 0, 0);
        const u32 b[4] = {v.x, v.y, v.z, v.w};
        fp8_chunk_product(acc[0], gate_rows, b);
        if (swiglu) fp8_chunk_product(acc[1], up_rows, b);
    });
    if (k % 64 != 0 && warp == chunks % GTC_WARPS) {
        const int at = 64 * chunks;
        const u32 b0 = my_codes ? *(const u32*)(my_codes + at + 4 * c) : 0u, b1 = my_codes ? *(const u32*)(my_codes + at + 16 + 4 * c) : 0u;
        u32 a[4];
        fp8_rows_fragment(w, row0, n, k, at, a);
        mma_e4m3_m16n8k32(acc[0], a, b0, b1);
        if (swiglu) {
            fp8_rows_fragment(up_w, row0, n, k, at, a);
            mma_e4m3_m16n8k32(acc[1], a, b0, b1);
        }
    }
    float sum[2];
    gtc_block_sums<swiglu>(acc, sum);
    const int r = threadIdx.x / GEMV_MAX_T, token = threadIdx.x % GEMV_MAX_T;
    if (threadIdx.x >= GTC_ROWS * GEMV_MAX_T || row0 + r >= n || token >= t_count) return;
    const float scale = token_scale[token] * *w_scale;
    const float value = swiglu ? swiglu_of(sum[0] * scale, sum[1] * scale) : sum[0] * scale;
    if (out_f32) ((float*)y)[(u64)token * n + row0 + r] = value;
    else ((bf16*)y)[(u64)token * n + row0 + r] = f2bf(value);
}

// The kernels: the product without the SwiGLU apart, so that it holds registers for the gate
// rows only; each for k up to 2,048 · XV.
#define GEMV_FP8_KERNEL(name, swiglu, XV)                                                                                                   \
    extern "C" __global__ void __launch_bounds__(GTC_THREADS)                                                                               \
        name(const bf16* __restrict__ x, const unsigned char* __restrict__ w, const float* __restrict__ w_scale, int t_count, int n, int k, \
             void* __restrict__ y, int out_f32) {                                                                                           \
        RowsChunk gate[GTC_AHEAD], up[GTC_AHEAD];                                                                                           \
        gtc_first_chunks<swiglu, false>(w, n, k, k / 64, gate, up);                                                                         \
        pdl_begin();                                                                                                                        \
        gemv_fp8_rows<swiglu, XV>(x, w, w_scale, t_count, n, k, y, out_f32, gate, up);                                                      \
    }
GEMV_FP8_KERNEL(gemv_fp8_k4096, false, 2)
GEMV_FP8_KERNEL(gemv_fp8_k8192, false, 4)
GEMV_FP8_KERNEL(gemv_fp8_k16384, false, 8)
GEMV_FP8_KERNEL(gemv_fp8_swiglu_k4096, true, 2)
GEMV_FP8_KERNEL(gemv_fp8_swiglu_k8192, true, 4)
GEMV_FP8_KERNEL(gemv_fp8_swiglu_k16384, true, 8)
