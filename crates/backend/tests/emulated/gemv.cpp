// The bf16 GEMV (gemv.cu) against double-precision products for 1 to 4 rows, with 1, 2, 4 and 8
// warps sharing each row's k, and its fused SwiGLU form against the plain product's halves
// through silu_mul, bit for bit, for 48 outputs of 96 and 1,000 values (k not a multiple of the
// unrolled step, nor of the shares); and the decode experts' product (moe_gemv), with 1 to 8
// warps sharing each weight row, against double-precision products, and with its fused SwiGLU
// and clamped SwiGLU against the plain product through silu_mul and clamped_swiglu, bit for bit,
// over slots routed to experts with and without biases; and the same for the tensor-core GEMV
// (gemv_tc and gemv_tc_swiglu), whose blocks take 16 rows, over rows of 96 and 1,000 values (a
// last chunk of 8) and 80 outputs (a partial block of the 40 gate rows). Exits non-zero otherwise.
#include "emu.h"
#include "kernels.cu"

// moe_gemv over 6 slots of 3 tokens routed to 4 experts (two with biases, as GPT-OSS's), 40
// activated outputs of 1,000 inputs, with `split` warps a weight row: the plain product (80 rows)
// against double precision, and each fused activation against the plain product then the
// activation kernel, bit for bit.
int check_expert_products(Rng& rng, int split) {
    const int experts = 4, slots = 6, top = 2, f = 40, k = 1000;
    std::vector<std::vector<bf16>> w(experts, std::vector<bf16>(2 * f * k)), b(experts, std::vector<bf16>(2 * f));
    std::vector<u64> weights(experts), biases(experts);
    for (int e = 0; e < experts; e++) {
        for (auto& v : w[e]) v = f2bf(rng.next() * 4.f / sqrtf((float)k));
        for (auto& v : b[e]) v = f2bf(rng.next());
        weights[e] = (u64)w[e].data();
        biases[e] = e % 2 ? (u64)b[e].data() : 0;
    }
    std::vector<bf16> x(slots / top * k);
    for (auto& v : x) v = f2bf(rng.next() * 2.f);
    const std::vector<u32> routed = {0, 3, 1, 0, 3, 2};
    const auto blocks = [&](int rows, int halves) { return (unsigned)((rows + 8 / (split * halves) - 1) / (8 / (split * halves))); };
    std::vector<bf16> gate_up(slots * 2 * f, 0xffff);
    launch(moe_gemv, {blocks(2 * f, 1), (unsigned)slots}, 256, x.data(), top, routed.data(), weights.data(), biases.data(), 2 * f, k, 0,
           0.f, 0.f, 1, split, gate_up.data());
    double worst = 0;
    for (int s = 0; s < slots; s++)
        for (int o = 0; o < 2 * f; o++) {
            const int e = routed[s];
            double want = biases[e] ? bf2f(b[e][o]) : 0.;
            for (int i = 0; i < k; i++) want += (double)bf2f(x[s / top * k + i]) * bf2f(w[e][o * k + i]);
            worst = std::max(worst, std::fabs(bf2f(gate_up[s * 2 * f + o]) - want) / std::max(std::fabs(want), 1e-1));
        }
    int failures = worst > 8e-3;
    printf("experts' product, %d warps a row: within %.1e relative%s\n", split, worst, worst > 8e-3 ? "  FAILED" : "");
    for (int activation : {1, 2}) {
        if (2 * split > 8) break;
        const float alpha = 1.702f, limit = 2.f;
        std::vector<bf16> plain(slots * f, 0xffff), fused(slots * f, 0xffff);
        if (activation == 1) launch(silu_mul, {1, (unsigned)slots}, 256, gate_up.data(), (const float*)nullptr, f, plain.data());
        else launch(clamped_swiglu, {1, (unsigned)slots}, 256, gate_up.data(), f, alpha, limit, plain.data());
        launch(moe_gemv, {blocks(f, 2), (unsigned)slots}, 256, x.data(), top, routed.data(), weights.data(), biases.data(), f, k,
               activation, alpha, limit, 0, split, fused.data());
        int differ = 0, clamped = 0;
        for (int i = 0; i < slots * f; i++) differ += fused[i] != plain[i];
        for (int s = 0; s < slots; s++)
            for (int i = 0; i < f; i++) clamped += fabsf(bf2f(gate_up[s * 2 * f + f + i])) > limit;
        const bool ok = differ == 0 && (activation == 1 || clamped > 0);
        printf("experts' %s, %d warps a row: %d of %d fused values differ (%d up values past the clamp)%s\n",
               activation == 1 ? "SwiGLU" : "clamped SwiGLU", split, differ, slots * f, clamped, ok ? "" : "  FAILED");
        failures += !ok;
    }
    return failures;
}

int main() {
    Rng rng{555};
    int failures = 0;
    for (int k : {96, 1000})
        for (int t : {1, 2, 4})
            for (int split : {0, 1, 2, 4, 8}) {
            // split 0: gemv_tc, 16 rows a block, over 80 outputs (a partial block of the 40 gate rows).
            const int n = split ? 48 : 80, f = n / 2;
            const unsigned rows_per_block = split ? 8 / split : GTC_ROWS;
            std::vector<bf16> x(t * k), w(n * k);
            for (auto& v : x) v = f2bf(rng.next());
            for (auto& v : w) v = f2bf(rng.next() / sqrtf((float)k));
            std::vector<bf16> y(t * n, 0xffff), fused(t * f, 0xffff), activated(t * f, 0xffff);
            if (split) {
                launch(gemv, {(n + rows_per_block - 1) / rows_per_block}, 256, x.data(), w.data(), t, n, k, (void*)y.data(), 0, 0, split);
                launch(gemv, {(f + rows_per_block - 1) / rows_per_block}, 256, x.data(), w.data(), t, f, k, (void*)fused.data(), 0, 1, split);
            } else {
                launch(gemv_tc, {(n + rows_per_block - 1) / rows_per_block}, GTC_THREADS, x.data(), w.data(), t, n, k, (void*)y.data(), 0);
                launch(gemv_tc_swiglu, {(f + rows_per_block - 1) / rows_per_block}, GTC_THREADS, x.data(), w.data(), t, f, k, (void*)fused.data(),
                       0);
            }
            launch(silu_mul, {1, (unsigned)t}, 256, y.data(), (const float*)nullptr, f, activated.data());
            double worst = 0;
            for (int r = 0; r < t; r++)
                for (int o = 0; o < n; o++) {
                    double want = 0;
                    for (int i = 0; i < k; i++) want += (double)bf2f(x[r * k + i]) * bf2f(w[o * k + i]);
                    worst = std::max(worst, std::fabs(bf2f(y[r * n + o]) - want) / std::max(std::fabs(want), 1e-2));
                }
            int differ = 0;
            for (int i = 0; i < t * f; i++) differ += fused[i] != activated[i];
            const bool ok = worst <= 8e-3 && differ == 0;
            printf("%d rows of %4d, %d warps a row (0: tensor cores): GEMV within %.1e relative, %d fused SwiGLU values differ%s\n", t, k, split, worst, differ,
                   ok ? "" : "  FAILED");
            failures += !ok;
        }
    for (int split : {1, 2, 4, 8}) failures += check_expert_products(rng, split);
    return failures != 0;
}
