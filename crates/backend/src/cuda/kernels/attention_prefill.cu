// Prefill attention on the tensor cores, for tiles of many query tokens: attention.cu's tile
// format, splits, masks, sinks and outputs. Head sizes 32 and 64 run on mma.sync (m16n8k16, f32
// sums), as described here; head size 128 on warp-group products (`wgmma`, sm_90a), in the kernel
// at the end of this file, which shares this one's steps and softmax. A tile's query rows are
// its tokens × the heads of one GQA group, token-major, at most PF_ROWS of them; each of the four
// warps owns PF_MT × 16 rows, so every K and V fragment it loads feeds PF_MT products. The
// queries wait in shared memory and are loaded as A fragments a k-step at a time.
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
#define PF_MT 2
#define PF_ROWS (PF_THREADS / 32 * PF_MT * 16)
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

// Sixteen E4M3 codes (16 bytes) as sixteen f16 values: the first eight in `lo`, the rest in `hi`
// (an instruction a pair).
__device__ __forceinline__ void e4m3x16_to_f16x16(uint4 codes, uint4& lo, uint4& hi) {
    const u32 words[4] = {codes.x, codes.y, codes.z, codes.w};
    u32 h[8];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        h[2 * k] = e4m3x2_to_f16x2((unsigned short)(words[k] & 0xffffu));
        h[2 * k + 1] = e4m3x2_to_f16x2((unsigned short)(words[k] >> 16));
    }
    lo = make_uint4(h[0], h[1], h[2], h[3]);
    hi = make_uint4(h[4], h[5], h[6], h[7]);
}

// What a prefill block works on: its tile (attention.cu's TileWork for this block's split), its
// KV head, the tile's query rows (tokens × the GQA group), its sequence's block table and the
// steps of PF_KV positions it walks. The host lists the tiles heaviest first
// (`heaviest_tiles_first`) and blocks start in launch order, x fastest: counting the KV heads
// fastest instead starts every head of the heaviest tiles first, so the launch ends on the
// lightest ones rather than on a wave of long tiles.
struct PrefillBlock {
    TileWork work;
    int kvh, split, splits, group, rows;
    const u32* table;
    u32 steps;
};
__device__ __forceinline__ PrefillBlock prefill_block(const u32* tiles, const u32* split_size, int window, int heads, int kv_heads,
                                                      const u32* table_offsets, const u32* table_data) {
    const u32 launch_index = blockIdx.x + gridDim.x * blockIdx.y;
    PrefillBlock b;
    b.work = tile_work(tiles, launch_index / gridDim.y, split_size, window, PF_KV);
    b.kvh = launch_index % gridDim.y;
    b.split = blockIdx.z;
    b.splits = gridDim.z;
    b.group = heads / kv_heads;
    b.rows = b.work.nrows * b.group;
    b.table = table_data + table_offsets[b.work.seq];
    b.steps = b.work.kv_lo < b.work.split_end ? (b.work.split_end - b.work.kv_lo + PF_KV - 1) / PF_KV : 0;
    return b;
}

// Where a thread's copies of a KV head's cached rows read: its 16-byte piece (of CHUNKS a row
// of ROW_BYTES) of the rows in table entry 0 (a row of block b at offset o is at
// (table[b]·kv_heads + kvh)·block_size + o rows of the cache), and the first of the rows it
// copies, one every THREADS / CHUNKS.
struct KvCopy {
    const unsigned char *k, *v;
    u32 table_stride, row_bytes;
    int piece, first_row;
};
template <u32 ROW_BYTES, int CHUNKS>
__device__ __forceinline__ KvCopy kv_copy(const void* k_cache, const void* v_cache, int kvh, int kv_heads, int block_size) {
    KvCopy c;
    c.piece = threadIdx.x % CHUNKS;
    c.first_row = threadIdx.x / CHUNKS;
    c.row_bytes = ROW_BYTES;
    const u32 block_bytes = (u32)block_size * ROW_BYTES;
    c.table_stride = (u32)kv_heads * block_bytes;
    c.k = (const unsigned char*)k_cache + (u64)kvh * block_bytes + c.piece * 16;
    c.v = (const unsigned char*)v_cache + (u64)kvh * block_bytes + c.piece * 16;
    return c;
}

