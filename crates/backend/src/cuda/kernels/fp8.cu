// FP8 E4M3 tensors with one f32 scale each (a value is its code times the scale): the dynamic
// quantization of bf16 activations (the largest magnitude, then codes of x / scale with scale the
// power of two at or above amax / 448, rounded to nearest even and saturated at ±448), and the
// matrix-vector product of a few bf16 rows, quantized as they are read, with FP8 weights for
// small decode steps. The
// conversions (prelude.cu) use Hopper's (sm_89+) cvt instructions; on older devices they trap.

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

// Four consecutive bf16 values (one 8-byte load) divided by the scale, as four E4M3 codes packed
// low to high.
__device__ __forceinline__ u32 quantize4(const bf16* __restrict__ x, Fp8Divisor d) {
    const uint2 v = *(const uint2*)x;
    const float f0 = __uint_as_float(v.x << 16), f1 = __uint_as_float(v.x & 0xffff0000u);
    const float f2 = __uint_as_float(v.y << 16), f3 = __uint_as_float(v.y & 0xffff0000u);
    return f32x2_to_e4m3x2(d.of(f1), d.of(f0)) | (f32x2_to_e4m3x2(d.of(f3), d.of(f2)) << 16);
}

// Codes of elements [8 i, 8 i + 8) of x divided by the scale.
__device__ __forceinline__ uint2 quantize8(const bf16* __restrict__ x, u64 i, Fp8Divisor d) {
    return make_uint2(quantize4(x + 8 * i, d), quantize4(x + 8 * i + 4, d));
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

// Both steps in one block, for the few rows of a decode step: the largest magnitude, then the codes.
extern "C" __global__ void quantize_fp8_block(const bf16* __restrict__ x, u64 n, unsigned char* __restrict__ out, float* __restrict__ scale_out) {
    pdl_begin();
    __shared__ float scratch[32];
    const float scale = fp8_scale(block_max(strided_amax(x, n, threadIdx.x, blockDim.x), scratch));
    if (threadIdx.x == 0) *scale_out = scale;
    for (u64 i = threadIdx.x; i < n / 8; i += blockDim.x) ((uint2*)out)[i] = quantize8(x, i, Fp8Divisor(scale));
}

#define F8G_ROWS 16
#define F8G_THREADS 256
#define F8G_WARPS (F8G_THREADS / 32)


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

// y[t, n] = x_scale · w_scale · (codes(x[t, :]) · w[n, :]) for bf16 x, E4M3 w and t < t_count <=
// GEMV_MAX_T: the product of the FP8 GEMM path (quantize_fp8 of x, then cuBLASLt) done without
// the quantization's launch, on the tensor cores so that the weights' bytes, not their decoding,
// set its speed. Every block first finds the activations' scale as quantize_fp8_block does (the
// power of two at or above amax / 448 over all t_count · k values). A block then takes
// F8G_ROWS output rows as the A operand of mma.sync m16n8k32 (E4M3 in, f32 sums), read straight
// from memory in fragment order, and the tokens as B's columns (the rest zero), their codes
// made in registers as quantize8 makes them; its warps share out the k steps of 32 and their
// sums meet in shared memory. With `swiglu`, w holds 2n rows (gate, then up) and the block also
// runs the up rows n + j beside gate rows j, writing swiglu_of(gate, up) as `gemv` does. k % 32 == 0.
extern "C" __global__ void __launch_bounds__(F8G_THREADS) gemv_fp8(const bf16* __restrict__ x, const unsigned char* __restrict__ w,
                                                                   const float* __restrict__ w_scale, int t_count, int n, int k,
                                                                   void* __restrict__ y, int out_f32, int swiglu) {
    // The block's weight rows never change: they start towards L2 while the launch before runs.
    if (threadIdx.x == 0) {
        const u32 bytes = (u32)max(0, min(F8G_ROWS, n - (int)blockIdx.x * F8G_ROWS)) * k;
        prefetch_l2(w + (u64)blockIdx.x * F8G_ROWS * k, bytes);
        if (swiglu) prefetch_l2(w + ((u64)n + blockIdx.x * F8G_ROWS) * k, bytes);
    }
    pdl_begin();
    __shared__ float scratch[32];
    __shared__ float partial[2][F8G_WARPS][F8G_ROWS][GEMV_MAX_T];
    const float x_scale = fp8_scale(block_max(strided_amax(x, (u64)t_count * k, threadIdx.x, blockDim.x), scratch));
    const Fp8Divisor divisor(x_scale);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int row0 = blockIdx.x * F8G_ROWS;
    // This lane's token (g, when a real one): its four values at 4c.. and at 16 + 4c.. of a step.
    const bf16* x_row = g < t_count ? x + (u64)g * k + 4 * c : nullptr;
    float acc[2][4] = {};
    const int steps = k / 32;
#pragma unroll 2
    for (int s = warp; s < steps; s += F8G_WARPS) {
        const int at = 32 * s;
        const u32 b0 = x_row ? quantize4(x_row + at, divisor) : 0u, b1 = x_row ? quantize4(x_row + at + 16, divisor) : 0u;
        u32 a[4];
        fp8_rows_fragment(w, row0, n, k, at, a);
        mma_e4m3_m16n8k32(acc[0], a, b0, b1);
        if (swiglu) {
            fp8_rows_fragment(w + (u64)n * k, row0, n, k, at, a);
            mma_e4m3_m16n8k32(acc[1], a, b0, b1);
        }
    }
    // acc holds D[g][2c], D[g][2c + 1], D[g + 8][2c], D[g + 8][2c + 1]: rows, then tokens.
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const int token = 2 * c + (e & 1);
        if (token < GEMV_MAX_T) {
            partial[0][warp][g + 8 * (e >> 1)][token] = acc[0][e];
            partial[1][warp][g + 8 * (e >> 1)][token] = acc[1][e];
        }
    }
    __syncthreads();
    if (threadIdx.x >= F8G_ROWS * GEMV_MAX_T) return;
    const int r = threadIdx.x / GEMV_MAX_T, token = threadIdx.x % GEMV_MAX_T;
    if (row0 + r >= n || token >= t_count) return;
    float sum[2] = {0.f, 0.f};
#pragma unroll
    for (int v = 0; v < F8G_WARPS; v++) {
        sum[0] += partial[0][v][r][token];
        sum[1] += partial[1][v][r][token];
    }
    const float scale = x_scale * *w_scale;
    const float value = swiglu ? swiglu_of(sum[0] * scale, sum[1] * scale) : sum[0] * scale;
    if (out_f32) ((float*)y)[(u64)token * n + row0 + r] = value;
    else ((bf16*)y)[(u64)token * n + row0 + r] = f2bf(value);
}
