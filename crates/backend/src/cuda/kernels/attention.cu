// Paged attention over the flattened batch, one kernel for prefill chunks and decode tokens.
//
// A work item ("tile") is up to ATT_MAX_ROWS/group consecutive query tokens of one sequence; a
// block takes one tile, one KV head (all the query heads of its GQA group) and one KV split of
// `*split_tokens` positions (read from device memory, so a captured graph follows the step's
// value). It walks the split in ATT_TILE-token steps, staging K and V from the paged cache in
// shared memory while the next step's K and V load into registers, with an online softmax per
// query row (flash style, causal, sliding window optional). A row's arithmetic depends only on
// its own position and the split size: tile steps are aligned to absolute positions and splits
// are fixed ranges, so with a fixed split size a token gets the same bits whether it runs in a
// prefill chunk or a decode step, alone or in any batch.
//
// With one split per launch the block writes the normalised output. With several, each block
// writes its unnormalised partial sums and `attention_combine` merges them in split order.
//
// Attention sinks (GPT-OSS: `sinks`, one learned logit per query head, or null for none) join
// each row's softmax denominator and not its numerator: the first split's running state starts
// from the sink (max = sink, sum = e^0 = 1, no output) instead of from nothing, so the sink counts
// once whether or not the KV range is split, and the online maximum covers it.

#define ATT_TILE 32
#define ATT_THREADS 128
#define ATT_MAX_ROWS 16
#define ATT_LOG2E 1.4426950408889634f

// The logit (in log2 units, as the kernels' scores are) a row's running maximum starts from in
// KV split `split`: its head's sink in the first split, else -inf (nothing seen yet).
__device__ __forceinline__ float initial_max(const bf16* sinks, int head, int split) {
    return sinks && split == 0 ? bf2f(sinks[head]) * ATT_LOG2E : -INFINITY;
}

// Eight E4M3 codes (8 bytes) as eight bf16 values (16 bytes): every E4M3 value is a bf16 value.
__device__ __forceinline__ uint4 e4m3x8_to_bf16x8(uint2 codes) {
    const u32 words[2] = {codes.x, codes.y};
    u32 out[4];
#pragma unroll
    for (int w = 0; w < 2; w++) {
        float f0, f1, f2, f3;
        e4m3x2_to_f32x2((unsigned short)(words[w] & 0xffffu), f1, f0);
        e4m3x2_to_f32x2((unsigned short)(words[w] >> 16), f3, f2);
        out[2 * w] = (__float_as_uint(f0) >> 16) | (__float_as_uint(f1) & 0xffff0000u);
        out[2 * w + 1] = (__float_as_uint(f2) >> 16) | (__float_as_uint(f3) & 0xffff0000u);
    }
    return make_uint4(out[0], out[1], out[2], out[3]);
}

// A block's work item: tile `index` (query tokens row0.. of sequence seq, at positions
// pos0..) and the positions kv_lo..split_end of KV split blockIdx.z that it reads, kv_lo rounded
// down to a multiple of `step` inside a sliding window; `empty` when the split starts past the
// tile's last position (split_length: a launch of one split reads every position).
struct TileWork {
    u32 seq, row0, nrows, pos0, split_start, split_end, kv_lo;
    bool empty;
};

// Positions a KV split of this launch covers: `*split_size`, or every position in a launch of one
// split (a step's prefill tiles run unsplit beside split decode tiles with the same split size).
__device__ __forceinline__ u32 split_length(const u32* split_size) { return gridDim.z > 1 ? *split_size : 0xffffffffu; }

__device__ __forceinline__ TileWork tile_work(const u32* tiles, u32 index, const u32* split_size, int window, u32 step) {
    const u32* tile = tiles + 4 * index;
    TileWork w;
    w.seq = tile[0];
    w.row0 = tile[1];
    w.nrows = tile[2];
    w.pos0 = tile[3];
    const u32 ctx_end = w.pos0 + w.nrows, split_tokens = split_length(split_size);
    w.split_start = blockIdx.z * split_tokens;
    w.empty = w.split_start >= ctx_end;
    w.split_end = min(ctx_end, w.split_start + split_tokens);
    w.kv_lo = w.split_start;
    if (window > 0 && w.pos0 + 1 > (u32)window) w.kv_lo = max(w.kv_lo, (w.pos0 + 1 - (u32)window) / step * step);
    return w;
}