// A position of a sequence in the paged cache, walked forward by a copy: its block's index in the
// sequence's table and its offset in that block.
struct CacheCursor {
    u32 pos, block, offset;
    __device__ __forceinline__ CacheCursor(u32 p, int block_size) : pos(p), block(p / (u32)block_size), offset(p - block * (u32)block_size) {}
    // Byte offset of the position's row in a cache whose table entry b starts at b·table_stride
    // (add the KV head's), with rows of `row_bytes`.
    __device__ __forceinline__ u64 row(const u32* table, u32 table_stride, u32 row_bytes) const {
        return (u64)table[block] * table_stride + offset * row_bytes;
    }
    __device__ __forceinline__ void advance(u32 n, int block_size) {
        pos += n;
        offset += n;
        while (offset >= (u32)block_size) {
            offset -= block_size;
            block++;
        }
    }
};

// The tile's queries into shared memory, 16 bytes a thread at a time (converted to f16 for an
// FP8 cache; rows past the tile's are zero): piece c8 (eight values) of row r to `at(r, c8)`.
template <int HD, bool FP8, int THREADS, class QueryOf, class At>
__device__ __forceinline__ void stage_queries(const bf16* q, int rows, QueryOf query_of, At at) {
    for (int e = threadIdx.x; e < PF_ROWS * (HD / 8); e += THREADS) {
        const int r = e / (HD / 8), c8 = e % (HD / 8);
        uint4 w = r < rows ? *(const uint4*)(q + query_of(r) + c8 * 8) : make_uint4(0, 0, 0, 0);
        if constexpr (FP8) {
            u32* v = &w.x;
#pragma unroll
            for (int i = 0; i < 4; i++) v[i] = pack_f16x2(__uint_as_float(v[i] << 16), __uint_as_float(v[i] & 0xffff0000u));
        }
        *(uint4*)at(r, c8) = w;
    }
}

// The masks and the online softmax of one step for a warp's sixteen rows (rows g and g + 8 of
// the S fragments, each spread over a quad of lanes; t = lane % 4), on raw scores: where
// `masked`, positions past the split's end, after the row's position or a window behind it get
// -inf; then p = 2^(s·scale_log2 − m) replaces each score, and the running maxima m (log2 units),
// sums l and outputs o are rescaled to the new maxima.
template <int DTILES>
__device__ __forceinline__ void prefill_softmax_step(float (&s)[PF_KV / 8][4], float (&o)[DTILES][4], float (&m)[2], float (&l)[2],
                                                     const u32 (&row_pos)[2], bool masked, u32 t0, u32 split_end, int window,
                                                     float scale_log2, int t) {
    if (masked) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
#pragma unroll
            for (int j = 0; j < PF_KV / 8; j++) {
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    const u32 kv = t0 + 8 * j + 2 * t + c, at = row_pos[h];
                    const bool valid = kv < split_end && kv <= at && (window <= 0 || kv + (u32)window > at);
                    if (!valid) s[j][2 * h + c] = -INFINITY;
                }
            }
        }
    }
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
}

