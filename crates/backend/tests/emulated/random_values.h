// Test values for the emulated checks, after kernels.cu (which defines bf16): `n` bf16 values
// offset + scale · r, r drawn from `rng` in [-1, 1).
#pragma once
#include <vector>

inline std::vector<bf16> random_bf16(Rng& rng, size_t n, float scale, float offset = 0) {
    std::vector<bf16> v(n);
    for (auto& x : v) x = f2bf(offset + scale * rng.next());
    return v;
}

// A decode step of one token per sequence over a paged cache of `cache_blocks` blocks: sequence s
// holds lens[s] positions in blocks scattered by `stride` (block b of the step's run is cache
// block b · stride mod cache_blocks), in attention.cu's tile and block-table formats.
struct DecodeStep {
    std::vector<u32> table, offsets{0}, tiles, positions;
    int max_ctx = 0;
    DecodeStep(const std::vector<int>& lens, int block_size, int cache_blocks, int stride) {
        int used = 0;
        for (int s = 0; s < (int)lens.size(); s++) {
            const int blocks = (lens[s] + block_size - 1) / block_size;
            for (int b = 0; b < blocks; b++) table.push_back((u32)((used + b) * stride % cache_blocks));
            used += blocks;
            offsets.push_back((u32)table.size());
            tiles.insert(tiles.end(), {(u32)s, (u32)s, 1u, (u32)(lens[s] - 1)});
            positions.push_back((u32)(lens[s] - 1));
            max_ctx = std::max(max_ctx, lens[s]);
        }
    }
};
