// Probe: a batch-1 decode step of qwen3-30b-a3b's 48 layers as one persistent kernel whose blocks
// stream their weight rows into shared memory ahead of the data they multiply (bulk copies into a
// ring of pages, one producer warp a block), and meet only through per-stage completion counters,
// against the same arithmetic launched one kernel a stage (captured in a CUDA graph). Stages of a
// layer (every block takes a contiguous share of each weight's rows):
//   0: rms norm of the residual (each block its own copy) + QKV rows
//   1: attention over `ctx` cached positions and the new token: a block per (head, quarter of the
//      positions); the quarters merge in stage 2's preamble
//   2: output projection rows + residual
//   3: norm + router rows
//   4: top-8 routing (each block, producer and consumers alike) + the 8 experts' gate/up rows, SwiGLU
//   5: down rows of the 8 experts, weighted, + residual
// The producer runs ahead across stages and layers, bounded only by the ring; it waits on data
// only for the expert rows, which need the routing. Built with -DNO_AHEAD, the producer waits for
// each stage's input as the consumers do, so the same kernel shows what loading ahead buys.
// Built with -DX_REGS, the consumers hold a 2,048-value input in registers for the stages whose
// rows are that long (QKV, router, gate/up), so shared memory carries the weights alone. RoPE and Qwen3's q/k norms are left out
// (a few operations an element of the attention stage). Weights are random bf16, distinct per
// layer (5.5 GB in all; a layer's 8 experts are stored by slot), so nothing stays in L2.
#include <cuda_bf16.h>
#ifndef __CUDACC_RTC__  // NVRTC compiles the device code alone (a compile check without nvcc)
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#endif
#define CK(x) do { cudaError_t e_ = (x); if (e_) { printf("cuda %s at line %d\n", cudaGetErrorString(e_), __LINE__); exit(1);} } while (0)

typedef unsigned long long u64;
typedef unsigned u32;
typedef __nv_bfloat16 bf16;
constexpr int H = 2048, NQ = 32, NKV = 4, HD = 128, QKV = (NQ + 2 * NKV) * HD, ATT = NQ * HD;
#define NEG_INF __int_as_float(0xff800000)
constexpr int E = 128, TOPK = 8, I = 768, LAYERS = 48, MAXCTX = 1024, SPLITS = 4, STAGES = 6;
#ifndef NCONS
#define NCONS 6
#endif
#ifndef RING
#define RING 12
#endif
#ifndef PAGE_BYTES
#define PAGE_BYTES 16384
#endif
constexpr int PAGE = PAGE_BYTES, CONS_THREADS = NCONS * 32, THREADS = CONS_THREADS + 32;
// Page p goes to ring slot p % RING and to consumer warp p % NCONS. A warp waits for its page by
// the parity of the slot's phase, which cannot tell phase k from k - 2; with RING a multiple of
// NCONS the page RING before it is the same warp's, so phase k - 1 is over before the wait.
static_assert(RING % NCONS == 0, "RING must be a multiple of NCONS");

struct Layer {
    const bf16 *wqkv, *wo, *wr;
    const bf16 *gate_up[TOPK], *down[TOPK];
    const bf16 *k_cache, *v_cache;  // [NKV][MAXCTX][HD]
};
struct Act {
    float* resid;   // H
    float* qkv;     // QKV
    float* att;     // ATT (the reference's attention output)
    float* part;    // [NQ][SPLITS][HD + 2]: the dataflow attention's partials (acc, max, sum)
    float* logits;  // E
    float* h;       // TOPK * I
    u32* done;      // [LAYERS * STAGES] blocks done with each stage
};

__device__ __forceinline__ void unpack8(uint4 v, float (&f)[8]) {
    f[0] = __uint_as_float(v.x << 16); f[1] = __uint_as_float(v.x & 0xffff0000u);
    f[2] = __uint_as_float(v.y << 16); f[3] = __uint_as_float(v.y & 0xffff0000u);
    f[4] = __uint_as_float(v.z << 16); f[5] = __uint_as_float(v.z & 0xffff0000u);
    f[6] = __uint_as_float(v.w << 16); f[7] = __uint_as_float(v.w & 0xffff0000u);
}
__device__ __forceinline__ float bfv(unsigned short u) { return __uint_as_float(((u32)u) << 16); }
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ u32 ld_acquire(const u32* p) {
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
// Spins until every one of the grid's `g` blocks has counted itself done in `*done`.
__device__ __forceinline__ void wait_for_grid(const u32* done, int g) {
    while (ld_acquire(done) < (u32)g) {}
}
__device__ __forceinline__ u32 saddr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(u64* b, u32 count) { asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(saddr(b)), "r"(count) : "memory"); }
__device__ __forceinline__ void mbar_expect(u64* b, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(saddr(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u64* b) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(saddr(b)) : "memory"); }
__device__ __forceinline__ void mbar_wait(u64* b, u32 parity) {
    u32 ok;
    do {
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(ok) : "r"(saddr(b)), "r"(parity) : "memory");
    } while (!ok);
}
__device__ __forceinline__ void bulk_load(void* dst, const void* src, u32 bytes, u64* bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(saddr(dst)), "l"(src), "r"(bytes), "r"(saddr(bar)) : "memory");
}
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;" ::"n"(CONS_THREADS) : "memory"); }

