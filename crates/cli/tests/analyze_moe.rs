//! `lumen analyze` on mixture-of-experts runs recorded by `lumen bench throughput --trace`: the
//! MoE section and the imbalance finding on a Zipf-skewed gate, the perfect-router run announced
//! and balanced, and `--compare` reading the pair as the seed's table in either order.

mod common;

use common::{fixed_length_dataset, lumen, lumen_env, Scratch};

const MODEL: &str = "tiny-olmoe+zipf=1.5";

/// Records 32 requests of 64 + 8 tokens into `name`.lumen; returns its path.
fn record(s: &Scratch, data: &str, name: &str, env: &[(&str, &str)]) -> String {
    let trace = s.path(&format!("{name}.lumen"));
    lumen_env(&["bench", "throughput", "--model", MODEL, "--dataset", data, "--trace", &trace], env).ok();
    trace
}

/// The line of `section` (a `== NAME ==` block) whose label is `label`.
fn line<'a>(text: &'a str, section: &str, label: &str) -> &'a str {
    let start = text.find(&format!("== {section} ==")).unwrap_or_else(|| panic!("no section {section}:\n{text}"));
    let block = &text[start..];
    let block = &block[..block[3..].find("\n== ").map_or(block.len(), |i| i + 3)];
    block.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("no {label} in {section}:\n{block}"))
}

#[test]
fn moe_runs_show_their_expert_load_and_the_perfect_router_pair_reads_as_the_seeds_table() {
    let s = Scratch::new("analyze-moe");
    let data = fixed_length_dataset(&s, MODEL, "32", "64", "8");
    let skewed = record(&s, &data, "skewed", &[]);
    let perfect = record(&s, &data, "perfect", &[("LUMEN_PERFECT_ROUTER", "1")]);

    let text = lumen(&["analyze", &skewed]).ok().stdout;
    assert!(line(&text, "MoE expert load", "router").contains("the model's"), "{text}");
    assert!(line(&text, "MoE expert load", "busiest over balanced").contains("4.00×"), "{text}");
    assert!(line(&text, "MoE expert load", "recorded").contains("2 MoE layers of 16 experts"), "{text}");
    assert!(text.contains("* MoE imbalance") && text.contains("LUMEN_PERFECT_ROUTER=1"), "{text}");

    let text = lumen(&["analyze", &perfect]).ok().stdout;
    assert!(line(&text, "MoE expert load", "router").contains("perfect"), "{text}");
    assert!(line(&text, "MoE expert load", "busiest over balanced").contains("1.00×"), "{text}");
    assert!(!text.contains("* MoE imbalance"), "{text}");

    let readings = ["router causing load imbalance; optimize routing or try alternative strategies", "routing is not a bottleneck"];
    let mut seen = Vec::new();
    for (new, base, perfect_in) in [(&skewed, &perfect, "base"), (&perfect, &skewed, "new")] {
        let text = lumen(&["analyze", new, "--compare", base]).ok().stdout;
        // The terminal report wraps long values: compare with the whitespace folded.
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let kind = readings.iter().position(|r| flat.contains(r)).unwrap_or_else(|| panic!("no reading of the seed's table:\n{text}"));
        assert!(line(&text, "Comparison: perfect router", "perfect router in").ends_with(perfect_in), "{text}");
        assert!(line(&text, "Comparison: perfect router", "router run's load").contains("4.00×"), "{text}");
        seen.push(kind);
    }
    assert_eq!(seen[0], seen[1], "the two orders read the pair alike");
    let same = lumen(&["analyze", &skewed, "--compare", &skewed]).ok().stdout;
    assert!(!same.contains("Comparison: perfect router"), "two runs of one router have no reading");
}
