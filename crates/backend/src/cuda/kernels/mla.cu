// DeepSeek's multi-head latent attention (MLA) over a paged cache of compressed latents, always in
// the absorbed form: each head's key up-projection W_UK is folded into its query and its value
// up-projection W_UV into its output, so attention runs against the cached latents themselves.
//
// A token's cache row is its RMS-normed latent (`latent` = kv_lora_rank values) followed by its
// rotated rotary key (`rope` values), bf16; per layer the cache is [block][slot in block][row].
// `kv_b` is the layer's [heads·(nope + v), latent] up-projection: per head, its `nope` key rows
// (W_UK) then its `v` value rows (W_UV).
//
// A step runs, after the q and kv_a projections:
// 1. mla_rope_latent_write: norms the latent, rotates the rotary key, writes both into the cache,
//    and rotates every head's rotary query part into the absorbed query's tail;
// 2. mla_absorb_query: the absorbed query's head, q_nope · W_UK (`latent` values);
// 3. mla_attention (or mla_attention_row for a small step): scores q̃ · row over the whole row,
//    softmax, and Σ p · latent per head;
// 4. mla_value_heads: each head's output, W_UV · (Σ p · latent), before the output projection.

#define MLA_MAX_LATENT 512
#define MLA_MAX_WIDTH 576
#define MLA_MAX_NOPE 256
#define MLA_THREADS 256
#define MLA_WARPS (MLA_THREADS / 32)
// KV positions per shared tile of mla_attention.
#define MLA_KV 32
// Cache rows one warp of mla_attention_row holds at once, and the values of a row a lane holds
// (8 per 256: three groups cover MLA_MAX_WIDTH; the latent is in the first two).
#define MLA_ROW_KEYS 4
#define MLA_ROW_GROUPS 3
// Tokens one block of the per-head products takes, reading the head's weights once for them; the
// output columns of one mla_absorb_query block and the ways its threads split the sum; the
// output rows of one mla_value_heads block.
#define MLA_HEAD_TOKENS 16
#define MLA_ABSORB_COLS 64
#define MLA_ABSORB_SPLIT (MLA_THREADS / MLA_ABSORB_COLS)
#define MLA_VALUE_ROWS 32

// Per token (one block each): cache[slot] = [rms_norm(latent) · kv_norm, rope(k_pe)], from the
// kv_a projection's row [latent, k_pe]; and, for every head, q_lat[t, h, latent:] = rope(q_pe)
// from the q projection's row [heads × (nope, rope)]. RoPE as rope_kv_write computes it
// (rotate_pair), on pairs (i, i + rope/2).
extern "C" __global__ void mla_rope_latent_write(const bf16* __restrict__ compressed, const bf16* __restrict__ kv_norm, float eps,
                                                 const bf16* __restrict__ q, const u32* __restrict__ positions, const u32* __restrict__ slots,
                                                 const double* __restrict__ inv_freq, float attention_factor, int heads, int nope, int rope,
                                                 int latent, bf16* __restrict__ q_lat, bf16* __restrict__ cache) {
    pdl_begin();
    __shared__ float scratch[32];
    const int t = blockIdx.x, width = latent + rope, half = rope / 2;
    const bf16* row = compressed + (u64)t * width;
    float part = 0.f;
    for (int i = threadIdx.x; i < latent; i += blockDim.x) {
        float v = bf2f(row[i]);
        part += v * v;
    }
    const float scale = rsqrtf(block_sum(part, scratch) / latent + eps);
    bf16* dst = cache + (u64)slots[t] * width;
    for (int i = threadIdx.x; i < latent; i += blockDim.x) dst[i] = f2bf(bf2f(row[i]) * scale * bf2f(kv_norm[i]));
    // Pairs of every head's query, then the key's.
    for (int p = threadIdx.x; p < (heads + 1) * half; p += blockDim.x) {
        const int h = p / half, i = p % half;
        const bf16* src = h < heads ? q + ((u64)t * heads + h) * (nope + rope) + nope : row + latent;
        bf16* out = h < heads ? q_lat + ((u64)t * heads + h) * width + latent : dst + latent;
        float a = bf2f(src[i]), b = bf2f(src[i + half]);
        rotate_pair(positions[t], inv_freq[i], attention_factor, a, b);
        out[i] = f2bf(a);
        out[i + half] = f2bf(b);
    }
}

