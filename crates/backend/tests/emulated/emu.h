// lumen's kernels on the CPU: a small emulation of the CUDA execution model. The PTX the kernels
// use (conversions, asynchronous copies, mma.sync, ldmatrix, wgmma) is replaced by the software
// versions below (kernels_emulated.rs's EMULATED_PTX names them). A launch runs its blocks
// one after another and each block's threads as std::threads; `__shared__` variables are function
// statics, shared by the running block's threads. `__syncthreads` is a barrier over the block and
// each warp has a barrier of its own for `__syncwarp` and the shuffles, which pass values through
// a per-warp array between two barrier phases. A thread that returns leaves both barriers, as an
// exited thread leaves the hardware's. Any other inline PTX is made inert (EMU_ASM) by the test
// that builds the kernel sources. Memory is host memory, so a kernel is handed plain pointers.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#undef INFINITY
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__
#define __align__(n) __attribute__((aligned(n)))
#define EMU_ASM(...) ((void)0)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline dim3 gridDim, blockDim, blockIdx;
inline thread_local dim3 threadIdx;

struct uint4 {
    unsigned x, y, z, w;
};
struct uint2 {
    unsigned x, y;
};
struct float4 {
    float x, y, z, w;
};
struct float2 {
    float x, y;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline float2 make_float2(float a, float b) { return {a, b}; }

inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

inline void __trap() { std::abort(); }
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline float __expf(float x) { return expf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline void sincosf(float a, float* s, float* c) {
    *s = sinf(a);
    *c = cosf(a);
}
template <class T>
T atomicAdd(T* p, T v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
    unsigned old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}

// The running block's barriers and each warp's shuffle slots.
struct BlockSync {
    std::unique_ptr<std::barrier<>> block;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<std::vector<unsigned long long>> slots;
    std::vector<std::vector<unsigned char>> gathered;
};
inline BlockSync* running_block;

inline void __syncthreads() { running_block->block->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { running_block->warps[threadIdx.x / 32]->arrive_and_wait(); }

// Every lane of the warp publishes `v`, then reads lane source(lane)'s.
template <class T, class F>
T shuffle(T v, F source) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    auto& slot = running_block->slots[warp];
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    slot[lane] = bits;
    running_block->warps[warp]->arrive_and_wait();
    bits = slot[source(lane)];
    running_block->warps[warp]->arrive_and_wait();
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int o) {
    return shuffle(v, [o](int lane) { return lane ^ o; });
}
template <class T>
T __shfl_sync(unsigned, T v, int src) {
    return shuffle(v, [src](int) { return src; });
}
template <class T>
T __shfl_up_sync(unsigned, T v, int o) {
    return shuffle(v, [o](int lane) { return lane >= o ? lane - o : lane; });
}

inline bool __any_sync(unsigned, bool predicate) {
    bool any = false;
    for (int src = 0; src < 32; src++) any |= __shfl_sync(0xffffffffu, predicate, src);
    return any;
}

// Every lane's `bytes` bytes at `mine`, gathered lane by lane into `all` (32 × bytes, at most
// 64 bytes a lane).
inline void warp_gather(const void* mine, size_t bytes, void* all) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    auto& slot = running_block->gathered[warp];
    std::memcpy(slot.data() + lane * 64, mine, bytes);
    running_block->warps[warp]->arrive_and_wait();
    for (int l = 0; l < 32; l++) std::memcpy((char*)all + l * bytes, slot.data() + l * 64, bytes);
    running_block->warps[warp]->arrive_and_wait();
}

// The warp-wide tensor-core pieces of prelude.cu and attention.cu, as the PTX ISA lays their
// fragments out (g = lane / 4, c = lane % 4): the test that builds the kernel sources puts these
// in the place of their PTX.
//
// Lane l's A fragment of an mma.sync (or of a wgmma from registers) into A: a[0] holds
// A[g][Vc..Vc+V-1], a[1] A[g+8][Vc..], a[2] A[g][K/2+Vc..], a[3] A[g+8][K/2+Vc..] (g = l / 4,
// c = l % 4, K = 8V); `value(word, i)` decodes the i-th value of a register.
template <int V, class Decode>
inline void emu_place_a(float (&A)[16][8 * V], int l, const unsigned (&a)[4], Decode value) {
    constexpr int K = 8 * V;
    const int g = l / 4, c = l % 4;
    for (int i = 0; i < V; i++) {
        A[g][V * c + i] = value(a[0], i);
        A[g + 8][V * c + i] = value(a[1], i);
        A[g][K / 2 + V * c + i] = value(a[2], i);
        A[g + 8][K / 2 + V * c + i] = value(a[3], i);
    }
}

// A 16-bit value as f16 or bf16, and the i-th of the two in a register.
inline float emu_from_f16(unsigned short h);
inline float emu_b16(unsigned short v, bool f16) { return f16 ? emu_from_f16(v) : __uint_as_float((unsigned)v << 16); }
inline float emu_b16_of(unsigned w, int i, bool f16) { return emu_b16((unsigned short)(i ? w >> 16 : w & 0xffffu), f16); }

// mma.sync m16n8k(8V) on values packed V to a 32-bit register (V = 2: bf16, m16n8k16; V = 4:
// E4M3 codes, m16n8k32), f32 sums in k order. With g = lane / 4, c = lane % 4 and K = 8V: a[0]
// holds A[g][Vc..Vc+V-1], a[1] A[g+8][Vc..], a[2] A[g][K/2+Vc..], a[3] A[g+8][K/2+Vc..]; b0 holds
// B[Vc..][g], b1 B[K/2+Vc..][g], lowest bits first; d[0..1] is D[g][2c..2c+1], d[2..3]
// D[g+8][2c..2c+1]. `value(word, i)` decodes the i-th value of a register.
template <int V, class Decode>
inline void emu_mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1, Decode value) {
    constexpr int K = 8 * V;
    struct Fragments {
        unsigned a[4], b[2];
    } mine = {{a[0], a[1], a[2], a[3]}, {b0, b1}}, all[32];
    warp_gather(&mine, sizeof mine, all);
    float A[16][K], B[K][8];
    for (int l = 0; l < 32; l++) {
        const int g = l / 4, c = l % 4;
        emu_place_a<V>(A, l, all[l].a, value);
        for (int i = 0; i < V; i++) {
            B[V * c + i][g] = value(all[l].b[0], i);
            B[K / 2 + V * c + i][g] = value(all[l].b[1], i);
        }
    }
    const int lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    for (int e = 0; e < 4; e++) {
        const int row = g + 8 * (e / 2), col = 2 * c + e % 2;
        float sum = d[e];
        for (int k = 0; k < K; k++) sum += A[row][k] * B[k][col];
        d[e] = sum;
    }
}