// The probabilities of sixteen positions (S fragments 2·k16 and 2·k16 + 1) as the A fragment of
// the product over them: the accumulator's layout is already the operand's.
template <bool F16>
__device__ __forceinline__ void probabilities_fragment(u32 (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
    a[0] = pack_pair<F16>(lo[0], lo[1]);
    a[1] = pack_pair<F16>(lo[2], lo[3]);
    a[2] = pack_pair<F16>(hi[0], hi[1]);
    a[3] = pack_pair<F16>(hi[2], hi[3]);
}

// Writes row h of a lane's pair, whose query starts at element `query` of q and out (~0 for a
// row past the tile's): the normalised bf16 output in a launch of one split, else the split's
// partial sums, maximum and sum for attention_combine (a split that starts after the row's
// position has nothing to give). Every lane of the warp calls it: the sum is reduced over quads.
template <int HD>
__device__ __forceinline__ void prefill_write_row(const float (&o)[HD / 8][4], int h, float m, float l, u32 row_pos, u64 query, int t,
                                                  int split, int splits, u32 split_start, bf16* out, float* part_acc, float* part_ml) {
    float total = l;
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    if (query == ~0ull) return;
    if (splits == 1) {
        bf16* dst = out + query + 2 * t;
#pragma unroll
        for (int n = 0; n < HD / 8; n++) *(u32*)(dst + 8 * n) = pack_bf16x2(o[n][2 * h] / total, o[n][2 * h + 1] / total);
    } else if (split_start <= row_pos) {
        const u64 at = query / HD * splits + split;
        float* dst = part_acc + at * HD + 2 * t;
#pragma unroll
        for (int n = 0; n < HD / 8; n++) *(float2*)(dst + 8 * n) = make_float2(o[n][2 * h], o[n][2 * h + 1]);
        if (t == 0) {
            part_ml[2 * at] = m;
            part_ml[2 * at + 1] = total;
        }
    }
}

// Dynamic shared memory (prefill_attention_shared_bytes in kernels.rs): a staged query, K or V row
// holds HD 16-bit values and 16 bytes of padding, so the eight rows one fragment load touches fall
// in distinct banks. First the PF_ROWS query rows (f16 for an FP8 cache); then for a bf16 cache
// two stages of K then V; for an FP8 cache the one f16 K-then-V tile, then two stages of K then V
// codes.
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

    const PrefillBlock b = prefill_block(tiles, split_size, window, heads, kv_heads, table_offsets, table_data);
    if (b.work.empty) return;
    const u32 row0 = b.work.row0, pos0 = b.work.pos0, split_start = b.work.split_start, split_end = b.work.split_end, kv_lo = b.work.kv_lo;
    const int kvh = b.kvh, split = b.split, splits = b.splits, group = b.group, rows = b.rows;
    const u32 *table = b.table, steps = b.steps, ctx_end = pos0 + b.work.nrows;

    // Shared state-space addresses: the queries, the staged rows, and for an FP8 cache the code
    // stages.
    constexpr u32 ROW_BYTES = ROW * 2, TILE_BYTES = TILE * 2, QUERY_BYTES = PF_ROWS * ROW_BYTES;
    const u32 queries = shared_address(dynamic_shared());
    const u32 staged = queries + QUERY_BYTES;
    const u32 codes = staged + 2 * TILE_BYTES;
    // Copies step `i`'s K and V rows into stage i % 2: thread x takes piece x % CHUNKS of rows
    // x / CHUNKS, + ROWS_A_PASS, ...; positions past the split's end are zero-filled.
    const KvCopy src = kv_copy<HD * ELEM, CHUNKS>(k_cache, v_cache, kvh, kv_heads, block_size);
    const int piece = src.piece, first_row = src.first_row;
    const u32 copy_dst = FP8 ? codes + first_row * HD + piece * 16 : staged + first_row * ROW_BYTES + piece * 16;
    auto issue = [&](u32 i) {
        CacheCursor at(kv_lo + i * PF_KV + first_row, block_size);
        const u32 dst = copy_dst + (i % 2) * (FP8 ? CODE_STAGE : 2 * TILE_BYTES);
#pragma unroll
        for (int p = 0; p < (PF_KV + ROWS_A_PASS - 1) / ROWS_A_PASS; p++) {
            if (PF_KV % ROWS_A_PASS == 0 || first_row + p * ROWS_A_PASS < PF_KV) {
                const bool valid = at.pos < split_end;
                const u64 row = valid ? at.row(table, src.table_stride, src.row_bytes) : 0;
                const u32 k_dst = dst + p * ROWS_A_PASS * (FP8 ? HD : ROW_BYTES);
                cp_async16_at(k_dst, src.k + row, valid);
                cp_async16_at(k_dst + (FP8 ? PF_KV * HD : TILE_BYTES), src.v + row, valid);
            }
            at.advance(ROWS_A_PASS, block_size);
        }
        cp_async_commit();
    };
    if (steps > 0) issue(0);

    // Row r of the tile is query head kvh·group + r % group of token row0 + r / group.
    auto query_of = [&](int r) { return ((u64)(row0 + r / group) * heads + kvh * group + r % group) * HD; };
    stage_queries<HD, FP8, PF_THREADS>(q, rows, query_of, [&](int r, int c8) { return dynamic_shared() + r * ROW_BYTES + c8 * 16; });

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    // This thread's rows: g and g + 8 of each of the warp's PF_MT sixteens, as [mt][h]. Only their
    // positions stay in registers.
    auto row_of = [&](int mt, int h) { return (warp * PF_MT + mt) * 16 + g + 8 * h; };
    u32 row_pos[PF_MT][2];
#pragma unroll
    for (int mt = 0; mt < PF_MT; mt++) {
#pragma unroll
        for (int h = 0; h < 2; h++) row_pos[mt][h] = pos0 + row_of(mt, h) / group;
    }

    float o[PF_MT][DTILES][4];
    // Running maxima in log2 units; a row's sum is spread over its quad of lanes, the sink's 1 in
    // the first lane's share.
    float m[PF_MT][2], l[PF_MT][2];
#pragma unroll
    for (int mt = 0; mt < PF_MT; mt++) {
#pragma unroll
        for (int n = 0; n < DTILES; n++) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.f;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            m[mt][h] = initial_max(sinks, kvh * group + row_of(mt, h) % group, split);
            l[mt][h] = m[mt][h] == -INFINITY || t != 0 ? 0.f : 1.f;
        }
    }
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
            const unsigned char* stage = dynamic_shared() + QUERY_BYTES + 2 * TILE_BYTES + (i % 2) * CODE_STAGE;
            bf16* tile = (bf16*)(dynamic_shared() + QUERY_BYTES);
