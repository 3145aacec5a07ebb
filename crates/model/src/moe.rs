//! Mixture-of-experts routing, device-neutral: the routing methods as TensorRT-LLM names them,
//! which turn a token's router logits `z` into its top-k experts and their weights (DeepSeek-V3's
//! within a limit of expert groups); the expert activations; and the Zipf-shaped gate bias that
//! plants a load imbalance in random weights.

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
    /// DeepSeek-V3 ("noaux_tc"): `s = sigmoid(z)`, `s' = s + e_score_correction_bias`; a
    /// group's score is the sum of its two best `s'`; the experts are the top-k `s'` of the best
    /// `topk_group` groups ([`GroupLimit`]), weighted `s / Σ s`.
    DeepSeekV3,
}

impl RoutingMethod {
    pub const ALL: [RoutingMethod; 5] = [
        RoutingMethod::Default,
        RoutingMethod::Renormalize,
        RoutingMethod::RenormalizeNaive,
        RoutingMethod::Llama4,
        RoutingMethod::DeepSeekV3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RoutingMethod::Default => "Default",
            RoutingMethod::Renormalize => "Renormalize",
            RoutingMethod::RenormalizeNaive => "RenormalizeNaive",
            RoutingMethod::Llama4 => "Llama4",
            RoutingMethod::DeepSeekV3 => "DeepSeekV3",
        }
    }
}

/// DeepSeek-V3's expert groups: the experts split into `n_group` equal groups in index order,
/// and a token's experts come from its best `topk_group` of them. Only [`RoutingMethod::DeepSeekV3`]
/// reads it; `NONE` is one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupLimit {
    pub n_group: usize,
    pub topk_group: usize,
}

impl GroupLimit {
    pub const NONE: GroupLimit = GroupLimit { n_group: 1, topk_group: 1 };

    /// Checks that the groups split `num_experts` evenly and hold `top_k` experts.
    pub fn check(self, num_experts: usize, top_k: usize) -> Result<()> {
        let GroupLimit { n_group, topk_group } = self;
        if n_group == 0 || !num_experts.is_multiple_of(n_group) {
            bail!("n_group {n_group}: expected a number of groups that divides the {num_experts} routed experts");
        }
        if topk_group == 0 || topk_group > n_group {
            bail!("topk_group {topk_group}: expected 1 ≤ topk_group ≤ n_group ({n_group})");
        }
        let reachable = topk_group * (num_experts / n_group);
        if top_k > reachable {
            bail!("{top_k} experts per token from {topk_group} groups of {}: expected at most {reachable}", num_experts / n_group);
        }
        Ok(())
    }

    /// The experts of one group.
    pub fn group_size(self, num_experts: usize) -> usize {
        num_experts / self.n_group
    }
}

pub use lumen_backend::ExpertActivation;

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

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// DeepSeek-V3's choice for one token's logits `z`: the top-k of `s + bias` among the experts
/// of the best `topk_group` groups, each group scored by the sum of its two best `s + bias`
/// (its only one when a group has one expert). Experts outside the kept groups are not
/// candidates at all. Returns the experts and their weights `s / Σ s`.
fn route_deepseek_v3(z: &[f32], top_k: usize, groups: GroupLimit, correction_bias: Option<&[f32]>) -> (Vec<usize>, Vec<f32>) {
    let s: Vec<f32> = z.iter().map(|&v| sigmoid(v)).collect();
    let choice: Vec<f32> = match correction_bias {
        Some(b) => s.iter().zip(b).map(|(s, b)| s + b).collect(),
        None => s.clone(),
    };
    let size = groups.group_size(z.len());
    let group_scores: Vec<f32> = choice.chunks(size).map(|g| top_k_indices(g, size.min(2)).iter().map(|&e| g[e]).sum()).collect();
    let mut candidates = vec![f32::NEG_INFINITY; z.len()];
    for g in top_k_indices(&group_scores, groups.topk_group) {
        candidates[g * size..(g + 1) * size].copy_from_slice(&choice[g * size..(g + 1) * size]);
    }
    let top = top_k_indices(&candidates, top_k);
    let sum: f32 = top.iter().map(|&e| s[e]).sum();
    let weights = top.iter().map(|&e| s[e] / sum).collect();
    (top, weights)
}

