// Per-token kernels of the decoder: embedding gather, residual add with RMSNorm, RMSNorm of bf16
// rows, RoPE with the paged-cache write, SiLU-and-multiply, and the gather of the rows that need logits.

// The RMSNorm kernels hold a row in registers: each thread owns up to NORM_ITEMS groups of four
// consecutive values (hidden % 4 == 0, hidden <= 4 * NORM_ITEMS * blockDim.x), so every load of a
// row is issued before the first use and the row is read from memory once.
#define NORM_ITEMS 4

__device__ __forceinline__ float4 bf4_to_f4(uint2 w) {
    return make_float4(__uint_as_float(w.x << 16), __uint_as_float(w.x & 0xffff0000u), __uint_as_float(w.y << 16),
                       __uint_as_float(w.y & 0xffff0000u));
}

// The largest magnitude of four bf16 values packed as two words.
__device__ __forceinline__ float bf16x4_amax(uint2 v) {
    const float4 f = bf4_to_f4(v);
    return fmaxf(fmaxf(fabsf(f.x), fabsf(f.y)), fmaxf(fabsf(f.z), fabsf(f.w)));
}

// The largest magnitude of eight bf16 values packed as four words (a 16-byte load).
__device__ __forceinline__ float bf16x8_amax(uint4 v) {
    return fmaxf(bf16x4_amax(make_uint2(v.x, v.y)), bf16x4_amax(make_uint2(v.z, v.w)));
}

__device__ __forceinline__ uint2 f4_to_bf4(float4 v) {
    return make_uint2((u32)f2bf(v.x) | ((u32)f2bf(v.y) << 16), (u32)f2bf(v.z) | ((u32)f2bf(v.w) << 16));
}

// This thread's groups of four of a norm's weight (zeros past the row). The weights never change,
// so the kernels load them before pdl_begin, while the launch before still runs.
__device__ __forceinline__ void load_norm_weight(const bf16* __restrict__ weight, int hidden, float4 (&w)[NORM_ITEMS]) {
#pragma unroll
    for (int it = 0; it < NORM_ITEMS; it++) {
        int i = threadIdx.x + it * blockDim.x;
        w[it] = i < hidden / 4 ? bf4_to_f4(((const uint2*)weight)[i]) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
}

// Writes normed = x * rsqrt(mean(x^2) + eps) * weight for the row held in `v`, with this thread's
// groups of the weight in `w`. With `codes` (else null), also writes the bf16 values' FP8 codes
// under the row's own scale, and that scale to *code_scale: what quantize_fp8_rows would make of
// the row, so that an FP8 product of the normed rows needs no pass of its own over them. `out` may
// then be null, where that product is the rows' only reader: the codes alone are written.
__device__ __forceinline__ void norm_row(const float4 (&v)[NORM_ITEMS], float ss, const float4 (&w)[NORM_ITEMS], float eps, int hidden,
                                         bf16* __restrict__ out, float* scratch, unsigned char* __restrict__ codes,
                                         float* __restrict__ code_scale) {
    float scale = rsqrtf(block_sum(ss, scratch) / hidden + eps);
    int n4 = hidden / 4;
    uint2 packed[NORM_ITEMS];
    float m = 0.f;
#pragma unroll
    for (int it = 0; it < NORM_ITEMS; it++) {
        int i = threadIdx.x + it * blockDim.x;
        if (i < n4) {
            float4 x = v[it];
            packed[it] = f4_to_bf4(make_float4(x.x * scale * w[it].x, x.y * scale * w[it].y, x.z * scale * w[it].z, x.w * scale * w[it].w));
            if (out) ((uint2*)out)[i] = packed[it];
            m = fmaxf(m, bf16x4_amax(packed[it]));
        }
    }
    if (codes) {
        const float s = fp8_scale(block_max(m, scratch));
        if (threadIdx.x == 0) *code_scale = s;
        const Fp8Divisor divisor(s);
#pragma unroll
        for (int it = 0; it < NORM_ITEMS; it++) {
            int i = threadIdx.x + it * blockDim.x;
            if (i < n4) ((u32*)codes)[i] = quantize4_bits(packed[it], divisor);
        }
    }
}

// Loads a bf16 row of `width` values into this thread's groups of four (zeros past the row) and
// returns this thread's sum of their squares.
__device__ __forceinline__ float load_row(const bf16* __restrict__ x, int width, float4 (&v)[NORM_ITEMS]) {
    const uint2* row = (const uint2*)x;
    float ss = 0.f;
#pragma unroll
    for (int it = 0; it < NORM_ITEMS; it++) {
        int i = threadIdx.x + it * blockDim.x;
        v[it] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i < width / 4) {
            v[it] = bf4_to_f4(row[i]);
            ss += v[it].x * v[it].x + v[it].y * v[it].y + v[it].z * v[it].z + v[it].w * v[it].w;
        }
    }
    return ss;
}

