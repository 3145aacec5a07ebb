//! `y = x · Wᵀ` for row-major activations `x [t, k]` and weights `W [n, k]` (the layout of
//! PyTorch linear layers and GGUF tensors).
//!
//! Every output element is one dot product with eight lane accumulators over `k` in order,
//! folded in a fixed tree, then the tail of `k` added in order, so a token's output never depends
//! on the batch around it. Threads split the weight rows into blocks; inside a block a register
//! tile of four tokens by two weight rows shares every load. With AVX2+FMA (checked once per
//! process) the lanes are one 256-bit register and the multiply-add is fused; otherwise the same
//! tile runs on plain arrays with an unfused multiply-add. One process always uses one of the two.

use super::SharedMut;
use rayon::prelude::*;
use std::sync::OnceLock;

const LANES: usize = 8;
const ROWS_PER_TASK: usize = 16;
const TOKENS_PER_TILE: usize = 4;
const ROWS_PER_TILE: usize = 2;

/// `out[i, j] = Σ_k x[i, k] · w[j, k]`, with `x` of `t` rows and `w` of `n` rows, both of width `k`.
pub fn matmul_t(x: &[f32], t: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), t * k, "matmul_t: x has {} values, expected {t}x{k}", x.len());
    assert_eq!(w.len(), n * k, "matmul_t: w has {} values, expected {n}x{k}", w.len());
    assert_eq!(out.len(), t * n, "matmul_t: out has {} values, expected {t}x{n}", out.len());
    let out_ptr = SharedMut(out.as_mut_ptr());
    let fused = use_fma();
    (0..n.div_ceil(ROWS_PER_TASK)).into_par_iter().for_each(|block| {
        let out_ptr = out_ptr;
        let rows = block * ROWS_PER_TASK..((block + 1) * ROWS_PER_TASK).min(n);
        let mut i = 0;
        while i < t {
            let tokens = (t - i).min(TOKENS_PER_TILE);
            let mut j = rows.start;
            while j < rows.end {
                let wrows = (rows.end - j).min(ROWS_PER_TILE);
                let mut tile = [[0.0f32; ROWS_PER_TILE]; TOKENS_PER_TILE];
                dispatch(fused, &x[i * k..(i + tokens) * k], tokens, &w[j * k..(j + wrows) * k], wrows, k, &mut tile);
                for (a, row) in tile.iter().enumerate().take(tokens) {
                    for (b, v) in row.iter().enumerate().take(wrows) {
                        // SAFETY: tasks own disjoint weight rows `j`, so each element has one writer.
                        unsafe { *out_ptr.0.add((i + a) * n + j + b) = *v };
                    }
                }
                j += wrows;
            }
            i += tokens;
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

/// Calls the tile kernel monomorphised for the tile's actual shape.
fn dispatch(fused: bool, x: &[f32], tokens: usize, w: &[f32], wrows: usize, k: usize, out: &mut [[f32; ROWS_PER_TILE]; TOKENS_PER_TILE]) {
    macro_rules! shapes {
        ($($t:literal, $r:literal);*) => {
            match (tokens, wrows) {
                $(($t, $r) => {
                    let xs: [&[f32]; $t] = std::array::from_fn(|a| &x[a * k..(a + 1) * k]);
                    let ws: [&[f32]; $r] = std::array::from_fn(|b| &w[b * k..(b + 1) * k]);
                    let mut o = [[0.0f32; $r]; $t];
                    #[cfg(target_arch = "x86_64")]
                    if fused {
                        // SAFETY: `fused` is true only when the processor has AVX2 and FMA.
                        unsafe { avx2::tile(xs, ws, &mut o) };
                    } else {
                        plain_tile(xs, ws, &mut o);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    {
                        let _ = fused;
                        plain_tile(xs, ws, &mut o);
                    }
                    for a in 0..$t {
                        out[a][..$r].copy_from_slice(&o[a]);
                    }
                })*
                _ => unreachable!("tile shapes are bounded by TOKENS_PER_TILE x ROWS_PER_TILE"),
            }
        };
    }
    shapes!(1, 1; 1, 2; 2, 1; 2, 2; 3, 1; 3, 2; 4, 1; 4, 2);
}

/// The portable tile: per element, lanes accumulate `a·b + c` over `k` in order.
fn plain_tile<const T: usize, const R: usize>(x: [&[f32]; T], w: [&[f32]; R], out: &mut [[f32; R]; T]) {
    let k = w[0].len();
    let body = k - k % LANES;
    let mut acc = [[[0.0f32; LANES]; R]; T];
    for p in (0..body).step_by(LANES) {
        for (a, xa) in x.iter().enumerate() {
            let xv = &xa[p..p + LANES];
            for (b, wb) in w.iter().enumerate() {
                let wv = &wb[p..p + LANES];
                for l in 0..LANES {
                    acc[a][b][l] = xv[l] * wv[l] + acc[a][b][l];
                }
            }
        }
    }
    for a in 0..T {
        for b in 0..R {
            let mut s = fold(acc[a][b]);
            for q in body..k {
                s = x[a][q] * w[b][q] + s;
            }
            out[a][b] = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{fold, LANES};
    use std::arch::x86_64::*;

    /// The AVX2 tile: per element, one register of lanes accumulates `fma(a, b, c)` over `k`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const T: usize, const R: usize>(x: [&[f32]; T], w: [&[f32]; R], out: &mut [[f32; R]; T]) {
        let k = w[0].len();
        let body = k - k % LANES;
        let mut acc = [[_mm256_setzero_ps(); R]; T];
        let mut p = 0;
        while p < body {
            let mut wv = [_mm256_setzero_ps(); R];
            for b in 0..R {
                wv[b] = _mm256_loadu_ps(w[b].as_ptr().add(p));
            }
            for a in 0..T {
                let xv = _mm256_loadu_ps(x[a].as_ptr().add(p));
                for b in 0..R {
                    acc[a][b] = _mm256_fmadd_ps(xv, wv[b], acc[a][b]);
                }
            }
            p += LANES;
        }
        for a in 0..T {
            for b in 0..R {
                let mut lanes = [0.0f32; LANES];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[a][b]);
                let mut s = fold(lanes);
                for q in body..k {
                    s = x[a][q].mul_add(w[b][q], s);
                }
                out[a][b] = s;
            }
        }
    }
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
        let (k, n) = (580, 101);
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

    #[test]
    fn portable_and_fused_tiles_agree_closely() {
        let k = 64;
        let x = values(4 * k, 5);
        let w = values(2 * k, 6);
        let mut plain = [[0.0f32; 2]; 4];
        let mut fused = [[0.0f32; 2]; 4];
        dispatch(false, &x, 4, &w, 2, k, &mut plain);
        dispatch(use_fma(), &x, 4, &w, 2, k, &mut fused);
        for a in 0..4 {
            for b in 0..2 {
                assert!((plain[a][b] - fused[a][b]).abs() < 1e-4);
            }
        }
    }
}
