// The expert products of a mixture-of-experts step with many routed slots, entirely on the device
// (no host round trip, so any step can replay as a CUDA graph):
//
// 1. `moe_align` lays the slots out expert by expert in tiles of MG_BM rows: each expert's slots
//    fill whole tiles of their own (the last one padded with MG_NONE rows), `tile_expert` names
//    each tile's expert, `rows` each padded row's slot, and `position` each slot's padded row.
// 2. `moe_grouped_gemm` runs every tile against its expert's weight on the tensor cores:
//    y[p, :] = x[row(p), :] · W_eᵀ (+ b_e), W_e found through a device table of one pointer per
//    expert, as in moe_decode.cu. For the gate/up product row(p) is slot rows[p]'s token (the slot
//    divided by `x_div`, top-k); for the down product the padded rows themselves (`rows` null).
//    Padding rows read zeros. Tiles past the step's count (`num_tiles`, written by moe_align)
//    return at once, so the grid is sized for the most tiles the slot count allows.
//
// The GEMM is a 64×64 output tile per block of four warps (each 32×32: two m16 by four n8
// mma.sync products per 16-wide k step), k in steps of 32 staged through shared memory, the next
// step's global loads in flight while the tensor cores work on this one. Requires k % 8 == 0 and
// n % 2 == 0.

#define MG_BM 64
#define MG_BN 64
#define MG_BK 32
#define MG_THREADS 128
#define MG_NONE 0xffffffffu

extern "C" __global__ void __launch_bounds__(1024)
    moe_align(const u32* __restrict__ experts, int slots, int num_experts, u32* __restrict__ tile_expert, u32* __restrict__ rows,
              u32* __restrict__ position, u32* __restrict__ num_tiles) {
    pdl_begin();
    __shared__ u32 count[MOE_MAX_EXPERTS], first_tile[MOE_MAX_EXPERTS], filled[MOE_MAX_EXPERTS];
    __shared__ u32 total;
    for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
        count[e] = 0;
        filled[e] = 0;
    }
    __syncthreads();
    for (int s = threadIdx.x; s < slots; s += blockDim.x) atomicAdd(&count[experts[s]], 1u);
    __syncthreads();
    if (threadIdx.x < 32) {
        // Each lane sums the tiles of a run of experts; a warp scan gives each run its first tile.
        const int lane = threadIdx.x, per = (num_experts + 31) / 32;
        const int lo = min(lane * per, num_experts), hi = min(lo + per, num_experts);
        u32 mine = 0;
        for (int e = lo; e < hi; e++) mine += (count[e] + MG_BM - 1) / MG_BM;
        u32 inclusive = mine;
        for (int o = 1; o < 32; o <<= 1) {
            u32 v = __shfl_up_sync(0xffffffffu, inclusive, o);
            if (lane >= o) inclusive += v;
        }
        u32 at = inclusive - mine;
        for (int e = lo; e < hi; e++) {
            first_tile[e] = at;
            at += (count[e] + MG_BM - 1) / MG_BM;
        }
        if (lane == 31) total = inclusive;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < num_experts; e += blockDim.x)
        for (u32 i = 0, tiles = (count[e] + MG_BM - 1) / MG_BM; i < tiles; i++) tile_expert[first_tile[e] + i] = e;
    for (u32 p = threadIdx.x; p < total * MG_BM; p += blockDim.x) rows[p] = MG_NONE;
    if (threadIdx.x == 0) *num_tiles = total;
    __syncthreads();
    for (int s = threadIdx.x; s < slots; s += blockDim.x) {
        const u32 e = experts[s];
        const u32 p = first_tile[e] * MG_BM + atomicAdd(&filled[e], 1u);
        rows[p] = s;
        position[s] = p;
    }
}