inline float emu_from_e4m3(unsigned char code);
inline void emu_mma_bf16_m16n8k16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    emu_mma<2>(d, a, b0, b1, [](unsigned w, int i) { return emu_b16_of(w, i, false); });
}
inline void emu_mma_f16_m16n8k16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    emu_mma<2>(d, a, b0, b1, [](unsigned w, int i) { return emu_b16_of(w, i, true); });
}
inline void emu_mma_e4m3_m16n8k32(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    emu_mma<4>(d, a, b0, b1, [](unsigned w, int i) { return emu_from_e4m3((w >> (8 * i)) & 0xff); });
}

// ldmatrix.x4: lanes 8i..8i+7 give the rows of 8×8 matrix i (eight b16 values each); r[i] gets
// row g of matrix i, values 2c and 2c+1 (with `trans`, values [2c][g] and [2c+1][g]).
inline void emu_ldmatrix_x4(unsigned (&r)[4], const unsigned short* row, bool trans) {
    const unsigned short* rows[32];
    warp_gather(&row, sizeof row, rows);
    const int lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    for (int i = 0; i < 4; i++) {
        unsigned short lo, hi;
        if (trans) {
            lo = rows[8 * i + 2 * c][g];
            hi = rows[8 * i + 2 * c + 1][g];
        } else {
            lo = rows[8 * i + g][2 * c];
            hi = rows[8 * i + g][2 * c + 1];
        }
        r[i] = lo | ((unsigned)hi << 16);
    }
}

// kernel<<<grid, block>>>(args...) for a one-dimensional block.
template <class K, class... A>
void launch(K kernel, dim3 grid, unsigned block, A... args) {
    gridDim = grid;
    blockDim = {block, 1, 1};
    const int n = block;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx = {x, y, z};
                BlockSync sync;
                sync.block = std::make_unique<std::barrier<>>(n);
                for (int w = 0; w < (n + 31) / 32; w++) {
                    sync.warps.push_back(std::make_unique<std::barrier<>>(std::min(32, n - 32 * w)));
                    sync.slots.emplace_back(32);
                    sync.gathered.emplace_back(32 * 64);
                }
                running_block = &sync;
                std::vector<std::thread> threads;
                for (int t = 0; t < n; t++)
                    threads.emplace_back([&, t] {
                        threadIdx = {(unsigned)t, 0, 0};
                        kernel(args...);
                        running_block->warps[t / 32]->arrive_and_drop();
                        running_block->block->arrive_and_drop();
                    });
                for (auto& thread : threads) thread.join();
            }
}

