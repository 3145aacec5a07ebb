// The grouped expert GEMM's layout and the combine (moe_experts.cu, moe.cu): moe_align lays the
// slots out expert by expert in whole 64-row tiles, every slot at exactly one padded row of a tile
// of its own expert, the rest padding, in as many tiles as the experts' counts need and no more
// than the buffers hold (moe_max_tiles); moe_combine sums each token's expert rows with its
// weights, and the shared expert scaled by its sigmoid gate, bit for bit as an f32 sum in the
// same order. Exits non-zero on any difference.
#include "emu.h"
#include "kernels.cu"

int main() {
    Rng rng{99};
    int failures = 0;
    struct Case {
        int tokens, k, experts, skew;
    } cases[] = {{300, 8, 64, 1}, {33, 1, 8, 0}, {5, 4, 128, 0}, {400, 4, 16, 2}};
    for (const Case& c : cases) {
        const int slots = c.tokens * c.k;
        std::vector<u32> experts(slots);
        for (int s = 0; s < slots; s++) {
            const float u = 0.5f * (rng.next() + 1.f);
            // skew 2: every slot on expert 3; skew 1: half the slots on the first eighth.
            experts[s] = c.skew == 2 ? 3 : (c.skew == 1 && u < 0.5f ? (u32)(u * 2 * (c.experts / 8)) : (u32)(u * c.experts)) % c.experts;
        }
        const int max_tiles = (slots + 63) / 64 + std::min(c.experts, slots);
        std::vector<u32> tile_expert(max_tiles, 999), rows(max_tiles * 64, 12345), position(slots, 999), num_tiles(1, 0);
        launch(moe_align, {1}, 1024, experts.data(), slots, c.experts, tile_expert.data(), rows.data(), position.data(), num_tiles.data());
        std::vector<int> count(c.experts, 0);
        for (u32 e : experts) count[e]++;
        int want_tiles = 0;
        for (int n : count) want_tiles += (n + 63) / 64;
        bool ok = (int)num_tiles[0] == want_tiles && want_tiles <= max_tiles;
        std::vector<int> seen(slots, 0);
        int padding = 0;
        for (int p = 0; p < want_tiles * 64 && ok; p++) {
            if (rows[p] == 0xffffffffu) {
                padding++;
                continue;
            }
            const u32 s = rows[p];
            ok = s < (u32)slots && position[s] == (u32)p && tile_expert[p / 64] == experts[s];
            if (ok) seen[s]++;
        }
        for (int s = 0; s < slots && ok; s++) ok = seen[s] == 1;
        ok = ok && padding == want_tiles * 64 - slots;

        // The combine over the padded rows, with a shared expert and its gate.
        const int h = 40;
        std::vector<bf16> y(max_tiles * 64 * h), shared(c.tokens * h), out(c.tokens * h);
        std::vector<float> weights(slots), gate(c.tokens);
        for (auto& x : y) x = f2bf(rng.next());
        for (auto& x : shared) x = f2bf(rng.next());
        for (auto& x : weights) x = 0.5f * (rng.next() + 1.f);
        for (auto& x : gate) x = 2.f * rng.next();
        launch(moe_combine, {(unsigned)c.tokens, (unsigned)(h + 255) / 256}, 256, y.data(), position.data(), weights.data(), c.k, h,
               shared.data(), gate.data(), out.data());
        int combine_differs = 0;
        for (int t = 0; t < c.tokens; t++)
            for (int i = 0; i < h; i++) {
                float acc = 0.f;
                for (int j = 0; j < c.k; j++) acc += weights[t * c.k + j] * bf2f(y[(size_t)position[t * c.k + j] * h + i]);
                acc += 1.f / (1.f + expf(-gate[t])) * bf2f(shared[t * h + i]);
                combine_differs += out[t * h + i] != f2bf(acc);
            }
        ok = ok && combine_differs == 0;
        printf("%4d slots over %3d experts: %d tiles (bound %d), %d padding rows, %d combined values differ%s\n", slots, c.experts,
               num_tiles[0], max_tiles, padding, combine_differs, ok ? "" : "  FAILED");
        failures += !ok;
    }
    return failures != 0;
}
