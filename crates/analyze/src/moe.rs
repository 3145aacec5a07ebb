//! Mixture-of-experts load, from the trace's `expert_load` rows: per MoE layer, how unevenly the
//! router spread the (token, expert) assignments over the experts, which experts take the most,
//! and the share of the experts' time lost to waiting on the busiest one where experts run side
//! by side (one worker per expert, as under expert parallelism): the layer ends with its busiest
//! expert, so a balanced layer would take balanced/max of the time, where `balanced` is the
//! busiest load the best spread of the same assignments gives (⌈assignments / experts⌉), and the
//! rest, 1 − balanced/max, is lost to imbalance. A step with fewer assignments than experts
//! (batch-1 decode) is balanced when no expert gets two. On one GPU whose grouped GEMM spreads
//! every expert's rows over the whole device the loss is smaller, or a gain (a skewed router
//! wakes fewer experts, whose weights are read once); the perfect-router comparison measures it.

use std::collections::BTreeMap;

use lumen_trace::model::{max_over_balanced, ExpertLoadRow, TraceData};
use serde::Serialize;

use crate::kernels::{KernelClass, Kernels};
use crate::measured::Measured;
use crate::text;
use crate::view::{fact, Block};

/// How many experts a layer's row names as stragglers.
pub const STRAGGLERS: usize = 3;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoeLoad {
    /// Whether the run replaced the router's logits with balanced ones (meta `perfect_router`).
    pub perfect_router: bool,
    pub iterations: usize,
    pub experts: usize,
    /// One per MoE layer, in layer order.
    pub layers: Vec<LayerLoad>,
    /// Over all layers, weighted by assignments: the busiest expert's load over the busiest
    /// load of a balanced spread ([`max_over_balanced`]).
    pub max_over_balanced: f64,
    /// Over all layers: the share of the experts' time a balanced router would save.
    pub lost_share: f64,
    /// The experts with at least one slot, on average over every layer's steps with tokens: on
    /// one GPU each woken expert's weights are read, so fewer woken experts read less.
    pub active_experts: f64,
    /// The GPU time of MoE kernels (kernel class `moe`) and the part of it lost to the busiest
    /// expert; not available without such kernels.
    pub lost_ns: Measured<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerLoad {
    pub layer: u32,
    /// Assignments in all recorded iterations.
    pub assignments: u64,
    /// Per iteration, the busiest expert over a balanced spread's busiest, weighted by the
    /// iteration's assignments.
    pub max_over_balanced: f64,
    /// The worst iteration's.
    pub worst_max_over_balanced: f64,
    /// 1 − balanced/max, weighted like `max_over_balanced`.
    pub lost_share: f64,
    /// The experts with the most assignments over the run: (expert, its load over its fair share).
    pub stragglers: Vec<(usize, f64)>,
}

pub fn analyze(trace: &TraceData, kernels: &Measured<Kernels>) -> Measured<MoeLoad> {
    if trace.expert_loads.is_empty() {
        return Measured::NotAvailable(
            "the trace has no expert_load rows (a dense model, or a trace not written by lumen's recorder)".into(),
        );
    }
    let mut by_layer: BTreeMap<u32, Vec<&ExpertLoadRow>> = BTreeMap::new();
    for row in &trace.expert_loads {
        by_layer.entry(row.layer).or_default().push(row);
    }
    let experts = trace.expert_loads.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
    let layers: Vec<LayerLoad> = by_layer.iter().filter_map(|(&layer, rows)| layer_load(layer, rows, experts)).collect();
    if layers.is_empty() {
        return Measured::NotAvailable("every expert_load row is empty: no token reached an expert".into());
    }
    let total: u64 = layers.iter().map(|l| l.assignments).sum();
    let weighted = |f: fn(&LayerLoad) -> f64| layers.iter().map(|l| f(l) * l.assignments as f64).sum::<f64>() / total as f64;
    let lost_share = weighted(|l| l.lost_share);
    let lost_ns = Measured::from_option(
        kernels
            .get()
            .and_then(|k| k.classes.iter().find(|c| c.class == KernelClass::Moe))
            .map(|c| (c.total_ns, (c.total_ns as f64 * lost_share) as u64)),
        || "no MoE kernels (class moe) in the trace; record the GPU with `lumen profile`".into(),
    );
    // Over the rows with tokens (one exists: a layer had assignments), the experts with any.
    let woken: Vec<usize> = trace.expert_loads.iter().map(|r| r.tokens.iter().filter(|&&t| t > 0).count()).filter(|&n| n > 0).collect();
    let active_experts = woken.iter().sum::<usize>() as f64 / woken.len() as f64;
    let mut iterations: Vec<u64> = trace.expert_loads.iter().map(|r| r.iteration).collect();
    iterations.sort_unstable();
    iterations.dedup();
    Measured::Available(MoeLoad {
        perfect_router: trace.meta("perfect_router") == Some("on"),
        iterations: iterations.len(),
        experts,
        max_over_balanced: weighted(|l| l.max_over_balanced),
        lost_share,
        active_experts,
        lost_ns,
        layers,
    })
}

fn layer_load(layer: u32, rows: &[&ExpertLoadRow], experts: usize) -> Option<LayerLoad> {
    let mut per_expert = vec![0u64; experts];
    let (mut assignments, mut ratio_sum, mut lost_sum, mut worst) = (0u64, 0.0, 0.0, 0.0f64);
    for row in rows {
        let Some(ratio) = max_over_balanced(&row.tokens) else { continue };
        let total: u64 = row.tokens.iter().sum();
        for (e, &t) in row.tokens.iter().enumerate() {
            per_expert[e] += t;
        }
        assignments += total;
        ratio_sum += ratio * total as f64;
        lost_sum += (1.0 - 1.0 / ratio) * total as f64;
        worst = worst.max(ratio);
    }
    if assignments == 0 {
        return None;
    }
    let fair = assignments as f64 / experts as f64;
    let mut ranked: Vec<(usize, u64)> = per_expert.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Some(LayerLoad {
        layer,
        assignments,
        max_over_balanced: ratio_sum / assignments as f64,
        worst_max_over_balanced: worst,
        lost_share: lost_sum / assignments as f64,
        stragglers: ranked.into_iter().take(STRAGGLERS).map(|(e, t)| (e, t as f64 / fair)).collect(),
    })
}

/// The layers with the most imbalance first, at most `n`.
pub fn worst_layers(m: &MoeLoad, n: usize) -> Vec<&LayerLoad> {
    let mut layers: Vec<&LayerLoad> = m.layers.iter().collect();
    layers.sort_by(|a, b| b.max_over_balanced.total_cmp(&a.max_over_balanced).then(a.layer.cmp(&b.layer)));
    layers.truncate(n);
    layers
}

pub fn stragglers(l: &LayerLoad) -> String {
    l.stragglers.iter().map(|(e, x)| format!("expert {e} {x:.2}×")).collect::<Vec<_>>().join(", ")
}

pub fn view(moe: &Measured<MoeLoad>) -> Vec<Block> {
    let m = match moe {
        Measured::Available(m) => m,
        Measured::NotAvailable(why) => return vec![Block::Facts(vec![crate::view::missing("expert load", why)])],
    };
    let router = if m.perfect_router { "perfect (balanced logits; outputs are not the model's)" } else { "the model's" };
    let mut facts = vec![
        fact("router", router),
        fact("recorded", format!("{} iterations, {} MoE layers of {} experts", m.iterations, m.layers.len(), m.experts)),
        fact("busiest over balanced", format!("{:.2}× (1.00× is balanced)", m.max_over_balanced)),
        fact("lost to imbalance", format!("{} of the experts' time, were they run side by side", text::percent(m.lost_share))),
        fact("experts woken", format!("{:.1} of {} per layer and step", m.active_experts, m.experts)),
    ];
    facts.push(crate::view::measured("MoE kernel time lost", &m.lost_ns, |(total, lost)| {
        format!("{} of {}", text::duration(*lost as f64), text::duration(*total as f64))
    }));
    let rows = worst_layers(m, m.layers.len())
        .into_iter()
        .map(|l| {
            vec![
                l.layer.to_string(),
                format!("{:.2}×", l.max_over_balanced),
                format!("{:.2}×", l.worst_max_over_balanced),
                text::percent(l.lost_share),
                stragglers(l),
            ]
        })
        .collect();
    vec![
        Block::Facts(facts),
        Block::Table { header: vec!["layer", "max/mean", "worst", "lost", "stragglers (load over fair share)"], left: vec![4], rows },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_trace::model::ExpertLoadRow;

    fn row(iteration: u64, layer: u32, tokens: &[u64]) -> ExpertLoadRow {
        ExpertLoadRow { iteration, layer, tokens: tokens.to_vec() }
    }

    #[test]
    fn loads_give_max_over_balanced_lost_time_and_stragglers() {
        let trace = TraceData {
            expert_loads: vec![
                // Layer 0: balanced, 8 assignments each iteration.
                row(0, 0, &[2, 2, 2, 2]),
                row(1, 0, &[2, 2, 2, 2]),
                // Layer 1: iteration 0 has 12 assignments, busiest 6 (mean 3: 2.0×, lost 1/2);
                // iteration 1 has 4, busiest 4 (mean 1: 4.0×, lost 3/4).
                row(0, 1, &[6, 3, 3, 0]),
                row(1, 1, &[4, 0, 0, 0]),
                // A step without tokens counts for nothing.
                row(2, 1, &[0, 0, 0, 0]),
            ],
            meta: vec![("perfect_router".into(), "off".into())],
            ..TraceData::default()
        };
        let m = analyze(&trace, &Measured::NotAvailable("no kernels".into()));
        let m = m.get().expect("rows");
        assert!(!m.perfect_router);
        assert_eq!((m.iterations, m.experts, m.layers.len()), (3, 4, 2));
        let (l0, l1) = (&m.layers[0], &m.layers[1]);
        assert_eq!((l0.assignments, l0.max_over_balanced, l0.lost_share), (16, 1.0, 0.0));
        assert_eq!(l1.assignments, 16);
        // (2.0·12 + 4.0·4) / 16 = 2.5; lost (0.5·12 + 0.75·4) / 16 = 0.5625.
        assert!((l1.max_over_balanced - 2.5).abs() < 1e-12 && (l1.lost_share - 0.5625).abs() < 1e-12, "{l1:?}");
        assert_eq!(l1.worst_max_over_balanced, 4.0);
        // Totals 10, 3, 3, 0 over a fair 4: expert 0 2.5×, then 1 and 2 at 0.75× (lower id first).
        assert_eq!(l1.stragglers, [(0, 2.5), (1, 0.75), (2, 0.75)]);
        // Weighted over layers (16 assignments each): 1.75 over balanced, lost 0.28125.
        assert!((m.max_over_balanced - 1.75).abs() < 1e-12 && (m.lost_share - 0.28125).abs() < 1e-12);
        assert_eq!(worst_layers(m, 1)[0].layer, 1);
        // Woken experts per row with tokens: 4, 4, 3, 1 (the empty step is left out).
        assert!((m.active_experts - 3.0).abs() < 1e-12, "{}", m.active_experts);
        assert!(m.lost_ns.get().is_none());
    }

    #[test]
    fn decode_steps_with_fewer_assignments_than_experts_are_balanced_when_no_expert_gets_two() {
        // Batch 1, top 2 of 16 experts: one token each on two experts is the best spread (the
        // mean, 1/8, would call it 8× imbalanced); two tokens on one expert is 2×.
        let mut one_each = vec![0u64; 16];
        (one_each[3], one_each[9]) = (1, 1);
        let mut doubled = vec![0u64; 16];
        doubled[5] = 2;
        let trace =
            TraceData { expert_loads: vec![row(0, 0, &one_each), row(1, 0, &one_each), row(0, 1, &doubled)], ..TraceData::default() };
        let m = analyze(&trace, &Measured::NotAvailable("no kernels".into()));
        let m = m.get().expect("rows");
        assert_eq!((m.layers[0].max_over_balanced, m.layers[0].lost_share), (1.0, 0.0));
        assert_eq!((m.layers[1].max_over_balanced, m.layers[1].lost_share), (2.0, 0.5));
    }

    #[test]
    fn dense_traces_have_no_expert_load() {
        let m = analyze(&TraceData::default(), &Measured::NotAvailable("no kernels".into()));
        assert!(m.reason().unwrap().contains("no expert_load rows"));
        let perfect = TraceData {
            expert_loads: vec![row(0, 0, &[1, 1])],
            meta: vec![("perfect_router".into(), "on".into())],
            ..TraceData::default()
        };
        assert!(analyze(&perfect, &Measured::NotAvailable(String::new())).get().unwrap().perfect_router);
    }
}