/// Routes every row of `logits` (`[tokens, num_experts]`) to `top_k` experts with `method`.
pub fn route(logits: &[f32], num_experts: usize, top_k: usize, method: RoutingMethod) -> Routing {
    route_limited(logits, num_experts, top_k, method, GroupLimit::NONE, None)
}

/// [`route`] with DeepSeek-V3's group limit and score correction bias (`[num_experts]`), which
/// only [`RoutingMethod::DeepSeekV3`] reads.
pub fn route_limited(
    logits: &[f32],
    num_experts: usize,
    top_k: usize,
    method: RoutingMethod,
    groups: GroupLimit,
    correction_bias: Option<&[f32]>,
) -> Routing {
    let mut experts = Vec::with_capacity(logits.len() / num_experts * top_k);
    let mut weights = Vec::with_capacity(experts.capacity());
    for z in logits.chunks(num_experts) {
        if method == RoutingMethod::DeepSeekV3 {
            let (top, w) = route_deepseek_v3(z, top_k, groups, correction_bias);
            experts.extend(top.iter().map(|&e| e as u32));
            weights.extend(w);
            continue;
        }
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
            RoutingMethod::Llama4 => top.iter().map(|&e| sigmoid(z[e])).collect(),
            RoutingMethod::DeepSeekV3 => unreachable!("routed above"),
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
    fn deepseek_v3_keeps_the_best_groups_and_weighs_by_the_uncorrected_scores() {
        // Four groups of two. Group scores (s + bias, top two summed) rank groups 2 and 0 first;
        // expert 6 alone has the best score but its group (3) loses to both.
        let z = [2.0f32, 1.0, -3.0, -3.0, 1.5, 1.5, 4.0, -6.0];
        let bias = [0.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let groups = GroupLimit { n_group: 4, topk_group: 2 };
        let r = route_limited(&z, 8, 3, RoutingMethod::DeepSeekV3, groups, Some(&bias));
        assert_eq!(r.experts, vec![0, 4, 5], "groups 0 and 2 kept, then the top 3 of their experts");
        let s: Vec<f32> = [2.0f32, 1.5, 1.5].iter().map(|&v| sigmoid(v)).collect();
        let sum: f32 = s.iter().sum();
        assert!(r.weights.iter().zip(&s).all(|(w, s)| (w - s / sum).abs() < 1e-6), "{:?}", r.weights);
        // A correction bias moves the choice (expert 1 over 4 and 5) but not the weights' scores.
        let bias = [0.0f32, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let r = route_limited(&z, 8, 3, RoutingMethod::DeepSeekV3, groups, Some(&bias));
        assert_eq!(r.experts, vec![1, 0, 4]);
        let s: Vec<f32> = [1.0f32, 2.0, 1.5].iter().map(|&v| sigmoid(v)).collect();
        assert!((r.weights[0] - s[0] / s.iter().sum::<f32>()).abs() < 1e-6, "{:?}", r.weights);
        let all = route_limited(&z, 8, 3, RoutingMethod::DeepSeekV3, GroupLimit::NONE, None);
        assert_eq!(all.experts, vec![6, 0, 4], "one group: the plain top 3 of the sigmoid scores");
    }

    #[test]
    fn impossible_group_limits_are_refused() {
        let e = GroupLimit { n_group: 3, topk_group: 1 }.check(8, 2).unwrap_err().to_string();
        assert!(e.contains("n_group 3: expected a number of groups that divides the 8 routed experts"), "{e}");
        let e = GroupLimit { n_group: 4, topk_group: 5 }.check(8, 2).unwrap_err().to_string();
        assert!(e.contains("topk_group 5: expected 1 ≤ topk_group ≤ n_group (4)"), "{e}");
        let e = GroupLimit { n_group: 4, topk_group: 1 }.check(8, 3).unwrap_err().to_string();
        assert!(e.contains("3 experts per token from 1 groups of 2"), "{e}");
        assert!(GroupLimit { n_group: 8, topk_group: 4 }.check(256, 8).is_ok());
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
