//! The activations a mixture-of-experts block applies between an expert's gate/up and down
//! projections: the host arithmetic (the CPU reference) and the variant the CUDA expert kernels
//! fuse into their gate/up product.

/// What an expert computes between its gate/up and down projections, from the gate half `g` and
/// the up half `u` of one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExpertActivation {
    /// `silu(g) · u`.
    SwiGlu,
    /// GPT-OSS: `g' = min(g, limit)`, `u' = clamp(u, −limit, limit)`,
    /// `g' · sigmoid(alpha · g') · (u' + 1)`.
    ClampedSwiGlu { alpha: f32, limit: f32 },
}

impl ExpertActivation {
    /// GPT-OSS's constants.
    pub const GPT_OSS: ExpertActivation = ExpertActivation::ClampedSwiGlu { alpha: 1.702, limit: 7.0 };

    /// Applies the activation to rows of `[gate (f), up (f)]`, writing rows of `f`.
    pub fn apply(self, gate_up: &[f32], f: usize, out: &mut [f32]) {
        for (o, gu) in out.chunks_mut(f).zip(gate_up.chunks(2 * f)) {
            let (gate, up) = gu.split_at(f);
            for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                *o = match self {
                    ExpertActivation::SwiGlu => g / (1.0 + (-g).exp()) * u,
                    ExpertActivation::ClampedSwiGlu { alpha, limit } => {
                        let g = g.min(limit);
                        let u = u.clamp(-limit, limit);
                        g / (1.0 + (-alpha * g).exp()) * (u + 1.0)
                    }
                };
            }
        }
    }
}
