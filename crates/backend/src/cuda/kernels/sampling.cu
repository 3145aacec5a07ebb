// Token sampling on the GPU, one block per logits row: greedy (first maximum), or temperature
// with top-k and top-p. The random draw for token `index` of a request with `seed` is
// `(splitmix64(splitmix64(seed) ^ index) >> 11) / 2^53`, the CPU sampler's stream. Top-k and
// top-p thresholds are found by bisection on the logit value (ties at the threshold are kept),
// and the draw walks the kept tokens in vocabulary order.

#define SAMPLE_THREADS 1024
#define BISECT_STEPS 40

__device__ __forceinline__ u64 splitmix64(u64 x) {
    u64 z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Number of logits >= threshold, and their mass exp((x - max) / temperature).
__device__ void count_above(const float* x, int vocab, float threshold, float max, float inv_temp, float* scratch, float* count,
                            float* mass) {
    float c = 0.f, w = 0.f;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
        if (x[i] >= threshold) {
            c += 1.f;
            w += __expf((x[i] - max) * inv_temp);
        }
    }
    *count = block_sum(c, scratch);
    *mass = block_sum(w, scratch);
}

// params: 6 words per row: temperature (f32 bits), top_k, top_p (f32 bits), seed low, seed high, index.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_tokens(const float* logits, const u32* params, int vocab, u32* out) {
    pdl_begin();
    __shared__ float scratch[32];
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    __shared__ float chunk_mass[SAMPLE_THREADS];
    const float* x = logits + (u64)blockIdx.x * vocab;
    const u32* p = params + 6 * blockIdx.x;
    float temperature = __uint_as_float(p[0]), top_p = __uint_as_float(p[2]);
    u32 top_k = p[1];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    // Greedy, also the maximum for the other modes: the first index holding the largest value.
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS)
        if (x[i] > bv) {
            bv = x[i];
            bi = i;
        }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    if (lane == 0) {
        best_v[warp] = bv;
        best_i[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < SAMPLE_THREADS / 32; w++)
            if (best_v[w] > bv || (best_v[w] == bv && best_i[w] < bi)) {
                bv = best_v[w];
                bi = best_i[w];
            }
        best_v[0] = bv;
        best_i[0] = bi;
    }
    __syncthreads();
    float max = best_v[0];
    if (temperature <= 0.f || top_k == 1) {
        if (threadIdx.x == 0) out[blockIdx.x] = (u32)best_i[0];
        return;
    }
    float inv_temp = 1.f / temperature;

    float lowest = INFINITY;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) lowest = fminf(lowest, x[i]);
    lowest = -block_max(-lowest, scratch);

    float count, mass;
    float threshold = lowest;
    if (top_k > 0 && top_k < (u32)vocab) {
        float lo = lowest, hi = max;
        for (int step = 0; step < BISECT_STEPS; step++) {
            float mid = 0.5f * (lo + hi);
            count_above(x, vocab, mid, max, inv_temp, scratch, &count, &mass);
            if (count >= (float)top_k) lo = mid; else hi = mid;
        }
        threshold = lo;
    }
    count_above(x, vocab, threshold, max, inv_temp, scratch, &count, &mass);
    if (top_p < 1.f) {
        float want = top_p * mass, lo = threshold, hi = max;
        for (int step = 0; step < BISECT_STEPS; step++) {
            float mid = 0.5f * (lo + hi);
            float c, w;
            count_above(x, vocab, mid, max, inv_temp, scratch, &c, &w);
            if (w >= want) lo = mid; else hi = mid;
        }
        threshold = lo;
        count_above(x, vocab, threshold, max, inv_temp, scratch, &count, &mass);
    }

    // Each thread owns one contiguous chunk of the vocabulary; chunk sums are scanned in order.
    int per = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    int begin = threadIdx.x * per, end = min(vocab, begin + per);
    float own = 0.f;
    for (int i = begin; i < end; i++)
        if (x[i] >= threshold) own += __expf((x[i] - max) * inv_temp);
    chunk_mass[threadIdx.x] = own;
    __syncthreads();
    if (threadIdx.x == 0) {
        u64 seed = ((u64)p[4] << 32) | p[3];
        double u = (double)(splitmix64(splitmix64(seed) ^ (u64)p[5]) >> 11) / 9007199254740992.0;
        float target = (float)(u * (double)mass);
        float before = 0.f;
        int owner = -1;
        for (int t = 0; t < SAMPLE_THREADS; t++) {
            if (chunk_mass[t] > 0.f) owner = t;
            if (before + chunk_mass[t] > target && chunk_mass[t] > 0.f) break;
            before += chunk_mass[t];
        }
        best_i[0] = owner;
        best_v[0] = target - before;
    }
    __syncthreads();
    if (threadIdx.x == best_i[0]) {
        float left = best_v[0];
        int chosen = -1;
        for (int i = begin; i < end; i++) {
            if (x[i] < threshold) continue;
            chosen = i;
            left -= __expf((x[i] - max) * inv_temp);
            if (left < 0.f) break;
        }
        out[blockIdx.x] = (u32)chosen;
    }
}
