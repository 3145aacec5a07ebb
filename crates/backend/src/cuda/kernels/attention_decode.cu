// Decode attention on the tensor cores: one query token a tile (attention.cu's tile format,
// splits, masks, sinks and outputs), the GQA group's query heads (at most DEC_MAX_GROUP) as the
// rows of one warp-level product. A block takes one tile, one KV head and one KV split; its four
// warps take the split's positions DEC_STEP at a time in turn, each with its own online softmax,
// and merge their states in shared memory at the end.
//
// Each warp copies its steps' K and V rows from the paged cache into a ring of shared-memory
// stages with asynchronous copies, several steps ahead, and reads its fragments from there; no
// block barrier runs in the loop. Two index permutations make each lane's share of a step
// contiguous:
// - S = Q·Kᵀ (m16n8k16, the group's heads as rows 0-7 of 16): a product's sum runs over the head
//   dimension in any order, so k-block kb's values 2c, 2c+1, 2c+8, 2c+9 are the head dimensions
//   c·HD/4 + 4kb .. +3, for Q and K alike, and the lanes of quad c read HD/4 consecutive values
//   of one position.
// - Oᵀ = Vᵀ·Pᵀ (Vᵀ as the A operand, m = 16 head dimensions, k = 16 positions; P from the S
//   fragments, already in the B operand's layout): output row g of m-tile mt is the head
//   dimension g·HD/8 + 2mt, row g + 8 the one after it, so lane group g reads HD/8 consecutive
//   values of each of its four positions.
// An FP8 cache runs the products on f16 (E4M3 codes widen to f16 in one instruction; the queries
// and probabilities are rounded to f16), a bf16 cache on bf16. The sums run in another order than
// the CUDA-core kernel's, so batch-invariant runs keep to that kernel.

#define DEC_THREADS 128
#define DEC_WARPS (DEC_THREADS / 32)
#define DEC_STEP 16
#define DEC_MAX_GROUP 8
// Stages of each warp's copy ring (DECODE_ATTENTION_STAGES in kernels.rs): dynamic shared memory
// of 4 warps × stages × 32 rows of HD values + 16 bytes.
#define DEC_STAGES_BF16 3
#define DEC_STAGES_FP8 4

// N 32-bit words from global or shared memory, in as few loads as their alignment allows.
template <int N>
__device__ __forceinline__ void load_words(const void* p, u32 (&w)[N]) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N / 4; i++) {
            const uint4 v = ((const uint4*)p)[i];
            w[4 * i] = v.x;
            w[4 * i + 1] = v.y;
            w[4 * i + 2] = v.z;
            w[4 * i + 3] = v.w;
        }
    } else if constexpr (N == 2) {
        const uint2 v = *(const uint2*)p;
        w[0] = v.x;
        w[1] = v.y;
    } else {
        w[0] = *(const u32*)p;
    }
}

