// MLA's kernels (mla.cu, with attention_combine for KV splits) against a double-precision
// reference of absorbed latent attention written from its definition, on three shapes (tiny,
// odd-sized, and Moonlight's heads: 16 heads, a 512-wide latent, 64 rotary values): a prefill of
// one sequence, then a step that prefills two more while the first decodes, then a decode step
// of all three, over non-contiguous block tables, in tiles of 16 and of 3 tokens, with and without
// KV splits. Exits non-zero when the cache or the output leaves its bound (the output of the
// one-row-a-block attention too), or when the attention's one-row-a-warp and four-row variants
// differ in any bit.
#include "emu.h"
#include "kernels.cu"
#include "random_values.h"
#include <cassert>
#include <map>

static Rng rng{12345};
static double d(bf16 x) { return bf2f(x); }
// The larger error, infinite once an error is NaN (a value never written, left NaN).
static double worse(double so_far, double error) { return std::isnan(error) ? INFINITY : std::max(so_far, error); }

struct Seq {
    int id, first_pos, len;
    std::vector<u32> blocks;
};

struct Layer {
    int heads, nope, rope, v, latent, block_size = 4;
    std::vector<bf16> kv_b, kv_norm, cache;
    std::vector<double> inv_freq;
    float attention_factor = 1.2f, eps = 1e-5f, scale;
    // Each sequence's kv_a rows so far, for the reference.
    std::map<int, std::vector<std::vector<bf16>>> history;

    Layer(int h, int n, int r, int vd, int l, int blocks) : heads(h), nope(n), rope(r), v(vd), latent(l) {
        kv_b = random_bf16(rng, (size_t)h * (n + vd) * l, 1.f / sqrtf(l));
        kv_norm = random_bf16(rng, l, 0.1f, 1.f);
        for (int i = 0; i < r / 2; i++) inv_freq.push_back(pow(10000.0, -2.0 * i / r));
        scale = 1.1f / sqrtf(n + r);
        cache.assign((size_t)blocks * block_size * (l + r), f2bf(NAN));
    }

    void rotate(double pos, int i, double a, double b, double& ra, double& rb) const {
        const double angle = pos * inv_freq[i], s = sin(angle) * attention_factor, c = cos(angle) * attention_factor;
        ra = a * c - b * s;
        rb = b * c + a * s;
    }