#pragma unroll 1
            for (int e = threadIdx.x; e < CODE_STAGE / 16; e += PF_THREADS) {
                const int r = e / (HD / 16), c16 = e % (HD / 16);
                uint4 lo, hi;
                e4m3x16_to_f16x16(*(const uint4*)(stage + e * 16), lo, hi);
                uint4* dst = (uint4*)(tile + r * ROW + c16 * 16);
                dst[0] = lo;
                dst[1] = hi;
            }
            __syncthreads();
            ks = staged;
        } else {
            ks = staged + (i % 2) * 2 * TILE_BYTES;
        }
        const u32 vs = ks + TILE_BYTES;
        // This lane's row and column in the fragment loads below (matrix lane / 8 of four): the
        // queries' and V's (transposed) are the four quarters of sixteen rows by sixteen columns,
        // K's the two halves of a k-step for eight positions and the eight after them.
        const u32 x4_lane = (((lane & 7) + ((lane >> 3) & 1) * 8) * ROW + (lane >> 4) * 8) * 2;
        const u32 k_lane = (((lane & 7) + (lane >> 4) * 8) * ROW + ((lane >> 3) & 1) * 8) * 2;
        const u32 q_warp = queries + warp * PF_MT * 16 * ROW_BYTES + x4_lane;

        // S = Q·Kᵀ: PF_MT × 16 rows × PF_KV positions per warp, as PF_KV/8 fragments each; a
        // k-step's query fragments are loaded once for all positions, and one ldmatrix gives the B
        // fragments of sixteen positions for every sixteen rows.
        float s[PF_MT][PF_KV / 8][4];
#pragma unroll
        for (int mt = 0; mt < PF_MT; mt++) {
#pragma unroll
            for (int j = 0; j < PF_KV / 8; j++) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;
        }
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
            u32 qa[PF_MT][4];
#pragma unroll
            for (int mt = 0; mt < PF_MT; mt++) ldmatrix_x4_at(qa[mt], q_warp + (mt * 16 * ROW + kk * 16) * 2);
#pragma unroll
            for (int j = 0; j < PF_KV / 8; j += 2) {
                u32 b[4];
                ldmatrix_x4_at(b, ks + k_lane + (8 * j * ROW + kk * 16) * 2);
#pragma unroll
                for (int mt = 0; mt < PF_MT; mt++) {
                    mma_m16n8k16<FP8>(s[mt][j], qa[mt], b[0], b[1]);
                    mma_m16n8k16<FP8>(s[mt][j + 1], qa[mt], b[2], b[3]);
                }
            }
        }

        const bool masked = t0 + PF_KV > split_end || t0 + PF_KV - 1 > pos0 || (window > 0 && t0 + (u32)window <= last_row_pos);
#pragma unroll
        for (int mt = 0; mt < PF_MT; mt++) {
            prefill_softmax_step<DTILES>(s[mt], o[mt], m[mt], l[mt], row_pos[mt], masked, t0, split_end, window, scale_log2, t);
        }

        // O += P·V: P's S fragments are already the A operand's layout; V comes transposed, and
        // each of its fragments feeds every sixteen rows.