template <int HD, bool FP8>
__device__ void attention_decode_impl(const bf16* q, const void* k_cache, const void* v_cache, const u32* tiles,
                                      const u32* table_offsets, const u32* table_data, int heads, int kv_heads, int block_size,
                                      int window, const bf16* sinks, float scale_log2, const u32* split_size, bf16* out,
                                      float* part_acc, float* part_ml) {
    constexpr int ELEM = FP8 ? 1 : 2;
    constexpr int KB = HD / 16;                 // k-blocks of S = Q·Kᵀ, m-tiles of Oᵀ
    constexpr int KW = HD / 4 * ELEM / 4;       // words of K a lane holds per position
    constexpr int VW = HD / 8 * ELEM / 4;       // words of V a lane holds per position
    constexpr int ROW = HD * ELEM + 16;         // bytes of a position's K or V row in a stage
    constexpr int STAGE = 2 * DEC_STEP * ROW;
    constexpr int STAGES = FP8 ? DEC_STAGES_FP8 : DEC_STAGES_BF16;
    static_assert(DEC_WARPS * STAGES * STAGE >= DEC_WARPS * DEC_MAX_GROUP * (2 + HD) * 4, "the merge fits the ring");

    const TileWork work = tile_work(tiles, blockIdx.x, split_size, window, DEC_STEP);
    if (work.empty) return;
    const u32 seq = work.seq, token = work.row0, row_pos = work.pos0, split_end = work.split_end, kv_lo = work.kv_lo;
    const int kvh = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    const int group = heads / kv_heads;
    const u32* table = table_data + table_offsets[seq];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;

    // The warp's ring of DEC_STAGES stages in dynamic shared memory, each the K rows then the V
    // rows of one step's positions, as the cache holds them (each row padded by 16 bytes, so the
    // fragment reads below fall in distinct banks); copies run STAGES - 1 steps ahead.
    unsigned char* ring = dynamic_shared() + warp * STAGES * STAGE;
    auto issue = [&](int i) {
        unsigned char* stage = ring + (i % STAGES) * STAGE;
        const u32 p = kv_lo + DEC_STEP * (warp + DEC_WARPS * i);
        if (p < split_end) {
            // A row's 16-byte chunks go to consecutive lanes; each lane finds its rows' cache
            // addresses once and copies the same chunk of K and of V.
            constexpr int CHUNKS = HD * ELEM / 16;
            const int chunk = lane % CHUNKS;
#pragma unroll
            for (int row = lane / CHUNKS; row < DEC_STEP; row += 32 / CHUNKS) {
                const u32 pos = p + row;
                const bool valid = pos < split_end;
                const u64 at = valid ? (((u64)table[pos / block_size] * kv_heads + kvh) * block_size + pos % block_size) * HD * ELEM : 0;
                cp_async16(stage + row * ROW + chunk * 16, (const unsigned char*)k_cache + at + chunk * 16, valid);
                cp_async16(stage + (DEC_STEP + row) * ROW + chunk * 16, (const unsigned char*)v_cache + at + chunk * 16, valid);
            }
        }
        cp_async_commit();
    };
    const u32 first = kv_lo + DEC_STEP * warp;
    const int steps = first < split_end ? (int)((split_end - first + DEC_STEP * DEC_WARPS - 1) / (DEC_STEP * DEC_WARPS)) : 0;
#pragma unroll
    for (int i = 0; i < STAGES - 1; i++) issue(i);

    // Query row g (a head of the group; rows past the group are zero): the A fragments' a[0] and
    // a[2] of each k-block, bf16 pairs or, for an FP8 cache, f16 pairs.
    u32 qf[KB][2];
    {
        const bool live = g < group;
        const bf16* qrow = q + ((u64)token * heads + kvh * group + (live ? g : 0)) * HD + c * (HD / 4);
        u32 words[HD / 8];
        load_words(qrow, words);
#pragma unroll
        for (int i = 0; i < HD / 8; i++) {
            u32 w = live ? words[i] : 0u;
            if constexpr (FP8) w = pack_f16x2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
            qf[i / 2][i % 2] = w;
        }
    }

    // Row g's running maximum and this lane's share of its sum; Oᵀ fragments of rows 2c, 2c + 1.
    float m = g < group ? initial_max(sinks, kvh * group + g, split) : -INFINITY;
    if (warp != 0) m = -INFINITY;
    float l = m == -INFINITY || c != 0 ? 0.f : 1.f;
    float o[KB][4];
#pragma unroll
    for (int mt = 0; mt < KB; mt++) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.f;

    for (int i = 0; i < steps; i++) {
        const u32 p = first + DEC_STEP * DEC_WARPS * i;
        cp_async_wait<STAGES - 2>();
        __syncwarp();
        // This lane's share of the step: K of positions p + g and p + 8 + g (head dimensions
        // c·HD/4 on), V of positions p + 2c, p + 2c + 1, p + 2c + 8, p + 2c + 9 (g·HD/8 on).
        const unsigned char* stage = ring + (i % STAGES) * STAGE;
        struct {
            u32 k[2][KW];
            u32 v[4][VW];
        } cur;
#pragma unroll
        for (int j = 0; j < 2; j++) load_words(stage + (8 * j + g) * ROW + c * (HD / 4) * ELEM, cur.k[j]);
#pragma unroll
        for (int t = 0; t < 4; t++) load_words(stage + (DEC_STEP + 2 * c + (t & 1) + 8 * (t >> 1)) * ROW + g * (HD / 8) * ELEM, cur.v[t]);
        issue(i + STAGES - 1);

        float s[2][4];
#pragma unroll
        for (int j = 0; j < 2; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
            for (int kb = 0; kb < KB; kb++) {
                const u32 a[4] = {qf[kb][0], 0u, qf[kb][1], 0u};
                if constexpr (FP8) {
                    const u32 w = cur.k[j][kb];
                    mma_f16_m16n8k16(s[j], a, e4m3x2_to_f16x2((unsigned short)(w & 0xffffu)), e4m3x2_to_f16x2((unsigned short)(w >> 16)));
                } else {
                    mma_bf16_m16n8k16(s[j], a, cur.k[j][2 * kb], cur.k[j][2 * kb + 1]);
                }
            }
        }

        // Online softmax of row g over positions p + 8j + 2c + e.
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 2; j++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const u32 pos = p + 8 * j + 2 * c + e;
                const bool valid = pos < split_end && (window <= 0 || pos + (u32)window > row_pos);
                s[j][e] = valid ? s[j][e] * scale_log2 : -INFINITY;
                mx = fmaxf(mx, s[j][e]);
            }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m, mx);
        const float base = m_new == -INFINITY ? 0.f : m_new;
        const float corr = exp2f(m - base);
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < 2; j++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                s[j][e] = exp2f(s[j][e] - base);
                sum += s[j][e];
            }
        }
        l = l * corr + sum;
        m = m_new;
        // Rows 2c and 2c + 1 of Oᵀ are S rows held by lanes 8c and 8c + 4.
        const float corr_even = __shfl_sync(0xffffffffu, corr, 8 * c), corr_odd = __shfl_sync(0xffffffffu, corr, 8 * c + 4);

        u32 b0, b1;
        if constexpr (FP8) {
            b0 = pack_f16x2(s[0][0], s[0][1]);
            b1 = pack_f16x2(s[1][0], s[1][1]);
        } else {
            b0 = pack_bf16x2(s[0][0], s[0][1]);
            b1 = pack_bf16x2(s[1][0], s[1][1]);
        }