extern "C" __global__ void __launch_bounds__(MG_THREADS)
    moe_grouped_gemm(const bf16* __restrict__ x, int x_div, const u32* __restrict__ rows, const u32* __restrict__ tile_expert,
                     const u32* __restrict__ num_tiles, const u64* __restrict__ weights, const u64* __restrict__ biases, int n, int k,
                     bf16* __restrict__ y) {
    pdl_begin();
    const u32 tile = blockIdx.x;
    if (tile >= *num_tiles) return;
    const u32 e = tile_expert[tile];
    const bf16* w = (const bf16*)weights[e];
    const bf16* bias = biases ? (const bf16*)biases[e] : nullptr;
    const int n0 = blockIdx.y * MG_BN, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    // Rows padded by 16 bytes, so the eight rows one ldmatrix reads fall in distinct banks.
    __shared__ __align__(16) bf16 as[MG_BM][MG_BK + 8];
    __shared__ __align__(16) bf16 bs[MG_BN][MG_BK + 8];

    // Each thread stages two 16-byte chunks of A and two of B per k step: chunk c is row c / 4,
    // columns 8 · (c % 4). Their source rows are fixed for the whole k loop.
    const bf16* a_src[2];
    const bf16* b_src[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int r = (tid + i * MG_THREADS) >> 2;
        const u64 p = (u64)tile * MG_BM + r;
        const u32 slot = rows ? rows[p] : (u32)p;
        a_src[i] = slot == MG_NONE ? nullptr : x + (u64)(rows ? slot / (u32)x_div : slot) * k;
        b_src[i] = n0 + r < n ? w + (u64)(n0 + r) * k : nullptr;
    }
    const int col = 8 * (tid & 3);
    uint4 a_next[2], b_next[2];
    auto load = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const bool in_k = k0 + col < k;
            a_next[i] = a_src[i] && in_k ? *(const uint4*)(a_src[i] + k0 + col) : make_uint4(0, 0, 0, 0);
            b_next[i] = b_src[i] && in_k ? *(const uint4*)(b_src[i] + k0 + col) : make_uint4(0, 0, 0, 0);
        }
    };

    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    float acc[2][4][4] = {};
    load(0);
    for (int k0 = 0; k0 < k; k0 += MG_BK) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int r = (tid + i * MG_THREADS) >> 2;
            *(uint4*)&as[r][col] = a_next[i];
            *(uint4*)&bs[r][col] = b_next[i];
        }
        __syncthreads();
        if (k0 + MG_BK < k) load(k0 + MG_BK);
#pragma unroll
        for (int kk = 0; kk < MG_BK; kk += 16) {
            u32 a[2][4], b[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; mi++) ldmatrix_x4(a[mi], &as[wm + 16 * mi + (lane & 7) + ((lane >> 3) & 1) * 8][kk + (lane >> 4) * 8]);
            // b[nj] holds two n8 blocks: registers 0-1 for columns 16·nj..+7, 2-3 for the next 8.
#pragma unroll
            for (int nj = 0; nj < 2; nj++) ldmatrix_x4(b[nj], &bs[wn + 16 * nj + (lane & 7) + (lane >> 4) * 8][kk + ((lane >> 3) & 1) * 8]);
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++) mma_bf16_m16n8k16(acc[mi][ni], a[mi], b[ni >> 1][2 * (ni & 1)], b[ni >> 1][2 * (ni & 1) + 1]);
        }
        __syncthreads();
    }

    const int group = lane >> 2, pair = 2 * (lane & 3);
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++) {
            const int c = n0 + wn + 8 * ni + pair;
            if (c >= n) continue;
            const float b0 = bias ? bf2f(bias[c]) : 0.f, b1 = bias ? bf2f(bias[c + 1]) : 0.f;
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const u64 p = (u64)tile * MG_BM + wm + 16 * mi + group + 8 * half;
                *(u32*)&y[p * n + c] = pack_bf16x2(acc[mi][ni][2 * half] + b0, acc[mi][ni][2 * half + 1] + b1);
            }
        }
}
