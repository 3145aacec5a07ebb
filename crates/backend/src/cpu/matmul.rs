//! `y = x · Wᵀ` for row-major activations `x [t, k]` and a linear layer's weights `W [n, k]`
//! (PyTorch and GGUF layout), packed once at load into panels of 16 output columns
//! (`[panel][k][16]`) so that a register tile streams them in order.
//!
//! Every output element is one multiply-add chain over `k` in order, starting from zero, so a
//! token's output never depends on which tile, thread or batch it was computed in. Threads split
//! the panels; a tile of up to six tokens by one panel keeps twelve 8-lane accumulators in
//! registers, broadcasting one activation against two weight vectors per step. With AVX2+FMA
//! (checked once per process) the multiply-add is fused; otherwise the same loop runs on plain
//! arrays unfused. One process always uses one of the two.

use super::SharedMut;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Output columns per panel: two 8-lane vectors.
const PANEL: usize = 16;
/// Tokens per register tile.
const TILE_TOKENS: usize = 6;
/// Panels per parallel task.
const PANELS_PER_TASK: usize = 2;

/// A weight matrix `[n, k]` rearranged into column panels for [`matmul`].
#[derive(Clone)]
pub struct PackedMatrix {
    pub n: usize,
    pub k: usize,
    panels: Vec<f32>,
}

impl PackedMatrix {
    /// Packs row-major `w [n, k]`; the last panel is padded with zeros.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "pack: {} values for a {n}x{k} matrix", w.len());
        let num_panels = n.div_ceil(PANEL);
        let mut panels = vec![0.0f32; num_panels * k * PANEL];
        panels.par_chunks_mut(k * PANEL).enumerate().for_each(|(p, panel)| {
            for c in 0..PANEL.min(n - p * PANEL) {
                let row = &w[(p * PANEL + c) * k..(p * PANEL + c + 1) * k];
                for (kk, v) in row.iter().enumerate() {
                    panel[kk * PANEL + c] = *v;
                }
            }
        });
        PackedMatrix { n, k, panels }
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.panels[p * self.k * PANEL..(p + 1) * self.k * PANEL]
    }
}

/// `out[i, j] = Σ_k x[i, k] · w[j, k]` for the `t` rows of `x`.
pub fn matmul(x: &[f32], t: usize, w: &PackedMatrix, out: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), t * k, "matmul: x has {} values, expected {t}x{k}", x.len());
    assert_eq!(out.len(), t * n, "matmul: out has {} values, expected {t}x{n}", out.len());
    let out_ptr = SharedMut(out.as_mut_ptr());
    let fused = use_fma();
    let num_panels = n.div_ceil(PANEL);
    (0..num_panels.div_ceil(PANELS_PER_TASK)).into_par_iter().for_each(|task| {
        let out_ptr = out_ptr;
        let panels = task * PANELS_PER_TASK..((task + 1) * PANELS_PER_TASK).min(num_panels);
        let mut i = 0;
        while i < t {
            let tokens = (t - i).min(TILE_TOKENS);
            for p in panels.clone() {
                let mut tile = [[0.0f32; PANEL]; TILE_TOKENS];
                run_tile(fused, &x[i * k..(i + tokens) * k], tokens, k, w.panel(p), &mut tile);
                let cols = PANEL.min(n - p * PANEL);
                for (r, row) in tile.iter().enumerate().take(tokens) {
                    // SAFETY: tasks own disjoint panels, so each output element has one writer.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add((i + r) * n + p * PANEL), cols) };
                    dst.copy_from_slice(&row[..cols]);
                }
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

/// Runs the tile kernel monomorphised for the number of tokens in the tile.
fn run_tile(fused: bool, x: &[f32], tokens: usize, k: usize, panel: &[f32], out: &mut [[f32; PANEL]; TILE_TOKENS]) {
    macro_rules! sizes {
        ($($m:literal)*) => {
            match tokens {
                $($m => {
                    let xs: [&[f32]; $m] = std::array::from_fn(|r| &x[r * k..(r + 1) * k]);
                    let o: &mut [[f32; PANEL]; $m] = (&mut out[..$m]).try_into().expect("tile rows");
                    #[cfg(target_arch = "x86_64")]
                    if fused {
                        // SAFETY: `fused` is true only when the processor has AVX2 and FMA.
                        unsafe { avx2::tile(xs, panel, o) };
                        return;
                    }
                    let _ = fused;
                    plain_tile(xs, panel, o);
                })*
                _ => unreachable!("a tile holds at most TILE_TOKENS tokens"),
            }
        };
    }
    sizes!(1 2 3 4 5 6);
}

/// The portable tile: per element, `s = x·w + s` over `k` in order.
fn plain_tile<const M: usize>(x: [&[f32]; M], panel: &[f32], out: &mut [[f32; PANEL]; M]) {
    let mut acc = [[0.0f32; PANEL]; M];
    for (kk, w) in panel.chunks_exact(PANEL).enumerate() {
        for r in 0..M {
            let xv = x[r][kk];
            for c in 0..PANEL {
                acc[r][c] = xv * w[c] + acc[r][c];
            }
        }
    }
    *out = acc;
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::PANEL;
    use std::arch::x86_64::*;

    /// The AVX2 tile: per element, `s = fma(x, w, s)` over `k` in order.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const M: usize>(x: [&[f32]; M], panel: &[f32], out: &mut [[f32; PANEL]; M]) {
        let k = panel.len() / PANEL;
        for row in x.iter() {
            assert!(row.len() >= k, "activation row shorter than the panel depth");
        }
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        let wp = panel.as_ptr();
        for kk in 0..k {
            let w0 = _mm256_loadu_ps(wp.add(kk * PANEL));
            let w1 = _mm256_loadu_ps(wp.add(kk * PANEL + 8));
            for r in 0..M {
                let xb = _mm256_set1_ps(*x[r].get_unchecked(kk));
                acc[r][0] = _mm256_fmadd_ps(xb, w0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(xb, w1, acc[r][1]);
            }
        }
        for r in 0..M {
            _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r][0]);
            _mm256_storeu_ps(out[r].as_mut_ptr().add(8), acc[r][1]);
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
        let (t, k, n) = (13, 37, 45);
        let x = values(t * k, 1);
        let w = values(n * k, 2);
        let mut out = vec![0.0; t * n];
        matmul(&x, t, &PackedMatrix::pack(&w, n, k), &mut out);
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
        let w = PackedMatrix::pack(&values(n * k, 3), n, k);
        let batch = values(9 * k, 4);
        let mut all = vec![0.0; 9 * n];
        matmul(&batch, 9, &w, &mut all);
        for i in 0..9 {
            let mut one = vec![0.0; n];
            matmul(&batch[i * k..(i + 1) * k], 1, &w, &mut one);
            assert_eq!(one, all[i * n..(i + 1) * n], "row {i} changed with the batch");
        }
    }

    #[test]
    fn portable_and_fused_tiles_agree_closely() {
        let k = 64;
        let x = values(6 * k, 5);
        let panel = values(k * PANEL, 6);
        let mut plain = [[0.0f32; PANEL]; TILE_TOKENS];
        let mut fused = [[0.0f32; PANEL]; TILE_TOKENS];
        run_tile(false, &x, 6, k, &panel, &mut plain);
        run_tile(use_fma(), &x, 6, k, &panel, &mut fused);
        for r in 0..6 {
            for c in 0..PANEL {
                assert!((plain[r][c] - fused[r][c]).abs() < 1e-4);
            }
        }
    }
}