// A run of consecutive weight rows a block reads in one stage; `tag` says where its products go.
struct Seg {
    const bf16* rows;
    int count, row_bytes, tag;
};
constexpr int MAX_SEGS = 2 * TOPK;

__device__ __forceinline__ void share(int total, int parts, int part, int& lo, int& hi) {
    lo = (int)((long long)total * part / parts);
    hi = (int)((long long)total * (part + 1) / parts);
}

// The segments block `b` of `g` reads in stage `st` of layer `L`, in the order it reads them.
__device__ int segments(const Layer& L, int st, int b, int g, Seg* s) {
    int lo, hi, n = 0;
    if (st == 0) {
        share(QKV, g, b, lo, hi);
        s[n++] = {L.wqkv + (u64)lo * H, hi - lo, H * 2, lo};
    } else if (st == 2) {
        share(H, g, b, lo, hi);
        s[n++] = {L.wo + (u64)lo * ATT, hi - lo, ATT * 2, lo};
    } else if (st == 3) {
        share(E, g, b, lo, hi);
        if (hi > lo) s[n++] = {L.wr + (u64)lo * H, hi - lo, H * 2, lo};
    } else if (st == 4) {
        share(TOPK * I, g, b, lo, hi);
        for (int slot = lo / I; slot < TOPK && slot * I < hi; slot++) {
            const int j0 = max(lo - slot * I, 0), j1 = min(hi - slot * I, I);
            s[n++] = {L.gate_up[slot] + (u64)j0 * H, j1 - j0, H * 2, slot * I + j0};          // gate rows
            s[n++] = {L.gate_up[slot] + (u64)(I + j0) * H, j1 - j0, H * 2, -(slot * I + j0) - 1};  // up rows
        }
    } else if (st == 5) {
        share(H, g, b, lo, hi);
        for (int slot = 0; slot < TOPK; slot++) s[n++] = {L.down[slot] + (u64)lo * I, hi - lo, I * 2, slot};
    }
    return n;
}
__device__ __forceinline__ int rows_per_page(int row_bytes) { return max(1, PAGE / row_bytes); }

struct __align__(16) Smem {
    unsigned char ring[RING][PAGE];
    float xs[TOPK * I];
    float gu[2][64];            // stage 4: gate and up sums of this block's units
    float dn[TOPK][24];         // stage 5: each slot's sums of this block's rows
    float scores[MAXCTX / SPLITS + 8];
    float part[NCONS][HD];
    float red[NCONS];
    int chosen[TOPK];
    float weight[TOPK];
    u64 full[RING], empty[RING];
};

// Top 8 of the 128 logits by one warp, softmax over them (the same bits in every block).
__device__ void route_warp(const float* logits, int* chosen, float* weight) {
    const int lane = threadIdx.x & 31;
    float v[4];
    for (int j = 0; j < 4; j++) v[j] = __ldcg(logits + lane + 32 * j);
    float top[TOPK];
    int idx[TOPK];
    for (int s = 0; s < TOPK; s++) {
        float best = NEG_INF;
        int bi = 0;
        for (int j = 0; j < 4; j++)
            if (v[j] > best) { best = v[j]; bi = lane + 32 * j; }
        for (int o = 16; o > 0; o >>= 1) {
            const float ob = __shfl_xor_sync(0xffffffffu, best, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ob > best || (ob == best && oi < bi)) { best = ob; bi = oi; }
        }
        top[s] = best;
        idx[s] = bi;
        if ((bi & 31) == lane) v[bi >> 5] = NEG_INF;
    }
    if (lane == 0) {
        float sum = 0.f;
        for (int s = 0; s < TOPK; s++) sum += __expf(top[s] - top[0]);
        for (int s = 0; s < TOPK; s++) {
            if (chosen) chosen[s] = idx[s];
            if (weight) weight[s] = __expf(top[s] - top[0]) / sum;
        }
    }
    __syncwarp();
}

