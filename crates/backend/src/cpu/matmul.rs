//! `y = x · Wᵀ` for row-major activations `x [t, k]` and weights `W [n, k]` (the layout of
//! PyTorch linear layers and GGUF tensors).
//!
//! Every output element is one dot product with eight lane accumulators over `k` in order,
//! folded in a fixed tree, so a token's output never depends on the batch around it. The work is
//! split across threads by blocks of weight rows; within a block, four tokens share each weight
//! load. AVX2+FMA is used when the processor has it, chosen once per process.

use super::SharedMut;
use rayon::prelude::*;
use std::sync::OnceLock;

const LANES: usize = 8;
const ROWS_PER_TASK: usize = 32;

/// `out[i, j] = Σ_k x[i, k] · w[j, k]`, with `x` of `t` rows and `w` of `n` rows, both of width `k`.
pub fn matmul_t(x: &[f32], t: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), t * k, "matmul_t: x has {} values, expected {t}x{k}", x.len());
    assert_eq!(w.len(), n * k, "matmul_t: w has {} values, expected {n}x{k}", w.len());
    assert_eq!(out.len(), t * n, "matmul_t: out has {} values, expected {t}x{n}", out.len());
    let out_ptr = SharedMut(out.as_mut_ptr());
    let fma = use_fma();
    (0..n.div_ceil(ROWS_PER_TASK)).into_par_iter().for_each(|block| {
        let out_ptr = out_ptr;
        let rows = block * ROWS_PER_TASK..((block + 1) * ROWS_PER_TASK).min(n);
        for j in rows {
            let wj = &w[j * k..(j + 1) * k];
            let mut i = 0;
            while i + 4 <= t {
                let xs = [&x[i * k..(i + 1) * k], &x[(i + 1) * k..(i + 2) * k], &x[(i + 2) * k..(i + 3) * k], &x[(i + 3) * k..(i + 4) * k]];
                let d = if fma { dot4_fma(xs, wj) } else { dot4_plain(xs, wj) };
                for (r, v) in d.into_iter().enumerate() {
                    // SAFETY: each (row, column) is written by exactly one task: tasks own disjoint `j`.
                    unsafe { *out_ptr.0.add((i + r) * n + j) = v };
                }
                i += 4;
            }
            while i < t {
                let xi = &x[i * k..(i + 1) * k];
                let d = if fma { dot1_fma(xi, wj) } else { dot1_plain(xi, wj) };
                // SAFETY: as above.
                unsafe { *out_ptr.0.add(i * n + j) = d };
                i += 1;
            }
        }
    });
}

fn use_fma() -> bool {
    static FMA: OnceLock<bool> = OnceLock::new();
    *FMA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

#[inline(always)]
fn fold(acc: [f32; LANES]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Defines a one-token and a four-token dot product with the same per-element arithmetic; `$mac`
/// is the multiply-accumulate (fused or not), `$attr` the target features of the pair.
macro_rules! dot_kernels {
    ($dot1:ident, $dot4:ident, $mac:expr, $(#[$attr:meta])*) => {
        $(#[$attr])*
        fn $dot1(a: &[f32], b: &[f32]) -> f32 {
            let k = b.len();
            let body = k - k % LANES;
            let mut acc = [0.0f32; LANES];
            let mut p = 0;
            while p < body {
                for l in 0..LANES {
                    acc[l] = $mac(a[p + l], b[p + l], acc[l]);
                }
                p += LANES;
            }
            let mut s = fold(acc);
            for q in body..k {
                s = $mac(a[q], b[q], s);
            }
            s
        }

        $(#[$attr])*
        fn $dot4(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
            let k = b.len();
            let body = k - k % LANES;
            let mut acc = [[0.0f32; LANES]; 4];
            let mut p = 0;
            while p < body {
                for l in 0..LANES {
                    let bv = b[p + l];
                    for r in 0..4 {
                        acc[r][l] = $mac(a[r][p + l], bv, acc[r][l]);
                    }
                }
                p += LANES;
            }
            let mut s = [fold(acc[0]), fold(acc[1]), fold(acc[2]), fold(acc[3])];
            for q in body..k {
                for r in 0..4 {
                    s[r] = $mac(a[r][q], b[q], s[r]);
                }
            }
            s
        }
    };
}

#[inline(always)]
fn mac_plain(a: f32, b: f32, c: f32) -> f32 {
    a * b + c
}

#[inline(always)]
fn mac_fused(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

dot_kernels!(dot1_plain, dot4_plain, mac_plain,);

#[cfg(target_arch = "x86_64")]
dot_kernels!(dot1_fma_impl, dot4_fma_impl, mac_fused, #[target_feature(enable = "avx2,fma")]);

#[cfg(target_arch = "x86_64")]
fn dot1_fma(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only reached when `use_fma()` saw AVX2 and FMA on this processor.
    unsafe { dot1_fma_impl(a, b) }
}

#[cfg(target_arch = "x86_64")]
fn dot4_fma(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
    // SAFETY: as above.
    unsafe { dot4_fma_impl(a, b) }
}

#[cfg(not(target_arch = "x86_64"))]
fn dot1_fma(a: &[f32], b: &[f32]) -> f32 {
    dot1_plain(a, b)
}

#[cfg(not(target_arch = "x86_64"))]
fn dot4_fma(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
    dot4_plain(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, salt: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ salt) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    #[test]
    fn matches_naive_f64_product() {
        let (t, k, n) = (7, 37, 45);
        let x = values(t * k, 1);
        let w = values(n * k, 2);
        let mut out = vec![0.0; t * n];
        matmul_t(&x, t, k, &w, n, &mut out);
        for i in 0..t {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum();
                assert!((out[i * n + j] as f64 - want).abs() < 1e-4, "({i},{j}): {} vs {want}", out[i * n + j]);
            }
        }
    }

    #[test]
    fn a_row_is_bitwise_the_same_whatever_the_batch() {
        let (k, n) = (576, 100);
        let w = values(n * k, 3);
        let batch = values(9 * k, 4);
        let mut all = vec![0.0; 9 * n];
        matmul_t(&batch, 9, k, &w, n, &mut all);
        for i in 0..9 {
            let mut one = vec![0.0; n];
            matmul_t(&batch[i * k..(i + 1) * k], 1, k, &w, n, &mut one);
            assert_eq!(one, all[i * n..(i + 1) * n], "row {i} changed with the batch");
        }
    }
}
