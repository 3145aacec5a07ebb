// Test values for the emulated checks, after kernels.cu (which defines bf16): `n` bf16 values
// offset + scale · r, r drawn from `rng` in [-1, 1).
#pragma once
#include <vector>

inline std::vector<bf16> random_bf16(Rng& rng, size_t n, float scale, float offset = 0) {
    std::vector<bf16> v(n);
    for (auto& x : v) x = f2bf(offset + scale * rng.next());
    return v;
}