// rms_norm(resid) into xs by the consumer threads (unit norm weights).
__device__ void cons_norm(const float* resid, Smem& s) {
    const int t = threadIdx.x - 32;
    float ss = 0.f;
    for (int i = t; i < H; i += CONS_THREADS) {
        const float v = __ldcg(resid + i);
        s.xs[i] = v;
        ss += v * v;
    }
    ss = warp_sum(ss);
    if ((t & 31) == 0) s.red[t >> 5] = ss;
    consumers_sync();
    float tot = 0.f;
    for (int w = 0; w < NCONS; w++) tot += s.red[w];
    const float r = rsqrtf(tot / H + 1e-6f);
    for (int i = t; i < H; i += CONS_THREADS) s.xs[i] *= r;
    consumers_sync();
}

__device__ __forceinline__ float page_row_dot(const unsigned char* row, const float* x, int row_bytes) {
    const int lane = threadIdx.x & 31;
    const uint4* w = (const uint4*)row;
    float acc = 0.f;
    for (int c = lane; c < row_bytes / 16; c += 32) {
        float f[8];
        unpack8(w[c], f);
        const float4 x0 = ((const float4*)x)[2 * c], x1 = ((const float4*)x)[2 * c + 1];
        acc = fmaf(f[0], x0.x, acc); acc = fmaf(f[1], x0.y, acc); acc = fmaf(f[2], x0.z, acc); acc = fmaf(f[3], x0.w, acc);
        acc = fmaf(f[4], x1.x, acc); acc = fmaf(f[5], x1.y, acc); acc = fmaf(f[6], x1.z, acc); acc = fmaf(f[7], x1.w, acc);
    }
    return warp_sum(acc);
}

// The same sums with a 2,048-value x held in registers: lane l's chunks l + 32 j, read once a
// stage instead of once a row (-DX_REGS, for the stages whose rows are 2,048 long).
constexpr int X_CHUNKS = H / 256;
__device__ __forceinline__ float page_row_dot_regs(const unsigned char* row, const float (&xr)[X_CHUNKS * 8]) {
    const int lane = threadIdx.x & 31;
    const uint4* w = (const uint4*)row;
    float acc = 0.f;
#pragma unroll
    for (int j = 0; j < X_CHUNKS; j++) {
        float f[8];
        unpack8(w[lane + 32 * j], f);
#pragma unroll
        for (int e = 0; e < 8; e++) acc = fmaf(f[e], xr[8 * j + e], acc);
    }
    return warp_sum(acc);
}

__device__ __forceinline__ u64 now_ns() {
    u64 t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}

// A warp's rows of the attention stage, all loaded before any is used: this lane's 4 values of
// row p = base + u * NCONS for each u < AHEAD below p1, from the cache for p < ctx, else (p == ctx)
// the new token's f32 row.
constexpr int AHEAD = 8;
__device__ __forceinline__ void load_rows(const bf16* cache, const float* fresh, int base, int p1, int ctx, float (&rows)[AHEAD][4]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int u = 0; u < AHEAD; u++) {
        const int p = base + u * NCONS;
        if (p < p1 && p < ctx) {
            const uint2 v = __ldg((const uint2*)(cache + (u64)p * HD) + lane);
            rows[u][0] = bfv(v.x & 0xffff); rows[u][1] = bfv(v.x >> 16); rows[u][2] = bfv(v.y & 0xffff); rows[u][3] = bfv(v.y >> 16);
        } else if (p == ctx) {
            for (int j = 0; j < 4; j++) rows[u][j] = __ldcg(fresh + lane * 4 + j);
        }
    }
}