#pragma unroll
        for (int k16 = 0; k16 < PF_KV / 16; k16++) {
            u32 pa[PF_MT][4];
#pragma unroll
            for (int mt = 0; mt < PF_MT; mt++) probabilities_fragment<FP8>(pa[mt], s[mt][2 * k16], s[mt][2 * k16 + 1]);
#pragma unroll
            for (int n = 0; n < DTILES; n += 2) {
                u32 b[4];
                ldmatrix_x4_trans_at(b, vs + x4_lane + (16 * k16 * ROW + 8 * n) * 2);
#pragma unroll
                for (int mt = 0; mt < PF_MT; mt++) {
                    mma_m16n8k16<FP8>(o[mt][n], pa[mt], b[0], b[1]);
                    mma_m16n8k16<FP8>(o[mt][n + 1], pa[mt], b[2], b[3]);
                }
            }
        }
    }

#pragma unroll
    for (int mt = 0; mt < PF_MT; mt++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = row_of(mt, h);
            prefill_write_row<HD>(o[mt], h, m[mt][h], l[mt][h], row_pos[mt][h], r < rows ? query_of(r) : ~0ull, t, split, splits, split_start,
                                  out, part_acc, part_ml);
        }
    }
}

// Warp-group products (sm_90a): `wgmma` runs a 64-row product on the four warps of a warp group
// from shared memory, read through matrix descriptors, asynchronously: a batch is fenced, issued,
// committed and awaited. Each warp holds sixteen rows of the f32 result, in mma.sync's C layout
// repeated every eight columns: d[n] holds columns 8n + 2c, +1 of rows g and g + 8 (g = lane / 4,
// c = lane % 4) of the warp's sixteen.
//
// A descriptor for a 128-byte-swizzled operand whose 64 values of each row or column (128 bytes)
// lie at `addr` (a shared state-space address; the swizzle pattern repeats every 1,024 bytes, so
// a region starts on such a boundary and a k-step inside its rows adds 32 bytes): `lead` bytes
// between two such 64-wide bands of the other dimension (used by the transposed layout), `stride`
// bytes between groups of eight rows.
__device__ __forceinline__ u64 wgmma_descriptor(u32 addr, u32 lead, u32 stride) {
    return (u64)((addr & 0x3ffff) >> 4) | (u64)(lead >> 4) << 16 | (u64)(stride >> 4) << 32 | 1ull << 62;
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Ties a result register to this point of the program, so that no read of it moves above the
// wait nor any write of it below the fence.
__device__ __forceinline__ void wgmma_hold(float& r) { asm volatile("" : "+f"(r)::"memory"); }
// Keeps an A-operand register of an issued product from reuse until the product is awaited.
__device__ __forceinline__ void wgmma_hold_operand(u32& r) { asm volatile("" : "+r"(r)::"memory"); }
// Shared-memory writes of this thread (plain stores, cp.async) made visible to the async proxy
// that `wgmma` reads through; a barrier after it publishes them to the warp group.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

#define WG_D4(d, n) "+f"(d[n][0]), "+f"(d[n][1]), "+f"(d[n][2]), "+f"(d[n][3])

// d (64 × 64, f32) = A · Bᵀ (+ d when `accumulate`), k = 16: A's 64 rows and B's 64 rows of
// sixteen values each, both read from shared memory through descriptors (K-major). TYPE: f16 or
// bf16.
#define WGMMA_M64N64K16_SS(TYPE)                                                                                                   \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                                       \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                                                        \
                 " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"                                                                          \
                 : WG_D4(d, 0), WG_D4(d, 1), WG_D4(d, 2), WG_D4(d, 3), WG_D4(d, 4), WG_D4(d, 5), WG_D4(d, 6), WG_D4(d, 7)          \
                 : "l"(a), "l"(b), "r"(accumulate))
template <bool F16>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[8][4], u64 a, u64 b, int accumulate) {
    if constexpr (F16) {
        WGMMA_M64N64K16_SS("f16");
    } else {
        WGMMA_M64N64K16_SS("bf16");
    }
}

// d (64 × 128, f32) += A · B, k = 16: A from registers (mma.sync's A fragment of the warp's sixteen
// rows), B (16 × 128) from shared memory stored row by row, 128 values a row (MN-major: the
// descriptor's transpose bit). TYPE: f16 or bf16.
#define WGMMA_M64N128K16_RS(TYPE)                                                                                                  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\nwgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE          \
                 " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"                                                               \
                 : WG_D4(d, 0), WG_D4(d, 1), WG_D4(d, 2), WG_D4(d, 3), WG_D4(d, 4), WG_D4(d, 5), WG_D4(d, 6), WG_D4(d, 7),         \
                   WG_D4(d, 8), WG_D4(d, 9), WG_D4(d, 10), WG_D4(d, 11), WG_D4(d, 12), WG_D4(d, 13), WG_D4(d, 14), WG_D4(d, 15)     \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1))
