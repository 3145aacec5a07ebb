// Matrix-vector products for decode steps of a few tokens, where a GEMM library's tiles sit
// mostly idle: y[t, n] = x[t, :] · w[n, :] for t < t_count <= GEMV_MAX_T, or the SwiGLU of a
// fused gate/up product. One warp per output row (or k_split warps, each a share of k) streams
// that weight row once with 16-byte loads, GEMV_UNROLL loads in flight per lane; the few
// activation rows come from L1/L2. Requires k % 8 == 0.

#define GEMV_MAX_T 4
#define GEMV_UNROLL 4
#define GEMV_THREADS 256

__device__ __forceinline__ void unpack8(uint4 v, float (&f)[8]) {
    f[0] = __uint_as_float(v.x << 16);
    f[1] = __uint_as_float(v.x & 0xffff0000u);
    f[2] = __uint_as_float(v.y << 16);
    f[3] = __uint_as_float(v.y & 0xffff0000u);
    f[4] = __uint_as_float(v.z << 16);
    f[5] = __uint_as_float(v.z & 0xffff0000u);
    f[6] = __uint_as_float(v.w << 16);
    f[7] = __uint_as_float(v.w & 0xffff0000u);
}

// SwiGLU of a gate value and an up value, each first rounded to bf16 as a product's output is:
// what silu_mul computes from the fused gate/up product's two halves.
__device__ __forceinline__ float swiglu_of(float gate, float up) {
    const float g = bf2f(f2bf(gate)), u = bf2f(f2bf(up));
    return g / (1.f + __expf(-g)) * u;
}

// One warp's dot products of weight row `wr` with the t_count activation rows over the 8-value
// groups [g0, g1) of k, summed over the warp (every lane gets them).
__device__ __forceinline__ void gemv_row(const bf16* __restrict__ x, const uint4* __restrict__ wr, int t_count, int k, int g0, int g1,
                                         float (&acc)[GEMV_MAX_T]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int t = 0; t < GEMV_MAX_T; t++) acc[t] = 0.f;
    for (int base = g0 + lane; base < g1; base += 32 * GEMV_UNROLL) {
        uint4 wv[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            int i = base + u * 32;
            wv[u] = i < g1 ? wr[i] : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            int i = base + u * 32;
            if (i >= g1) break;
            float wf[8];
            unpack8(wv[u], wf);
#pragma unroll
            for (int t = 0; t < GEMV_MAX_T; t++) {
                if (t < t_count) {
                    float xf[8];
                    unpack8(((const uint4*)(x + (u64)t * k))[i], xf);
#pragma unroll
                    for (int j = 0; j < 8; j++) acc[t] = fmaf(wf[j], xf[j], acc[t]);
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < GEMV_MAX_T; t++)
        if (t < t_count) acc[t] = warp_sum(acc[t]);
}

// Share `share` of k's groups of 8 values when `k_split` warps split a row: [g0, g1), the shares
// equal and contiguous in order, the last one shorter where k_split does not divide the groups.
__device__ __forceinline__ void gemv_share(int k, int k_split, int share, int& g0, int& g1) {
    const int groups = k / 8, per_share = (groups + k_split - 1) / k_split;
    g0 = min(groups, share * per_share);
    g1 = min(groups, g0 + per_share);
}

// With `swiglu`, w holds 2n rows (gate rows, then up rows, as the fused gate/up projection) and
// each row's warps take gate row j and up row n + j, writing swiglu_of(gate, up): the product and
// the SwiGLU after it in one launch, bit for bit the two launches' result.
// `k_split` (1, 2, 4 or 8) warps share a row, each summing a contiguous share of k, and the row's
// first warp adds the shares in order: a weight of few rows (a router's gate) then spreads over
// k_split times the blocks. The split is chosen from the weight's shape alone, so a row's sums
// never depend on the batch.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv(const bf16* __restrict__ x, const bf16* __restrict__ w, int t_count, int n,
                                                                int k, void* __restrict__ y, int out_f32, int swiglu, int k_split) {
    __shared__ float shares[GEMV_THREADS / 32][2][GEMV_MAX_T];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * (GEMV_THREADS / 32 / k_split) + warp / k_split, part = warp % k_split;
    int g0, g1;
    gemv_share(k, k_split, part, g0, g1);
    // The weights never change: their share starts towards L2 while the launch before still runs.
    if (row < n && lane == 0) {
        prefetch_l2(w + (u64)row * k + g0 * 8, (g1 - g0) * 16);
        if (swiglu) prefetch_l2(w + (u64)(n + row) * k + g0 * 8, (g1 - g0) * 16);
    }
    pdl_begin();
    float acc[GEMV_MAX_T], up[GEMV_MAX_T];
    if (row < n) {
        gemv_row(x, (const uint4*)(w + (u64)row * k), t_count, k, g0, g1, acc);
        if (swiglu) gemv_row(x, (const uint4*)(w + (u64)(n + row) * k), t_count, k, g0, g1, up);
    }
    if (k_split > 1) {
        if (row < n && lane == 0)
#pragma unroll
            for (int t = 0; t < GEMV_MAX_T; t++) {
                shares[warp][0][t] = acc[t];
                shares[warp][1][t] = swiglu ? up[t] : 0.f;
            }
        __syncthreads();
        if (row >= n || part != 0) return;
#pragma unroll
        for (int t = 0; t < GEMV_MAX_T; t++) {
            acc[t] = shares[warp][0][t];
            up[t] = shares[warp][1][t];
            for (int p = 1; p < k_split; p++) {
                acc[t] += shares[warp + p][0][t];
                up[t] += shares[warp + p][1][t];
            }
        }
    }
    if (row >= n) return;
#pragma unroll
    for (int t = 0; t < GEMV_MAX_T; t++) {
        if (t < t_count && lane == 0) {
            const float v = swiglu ? swiglu_of(acc[t], up[t]) : acc[t];
            if (out_f32) ((float*)y)[(u64)t * n + row] = v;
            else ((bf16*)y)[(u64)t * n + row] = f2bf(v);
        }
    }
}