// Stage 1 for block b < NQ * SPLITS: head b / SPLITS over its quarter of ctx + 1 positions.
__device__ void cons_attention(const Layer& L, const Act& a, int ctx, Smem& s) {
    const int b = blockIdx.x, head = b / SPLITS, split = b % SPLITS, g = head / (NQ / NKV);
    const int t = threadIdx.x - 32, warp = t >> 5, lane = t & 31;
    int p0, p1;
    share(ctx + 1, SPLITS, split, p0, p1);
    const float scale = rsqrtf((float)HD);
    float q[4];
    for (int j = 0; j < 4; j++) q[j] = __ldcg(a.qkv + head * HD + lane * 4 + j) * scale;
    const bf16* kc = L.k_cache + (u64)g * MAXCTX * HD;
    const bf16* vc = L.v_cache + (u64)g * MAXCTX * HD;
    const float* knew = a.qkv + ATT + g * HD;
    const float* vnew = a.qkv + ATT + NKV * HD + g * HD;
    // Each warp's positions p0 + warp, + NCONS, ...: all its keys loaded before any score.
    for (int base = p0 + warp; base < p1; base += NCONS * AHEAD) {
        float kf[AHEAD][4];
        load_rows(kc, knew, base, p1, ctx, kf);
#pragma unroll
        for (int u = 0; u < AHEAD; u++) {
            const int p = base + u * NCONS;
            if (p < p1) {
                const float sc = warp_sum(kf[u][0] * q[0] + kf[u][1] * q[1] + kf[u][2] * q[2] + kf[u][3] * q[3]);
                if (lane == 0) s.scores[p - p0] = sc;
            }
        }
    }
    consumers_sync();
    float m = NEG_INF;
    for (int p = t; p < p1 - p0; p += CONS_THREADS) m = fmaxf(m, s.scores[p]);
    m = warp_max(m);
    if (lane == 0) s.red[warp] = m;
    consumers_sync();
    m = s.red[0];
    for (int w = 1; w < NCONS; w++) m = fmaxf(m, s.red[w]);
    consumers_sync();
    float sum = 0.f;
    for (int p = t; p < p1 - p0; p += CONS_THREADS) {
        const float e = __expf(s.scores[p] - m);
        s.scores[p] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0) s.red[warp] = sum;
    consumers_sync();
    float o[4] = {0.f, 0.f, 0.f, 0.f};
    for (int base = p0 + warp; base < p1; base += NCONS * AHEAD) {
        float vf[AHEAD][4];
        load_rows(vc, vnew, base, p1, ctx, vf);
#pragma unroll
        for (int u = 0; u < AHEAD; u++) {
            const int p = base + u * NCONS;
            if (p < p1) {
                const float e = s.scores[p - p0];
                for (int j = 0; j < 4; j++) o[j] += e * vf[u][j];
            }
        }
    }
    for (int j = 0; j < 4; j++) s.part[warp][lane * 4 + j] = o[j];
    consumers_sync();
    float* out = a.part + (u64)(head * SPLITS + split) * (HD + 2);
    if (t < HD) {
        float acc = 0.f;
        for (int w = 0; w < NCONS; w++) acc += s.part[w][t];
        out[t] = acc;
    }
    if (t == 0) {
        float l = 0.f;
        for (int w = 0; w < NCONS; w++) l += s.red[w];
        out[HD] = m;
        out[HD + 1] = l;
    }
}

// Stage 2's input: the attention quarters merged, into xs.
__device__ void cons_merge(const Act& a, Smem& s) {
    for (int i = threadIdx.x - 32; i < ATT; i += CONS_THREADS) {
        const int head = i / HD, d = i % HD;
        const float* p = a.part + (u64)head * SPLITS * (HD + 2);
        float m = NEG_INF;
        for (int sp = 0; sp < SPLITS; sp++) m = fmaxf(m, __ldcg(p + sp * (HD + 2) + HD));
        float num = 0.f, den = 0.f;
        for (int sp = 0; sp < SPLITS; sp++) {
            const float f = __expf(__ldcg(p + sp * (HD + 2) + HD) - m);
            num += f * __ldcg(p + sp * (HD + 2) + d);
            den += f * __ldcg(p + sp * (HD + 2) + HD + 1);
        }
        s.xs[i] = num / den;
    }
    consumers_sync();
}

