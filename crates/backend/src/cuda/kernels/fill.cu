// Random-weight presets generated on the device (the rule in crates/model/src/presets.rs):
// v_i = offset + scale * r_i (or scale * r_i when offset is 0), r_i = 2 u_i - 1,
// u_i = (splitmix64(base + i) >> 40) / 2^24, in f32 with every operation rounded as the host
// rounds it (no fused multiply-add), then stored as bf16: bit for bit the host's values.
extern "C" __global__ void preset_fill(bf16* __restrict__ out, u64 n, u64 base, float scale, float offset) {
    pdl_begin();
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float u = (float)(splitmix64(base + i) >> 40) / 16777216.0f;
        float r = __fsub_rn(__fmul_rn(u, 2.0f), 1.0f);
        float v = offset == 0.0f ? __fmul_rn(r, scale) : __fadd_rn(offset, __fmul_rn(scale, r));
        out[i] = f2bf(v);
    }
}