// residual[t] = embed[tokens[t]] (f32); normed[t] = rms_norm(residual[t]) * weight (bf16), and
// with `codes` (else null) its FP8 codes and scales[t] (norm_row).
// One block per token. A token word with SAMPLED_TOKEN set names a row of `sampled`, the tokens
// the step before drew (still there: this step draws its own only at its end), and takes that
// row's token: a step launched before its inputs' last tokens reached the host. A token id
// outside the vocabulary traps, so the bad input surfaces as an error of this kernel instead of a
// read out of bounds.
#define SAMPLED_TOKEN 0x80000000u
extern "C" __global__ void embed_rms_norm(const u32* __restrict__ tokens, const u32* __restrict__ sampled, const bf16* __restrict__ embed,
                                          const bf16* __restrict__ weight, float eps, int hidden, u32 vocab, float* __restrict__ residual,
                                          bf16* __restrict__ normed, unsigned char* __restrict__ codes, float* __restrict__ scales) {
    float4 w[NORM_ITEMS];
    load_norm_weight(weight, hidden, w);
    pdl_begin();
    __shared__ float scratch[32];
    int t = blockIdx.x, n4 = hidden / 4;
    u32 tok = tokens[t];
    if (tok & SAMPLED_TOKEN) {
        if (!sampled) __trap();
        tok = sampled[tok & ~SAMPLED_TOKEN];
    }
    if (tok >= vocab) __trap();
    float4* res = (float4*)(residual + (u64)t * hidden);
    float4 v[NORM_ITEMS];
    const float ss = load_row(embed + (u64)tok * hidden, hidden, v);
#pragma unroll
    for (int it = 0; it < NORM_ITEMS; it++) {
        int i = threadIdx.x + it * blockDim.x;
        if (i < n4) res[i] = v[it];
    }
    norm_row(v, ss, w, eps, hidden, normed ? normed + (u64)t * hidden : nullptr, scratch, codes ? codes + (u64)t * hidden : nullptr,
             codes ? scales + t : nullptr);
}

// residual[t] += delta[t] (times delta_scale[t] where that is not null: an FP8 product's output
// whose row scales are left to its reader); normed[t] = rms_norm(residual[t]) * weight, and with
// `codes` (else null) its FP8 codes and scales[t] (norm_row; then normed may be null). One block
// per token.
extern "C" __global__ void add_rms_norm(float* __restrict__ residual, const bf16* __restrict__ delta, const float* __restrict__ delta_scale,
                                        const bf16* __restrict__ weight, float eps, int hidden, bf16* __restrict__ normed,
                                        unsigned char* __restrict__ codes, float* __restrict__ scales) {
    float4 w[NORM_ITEMS];
    load_norm_weight(weight, hidden, w);
    pdl_begin();
    __shared__ float scratch[32];
    u64 base = (u64)blockIdx.x * hidden;
    int n4 = hidden / 4;
    float4* res = (float4*)(residual + base);
    const uint2* d = (const uint2*)(delta + base);
    float4 v[NORM_ITEMS];
    float ss = 0.f;
    const float ds = delta_scale ? delta_scale[blockIdx.x] : 1.f;
#pragma unroll
    for (int it = 0; it < NORM_ITEMS; it++) {
        int i = threadIdx.x + it * blockDim.x;
        v[it] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i < n4) {
            float4 r = res[i], x = bf4_to_f4(d[i]);
            v[it] = make_float4(r.x + x.x * ds, r.y + x.y * ds, r.z + x.z * ds, r.w + x.w * ds);
        }
    }
#pragma unroll
    for (int it = 0; it < NORM_ITEMS; it++) {
        int i = threadIdx.x + it * blockDim.x;
        if (i < n4) {
            res[i] = v[it];
            ss += v[it].x * v[it].x + v[it].y * v[it].y + v[it].z * v[it].z + v[it].w * v[it].w;
        }
    }
    norm_row(v, ss, w, eps, hidden, normed ? normed + base : nullptr, scratch, codes ? codes + base : nullptr, codes ? scales + blockIdx.x : nullptr);
}

