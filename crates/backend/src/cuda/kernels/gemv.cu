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
    return silu(g) * u;
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

// The tensor-core GEMV, for weights of many rows (bf16 here, FP8 in fp8.cu): a block takes
// GTC_ROWS weight rows as the A operand of mma.sync (m16n8k16 for bf16, m16n8k32 for E4M3; f32
// sums), the tokens as B's columns (the rest zero). Its GTC_WARPS warps share out the rows'
// chunks of 64 bytes, each lane reading 16 bytes of two rows (rows_chunk), GTC_AHEAD chunks in
// flight a warp; the first of them are loaded before pdl_begin (the weights never change), so they
// arrive while the launch before finishes. A product is the same under any order of k taken alike
// by both operands, so a lane's 16 bytes of a chunk are dealt to the mma steps as it loaded them,
// and its token's values at the same place of k go to B. The warps' sums meet in shared memory
// (gtc_block_sums). With `swiglu`, w holds 2n rows (gate, then up) and the block also runs the up
// rows n + j beside gate rows j, writing swiglu_of(gate, up) as `gemv` does.
#define GTC_ROWS 16
#define GTC_THREADS 256
#define GTC_WARPS (GTC_THREADS / 32)
#define GTC_AHEAD 4

// This lane's 16 bytes at byte `at` + 16c of rows g and g + 8 of the sixteen from `row0` (of n
// rows of `row_bytes`, a multiple of 16), zero past the last row and, where the chunk may be
// `partial`, past the row's end.
struct RowsChunk {
    uint4 row[2];
};

template <bool partial>
__device__ __forceinline__ RowsChunk rows_chunk(const unsigned char* __restrict__ w, int row0, int n, int row_bytes, int at) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    RowsChunk chunk;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int row = row0 + g + 8 * half;
        const bool inside = row < n && (!partial || at + 16 * c + 16 <= row_bytes);
        chunk.row[half] = inside ? *(const uint4*)(w + (u64)row * row_bytes + at + 16 * c) : make_uint4(0, 0, 0, 0);
    }
    return chunk;
}

// This warp's first GTC_AHEAD chunks of the block's rows (and of their up rows, n rows on, with
// `swiglu`), of `chunks` a row, the last of them perhaps `partial`.
template <bool swiglu, bool partial>
__device__ __forceinline__ void gtc_first_chunks(const unsigned char* __restrict__ w, int n, int row_bytes, int chunks,
                                                 RowsChunk (&gate)[GTC_AHEAD], RowsChunk (&up)[GTC_AHEAD]) {
    const int warp = threadIdx.x >> 5, row0 = blockIdx.x * GTC_ROWS;
#pragma unroll
    for (int u = 0; u < GTC_AHEAD; u++) {
        const int chunk = warp + u * GTC_WARPS;
        if (chunk < chunks) {
            gate[u] = rows_chunk<partial>(w, row0, n, row_bytes, 64 * chunk);
            if (swiglu) up[u] = rows_chunk<partial>(w + (u64)n * row_bytes, row0, n, row_bytes, 64 * chunk);
        }
    }
}

// Walks this warp's chunks of the block's rows from the first ones in flight: hands each chunk (its
// index, the gate rows' and the up rows') to `product`, then loads the chunk GTC_AHEAD · GTC_WARPS
// on into its slot, so that GTC_AHEAD chunks stay in flight.
template <bool swiglu, bool partial, typename Product>
__device__ __forceinline__ void gtc_walk_chunks(const unsigned char* __restrict__ w, int n, int row_bytes, int chunks,
                                                RowsChunk (&gate)[GTC_AHEAD], RowsChunk (&up)[GTC_AHEAD], Product product) {
    const int warp = threadIdx.x >> 5, row0 = blockIdx.x * GTC_ROWS;
    const unsigned char* up_w = w + (u64)n * row_bytes;
    for (int first = warp; first < chunks; first += GTC_AHEAD * GTC_WARPS) {
#pragma unroll
        for (int u = 0; u < GTC_AHEAD; u++) {
            const int chunk = first + u * GTC_WARPS;
            if (chunk >= chunks) break;
            product(chunk, gate[u], up[u]);
            const int next = chunk + GTC_AHEAD * GTC_WARPS;
            if (next < chunks) {
                gate[u] = rows_chunk<partial>(w, row0, n, row_bytes, 64 * next);
                if (swiglu) up[u] = rows_chunk<partial>(up_w, row0, n, row_bytes, 64 * next);
            }
        }
    }
}

