// The FP8 kernels (fp8.cu, and the SwiGLU that writes codes, elementwise.cu) with E4M3 conversions
// in software (emu.h): quantize_fp8_rows gives every row the host rule's scale (the power of two at
// or above the row's amax / 448) and codes; gemv_fp8, handed the bf16 rows, quantizes each to those
// same codes itself and multiplies on the (emulated) tensor cores: its products equal the
// double-precision product of the row's codes and the weight's codes, times the row's and the
// weight's scales, within the bf16 rounding of the output, for 1, 3 and 4 rows (their magnitudes
// 2^3 apart, the largest of each at its end) of 96 (fewer k steps than warps), 1,024, 4,096,
// 4,128, 8,224 and 16,352 values (64-byte chunks past the first ones a warp loads, and a last step
// of 32; the kernels for k up to 4,096, 8,192 and 16,384, each at its bound), 48 outputs (a non-finite one fails); as a fused
// gate/up product (gemv_fp8_swiglu) its SwiGLU equals the plain product's halves through silu_mul bit for bit; and
// silu_mul_fp8 writes, bit for bit, the codes and scales that quantize_fp8_rows makes of
// silu_mul's output, for rows of 24, 1,032 and 14,336 values (each row's largest value at its
// end) in blocks of the size kernels.rs gives them; handed a gate/up product whose rows still need
// their scales (powers of two) and those scales, silu_mul and silu_mul_fp8 write what they write
// from the scaled product, bit for bit, and scale_rows gives back the scaled product. Exits non-zero otherwise.
#include "emu.h"
#include "kernels.cu"