// q_lat[t, h, :latent] = Σ_n q[t, h, n] · W_UK_h[n, :] over the head's `nope` no-RoPE query
// values. Grid: (heads, ceil(latent / MLA_ABSORB_COLS), ceil(tokens / MLA_HEAD_TOKENS)): a block
// takes MLA_ABSORB_COLS output columns, its threads split the n sum MLA_ABSORB_SPLIT ways (so a
// decode step of one token still spreads over many blocks and short loops), summed at the end.
extern "C" __global__ void __launch_bounds__(MLA_THREADS)
    mla_absorb_query(const bf16* __restrict__ q, const bf16* __restrict__ kv_b, int tokens, int heads, int nope, int rope, int v_dim,
                     int latent, bf16* __restrict__ q_lat) {
    pdl_begin();
    __shared__ float qs[MLA_HEAD_TOKENS][MLA_MAX_NOPE];
    __shared__ float part[MLA_ABSORB_SPLIT][MLA_HEAD_TOKENS][MLA_ABSORB_COLS];
    const int h = blockIdx.x, t0 = blockIdx.z * MLA_HEAD_TOKENS, n_tok = min(MLA_HEAD_TOKENS, tokens - t0);
    const int width = latent + rope, column = threadIdx.x % MLA_ABSORB_COLS, split = threadIdx.x / MLA_ABSORB_COLS;
    const int c = blockIdx.y * MLA_ABSORB_COLS + column;
    for (int e = threadIdx.x; e < n_tok * nope; e += blockDim.x) {
        const int i = e / nope, n = e % nope;
        qs[i][n] = bf2f(q[((u64)(t0 + i) * heads + h) * (nope + rope) + n]);
    }
    __syncthreads();
    // The thread's whole column of W_UK (every MLA_ABSORB_SPLIT-th row) is loaded before any of
    // it is used, so all its loads are in flight at once.
    constexpr int PER_THREAD = MLA_MAX_NOPE / MLA_ABSORB_SPLIT;
    const bf16* w = kv_b + (u64)h * (nope + v_dim) * latent;
    bf16 wv[PER_THREAD];
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        const int n = split + k * MLA_ABSORB_SPLIT;
        wv[k] = n < nope && c < latent ? w[(u64)n * latent + c] : (bf16)0;
    }
    float acc[MLA_HEAD_TOKENS];
#pragma unroll
    for (int i = 0; i < MLA_HEAD_TOKENS; i++) acc[i] = 0.f;
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        const int n = split + k * MLA_ABSORB_SPLIT;
        if (n >= nope) break;
        const float wf = bf2f(wv[k]);
#pragma unroll
        for (int i = 0; i < MLA_HEAD_TOKENS; i++)
            if (i < n_tok) acc[i] = fmaf(qs[i][n], wf, acc[i]);
    }
#pragma unroll
    for (int i = 0; i < MLA_HEAD_TOKENS; i++) part[split][i][column] = acc[i];
    __syncthreads();
    for (int e = threadIdx.x; e < n_tok * MLA_ABSORB_COLS; e += blockDim.x) {
        const int i = e / MLA_ABSORB_COLS, col = blockIdx.y * MLA_ABSORB_COLS + e % MLA_ABSORB_COLS;
        if (col >= latent) continue;
        float sum = 0.f;
#pragma unroll
        for (int g = 0; g < MLA_ABSORB_SPLIT; g++) sum += part[g][i][e % MLA_ABSORB_COLS];
        q_lat[((u64)(t0 + i) * heads + h) * width + col] = f2bf(sum);
    }
}

