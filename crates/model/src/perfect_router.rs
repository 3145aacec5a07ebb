//! The perfect router (`LUMEN_PERFECT_ROUTER=1`, alias `ENABLE_PERFECT_ROUTER`): the gate GEMM
//! still runs, then its logits are replaced by precomputed logits that every routing method turns
//! into a perfectly balanced assignment, so a run shows what the model would do with no expert
//! load imbalance. Outputs are wrong by design.
//!
//! The assignment numbers a batch's `tokens · k` slots `a = t·k + j` and sends slot `a` to rank
//! `a mod R` of the `R` expert-parallel ranks, expert `(a / R) mod (E / R)` of that rank. Each
//! token's `k` slots are consecutive, so they go to `k` different experts; every expert receives
//! `tokens·k / E` slots when that divides, and the loads differ by at most one otherwise; and each
//! rank's tokens spread over every rank's experts. The chosen experts' logits are 7.5, the others
//! 0.5 (TensorRT-LLM's values), so softmax, sigmoid and top-k all pick the chosen ones.
//!
//! Under DeepSeekV3 routing a token may use only `topk_group` of the `n_group` expert groups.
//! Where that limit binds, the rotation moves in chunks of `c` consecutive slots that stay in one
//! group: chunk `q = a / c` goes to rank `q mod R`, expert `((q / R) mod (E / (R·c)))·c + a mod c`
//! there. `c` is the smallest divisor of `k` with `k / c ≤ topk_group` that divides the group
//! size and each rank's experts, so a token's `k / c` chunks lie in at most `topk_group` groups
//! while the balance stays exact. A chosen expert's sigmoid (0.9994) puts its group ahead of every
//! group without one, and the score correction bias is left out under the perfect router.

use crate::moe::{GroupLimit, RoutingMethod};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The environment variable, and the alias TensorRT-LLM reads.
pub const PERFECT_ROUTER_ENV: &str = "LUMEN_PERFECT_ROUTER";
pub const PERFECT_ROUTER_ALIAS: &str = "ENABLE_PERFECT_ROUTER";

const CHOSEN_LOGIT: f32 = 7.5;
const OTHER_LOGIT: f32 = 0.5;

/// Whether the perfect router is asked for: `1`/`true`/`on` or `0`/`false`/`off` (or unset) in
/// `LUMEN_PERFECT_ROUTER`, else in `ENABLE_PERFECT_ROUTER`; anything else is an error naming
/// the variable.
pub fn perfect_router_from_env() -> Result<bool> {
    for name in [PERFECT_ROUTER_ENV, PERFECT_ROUTER_ALIAS] {
        if let Ok(value) = std::env::var(name) {
            return parse_switch(name, &value);
        }
    }
    Ok(false)
}

fn parse_switch(name: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "" | "0" | "false" | "off" | "no" => Ok(false),
        _ => bail!("{name}={value:?}: expected 1 or 0 (true/false, on/off)"),
    }
}

/// What a set of balanced logits is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BalancedKey {
    pub tokens: usize,
    pub num_experts: usize,
    pub top_k: usize,
    pub method: RoutingMethod,
    pub ep_ranks: usize,
    /// The group limit, which only DeepSeekV3 routing reads.
    pub groups: GroupLimit,
}

type Cache = Mutex<HashMap<BalancedKey, Arc<Vec<f32>>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The expert of assignment slot `a` under the rotation in the module doc, in chunks of `chunk`
/// slots ([`group_chunk`]; 1 where no group limit binds).
pub fn balanced_expert(a: usize, num_experts: usize, ep_ranks: usize, chunk: usize) -> usize {
    let per_rank = num_experts / ep_ranks;
    let q = a / chunk;
    (q % ep_ranks) * per_rank + ((q / ep_ranks) % (per_rank / chunk)) * chunk + a % chunk
}

