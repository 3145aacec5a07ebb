// Mixture-of-experts products for decode steps of a few tokens, read entirely on the device so
// that the step needs no host round trip and can be captured in a CUDA graph: for each routed
// slot s (token s / x_div's row of x, expert experts[s]),
//   y[s, n] = x[s / x_div, :] · W_e[n, :] (+ b_e[n] where the expert has a bias),
// with W_e and b_e found through per-layer tables of device pointers (one entry per expert). One
// warp per output row of one slot streams that weight row once through `gemv`'s row product
// (gemv_row, one activation row); slots sharing an expert read it again, from L2. Requires
// k % 8 == 0.

#define MOE_ACTIVATION_NONE 0
#define MOE_ACTIVATION_SWIGLU 1
#define MOE_ACTIVATION_CLAMPED_SWIGLU 2

// With an activation, the expert's weight holds 2n rows (gate rows, then up rows, and its bias
// the same layout) and each warp takes gate row j and up row n + j, writing the activation of the
// two bf16-rounded products: the product and silu_mul (MOE_ACTIVATION_SWIGLU) or clamped_swiglu
// (MOE_ACTIVATION_CLAMPED_SWIGLU, with alpha and limit) after it in one launch, bit for bit the
// two launches' result.
//
// With `routed_earlier` (the routing was written at least two launches before this one, as for
// the down product after the gate/up one), each warp starts its weight row towards L2 before
// pdl_begin: the launch before has passed its own wait, so the routing is final. The rows are
// read, and the routing read again, only after the wait; a prefetch is only a hint.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    moe_gemv(const bf16* __restrict__ x, int x_div, const u32* __restrict__ experts, const u64* __restrict__ weights,
             const u64* __restrict__ biases, int n, int k, int activation, float alpha, float limit, int routed_earlier,
             bf16* __restrict__ y) {
    const int row = (int)((blockIdx.x * (u64)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    const u64 slot = blockIdx.y;
    if (routed_earlier && row < n && lane == 0) prefetch_l2((const bf16*)weights[experts[slot]] + (u64)row * k, (u32)k * 2);
    pdl_begin();
    if (row >= n) return;
    const u32 e = experts[slot];
    const bf16* w = (const bf16*)weights[e];
    const bf16* bias = biases && biases[e] ? (const bf16*)biases[e] : nullptr;
    const bf16* xr = x + (slot / (u64)x_div) * k;
    float gate[GEMV_MAX_T], up[GEMV_MAX_T];
    gemv_row(xr, (const uint4*)(w + (u64)row * k), 1, k, 0, k / 8, gate);
    float acc = gate[0];
    if (bias) acc += bf2f(bias[row]);
    if (activation != MOE_ACTIVATION_NONE) {
        gemv_row(xr, (const uint4*)(w + (u64)(n + row) * k), 1, k, 0, k / 8, up);
        if (bias) up[0] += bf2f(bias[n + row]);
        acc = activation == MOE_ACTIVATION_SWIGLU ? swiglu_of(acc, up[0])
                                                  : clamped_swiglu_of(bf2f(f2bf(acc)), bf2f(f2bf(up[0])), alpha, limit);
    }
    if (lane == 0) y[slot * n + row] = f2bf(acc);
}