template <bool F16>
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[16][4], const u32 (&a)[4], u64 b) {
    if constexpr (F16) {
        WGMMA_M64N128K16_RS("f16");
    } else {
        WGMMA_M64N128K16_RS("bf16");
    }
}

// Head size 128 on warp-group products: 256 threads, two warp groups of 64 query rows each (the
// tile's PF_ROWS), sharing each step's K and V. The queries and every step's K and V rows lie in
// shared memory 128-byte swizzled, two bands of 64 values a row (the 16-byte piece c of row r
// of a band at c ^ (r % 8)), the layout `wgmma` reads: S = Q·Kᵀ takes both operands from there
// (eight k-steps of m64n64k16), O += P·V takes P from the S registers (mma.sync's A fragment,
// as the kernel above) and V's rows transposed (four k-steps of m64n128k16). Copies, masks, the
// online softmax, sinks, splits and outputs are the kernel above's, except that an FP8 cache's
// codes widen into two f16 stages, each thread its own copies, so a step keeps one barrier.
#define PFW_THREADS 256
#define PFW_BAND 128

// Byte offset of the 16-byte piece `c` (0..15) of row `r` in a region of rows of 128 values,
// stored as two bands of `band_bytes` each (the first 64 values of every row, then the last 64).
__device__ __forceinline__ u32 swizzled(u32 r, u32 c, u32 band_bytes) {
    return (c / 8) * band_bytes + r * PFW_BAND + (((c % 8) ^ (r % 8)) * 16);
}

