//! Rotary position embedding in the rotate-half (NeoX / Hugging Face) layout, with the inverse
//! frequencies computed by the model config (Llama-3 or YaRN scaling included) and YaRN's
//! attention factor on the cosines and sines.

use rayon::prelude::*;

/// Inverse frequencies for one head dimension; angles are formed in f64 for accuracy.
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub inv_freq: Vec<f64>,
    /// Multiplies every cosine and sine (YaRN's attention factor; 1 otherwise).
    pub attention_factor: f64,
}

impl RopeTable {
    pub fn head_dim(&self) -> usize {
        self.inv_freq.len() * 2
    }
}

/// Rotates every head of every row of `x` (rows of `heads * head_dim`) by its token's position.
pub fn apply_rope(x: &mut [f32], heads: usize, positions: &[usize], table: &RopeTable) {
    let hd = table.head_dim();
    let half = hd / 2;
    x.par_chunks_mut(heads * hd).zip(positions.par_iter()).for_each(|(row, &pos)| {
        let (sin, cos): (Vec<f32>, Vec<f32>) = table
            .inv_freq
            .iter()
            .map(|f| {
                let a = pos as f64 * f;
                ((a.sin() * table.attention_factor) as f32, (a.cos() * table.attention_factor) as f32)
            })
            .unzip();
        for head in row.chunks_mut(hd) {
            for i in 0..half {
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos[i] - b * sin[i];
                head[i + half] = b * cos[i] + a * sin[i];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        let table = RopeTable { inv_freq: vec![1.0, 0.01], attention_factor: 1.0 };
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0];
        apply_rope(&mut x, 1, &[0, 5], &table);
        assert_eq!(&x[..4], &[1.0, 2.0, 3.0, 4.0]);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&x[4..]) - 30.0).abs() < 1e-4);
        assert!((x[4] - (5f32.cos() - 3.0 * 5f32.sin())).abs() < 1e-5);
        let mut scaled = vec![1.0, 2.0, 3.0, 4.0];
        apply_rope(&mut scaled, 1, &[5], &RopeTable { attention_factor: 1.5, ..table });
        assert!((norm(&scaled) - 30.0 * 2.25).abs() < 1e-3, "the attention factor scales every component");
    }
}