    // One step over `seqs`; returns the worst error as a fraction of its bound.
    double step(const std::vector<Seq>& seqs, int tile_tokens, u32 split_tokens) {
        const int width = latent + rope, qk = nope + rope;
        int tokens = 0;
        for (auto& s : seqs) tokens += s.len;
        auto compressed = random_bf16(rng, (size_t)tokens * width, 1.f);
        auto q = random_bf16(rng, (size_t)tokens * heads * qk, 1.f);
        std::vector<u32> positions, slots, tiles, offsets, table;
        int row = 0, max_ctx = 0, tile_rows = 0;
        for (size_t si = 0; si < seqs.size(); si++) {
            const Seq& s = seqs[si];
            offsets.push_back(table.size());
            table.insert(table.end(), s.blocks.begin(), s.blocks.end());
            for (int p = s.first_pos; p < s.first_pos + s.len; p++) {
                positions.push_back(p);
                slots.push_back(s.blocks[p / block_size] * block_size + p % block_size);
            }
            for (int off = 0; off < s.len; off += tile_tokens) {
                const int n = std::min(tile_tokens, s.len - off);
                tiles.insert(tiles.end(), {(u32)si, (u32)(row + off), (u32)n, (u32)(s.first_pos + off)});
                tile_rows = std::max(tile_rows, n);
            }
            row += s.len;
            max_ctx = std::max(max_ctx, s.first_pos + s.len);
        }
        offsets.push_back(table.size());
        const unsigned splits = (max_ctx + split_tokens - 1) / split_tokens;
        std::vector<bf16> q_lat((size_t)tokens * heads * width, f2bf(NAN)), o_lat((size_t)tokens * heads * latent, f2bf(NAN));
        std::vector<bf16> out((size_t)tokens * heads * v, f2bf(NAN));
        std::vector<float> part_acc((size_t)tokens * heads * splits * latent, NAN), part_ml((size_t)tokens * heads * splits * 2, NAN);
        const unsigned t = tokens, h = heads, chunks16 = (tokens + 15) / 16;
        launch(mla_rope_latent_write, {t}, 256, compressed.data(), kv_norm.data(), eps, q.data(), positions.data(), slots.data(),
               inv_freq.data(), attention_factor, heads, nope, rope, latent, q_lat.data(), cache.data());
        launch(mla_absorb_query, {h, (unsigned)(latent + 63) / 64, chunks16}, 256, q.data(), kv_b.data(), tokens, heads, nope, rope, v, latent,
               q_lat.data());
        // Both variants of the attention, one row a warp (blocks of 8 rows) and four (blocks of 32):
        // the same bits, and the four-row one goes on to the value heads.
        std::vector<bf16> o_lat_r1(o_lat);
        auto attend = [&](auto kernel, unsigned block_rows, std::vector<bf16>& into) {
            launch(kernel, {(unsigned)tiles.size() / 4, (tile_rows * heads + block_rows - 1) / block_rows, splits}, 256, q_lat.data(),
                   cache.data(), tiles.data(), offsets.data(), table.data(), heads, latent, rope, block_size, scale * 1.4426950408889634f,
                   &split_tokens, into.data(), part_acc.data(), part_ml.data());
            if (splits > 1)
                launch(attention_combine, {t, h}, latent, part_acc.data(), part_ml.data(), positions.data(), heads, latent, (int)splits,
                       &split_tokens, into.data());
        };
        attend(mla_attention_r1, 8, o_lat_r1);
        attend(mla_attention_r4, 32, o_lat);
        int variants_differ = 0;
        for (size_t i = 0; i < o_lat.size(); i++) variants_differ += o_lat[i] != o_lat_r1[i];
        // The one-row-a-block kernel sums in another order: it goes through the value heads too,
        // into its own output, checked against the reference beside the four-row one's.
        std::vector<bf16> o_lat_row(o_lat.size(), f2bf(NAN)), out_row(out.size(), f2bf(NAN));
        attend(mla_attention_row, 1, o_lat_row);
        launch(mla_value_heads, {h, (unsigned)(v + 31) / 32, chunks16}, 256, o_lat_row.data(), kv_b.data(), tokens, heads, nope, rope, v,
               latent, out_row.data());
        launch(mla_value_heads, {h, (unsigned)(v + 31) / 32, chunks16}, 256, o_lat.data(), kv_b.data(), tokens, heads, nope, rope, v, latent,
               out.data());

        double cache_error = 0, out_error = 0, row_error = 0, out_squares = 0;
        row = 0;
        for (const Seq& s : seqs) {
            auto& rows = history[s.id];
            for (int i = 0; i < s.len; i++)
                rows.emplace_back(compressed.begin() + (size_t)(row + i) * width, compressed.begin() + (size_t)(row + i + 1) * width);
            const int n = s.first_pos + s.len;
            assert((int)rows.size() == n);
            std::vector<std::vector<double>> cached(n, std::vector<double>(width));
            for (int p = 0; p < n; p++) {
                double squares = 0;
                for (int j = 0; j < latent; j++) squares += d(rows[p][j]) * d(rows[p][j]);
                const double norm = 1.0 / sqrt(squares / latent + eps);
                for (int j = 0; j < latent; j++) cached[p][j] = d(rows[p][j]) * norm * d(kv_norm[j]);
                for (int i = 0; i < rope / 2; i++)
                    rotate(p, i, d(rows[p][latent + i]), d(rows[p][latent + i + rope / 2]), cached[p][latent + i], cached[p][latent + i + rope / 2]);
                const u32 slot = s.blocks[p / block_size] * block_size + p % block_size;
                for (int j = 0; j < width; j++)
                    cache_error = worse(cache_error, fabs(d(cache[(size_t)slot * width + j]) - cached[p][j]) / (fabs(cached[p][j]) + 0.05));
            }
            for (int i = 0; i < s.len; i++) {
                const int token = row + i, pos = s.first_pos + i;
                for (int head = 0; head < heads; head++) {
                    const bf16* qh = &q[((size_t)token * heads + head) * qk];
                    std::vector<double> absorbed(width);
                    for (int j = 0; j < latent; j++) {
                        double acc = 0;
                        for (int k = 0; k < nope; k++) acc += d(qh[k]) * d(kv_b[((size_t)head * (nope + v) + k) * latent + j]);
                        absorbed[j] = acc;
                    }
                    for (int r = 0; r < rope / 2; r++)
                        rotate(pos, r, d(qh[nope + r]), d(qh[nope + r + rope / 2]), absorbed[latent + r], absorbed[latent + r + rope / 2]);
                    std::vector<double> score(pos + 1);
                    double top = -1e300, total = 0;
                    for (int p = 0; p <= pos; p++) {
                        double dot = 0;
                        for (int j = 0; j < width; j++) dot += absorbed[j] * cached[p][j];
                        score[p] = dot * scale;
                        top = std::max(top, score[p]);
                    }
                    for (double& x : score) total += x = exp(x - top);
                    std::vector<double> mixed(latent, 0);
                    for (int p = 0; p <= pos; p++)
                        for (int j = 0; j < latent; j++) mixed[j] += score[p] / total * cached[p][j];
                    for (int r = 0; r < v; r++) {
                        double want = 0;
                        for (int j = 0; j < latent; j++) want += mixed[j] * d(kv_b[((size_t)head * (nope + v) + nope + r) * latent + j]);
                        out_error = worse(out_error, fabs(d(out[((size_t)token * heads + head) * v + r]) - want));
                        row_error = worse(row_error, fabs(d(out_row[((size_t)token * heads + head) * v + r]) - want));
                        out_squares += want * want;
                    }
                }
            }
            row += s.len;
        }
        const double rms = sqrt(out_squares / ((double)tokens * heads * v));
        printf("  %2d tokens, %d tiles of <= %2d, %u splits: cache %.2e relative, output %.2e of its rms (one row a block: %.2e), %d "
               "attention values differ between the variants\n",
               tokens, (int)tiles.size() / 4, tile_tokens, splits, cache_error, out_error / rms, row_error / rms, variants_differ);
        // bf16 rounding of the cache, the absorbed queries and the outputs: a few 2^-9 steps.
        return variants_differ ? INFINITY : std::max({cache_error / 1e-2, out_error / rms / 3e-2, row_error / rms / 3e-2});
    }
};

