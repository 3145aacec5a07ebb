//! `y = x · Wᵀ` for row-major activations `x [t, k]` and a linear layer's weights `W [n, k]`
//! (PyTorch and GGUF layout), packed once at load into panels of 16 output columns
//! (`[panel][k][16]`) so that a register tile streams them in order.
//!
//! Every output element is one multiply-add chain over `k` in order, starting from zero, so a
//! token's output never depends on which tile, thread or batch it was computed in. Threads split
//! the panels; a register tile broadcasts one activation per token against the panel's weight
//! vectors at each step of `k`. The instruction set is chosen once per process: AVX-512 (tiles of
//! eight tokens by two panels, sixteen 16-lane accumulators), AVX2+FMA (six tokens by one panel,
//! twelve 8-lane accumulators), or portable code. The two vector paths both fuse the
//! multiply-add, so they give identical bits; the portable path does not fuse.

use super::SharedMut;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Output columns per panel: two 8-lane vectors.
const PANEL: usize = 16;
/// Most tokens and panels in a register tile, over all instruction sets.
const MAX_TILE_TOKENS: usize = 8;
const MAX_TILE_PANELS: usize = 2;
/// Panels per parallel task.
const PANELS_PER_TASK: usize = 2;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// Tokens and panels of this instruction set's register tile.
    fn tile(self) -> (usize, usize) {
        match self {
            Isa::Avx512 => (8, 2),
            Isa::Avx2 | Isa::Portable => (6, 1),
        }
    }
}

type Tile = [[f32; PANEL * MAX_TILE_PANELS]; MAX_TILE_TOKENS];

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

    /// The row-major `[n, k]` matrix this was packed from.
    pub fn unpack(&self) -> Vec<f32> {
        let mut w = vec![0.0f32; self.n * self.k];
        for (r, row) in w.chunks_mut(self.k).enumerate() {
            let panel = self.panels(r / PANEL, 1);
            for (kk, v) in row.iter_mut().enumerate() {
                *v = panel[kk * PANEL + r % PANEL];
            }
        }
        w
    }

    /// `count` consecutive panels starting at `p`.
    fn panels(&self, p: usize, count: usize) -> &[f32] {
        &self.panels[p * self.k * PANEL..(p + count) * self.k * PANEL]
    }
}

/// `out[i, j] = Σ_k x[i, k] · w[j, k]` for the `t` rows of `x`.
pub fn matmul(x: &[f32], t: usize, w: &PackedMatrix, out: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), t * k, "matmul: x has {} values, expected {t}x{k}", x.len());
    assert_eq!(out.len(), t * n, "matmul: out has {} values, expected {t}x{n}", out.len());
    let out_ptr = SharedMut::new(out);
    let isa = isa();
    let (tile_tokens, tile_panels) = isa.tile();
    let num_panels = n.div_ceil(PANEL);
    (0..num_panels.div_ceil(PANELS_PER_TASK)).into_par_iter().for_each(|task| {
        let panels = task * PANELS_PER_TASK..((task + 1) * PANELS_PER_TASK).min(num_panels);
        let mut i = 0;
        while i < t {
            let tokens = (t - i).min(tile_tokens);
            let mut p = panels.start;
            while p < panels.end {
                let count = (panels.end - p).min(tile_panels);
                let mut tile: Tile = [[0.0; PANEL * MAX_TILE_PANELS]; MAX_TILE_TOKENS];
                run_tile(isa, &x[i * k..(i + tokens) * k], tokens, k, w.panels(p, count), count, &mut tile);
                let cols = (PANEL * count).min(n - p * PANEL);
                for (r, row) in tile.iter().enumerate().take(tokens) {
                    // SAFETY: tasks own disjoint panels, so each output element has one writer.
                    let dst = unsafe { out_ptr.slice((i + r) * n + p * PANEL, cols) };
                    dst.copy_from_slice(&row[..cols]);
                }
                p += count;
            }
            i += tokens;
        }
    });
}

fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// Runs `isa`'s tile kernel, monomorphised for the tile's tokens and panels.
fn run_tile(isa: Isa, x: &[f32], tokens: usize, k: usize, panels: &[f32], count: usize, out: &mut Tile) {
    macro_rules! shapes {
        ($kernel:path; $($m:literal, $p:literal);*) => {
            match (tokens, count) {
                $(($m, $p) => {
                    let xs: [&[f32]; $m] = std::array::from_fn(|r| &x[r * k..(r + 1) * k]);
                    let mut o = [[[0.0f32; PANEL]; $p]; $m];
                    $kernel(xs, panels, &mut o);
                    for r in 0..$m {
                        for q in 0..$p {
                            out[r][q * PANEL..(q + 1) * PANEL].copy_from_slice(&o[r][q]);
                        }
                    }
                })*
                _ => unreachable!("tile shape ({tokens}, {count}) exceeds the instruction set's tile"),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY (both arms): `isa()` picked this kernel only after detecting its features.
        Isa::Avx512 => unsafe { shapes!(avx512::tile; 1,1; 2,1; 3,1; 4,1; 5,1; 6,1; 7,1; 8,1; 1,2; 2,2; 3,2; 4,2; 5,2; 6,2; 7,2; 8,2) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { shapes!(avx2::tile; 1,1; 2,1; 3,1; 4,1; 5,1; 6,1) },
        _ => shapes!(portable_tile; 1,1; 2,1; 3,1; 4,1; 5,1; 6,1),
    }
}

/// The portable tile over `P` consecutive panels: per element, `s = x·w + s` over `k` in order.
fn portable_tile<const M: usize, const P: usize>(x: [&[f32]; M], panels: &[f32], out: &mut [[[f32; PANEL]; P]; M]) {
    let k = panels.len() / PANEL / P;
    let mut acc = [[[0.0f32; PANEL]; P]; M];
    for kk in 0..k {
        for r in 0..M {
            let xv = x[r][kk];
            for q in 0..P {
                let w = &panels[(q * k + kk) * PANEL..(q * k + kk + 1) * PANEL];
                for c in 0..PANEL {
                    acc[r][q][c] += xv * w[c];
                }
            }
        }
    }
    *out = acc;
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::PANEL;
    use std::arch::x86_64::*;

    /// The AVX-512 tile over `P` consecutive panels: per element, `s = fma(x, w, s)` over `k`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const M: usize, const P: usize>(x: [&[f32]; M], panels: &[f32], out: &mut [[[f32; PANEL]; P]; M]) {
        let k = panels.len() / PANEL / P;
        for row in x.iter() {
            assert!(row.len() >= k, "activation row shorter than the panel depth");
        }
        let mut acc = [[_mm512_setzero_ps(); P]; M];
        let wp = panels.as_ptr();
        for kk in 0..k {
            let mut w = [_mm512_setzero_ps(); P];
            for (q, wq) in w.iter_mut().enumerate() {
                *wq = _mm512_loadu_ps(wp.add((q * k + kk) * PANEL));
            }
            for r in 0..M {
                let xb = _mm512_set1_ps(*x[r].get_unchecked(kk));
                for q in 0..P {
                    acc[r][q] = _mm512_fmadd_ps(xb, w[q], acc[r][q]);
                }
            }
        }
        for r in 0..M {
            for q in 0..P {
                _mm512_storeu_ps(out[r][q].as_mut_ptr(), acc[r][q]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::PANEL;
    use std::arch::x86_64::*;

    /// The AVX2 tile over `P` consecutive panels: per element, `s = fma(x, w, s)` over `k`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const M: usize, const P: usize>(x: [&[f32]; M], panels: &[f32], out: &mut [[[f32; PANEL]; P]; M]) {
        let k = panels.len() / PANEL / P;
        for row in x.iter() {
            assert!(row.len() >= k, "activation row shorter than the panel depth");
        }
        let mut acc = [[[_mm256_setzero_ps(); 2]; P]; M];
        let wp = panels.as_ptr();
        for kk in 0..k {
            let mut w = [[_mm256_setzero_ps(); 2]; P];
            for (q, wq) in w.iter_mut().enumerate() {
                let at = wp.add((q * k + kk) * PANEL);
                *wq = [_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8))];
            }
            for r in 0..M {
                let xb = _mm256_set1_ps(*x[r].get_unchecked(kk));
                for q in 0..P {
                    acc[r][q][0] = _mm256_fmadd_ps(xb, w[q][0], acc[r][q][0]);
                    acc[r][q][1] = _mm256_fmadd_ps(xb, w[q][1], acc[r][q][1]);
                }
            }
        }
        for r in 0..M {
            for q in 0..P {
                _mm256_storeu_ps(out[r][q].as_mut_ptr(), acc[r][q][0]);
                _mm256_storeu_ps(out[r][q].as_mut_ptr().add(8), acc[r][q][1]);
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
    fn unpacking_gives_back_the_packed_rows() {
        let (n, k) = (PANEL + 3, 5);
        let w = values(n * k, 7);
        assert_eq!(PackedMatrix::pack(&w, n, k).unpack(), w);
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
    fn instruction_sets_agree() {
        let k = 64;
        let x = values(6 * k, 5);
        let panel = values(k * PANEL, 6);
        let run = |isa| {
            let mut tile: Tile = [[0.0; PANEL * MAX_TILE_PANELS]; MAX_TILE_TOKENS];
            run_tile(isa, &x, 6, k, &panel, 1, &mut tile);
            tile
        };
        let portable = run(Isa::Portable);
        let native = run(isa());
        for r in 0..6 {
            for c in 0..PANEL {
                assert!((portable[r][c] - native[r][c]).abs() < 1e-4);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if isa() == Isa::Avx512 && is_x86_feature_detected!("fma") {
            assert_eq!(run(Isa::Avx2), native, "both fused paths give identical bits");
        }
    }
}