// normed[t] = rms_norm(x[t]) * weight over rows of `width` bf16 values (MLA's q and latent
// norms). One block per row.
extern "C" __global__ void rms_norm_rows(const bf16* __restrict__ x, const bf16* __restrict__ weight, float eps, int width,
                                         bf16* __restrict__ normed) {
    float4 w[NORM_ITEMS];
    load_norm_weight(weight, width, w);
    pdl_begin();
    __shared__ float scratch[32];
    u64 base = (u64)blockIdx.x * width;
    float4 v[NORM_ITEMS];
    const float ss = load_row(x + base, width, v);
    norm_row(v, ss, w, eps, width, normed + base, scratch, nullptr, nullptr);
}

// RoPE's cosine and sine at `position` for one frequency, times `attention_factor` (YaRN's, else
// 1): the angle position · inv_freq reduced in double precision.
__device__ __forceinline__ void rope_cos_sin(u32 position, double inv_freq, float attention_factor, float& c, float& s) {
    const double two_pi = 6.283185307179586;
    double angle = (double)position * inv_freq;
    angle -= floor(angle / two_pi) * two_pi;
    sincosf((float)angle, &s, &c);
    s *= attention_factor;
    c *= attention_factor;
}

// RoPE on one pair (a, b) of a head's values (i and i + half) at `position`.
__device__ __forceinline__ void rotate_pair(u32 position, double inv_freq, float attention_factor, float& a, float& b) {
    float s, c;
    rope_cos_sin(position, inv_freq, attention_factor, c, s);
    const float ra = a * c - b * s, rb = b * c + a * s;
    a = ra;
    b = rb;
}

#define ROPE_THREADS 256

// Four floats as four consecutive bf16 values (8 bytes).
__device__ __forceinline__ void store_bf16x4(bf16* p, const float (&v)[4]) {
    *(uint2*)p = make_uint2(pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]));
}