// out[t, h, r] = Σ_j o_lat[t, h, j] · W_UV_h[r, j] for the head's `v_dim` output values (the
// parameters of mla_absorb_query; `rope` is not read). Grid: (heads, ceil(v_dim /
// MLA_VALUE_ROWS), ceil(tokens / MLA_HEAD_TOKENS)); each warp owns MLA_VALUE_ROWS / MLA_WARPS
// output rows and reads them together, 16 bytes a lane per row (latent % 8 == 0), its lanes
// splitting the latent.
extern "C" __global__ void __launch_bounds__(MLA_THREADS)
    mla_value_heads(const bf16* __restrict__ o_lat, const bf16* __restrict__ kv_b, int tokens, int heads, int nope, int rope, int v_dim,
                    int latent, bf16* __restrict__ out) {
    pdl_begin();
    constexpr int ROWS_PER_WARP = MLA_VALUE_ROWS / MLA_WARPS;
    __shared__ __align__(16) float os[MLA_HEAD_TOKENS][MLA_MAX_LATENT];
    const int h = blockIdx.x, t0 = blockIdx.z * MLA_HEAD_TOKENS, n_tok = min(MLA_HEAD_TOKENS, tokens - t0);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, latent8 = latent / 8;
    for (int e = threadIdx.x; e < n_tok * latent; e += blockDim.x) {
        const int i = e / latent, j = e % latent;
        os[i][j] = bf2f(o_lat[((u64)(t0 + i) * heads + h) * latent + j]);
    }
    __syncthreads();
    const uint4* w = (const uint4*)(kv_b + ((u64)h * (nope + v_dim) + nope) * latent);
    const int r0 = blockIdx.y * MLA_VALUE_ROWS + warp * ROWS_PER_WARP;
    float acc[ROWS_PER_WARP][MLA_HEAD_TOKENS];
#pragma unroll
    for (int rr = 0; rr < ROWS_PER_WARP; rr++)
#pragma unroll
        for (int i = 0; i < MLA_HEAD_TOKENS; i++) acc[rr][i] = 0.f;
    for (int j8 = lane; j8 < latent8; j8 += 32) {
        float wf[ROWS_PER_WARP][8];
#pragma unroll
        for (int rr = 0; rr < ROWS_PER_WARP; rr++) unpack8(r0 + rr < v_dim ? w[(u64)(r0 + rr) * latent8 + j8] : make_uint4(0, 0, 0, 0), wf[rr]);
#pragma unroll
        for (int i = 0; i < MLA_HEAD_TOKENS; i++) {
            if (i >= n_tok) break;
            const float4 a = *(const float4*)&os[i][8 * j8], b = *(const float4*)&os[i][8 * j8 + 4];
            const float o[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
            for (int rr = 0; rr < ROWS_PER_WARP; rr++)
#pragma unroll
                for (int k = 0; k < 8; k++) acc[rr][i] = fmaf(o[k], wf[rr][k], acc[rr][i]);
        }
    }
#pragma unroll
    for (int rr = 0; rr < ROWS_PER_WARP; rr++) {
        if (r0 + rr >= v_dim) break;
#pragma unroll
        for (int i = 0; i < MLA_HEAD_TOKENS; i++) {
            if (i >= n_tok) break;
            const float sum = warp_sum(acc[rr][i]);
            if (lane == 0) out[((u64)(t0 + i) * heads + h) * v_dim + r0 + rr] = f2bf(sum);
        }
    }
}

// Absorbed attention of every head against the latent rows, over the tiles of attention.cu (one
// sequence's consecutive tokens: sequence, first row, rows, first position) and its KV splits.
// A block takes MLA_WARPS × ROWS_PER_WARP query rows of its tile (row r is token r / heads, head
// r % heads), so each latent row staged in shared memory serves that many heads at once. Score
// q̃ · row over all `latent + rope` values times `scale_log2` (log2 units), causal; the output
// per row is Σ p · latent (`latent` values), normalised with one split, else left as partial
// sums and maxima for attention_combine (with head_dim = latent); one split reads every position
// (split_length).
// Grid: (tiles, ceil(most tile rows × heads / (MLA_WARPS × ROWS_PER_WARP)), splits).
// Two variants: four rows a warp (mla_attention_r4) share each staged value among more rows;
// one row a warp (mla_attention_r1) spreads a small step (a decode batch of a few tokens) over
// four times the blocks. A row's arithmetic is the same in both, so the variant never changes
// its bits.
template <int ROWS_PER_WARP>
__device__ void mla_attention_impl(const bf16* __restrict__ q_lat, const bf16* __restrict__ cache, const u32* __restrict__ tiles,
                                   const u32* __restrict__ table_offsets, const u32* __restrict__ table_data, int heads, int latent,
                                   int rope, int block_size, float scale_log2, const u32* __restrict__ split_size, bf16* __restrict__ out,
                                   float* __restrict__ part_acc, float* __restrict__ part_ml) {
    constexpr int ROWS = MLA_WARPS * ROWS_PER_WARP;
    constexpr int QPL = MLA_MAX_WIDTH / 32, OPL = MLA_MAX_LATENT / 32;
    __shared__ __align__(16) bf16 kv[MLA_KV][MLA_MAX_WIDTH];
    const int width = latent + rope;
    const u32* tile = tiles + 4 * blockIdx.x;
    const u32 seq = tile[0], row0 = tile[1], nrows = tile[2], pos0 = tile[3];
    const int rows = (int)nrows * heads, first_row = blockIdx.y * ROWS;
    if (first_row >= rows) return;
    const int split = blockIdx.z, splits = gridDim.z;
    const u32 split_tokens = split_length(split_size);
    const u32 split_start = (u32)split * split_tokens;
    // The block's last row's position bounds what any of its rows sees.
    const u32 last_pos = pos0 + (u32)(min(first_row + ROWS, rows) - 1) / heads;
    if (split_start > last_pos) return;
    const u32 kv_end = min(last_pos + 1, split_start + split_tokens);
    const u32* table = table_data + table_offsets[seq];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float q[ROWS_PER_WARP][QPL], acc[ROWS_PER_WARP][OPL], m[ROWS_PER_WARP], l[ROWS_PER_WARP];
    u32 row_pos[ROWS_PER_WARP];
    bool live[ROWS_PER_WARP];
#pragma unroll
    for (int ri = 0; ri < ROWS_PER_WARP; ri++) {
        const int r = first_row + warp * ROWS_PER_WARP + ri;
        live[ri] = r < rows;
        row_pos[ri] = pos0 + (u32)r / heads;
        const u64 at = ((u64)(row0 + r / heads) * heads + r % heads) * width;
#pragma unroll
        for (int i = 0; i < QPL; i++) {
            const int c = lane + 32 * i;
            q[ri][i] = live[ri] && c < width ? bf2f(q_lat[at + c]) * scale_log2 : 0.f;
        }
#pragma unroll
        for (int i = 0; i < OPL; i++) acc[ri][i] = 0.f;
        m[ri] = -INFINITY;
        l[ri] = 0.f;
    }

    const int chunks = width / 8;
    for (u32 t0 = split_start; t0 < kv_end; t0 += MLA_KV) {
        __syncthreads();
        for (int e = threadIdx.x; e < MLA_KV * chunks; e += MLA_THREADS) {
            const int j = e / chunks, chunk = e % chunks;
            const u32 pos = t0 + j;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (pos < kv_end) {
                const u64 slot = (u64)table[pos / block_size] * block_size + pos % block_size;
                v = *(const uint4*)(cache + slot * width + chunk * 8);
            }
            *(uint4*)&kv[j][chunk * 8] = v;
        }
        __syncthreads();

        // Scores: lane j keeps position t0 + j's.
        float score[ROWS_PER_WARP];
#pragma unroll
        for (int ri = 0; ri < ROWS_PER_WARP; ri++) score[ri] = -INFINITY;
        for (int j = 0; j < MLA_KV; j++) {
            float kj[QPL];
#pragma unroll
            for (int i = 0; i < QPL; i++) {
                const int c = lane + 32 * i;
                kj[i] = c < width ? bf2f(kv[j][c]) : 0.f;
            }
#pragma unroll
            for (int ri = 0; ri < ROWS_PER_WARP; ri++) {
                float part = 0.f;
#pragma unroll
                for (int i = 0; i < QPL; i++) part = fmaf(q[ri][i], kj[i], part);
                const float s = warp_sum(part);
                if (lane == j) score[ri] = s;
            }
        }

        const u32 kv_pos = t0 + lane;
#pragma unroll
        for (int ri = 0; ri < ROWS_PER_WARP; ri++) {
            if (!live[ri]) continue;
            const bool valid = kv_pos < kv_end && kv_pos <= row_pos[ri];
            const float s = valid ? score[ri] : -INFINITY;
            const float m_new = fmaxf(m[ri], warp_max(s));
            if (m_new == -INFINITY) continue;
            const float p = valid ? exp2f(s - m_new) : 0.f;
            const float corr = exp2f(m[ri] - m_new);
            l[ri] = l[ri] * corr + warp_sum(p);
#pragma unroll
            for (int i = 0; i < OPL; i++) acc[ri][i] *= corr;
            for (int j = 0; j < MLA_KV; j++) {
                const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
                for (int i = 0; i < OPL; i++) {
                    const int c = lane + 32 * i;
                    if (c < latent) acc[ri][i] = fmaf(pj, bf2f(kv[j][c]), acc[ri][i]);
                }
            }
            m[ri] = m_new;
        }
    }

#pragma unroll
    for (int ri = 0; ri < ROWS_PER_WARP; ri++) {
        if (!live[ri]) continue;
        const int r = first_row + warp * ROWS_PER_WARP + ri;
        const u64 row = (u64)(row0 + r / heads) * heads + r % heads;
        if (splits == 1) {
#pragma unroll
            for (int i = 0; i < OPL; i++) {
                const int c = lane + 32 * i;
                if (c < latent) out[row * latent + c] = f2bf(acc[ri][i] / l[ri]);
            }
        } else if (split_start <= row_pos[ri]) {
            const u64 at = row * splits + split;
#pragma unroll
            for (int i = 0; i < OPL; i++) {
                const int c = lane + 32 * i;
                if (c < latent) part_acc[at * latent + c] = acc[ri][i];
            }
            if (lane == 0) {
                part_ml[2 * at] = m[ri];
                part_ml[2 * at + 1] = l[ri];
            }
        }
    }
}

#define MLA_ATTENTION_VARIANT(R)                                                                                                    \
    extern "C" __global__ void __launch_bounds__(MLA_THREADS)                                                                       \
        mla_attention_r##R(const bf16* q_lat, const bf16* cache, const u32* tiles, const u32* table_offsets, const u32* table_data,  \
                           int heads, int latent, int rope, int block_size, float scale_log2, const u32* split_size, bf16* out,      \
                           float* part_acc, float* part_ml) {                                                                       \
        pdl_begin();                                                                                                                \
        mla_attention_impl<R>(q_lat, cache, tiles, table_offsets, table_data, heads, latent, rope, block_size, scale_log2,          \
                              split_size, out, part_acc, part_ml);                                                                  \
    }
