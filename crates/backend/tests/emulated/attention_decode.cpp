// The tensor-core decode attention (attention_decode.cu) against softmax(q·kᵀ/√d)·v in double
// precision over the same stored values: decode steps of several sequences (contexts of 1 to 200
// positions over scattered cache blocks), head sizes 32, 64 and 128, GQA groups 1, 4 and 8, a bf16
// and an FP8 cache, one and several KV splits (merged by `attention_combine`), a sliding window
// and attention sinks. Every output within 1e-2 of the reference (the probabilities are rounded to
// bf16 or f16 before P·V, the output to bf16) and none left unwritten; exits non-zero otherwise.
#include "emu.h"
#include "kernels.cu"
#include "random_values.h"

static Rng rng{1618};

struct Case {
    int hd, heads, kv_heads, window;
    unsigned split;  // positions a KV split; 0: one split
    bool fp8, sinks;
};

template <class K>
static double decode_step(const Case& c, K kernel, const std::vector<int>& lens) {
    const int block_size = 16, seqs = (int)lens.size(), hd = c.hd, group = c.heads / c.kv_heads;
    const DecodeStep step(lens, block_size, 53, 11);
    const auto &table = step.table, &offsets = step.offsets, &tiles = step.tiles, &positions = step.positions;
    const int max_ctx = step.max_ctx;
    const RandomCache cache(rng, (size_t)53 * c.kv_heads * block_size * hd, c.fp8);
    auto q = random_bf16(rng, (size_t)seqs * c.heads * hd, 1.f);
    auto sinks = random_bf16(rng, c.heads, 3.f, 3.f);
    const u32 split = c.split ? c.split : (u32)max_ctx;
    const unsigned splits = (max_ctx + split - 1) / split;
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)hd);

    std::vector<bf16> out((size_t)seqs * c.heads * hd, f2bf(NAN));
    std::vector<float> part_acc((size_t)seqs * c.heads * splits * hd, NAN), part_ml((size_t)seqs * c.heads * splits * 2, NAN);
    const void *k = cache.k_store(), *v = cache.v_store();
    launch(kernel, {(unsigned)seqs, (unsigned)c.kv_heads, splits}, DEC_THREADS, q.data(), k, v, (int)c.fp8, tiles.data(), offsets.data(),
           table.data(), c.heads, c.kv_heads, block_size, c.window, c.sinks ? sinks.data() : (const bf16*)nullptr, scale_log2, &split,
           out.data(), part_acc.data(), part_ml.data());
    if (splits > 1)
        launch(attention_combine, {(unsigned)seqs, (unsigned)c.heads}, hd, part_acc.data(), part_ml.data(), positions.data(), c.heads, hd,
               (int)splits, &split, out.data());

    double worst = 0;
    for (int s = 0; s < seqs; s++) {
        const int pos = lens[s] - 1, lo = c.window > 0 ? std::max(0, pos + 1 - c.window) : 0;
        for (int h = 0; h < c.heads; h++) {
            const int kvh = h / group;
            auto at = [&](int p) { return (((size_t)table[offsets[s] + p / block_size] * c.kv_heads + kvh) * block_size + p % block_size) * hd; };
            const size_t row = ((size_t)s * c.heads + h) * hd;
            worst = std::max(worst, attention_error(&out[row], &q[row], cache.k, cache.v, at, lo, pos, hd, c.sinks ? &sinks[h] : nullptr));
        }
    }
    return worst;
}

int main() {
    const std::vector<int> lens = {1, 9, 70, 133, 200};
    const Case cases[] = {
        {128, 8, 2, 0, 0, false, false}, {128, 8, 2, 0, 64, true, false}, {128, 8, 1, 0, 0, true, false},
        {64, 3, 3, 0, 64, false, false}, {64, 8, 1, 48, 0, false, true},  {64, 8, 2, 40, 64, true, true},
        {32, 4, 1, 0, 128, true, false}, {32, 8, 2, 0, 0, false, true},   {128, 4, 1, 0, 32, false, true},
    };
    int failures = 0;
    for (const Case& c : cases) {
        auto kernel = c.hd == 128 ? (c.fp8 ? attention_decode_hd128_fp8 : attention_decode_hd128_bf16)
                      : c.hd == 64 ? (c.fp8 ? attention_decode_hd64_fp8 : attention_decode_hd64_bf16)
                                   : (c.fp8 ? attention_decode_hd32_fp8 : attention_decode_hd32_bf16);
        const double worst = decode_step(c, kernel, lens);
        const bool ok = worst <= 1e-2;
        printf("head size %3d, heads %d/%d, window %2d, splits of %3u, %s cache%s: worst error %.2e%s\n", c.hd, c.heads, c.kv_heads,
               c.window, c.split, c.fp8 ? "FP8 " : "bf16", c.sinks ? ", sinks" : "", worst, ok ? "" : "  FAILED");
        failures += !ok;
    }
    return failures != 0;
}