// Splits the fused qkv rows: adds the bias, applies the q/k norms (when given: per head, or over
// every head of q and of k with `norm_full_width`, as OLMoE's) and rotary embedding to q and k
// (its cosines and sines times `attention_factor`: YaRN's, else 1), writes q to `q_out` and k, v
// into the paged cache at each token's slot.
// Grid: (tokens, ceil((heads + 2 * kv_heads) / heads_per_block)); block: ROPE_THREADS threads, a
// lane per four rotation pairs (values 4j..4j+3 and half + 4j..), so a head takes head_dim / 8
// consecutive lanes and a block ROPE_THREADS · 8 / head_dim heads. The token's cosines and sines
// are worked out once a block, in shared memory (head_dim at most 128).
// Cache layout per layer: [block][kv_head][slot in block][head_dim], bf16, or FP8 E4M3 codes with
// scale 1 when `kv_fp8`.
extern "C" __global__ void __launch_bounds__(ROPE_THREADS)
    rope_kv_write(const bf16* qkv, const float* row_scale, const bf16* bias, const bf16* q_norm, const bf16* k_norm, int norm_full_width, float eps,
                  const u32* positions, const u32* slots, const double* inv_freq, float attention_factor, int heads, int kv_heads,
                  int head_dim, int block_size, bf16* q_out, void* k_cache, void* v_cache, int kv_fp8) {
    pdl_begin();
    __shared__ float2 angles[64];
    const int t = blockIdx.x, half = head_dim / 2, lanes = half / 4, total = heads + 2 * kv_heads;
    const int h = blockIdx.y * (ROPE_THREADS / lanes) + threadIdx.x / lanes, j = threadIdx.x % lanes;
    const u32 position = positions[t];
    for (int i = threadIdx.x; i < half; i += ROPE_THREADS) {
        float c, s;
        rope_cos_sin(position, inv_freq[i], attention_factor, c, s);
        angles[i] = make_float2(c, s);
    }
    const bool live = h < total, is_q = h < heads, is_k = !is_q && h < heads + kv_heads;
    const int width = total * head_dim, col = min(h, total - 1) * head_dim + 4 * j;
    const bf16* row = qkv + (u64)t * width;
    float a[4], b[4];
    load_bf16_row<4>(row + col, a);
    load_bf16_row<4>(row + col + half, b);
    const float rs = row_scale ? row_scale[t] : 1.f;
#pragma unroll
    for (int e = 0; e < 4; e++) {
        a[e] *= rs;
        b[e] *= rs;
    }
    if (bias) {
        float ba[4], bb[4];
        load_bf16_row<4>(bias + col, ba);
        load_bf16_row<4>(bias + col + half, bb);
#pragma unroll
        for (int e = 0; e < 4; e++) {
            a[e] += ba[e];
            b[e] += bb[e];
        }
    }
    // Every lane takes part in the sums: a warp may hold heads of two kinds, or none past the
    // last; a head's lanes are consecutive and aligned, so the tree over them stays within it.
    float square = 0.f;
#pragma unroll
    for (int e = 0; e < 4; e++) square += a[e] * a[e] + b[e] * b[e];
    for (int o = lanes / 2; o > 0; o >>= 1) square += __shfl_xor_sync(0xffffffffu, square, o);
    float kind_square = 0.f;
    if (norm_full_width) {
        // OLMoE: one norm over every head of a kind, its sum worked out by each warp for the
        // kind of each lane (both kinds where a warp holds both).
        const bool any_q = __any_sync(0xffffffffu, is_q), any_k = __any_sync(0xffffffffu, !is_q);
        for (int kind = 0; kind < 2; kind++) {
            if (!(kind ? any_k : any_q)) continue;
            const int first = kind ? heads * head_dim : 0, n = (kind ? kv_heads : heads) * head_dim;
            float part = 0.f;
            for (int i = threadIdx.x % 32; i < n; i += 32) {
                const float v = bf2f(row[first + i]) * rs + (bias ? bf2f(bias[first + i]) : 0.f);
                part += v * v;
            }
            part = warp_sum(part);
            if (kind == !is_q) kind_square = part;
        }
    }
    __syncthreads();
    if (!live) return;
    if (is_q || is_k) {
        const bf16* norm = is_q ? q_norm : k_norm;
        if (norm) {
            const int kind_first = is_q ? 0 : heads;
            const float mean_square =
                norm_full_width ? kind_square / ((is_q ? heads : kv_heads) * head_dim) : square / head_dim;
            const int at = norm_full_width ? (h - kind_first) * head_dim + 4 * j : 4 * j;
            const float scale = rsqrtf(mean_square + eps);
            float wa[4], wb[4];
            load_bf16_row<4>(norm + at, wa);
            load_bf16_row<4>(norm + at + half, wb);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                a[e] = a[e] * scale * wa[e];
                b[e] = b[e] * scale * wb[e];
            }
        }
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 cs = angles[4 * j + e];
            const float ra = a[e] * cs.x - b[e] * cs.y, rb = b[e] * cs.x + a[e] * cs.y;
            a[e] = ra;
            b[e] = rb;
        }
    }
    if (is_q) {
        bf16* out = q_out + ((u64)t * heads + h) * head_dim + 4 * j;
        store_bf16x4(out, a);
        store_bf16x4(out + half, b);
        return;
    }
    const int kvh = is_k ? h - heads : h - heads - kv_heads;
    const u32 slot = slots[t];
    const u64 at = (((u64)(slot / block_size) * kv_heads + kvh) * block_size + slot % block_size) * head_dim + 4 * j;
    void* cache = is_k ? k_cache : v_cache;
    if (kv_fp8) {
        // E4M3 codes with scale 1 (values beyond ±448 saturate), from the bf16 values a bf16 cache holds.
        auto codes = [](const float(&v)[4]) {
            return f32x2_to_e4m3x2(bf2f(f2bf(v[1])), bf2f(f2bf(v[0]))) | (f32x2_to_e4m3x2(bf2f(f2bf(v[3])), bf2f(f2bf(v[2]))) << 16);
        };
        *(u32*)((unsigned char*)cache + at) = codes(a);
        *(u32*)((unsigned char*)cache + at + half) = codes(b);
        return;
    }
    store_bf16x4((bf16*)cache + at, a);
    store_bf16x4((bf16*)cache + at + half, b);
}

// silu(g) * u of the eight values of a row of `[gate (f), up (f)]` at group i, each value times
// `rs` first (the row's scale, 1 for none), rounded to bf16.
__device__ __forceinline__ uint4 silu_mul8(const bf16* __restrict__ row, int f, int i, float rs) {
    const uint4 g = ((const uint4*)row)[i], u = ((const uint4*)(row + f))[i];
    const u32 gw[4] = {g.x, g.y, g.z, g.w}, uw[4] = {u.x, u.y, u.z, u.w};
    u32 o[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float g0 = __uint_as_float(gw[j] << 16) * rs, g1 = __uint_as_float(gw[j] & 0xffff0000u) * rs;
        float u0 = __uint_as_float(uw[j] << 16) * rs, u1 = __uint_as_float(uw[j] & 0xffff0000u) * rs;
        o[j] = (u32)f2bf(silu(g0) * u0) | ((u32)f2bf(silu(g1) * u1) << 16);
    }
    return make_uint4(o[0], o[1], o[2], o[3]);
}