MLA_ATTENTION_VARIANT(1)
MLA_ATTENTION_VARIANT(4)

// Absorbed attention of one query row a block, for steps too small to fill the GPU with
// mla_attention's blocks (a decode batch of a few tokens), outside batch-invariant mode: its sums
// run in another order than mla_attention's, so a row's bits depend on the kernel.
// Grid: (tiles, most tile rows × heads, splits); the tile format, masks, scale and outputs are
// mla_attention's. The split's positions are dealt to the warps MLA_ROW_KEYS at a time, each
// warp keeping its own online softmax; a lane holds values 256g + 8·lane .. + 8 of the query and
// of each cache row it reads (straight from the cache: no shared staging, no per-key chain of
// the whole block), and the warps' states merge in shared memory at the end.
extern "C" __global__ void __launch_bounds__(MLA_THREADS)
    mla_attention_row(const bf16* __restrict__ q_lat, const bf16* __restrict__ cache, const u32* __restrict__ tiles,
                      const u32* __restrict__ table_offsets, const u32* __restrict__ table_data, int heads, int latent, int rope,
                      int block_size, float scale_log2, const u32* __restrict__ split_size, bf16* __restrict__ out,
                      float* __restrict__ part_acc, float* __restrict__ part_ml) {
    pdl_begin();
    __shared__ float warp_m[MLA_WARPS], warp_l[MLA_WARPS];
    __shared__ __align__(16) float warp_acc[MLA_WARPS][MLA_MAX_LATENT];
    const int width = latent + rope;
    const u32* tile = tiles + 4 * blockIdx.x;
    const u32 seq = tile[0], row0 = tile[1], nrows = tile[2], pos0 = tile[3];
    const int r = blockIdx.y;
    if (r >= (int)nrows * heads) return;
    const int split = blockIdx.z, splits = gridDim.z;
    const u32 split_tokens = split_length(split_size), split_start = (u32)split * split_tokens, row_pos = pos0 + (u32)r / heads;
    if (split_start > row_pos) return;
    const u32 kv_end = min(row_pos + 1, split_start + split_tokens);
    const u32* table = table_data + table_offsets[seq];
    const u64 row = (u64)(row0 + r / heads) * heads + r % heads;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    float q[MLA_ROW_GROUPS][8], acc[MLA_ROW_GROUPS - 1][8];
#pragma unroll
    for (int g = 0; g < MLA_ROW_GROUPS; g++) {
        const int d0 = 256 * g + 8 * lane;
        unpack8(d0 < width ? *(const uint4*)(q_lat + row * width + d0) : make_uint4(0, 0, 0, 0), q[g]);
#pragma unroll
        for (int i = 0; i < 8; i++) q[g][i] *= scale_log2;
        if (g < MLA_ROW_GROUPS - 1)
#pragma unroll
            for (int i = 0; i < 8; i++) acc[g][i] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (u32 t0 = split_start + (u32)warp * MLA_ROW_KEYS; t0 < kv_end; t0 += MLA_WARPS * MLA_ROW_KEYS) {
        uint4 kv[MLA_ROW_KEYS][MLA_ROW_GROUPS];
#pragma unroll
        for (int k = 0; k < MLA_ROW_KEYS; k++) {
            const u32 pos = t0 + k;
            const u64 slot = pos < kv_end ? (u64)table[pos / block_size] * block_size + pos % block_size : 0;
#pragma unroll
            for (int g = 0; g < MLA_ROW_GROUPS; g++) {
                const int d0 = 256 * g + 8 * lane;
                kv[k][g] = pos < kv_end && d0 < width ? *(const uint4*)(cache + slot * width + d0) : make_uint4(0, 0, 0, 0);
            }
        }
        float s[MLA_ROW_KEYS], top = m;
#pragma unroll
        for (int k = 0; k < MLA_ROW_KEYS; k++) {
            float part = 0.f;
#pragma unroll
            for (int g = 0; g < MLA_ROW_GROUPS; g++) {
                float v[8];
                unpack8(kv[k][g], v);
#pragma unroll
                for (int i = 0; i < 8; i++) part = fmaf(q[g][i], v[i], part);
            }
            s[k] = t0 + k < kv_end ? warp_sum(part) : -INFINITY;
            top = fmaxf(top, s[k]);
        }
        // The warp's first position is in range, so `top` is finite.
        const float corr = exp2f(m - top);
        l *= corr;
#pragma unroll
        for (int g = 0; g < MLA_ROW_GROUPS - 1; g++)
#pragma unroll
            for (int i = 0; i < 8; i++) acc[g][i] *= corr;
#pragma unroll
        for (int k = 0; k < MLA_ROW_KEYS; k++) {
            const float p = exp2f(s[k] - top);
            l += p;
#pragma unroll
            for (int g = 0; g < MLA_ROW_GROUPS - 1; g++) {
                float v[8];
                unpack8(kv[k][g], v);
#pragma unroll
                for (int i = 0; i < 8; i++) acc[g][i] = fmaf(p, v[i], acc[g][i]);
            }
        }
        m = top;
    }

    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
#pragma unroll
    for (int g = 0; g < MLA_ROW_GROUPS - 1; g++) {
        const int d0 = 256 * g + 8 * lane;
        if (d0 < latent) {
            *(float4*)&warp_acc[warp][d0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
            *(float4*)&warp_acc[warp][d0 + 4] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
        }
    }
    __syncthreads();
    // Warps that held no position (m = -inf) weigh nothing; the first warp always held one.
    float top = warp_m[0];
#pragma unroll
    for (int w = 1; w < MLA_WARPS; w++) top = fmaxf(top, warp_m[w]);
    float weight[MLA_WARPS], total = 0.f;
#pragma unroll
    for (int w = 0; w < MLA_WARPS; w++) {
        weight[w] = exp2f(warp_m[w] - top);
        total = fmaf(warp_l[w], weight[w], total);
    }
    for (int c = threadIdx.x; c < latent; c += MLA_THREADS) {
        float o = 0.f;
#pragma unroll
        for (int w = 0; w < MLA_WARPS; w++) o = fmaf(warp_acc[w][c], weight[w], o);
        if (splits == 1) out[row * latent + c] = f2bf(o / total);
        else part_acc[(row * splits + split) * latent + c] = o;
    }
    if (splits > 1 && threadIdx.x == 0) {
        part_ml[2 * (row * splits + split)] = top;
        part_ml[2 * (row * splits + split) + 1] = total;
    }
}
