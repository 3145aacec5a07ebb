// Mixture-of-experts routing, GPT-OSS's expert activation and combining. The expert products
// themselves are in moe_experts.cu (the grouped GEMM of larger steps) and moe_decode.cu (the
// per-slot GEMVs of small decode steps); these kernels choose the experts, activate GPT-OSS's,
// and sum their outputs back per token.

#define MOE_MAX_TOP_K 16
#define MOE_MAX_EXPERTS 512
#define MOE_PER_LANE (MOE_MAX_EXPERTS / 32)

#define MOE_MAX_GROUPS 32
#define MOE_ROUTE_THREADS 256

// A token's router logit for expert e: the gate's, plus the router's own bf16 bias and the
// planted Zipf skew where given, summed as the CPU sums them.
__device__ __forceinline__ float routed_logit(const float* row, const bf16* router_bias, const float* bias, int e) {
    return row[e] + ((router_bias ? bf2f(router_bias[e]) : 0.f) + (bias ? bias[e] : 0.f));
}

__device__ __forceinline__ float sigmoidf(float z) { return 1.f / (1.f + expf(-z)); }

// The warp-wide arg-max of each lane's candidate (`best`, MOE_NONE for none, and its `value`):
// the largest value, ties to the lower index; every lane gets it.
#define MOE_NONE 0x7fffffff
__device__ __forceinline__ void warp_arg_max(int& best, float& value) {
    for (int o = 16; o > 0; o >>= 1) {
        int other = __shfl_xor_sync(0xffffffffu, best, o);
        float other_value = __shfl_xor_sync(0xffffffffu, value, o);
        bool better = other != MOE_NONE && (best == MOE_NONE || other_value > value || (other_value == value && other < best));
        if (better) {
            best = other;
            value = other_value;
        }
    }
}

// What chooses expert e under DeepSeekV3 from its routed logit z: s' = sigmoid(z) + correction[e]
// (bf16, where given).
__device__ __forceinline__ float corrected_score(float z, const bf16* __restrict__ correction, int e) {
    return sigmoidf(z) + (correction ? bf2f(correction[e]) : 0.f);
}

// Group g of `size` experts scored by the sum of its two best values of s (its one when a group
// has one expert), scanned in index order.
__device__ __forceinline__ float group_score(const float* s, int g, int size) {
    float first = -INFINITY, second = -INFINITY;
    for (int e = g * size; e < (g + 1) * size; e++) {
        float v = s[e];
        if (v > first) {
            second = first;
            first = v;
        } else if (v > second) {
            second = v;
        }
    }
    return size > 1 ? first + second : first;
}

// The last part of routing token t, run by a whole warp once lane j < k holds the j-th choice
// (`chosen`) and the value that chose it (`value`): the weights by `method` (all_max and all_sum
// are the softmax's over every expert, for Default and RenormalizeNaive), renormalised where the
// method says, times `scale`, written with the experts, and the real tokens' choices added to `load`.
__device__ __forceinline__ void write_route(const float* row, const bf16* __restrict__ router_bias, const float* __restrict__ bias,
                                            u64 t, int k, int method, float scale, float all_max, float all_sum, int lane, int chosen,
                                            float value, const u32* __restrict__ real_tokens, u32* __restrict__ out_experts,
                                            float* __restrict__ out_weights, u32* __restrict__ load) {
    const float first_value = __shfl_sync(0xffffffffu, value, 0);
    float weight = 0.f;
    if (lane < k) {
        if (method == 0 || method == 2) weight = expf(value - all_max) / all_sum;
        else if (method == 1) weight = expf(value - first_value);
        else if (method == 3) weight = sigmoidf(value);
        // DeepSeekV3 weighs by the uncorrected s of the chosen.
        else weight = sigmoidf(routed_logit(row, router_bias, bias, chosen));
    }
    // Summed in choice order, as one thread would.
    float chosen_sum = 0.f;
    for (int j = 0; j < k; j++) chosen_sum += __shfl_sync(0xffffffffu, weight, j);
    if (lane >= k) return;
    const float w = (method == 1 || method == 2 || method == 4) ? weight / chosen_sum : weight;
    out_experts[t * k + lane] = (u32)chosen;
    out_weights[t * k + lane] = w * scale;
    if (t < *real_tokens) atomicAdd(&load[chosen], 1u);
}