template <int HD, int ATT_ROWS_PER_WARP>
__device__ void attention_impl(const bf16* q, const void* k_cache, const void* v_cache, int kv_fp8, const u32* tiles,
                               const u32* table_offsets, const u32* table_data, int heads, int kv_heads, int block_size, int window,
                               const bf16* sinks, float scale_log2, const u32* split_size, bf16* out, float* part_acc, float* part_ml) {
    constexpr int DPL = HD / 32;
    constexpr int CHUNKS = ATT_TILE * (HD / 8) / ATT_THREADS;
    // K and V stay bf16 in shared memory, copied 16 bytes at a time; K rows are padded by 16
    // bytes so that lanes reading different rows at the same column hit different banks.
    __shared__ __align__(16) float qs[ATT_ROWS_PER_WARP * (ATT_THREADS / 32)][HD];
    __shared__ __align__(16) bf16 ks[ATT_TILE][HD + 8];
    __shared__ __align__(16) bf16 vs[ATT_TILE][HD];

    const TileWork work = tile_work(tiles, blockIdx.x, split_size, window, ATT_TILE);
    if (work.empty) return;
    const u32 row0 = work.row0, nrows = work.nrows, pos0 = work.pos0, split_start = work.split_start, split_end = work.split_end;
    const u32 kv_lo = work.kv_lo;
    const int kvh = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    const int group = heads / kv_heads;
    const int rows = nrows * group;
    const u32* table = table_data + table_offsets[work.seq];

    // The next tile's K and V wait in registers while this tile is computed: bf16 values, or FP8
    // codes (in the first 8 bytes) that become bf16 only on their way to shared memory, so that
    // no conversion waits on a load still in flight.
    uint4 kr[CHUNKS], vr[CHUNKS];
    auto load = [&](u32 t0) {
#pragma unroll
        for (int c = 0; c < CHUNKS; c++) {
            int e = threadIdx.x + c * ATT_THREADS, tok = e / (HD / 8), chunk = e % (HD / 8);
            u32 pos = t0 + tok;
            kr[c] = vr[c] = make_uint4(0, 0, 0, 0);
            if (pos < split_end) {
                u64 at = (((u64)table[pos / block_size] * kv_heads + kvh) * block_size + pos % block_size) * HD + chunk * 8;
                if (kv_fp8) {
                    const uint2 k8 = *(const uint2*)((const unsigned char*)k_cache + at), v8 = *(const uint2*)((const unsigned char*)v_cache + at);
                    kr[c] = make_uint4(k8.x, k8.y, 0, 0);
                    vr[c] = make_uint4(v8.x, v8.y, 0, 0);
                } else {
                    kr[c] = *(const uint4*)((const bf16*)k_cache + at);
                    vr[c] = *(const uint4*)((const bf16*)v_cache + at);
                }
            }
        }
    };
    // The first tile's loads go out before the queries', so the two waits overlap.
    if (kv_lo < split_end) load(kv_lo);

    for (int e = threadIdx.x; e < rows * HD; e += ATT_THREADS) {
        int r = e / HD, d = e % HD;
        u32 token = row0 + r / group;
        int head = kvh * group + r % group;
        qs[r][d] = bf2f(q[((u64)token * heads + head) * HD + d]) * scale_log2;
    }

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float m[ATT_ROWS_PER_WARP], l[ATT_ROWS_PER_WARP], acc[ATT_ROWS_PER_WARP][DPL];
#pragma unroll
    for (int ri = 0; ri < ATT_ROWS_PER_WARP; ri++) {
        // A row past `rows` is never written; its head index stays within the group.
        m[ri] = initial_max(sinks, kvh * group + (warp + ri * (ATT_THREADS / 32)) % group, split);
        l[ri] = m[ri] == -INFINITY ? 0.f : 1.f;
#pragma unroll
        for (int d = 0; d < DPL; d++) acc[ri][d] = 0.f;
    }

    for (u32 t0 = kv_lo; t0 < split_end; t0 += ATT_TILE) {
        __syncthreads();
#pragma unroll
        for (int c = 0; c < CHUNKS; c++) {
            int e = threadIdx.x + c * ATT_THREADS, tok = e / (HD / 8), chunk = e % (HD / 8);
            *(uint4*)&ks[tok][chunk * 8] = kv_fp8 ? e4m3x8_to_bf16x8(make_uint2(kr[c].x, kr[c].y)) : kr[c];
            *(uint4*)&vs[tok][chunk * 8] = kv_fp8 ? e4m3x8_to_bf16x8(make_uint2(vr[c].x, vr[c].y)) : vr[c];
        }
        __syncthreads();
        if (t0 + ATT_TILE < split_end) load(t0 + ATT_TILE);

        float s[ATT_ROWS_PER_WARP];
#pragma unroll
        for (int ri = 0; ri < ATT_ROWS_PER_WARP; ri++) s[ri] = 0.f;
#pragma unroll 2
        for (int d = 0; d < HD; d += 8) {
            uint4 kw = *(const uint4*)&ks[lane][d];
            const float k8[8] = {__uint_as_float(kw.x << 16), __uint_as_float(kw.x & 0xffff0000u), __uint_as_float(kw.y << 16),
                                 __uint_as_float(kw.y & 0xffff0000u), __uint_as_float(kw.z << 16), __uint_as_float(kw.z & 0xffff0000u),
                                 __uint_as_float(kw.w << 16), __uint_as_float(kw.w & 0xffff0000u)};
#pragma unroll
            for (int ri = 0; ri < ATT_ROWS_PER_WARP; ri++) {
                int r = warp + ri * (ATT_THREADS / 32);
                if (r < rows) {
                    float4 qa = *(const float4*)&qs[r][d], qb = *(const float4*)&qs[r][d + 4];
                    s[ri] = fmaf(qa.x, k8[0], s[ri]);
                    s[ri] = fmaf(qa.y, k8[1], s[ri]);
                    s[ri] = fmaf(qa.z, k8[2], s[ri]);
                    s[ri] = fmaf(qa.w, k8[3], s[ri]);
                    s[ri] = fmaf(qb.x, k8[4], s[ri]);
                    s[ri] = fmaf(qb.y, k8[5], s[ri]);
                    s[ri] = fmaf(qb.z, k8[6], s[ri]);
                    s[ri] = fmaf(qb.w, k8[7], s[ri]);
                }
            }
        }

        const u32 kv_pos = t0 + lane;
#pragma unroll
        for (int ri = 0; ri < ATT_ROWS_PER_WARP; ri++) {
            int r = warp + ri * (ATT_THREADS / 32);
            if (r >= rows) continue;
            u32 row_pos = pos0 + r / group;
            bool valid = kv_pos < split_end && kv_pos <= row_pos && (window <= 0 || kv_pos + (u32)window > row_pos);
            float score = valid ? s[ri] : -INFINITY;
            float m_new = fmaxf(m[ri], warp_max(score));
            if (m_new == -INFINITY) continue;
            float p = valid ? exp2f(score - m_new) : 0.f;
            float corr = exp2f(m[ri] - m_new);
            l[ri] = l[ri] * corr + warp_sum(p);
#pragma unroll
            for (int d = 0; d < DPL; d++) acc[ri][d] *= corr;
            for (int j = 0; j < ATT_TILE; j++) {
                float pj = __shfl_sync(0xffffffffu, p, j);
                float v[DPL];
                load_bf16_row<DPL>(&vs[j][lane * DPL], v);
#pragma unroll
                for (int d = 0; d < DPL; d++) acc[ri][d] = fmaf(pj, v[d], acc[ri][d]);
            }
            m[ri] = m_new;
        }
    }

#pragma unroll
    for (int ri = 0; ri < ATT_ROWS_PER_WARP; ri++) {
        int r = warp + ri * (ATT_THREADS / 32);
        if (r >= rows) continue;
        u32 token = row0 + r / group;
        u32 row_pos = pos0 + r / group;
        int head = kvh * group + r % group;
        if (splits == 1) {
            bf16* o = out + ((u64)token * heads + head) * HD + lane * DPL;
#pragma unroll
            for (int d = 0; d < DPL; d++) o[d] = f2bf(acc[ri][d] / l[ri]);
        } else if (split_start <= row_pos) {
            u64 at = ((u64)token * heads + head) * splits + split;
#pragma unroll
            for (int d = 0; d < DPL; d++) part_acc[at * HD + lane * DPL + d] = acc[ri][d];
            if (lane == 0) {
                part_ml[2 * at] = m[ri];
                part_ml[2 * at + 1] = l[ri];
            }
        }
    }
}

