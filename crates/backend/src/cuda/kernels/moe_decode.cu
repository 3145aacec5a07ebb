// Mixture-of-experts products for decode steps of a few tokens, read entirely on the device so
// that the step needs no host round trip and can be captured in a CUDA graph: for each routed
// slot s (token s / x_div's row of x, expert experts[s]),
//   y[s, n] = x[s / x_div, :] · W_e[n, :] (+ b_e[n] where the expert has a bias),
// with W_e and b_e found through per-layer tables of device pointers (one entry per expert). One
// warp per weight row of one slot streams that weight row once through `gemv`'s row product
// (gemv_row, one activation row), or k_split warps each a share of it; slots sharing an expert
// read it again, from L2. Requires k % 8 == 0.

#define MOE_ACTIVATION_NONE 0
#define MOE_ACTIVATION_SWIGLU 1
#define MOE_ACTIVATION_CLAMPED_SWIGLU 2

// With an activation, the expert's weight holds 2n rows (gate rows, then up rows, and its bias
// the same layout): output row j takes gate row j and up row n + j and is the activation of the
// two bf16-rounded products: the product and silu_mul (MOE_ACTIVATION_SWIGLU) or clamped_swiglu
// (MOE_ACTIVATION_CLAMPED_SWIGLU, with alpha and limit) after it in one launch, bit for bit the
// two launches' result.
//
// Each weight row read is shared by `k_split` warps (1, 2, 4 or 8), each summing a contiguous
// share of k; with an activation the gate and up rows have warps of their own, so an output row
// takes k_split (or 2 k_split, at most 8) warps of a block, and the row's first warp adds the
// shares in order. A warp then waits only for the rounds of loads (GEMV_UNROLL × 256 values
// each) of its own row or share, not for the gate row's and then the up row's, which at batch 1
// decides how long a launch's last blocks take. The sums depend on n, k and k_split only, never
// on the slots.
//
// With `routed_earlier` (the routing was written at least two launches before this one, as for
// the down product after the gate/up one), each warp starts its share of a weight row towards L2
// before pdl_begin: the launch before has passed its own wait, so the routing is final. The rows
// are read, and the routing read again, only after the wait; a prefetch is only a hint. Launches
// that start before the one ahead has waited (`lumen_pdl_early`) cannot know the routing is
// final, so they skip it.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    moe_gemv(const bf16* __restrict__ x, int x_div, const u32* __restrict__ experts, const u64* __restrict__ weights,
             const u64* __restrict__ biases, int n, int k, int activation, float alpha, float limit, int routed_earlier,
             int k_split, bf16* __restrict__ y) {
    __shared__ float shares[GEMV_THREADS / 32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int halves = activation != MOE_ACTIVATION_NONE ? 2 : 1, per_row = k_split * halves;
    const int row = blockIdx.x * (GEMV_THREADS / 32 / per_row) + warp / per_row, part = warp % per_row;
    const int half = part / k_split, share = part % k_split;
    int g0, g1;
    gemv_share(k, k_split, share, g0, g1);
    const u64 slot = blockIdx.y, weight_row = (u64)half * n + row;
    if (routed_earlier && !lumen_pdl_early && row < n && lane == 0) prefetch_l2((const bf16*)weights[experts[slot]] + weight_row * k + g0 * 8, (g1 - g0) * 16);
    pdl_begin();
    const u32 e = experts[slot];
    const bf16* w = (const bf16*)weights[e];
    const bf16* xr = x + (slot / (u64)x_div) * k;
    float acc[GEMV_MAX_T];
    if (row < n) gemv_row(xr, (const uint4*)(w + weight_row * k), 1, k, g0, g1, acc);
    if (per_row > 1) {
        if (row < n && lane == 0) shares[warp] = acc[0];
        __syncthreads();
    }
    if (row >= n || part != 0) return;
    // The shares in order, as gemv adds them: the gate row's (or the plain row's), then the up row's.
    float gate = acc[0], up = 0.f;
    if (per_row > 1) {
        gate = shares[warp];
        for (int p = 1; p < k_split; p++) gate += shares[warp + p];
        if (halves == 2) {
            up = shares[warp + k_split];
            for (int p = 1; p < k_split; p++) up += shares[warp + k_split + p];
        }
    }
    const bf16* bias = biases && biases[e] ? (const bf16*)biases[e] : nullptr;
    if (bias) gate += bf2f(bias[row]);
    float out = gate;
    if (activation != MOE_ACTIVATION_NONE) {
        if (bias) up += bf2f(bias[n + row]);
        out = activation == MOE_ACTIVATION_SWIGLU ? swiglu_of(gate, up) : clamped_swiglu_of(bf2f(f2bf(gate)), bf2f(f2bf(up)), alpha, limit);
    }
    if (lane == 0) y[slot * n + row] = f2bf(out);
}
