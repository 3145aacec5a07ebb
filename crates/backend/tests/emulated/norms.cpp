// The RMSNorm kernels (elementwise.cu) against the norm written from its definition: the embedding
// gather with its norm, the residual add with its norm, and the norm of bf16 rows (MLA's q LoRA),
// over rows of 32 to 7,168 values in blocks of the size `norm_threads` gives (kernels.rs): every
// thread holds at most NORM_ITEMS groups of four values. Each normed value must be
// the f32 result rounded to bf16, or its neighbour (the kernels sum the squares in another order),
// and the residual exactly the f32 sum; the FP8 codes and row scales a norm writes when handed
// somewhere to put them must be, bit for bit, what quantize_fp8_rows makes of the bf16 rows it
// wrote, and handing them must change no bf16 value; add_rms_norm handed a delta whose rows still
// need their scales (powers of two) and those scales must write, bit for bit, what it writes from
// the scaled delta. Handed codes but no place for the bf16 rows, the two norms that take a residual
// write the same codes, scales and residual. Token words marked SAMPLED_TOKEN must embed the
// sampled tokens they name. Exits non-zero otherwise.
#include "emu.h"
#include "kernels.cu"

static unsigned threads_for(int width) { return std::min(1024, std::max(32, ((width / 4 + NORM_ITEMS - 1) / NORM_ITEMS + 31) / 32 * 32)); }

// Whether `got` is `want` rounded to bf16, or the bf16 value next to it.
static bool near(bf16 got, float want) {
    const bf16 r = f2bf(want);
    return got == r || got == (bf16)(r + 1) || got == (bf16)(r - 1);
}

