// The CUDA-core attention (attention.cu, both variants: one and four rows a warp) reading an FP8
// E4M3 cache against the same kernel reading a bf16 cache that holds the same values (every E4M3
// value is a bf16 value): the outputs must agree bit for bit, for decode steps of several
// sequences over non-contiguous block tables, with one and several KV splits. Exits non-zero
// otherwise.
#include "emu.h"
#include "kernels.cu"
#include "random_values.h"

static Rng rng{2718};

// One decode step of `seqs` sequences whose contexts end at `lens`, head size 64, 8 query heads
// over 2 KV heads; returns how many output values differ between the two caches or were not
// written.
static int decode_step(const std::vector<int>& lens, u32 split_tokens, bool four_rows) {
    const int heads = 8, kv_heads = 2, hd = 64, block_size = 16, seqs = (int)lens.size();
    const DecodeStep step(lens, block_size, 97, 7);
    const auto &table = step.table, &offsets = step.offsets, &tiles = step.tiles, &positions = step.positions;
    const int max_ctx = step.max_ctx;
    const size_t values = (size_t)97 * kv_heads * block_size * hd;
    std::vector<unsigned char> k8(values), v8(values);
    std::vector<bf16> k16(values), v16(values);
    for (size_t i = 0; i < values; i++) {
        k8[i] = emu_to_e4m3(rng.next() * 3.f);
        v8[i] = emu_to_e4m3(rng.next() * 3.f);
        k16[i] = f2bf(emu_from_e4m3(k8[i]));
        v16[i] = f2bf(emu_from_e4m3(v8[i]));
    }
    auto q = random_bf16(rng, (size_t)seqs * heads * hd, 1.f);
    const unsigned splits = (max_ctx + split_tokens - 1) / split_tokens;
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)hd);
    auto run = [&](const void* k, const void* v, int fp8) {
        std::vector<bf16> out((size_t)seqs * heads * hd, f2bf(NAN));
        std::vector<float> part_acc((size_t)seqs * heads * splits * hd, NAN), part_ml((size_t)seqs * heads * splits * 2, NAN);
        launch(four_rows ? attention_hd64_r4 : attention_hd64_r1, {(unsigned)seqs, (unsigned)kv_heads, splits}, ATT_THREADS, q.data(), k, v,
               fp8, tiles.data(), offsets.data(), table.data(), heads, kv_heads, block_size, 0, (const bf16*)nullptr, scale_log2,
               &split_tokens, out.data(), part_acc.data(), part_ml.data());
        if (splits > 1)
            launch(attention_combine, {(unsigned)seqs, (unsigned)heads}, hd, part_acc.data(), part_ml.data(), positions.data(), heads, hd,
                   (int)splits, &split_tokens, out.data());
        return out;
    };
    const auto from_fp8 = run(k8.data(), v8.data(), 1), from_bf16 = run(k16.data(), v16.data(), 0);
    int differ = 0, unwritten = 0;
    for (size_t i = 0; i < from_bf16.size(); i++) {
        differ += from_fp8[i] != from_bf16[i];
        unwritten += std::isnan(bf2f(from_bf16[i]));
    }
    return differ + unwritten;
}

int main() {
    int failures = 0;
    for (bool four_rows : {false, true})
        for (u32 split : {32u, 64u, 256u}) {
            const int differ = decode_step({5, 70, 33, 129}, split, four_rows);
            printf("%s rows a warp, KV splits of %3u: %d output values differ between the FP8 and bf16 caches%s\n", four_rows ? "four" : " one",
                   split, differ, differ ? "  FAILED" : "");
            failures += differ != 0;
        }
    return failures != 0;
}
