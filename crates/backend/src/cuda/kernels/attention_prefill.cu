// Prefill attention on the tensor cores (mma.sync m16n8k16, f32 sums), for tiles of many query
// tokens: attention.cu's tile format, splits, masks, sinks and outputs. A tile's query rows are
// its tokens × the heads of one GQA group, token-major, at most PF_ROWS of them; each of the four
// warps owns 16 rows, their queries in registers as the A fragments of S = Q·Kᵀ.
//
// The block walks its split PF_KV positions a step. The next step's K and V rows are copied from
// the paged cache into shared memory with asynchronous copies while this step's products run (two
// stages, one barrier a step). S = Q·Kᵀ takes K's fragments with ldmatrix; the online softmax
// runs on the S fragments in registers, masking only steps that cross the causal diagonal, the
// window's edge or the split's end; O += P·V reuses the S fragments as the A operand and reads V
// with ldmatrix.trans (flash style).
//
// A bf16 cache runs bf16 products. An FP8 cache's codes land in stages of their own and widen to
// f16 in one pass per step (an instruction per pair) into the one tile the products read, which
// run on f16: the queries and probabilities are rounded to f16, as in the FP8 decode kernel. The
// sums run in another order than the CUDA-core kernel's, so batch-invariant runs keep to that
// kernel.

#define PF_THREADS 128
#define PF_ROWS 64
#define PF_KV 64

// Two floats as a 16-bit pair, `lo` first: bf16 (round to nearest even, as f2bf) or f16.
template <bool F16>
__device__ __forceinline__ u32 pack_pair(float lo, float hi) {
    if constexpr (F16) {
        return pack_f16x2(lo, hi);
    } else {
        return pack_bf16x2(lo, hi);
    }
}

template <bool F16>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    if constexpr (F16) {
        mma_f16_m16n8k16(d, a, b0, b1);
    } else {
        mma_bf16_m16n8k16(d, a, b0, b1);
    }
}