__global__ void __launch_bounds__(THREADS, 1) dataflow_step(const Layer* layers, Act a, int ctx, u64* stamps) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    Smem& s = *(Smem*)smem_raw;
    const int g = gridDim.x, b = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (threadIdx.x == 0) {
        for (int i = 0; i < RING; i++) {
            mbar_init(&s.full[i], 1);
            mbar_init(&s.empty[i], 1);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    Seg seg[MAX_SEGS];
    if (warp == 0) {
        // The producer: every page of every stage in order, as ring slots come free.
        u32 page = 0;
        for (int l = 0; l < LAYERS; l++) {
            const Layer& L = layers[l];
            for (int st = 0; st < STAGES; st++) {
#ifdef NO_AHEAD
                // The control: no stage's rows load before the stage's input is ready.
                const int dep = l * STAGES + st - 1;
                if (dep >= 0 && lane == 0) wait_for_grid(a.done + dep, g);
                __syncwarp();
#endif
                if (st == 4) {
                    // The experts' rows need the routing: wait for the router's logits.
                    if (lane == 0) wait_for_grid(a.done + l * STAGES + 3, g);
                    __syncwarp();
                    route_warp(a.logits, nullptr, nullptr);
                }
                const int n = segments(L, st, b, g, seg);
                for (int i = 0; i < n; i++) {
                    const int per = rows_per_page(seg[i].row_bytes);
                    for (int r = 0; r < seg[i].count; r += per, page++) {
                        const int slot = page % RING;
                        if (page >= RING) mbar_wait(&s.empty[slot], ((page / RING) - 1) & 1);
                        if (lane == 0) {
                            const u32 bytes = min(per, seg[i].count - r) * seg[i].row_bytes;
                            mbar_expect(&s.full[slot], bytes);
                            bulk_load(s.ring[slot], (const unsigned char*)seg[i].rows + (u64)r * seg[i].row_bytes, bytes, &s.full[slot]);
                        }
                        __syncwarp();
                    }
                }
            }
        }
        return;
    }
    const int cw = warp - 1, t = threadIdx.x - 32;
    u32 page = 0;
#ifdef X_REGS
    float xr[X_CHUNKS * 8];
#endif
    if (b == 0 && t == 0) stamps[LAYERS * STAGES] = now_ns();
    for (int l = 0; l < LAYERS; l++) {
        const Layer& L = layers[l];
        for (int st = 0; st < STAGES; st++) {
            // Wait for every block to finish the stage this one reads.
            const int dep = l * STAGES + st - 1;
            if (dep >= 0) {
                if (t == 0) wait_for_grid(a.done + dep, g);
                consumers_sync();
            }
            if (st == 0) cons_norm(a.resid, s);
            else if (st == 1) {
                if (b < NQ * SPLITS) cons_attention(L, a, ctx, s);
            } else if (st == 2) cons_merge(a, s);
            else if (st == 3) cons_norm(a.resid, s);
            else if (st == 4) {
                // xs still holds stage 3's normed residual.
                if (cw == 0) route_warp(a.logits, s.chosen, s.weight);
                consumers_sync();
            } else if (st == 5) {
                for (int i = t; i < TOPK * I; i += CONS_THREADS) s.xs[i] = __ldcg(a.h + i);
                consumers_sync();
            }
            const int n = segments(L, st, b, g, seg);
            int lo, hi;
            share(st == 4 ? TOPK * I : H, g, b, lo, hi);
#ifdef X_REGS
            const bool x_in_regs = st == 0 || st == 3 || st == 4;
            if (x_in_regs)
#pragma unroll
                for (int j = 0; j < X_CHUNKS; j++)
#pragma unroll
                    for (int e = 0; e < 8; e++) xr[8 * j + e] = s.xs[8 * (lane + 32 * j) + e];
#define ROW_DOT_H(row) (x_in_regs ? page_row_dot_regs(row, xr) : page_row_dot(row, s.xs, H * 2))
#else
#define ROW_DOT_H(row) page_row_dot(row, s.xs, H * 2)
#endif
            for (int i = 0; i < n; i++) {
                const int per = rows_per_page(seg[i].row_bytes);
                for (int r = 0; r < seg[i].count; r += per, page++) {
                    if ((int)(page % NCONS) != cw) continue;
                    const int slot = page % RING;
                    mbar_wait(&s.full[slot], (page / RING) & 1);
                    const int rows = min(per, seg[i].count - r);
                    for (int k = 0; k < rows; k++) {
                        const unsigned char* row = s.ring[slot] + k * seg[i].row_bytes;
                        const int at = r + k;
                        if (st == 0) {
                            const float v = ROW_DOT_H(row);
                            if (lane == 0) a.qkv[seg[i].tag + at] = v;
                        } else if (st == 2) {
                            const float v = page_row_dot(row, s.xs, ATT * 2);
                            if (lane == 0) a.resid[seg[i].tag + at] = __ldcg(a.resid + seg[i].tag + at) + v;
                        } else if (st == 3) {
                            const float v = ROW_DOT_H(row);
                            if (lane == 0) a.logits[seg[i].tag + at] = v;
                        } else if (st == 4) {
                            const float v = ROW_DOT_H(row);
                            const int tag = seg[i].tag, unit = (tag >= 0 ? tag : -tag - 1) + at;
                            if (lane == 0) s.gu[tag >= 0 ? 0 : 1][unit - lo] = v;
                        } else {
                            const int slot_e = seg[i].tag;
                            const float v = page_row_dot(row, s.xs + slot_e * I, I * 2);
                            if (lane == 0) s.dn[slot_e][at] = v;
                        }
                    }
                    __syncwarp();
                    if (lane == 0) mbar_arrive(&s.empty[slot]);
                }
            }
            consumers_sync();
            if (st == 4) {
                for (int u = lo + t; u < hi; u += CONS_THREADS) {
                    const float gt = s.gu[0][u - lo], up = s.gu[1][u - lo];
                    a.h[u] = gt / (1.f + __expf(-gt)) * up;
                }
            } else if (st == 5) {
                for (int r = lo + t; r < hi; r += CONS_THREADS) {
                    float acc = 0.f;
                    for (int e = 0; e < TOPK; e++) acc += s.weight[e] * s.dn[e][r - lo];
                    a.resid[r] = __ldcg(a.resid + r) + acc;
                }
            }
            consumers_sync();
            if (t == 0) {
                __threadfence();
                // The last block to finish a stage stamps when the whole grid has.
                if (atomicAdd(a.done + l * STAGES + st, 1u) == (u32)g - 1) stamps[l * STAGES + st] = now_ns();
            }
        }
    }
}

// ---- The reference: one plain launch a stage, the same arithmetic up to the order of sums.
__device__ void ref_norm(const float* resid, float* xs, float* red) {
    float ss = 0.f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        const float v = __ldcg(resid + i);
        xs[i] = v;
        ss += v * v;
    }
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    float tot = 0.f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) tot += red[w];
    const float r = rsqrtf(tot / H + 1e-6f);
    __syncthreads();
    for (int i = threadIdx.x; i < H; i += blockDim.x) xs[i] *= r;
    __syncthreads();
}
__device__ float ref_dot(const bf16* w, const float* x, int k) {
    const int lane = threadIdx.x & 31;
    float acc = 0.f;
    for (int c = lane; c < k / 8; c += 32) {
        float f[8];
        unpack8(__ldg((const uint4*)w + c), f);
        for (int j = 0; j < 8; j++) acc = fmaf(f[j], x[8 * c + j], acc);
    }
    return warp_sum(acc);
}
__global__ void ref_norm_rows(const float* resid, const bf16* w, int rows, float* out) {
    __shared__ float xs[H], red[32];
    ref_norm(resid, xs, red);
    const int gw = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5), nw = gridDim.x * (blockDim.x / 32);
    for (int r = gw; r < rows; r += nw) {
        const float v = ref_dot(w + (u64)r * H, xs, H);
        if ((threadIdx.x & 31) == 0) out[r] = v;
    }
}
__global__ void ref_attention(const Layer* layers, int l, Act a, int ctx) {
    __shared__ float sc[MAXCTX + 1], red[32];
    const Layer& L = layers[l];
    const int head = blockIdx.x, g = head / (NQ / NKV), d = threadIdx.x;  // blockDim = HD
    const float scale = rsqrtf((float)HD);
    for (int p = 0; p <= ctx; p++) {
        const float k = p < ctx ? __bfloat162float(L.k_cache[((u64)g * MAXCTX + p) * HD + d]) : __ldcg(a.qkv + ATT + g * HD + d);
        float v = warp_sum(__ldcg(a.qkv + head * HD + d) * scale * k);
        if ((d & 31) == 0) red[d >> 5] = v;
        __syncthreads();
        if (d == 0) sc[p] = red[0] + red[1] + red[2] + red[3];
        __syncthreads();
    }
    float m = NEG_INF;
    for (int p = 0; p <= ctx; p++) m = fmaxf(m, sc[p]);
    float sum = 0.f, o = 0.f;
    for (int p = 0; p <= ctx; p++) {
        const float e = __expf(sc[p] - m);
        sum += e;
        const float v = p < ctx ? __bfloat162float(L.v_cache[((u64)g * MAXCTX + p) * HD + d]) : __ldcg(a.qkv + ATT + NKV * HD + g * HD + d);
        o += e * v;
    }
    a.att[head * HD + d] = o / sum;
}
__global__ void ref_oproj(const Layer* layers, int l, Act a) {
    __shared__ float xs[ATT];
    for (int i = threadIdx.x; i < ATT; i += blockDim.x) xs[i] = __ldcg(a.att + i);
    __syncthreads();
    const int gw = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5), nw = gridDim.x * (blockDim.x / 32);
    for (int r = gw; r < H; r += nw) {
        const float v = ref_dot(layers[l].wo + (u64)r * ATT, xs, ATT);
        if ((threadIdx.x & 31) == 0) a.resid[r] += v;
    }
}
__global__ void ref_gate_up(const Layer* layers, int l, Act a) {
    __shared__ float xs[H], red[32];
    ref_norm(a.resid, xs, red);
    const int gw = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5), nw = gridDim.x * (blockDim.x / 32);
    for (int u = gw; u < TOPK * I; u += nw) {
        const int slot = u / I, j = u % I;
        const float gt = ref_dot(layers[l].gate_up[slot] + (u64)j * H, xs, H), up = ref_dot(layers[l].gate_up[slot] + (u64)(I + j) * H, xs, H);
        if ((threadIdx.x & 31) == 0) a.h[u] = gt / (1.f + __expf(-gt)) * up;
    }
}
__global__ void ref_down(const Layer* layers, int l, Act a) {
    __shared__ float xs[TOPK * I], weight[TOPK];
    if (threadIdx.x < 32) route_warp(a.logits, nullptr, weight);
    for (int i = threadIdx.x; i < TOPK * I; i += blockDim.x) xs[i] = __ldcg(a.h + i);
    __syncthreads();
    const int gw = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5), nw = gridDim.x * (blockDim.x / 32);
    for (int r = gw; r < H; r += nw) {
        float acc = 0.f;
        for (int e = 0; e < TOPK; e++) acc += weight[e] * ref_dot(layers[l].down[e] + (u64)r * I, xs + e * I, I);
        if ((threadIdx.x & 31) == 0) a.resid[r] += acc;
    }
}

