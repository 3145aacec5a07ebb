// rope_kv_write (elementwise.cu) against its definition in double precision: each token's fused
// q|k|v row plus its bias, q and k normed (per head, or over every head of a kind as OLMoE's) and
// rotated by RoPE at the token's position (YaRN's attention factor on the cosines and sines), q
// written out and k, v written to the paged cache at the token's slot, bf16 or FP8 E4M3 (scale
// 1). Shapes: 9 query heads over 3 KV heads of 64 (heads of two kinds in one warp), 32 over 8 of
// 128, 16 over 16 of 128 with full-width norms, 8 over 2 of 32. Every value within a bf16
// rounding of the reference (an E4M3 step for the FP8 cache) and every slot of the cache written
// where it should be, and nowhere else; and the same launch from a qkv product whose rows still
// need their scales (powers of two), handed those scales, must write the same bits; exits non-zero
// otherwise.
#include "emu.h"
#include "kernels.cu"
#include "random_values.h"

static Rng rng{4242};

struct Case {
    int heads, kv_heads, hd;
    bool bias, norm, full_width, fp8;
    float factor;
};

static int check(const Case& c) {
    const int tokens = 3, block_size = 16, blocks = 5, total = c.heads + 2 * c.kv_heads, width = total * c.hd, half = c.hd / 2;
    const std::vector<u32> positions = {0, 37, 99'991}, slots = {3, 70, 45};
    auto qkv = random_bf16(rng, (size_t)tokens * width, 2.f);
    auto bias = random_bf16(rng, width, 0.5f);
    auto q_norm = random_bf16(rng, c.full_width ? c.heads * c.hd : c.hd, 0.5f, 1.f);
    auto k_norm = random_bf16(rng, c.full_width ? c.kv_heads * c.hd : c.hd, 0.5f, 1.f);
    std::vector<double> inv_freq(half);
    for (int i = 0; i < half; i++) inv_freq[i] = std::pow(500000.0, -2.0 * i / c.hd);
    const float eps = 1e-5f;
    const size_t cache_values = (size_t)blocks * c.kv_heads * block_size * c.hd;
    std::vector<bf16> q_out((size_t)tokens * c.heads * c.hd, f2bf(NAN));
    std::vector<bf16> k16(cache_values, f2bf(NAN)), v16(cache_values, f2bf(NAN));
    std::vector<unsigned char> k8(cache_values, 0x7f), v8(cache_values, 0x7f);
    void* k_cache = c.fp8 ? (void*)k8.data() : (void*)k16.data();
    void* v_cache = c.fp8 ? (void*)v8.data() : (void*)v16.data();
    const unsigned per_block = ROPE_THREADS * 8 / c.hd;
    auto run = [&](const std::vector<bf16>& rows, const float* row_scale, bf16* q, void* k, void* v) {
        launch(rope_kv_write, {(unsigned)tokens, (total + per_block - 1) / per_block}, ROPE_THREADS, rows.data(), row_scale,
               c.bias ? bias.data() : (const bf16*)nullptr, c.norm ? q_norm.data() : (const bf16*)nullptr,
               c.norm ? k_norm.data() : (const bf16*)nullptr, (int)c.full_width, eps, positions.data(), slots.data(), inv_freq.data(),
               c.factor, c.heads, c.kv_heads, c.hd, block_size, q, k, v, (int)c.fp8);
    };
    run(qkv, nullptr, q_out.data(), k_cache, v_cache);
    // The product's rows before their scales, with the scales handed over: the same bits.
    const std::vector<float> row_scales = {4.f, 0.125f, 1.f};
    std::vector<bf16> unscaled(qkv.size()), q_later(q_out.size(), f2bf(NAN)), k16_later(k16), v16_later(v16);
    std::vector<unsigned char> k8_later(k8), v8_later(v8);
    for (size_t i = 0; i < qkv.size(); i++) unscaled[i] = f2bf(bf2f(qkv[i]) / row_scales[i / width]);
    for (auto& x : k16_later) x = f2bf(NAN);
    for (auto& x : v16_later) x = f2bf(NAN);
    std::fill(k8_later.begin(), k8_later.end(), 0x7f);
    std::fill(v8_later.begin(), v8_later.end(), 0x7f);
    run(unscaled, row_scales.data(), q_later.data(), c.fp8 ? (void*)k8_later.data() : (void*)k16_later.data(),
        c.fp8 ? (void*)v8_later.data() : (void*)v16_later.data());
    // (Unwritten values are the same NaN bits in both.)
    int bad = (q_later != q_out) + (c.fp8 ? (k8_later != k8) + (v8_later != v8) : (k16_later != k16) + (v16_later != v16));

    std::vector<bool> written(cache_values, false);
    for (int t = 0; t < tokens; t++) {
        std::vector<double> x(width);
        for (int i = 0; i < width; i++) x[i] = bf2f(qkv[(size_t)t * width + i]) + (c.bias ? bf2f(bias[i]) : 0.0);
        for (int kind = 0; kind < 2 && c.norm; kind++) {
            const int first_head = kind ? c.heads : 0, n = kind ? c.kv_heads : c.heads;
            const auto& w = kind ? k_norm : q_norm;
            std::vector<double> scales(n);
            for (int h = 0; h < n; h++) {
                const int lo = c.full_width ? 0 : h, hi = c.full_width ? n : h + 1;
                double square = 0;
                for (int g = lo; g < hi; g++)
                    for (int i = 0; i < c.hd; i++) square += x[(first_head + g) * c.hd + i] * x[(first_head + g) * c.hd + i];
                scales[h] = 1.0 / std::sqrt(square / ((hi - lo) * c.hd) + eps);
            }
            for (int h = 0; h < n; h++) {
                const double scale = scales[h];
                for (int i = 0; i < c.hd; i++)
                    x[(first_head + h) * c.hd + i] *= scale * bf2f(w[(c.full_width ? h * c.hd : 0) + i]);
            }
        }
        for (int h = 0; h < c.heads + c.kv_heads; h++)
            for (int i = 0; i < half; i++) {
                const double angle = positions[t] * inv_freq[i], cs = std::cos(angle) * c.factor, sn = std::sin(angle) * c.factor;
                double& a = x[h * c.hd + i];
                double& b = x[h * c.hd + i + half];
                const double ra = a * cs - b * sn, rb = b * cs + a * sn;
                a = ra;
                b = rb;
            }
        auto near = [&](double want, float got, bool fp8) {
            const double tolerance = fp8 ? 0.13 * std::fabs(want) + 4e-3 : std::fabs(want) / 128 + 1e-3;
            return std::isfinite(got) && std::fabs(got - want) <= tolerance;
        };
        for (int h = 0; h < c.heads; h++)
            for (int i = 0; i < c.hd; i++) bad += !near(x[h * c.hd + i], bf2f(q_out[((size_t)t * c.heads + h) * c.hd + i]), false);
        for (int h = 0; h < 2 * c.kv_heads; h++) {
            const int kvh = h % c.kv_heads;
            const bool is_v = h >= c.kv_heads;
            for (int i = 0; i < c.hd; i++) {
                const size_t at = (((size_t)(slots[t] / block_size) * c.kv_heads + kvh) * block_size + slots[t] % block_size) * c.hd + i;
                const float got = c.fp8 ? emu_from_e4m3((is_v ? v8 : k8)[at]) : bf2f((is_v ? v16 : k16)[at]);
                bad += !near(x[(c.heads + h) * c.hd + i], got, c.fp8);
                if (!is_v) written[at] = true;
            }
        }
    }
    // Nothing else in the cache was touched.
    for (size_t i = 0; i < cache_values; i++)
        if (!written[i]) bad += c.fp8 ? (k8[i] != 0x7f || v8[i] != 0x7f) : (!std::isnan(bf2f(k16[i])) || !std::isnan(bf2f(v16[i])));
    return bad;
}

int main() {
    const Case cases[] = {
        {9, 3, 64, true, true, false, false, 1.f},   {32, 8, 128, true, true, false, false, 1.f}, {16, 16, 128, false, true, true, false, 1.f},
        {8, 2, 32, false, false, false, true, 1.2f}, {8, 2, 128, true, true, false, true, 1.f},
    };
    int failures = 0;
    for (const Case& c : cases) {
        const int bad = check(c);
        printf("heads %2d/%2d of %3d, bias %d, norm %s, %s cache, factor %.1f: %d values off%s\n", c.heads, c.kv_heads, c.hd, c.bias,
               c.norm ? (c.full_width ? "full width" : "per head") : "none", c.fp8 ? "FP8 " : "bf16", c.factor, bad, bad ? "  FAILED" : "");
        failures += bad != 0;
    }
    return failures != 0;
}
