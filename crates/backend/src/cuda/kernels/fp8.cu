// FP8 E4M3 tensors with one f32 scale each (a value is its code times the scale): the dynamic
// quantization of bf16 activations (the largest magnitude, then codes of x / scale with scale the
// power of two at or above amax / 448, rounded to nearest even and saturated at ±448), and the
// matrix-vector product of a few bf16 rows, quantized as they are read, with FP8 weights for
// small decode steps. The
// conversions (prelude.cu) use Hopper's (sm_89+) cvt instructions; on older devices they trap.

// amax = max(amax, max |x_i|) over n bf16 values (n % 8 == 0), as f32 bits (ordered as unsigned
// integers for non-negative floats). The caller zeroes amax first.
extern "C" __global__ void amax_bf16(const bf16* __restrict__ x, u64 n, u32* __restrict__ amax) {
    __shared__ float scratch[32];
    float m = 0.f;
    u64 n8 = n / 8, stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += stride) {
        float f[8];
        unpack8(((const uint4*)x)[i], f);
#pragma unroll
        for (int j = 0; j < 8; j++) m = fmaxf(m, fabsf(f[j]));
    }
    m = block_max(m, scratch);
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

// Codes of elements [8 i, 8 i + 8) of x divided by the scale.
__device__ __forceinline__ uint2 quantize8(const bf16* __restrict__ x, u64 i, Fp8Divisor d) {
    float f[8];
    unpack8(((const uint4*)x)[i], f);
    u32 lo = f32x2_to_e4m3x2(d.of(f[1]), d.of(f[0])) | (f32x2_to_e4m3x2(d.of(f[3]), d.of(f[2])) << 16);
    u32 hi = f32x2_to_e4m3x2(d.of(f[5]), d.of(f[4])) | (f32x2_to_e4m3x2(d.of(f[7]), d.of(f[6])) << 16);
    return make_uint2(lo, hi);
}

// out = E4M3 codes of x / scale, scale = fp8_scale(amax), written to *scale_out.
extern "C" __global__ void quantize_fp8(const bf16* __restrict__ x, u64 n, const u32* __restrict__ amax, unsigned char* __restrict__ out,
                                        float* __restrict__ scale_out) {
    float scale = fp8_scale(__uint_as_float(*amax));
    if (blockIdx.x == 0 && threadIdx.x == 0) *scale_out = scale;
    u64 n8 = n / 8, stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += stride) ((uint2*)out)[i] = quantize8(x, i, Fp8Divisor(scale));
}

// Both steps in one block, for the few rows of a decode step: the largest magnitude, then the codes.
extern "C" __global__ void quantize_fp8_block(const bf16* __restrict__ x, u64 n, unsigned char* __restrict__ out, float* __restrict__ scale_out) {
    __shared__ float scratch[32];
    float m = 0.f;
    u64 n8 = n / 8;
    for (u64 i = threadIdx.x; i < n8; i += blockDim.x) {
        float f[8];
        unpack8(((const uint4*)x)[i], f);
#pragma unroll
        for (int j = 0; j < 8; j++) m = fmaxf(m, fabsf(f[j]));
    }
    float scale = fp8_scale(block_max(m, scratch));
    if (threadIdx.x == 0) *scale_out = scale;
    for (u64 i = threadIdx.x; i < n8; i += blockDim.x) ((uint2*)out)[i] = quantize8(x, i, Fp8Divisor(scale));
}

// Sixteen E4M3 codes (one 16-byte load) to floats, in memory order.
__device__ __forceinline__ void unpack16_fp8(uint4 v, float (&f)[16]) {
    u32 words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        e4m3x2_to_f32x2((unsigned short)(words[i] & 0xffffu), f[4 * i + 1], f[4 * i]);
        e4m3x2_to_f32x2((unsigned short)(words[i] >> 16), f[4 * i + 3], f[4 * i + 2]);
    }
}

// Sixteen bf16 activations (two 16-byte loads, element 16 i on) quantized with `scale` as
// quantize8 codes them, and read back as the values of those codes: what the FP8 GEMM sees.
__device__ __forceinline__ void quantized16(const bf16* __restrict__ x, u64 i, Fp8Divisor d, float (&out)[16]) {
    float f[16], a[8], b[8];
    unpack8(((const uint4*)x)[2 * i], a);
    unpack8(((const uint4*)x)[2 * i + 1], b);
#pragma unroll
    for (int j = 0; j < 8; j++) {
        f[j] = a[j];
        f[8 + j] = b[j];
    }
#pragma unroll
    for (int p = 0; p < 8; p++) {
        const u32 codes = f32x2_to_e4m3x2(d.of(f[2 * p + 1]), d.of(f[2 * p]));
        e4m3x2_to_f32x2((unsigned short)codes, out[2 * p + 1], out[2 * p]);
    }
}

// y[t, n] = x_scale · w_scale · (codes(x[t, :]) · w[n, :]) for bf16 x, E4M3 w and t < t_count <=
// GEMV_MAX_T: the product of the FP8 GEMM path (quantize_fp8 of x, then cuBLASLt) done without
// the quantization's launch. Every block first finds the activations' scale as quantize_fp8_block
// does (the power of two at or above amax / 448 over all t_count · k values), then each warp
// takes one output row as `gemv` does, quantizing the activations in registers to the same
// codes: 16-byte loads (sixteen codes) of the weight row, the few activation rows from L1/L2.
// k % 16 == 0.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_fp8(const bf16* __restrict__ x, const unsigned char* __restrict__ w,
                                                                    const float* __restrict__ w_scale, int t_count, int n, int k,
                                                                    void* __restrict__ y, int out_f32) {
    __shared__ float scratch[32];
    float m = 0.f;
    const u64 n8 = (u64)t_count * k / 8;
    for (u64 i = threadIdx.x; i < n8; i += blockDim.x) {
        float f[8];
        unpack8(((const uint4*)x)[i], f);
#pragma unroll
        for (int j = 0; j < 8; j++) m = fmaxf(m, fabsf(f[j]));
    }
    const float x_scale = fp8_scale(block_max(m, scratch));
    const Fp8Divisor divisor(x_scale);
    const int row = (int)((blockIdx.x * (u64)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    if (row >= n) return;
    const uint4* wr = (const uint4*)(w + (u64)row * k);
    const int k16 = k / 16;
    float acc[GEMV_MAX_T];
#pragma unroll
    for (int t = 0; t < GEMV_MAX_T; t++) acc[t] = 0.f;
    for (int base = lane; base < k16; base += 32 * GEMV_UNROLL) {
        uint4 wv[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            int i = base + u * 32;
            wv[u] = i < k16 ? wr[i] : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            int i = base + u * 32;
            if (i >= k16) break;
            float wf[16];
            unpack16_fp8(wv[u], wf);
#pragma unroll
            for (int t = 0; t < GEMV_MAX_T; t++) {
                if (t < t_count) {
                    float xf[16];
                    quantized16(x + (u64)t * k, i, divisor, xf);
#pragma unroll
                    for (int j = 0; j < 16; j++) acc[t] = fmaf(wf[j], xf[j], acc[t]);
                }
            }
        }
    }
    const float scale = x_scale * *w_scale;
#pragma unroll
    for (int t = 0; t < GEMV_MAX_T; t++) {
        if (t < t_count) {
            float v = warp_sum(acc[t]) * scale;
            if (lane == 0) {
                if (out_f32) ((float*)y)[(u64)t * n + row] = v;
                else ((bf16*)y)[(u64)t * n + row] = f2bf(v);
            }
        }
    }
}