template <bool FP8>
__device__ void attention_prefill_wgmma_impl(const bf16* q, const void* k_cache, const void* v_cache, const u32* tiles,
                                             const u32* table_offsets, const u32* table_data, int heads, int kv_heads, int block_size,
                                             int window, const bf16* sinks, float scale_log2, const u32* split_size, bf16* out,
                                             float* part_acc, float* part_ml) {
    constexpr int HD = 128;
    constexpr int DTILES = HD / 8;
    constexpr int ELEM = FP8 ? 1 : 2;
    constexpr int CHUNKS = HD * ELEM / 16;
    constexpr int ROWS_A_PASS = PFW_THREADS / CHUNKS;
    constexpr u32 Q_BAND = PF_ROWS * PFW_BAND, Q_BYTES = 2 * Q_BAND;
    constexpr u32 KV_BAND = PF_KV * PFW_BAND, TILE_BYTES = 2 * KV_BAND;  // a step's K (or V) rows

    const PrefillBlock b = prefill_block(tiles, split_size, window, heads, kv_heads, table_offsets, table_data);
    if (b.work.empty) return;
    const u32 row0 = b.work.row0, pos0 = b.work.pos0, split_start = b.work.split_start, split_end = b.work.split_end, kv_lo = b.work.kv_lo;
    const int kvh = b.kvh, split = b.split, splits = b.splits, group = b.group, rows = b.rows;
    const u32 *table = b.table, steps = b.steps, ctx_end = pos0 + b.work.nrows;

    // The regions start on 1,024-byte boundaries (the swizzle's period): the queries, then two
    // stages of K then V rows the products read (for an FP8 cache widened to f16), then for an
    // FP8 cache one step's K then V codes, unswizzled. Each thread widens only the codes it copied
    // itself, so the codes need neither a second stage nor a barrier of their own: step i+1's are
    // widened into the other stage while step i's O += P·V runs, and the one barrier a step
    // publishes them.
    const u32 dynamic = shared_address(dynamic_shared());
    const u32 queries = (dynamic + 1023) & ~1023u;
    unsigned char* const smem = dynamic_shared() + (queries - dynamic);
    const u32 staged = queries + Q_BYTES;
    const u32 codes = staged + 4 * TILE_BYTES;

    // Copies step `i`'s K and V rows: thread x takes piece x % CHUNKS of rows x / CHUNKS,
    // + ROWS_A_PASS, ...; positions past the split's end are zero-filled.
    const KvCopy src = kv_copy<HD * ELEM, CHUNKS>(k_cache, v_cache, kvh, kv_heads, block_size);
    const int piece = src.piece, first_row = src.first_row;
    // A pass moves ROWS_A_PASS rows down (a multiple of 8, so the swizzle of each piece stays).
    const u32 copy_dst = FP8 ? codes + first_row * HD + piece * 16 : staged + swizzled(first_row, piece, KV_BAND);
    constexpr u32 PASS_BYTES = ROWS_A_PASS * (FP8 ? HD : PFW_BAND);
    auto issue = [&](u32 i) {
        CacheCursor at(kv_lo + i * PF_KV + first_row, block_size);
        const u32 dst = copy_dst + (FP8 ? 0 : (i % 2) * 2 * TILE_BYTES);
#pragma unroll
        for (int p = 0; p < PF_KV / ROWS_A_PASS; p++) {
            const bool valid = at.pos < split_end;
            const u64 row = valid ? at.row(table, src.table_stride, src.row_bytes) : 0;
            cp_async16_at(dst + p * PASS_BYTES, src.k + row, valid);
            cp_async16_at(dst + p * PASS_BYTES + (FP8 ? PF_KV * HD : TILE_BYTES), src.v + row, valid);
            at.advance(ROWS_A_PASS, block_size);
        }
        cp_async_commit();
    };
    // Waits for this thread's codes of step `i` (its pieces of the rows it copied), widens them
    // into stage i % 2, then copies step i+1's codes into their place.
    auto widen = [&](u32 i) {
        cp_async_wait<0>();
        unsigned char* const stage = smem + (staged - queries) + (i % 2) * 2 * TILE_BYTES;
#pragma unroll
        for (int p = 0; p < PF_KV / ROWS_A_PASS; p++) {
            const int r = first_row + p * ROWS_A_PASS;
#pragma unroll
            for (int which = 0; which < 2; which++) {
                uint4 lo, hi;
                e4m3x16_to_f16x16(*(const uint4*)(smem + (codes - queries) + which * PF_KV * HD + r * HD + piece * 16), lo, hi);
                *(uint4*)(stage + which * TILE_BYTES + swizzled(r, 2 * piece, KV_BAND)) = lo;
                *(uint4*)(stage + which * TILE_BYTES + swizzled(r, 2 * piece + 1, KV_BAND)) = hi;
            }
        }
        if (i + 1 < steps) issue(i + 1);
    };
    if (steps > 0) issue(0);

    auto query_of = [&](int r) { return ((u64)(row0 + r / group) * heads + kvh * group + r % group) * HD; };
    stage_queries<HD, FP8, PFW_THREADS>(q, rows, query_of, [&](int r, int c8) { return smem + swizzled(r, c8, Q_BAND); });

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int warp_group = warp / 4;
    // This thread's rows: g and g + 8 of its warp's sixteen, as [h].
    auto row_of = [&](int h) { return warp * 16 + g + 8 * h; };
    u32 row_pos[2];
    float o[DTILES][4];
    float m[2], l[2];
#pragma unroll
    for (int n = 0; n < DTILES; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        row_pos[h] = pos0 + row_of(h) / group;
        m[h] = initial_max(sinks, kvh * group + row_of(h) % group, split);
        l[h] = m[h] == -INFINITY || t != 0 ? 0.f : 1.f;
    }
    const u32 last_row_pos = ctx_end - 1;
    // The descriptors: the warp group's 64 query rows; K's rows as the product's columns
    // (K-major, as the queries); V's rows as its k-steps (transposed: 64-value bands LEAD apart).
    const u64 q_desc = wgmma_descriptor(queries + warp_group * 64 * PFW_BAND, 16, 8 * PFW_BAND);
    const u64 k_desc0 = wgmma_descriptor(0, 16, 8 * PFW_BAND);
    const u64 v_desc0 = wgmma_descriptor(0, KV_BAND, 8 * PFW_BAND);

    if constexpr (FP8) {
        if (steps > 0) widen(0);
    }
    for (u32 i = 0; i < steps; i++) {
        const u32 t0 = kv_lo + i * PF_KV;
        // Step i's rows (copied, or widened by every thread) and the queries, handed to the tensor
        // cores; every thread is past step i-1's products, so stage (i+1) % 2 is free.
        if constexpr (!FP8) cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();
        if (!FP8 && i + 1 < steps) issue(i + 1);
        const u32 ks = staged + (i % 2) * 2 * TILE_BYTES, vs = ks + TILE_BYTES;

        // S = Q·Kᵀ over the eight k-steps of the two bands (32 bytes a k-step inside a band).
        float s[PF_KV / 8][4];
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            const u32 k_off = (kk % 4) * 32;
            wgmma_m64n64k16_ss<FP8>(s, q_desc + (((kk / 4) * Q_BAND + k_off) >> 4),
                                    k_desc0 + (((ks + (kk / 4) * KV_BAND + k_off) & 0x3ffff) >> 4), kk > 0);
        }
        wgmma_commit();
        wgmma_wait_all();
#pragma unroll
        for (int j = 0; j < PF_KV / 8; j++) {
#pragma unroll
            for (int c = 0; c < 4; c++) wgmma_hold(s[j][c]);
        }

        const bool masked = t0 + PF_KV > split_end || t0 + PF_KV - 1 > pos0 || (window > 0 && t0 + (u32)window <= last_row_pos);
        prefill_softmax_step<DTILES>(s, o, m, l, row_pos, masked, t0, split_end, window, scale_log2, t);

        // O += P·V, sixteen positions a k-step (two bands of V's rows, 1,024 bytes an eight).
        u32 pa[PF_KV / 16][4];
#pragma unroll
        for (int k16 = 0; k16 < PF_KV / 16; k16++) probabilities_fragment<FP8>(pa[k16], s[2 * k16], s[2 * k16 + 1]);
#pragma unroll
        for (int n = 0; n < DTILES; n++) {
#pragma unroll
            for (int c = 0; c < 4; c++) wgmma_hold(o[n][c]);
        }
        wgmma_fence();
#pragma unroll
        for (int k16 = 0; k16 < PF_KV / 16; k16++) {
            wgmma_m64n128k16_rs<FP8>(o, pa[k16], v_desc0 + (((vs + k16 * 16 * PFW_BAND) & 0x3ffff) >> 4));
        }
        wgmma_commit();
        if constexpr (FP8) {
            if (i + 1 < steps) widen(i + 1);
        }
        wgmma_wait_all();
#pragma unroll
        for (int n = 0; n < DTILES; n++) {
#pragma unroll
            for (int c = 0; c < 4; c++) wgmma_hold(o[n][c]);
        }
#pragma unroll
        for (int k16 = 0; k16 < PF_KV / 16; k16++) {
#pragma unroll
            for (int c = 0; c < 4; c++) wgmma_hold_operand(pa[k16][c]);
        }
    }

