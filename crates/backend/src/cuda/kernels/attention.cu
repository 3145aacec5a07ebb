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

template <int HD, int ATT_ROWS_PER_WARP>
__device__ void attention_impl(const bf16* q, const void* k_cache, const void* v_cache, int kv_fp8, const u32* tiles,
                               const u32* table_offsets, const u32* table_data, int heads, int kv_heads, int block_size, int window,
                               const bf16* sinks, float scale_log2, const u32* split_size, bf16* out, float* part_acc, float* part_ml) {
    constexpr int DPL = HD / 32;
    constexpr int CHUNKS = ATT_TILE * (HD / 8) / ATT_THREADS;
    const int split_tokens = (int)*split_size;
    // K and V stay bf16 in shared memory, copied 16 bytes at a time; K rows are padded by 16
    // bytes so that lanes reading different rows at the same column hit different banks.
    __shared__ __align__(16) float qs[ATT_ROWS_PER_WARP * (ATT_THREADS / 32)][HD];
    __shared__ __align__(16) bf16 ks[ATT_TILE][HD + 8];
    __shared__ __align__(16) bf16 vs[ATT_TILE][HD];

    const u32* tile = tiles + 4 * blockIdx.x;
    const u32 seq = tile[0], row0 = tile[1], nrows = tile[2], pos0 = tile[3];
    const int kvh = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    const int group = heads / kv_heads;
    const int rows = nrows * group;
    const u32 ctx_end = pos0 + nrows;
    const u32 split_start = (u32)split * split_tokens;
    if (split_start >= ctx_end) return;
    const u32 split_end = min(ctx_end, split_start + (u32)split_tokens);
    u32 kv_lo = split_start;
    if (window > 0 && pos0 + 1 > (u32)window) kv_lo = max(kv_lo, (pos0 + 1 - (u32)window) / ATT_TILE * ATT_TILE);
    const u32* table = table_data + table_offsets[seq];

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

// Merges the split partials of every (token, head) in split order. Grid: (tokens, heads);
// block: head_dim threads.
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

// Prefill attention on the tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate), for tiles
// of many query tokens. The tile format, splits, masks and outputs are those of `attention_impl`;
// a tile's query rows are its tokens × the heads of one GQA group, token-major, at most
// PF_ROWS of them. Each warp owns 16 rows; S = Q·Kᵀ and O += P·V run as warp-level products
// with the softmax done on the S fragments in registers (flash style). Its sums run in another
// order than `attention_impl`'s, so batch-invariant runs keep to that kernel.

#define PF_THREADS 128
#define PF_ROWS 64
#define PF_KV 32

// Four 8×8 bf16 matrices from shared memory, transposed (lanes 8i..8i+7 give matrix i's rows).
__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], const bf16* row) {
    const u32 addr = shared_address(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

template <int HD>
__device__ void attention_prefill_impl(const bf16* q, const void* k_cache, const void* v_cache, int kv_fp8, const u32* tiles,
                                       const u32* table_offsets, const u32* table_data, int heads, int kv_heads, int block_size,
                                       int window, const bf16* sinks, float scale_log2, const u32* split_size, bf16* out,
                                       float* part_acc, float* part_ml) {
    constexpr int KSTEPS = HD / 16;
    constexpr int DTILES = HD / 8;
    constexpr int CHUNKS = PF_KV * (HD / 8) / PF_THREADS;
    // Rows padded by 16 bytes: the eight rows one fragment load touches fall in distinct banks.
    __shared__ __align__(16) bf16 ks[PF_KV][HD + 8];
    __shared__ __align__(16) bf16 vs[PF_KV][HD + 8];

    const int split_tokens = (int)*split_size;
    const u32* tile = tiles + 4 * blockIdx.x;
    const u32 seq = tile[0], row0 = tile[1], nrows = tile[2], pos0 = tile[3];
    const int kvh = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    const int group = heads / kv_heads;
    const int rows = nrows * group;
    const u32 ctx_end = pos0 + nrows;
    const u32 split_start = (u32)split * split_tokens;
    if (split_start >= ctx_end) return;
    const u32 split_end = min(ctx_end, split_start + (u32)split_tokens);
    u32 kv_lo = split_start;
    if (window > 0 && pos0 + 1 > (u32)window) kv_lo = max(kv_lo, (pos0 + 1 - (u32)window) / PF_KV * PF_KV);
    const u32* table = table_data + table_offsets[seq];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    // This thread's two rows: g and g + 8 of the warp's sixteen.
    int row[2] = {warp * 16 + g, warp * 16 + g + 8};
    bool live[2];
    u32 token[2], row_pos[2];
    int head[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        live[h] = row[h] < rows;
        token[h] = row0 + row[h] / group;
        row_pos[h] = pos0 + row[h] / group;
        head[h] = kvh * group + row[h] % group;
    }

    u32 qf[KSTEPS][4];
#pragma unroll
    for (int kk = 0; kk < KSTEPS; kk++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int h = i & 1, col = kk * 16 + 2 * t + (i >> 1) * 8;
            qf[kk][i] = live[h] ? *(const u32*)(q + ((u64)token[h] * heads + head[h]) * HD + col) : 0u;
        }
    }

    float o[DTILES][4];
#pragma unroll
    for (int n = 0; n < DTILES; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    // A row's sum is spread over its quad of lanes: the sink's 1 goes to the first lane's share.
    float m[2] = {initial_max(sinks, head[0], split), initial_max(sinks, head[1], split)};
    float l[2] = {m[0] == -INFINITY || t != 0 ? 0.f : 1.f, m[1] == -INFINITY || t != 0 ? 0.f : 1.f};

    uint4 kr[CHUNKS], vr[CHUNKS];
    auto load = [&](u32 t0) {
#pragma unroll
        for (int c = 0; c < CHUNKS; c++) {
            int e = threadIdx.x + c * PF_THREADS, tok = e / (HD / 8), chunk = e % (HD / 8);
            u32 pos = t0 + tok;
            kr[c] = make_uint4(0, 0, 0, 0);
            vr[c] = make_uint4(0, 0, 0, 0);
            if (pos < split_end) {
                u64 at = (((u64)table[pos / block_size] * kv_heads + kvh) * block_size + pos % block_size) * HD + chunk * 8;
                if (kv_fp8) {
                    kr[c] = e4m3x8_to_bf16x8(*(const uint2*)((const unsigned char*)k_cache + at));
                    vr[c] = e4m3x8_to_bf16x8(*(const uint2*)((const unsigned char*)v_cache + at));
                } else {
                    kr[c] = *(const uint4*)((const bf16*)k_cache + at);
                    vr[c] = *(const uint4*)((const bf16*)v_cache + at);
                }
            }
        }
    };
    if (kv_lo < split_end) load(kv_lo);

    for (u32 t0 = kv_lo; t0 < split_end; t0 += PF_KV) {
        __syncthreads();
#pragma unroll
        for (int c = 0; c < CHUNKS; c++) {
            int e = threadIdx.x + c * PF_THREADS, tok = e / (HD / 8), chunk = e % (HD / 8);
            *(uint4*)&ks[tok][chunk * 8] = kr[c];
            *(uint4*)&vs[tok][chunk * 8] = vr[c];
        }
        __syncthreads();
        if (t0 + PF_KV < split_end) load(t0 + PF_KV);

        // S = Q·Kᵀ: 16 rows × PF_KV positions per warp, as PF_KV/8 fragments.
        float s[PF_KV / 8][4];
#pragma unroll
        for (int j = 0; j < PF_KV / 8; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++) {
                const bf16* kp = &ks[8 * j + g][kk * 16 + 2 * t];
                mma_bf16_m16n8k16(s[j], qf[kk], *(const u32*)kp, *(const u32*)(kp + 8));
            }
        }

        // Mask, then the online softmax of the two rows (each spread over a quad of lanes).
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < PF_KV / 8; j++) {
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    const u32 kv = t0 + 8 * j + 2 * t + c;
                    const bool valid = live[h] && kv < split_end && kv <= row_pos[h] && (window <= 0 || kv + (u32)window > row_pos[h]);
                    float v = valid ? s[j][2 * h + c] * scale_log2 : -INFINITY;
                    s[j][2 * h + c] = v;
                    mx = fmaxf(mx, v);
                }
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m[h], mx);
            const float base = m_new == -INFINITY ? 0.f : m_new;
            const float corr = exp2f(m[h] - base);
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < PF_KV / 8; j++) {
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    float p = exp2f(s[j][2 * h + c] - base);
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
            const u32 pa[4] = {pack_bf16x2(s[2 * k16][0], s[2 * k16][1]), pack_bf16x2(s[2 * k16][2], s[2 * k16][3]),
                               pack_bf16x2(s[2 * k16 + 1][0], s[2 * k16 + 1][1]), pack_bf16x2(s[2 * k16 + 1][2], s[2 * k16 + 1][3])};
#pragma unroll
            for (int n = 0; n < DTILES; n += 2) {
                u32 b[4];
                ldmatrix_x4_trans(b, &vs[16 * k16 + (lane & 7) + ((lane >> 3) & 1) * 8][8 * (n + (lane >> 4))]);
                mma_bf16_m16n8k16(o[n], pa, b[0], b[1]);
                mma_bf16_m16n8k16(o[n + 1], pa, b[2], b[3]);
            }
        }
    }