// Dynamic shared memory (prefill_attention_shared_bytes in kernels.rs): a staged K or V row holds HD
// 16-bit values and 16 bytes of padding, so the eight rows one fragment load touches fall in
// distinct banks. A bf16 cache: two stages of K then V; an FP8 cache: the one f16 K-then-V tile,
// then two stages of K then V codes.
template <int HD, bool FP8>
__device__ void attention_prefill_impl(const bf16* q, const void* k_cache, const void* v_cache, const u32* tiles,
                                       const u32* table_offsets, const u32* table_data, int heads, int kv_heads, int block_size,
                                       int window, const bf16* sinks, float scale_log2, const u32* split_size, bf16* out,
                                       float* part_acc, float* part_ml) {
    constexpr int KSTEPS = HD / 16;
    constexpr int DTILES = HD / 8;
    constexpr int ROW = HD + 8;                        // 16-bit values of a staged row
    constexpr int TILE = PF_KV * ROW;                  // of one step's K (or V) rows
    constexpr int ELEM = FP8 ? 1 : 2;                  // bytes of a cached value
    constexpr int CHUNKS = HD * ELEM / 16;             // 16-byte pieces of a cached row
    constexpr int ROWS_A_PASS = PF_THREADS / CHUNKS;   // rows one copy instruction a thread covers
    constexpr int CODE_STAGE = 2 * PF_KV * HD;         // bytes of one step's K and V codes
    static_assert(KSTEPS % 2 == 0, "ldmatrix loads the K fragments of two k-steps");

    // The host lists the tiles heaviest first (`heaviest_tiles_first`) and blocks start in launch
    // order, x fastest: counting the KV heads fastest instead starts every head of the heaviest
    // tiles first, so the launch ends on the lightest ones rather than on a wave of long tiles.
    const u32 launch_index = blockIdx.x + gridDim.x * blockIdx.y;
    const TileWork work = tile_work(tiles, launch_index / gridDim.y, split_size, window, PF_KV);
    if (work.empty) return;
    const u32 row0 = work.row0, nrows = work.nrows, pos0 = work.pos0, split_start = work.split_start, split_end = work.split_end;
    const u32 kv_lo = work.kv_lo, ctx_end = pos0 + nrows;
    const int kvh = launch_index % gridDim.y, split = blockIdx.z, splits = gridDim.z;
    const int group = heads / kv_heads;
    const int rows = nrows * group;
    const u32* table = table_data + table_offsets[work.seq];
    const u32 steps = kv_lo < split_end ? (split_end - kv_lo + PF_KV - 1) / PF_KV : 0;

    // Shared state-space addresses: the staged rows, and for an FP8 cache the code stages.
    constexpr u32 ROW_BYTES = ROW * 2, TILE_BYTES = TILE * 2;
    const u32 staged = shared_address(dynamic_shared());
    const u32 codes = staged + 2 * TILE_BYTES;
    // Copies step `i`'s K and V rows into stage i % 2: thread x takes piece x % CHUNKS of rows
    // x / CHUNKS, + ROWS_A_PASS, ...; positions past the split's end are zero-filled. A row of
    // block b at offset o is at (table[b]·kv_heads + kvh)·block_size + o rows of the cache.
    const int piece = threadIdx.x % CHUNKS, first_row = threadIdx.x / CHUNKS;
    const u32 cache_row_bytes = HD * ELEM, block_bytes = (u32)block_size * cache_row_bytes;
    const u32 table_stride = (u32)kv_heads * block_bytes;
    const unsigned char* k_src = (const unsigned char*)k_cache + (u64)kvh * block_bytes + piece * 16;
    const unsigned char* v_src = (const unsigned char*)v_cache + (u64)kvh * block_bytes + piece * 16;
    const u32 copy_dst = FP8 ? codes + first_row * HD + piece * 16 : staged + first_row * ROW_BYTES + piece * 16;
    auto issue = [&](u32 i) {
        u32 pos = kv_lo + i * PF_KV + first_row;
        u32 block = pos / (u32)block_size, offset = pos - block * (u32)block_size;
        const u32 dst = copy_dst + (i % 2) * (FP8 ? CODE_STAGE : 2 * TILE_BYTES);
#pragma unroll
        for (int p = 0; p < (PF_KV + ROWS_A_PASS - 1) / ROWS_A_PASS; p++) {
            if (PF_KV % ROWS_A_PASS == 0 || first_row + p * ROWS_A_PASS < PF_KV) {
                const bool valid = pos < split_end;
                const u64 at = valid ? (u64)table[block] * table_stride + offset * cache_row_bytes : 0;
                const u32 k_dst = dst + p * ROWS_A_PASS * (FP8 ? HD : ROW_BYTES);
                cp_async16_at(k_dst, k_src + at, valid);
                cp_async16_at(k_dst + (FP8 ? PF_KV * HD : TILE_BYTES), v_src + at, valid);
            }
            pos += ROWS_A_PASS;
            offset += ROWS_A_PASS;
            while (offset >= (u32)block_size) {
                offset -= block_size;
                block++;
            }
        }
        cp_async_commit();
    };
    if (steps > 0) issue(0);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    // This thread's two rows, g and g + 8 of the warp's sixteen: row r is query head
    // kvh·group + r % group of token row0 + r / group. Only the positions stay in registers.
    const int row[2] = {warp * 16 + g, warp * 16 + g + 8};
    const u32 row_pos[2] = {pos0 + row[0] / group, pos0 + row[1] / group};
    auto query = [&](int h) { return ((u64)(row0 + row[h] / group) * heads + kvh * group + row[h] % group) * HD; };

    u32 qf[KSTEPS][4];
#pragma unroll
    for (int kk = 0; kk < KSTEPS; kk++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int h = i & 1, col = kk * 16 + 2 * t + (i >> 1) * 8;
            u32 w = row[h] < rows ? *(const u32*)(q + query(h) + col) : 0u;
            if constexpr (FP8) w = pack_f16x2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
            qf[kk][i] = w;
        }
    }

    float o[DTILES][4];
