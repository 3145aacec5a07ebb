// Mixture-of-experts products for decode steps of a few tokens, read entirely on the device so
// that the step needs no host round trip and can be captured in a CUDA graph: for each routed
// slot s (token s / x_div's row of x, expert experts[s]),
//   y[s, n] = x[s / x_div, :] · W_e[n, :] (+ b_e[n] where the expert has a bias),
// with W_e and b_e found through per-layer tables of device pointers (one entry per expert). One
// warp per output row of one slot streams that weight row once with 16-byte loads, as `gemv`
// does; slots sharing an expert read it again, from L2. Requires k % 8 == 0.

#define MOE_GEMV_UNROLL 4
#define MOE_GEMV_THREADS 256

extern "C" __global__ void __launch_bounds__(MOE_GEMV_THREADS)
    moe_gemv(const bf16* __restrict__ x, int x_div, const u32* __restrict__ experts, const u64* __restrict__ weights,
             const u64* __restrict__ biases, int n, int k, bf16* __restrict__ y) {
    const int row = (int)((blockIdx.x * (u64)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    const u64 slot = blockIdx.y;
    if (row >= n) return;
    const u32 e = experts[slot];
    const uint4* wr = (const uint4*)((const bf16*)weights[e] + (u64)row * k);
    const uint4* xr = (const uint4*)(x + (slot / (u64)x_div) * k);
    const int k8 = k / 8;
    float acc = 0.f;
    for (int base = lane; base < k8; base += 32 * MOE_GEMV_UNROLL) {
        uint4 wv[MOE_GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < MOE_GEMV_UNROLL; u++) {
            int i = base + u * 32;
            wv[u] = i < k8 ? wr[i] : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < MOE_GEMV_UNROLL; u++) {
            int i = base + u * 32;
            if (i >= k8) break;
            float wf[8], xf[8];
            unpack8(wv[u], wf);
            unpack8(xr[i], xf);
#pragma unroll
            for (int j = 0; j < 8; j++) acc = fmaf(wf[j], xf[j], acc);
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) {
        if (biases && biases[e]) acc += bf2f(((const bf16*)biases[e])[row]);
        y[slot * n + row] = f2bf(acc);
    }
}
