// The tensor-core prefill attention (attention_prefill.cu) against softmax(q·kᵀ/√d)·v in double
// precision over the same stored values: prefill chunks of several sequences, some continuing
// a context already in the cache (a chunk's first tile starts past position 0), over scattered
// cache blocks of 16 and of 5 positions; head sizes 32, 64 and 128, GQA groups 1, 3, 4 and 8, a
// bf16 and an FP8 cache, one and several KV splits (merged by `attention_combine`), sliding
// windows shorter and longer than a step, and attention sinks; and a decode token split on its own
// beside unsplit prefill chunks (mixed_step). Every output within 1e-2 of the reference (the
// probabilities are rounded to bf16 or f16 before P·V, the output to bf16) and none left
// unwritten; exits non-zero otherwise.
#include "emu.h"
#include "kernels.cu"
#include "random_values.h"

static Rng rng{4242};

struct Case {
    int hd, heads, kv_heads, window, block_size;
    unsigned split;  // positions a KV split; 0: one split
    bool fp8, sinks;
};

// Sequence s had done[s] positions cached and now runs chunk[s] more: the step's tokens are the
// chunks one after another; each sequence's blocks are scattered over `cache_blocks`.
struct Chunks {
    std::vector<int> done, chunk;
    std::vector<u32> table, offsets{0}, tiles, positions;
    int tokens = 0, max_ctx = 0;
    Chunks(std::vector<int> done_, std::vector<int> chunk_, int block_size, int per_tile, int cache_blocks)
        : done(std::move(done_)), chunk(std::move(chunk_)) {
        int used = 0;
        for (int s = 0; s < (int)done.size(); s++) {
            const int ctx = done[s] + chunk[s], blocks = (ctx + block_size - 1) / block_size;
            for (int b = 0; b < blocks; b++) table.push_back((u32)((used + b) * 7 % cache_blocks));
            used += blocks;
            offsets.push_back((u32)table.size());
            for (int off = 0; off < chunk[s]; off += per_tile)
                tiles.insert(tiles.end(), {(u32)s, (u32)(tokens + off), (u32)std::min(per_tile, chunk[s] - off), (u32)(done[s] + off)});
            for (int i = 0; i < chunk[s]; i++) positions.push_back((u32)(done[s] + i));
            tokens += chunk[s];
            max_ctx = std::max(max_ctx, ctx);
        }
    }
};

// The worst error of the step's outputs against each token's double-precision attention over the
// stored cache (`sinks`: each head's sink logit, or null).
static double step_error(const Case& c, const Chunks& step, const RandomCache& cache, const std::vector<bf16>& q,
                         const std::vector<bf16>& out, const bf16* sinks) {
    const int hd = c.hd, group = c.heads / c.kv_heads, block_size = c.block_size;
    double worst = 0;
    int token = 0;
    for (int s = 0; s < (int)step.done.size(); s++) {
        for (int i = 0; i < step.chunk[s]; i++, token++) {
            const int pos = step.done[s] + i, lo = c.window > 0 ? std::max(0, pos + 1 - c.window) : 0;
            for (int h = 0; h < c.heads; h++) {
                const int kvh = h / group;
                auto at = [&](int p) {
                    return (((size_t)step.table[step.offsets[s] + p / block_size] * c.kv_heads + kvh) * block_size + p % block_size) * hd;
                };
                const size_t row = ((size_t)token * c.heads + h) * hd;
                worst = std::max(worst, attention_error(&out[row], &q[row], cache.k, cache.v, at, lo, pos, hd, sinks ? &sinks[h] : nullptr));
            }
        }
    }
    return worst;
}

template <class K>
static double prefill_step(const Case& c, K kernel) {
    const int hd = c.hd, group = c.heads / c.kv_heads, block_size = c.block_size, cache_blocks = 211;
    const Chunks step({0, 100, 5, 0, 62, 191}, {70, 37, 130, 2, 9, 66}, block_size, PF_ROWS / group, cache_blocks);
    const RandomCache cache(rng, (size_t)cache_blocks * c.kv_heads * block_size * hd, c.fp8);
    auto q = random_bf16(rng, (size_t)step.tokens * c.heads * hd, 2.f);
    auto sinks = random_bf16(rng, c.heads, 3.f, 3.f);
    const u32 split = c.split ? c.split : (u32)step.max_ctx;
    const unsigned splits = (step.max_ctx + split - 1) / split;
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)hd);

    std::vector<bf16> out((size_t)step.tokens * c.heads * hd, f2bf(NAN));
    std::vector<float> part_acc((size_t)step.tokens * c.heads * splits * hd, NAN), part_ml((size_t)step.tokens * c.heads * splits * 2, NAN);
    const void *k = cache.k_store(), *v = cache.v_store();
    launch(kernel, {(unsigned)step.tiles.size() / 4, (unsigned)c.kv_heads, splits}, hd == 128 ? PFW_THREADS : PF_THREADS, q.data(), k, v, (int)c.fp8, step.tiles.data(),
           step.offsets.data(), step.table.data(), c.heads, c.kv_heads, block_size, c.window, c.sinks ? sinks.data() : (const bf16*)nullptr,
           scale_log2, &split, out.data(), part_acc.data(), part_ml.data());
    if (splits > 1)
        launch(attention_combine, {(unsigned)step.tokens, (unsigned)c.heads}, hd, part_acc.data(), part_ml.data(), step.positions.data(),
               c.heads, hd, (int)splits, &split, out.data());

    return step_error(c, step, cache, q, out, c.sinks ? sinks.data() : nullptr);
}