int main() {
    struct Shape {
        int heads, nope, rope, v, latent;
        std::vector<int> tile_tokens;
        std::vector<u32> splits;
    } shapes[] = {{4, 16, 8, 16, 32, {16, 3}, {32, 4}}, {3, 32, 8, 24, 64, {3}, {4}}, {16, 128, 64, 128, 512, {16}, {4}}};
    int failures = 0;
    for (const Shape& s : shapes)
        for (int tile : s.tile_tokens)
            for (u32 split : s.splits) {
                printf("heads %d, nope %d, rope %d, v %d, latent %d:\n", s.heads, s.nope, s.rope, s.v, s.latent);
                Layer layer(s.heads, s.nope, s.rope, s.v, s.latent, 32);
                double worst = layer.step({{1, 0, 6, {9, 3}}}, tile, split);
                worst = std::max(worst, layer.step({{0, 0, 10, {5, 2, 7}}, {1, 6, 1, {9, 3}}, {2, 0, 3, {11}}}, tile, split));
                worst = std::max(worst, layer.step({{0, 10, 1, {5, 2, 7}}, {1, 7, 1, {9, 3}}, {2, 3, 1, {11}}}, tile, split));
                if (!(worst <= 1.0)) {
                    printf("  FAILED: %.2f times the bound\n", worst);
                    failures++;
                }
            }
    return failures != 0;
}