// out[t, i] = silu(gate_up[t, i]) * gate_up[t, f + i], eight values per thread (f % 8 == 0), the
// inputs times row_scale[t] first where that is not null (an FP8 product's output whose row scales
// are left to its reader). Grid: (ceil(f / (8 * blockDim.x)), tokens).
extern "C" __global__ void silu_mul(const bf16* __restrict__ gate_up, const float* __restrict__ row_scale, int f, bf16* __restrict__ out) {
    pdl_begin();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    u64 t = blockIdx.y;
    if (i < f / 8) ((uint4*)(out + t * f))[i] = silu_mul8(gate_up + t * 2 * f, f, i, row_scale ? row_scale[t] : 1.f);
}

// x[t] *= scales[t] over rows of `width` bf16 values (width % 8 == 0), in place: an FP8 product's
// output given the row scales its reader did not take. Grid: (ceil(width / (8 * blockDim.x)), rows).
extern "C" __global__ void scale_rows(bf16* __restrict__ x, int width, const float* __restrict__ scales) {
    pdl_begin();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const u64 t = blockIdx.y;
    if (i >= width / 8) return;
    const float s = scales[t];
    uint4* p = (uint4*)(x + t * width) + i;
    const uint4 v = *p;
    const float4 lo = bf4_to_f4(make_uint2(v.x, v.y)), hi = bf4_to_f4(make_uint2(v.z, v.w));
    const uint2 a = f4_to_bf4(make_float4(lo.x * s, lo.y * s, lo.z * s, lo.w * s)), b = f4_to_bf4(make_float4(hi.x * s, hi.y * s, hi.z * s, hi.w * s));
    *p = make_uint4(a.x, a.y, b.x, b.y);
}

// Groups of eight a silu_mul_fp8 thread holds: rows of up to 8 · SILU_ITEMS · 1024 values.
#define SILU_ITEMS 4

// silu_mul's values of row t (row_scale as there) as FP8 codes under the row's own scale, written
// to codes[t] and scales[t]: what quantize_fp8_rows would make of silu_mul's output, without that
// bf16 output. One block per row (f % 8 == 0, f <= 8 · SILU_ITEMS · blockDim.x); the values stay
// in registers between the row's largest magnitude and the codes.
extern "C" __global__ void silu_mul_fp8(const bf16* __restrict__ gate_up, const float* __restrict__ row_scale, int f,
                                        unsigned char* __restrict__ codes, float* __restrict__ scales) {
    pdl_begin();
    __shared__ float scratch[32];
    const u64 t = blockIdx.x;
    const float rs = row_scale ? row_scale[t] : 1.f;
    uint4 v[SILU_ITEMS];
    float m = 0.f;
#pragma unroll
    for (int it = 0; it < SILU_ITEMS; it++) {
        const int i = threadIdx.x + it * blockDim.x;
        if (i < f / 8) {
            v[it] = silu_mul8(gate_up + t * 2 * f, f, i, rs);
            m = fmaxf(m, bf16x8_amax(v[it]));
        }
    }
    const float scale = fp8_scale(block_max(m, scratch));
    if (threadIdx.x == 0) scales[t] = scale;
    const Fp8Divisor divisor(scale);
#pragma unroll
    for (int it = 0; it < SILU_ITEMS; it++) {
        const int i = threadIdx.x + it * blockDim.x;
        if (i < f / 8)
            ((uint2*)(codes + t * f))[i] = quantize8_bits(v[it], divisor);
    }
}

// dst[r] = src[rows[r]] for rows of `width` bf16 values (width % 8 == 0). One block per row.
extern "C" __global__ void gather_rows(const bf16* __restrict__ src, const u32* __restrict__ rows, int width, bf16* __restrict__ dst) {
    pdl_begin();
    const uint4* from = (const uint4*)(src + (u64)rows[blockIdx.x] * width);
    uint4* to = (uint4*)(dst + (u64)blockIdx.x * width);
    for (int i = threadIdx.x; i < width / 8; i += blockDim.x) to[i] = from[i];
}

// x[r, i] += bias[i] over rows of `width` bf16 values, summed in f32 and rounded once.
// Grid: (ceil(width / blockDim.x), rows).
extern "C" __global__ void add_bias(bf16* __restrict__ x, const bf16* __restrict__ bias, int width) {
    pdl_begin();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= width) return;
    u64 at = (u64)blockIdx.y * width + i;
    x[at] = f2bf(bf2f(x[at]) + bf2f(bias[i]));
}