// A step of one decode token (a sequence at position 80) before two prefill chunks, launched as
// the runner launches a step whose decode tiles split on their own: the decode tile on the
// CUDA-core kernel in KV splits of 32 positions, the prefill tiles on the tensor-core kernel in
// one split (reading every position whatever the split size says), attention_combine over the
// decode token only. The worst error of every token against the reference.
template <class K, class D>
static double mixed_step(const Case& c, K prefill, D decode) {
    const int hd = c.hd, group = c.heads / c.kv_heads, block_size = c.block_size, cache_blocks = 211;
    const Chunks step({80, 0, 62}, {1, 70, 66}, block_size, PF_ROWS / group, cache_blocks);
    const RandomCache cache(rng, (size_t)cache_blocks * c.kv_heads * block_size * hd, c.fp8);
    auto q = random_bf16(rng, (size_t)step.tokens * c.heads * hd, 2.f);
    const u32 split = 32;
    const unsigned decode_splits = (81 + split - 1) / split;
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)hd);
    std::vector<bf16> out((size_t)step.tokens * c.heads * hd, f2bf(NAN));
    std::vector<float> part_acc((size_t)c.heads * decode_splits * hd, NAN), part_ml((size_t)c.heads * decode_splits * 2, NAN);
    const void *k = cache.k_store(), *v = cache.v_store();
    launch(decode, {1, (unsigned)c.kv_heads, decode_splits}, ATT_THREADS, q.data(), k, v, (int)c.fp8, step.tiles.data(), step.offsets.data(),
           step.table.data(), c.heads, c.kv_heads, block_size, c.window, (const bf16*)nullptr, scale_log2, &split, out.data(),
           part_acc.data(), part_ml.data());
    launch(prefill, {(unsigned)step.tiles.size() / 4 - 1, (unsigned)c.kv_heads, 1}, hd == 128 ? PFW_THREADS : PF_THREADS, q.data(), k, v, (int)c.fp8,
           step.tiles.data() + 4, step.offsets.data(), step.table.data(), c.heads, c.kv_heads, block_size, c.window, (const bf16*)nullptr,
           scale_log2, &split, out.data(), part_acc.data(), part_ml.data());
    launch(attention_combine, {1, (unsigned)c.heads}, hd, part_acc.data(), part_ml.data(), step.positions.data(), c.heads, hd,
           (int)decode_splits, &split, out.data());
    return step_error(c, step, cache, q, out, nullptr);
}

int main() {
    const Case cases[] = {
        {128, 8, 2, 0, 16, 0, false, false},  {128, 8, 2, 0, 16, 64, true, false}, {128, 8, 1, 0, 5, 0, true, false},
        {64, 3, 3, 0, 16, 64, false, false},  {64, 8, 1, 48, 16, 0, false, true},  {64, 8, 2, 100, 5, 64, true, true},
        {32, 4, 1, 0, 5, 128, true, false},   {32, 8, 2, 0, 16, 0, false, true},   {128, 4, 1, 20, 16, 32, false, true},
        {64, 9, 3, 0, 16, 96, false, false},
    };
    int failures = 0;
    for (const Case& c : cases) {
        auto kernel = c.hd == 128 ? (c.fp8 ? attention_prefill_hd128_fp8 : attention_prefill_hd128_bf16)
                      : c.hd == 64 ? (c.fp8 ? attention_prefill_hd64_fp8 : attention_prefill_hd64_bf16)
                                   : (c.fp8 ? attention_prefill_hd32_fp8 : attention_prefill_hd32_bf16);
        const double worst = prefill_step(c, kernel);
        const bool ok = worst <= 1e-2;
        printf("head size %3d, heads %d/%d, window %3d, blocks of %2d, splits of %3u, %s cache%s: worst error %.2e%s\n", c.hd, c.heads,
               c.kv_heads, c.window, c.block_size, c.split, c.fp8 ? "FP8 " : "bf16", c.sinks ? ", sinks" : "", worst, ok ? "" : "  FAILED");
        failures += !ok;
    }
    const Case mixed[] = {{128, 8, 2, 0, 16, 0, false, false}, {64, 8, 1, 48, 5, 0, true, false}};
    for (const Case& c : mixed) {
        const double worst = c.hd == 128 ? mixed_step(c, attention_prefill_hd128_bf16, attention_hd128_r1)
                                         : mixed_step(c, attention_prefill_hd64_fp8, attention_hd64_r4);
        const bool ok = worst <= 1e-2;
        printf("a decode token split alone before prefill chunks, head size %d, heads %d/%d, %s cache: worst error %.2e%s\n", c.hd,
               c.heads, c.kv_heads, c.fp8 ? "FP8" : "bf16", worst, ok ? "" : "  FAILED");
        failures += !ok;
    }
    return failures != 0;
}