int main() {
    Rng rng{2024};
    int failures = 0;
    for (int k : {96, 1024, 4096, 4128, 8224, 16352})
        for (int t : {1, 3, 4}) {
            const int n = 48;
            std::vector<bf16> x(t * k);
            for (int i = 0; i < t * k; i++) x[i] = f2bf(std::ldexp(rng.next(), (i * 7) % 9 - 4 + 3 * (i / k)));
            // Each row's largest magnitude at its end, in the last group of eight a thread holds.
            for (int r = 0; r < t; r++) x[r * k + k - 1] = f2bf(std::ldexp(-1.f, 6 + 3 * r));
            std::vector<unsigned char> w(n * k), codes(t * k);
            for (auto& c : w) {
                c = (unsigned char)((rng.next() + 1.f) * 127.5f);
                if ((c & 0x7f) == 0x7f) c ^= 1;
            }
            const float w_scale = 0.0078125f;
            std::vector<float> x_scale(t, 0.f);
            launch(quantize_fp8_rows, {(unsigned)t}, 256, x.data(), k, codes.data(), x_scale.data());
            int code_differs = 0, scale_differs = 0;
            for (int r = 0; r < t; r++) {
                float amax = 0;
                for (int i = 0; i < k; i++) amax = std::max(amax, std::fabs(bf2f(x[r * k + i])));
                const float want_scale = fp8_scale(amax);
                scale_differs += x_scale[r] != want_scale;
                for (int i = 0; i < k; i++) code_differs += codes[r * k + i] != emu_to_e4m3(bf2f(x[r * k + i]) / want_scale);
            }
            std::vector<bf16> y(t * n, 0xffff);
            const int out_f32 = 0;
            // kernels.rs's choice: the kernel of the smallest bound on k at or above k.
            const auto gemv_fp8 = k <= 4096 ? gemv_fp8_k4096 : k <= 8192 ? gemv_fp8_k8192 : gemv_fp8_k16384;
            const auto gemv_fp8_swiglu = k <= 4096 ? gemv_fp8_swiglu_k4096 : k <= 8192 ? gemv_fp8_swiglu_k8192 : gemv_fp8_swiglu_k16384;
            launch(gemv_fp8, {(unsigned)(n + GTC_ROWS - 1) / GTC_ROWS}, GTC_THREADS, x.data(), w.data(), &w_scale, t, n, k, (void*)y.data(),
                   out_f32);
            // The same weights as a fused gate/up pair (gate rows 0..23, up rows 24..47), SwiGLU in
            // the same launch (two blocks, the second partial): bit for bit the plain product's
            // halves through silu_mul.
            std::vector<bf16> fused(t * n / 2, 0xffff), activated(t * n / 2, 0xffff);
            launch(gemv_fp8_swiglu, {(unsigned)(n / 2 + GTC_ROWS - 1) / GTC_ROWS}, GTC_THREADS, x.data(), w.data(), &w_scale, t, n / 2, k,
                   (void*)fused.data(), out_f32);
            launch(silu_mul, {2, (unsigned)t}, 256, y.data(), (const float*)nullptr, n / 2, activated.data());
            int swiglu_differs = 0;
            for (int i = 0; i < t * n / 2; i++) swiglu_differs += fused[i] != activated[i];
            double worst = 0;
            for (int r = 0; r < t; r++)
                for (int o = 0; o < n; o++) {
                    double dot = 0;
                    for (int i = 0; i < k; i++) dot += (double)emu_from_e4m3(codes[r * k + i]) * emu_from_e4m3(w[o * k + i]);
                    const double want = dot * x_scale[r] * w_scale, got = bf2f(y[r * n + o]);
                    const double error = std::isfinite(got) ? std::fabs(got - want) / std::max(std::fabs(want), 1e-3) : INFINITY;
                    worst = std::max(worst, error);
                }
            const bool ok = scale_differs == 0 && code_differs == 0 && worst <= 8e-3 && swiglu_differs == 0;
            printf("%d rows of %4d: %d row scales and %d codes differ from the host rule's, GEMV within %.1e relative, "
                   "%d fused SwiGLU values differ%s\n",
                   t, k, scale_differs, code_differs, worst, swiglu_differs, ok ? "" : "  FAILED");
            failures += !ok;
        }
    for (int f : {24, 1032, 14336}) {
        const int t = 3;
        std::vector<bf16> gate_up(t * 2 * f), activated(t * f);
        for (int i = 0; i < t * 2 * f; i++) gate_up[i] = f2bf(std::ldexp(rng.next(), (i * 5) % 7 - 3 + 2 * (i / (2 * f))));
        // Each row's largest value by far at its end: in the last group a thread holds.
        for (int r = 0; r < t; r++) gate_up[r * 2 * f + f - 1] = gate_up[r * 2 * f + 2 * f - 1] = f2bf(std::ldexp(1.f, 6 + 2 * r));
        launch(silu_mul, {(unsigned)((f / 8 + 255) / 256), (unsigned)t}, 256, gate_up.data(), (const float*)nullptr, f, activated.data());
        std::vector<unsigned char> want_codes(t * f), codes(t * f, 0x7f);
        std::vector<float> want_scales(t), scales(t, 0.f);
        launch(quantize_fp8_rows, {(unsigned)t}, 256, activated.data(), f, want_codes.data(), want_scales.data());
        // kernels.rs's block: enough whole warps for SILU_ITEMS groups of eight a thread.
        const unsigned threads = std::min(1024, ((f / 8 + SILU_ITEMS - 1) / SILU_ITEMS + 31) / 32 * 32);
        launch(silu_mul_fp8, {(unsigned)t}, threads, gate_up.data(), (const float*)nullptr, f, codes.data(), scales.data());
        int differ = 0;
        for (int i = 0; i < t * f; i++) differ += codes[i] != want_codes[i];
        // The same from a product's output whose rows still need their scales (powers of two),
        // handed those: silu_mul's bf16 rows and silu_mul_fp8's codes, bit for bit; and scale_rows
        // gives the scaled rows back.
        const std::vector<float> row_scales = {0.5f, 16.f, 1.f};
        std::vector<bf16> unscaled(t * 2 * f), activated_later(t * f), rescaled(t * 2 * f);
        for (int i = 0; i < t * 2 * f; i++) unscaled[i] = f2bf(bf2f(gate_up[i]) / row_scales[i / (2 * f)]);
        launch(silu_mul, {(unsigned)((f / 8 + 255) / 256), (unsigned)t}, 256, unscaled.data(), row_scales.data(), f, activated_later.data());
        std::vector<unsigned char> codes_later(t * f, 0x7f);
        std::vector<float> scales_later(t, 0.f);
        launch(silu_mul_fp8, {(unsigned)t}, threads, unscaled.data(), row_scales.data(), f, codes_later.data(), scales_later.data());
        rescaled = unscaled;
        launch(scale_rows, {(unsigned)((2 * f / 8 + 255) / 256), (unsigned)t}, 256, rescaled.data(), 2 * f, row_scales.data());
        const int later_differ = (activated_later != activated) + (codes_later != codes) + (scales_later != scales) + (rescaled != gate_up);
        const bool ok = differ == 0 && scales == want_scales && later_differ == 0;
        printf("silu_mul_fp8, 3 rows of %5d in blocks of %4u: %d codes differ from quantize_fp8_rows of silu_mul's output, scales %s; "
               "%d of 4 outputs differ with the row scales left to the reader%s\n",
               f, threads, differ, scales == want_scales ? "equal" : "differ", later_differ, ok ? "" : "  FAILED");
        failures += !ok;
    }
    return failures != 0;
}