int main() {
    Rng rng{4242};
    int failures = 0;
    for (int width : {32, 64, 1536, 7168}) {
        const int rows = 3, vocab = 11;
        const float eps = 1e-6f;
        std::vector<bf16> embed(vocab * width), weight(width), delta(rows * width), x(rows * width);
        for (auto& v : embed) v = f2bf(rng.next());
        for (auto& v : weight) v = f2bf(1.f + 0.1f * rng.next());
        for (auto& v : delta) v = f2bf(rng.next());
        for (auto& v : x) v = f2bf(4.f * rng.next());
        std::vector<u32> tokens = {7, 0, 10};
        std::vector<float> residual(rows * width, NAN);
        std::vector<bf16> normed(rows * width), rows_normed(rows * width);
        const unsigned threads = threads_for(width);
        int bad = 0;
        auto check_norm = [&](const std::vector<float>& in, const std::vector<bf16>& out) {
            for (int r = 0; r < rows; r++) {
                double squares = 0;
                for (int i = 0; i < width; i++) squares += (double)in[r * width + i] * in[r * width + i];
                const float scale = 1.f / sqrtf((float)(squares / width) + eps);
                for (int i = 0; i < width; i++) bad += !near(out[r * width + i], in[r * width + i] * scale * bf2f(weight[i]));
            }
        };
        // The codes and scales a norm writes beside its rows: quantize_fp8_rows's of those rows.
        int codes_bad = 0;
        std::vector<unsigned char> codes(rows * width), want_codes(rows * width);
        std::vector<float> scales(rows), want_scales(rows);
        auto check_codes = [&]() {
            launch(quantize_fp8_rows, {(unsigned)rows}, 256, normed.data(), width, want_codes.data(), want_scales.data());
            codes_bad += (codes != want_codes) + (scales != want_scales);
        };
        launch(embed_rms_norm, {(unsigned)rows}, threads, tokens.data(), (const u32*)nullptr, embed.data(), weight.data(), eps, width, (u32)vocab,
               residual.data(), normed.data(), codes.data(), scales.data());
        check_codes();
        std::vector<float> want(rows * width);
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < width; i++) want[r * width + i] = bf2f(embed[tokens[r] * width + i]);
        bad += want != residual;
        check_norm(want, normed);
        // Handed no place for the bf16 rows, the embedding's norm writes the same codes, scales
        // and residual, and no row.
        {
            std::vector<float> codes_only_residual(rows * width, NAN);
            std::vector<unsigned char> only_codes(rows * width);
            std::vector<float> only_scales(rows);
            launch(embed_rms_norm, {(unsigned)rows}, threads, tokens.data(), (const u32*)nullptr, embed.data(), weight.data(), eps, width,
                   (u32)vocab, codes_only_residual.data(), (bf16*)nullptr, only_codes.data(), only_scales.data());
            codes_bad += (only_codes != codes) + (only_scales != scales) + (codes_only_residual != residual);
        }
        // Token words marked SAMPLED_TOKEN take the rows of the step before's sampled tokens they
        // name, beside a plain one: the same rows and codes as those tokens given outright.
        {
            const std::vector<u32> sampled = {4, tokens[2], 9, tokens[0]};
            const std::vector<u32> marked = {SAMPLED_TOKEN | 3u, tokens[1], SAMPLED_TOKEN | 1u};
            std::vector<float> marked_residual(rows * width, NAN);
            std::vector<bf16> marked_normed(rows * width);
            std::vector<unsigned char> marked_codes(rows * width);
            std::vector<float> marked_scales(rows);
            launch(embed_rms_norm, {(unsigned)rows}, threads, marked.data(), sampled.data(), embed.data(), weight.data(), eps, width, (u32)vocab,
                   marked_residual.data(), marked_normed.data(), marked_codes.data(), marked_scales.data());
            bad += (marked_residual != residual) + (marked_normed != normed);
            codes_bad += (marked_codes != codes) + (marked_scales != scales);
        }
        std::vector<float> before = residual;
        launch(add_rms_norm, {(unsigned)rows}, threads, residual.data(), delta.data(), (const float*)nullptr, weight.data(), eps, width,
               normed.data(), codes.data(), scales.data());
        check_codes();
        for (int i = 0; i < rows * width; i++) want[i] += bf2f(delta[i]);
        bad += want != residual;
        check_norm(want, normed);
        // Without a place for codes the kernel writes the same rows; and the same again from a
        // delta whose rows still need their scales (powers of two), handed those scales.
        std::vector<bf16> with_codes = normed;
        std::vector<float> after = residual;
        // Handed no place for the bf16 rows, the residual add writes the same residual, codes and
        // scales, and leaves the rows' buffer as it was.
        {
            std::vector<float> codes_only_residual = before;
            std::vector<unsigned char> only_codes(rows * width);
            std::vector<float> only_scales(rows);
            launch(add_rms_norm, {(unsigned)rows}, threads, codes_only_residual.data(), delta.data(), (const float*)nullptr, weight.data(), eps,
                   width, (bf16*)nullptr, only_codes.data(), only_scales.data());
            codes_bad += (only_codes != codes) + (only_scales != scales) + (codes_only_residual != after);
        }
        residual = before;
        launch(add_rms_norm, {(unsigned)rows}, threads, residual.data(), delta.data(), (const float*)nullptr, weight.data(), eps, width,
               normed.data(), (unsigned char*)nullptr, (float*)nullptr);
        bad += with_codes != normed;
        const std::vector<float> row_scales = {8.f, 0.25f, 1.f};
        std::vector<bf16> unscaled(rows * width);
        for (int i = 0; i < rows * width; i++) unscaled[i] = f2bf(bf2f(delta[i]) / row_scales[i / width]);
        residual = before;
        launch(add_rms_norm, {(unsigned)rows}, threads, residual.data(), unscaled.data(), row_scales.data(), weight.data(), eps, width,
               normed.data(), (unsigned char*)nullptr, (float*)nullptr);
        int scaled_bad = (residual != after) + (normed != with_codes);
        launch(rms_norm_rows, {(unsigned)rows}, threads, x.data(), weight.data(), eps, width, rows_normed.data());
        for (int i = 0; i < rows * width; i++) want[i] = bf2f(x[i]);
        check_norm(want, rows_normed);
        printf("rows of %4d: %d values off, %d code or scale sets wrong, %d outputs differ with the delta's row scales left to the norm%s\n",
               width, bad, codes_bad, scaled_bad, bad || codes_bad || scaled_bad ? "  FAILED" : "");
        failures += bad != 0 || codes_bad != 0 || scaled_bad != 0;
    }
    return failures != 0;
}
