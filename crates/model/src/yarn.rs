//! YaRN RoPE scaling (GPT-OSS): its inverse frequencies, a ramp between the plain ones and the
//! ones divided by the scaling factor, and its attention factor, which multiplies RoPE's cosines
//! and sines (so queries and keys alike), as Hugging Face transformers defines YaRN.

/// YaRN's parameters as a `config.json` gives them (`rope_scaling` with `rope_type: yarn`).
#[derive(Debug, Clone, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: f64,
    /// Rotations at which a dimension keeps its plain frequency (default 32).
    pub beta_fast: f64,
    /// Rotations below which a dimension takes the interpolated frequency (default 1).
    pub beta_slow: f64,
    /// Whether the ramp's ends are rounded to whole dimensions (default true; GPT-OSS: false).
    pub truncate: bool,
    /// The factor on cosines and sines: `attention_factor` when the config gives one, else
    /// `0.1·ln(factor) + 1` (1 for a factor ≤ 1), or DeepSeek's ratio of two such terms when
    /// `mscale` and `mscale_all_dim` are given.
    pub attention_factor: f64,
    /// DeepSeek's `mscale_all_dim`: MLA's softmax scale is multiplied by
    /// `mscale(factor, mscale_all_dim)²` ([`yarn_mscale`]).
    pub mscale_all_dim: Option<f64>,
}

/// `0.1 · mscale · ln(scale) + 1`, or 1 when `scale ≤ 1`.
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

impl Yarn {
    /// YaRN with the default attention factor.
    pub fn new(factor: f64, original_max_position_embeddings: f64, beta_fast: f64, beta_slow: f64, truncate: bool) -> Self {
        Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            truncate,
            attention_factor: yarn_mscale(factor, 1.0),
            mscale_all_dim: None,
        }
    }

    /// The dimension (of `dim`) whose frequency turns `rotations` times over the original context.
    fn correction_dim(&self, rotations: f64, dim: f64, base: f64) -> f64 {
        dim * (self.original_max_position_embeddings / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
    }

    /// The inverse frequencies of a head of `head_dim` for RoPE base `base`.
    pub fn inv_freq(&self, base: f64, head_dim: usize) -> Vec<f64> {
        let dim = head_dim as f64;
        let (mut low, mut high) = (self.correction_dim(self.beta_fast, dim, base), self.correction_dim(self.beta_slow, dim, base));
        if self.truncate {
            low = low.floor();
            high = high.ceil();
        }
        let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
        if low == high {
            high += 0.001;
        }
        (0..head_dim / 2)
            .map(|i| {
                let extrapolation = base.powf(-(2.0 * i as f64) / dim);
                let interpolation = extrapolation / self.factor;
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                interpolation * ramp + extrapolation * (1.0 - ramp)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-OSS's YaRN (factor 32 over 4096 positions, base 150000, head 64, not truncated):
    /// the ramp runs from dimension 8.093 to 17.398, worked out by hand from the definition.
    #[test]
    fn the_ramp_keeps_fast_dimensions_and_divides_slow_ones() {
        let yarn = Yarn::new(32.0, 4096.0, 32.0, 1.0, false);
        assert!((yarn.attention_factor - (0.1 * 32f64.ln() + 1.0)).abs() < 1e-12);
        let f = yarn.inv_freq(150000.0, 64);
        let plain = |i: usize| 150000f64.powf(-(2.0 * i as f64) / 64.0);
        let low = 64.0 * (4096.0 / (32.0 * 2.0 * std::f64::consts::PI)).ln() / (2.0 * 150000f64.ln());
        let high = 64.0 * (4096.0 / (2.0 * std::f64::consts::PI)).ln() / (2.0 * 150000f64.ln());
        assert!((low - 8.093).abs() < 1e-3 && (high - 17.398).abs() < 1e-3, "{low} {high}");
        assert_eq!(f[8], plain(8), "below the ramp the frequency is the plain one");
        assert!((f[18] - plain(18) / 32.0).abs() < 1e-18, "above it, divided by the factor");
        let ramp = (12.0 - low) / (high - low);
        assert!((f[12] - (plain(12) / 32.0 * ramp + plain(12) * (1.0 - ramp))).abs() < 1e-15);
        let truncated = Yarn { truncate: true, ..yarn.clone() }.inv_freq(150000.0, 64);
        assert!((truncated[12] - (plain(12) / 32.0 * 0.4 + plain(12) * 0.6)).abs() < 1e-15, "ramp from 8 to 18");
        assert_eq!(yarn_mscale(0.5, 1.0), 1.0);
    }
}
