// The grouped expert GEMM (moe_experts.cu) with mma.sync and ldmatrix emulated as the PTX ISA lays
// out their fragments (emu.h), over moe_align's layout: every slot's row against the
// double-precision product with its expert's weight and bias, for the gate/up product (rows
// gathered by token) and the down product (rows in layout order), with k and n not multiples of
// the tile. The kernel has run on the GPU, so this checks the emulation of the fragments as much
// as the kernel. Exits non-zero when a result leaves its bound.
#include "emu.h"
#include "kernels.cu"
#include "random_values.h"

static Rng rng{31337};

// The grouped expert GEMM on `tokens` tokens routed to `top` of `experts` experts (skewed), for
// an n × k product; returns the worst error relative to the row's rms.
static double grouped_gemm(int tokens, int top, int experts, int n, int k) {
    const int slots = tokens * top;
    std::vector<u32> chosen(slots);
    for (int s = 0; s < slots; s++) chosen[s] = (u32)(0.5f * (rng.next() + 1.f) * 0.5f * (rng.next() + 1.f) * experts) % experts;
    const int max_tiles = (slots + 63) / 64 + std::min(experts, slots);
    std::vector<u32> tile_expert(max_tiles), rows(max_tiles * 64), position(slots), num_tiles(1);
    launch(moe_align, {1}, 1024, chosen.data(), slots, experts, tile_expert.data(), rows.data(), position.data(), num_tiles.data());
    std::vector<std::vector<bf16>> w(experts), bias(experts);
    std::vector<u64> w_table(experts), b_table(experts);
    for (int e = 0; e < experts; e++) {
        w[e] = random_bf16(rng, (size_t)n * k, 1.f / sqrtf(k));
        bias[e] = random_bf16(rng, n, 0.5f);
        w_table[e] = (u64)w[e].data();
        b_table[e] = (u64)bias[e].data();
    }
    auto x = random_bf16(rng, (size_t)tokens * k, 1.f);
    std::vector<bf16> y((size_t)max_tiles * 64 * n, f2bf(NAN));
    const dim3 grid = {(unsigned)max_tiles, (unsigned)(n + 63) / 64};
    launch(moe_grouped_gemm, grid, MG_THREADS, x.data(), top, rows.data(), tile_expert.data(), num_tiles.data(), w_table.data(),
           b_table.data(), n, k, y.data());
    // The down product's form: the rows in layout order (no gather), no bias.
    std::vector<bf16> padded((size_t)max_tiles * 64 * k);
    for (size_t i = 0; i < padded.size(); i++) padded[i] = f2bf(rng.next());
    std::vector<bf16> z((size_t)max_tiles * 64 * n, f2bf(NAN));
    launch(moe_grouped_gemm, grid, MG_THREADS, padded.data(), 1, (const u32*)nullptr, tile_expert.data(), num_tiles.data(), w_table.data(),
           (const u64*)nullptr, n, k, z.data());
    double worst = 0;
    for (int s = 0; s < slots; s++) {
        const u32 p = position[s], e = chosen[s];
        for (int pass = 0; pass < 2; pass++) {
            const bf16* in = pass == 0 ? &x[(size_t)(s / top) * k] : &padded[(size_t)p * k];
            const bf16* got = pass == 0 ? &y[(size_t)p * n] : &z[(size_t)p * n];
            for (int o = 0; o < n; o++) {
                double want = pass == 0 ? bf2f(bias[e][o]) : 0;
                for (int i = 0; i < k; i++) want += (double)bf2f(in[i]) * bf2f(w[e][(size_t)o * k + i]);
                worst = std::max(worst, fabs(bf2f(got[o]) - want) / (fabs(want) + 0.1));
            }
        }
    }
    printf("grouped expert GEMM, %d slots over %d experts in %u tiles, %d x %d: worst %.2e relative\n", slots, experts, num_tiles[0], n, k, worst);
    return worst;
}

int main() {
    int failures = 0;
    // bf16 outputs: 2^-8 of the value, plus the sum's order.
    for (auto [tokens, top, experts, n, k] : {std::tuple{50, 2, 5, 72, 40}, {3, 4, 16, 64, 128}, {130, 1, 2, 130, 200}})
        failures += !(grouped_gemm(tokens, top, experts, n, k) <= 1e-2);
    if (failures) printf("%d FAILED\n", failures);
    return failures != 0;
}