#pragma unroll
    for (int h = 0; h < 2; h++) {
        float total = l[h];
        total += __shfl_xor_sync(0xffffffffu, total, 1);
        total += __shfl_xor_sync(0xffffffffu, total, 2);
        if (!live[h]) continue;
        if (splits == 1) {
            bf16* dst = out + ((u64)token[h] * heads + head[h]) * HD + 2 * t;
#pragma unroll
            for (int n = 0; n < DTILES; n++) *(u32*)(dst + 8 * n) = pack_bf16x2(o[n][2 * h] / total, o[n][2 * h + 1] / total);
        } else if (split_start <= row_pos[h]) {
            u64 at = ((u64)token[h] * heads + head[h]) * splits + split;
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

#define ATTENTION_PREFILL_ENTRY(HD)                                                                                                 \
    extern "C" __global__ void __launch_bounds__(PF_THREADS)                                                                        \
        attention_prefill_hd##HD(const bf16* q, const void* k_cache, const void* v_cache, int kv_fp8, const u32* tiles,             \
                                 const u32* table_offsets, const u32* table_data, int heads, int kv_heads, int block_size,           \
                                 int window, const bf16* sinks, float scale_log2, const u32* split_size, bf16* out,                 \
                                 float* part_acc, float* part_ml) {                                                                 \
        pdl_begin();                                                                                                                \
        attention_prefill_impl<HD>(q, k_cache, v_cache, kv_fp8, tiles, table_offsets, table_data, heads, kv_heads, block_size,      \
                                   window, sinks, scale_log2, split_size, out, part_acc, part_ml);                                  \
    }

ATTENTION_PREFILL_ENTRY(32)
ATTENTION_PREFILL_ENTRY(64)
ATTENTION_PREFILL_ENTRY(128)
