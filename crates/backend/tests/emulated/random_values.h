// Test values and references for the emulated checks, after kernels.cu (which defines bf16):
// random bf16 values and caches, a decode step's paged layout, and attention in double precision.
#pragma once
#include <cmath>
#include <vector>

// `n` bf16 values offset + scale · r, r drawn from `rng` in [-1, 1).
inline std::vector<bf16> random_bf16(Rng& rng, size_t n, float scale, float offset = 0) {
    std::vector<bf16> v(n);
    for (auto& x : v) x = f2bf(offset + scale * rng.next());
    return v;
}

// A paged K/V cache of `values` random values in [-1, 1), stored as E4M3 codes (`fp8`) or as
// bf16, and the values the store holds, in double precision, for a reference.
struct RandomCache {
    bool fp8;
    std::vector<unsigned char> k8, v8;
    std::vector<bf16> k16, v16;
    std::vector<double> k, v;
    RandomCache(Rng& rng, size_t values, bool fp8_) : fp8(fp8_), k8(values), v8(values), k16(values), v16(values), k(values), v(values) {
        for (size_t i = 0; i < values; i++) {
            const float kr = rng.next(), vr = rng.next();
            k8[i] = emu_to_e4m3(kr);
            v8[i] = emu_to_e4m3(vr);
            k16[i] = fp8 ? f2bf(emu_from_e4m3(k8[i])) : f2bf(kr);
            v16[i] = fp8 ? f2bf(emu_from_e4m3(v8[i])) : f2bf(vr);
            k[i] = bf2f(k16[i]);
            v[i] = bf2f(v16[i]);
        }
    }
    const void* k_store() const { return fp8 ? (const void*)k8.data() : (const void*)k16.data(); }
    const void* v_store() const { return fp8 ? (const void*)v8.data() : (const void*)v16.data(); }
};

// A decode step of one token per sequence over a paged cache of `cache_blocks` blocks: sequence s
// holds lens[s] positions in blocks scattered by `stride` (block b of the step's run is cache
// block b · stride mod cache_blocks), in attention.cu's tile and block-table formats.
struct DecodeStep {
    std::vector<u32> table, offsets{0}, tiles, positions;
    int max_ctx = 0;
    DecodeStep(const std::vector<int>& lens, int block_size, int cache_blocks, int stride) {
        int used = 0;
        for (int s = 0; s < (int)lens.size(); s++) {
            const int blocks = (lens[s] + block_size - 1) / block_size;
            for (int b = 0; b < blocks; b++) table.push_back((u32)((used + b) * stride % cache_blocks));
            used += blocks;
            offsets.push_back((u32)table.size());
            tiles.insert(tiles.end(), {(u32)s, (u32)s, 1u, (u32)(lens[s] - 1)});
            positions.push_back((u32)(lens[s] - 1));
            max_ctx = std::max(max_ctx, lens[s]);
        }
    }
};

// The worst distance between a bf16 attention output `got` (hd values; NaN counts as infinitely
// far) and softmax(q·kᵀ/√hd)·v in double precision over positions lo..pos, whose K and V rows
// start at at(p) in `k` and `v`; a non-null `sink` logit joins the softmax's denominator.
template <class At>
double attention_error(const bf16* got, const bf16* q, const std::vector<double>& k, const std::vector<double>& v, At at, int lo, int pos,
                       int hd, const bf16* sink) {
    std::vector<double> score;
    double mx = sink ? (double)bf2f(*sink) : -HUGE_VAL;
    for (int p = lo; p <= pos; p++) {
        double dot = 0;
        for (int d = 0; d < hd; d++) dot += (double)bf2f(q[d]) * k[at(p) + d];
        score.push_back(dot / std::sqrt((double)hd));
        mx = std::max(mx, score.back());
    }
    double total = sink ? std::exp(bf2f(*sink) - mx) : 0;
    for (double& x : score) total += x = std::exp(x - mx);
    double worst = 0;
    for (int d = 0; d < hd; d++) {
        double want = 0;
        for (int p = lo; p <= pos; p++) want += score[p - lo] / total * v[at(p) + d];
        const float out = bf2f(got[d]);
        worst = std::max(worst, std::isnan(out) ? HUGE_VAL : std::fabs(out - want));
    }
    return worst;
}
