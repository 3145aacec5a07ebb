// The FP8 kernels (fp8.cu) with E4M3 conversions in software (emu.h): quantize_fp8_block gives
// the host rule's scale (the power of two at or above amax / 448) and codes, and gemv_fp8, handed
// the bf16 rows, quantizes them to those same codes itself and multiplies on the (emulated)
// tensor cores: its products equal the double-precision product of the block's codes and the
// weight's codes, times both scales, within the bf16 rounding of the output, for 1, 3 and 4 rows
// of 96 (fewer k steps than warps), 1,024 and 4,128 values (64-byte chunks past the first ones a
// warp loads, and a last step of 32), 48 outputs (a non-finite one fails); and as a fused gate/up
// product its SwiGLU equals the plain product's halves through silu_mul bit for bit, and the
// amax silu_mul writes of its output equals amax_bf16's. Exits non-zero otherwise.
#include "emu.h"
#include "kernels.cu"

int main() {
    Rng rng{2024};
    int failures = 0;
    for (int k : {96, 1024, 4128})
        for (int t : {1, 3, 4}) {
            const int n = 48;
            std::vector<bf16> x(t * k);
            for (int i = 0; i < t * k; i++) x[i] = f2bf(std::ldexp(rng.next(), (i * 7) % 9 - 4));
            std::vector<unsigned char> w(n * k), codes(t * k);
            for (auto& c : w) {
                c = (unsigned char)((rng.next() + 1.f) * 127.5f);
                if ((c & 0x7f) == 0x7f) c ^= 1;
            }
            const float w_scale = 0.0078125f;
            float x_scale = 0;
            launch(quantize_fp8_block, {1}, 1024, x.data(), (u64)(t * k), codes.data(), &x_scale);
            float amax = 0;
            for (bf16 v : x) amax = std::max(amax, std::fabs(bf2f(v)));
            const float want_scale = fp8_scale(amax);
            int code_differs = 0;
            for (int i = 0; i < t * k; i++) code_differs += codes[i] != emu_to_e4m3(bf2f(x[i]) / want_scale);
            std::vector<bf16> y(t * n, 0xffff);
            const int out_f32 = 0;
            launch(gemv_fp8, {(unsigned)(n + F8G_ROWS - 1) / F8G_ROWS}, F8G_THREADS, x.data(), w.data(), &w_scale, t, n, k, (void*)y.data(),
                   out_f32, 0);
            // The same weights as a fused gate/up pair (gate rows 0..23, up rows 24..47), SwiGLU in
            // the same launch (two blocks, the second partial): bit for bit the plain product's
            // halves through silu_mul.
            std::vector<bf16> fused(t * n / 2, 0xffff), activated(t * n / 2, 0xffff);
            launch(gemv_fp8, {(unsigned)(n / 2 + F8G_ROWS - 1) / F8G_ROWS}, F8G_THREADS, x.data(), w.data(), &w_scale, t, n / 2, k,
                   (void*)fused.data(), out_f32, 1);
            // silu_mul also writes its output's amax (two blocks a row, the second without a
            // value): the word amax_bf16 finds in that output.
            u32 act_amax = 0, pass_amax = 0;
            launch(silu_mul, {2, (unsigned)t}, 256, y.data(), n / 2, activated.data(), &act_amax);
            launch(amax_bf16, {3}, 256, activated.data(), (u64)(t * n / 2), &pass_amax);
            const bool amax_differs = act_amax != pass_amax || pass_amax == 0;
            int swiglu_differs = 0;
            for (int i = 0; i < t * n / 2; i++) swiglu_differs += fused[i] != activated[i];
            double worst = 0;
            for (int r = 0; r < t; r++)
                for (int o = 0; o < n; o++) {
                    double dot = 0;
                    for (int i = 0; i < k; i++) dot += (double)emu_from_e4m3(codes[r * k + i]) * emu_from_e4m3(w[o * k + i]);
                    const double want = dot * x_scale * w_scale, got = bf2f(y[r * n + o]);
                    const double error = std::isfinite(got) ? std::fabs(got - want) / std::max(std::fabs(want), 1e-3) : INFINITY;
                    worst = std::max(worst, error);
                }
            const bool ok = x_scale == want_scale && code_differs == 0 && worst <= 8e-3 && swiglu_differs == 0 && !amax_differs;
            printf("%d rows of %4d: scale %g (host %g), %d codes differ, GEMV within %.1e relative, %d fused SwiGLU values differ, "
                   "silu_mul's amax %g (amax_bf16 %g)%s\n",
                   t, k, x_scale, want_scale, code_differs, worst, swiglu_differs, __uint_as_float(act_amax), __uint_as_float(pass_amax),
                   ok ? "" : "  FAILED");
            failures += !ok;
        }
    return failures != 0;
}