// Deterministic test values in [-1, 1).
struct Rng {
    unsigned long long state;
    float next() {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        return ((state >> 40) / 16777216.0f) * 2.f - 1.f;
    }
};

// FP8 E4M3 in software, as Hopper's cvt.rn.satfinite.e4m3x2.f32 and cvt.rn.f16x2.e4m3x2 compute
// it (lumen_backend::fp8 on the host): the test that builds the kernel sources puts these in the
// place of prelude.cu's PTX conversions.
inline unsigned char emu_to_e4m3(float x) {
    if (std::isnan(x)) return 0x7f;
    const unsigned char sign = std::signbit(x) ? 0x80 : 0;
    const double a = std::fabs((double)x);
    if (a >= 448.0) return sign | 0x7e;
    const int exponent = a == 0.0 ? -6 : std::max(std::ilogb(a), -6);
    const int steps = (int)std::nearbyint(a / std::ldexp(1.0, exponent - 3));
    return sign | (unsigned char)(((exponent + 7) << 3) + steps - 8);
}
inline float emu_from_e4m3(unsigned char code) {
    const float sign = code & 0x80 ? -1.f : 1.f;
    const int exponent = (code >> 3) & 0xf, mantissa = code & 7;
    if (exponent == 0xf && mantissa == 7) return NAN;
    return sign * (exponent == 0 ? mantissa * std::ldexp(1.f, -9) : (1.f + mantissa / 8.f) * std::ldexp(1.f, exponent - 7));
}
inline unsigned emu_f32x2_to_e4m3x2(float hi, float lo) { return ((unsigned)emu_to_e4m3(hi) << 8) | emu_to_e4m3(lo); }
inline void emu_e4m3x2_to_f32x2(unsigned short v, float& hi, float& lo) {
    lo = emu_from_e4m3(v & 0xff);
    hi = emu_from_e4m3(v >> 8);
}