#pragma unroll
    for (int n = 0; n < DTILES; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    // Running maxima in log2 units; a row's sum is spread over its quad of lanes, the sink's 1 in
    // the first lane's share.
    float m[2] = {initial_max(sinks, kvh * group + row[0] % group, split), initial_max(sinks, kvh * group + row[1] % group, split)};
    float l[2] = {m[0] == -INFINITY || t != 0 ? 0.f : 1.f, m[1] == -INFINITY || t != 0 ? 0.f : 1.f};
    // Steps from here on need no mask when no row of the tile is before their last position, no
    // row is a window past their first and they end inside the split.
    const u32 last_row_pos = ctx_end - 1;

    for (u32 i = 0; i < steps; i++) {
        const u32 t0 = kv_lo + i * PF_KV;
        cp_async_wait<0>();
        __syncthreads();
        if (i + 1 < steps) issue(i + 1);
        u32 ks;
        if constexpr (FP8) {
            const unsigned char* stage = dynamic_shared() + 2 * TILE_BYTES + (i % 2) * CODE_STAGE;
            bf16* tile = (bf16*)dynamic_shared();
            for (int e = threadIdx.x; e < CODE_STAGE / 16; e += PF_THREADS) {
                const int r = e / (HD / 16), c16 = e % (HD / 16);
                const uint4 w = *(const uint4*)(stage + e * 16);
                const u32 words[4] = {w.x, w.y, w.z, w.w};
                u32 h[8];
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    h[2 * k] = e4m3x2_to_f16x2((unsigned short)(words[k] & 0xffffu));
                    h[2 * k + 1] = e4m3x2_to_f16x2((unsigned short)(words[k] >> 16));
                }
                uint4* dst = (uint4*)(tile + r * ROW + c16 * 16);
                dst[0] = make_uint4(h[0], h[1], h[2], h[3]);
                dst[1] = make_uint4(h[4], h[5], h[6], h[7]);
            }
            __syncthreads();
            ks = staged;
        } else {
            ks = staged + (i % 2) * 2 * TILE_BYTES;
        }
        const u32 vs = ks + TILE_BYTES;
        // This lane's row and column in the fragment loads below (matrix lane / 8 of four).
        const u32 k_lane = ((lane & 7) * ROW + (lane >> 3) * 8) * 2, v_lane = (((lane & 7) + ((lane >> 3) & 1) * 8) * ROW + (lane >> 4) * 8) * 2;

        // S = Q·Kᵀ: 16 rows × PF_KV positions per warp, as PF_KV/8 fragments; one ldmatrix gives
        // the B fragments of two k-steps.
        float s[PF_KV / 8][4];
#pragma unroll
        for (int j = 0; j < PF_KV / 8; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk += 2) {
                u32 b[4];
                ldmatrix_x4_at(b, ks + k_lane + (8 * j * ROW + kk * 16) * 2);
                mma_m16n8k16<FP8>(s[j], qf[kk], b[0], b[1]);
                mma_m16n8k16<FP8>(s[j], qf[kk + 1], b[2], b[3]);
            }
        }

        const bool masked = t0 + PF_KV > split_end || t0 + PF_KV - 1 > pos0 || (window > 0 && t0 + (u32)window <= last_row_pos);
        if (masked) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
#pragma unroll
                for (int j = 0; j < PF_KV / 8; j++) {
#pragma unroll
                    for (int c = 0; c < 2; c++) {
                        const u32 kv = t0 + 8 * j + 2 * t + c;
                        const bool valid = kv < split_end && kv <= row_pos[h] && (window <= 0 || kv + (u32)window > row_pos[h]);
                        if (!valid) s[j][2 * h + c] = -INFINITY;
                    }
                }
            }
        }

        // The online softmax of the two rows (each spread over a quad of lanes), on raw scores:
        // p = 2^(s·scale_log2 − m).
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < PF_KV / 8; j++) mx = fmaxf(mx, fmaxf(s[j][2 * h], s[j][2 * h + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m[h], mx * scale_log2);
            const float base = m_new == -INFINITY ? 0.f : m_new;
            const float corr = fast_exp2(m[h] - base);
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < PF_KV / 8; j++) {
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    const float p = fast_exp2(fmaf(s[j][2 * h + c], scale_log2, -base));
                    s[j][2 * h + c] = p;
                    sum += p;
                }
            }
            l[h] = l[h] * corr + sum;
            m[h] = m_new;