/// How many consecutive slots of a token stay in one expert group under `key`'s routing (see the
/// module doc), or an error where no chunk keeps a token within the group limit.
pub fn group_chunk(key: &BalancedKey) -> Result<usize> {
    let BalancedKey { num_experts, top_k, ep_ranks, groups, .. } = *key;
    if key.method != RoutingMethod::DeepSeekV3 || groups.topk_group >= groups.n_group.min(top_k) {
        return Ok(1);
    }
    let (group_size, per_rank) = (groups.group_size(num_experts), num_experts / ep_ranks);
    (1..=top_k).find(|&c| top_k % c == 0 && top_k / c <= groups.topk_group && group_size % c == 0 && per_rank % c == 0).with_context(|| {
        format!(
            "perfect router: no balanced assignment keeps {top_k} experts per token within {} of {} groups of {group_size} \
                 on {ep_ranks} expert-parallel ranks",
            groups.topk_group, groups.n_group
        )
    })
}

/// The balanced logits (`[tokens, num_experts]`) for `key`, computed once and cached. The
/// experts must divide evenly among the ranks.
pub fn balanced_logits(key: BalancedKey) -> Result<Arc<Vec<f32>>> {
    let BalancedKey { tokens, num_experts, top_k, ep_ranks, groups, .. } = key;
    if ep_ranks == 0 || num_experts % ep_ranks != 0 {
        bail!("perfect router: {num_experts} experts do not divide among {ep_ranks} expert-parallel ranks");
    }
    crate::moe::check_top_k(num_experts, top_k)?;
    groups.check(num_experts, top_k)?;
    let chunk = group_chunk(&key)?;
    let mut cached = cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(logits) = cached.get(&key) {
        return Ok(logits.clone());
    }
    let mut logits = vec![OTHER_LOGIT; tokens * num_experts];
    for a in 0..tokens * top_k {
        logits[(a / top_k) * num_experts + balanced_expert(a, num_experts, ep_ranks, chunk)] = CHOSEN_LOGIT;
    }
    let logits = Arc::new(logits);
    cached.insert(key, logits.clone());
    Ok(logits)
}

/// The keys whose logits are cached, for tests and reports.
pub fn cached_keys() -> Vec<BalancedKey> {
    cache().lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_values_are_read_and_bad_ones_named() {
        assert!(parse_switch("X", "1").unwrap() && !parse_switch("X", "0").unwrap());
        let e = parse_switch(PERFECT_ROUTER_ENV, "maybe").unwrap_err().to_string();
        assert!(e.contains("LUMEN_PERFECT_ROUTER=\"maybe\""), "{e}");
    }

    #[test]
    fn the_rotation_follows_tensorrt_llms_example() {
        // 8 experts on 4 ranks, 2 per token: tokens get [0, 2], [4, 6], [1, 3], [5, 7].
        let slots: Vec<usize> = (0..8).map(|a| balanced_expert(a, 8, 4, 1)).collect();
        assert_eq!(slots, vec![0, 2, 4, 6, 1, 3, 5, 7]);
        let key =
            BalancedKey { tokens: 1, num_experts: 6, top_k: 2, method: RoutingMethod::Default, ep_ranks: 4, groups: GroupLimit::NONE };
        assert!(balanced_logits(key).unwrap_err().to_string().contains("6 experts do not divide among 4"));
    }

    #[test]
    fn a_group_limit_no_chunk_can_keep_is_refused() {
        // Top 4 within 1 of 4 groups of 4 experts on 4 ranks: a rank holds one expert of a chunk of 4.
        let groups = GroupLimit { n_group: 4, topk_group: 1 };
        let key = BalancedKey { tokens: 1, num_experts: 16, top_k: 4, method: RoutingMethod::DeepSeekV3, ep_ranks: 16, groups };
        let e = balanced_logits(key).unwrap_err().to_string();
        assert!(e.contains("no balanced assignment keeps 4 experts per token within 1 of 4 groups of 4 on 16"), "{e}");
        assert_eq!(group_chunk(&BalancedKey { ep_ranks: 1, ..key }).unwrap(), 4);
    }
}