// The block's sums of row r for token t (gate and up halves), for thread r · GEMV_MAX_T + t below
// GTC_ROWS · GEMV_MAX_T: the warps' mma sums (acc: D[g][2c], D[g][2c + 1], D[g + 8][2c],
// D[g + 8][2c + 1], rows then tokens) added in warp order. Every thread of the block calls it.
template <bool swiglu>
__device__ __forceinline__ void gtc_block_sums(const float (&acc)[2][4], float (&sum)[2]) {
    __shared__ float partial[2][GTC_WARPS][GTC_ROWS][GEMV_MAX_T];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const int token = 2 * c + (e & 1);
        if (token < GEMV_MAX_T) {
            partial[0][warp][g + 8 * (e >> 1)][token] = acc[0][e];
            if (swiglu) partial[1][warp][g + 8 * (e >> 1)][token] = acc[1][e];
        }
    }
    __syncthreads();
    sum[0] = sum[1] = 0.f;
    if (threadIdx.x >= GTC_ROWS * GEMV_MAX_T) return;
    const int r = threadIdx.x / GEMV_MAX_T, token = threadIdx.x % GEMV_MAX_T;
#pragma unroll
    for (int v = 0; v < GTC_WARPS; v++) {
        sum[0] += partial[0][v][r][token];
        if (swiglu) sum[1] += partial[1][v][r][token];
    }
}

// A bf16 chunk's two k steps of 16: the lane's 8 values of each row and of its token (xv).
__device__ __forceinline__ void bf16_chunk_product(float (&acc)[4], const RowsChunk& chunk, uint4 xv) {
    const u32 step0[4] = {chunk.row[0].x, chunk.row[1].x, chunk.row[0].y, chunk.row[1].y};
    const u32 step1[4] = {chunk.row[0].z, chunk.row[1].z, chunk.row[0].w, chunk.row[1].w};
    mma_bf16_m16n8k16(acc, step0, xv.x, xv.y);
    mma_bf16_m16n8k16(acc, step1, xv.z, xv.w);
}

// The bf16 rows' sums after pdl_begin, from the first chunks in flight: tokens g < t_count of x
// (rows of k values, k % 8 == 0; a chunk is 32 of them).
template <bool swiglu>
__device__ __forceinline__ void gtc_bf16_rows(const bf16* __restrict__ x, const bf16* __restrict__ w, int t_count, int n, int k,
                                              RowsChunk (&gate)[GTC_AHEAD], RowsChunk (&up)[GTC_AHEAD], float (&acc)[2][4]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const bf16* my_x = g < t_count ? x + (u64)g * k : nullptr;
    gtc_walk_chunks<swiglu, true>((const unsigned char*)w, n, 2 * k, (k + 31) / 32, gate, up,
                                  [&](int chunk, const RowsChunk& gate_rows, const RowsChunk& up_rows) {
                                      const int at = 32 * chunk + 8 * c;
                                      const uint4 xv = my_x && at + 8 <= k ? *(const uint4*)(my_x + at) : make_uint4(0, 0, 0, 0);
                                      bf16_chunk_product(acc[0], gate_rows, xv);
                                      if (swiglu) bf16_chunk_product(acc[1], up_rows, xv);
                                  });
}

// y[t, n] = x[t, :] · w[n, :] (or its SwiGLU, gemv_tc_swiglu) for t < t_count <= GEMV_MAX_T, on the
// tensor cores; what `gemv` computes, summed in another order.
#define GEMV_TC_KERNEL(name, swiglu)                                                                                                 \
    extern "C" __global__ void __launch_bounds__(GTC_THREADS)                                                                        \
        name(const bf16* __restrict__ x, const bf16* __restrict__ w, int t_count, int n, int k, void* __restrict__ y, int out_f32) { \
        RowsChunk gate[GTC_AHEAD], up[GTC_AHEAD];                                                                                    \
        gtc_first_chunks<swiglu, true>((const unsigned char*)w, n, 2 * k, (k + 31) / 32, gate, up);                                  \
        pdl_begin();                                                                                                                 \
        float acc[2][4] = {};                                                                                                        \
        gtc_bf16_rows<swiglu>(x, w, t_count, n, k, gate, up, acc);                                                                   \
        float sum[2];                                                                                                                \
        gtc_block_sums<swiglu>(acc, sum);                                                                                            \
        const int r = threadIdx.x / GEMV_MAX_T, token = threadIdx.x % GEMV_MAX_T, row = blockIdx.x * GTC_ROWS + r;                   \
        if (threadIdx.x >= GTC_ROWS * GEMV_MAX_T || row >= n || token >= t_count) return;                                            \
        const float value = swiglu ? swiglu_of(sum[0], sum[1]) : sum[0];                                                             \
        if (out_f32) ((float*)y)[(u64)token * n + row] = value;                                                                      \
        else ((bf16*)y)[(u64)token * n + row] = f2bf(value);                                                                         \
    }
GEMV_TC_KERNEL(gemv_tc, false)
GEMV_TC_KERNEL(gemv_tc_swiglu, true)
