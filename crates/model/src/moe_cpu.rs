//! The mixture-of-experts block on the CPU: the gate GEMM to router logits (plus the router bias
//! and a preset's planted Zipf bias), the perfect router's replacement logits when it is on,
//! routing, each expert's SwiGLU over the rows routed to it, and the weighted sum back into each
//! token's row (slot by slot, best expert first, so a token's result does not depend on the rest
//! of its batch) times DeepSeek's routed scaling factor, plus the shared expert (Qwen2-MoE's
//! gated one, DeepSeek's plain one). DeepSeek-V3's score correction bias joins the routing, except
//! under the perfect router.

use crate::config::MoeConfig;
use crate::moe::{route_limited, zipf_gate_bias};
use crate::perfect_router::{balanced_logits, BalancedKey};
use crate::plan::{Expert, Moe};
use lumen_backend::cpu::{self, PackedMatrix};
use lumen_trace::instrument::{span, Category};

/// A product `out = x · wᵀ` of `t` rows, as the decoder runs its projections.
pub type Project<'a> = dyn Fn(&[f32], usize, &PackedMatrix, &mut [f32]) + 'a;

/// One expert's output for the `n` rows of `x`, biases included, into `out` (`[n, hidden]`).
fn run_expert(e: &Expert<PackedMatrix, Vec<f32>>, c: &MoeConfig, x: &[f32], n: usize, project: &Project, out: &mut [f32]) {
    let f = e.down.k;
    let mut gate_up = vec![0.0f32; n * 2 * f];
    project(x, n, &e.gate_up, &mut gate_up);
    if let Some(b) = &e.gate_up_bias {
        gate_up.chunks_mut(2 * f).for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b));
    }
    let mut act = vec![0.0f32; n * f];
    c.activation.apply(&gate_up, f, &mut act);
    project(&act, n, &e.down, out);
    if let Some(b) = &e.down_bias {
        out.chunks_mut(b.len()).for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b));
    }
}

/// Runs the block over the `t` rows of `x` (`[t, hidden]`) into `out`; returns how many
/// (token, expert) assignments each expert received.
pub fn moe_forward(
    moe: &Moe<PackedMatrix, Vec<f32>>,
    c: &MoeConfig,
    perfect_router: bool,
    x: &[f32],
    t: usize,
    project: &Project,
    out: &mut [f32],
) -> Vec<u32> {
    let (num_experts, k) = (c.num_experts, c.top_k);
    let h = x.len() / t.max(1);
    let gate = span(Category::Debug, "moe gate");
    let mut logits = vec![0.0f32; t * num_experts];
    cpu::matmul(x, t, &moe.router, &mut logits);
    drop(gate);
    let route_span = span(Category::Debug, "moe route");
    let bias: Option<Vec<f32>> = match (&moe.router_bias, c.gate_zipf_exponent) {
        (None, None) => None,
        (router, zipf) => {
            let zipf = zipf.map_or(vec![0.0; num_experts], |s| zipf_gate_bias(num_experts, s));
            Some(router.as_ref().map_or(zipf.clone(), |b| b.iter().zip(&zipf).map(|(b, z)| b + z).collect()))
        }
    };
    if let Some(bias) = &bias {
        logits.chunks_mut(num_experts).for_each(|row| row.iter_mut().zip(bias).for_each(|(v, b)| *v += b));
    }
    if perfect_router {
        let key = BalancedKey { tokens: t, num_experts, top_k: k, method: c.routing, ep_ranks: 1, groups: c.groups };
        logits.copy_from_slice(&balanced_logits(key).expect("the perfect router's assignment was checked at load"));
    }
    let correction = moe.score_correction_bias.as_deref().filter(|_| !perfect_router);
    let mut routing = route_limited(&logits, num_experts, k, c.routing, c.groups, correction);
    if c.routed_scaling_factor != 1.0 {
        routing.weights.iter_mut().for_each(|w| *w *= c.routed_scaling_factor);
    }
    drop(route_span);
    let experts_span = span(Category::Debug, "moe experts");

    let mut slot_out = vec![0.0f32; t * k * h];
    for (e, expert) in moe.experts.iter().enumerate() {
        let slots: Vec<usize> = (0..t * k).filter(|&s| routing.experts[s] as usize == e).collect();
        if slots.is_empty() {
            continue;
        }
        let rows: Vec<f32> = slots.iter().flat_map(|&s| x[(s / k) * h..(s / k + 1) * h].iter().copied()).collect();
        let mut expert_out = vec![0.0f32; slots.len() * h];
        run_expert(expert, c, &rows, slots.len(), project, &mut expert_out);
        for (&s, row) in slots.iter().zip(expert_out.chunks(h)) {
            slot_out[s * h..(s + 1) * h].copy_from_slice(row);
        }
    }
    drop(experts_span);
    let _unpermute = span(Category::Debug, "moe unpermute");
    for (token, o) in out.chunks_mut(h).enumerate() {
        o.fill(0.0);
        for s in token * k..(token + 1) * k {
            let w = routing.weights[s];
            o.iter_mut().zip(&slot_out[s * h..(s + 1) * h]).for_each(|(o, v)| *o += w * v);
        }
    }
    if let Some(shared) = &moe.shared {
        let mut shared_out = vec![0.0f32; t * h];
        run_expert(&shared.expert, c, x, t, project, &mut shared_out);
        let mut gate = vec![0.0f32; t];
        match &shared.gate {
            Some(w) => {
                cpu::matmul(x, t, w, &mut gate);
                gate.iter_mut().for_each(|g| *g = 1.0 / (1.0 + (-*g).exp()));
            }
            None => gate.fill(1.0),
        }
        for ((o, s), scale) in out.chunks_mut(h).zip(shared_out.chunks(h)).zip(&gate) {
            o.iter_mut().zip(s).for_each(|(o, s)| *o += scale * s);
        }
    }
    routing.load(num_experts)
}