#pragma unroll
        for (int mt = 0; mt < KB; mt++) {
            o[mt][0] *= corr_even;
            o[mt][1] *= corr_odd;
            o[mt][2] *= corr_even;
            o[mt][3] *= corr_odd;
            // Head dimensions 2mt and 2mt + 1 of this lane's share, at positions (2c, 2c + 1) and
            // (2c + 8, 2c + 9): a[0] and a[2] the first dimension, a[1] and a[3] the second.
            u32 a[4];
            if constexpr (FP8) {
                const int word = mt / 2;
                const u32 select = (mt & 1) ? 0x7362u : 0x5140u;
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const u32 pair = byte_perm(cur.v[2 * h][word], cur.v[2 * h + 1][word], select);
                    a[2 * h] = e4m3x2_to_f16x2((unsigned short)(pair & 0xffffu));
                    a[2 * h + 1] = e4m3x2_to_f16x2((unsigned short)(pair >> 16));
                }
                mma_f16_m16n8k16(o[mt], a, b0, b1);
            } else {
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    a[2 * h] = byte_perm(cur.v[2 * h][mt], cur.v[2 * h + 1][mt], 0x5410u);
                    a[2 * h + 1] = byte_perm(cur.v[2 * h][mt], cur.v[2 * h + 1][mt], 0x7632u);
                }
                mma_bf16_m16n8k16(o[mt], a, b0, b1);
            }
        }
    }

    // The warps' states merge in shared memory, over the drained ring: rows below the group only.
    cp_async_wait<0>();
    __syncthreads();
    float(*merge_ml)[DEC_MAX_GROUP][2] = (float(*)[DEC_MAX_GROUP][2])dynamic_shared();
    float(*merge_o)[DEC_MAX_GROUP][HD] = (float(*)[DEC_MAX_GROUP][HD])(dynamic_shared() + DEC_WARPS * DEC_MAX_GROUP * 2 * sizeof(float));
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (c == 0) {
        merge_ml[warp][g][0] = m;
        merge_ml[warp][g][1] = l;
    }
#pragma unroll
    for (int mt = 0; mt < KB; mt++) {
        const int d = g * (HD / 8) + 2 * mt;
        merge_o[warp][2 * c][d] = o[mt][0];
        merge_o[warp][2 * c + 1][d] = o[mt][1];
        merge_o[warp][2 * c][d + 1] = o[mt][2];
        merge_o[warp][2 * c + 1][d + 1] = o[mt][3];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < group * HD; e += DEC_THREADS) {
        const int r = e / HD, d = e % HD;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++) mx = fmaxf(mx, merge_ml[w][r][0]);
        const float base = mx == -INFINITY ? 0.f : mx;
        float total = 0.f, acc = 0.f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++) {
            const float weight = exp2f(merge_ml[w][r][0] - base);
            total += merge_ml[w][r][1] * weight;
            acc += merge_o[w][r][d] * weight;
        }
        const int head = kvh * group + r;
        if (splits == 1) {
            out[((u64)token * heads + head) * HD + d] = f2bf(acc / total);
        } else {
            const u64 at = ((u64)token * heads + head) * splits + split;
            part_acc[at * HD + d] = acc;
            if (d == 0) {
                part_ml[2 * at] = mx;
                part_ml[2 * at + 1] = total;
            }
        }
    }
}

#define ATTENTION_DECODE_ENTRY(HD, NAME, FP8)                                                                                      \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS, 3)                                                                    \
        attention_decode_hd##HD##_##NAME(const bf16* q, const void* k_cache, const void* v_cache, int kv_fp8, const u32* tiles,     \
                                         const u32* table_offsets, const u32* table_data, int heads, int kv_heads, int block_size,   \
                                         int window, const bf16* sinks, float scale_log2, const u32* split_size, bf16* out,         \
                                         float* part_acc, float* part_ml) {                                                         \
        pdl_begin();                                                                                                                \
        attention_decode_impl<HD, FP8>(q, k_cache, v_cache, tiles, table_offsets, table_data, heads, kv_heads, block_size, window,   \
                                       sinks, scale_log2, split_size, out, part_acc, part_ml);                                      \
    }

ATTENTION_DECODE_ENTRY(32, bf16, false)
ATTENTION_DECODE_ENTRY(64, bf16, false)
ATTENTION_DECODE_ENTRY(128, bf16, false)
ATTENTION_DECODE_ENTRY(32, fp8, true)
ATTENTION_DECODE_ENTRY(64, fp8, true)
ATTENTION_DECODE_ENTRY(128, fp8, true)
