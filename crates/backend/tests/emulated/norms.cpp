// The RMSNorm kernels (elementwise.cu) against the norm written from its definition: the embedding
// gather with its norm, the residual add with its norm, and the norm of bf16 rows (MLA's q LoRA),
// over rows of 32 to 7,168 values in blocks of the size `norm_threads` gives (kernels.rs): every
// thread holds at most NORM_ITEMS groups of four values. Each normed value must be
// the f32 result rounded to bf16, or its neighbour (the kernels sum the squares in another order),
// and the residual exactly the f32 sum; the amax word the norms are handed must end as the largest
// magnitude of the bf16 values written (or its value before, where larger). Exits non-zero
// otherwise.
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
        // The amax word a norm adds its output's largest magnitude to: exactly that of the bf16
        // values written, or what the word held where that was larger.
        int amax_bad = 0;
        auto check_amax = [&](u32 word, u32 before) {
            float m = 0;
            for (bf16 v : normed) m = std::max(m, std::fabs(bf2f(v)));
            amax_bad += word != std::max(before, __float_as_uint(m));
        };
        u32 amax = 0;
        launch(embed_rms_norm, {(unsigned)rows}, threads, tokens.data(), embed.data(), weight.data(), eps, width, (u32)vocab, residual.data(),
               normed.data(), &amax);
        check_amax(amax, 0);
        std::vector<float> want(rows * width);
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < width; i++) want[r * width + i] = bf2f(embed[tokens[r] * width + i]);
        bad += want != residual;
        check_norm(want, normed);
        amax = 0;
        launch(add_rms_norm, {(unsigned)rows}, threads, residual.data(), delta.data(), weight.data(), eps, width, normed.data(), &amax);
        check_amax(amax, 0);
        for (int i = 0; i < rows * width; i++) want[i] += bf2f(delta[i]);
        bad += want != residual;
        check_norm(want, normed);
        // A word already above the rows' largest magnitude keeps its value; without a word the
        // kernel writes the same rows.
        const u32 above = __float_as_uint(1e4f);
        amax = above;
        std::vector<float> kept = residual;
        launch(add_rms_norm, {(unsigned)rows}, threads, residual.data(), delta.data(), weight.data(), eps, width, normed.data(), &amax);
        amax_bad += amax != above;
        std::vector<bf16> with_word = normed;
        residual = kept;
        launch(add_rms_norm, {(unsigned)rows}, threads, residual.data(), delta.data(), weight.data(), eps, width, normed.data(), (u32*)nullptr);
        bad += with_word != normed;
        launch(rms_norm_rows, {(unsigned)rows}, threads, x.data(), weight.data(), eps, width, rows_normed.data());
        for (int i = 0; i < rows * width; i++) want[i] = bf2f(x[i]);
        check_norm(want, rows_normed);
        printf("rows of %4d: %d values off, %d amax words wrong%s\n", width, bad, amax_bad, bad || amax_bad ? "  FAILED" : "");
        failures += bad != 0 || amax_bad != 0;
    }
    return failures != 0;
}