// Entries by head size and query rows per warp: 1 (decode: a block holds one token's GQA group of
// at most four heads) or 4 (prefill tiles). Both run the same per-row arithmetic.
#define ATTENTION_ENTRY(HD, R)                                                                                                       \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                                                       \
        attention_hd##HD##_r##R(const bf16* q, const void* k_cache, const void* v_cache, int kv_fp8, const u32* tiles,               \
                                const u32* table_offsets, const u32* table_data, int heads, int kv_heads, int block_size, int window, \
                                const bf16* sinks, float scale_log2, const u32* split_size, bf16* out, float* part_acc,             \
                                float* part_ml) {                                                                                    \
        pdl_begin();                                                                                                                 \
        attention_impl<HD, R>(q, k_cache, v_cache, kv_fp8, tiles, table_offsets, table_data, heads, kv_heads, block_size, window,     \
                              sinks, scale_log2, split_size, out, part_acc, part_ml);                                                 \
    }

ATTENTION_ENTRY(32, 1)
ATTENTION_ENTRY(64, 1)
ATTENTION_ENTRY(128, 1)
ATTENTION_ENTRY(32, 4)
ATTENTION_ENTRY(64, 4)
ATTENTION_ENTRY(128, 4)

// Merges the split partials of every (token, head) in split order, for the step's first tokens
// (those whose tiles ran split). Grid: (tokens, heads); block: head_dim threads.
extern "C" __global__ void attention_combine(const float* part_acc, const float* part_ml, const u32* positions, int heads, int head_dim,
                                             int splits, const u32* split_size, bf16* out) {
    pdl_begin();
    int token = blockIdx.x, head = blockIdx.y, d = threadIdx.x;
    int used = positions[token] / *split_size + 1;
    u64 base = ((u64)token * heads + head) * splits;
    float mx = -INFINITY;
    for (int s = 0; s < used; s++) mx = fmaxf(mx, part_ml[2 * (base + s)]);
    float total = 0.f, o = 0.f;
    for (int s = 0; s < used; s++) {
        float w = exp2f(part_ml[2 * (base + s)] - mx);
        total += part_ml[2 * (base + s) + 1] * w;
        o += part_acc[(base + s) * head_dim + d] * w;
    }
    out[((u64)token * heads + head) * head_dim + d] = f2bf(o / total);
}