#pragma unroll
            for (int n = 0; n < DTILES; n++) {
                o[n][2 * h] *= corr;
                o[n][2 * h + 1] *= corr;
            }
        }

        // O += P·V: P's S fragments are already the A operand's layout; V comes transposed.
#pragma unroll
        for (int k16 = 0; k16 < PF_KV / 16; k16++) {
            const u32 pa[4] = {pack_pair<FP8>(s[2 * k16][0], s[2 * k16][1]), pack_pair<FP8>(s[2 * k16][2], s[2 * k16][3]),
                               pack_pair<FP8>(s[2 * k16 + 1][0], s[2 * k16 + 1][1]), pack_pair<FP8>(s[2 * k16 + 1][2], s[2 * k16 + 1][3])};
#pragma unroll
            for (int n = 0; n < DTILES; n += 2) {
                u32 b[4];
                ldmatrix_x4_trans_at(b, vs + v_lane + (16 * k16 * ROW + 8 * n) * 2);
                mma_m16n8k16<FP8>(o[n], pa, b[0], b[1]);
                mma_m16n8k16<FP8>(o[n + 1], pa, b[2], b[3]);
            }
        }
    }

#pragma unroll
    for (int h = 0; h < 2; h++) {
        float total = l[h];
        total += __shfl_xor_sync(0xffffffffu, total, 1);
        total += __shfl_xor_sync(0xffffffffu, total, 2);
        if (row[h] >= rows) continue;
        if (splits == 1) {
            bf16* dst = out + query(h) + 2 * t;
#pragma unroll
            for (int n = 0; n < DTILES; n++) *(u32*)(dst + 8 * n) = pack_bf16x2(o[n][2 * h] / total, o[n][2 * h + 1] / total);
        } else if (split_start <= row_pos[h]) {
            u64 at = query(h) / HD * splits + split;
            float* dst = part_acc + at * HD + 2 * t;
#pragma unroll
            for (int n = 0; n < DTILES; n++) *(float2*)(dst + 8 * n) = make_float2(o[n][2 * h], o[n][2 * h + 1]);
            if (t == 0) {
                part_ml[2 * at] = m[h];
                part_ml[2 * at + 1] = total;
            }
        }
    }
}

#define ATTENTION_PREFILL_ENTRY(HD, NAME, FP8)                                                                                     \
    extern "C" __global__ void __launch_bounds__(PF_THREADS, 3)                                                                      \
        attention_prefill_hd##HD##_##NAME(const bf16* q, const void* k_cache, const void* v_cache, int kv_fp8, const u32* tiles,    \
                                          const u32* table_offsets, const u32* table_data, int heads, int kv_heads, int block_size,  \
                                          int window, const bf16* sinks, float scale_log2, const u32* split_size, bf16* out,        \
                                          float* part_acc, float* part_ml) {                                                        \
        pdl_begin();                                                                                                                \
        attention_prefill_impl<HD, FP8>(q, k_cache, v_cache, tiles, table_offsets, table_data, heads, kv_heads, block_size, window, \
                                        sinks, scale_log2, split_size, out, part_acc, part_ml);                                     \
    }

ATTENTION_PREFILL_ENTRY(32, bf16, false)
ATTENTION_PREFILL_ENTRY(64, bf16, false)
ATTENTION_PREFILL_ENTRY(128, bf16, false)
ATTENTION_PREFILL_ENTRY(32, fp8, true)
ATTENTION_PREFILL_ENTRY(64, fp8, true)
ATTENTION_PREFILL_ENTRY(128, fp8, true)