__global__ void fill(bf16* p, u64 n, u32 seed, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u32 x = (u32)(i * 2654435761ull) ^ seed;
        x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
        p[i] = __float2bfloat16(((x & 0xffff) / 65536.f - 0.5f) * scale);
    }
}

#ifndef __CUDACC_RTC__
int main(int argc, char** argv) {
    const int ctx = argc > 1 ? atoi(argv[1]) : 150;
    if (ctx < 1 || ctx + 1 > MAXCTX) { printf("ctx must be in 1..%d\n", MAXCTX - 1); return 2; }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const int g = prop.multiProcessorCount;
    printf("device %s, %d SMs, L2 %d MB; consumers %d warps, ring %d pages of %d KB\n", prop.name, g, prop.l2CacheSize >> 20, NCONS, RING, PAGE / 1024);
    if (g < NQ * SPLITS) { printf("needs %d SMs\n", NQ * SPLITS); return 2; }
    const size_t smem = sizeof(Smem);
    CK(cudaFuncSetAttribute(dataflow_step, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    cudaFuncAttributes fa;
    CK(cudaFuncGetAttributes(&fa, dataflow_step));
    int per_sm = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, dataflow_step, THREADS, smem));
    printf("dataflow_step: %d registers, %zu B shared, %d blocks an SM\n", fa.numRegs, smem, per_sm);
    if (per_sm < 1) return 2;

    std::vector<Layer> host(LAYERS);
    u64 weight_bytes = 0;
    u32 seed = 1;
    auto alloc = [&](u64 n, float scale, bool weight) {
        bf16* p;
        CK(cudaMalloc(&p, n * 2));
        fill<<<1024, 256>>>(p, n, seed++ * 0x9e3779b9u, scale);
        if (weight) weight_bytes += n * 2;
        return p;
    };
    for (int l = 0; l < LAYERS; l++) {
        Layer& L = host[l];
        L.wqkv = alloc((u64)QKV * H, 0.1f, true);
        L.wo = alloc((u64)H * ATT, 0.05f, true);
        L.wr = alloc((u64)E * H, 0.2f, true);
        for (int s = 0; s < TOPK; s++) {
            L.gate_up[s] = alloc((u64)2 * I * H, 0.1f, true);
            L.down[s] = alloc((u64)H * I, 0.1f, true);
        }
        L.k_cache = alloc((u64)NKV * MAXCTX * HD, 2.f, false);
        L.v_cache = alloc((u64)NKV * MAXCTX * HD, 2.f, false);
    }
    CK(cudaDeviceSynchronize());
    printf("weights %.2f GB (%.1f MB a layer)\n", weight_bytes / 1e9, weight_bytes / 1e6 / LAYERS);
    Layer* layers;
    CK(cudaMalloc(&layers, sizeof(Layer) * LAYERS));
    CK(cudaMemcpy(layers, host.data(), sizeof(Layer) * LAYERS, cudaMemcpyHostToDevice));
    Act a;
    CK(cudaMalloc(&a.resid, H * 4));
    CK(cudaMalloc(&a.qkv, QKV * 4));
    CK(cudaMalloc(&a.att, ATT * 4));
    CK(cudaMalloc(&a.part, NQ * SPLITS * (HD + 2) * 4));
    CK(cudaMalloc(&a.logits, E * 4));
    CK(cudaMalloc(&a.h, TOPK * I * 4));
    CK(cudaMalloc(&a.done, LAYERS * STAGES * 4));
    u64* stamps;
    CK(cudaMalloc(&stamps, (LAYERS * STAGES + 1) * 8));
    std::vector<float> resid0(H);
    for (int i = 0; i < H; i++) resid0[i] = sinf(i * 0.37f);
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    auto reset = [&]() {
        CK(cudaMemcpyAsync(a.resid, resid0.data(), H * 4, cudaMemcpyHostToDevice, st));
        CK(cudaMemsetAsync(a.done, 0, LAYERS * STAGES * 4, st));
    };
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> ref(H), out(H);

    // The reference, one launch a stage in a graph.
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    for (int l = 0; l < LAYERS; l++) {
        ref_norm_rows<<<2 * g, 256, 0, st>>>(a.resid, host[l].wqkv, QKV, a.qkv);
        ref_attention<<<NQ, HD, 0, st>>>(layers, l, a, ctx);
        ref_oproj<<<2 * g, 256, 0, st>>>(layers, l, a);
        ref_norm_rows<<<2 * g, 256, 0, st>>>(a.resid, host[l].wr, E, a.logits);
        ref_gate_up<<<2 * g, 256, 0, st>>>(layers, l, a);
        ref_down<<<2 * g, 256, 0, st>>>(layers, l, a);
    }
    CK(cudaStreamEndCapture(st, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    float best_ref = 1e30f;
    for (int rep = 0; rep < 6; rep++) {
        reset();
        CK(cudaEventRecord(e0, st));
        CK(cudaGraphLaunch(exec, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (rep) best_ref = fminf(best_ref, ms);
    }
    CK(cudaMemcpy(ref.data(), a.resid, H * 4, cudaMemcpyDeviceToHost));
    printf("reference (a plain launch a stage): step %.3f ms, %.1f us a layer, %.2f TB/s\n", best_ref, best_ref * 1e3 / LAYERS,
           weight_bytes / (best_ref * 1e-3) / 1e12);

    float best = 1e30f;
    for (int rep = 0; rep < 11; rep++) {
        reset();
        CK(cudaEventRecord(e0, st));
        dataflow_step<<<g, THREADS, smem, st>>>(layers, a, ctx, stamps);
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaGetLastError());
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (rep) best = fminf(best, ms);
    }
    CK(cudaMemcpy(out.data(), a.resid, H * 4, cudaMemcpyDeviceToHost));
    double worst = 0, norm = 0;
    for (int i = 0; i < H; i++) {
        worst = fmax(worst, fabs(out[i] - ref[i]));
        norm = fmax(norm, fabs(ref[i]));
    }
    printf("dataflow (grid %d): step %.3f ms, %.1f us a layer, %.2f TB/s; max |diff| against the reference %.3g of max |value| %.3g\n",
           g, best, best * 1e3 / LAYERS, weight_bytes / (best * 1e-3) / 1e12, worst, norm);
    std::vector<u64> t(LAYERS * STAGES + 1);
    CK(cudaMemcpy(t.data(), stamps, t.size() * 8, cudaMemcpyDeviceToHost));
    const double stage_mb[STAGES] = {QKV * H * 2e-6, 0, H * ATT * 2e-6, E * H * 2e-6, TOPK * 2 * I * H * 2e-6, TOPK * H * I * 2e-6};
    printf("  stages, from the grid's end of one to its end of the next, mean over layers 1-47, us (weight GB/s):");
    for (int s = 0; s < STAGES; s++) {
        double sum = 0;
        for (int l = 1; l < LAYERS; l++) sum += (double)(t[l * STAGES + s] - (s ? t[l * STAGES + s - 1] : t[l * STAGES - 1]));
        const double us = sum / (LAYERS - 1) / 1e3;
        printf("  %d: %.1f (%.0f)", s, us, stage_mb[s] / us * 1e3);
    }
    printf("\n");
    return worst <= 1e-2 * fmax(norm, 1.0) ? 0 : 1;
}
#endif