// One warp per token: the `k` largest router logits (plus, where given, the router's own bf16
// bias `router_bias[e]` and the planted Zipf skew `bias[e]`, summed first), ties to the lower
// expert, and their weights by `method`, in lumen's RoutingMethod order: 0 Default (softmax over
// every expert), 1 Renormalize (softmax over the chosen), 2 RenormalizeNaive (softmax over every
// expert, renormalised over the chosen), 3 Llama4 (sigmoid), 4 DeepSeekV3; times `scale`. Lane
// l holds experts l, l + 32, ...; each choice is a warp-wide arg-max. k <= MOE_MAX_TOP_K,
// experts <= MOE_MAX_EXPERTS.
//
// DeepSeekV3: s = sigmoid(z) and s' = s + correction[e] (bf16, where given); the experts split
// into `n_group` equal groups in index order, each scored by the sum of its two best s' (its one
// when a group has one expert); the best `topk_group` groups are kept (ties to the lower group)
// and the experts are the top k of s' inside them; weights s / Σ s of the chosen.
// n_group <= MOE_MAX_GROUPS.
//
// Each of the step's real tokens (the first `*real_tokens`; a replayed graph routes padding rows
// after them) adds its k choices to `load` (u32 per expert): the step's expert load.
extern "C" __global__ void __launch_bounds__(MOE_ROUTE_THREADS)
    moe_route(const float* __restrict__ logits, const bf16* __restrict__ router_bias, const float* __restrict__ bias,
              const bf16* __restrict__ correction, int n_group, int topk_group, int tokens, int experts, int k, int method,
              float scale, const u32* __restrict__ real_tokens, u32* __restrict__ out_experts, float* __restrict__ out_weights,
              u32* __restrict__ load) {
    pdl_begin();
    // Each warp's corrected scores, for its group scores (DeepSeekV3 only).
    __shared__ float corrected[MOE_ROUTE_THREADS / 32][MOE_MAX_EXPERTS];
    const int t = (int)((blockIdx.x * (u64)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (t >= tokens) return;
    const float* row = logits + (u64)t * experts;
    float z[MOE_PER_LANE];
    float all_max = -INFINITY;
#pragma unroll
    for (int i = 0; i < MOE_PER_LANE; i++) {
        int e = lane + 32 * i;
        z[i] = e < experts ? routed_logit(row, router_bias, bias, e) : -INFINITY;
        if (e < experts) all_max = fmaxf(all_max, z[i]);
    }
    // The choice runs on s' (outside the kept groups, -inf: no candidate at all). With every group
    // kept (Moonlight's one group) the group choice changes nothing and is skipped.
    const bool choose_groups = method == 4 && topk_group < n_group;
    float* mine = corrected[warp];
    if (method == 4) {
#pragma unroll
        for (int i = 0; i < MOE_PER_LANE; i++) {
            int e = lane + 32 * i;
            if (e < experts) {
                z[i] = corrected_score(z[i], correction, e);
                if (choose_groups) mine[e] = z[i];
            }
        }
    }
    if (choose_groups) {
        __syncwarp();
        const int size = experts / n_group;
        const float score = lane < n_group ? group_score(mine, lane, size) : -INFINITY;
        u32 kept = 0;
        for (int j = 0; j < topk_group; j++) {
            int best = lane < n_group && !((kept >> lane) & 1u) ? lane : MOE_NONE;
            float best_score = score;
            warp_arg_max(best, best_score);
            kept |= 1u << best;
        }
#pragma unroll
        for (int i = 0; i < MOE_PER_LANE; i++) {
            int e = lane + 32 * i;
            if (e < experts && !((kept >> (e / size)) & 1u)) z[i] = -INFINITY;
        }
    }
    float all_sum = 0.f;
    if (method == 0 || method == 2) {
        all_max = warp_max(all_max);
#pragma unroll
        for (int i = 0; i < MOE_PER_LANE; i++)
            if (lane + 32 * i < experts) all_sum += expf(z[i] - all_max);
        all_sum = warp_sum(all_sum);
    }
    // Lane j keeps the j-th choice; the weights are then worked out one a lane.
    u32 taken = 0;
    int chosen = 0;
    float value = 0.f;
    for (int j = 0; j < k; j++) {
        int best = MOE_NONE;
        float best_value = 0.f;
#pragma unroll
        for (int i = 0; i < MOE_PER_LANE; i++) {
            int e = lane + 32 * i;
            if (e < experts && !((taken >> i) & 1u) && (best == MOE_NONE || z[i] > best_value)) {
                best = e;
                best_value = z[i];
            }
        }
        warp_arg_max(best, best_value);
        if ((best & 31) == lane) taken |= 1u << (best >> 5);
        if (lane == j) {
            chosen = best;
            value = best_value;
        }
    }
    write_route(row, router_bias, bias, t, k, method, scale, all_max, all_sum, lane, chosen, value, real_tokens, out_experts, out_weights,
                load);
}

// moe_route's routing, bit for bit, with one block per token, for steps of few tokens, where
// moe_route's one warp a token waits on its k rounds of warp-wide arg-max one after another. Here
// each thread ranks its experts against all the others at once: an expert's rank is how many
// experts have a larger value, or the same value and a lower index, so the experts of rank below
// k are the same k, in the same order, as moe_route's; the group limit ranks the groups the same
// way. Warp 0 then takes each sum in moe_route's order and ends as moe_route ends. It takes
// moe_route's arguments, so that a launch only picks the kernel and its grid; `tokens` is the
// grid here, (tokens) blocks of MOE_ROUTE_THREADS threads.
extern "C" __global__ void __launch_bounds__(MOE_ROUTE_THREADS)
    moe_route_ranked(const float* __restrict__ logits, const bf16* __restrict__ router_bias, const float* __restrict__ bias,
                     const bf16* __restrict__ correction, int n_group, int topk_group, int tokens, int experts, int k, int method,
                     float scale, const u32* __restrict__ real_tokens, u32* __restrict__ out_experts, float* __restrict__ out_weights,
                     u32* __restrict__ load) {
    pdl_begin();
    // The values that choose: z, or s' (outside the kept groups, -inf).
    __shared__ float value_of[MOE_MAX_EXPERTS];
    __shared__ float group_scores[MOE_MAX_GROUPS];
    __shared__ int choice[MOE_MAX_TOP_K];
    const u64 t = blockIdx.x;
    const float* row = logits + t * experts;
    for (int e = threadIdx.x; e < experts; e += blockDim.x) {
        const float z = routed_logit(row, router_bias, bias, e);
        value_of[e] = method == 4 ? corrected_score(z, correction, e) : z;
    }
    __syncthreads();
    if (method == 4 && topk_group < n_group) {
        const int size = experts / n_group;
        if (threadIdx.x < n_group) group_scores[threadIdx.x] = group_score(value_of, threadIdx.x, size);
        __syncthreads();
        for (int e = threadIdx.x; e < experts; e += blockDim.x) {
            const int g = e / size;
            const float mine = group_scores[g];
            int rank = 0;
            for (int h = 0; h < n_group; h++) rank += group_scores[h] > mine || (group_scores[h] == mine && h < g);
            if (rank >= topk_group) value_of[e] = -INFINITY;
        }
        __syncthreads();
    }
    for (int e = threadIdx.x; e < experts; e += blockDim.x) {
        const float mine = value_of[e];
        int rank = 0;
        for (int j = 0; j < experts; j++) rank += value_of[j] > mine || (value_of[j] == mine && j < e);
        if (rank < k) choice[rank] = e;
    }
    __syncthreads();
    if (threadIdx.x >= 32) return;
    const int lane = threadIdx.x;
    float all_max = -INFINITY, all_sum = 0.f;
    if (method == 0 || method == 2) {
        for (int e = lane; e < experts; e += 32) all_max = fmaxf(all_max, value_of[e]);
        all_max = warp_max(all_max);
        for (int e = lane; e < experts; e += 32) all_sum += expf(value_of[e] - all_max);
        all_sum = warp_sum(all_sum);
    }
    const int chosen = lane < k ? choice[lane] : 0;
    const float value = lane < k ? value_of[chosen] : 0.f;
    write_route(row, router_bias, bias, t, k, method, scale, all_max, all_sum, lane, chosen, value, real_tokens, out_experts, out_weights,
                load);
}

// GPT-OSS's expert activation of one gate value and one up value (biases already added):
// g = min(gate, limit), u = clamp(up, −limit, limit), g · sigmoid(alpha · g) · (u + 1).
__device__ __forceinline__ float clamped_swiglu_of(float g, float u, float alpha, float limit) {
    g = fminf(g, limit);
    u = fminf(fmaxf(u, -limit), limit);
    return g / (1.f + expf(-alpha * g)) * (u + 1.f);
}

// GPT-OSS's expert activation on rows of [gate (f), up (f)] bf16 values. Grid: (ceil(f /
// blockDim.x), rows).
extern "C" __global__ void clamped_swiglu(const bf16* __restrict__ gate_up, int f, float alpha, float limit, bf16* __restrict__ out) {
    pdl_begin();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= f) return;
    u64 t = blockIdx.y;
    out[t * f + i] = f2bf(clamped_swiglu_of(bf2f(gate_up[t * 2 * f + i]), bf2f(gate_up[t * 2 * f + f + i]), alpha, limit));
}

// out[t] = sum over j of weights[t*k + j] * y[pos[t*k + j]] (y[t*k + j] when pos is null: rows
// in slot order), rows of `h` bf16 values, plus the shared expert's row `shared[t]` where given,
// scaled by sigmoid(shared_gate[t]) where that is given; summed in f32 and rounded once.
// Grid: (tokens, ceil(h / blockDim.x)), one element per thread.
extern "C" __global__ void moe_combine(const bf16* __restrict__ y, const u32* __restrict__ pos, const float* __restrict__ weights, int k, int h,
                                       const bf16* __restrict__ shared, const float* __restrict__ shared_gate, bf16* __restrict__ out) {
    pdl_begin();
    const u64 t = blockIdx.x;
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= h) return;
    float acc = 0.f;
    for (int j = 0; j < k; j++) acc += weights[t * k + j] * bf2f(y[(pos ? (u64)pos[t * k + j] : t * k + j) * h + i]);
    if (shared) acc += (shared_gate ? 1.f / (1.f + expf(-shared_gate[t])) : 1.f) * bf2f(shared[t * h + i]);
    out[t * h + i] = f2bf(acc);
}