// IEEE half precision in software (round to nearest even, subnormals kept), for the f16 pairs of
// cvt.rn.f16x2.f32 and cvt.rn.f16x2.e4m3x2.
inline unsigned short emu_to_f16(float x) {
    const unsigned short sign = std::signbit(x) ? 0x8000 : 0;
    if (std::isnan(x)) return 0x7e00;
    const double a = std::fabs((double)x);
    if (a >= 65520.0) return sign | 0x7c00;
    const int exponent = a == 0.0 ? -14 : std::max(std::ilogb(a), -14);
    const double steps = std::nearbyint(a / std::ldexp(1.0, exponent - 10));
    if (exponent == -14 && steps < 1024) return sign | (unsigned short)steps;
    return sign | (unsigned short)(((exponent + 15) << 10) + (int)steps - 1024);
}
inline float emu_from_f16(unsigned short h) {
    const float sign = h & 0x8000 ? -1.f : 1.f;
    const int exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    if (exponent == 0x1f) return mantissa ? NAN : sign * HUGE_VALF;
    return sign * (exponent == 0 ? mantissa * std::ldexp(1.f, -24) : (1.f + mantissa / 1024.f) * std::ldexp(1.f, exponent - 15));
}
inline unsigned emu_pack_f16x2(float lo, float hi) { return emu_to_f16(lo) | ((unsigned)emu_to_f16(hi) << 16); }
inline unsigned emu_e4m3x2_to_f16x2(unsigned short v) {
    return emu_pack_f16x2(emu_from_e4m3(v & 0xff), emu_from_e4m3(v >> 8));
}
inline unsigned emu_byte_perm(unsigned lo, unsigned hi, unsigned select) {
    const unsigned long long bytes = lo | ((unsigned long long)hi << 32);
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned)((bytes >> (8 * ((select >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}

// Dynamic shared memory: one buffer for the running block (blocks run one at a time).
// Asynchronous copies land when they are issued, the earliest the hardware may land them, which
// shows a copy into rows that other threads still read; with EMU_CP_ASYNC=late in the environment
// they land when their thread waits for their group, the latest it may, which shows a read of
// rows before the wait that makes them visible.
alignas(16) inline unsigned char emu_dynamic_shared[1 << 18];
struct EmuCopy {
    void* smem;
    const void* gmem;
    bool valid;
};
inline bool emu_copies_land_late() {
    static const bool late = [] {
        const char* mode = std::getenv("EMU_CP_ASYNC");
        return mode != nullptr && std::strcmp(mode, "late") == 0;
    }();
    return late;
}
inline thread_local std::vector<EmuCopy> emu_uncommitted_copies;
inline thread_local std::vector<std::vector<EmuCopy>> emu_committed_groups;  // oldest first
inline void emu_land(const EmuCopy& c) {
    if (c.valid)
        std::memcpy(c.smem, c.gmem, 16);
    else
        std::memset(c.smem, 0, 16);
}
inline void emu_cp_async16(void* smem, const void* gmem, bool valid) {
    if (emu_copies_land_late())
        emu_uncommitted_copies.push_back({smem, gmem, valid});
    else
        emu_land({smem, gmem, valid});
}
inline void emu_cp_async_commit() {
    emu_committed_groups.push_back(std::move(emu_uncommitted_copies));
    emu_uncommitted_copies.clear();
}
// Lands every committed group but the `pending` newest.
inline void emu_cp_async_wait(int pending) {
    while ((int)emu_committed_groups.size() > pending) {
        for (const EmuCopy& c : emu_committed_groups.front()) emu_land(c);
        emu_committed_groups.erase(emu_committed_groups.begin());
    }
}

// wgmma (m64nNk16, f32 sums in k order) on 128-byte-swizzled shared memory, as the PTX ISA
// lays it out: a descriptor holds the start address, the lead and stride byte offsets (each over
// 16) and the swizzle mode; byte L of the unswizzled layout lies at L ^ (((L >> 7) & 7) << 4),
// the 16-byte pieces of each 128-byte row permuted by the row's place among eight. A K-major
// operand's row r, value k is at start + (r / 8)·stride + (r % 8)·128 + 2k; an MN-major one's
// k-row k, value n at start + (n / 64)·lead + (k / 8)·stride + (k % 8)·128 + 2(n % 64). Each
// warp of a warp group holds sixteen rows of the result, d[j] as mma.sync's accumulator of
// columns 8j..8j+7; A from registers is mma.sync's A fragment of the warp's sixteen rows.
inline float emu_wgmma_value(unsigned long long desc, int mn, int k, bool mn_major, bool f16) {
    const unsigned start = (unsigned)(desc & 0x3fff) << 4, lead = (unsigned)((desc >> 16) & 0x3fff) << 4,
                   stride = (unsigned)((desc >> 32) & 0x3fff) << 4;
    unsigned at = mn_major ? start + (mn / 64) * lead + (k / 8) * stride + (k % 8) * 128 + (mn % 64) * 2
                           : start + (mn / 8) * stride + (mn % 8) * 128 + k * 2;
    at ^= ((at >> 7) & 7) << 4;
    unsigned short v;
    std::memcpy(&v, emu_dynamic_shared + at, 2);
    return emu_b16(v, f16);
}
template <bool F16>
inline void emu_wgmma_ss(float (&d)[8][4], unsigned long long a, unsigned long long b, int accumulate) {
    const int lane = threadIdx.x % 32, rows = 16 * (threadIdx.x / 32 % 4), g = lane / 4, c = lane % 4;
    for (int j = 0; j < 8; j++)
        for (int e = 0; e < 4; e++) {
            const int row = rows + g + 8 * (e / 2), col = 8 * j + 2 * c + e % 2;
            float sum = accumulate ? d[j][e] : 0.f;
            for (int k = 0; k < 16; k++) sum += emu_wgmma_value(a, row, k, false, F16) * emu_wgmma_value(b, col, k, false, F16);
            d[j][e] = sum;
        }
}
template <bool F16>
inline void emu_wgmma_rs(float (&d)[16][4], const unsigned (&a)[4], unsigned long long b) {
    unsigned all[32][4];
    warp_gather(a, sizeof a, all);
    float A[16][16];
    for (int l = 0; l < 32; l++) emu_place_a<2>(A, l, all[l], [](unsigned w, int i) { return emu_b16_of(w, i, F16); });
    const int lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    for (int n = 0; n < 16; n++)
        for (int e = 0; e < 4; e++) {
            const int row = g + 8 * (e / 2), col = 8 * n + 2 * c + e % 2;
            float sum = d[n][e];
            for (int k = 0; k < 16; k++) sum += A[row][k] * emu_wgmma_value(b, col, k, true, F16);
            d[n][e] = sum;
        }
}
