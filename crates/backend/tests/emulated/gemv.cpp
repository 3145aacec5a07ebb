// The bf16 GEMV (gemv.cu) against double-precision products for 1 to 4 rows, and its fused
// SwiGLU form against the plain product's halves through silu_mul, bit for bit, for 40 outputs
// of 96 and 1,000 values (k not a multiple of the unrolled step). Exits non-zero otherwise.
#include "emu.h"
#include "kernels.cu"

int main() {
    Rng rng{555};
    int failures = 0;
    for (int k : {96, 1000})
        for (int t : {1, 2, 4}) {
            const int n = 48, f = n / 2;
            std::vector<bf16> x(t * k), w(n * k);
            for (auto& v : x) v = f2bf(rng.next());
            for (auto& v : w) v = f2bf(rng.next() / sqrtf((float)k));
            std::vector<bf16> y(t * n, 0xffff), fused(t * f, 0xffff), activated(t * f, 0xffff);
            launch(gemv, {(unsigned)(n + 7) / 8}, 256, x.data(), w.data(), t, n, k, (void*)y.data(), 0, 0);
            launch(gemv, {(unsigned)(f + 7) / 8}, 256, x.data(), w.data(), t, f, k, (void*)fused.data(), 0, 1);
            launch(silu_mul, {1, (unsigned)t}, 256, y.data(), f, activated.data());
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
            printf("%d rows of %4d: GEMV within %.1e relative, %d fused SwiGLU values differ%s\n", t, k, worst, differ, ok ? "" : "  FAILED");
            failures += !ok;
        }
    return failures != 0;
}