#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int r = row_of(h);
        prefill_write_row<HD>(o, h, m[h], l[h], row_pos[h], r < rows ? query_of(r) : ~0ull, t, split, splits, split_start, out, part_acc,
                              part_ml);
    }
}

#define ATTENTION_PREFILL_ENTRY(HD, NAME, FP8)                                                                                     \
    extern "C" __global__ void __launch_bounds__(PF_THREADS, 2)                                                                      \
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
ATTENTION_PREFILL_ENTRY(32, fp8, true)
ATTENTION_PREFILL_ENTRY(64, fp8, true)

#define ATTENTION_PREFILL_WGMMA_ENTRY(NAME, FP8)                                                                                   \
    extern "C" __global__ void __launch_bounds__(PFW_THREADS, 2)                                                                     \
        attention_prefill_hd128_##NAME(const bf16* q, const void* k_cache, const void* v_cache, int kv_fp8, const u32* tiles,      \
                                       const u32* table_offsets, const u32* table_data, int heads, int kv_heads, int block_size,     \
                                       int window, const bf16* sinks, float scale_log2, const u32* split_size, bf16* out,           \
                                       float* part_acc, float* part_ml) {                                                           \
        pdl_begin();                                                                                                                \
        attention_prefill_wgmma_impl<FP8>(q, k_cache, v_cache, tiles, table_offsets, table_data, heads, kv_heads, block_size, window, \
                                          sinks, scale_log2, split_size, out, part_acc, part_ml);                                   \
    }

ATTENTION_PREFILL_WGMMA_ENTRY(bf16, false)
ATTENTION_PREFILL_WGMMA_ENTRY(fp8, true)
