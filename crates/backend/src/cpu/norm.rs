//! Row-wise normalisation and the gated activation: RMSNorm (plain, fused with the residual add,
//! and per attention head) and SiLU-and-multiply.

use rayon::prelude::*;

fn rms_scale(row: &[f32], eps: f32) -> f32 {
    let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (mean_sq + eps).sqrt()
}

/// `out[r] = x[r] / rms(x[r]) * weight` for every row of width `weight.len()`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(o, row)| {
        let s = rms_scale(row, eps);
        for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * s * w;
        }
    });
}

/// `residual += delta`, then `out = rms_norm(residual)`: the pre-norm block boundary.
pub fn add_rms_norm(residual: &mut [f32], delta: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    out.par_chunks_mut(d).zip(residual.par_chunks_mut(d)).zip(delta.par_chunks(d)).for_each(|((o, res), del)| {
        for (r, v) in res.iter_mut().zip(del) {
            *r += v;
        }
        let s = rms_scale(res, eps);
        for ((o, v), w) in o.iter_mut().zip(res.iter()).zip(weight) {
            *o = v * s * w;
        }
    });
}

/// RMSNorm in place of every chunk of `weight.len()` values: each head vector (Qwen3's q/k norm)
/// or each row's whole projection (OLMoE's).
pub fn rms_norm_heads(x: &mut [f32], weight: &[f32], eps: f32) {
    let d = weight.len();
    x.par_chunks_mut(d).for_each(|head| {
        let s = rms_scale(head, eps);
        for (v, w) in head.iter_mut().zip(weight) {
            *v = *v * s * w;
        }
    });
}

/// `out[r, i] = silu(gate_up[r, i]) * gate_up[r, f + i]` where each row of `gate_up` holds the
/// gate projection followed by the up projection, both of width `f`.
pub fn silu_mul(gate_up: &[f32], f: usize, out: &mut [f32]) {
    out.par_chunks_mut(f).zip(gate_up.par_chunks(2 * f)).for_each(|(o, gu)| {
        let (gate, up) = gu.split_at(f);
        for ((o, g), u) in o.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_of_constant_row_is_the_weight() {
        let mut out = vec![0.0; 4];
        rms_norm(&[3.0; 4], &[1.0, 2.0, 3.0, 4.0], 0.0, &mut out);
        for (o, w) in out.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            assert!((o - w).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn add_rms_norm_updates_the_residual() {
        let mut res = vec![1.0, -1.0];
        let mut out = vec![0.0; 2];
        add_rms_norm(&mut res, &[1.0, -1.0], &[1.0, 1.0], 0.0, &mut out);
        assert_eq!(res, vec![2.0, -2.0]);
        assert!((out[0] - 1.0).abs() < 1e-6 && (out[1] + 1.0).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn silu_mul_matches_formula() {
        let mut out = vec![0.0; 1];
        silu_mul(&[2.0, 3.0], 1, &mut out);
        let want = 2.0 / (1.0 + (-2.0f32).exp()) * 3.0;
        assert!((out[0] - want).abs() < 1e-6);
    }
}
