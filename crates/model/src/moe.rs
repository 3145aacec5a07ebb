//! Mixture-of-experts routing, device-neutral: the routing methods as TensorRT-LLM names them,
//! which turn a token's router logits `z` into its top-k experts and their weights; the expert
//! activations; and the Zipf-shaped gate bias that plants a load imbalance in random weights.

use anyhow::{bail, Result};

/// How router logits become experts and weights (`z` = one token's logits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoutingMethod {
    /// `topk(softmax(z))`, the weights not renormalised (OLMoE; Qwen2-MoE without `norm_topk_prob`).
    Default,
    /// `softmax(topk(z))` (GPT-OSS).
    Renormalize,
    /// `topk(softmax(z))` renormalised to sum 1 (Mixtral, Qwen3-MoE). The same weights as
    /// `Renormalize`, computed the way the models' own code computes them.
    RenormalizeNaive,
    /// `sigmoid(topk(z))` (Llama 4).
    Llama4,
}

impl RoutingMethod {
    pub const ALL: [RoutingMethod; 4] =
        [RoutingMethod::Default, RoutingMethod::Renormalize, RoutingMethod::RenormalizeNaive, RoutingMethod::Llama4];

    pub fn name(self) -> &'static str {
        match self {
            RoutingMethod::Default => "Default",
            RoutingMethod::Renormalize => "Renormalize",
            RoutingMethod::RenormalizeNaive => "RenormalizeNaive",
            RoutingMethod::Llama4 => "Llama4",
        }
    }
}

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

/// The experts of a batch: for token `t`, slots `t·k .. t·k + k` hold its experts (best first)
/// and their weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub top_k: usize,
    pub experts: Vec<u32>,
    pub weights: Vec<f32>,
}

impl Routing {
    /// The number of (token, expert) assignments each of `num_experts` experts received.
    pub fn load(&self, num_experts: usize) -> Vec<u32> {
        let mut load = vec![0u32; num_experts];
        for &e in &self.experts {
            load[e as usize] += 1;
        }
        load
    }
}

/// Checks that `top_k` experts out of `num_experts` can be chosen.
pub fn check_top_k(num_experts: usize, top_k: usize) -> Result<()> {
    if num_experts == 0 || top_k == 0 || top_k > num_experts {
        bail!("{top_k} experts per token out of {num_experts}: expected 1 ≤ top_k ≤ number of experts");
    }
    Ok(())
}

/// The indices of the `k` largest values, largest first; ties go to the lower index.
fn top_k_indices(z: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

fn softmax(z: &[f32]) -> Vec<f32> {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// Routes every row of `logits` (`[tokens, num_experts]`) to `top_k` experts with `method`.
pub fn route(logits: &[f32], num_experts: usize, top_k: usize, method: RoutingMethod) -> Routing {
    let mut experts = Vec::with_capacity(logits.len() / num_experts * top_k);
    let mut weights = Vec::with_capacity(experts.capacity());
    for z in logits.chunks(num_experts) {
        let top = top_k_indices(z, top_k);
        let w: Vec<f32> = match method {
            RoutingMethod::Default => {
                let p = softmax(z);
                top.iter().map(|&e| p[e]).collect()
            }
            RoutingMethod::Renormalize => softmax(&top.iter().map(|&e| z[e]).collect::<Vec<_>>()),
            RoutingMethod::RenormalizeNaive => {
                let p = softmax(z);
                let sum: f32 = top.iter().map(|&e| p[e]).sum();
                top.iter().map(|&e| p[e] / sum).collect()
            }
            RoutingMethod::Llama4 => top.iter().map(|&e| 1.0 / (1.0 + (-z[e]).exp())).collect(),
        };
        experts.extend(top.iter().map(|&e| e as u32));
        weights.extend(w);
    }
    Routing { top_k, experts, weights }
}

/// The planted imbalance: `−s · ln(e + 1)` for expert `e`, added to its router logit, so that
/// under softmax routing expert `e`'s odds shrink as `1 / (e + 1)^s`, a Zipf law of exponent `s`.
pub fn zipf_gate_bias(num_experts: usize, exponent: f64) -> Vec<f32> {
    (0..num_experts).map(|e| (-exponent * ((e + 1) as f64).ln()) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_method_follows_its_formula() {
        let z = [1.0f32, 3.0, 2.0, -1.0];
        let p = softmax(&z);
        let r = route(&z, 4, 2, RoutingMethod::Default);
        assert_eq!(r.experts, vec![1, 2]);
        assert_eq!(r.weights, vec![p[1], p[2]]);
        let naive = route(&z, 4, 2, RoutingMethod::RenormalizeNaive).weights;
        assert!((naive[0] - p[1] / (p[1] + p[2])).abs() < 1e-6 && (naive[0] + naive[1] - 1.0).abs() < 1e-6);
        let renorm = route(&z, 4, 2, RoutingMethod::Renormalize).weights;
        assert!((renorm[0] - 1.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6, "softmax of [3, 2]: {renorm:?}");
        let l4 = route(&z, 4, 2, RoutingMethod::Llama4).weights;
        assert!((l4[1] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
        assert_eq!(route(&[0.5, 0.5, 0.5], 3, 2, RoutingMethod::Default).experts, vec![0, 1], "ties go to the lower index");
    }

    #[test]
    fn the_clamped_swiglu_clamps_and_adds_one() {
        let mut out = vec![0.0; 2];
        ExpertActivation::GPT_OSS.apply(&[10.0, -1.0, 9.0, -20.0], 2, &mut out);
        let want0 = 7.0 / (1.0 + (-1.702f32 * 7.0).exp()) * 8.0;
        let want1 = -1.0 / (1.0 + 1.702f32.exp()) * -6.0;
        assert!((out[0] - want0).abs() < 1e-5 && (out[1] - want1).abs() < 1e-5, "{out:?}");
    }

    #[test]
    fn top_k_beyond_the_experts_is_refused() {
        let e = check_top_k(4, 5).unwrap_err().to_string();
        assert!(e.contains("5 experts per token out of 4"), "{e}");
        assert!(check_top_k(4, 4).is_ok() && check_top_k(4, 0).is_err());
    }
}
