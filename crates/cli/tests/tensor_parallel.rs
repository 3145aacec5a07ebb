//! `--tp N` (and `tensor_parallel_size` in `--config`) as a user runs it on the CPU: the same
//! greedy tokens as one rank, a benchmark report that says its TP size, a trace with a thread per
//! rank whose collectives carry their bytes, and the analysis's collectives section read from it.

mod common;

use common::{fixed_length_dataset, lumen, lumen_env, Scratch};

fn generated(extra: &[&str]) -> String {
    let mut args = vec!["generate", "--model", "tiny-untied", "--prompt-ids", "5,6,7,300", "--max-tokens", "16", "--ignore-eos"];
    args.extend_from_slice(extra);
    lumen(&args).ok().stdout.trim().to_string()
}

#[test]
fn tp_2_and_4_generate_the_tokens_of_one_rank() {
    let one = generated(&[]);
    let distinct: std::collections::BTreeSet<&str> = one.split(',').collect();
    assert!(distinct.len() >= 4, "the chain must vary to compare anything: {one}");
    assert_eq!(generated(&["--tp", "2"]), one, "two ranks (KV heads split)");
    assert_eq!(generated(&["--tp", "4"]), one, "four ranks (KV heads replicated)");
}

#[test]
fn a_tp_2_benchmark_reports_its_size_and_traces_each_rank_s_collectives() {
    let s = Scratch::new("tp-bench");
    let data = fixed_length_dataset(&s, "tiny-untied", "6", "12", "4");
    let trace = s.path("tp.lumen");
    // The CPU's ranks take the overlap scheduler (marked tokens resolved before the ranks run).
    let config = s.write("tp.yaml", b"tensor_parallel_size: 2\ndisable_overlap_scheduler: false\n");
    let run = lumen_env(
        &["bench", "throughput", "--model", "tiny-untied", "--dataset", &data, "--config", &config, "--warmup", "0"],
        &[("LUMEN_TRACE", &trace), ("LUMEN_NVTX_DEBUG", "1")],
    )
    .ok();
    assert!(run.stdout.contains("TP Size:                2"), "{}", run.stdout);
    assert!(run.stdout.contains("Per GPU Output Throughput"), "{}", run.stdout);
    let t = lumen_trace::store::read_trace(std::path::Path::new(&trace)).unwrap();
    assert_eq!(t.meta("tensor_parallel_size"), Some("2"));
    assert_eq!(t.meta("overlap_scheduler"), Some("on"));
    assert!(run.stdout.contains("Overlap Scheduler:                      on"), "{}", run.stdout);
    let layers = 2;
    for rank in 0..2 {
        let name = format!("tp rank {rank}");
        let tid = t.threads.iter().find(|th| th.name == name).unwrap_or_else(|| panic!("no thread {name}")).tid;
        let reduces: Vec<_> = t.spans.iter().filter(|sp| sp.tid == tid && sp.name == "all_reduce").collect();
        let forwards = t.iterations.len();
        assert_eq!(reduces.len(), forwards * (1 + 2 * layers), "{name}: one per embedding and two per layer in every iteration");
        assert!(
            reduces.iter().all(|sp| sp.iteration.is_some() && sp.args.as_deref().is_some_and(|a| a.contains("\"bytes\":"))),
            "{reduces:?}"
        );
    }
    let analysis = lumen(&["analyze", &trace]).ok().stdout;
    let section = &analysis[analysis.find("== Collectives ==").expect("a collectives section")..];
    assert!(section.contains("rank threads             0, 1"), "{section}");
    let reduce = section.lines().find(|l| l.trim_start().starts_with("AllReduce")).unwrap_or_else(|| panic!("{section}"));
    let count: usize = reduce.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(count, 2 * t.iterations.len() * (1 + 2 * layers), "{reduce}");
    assert!(reduce.ends_with("MB/s") || reduce.ends_with("GB/s"), "a bus bandwidth: {reduce}");
}

#[test]
fn impossible_splits_are_refused_by_name() {
    lumen(&["generate", "--model", "tiny-untied", "--prompt-ids", "5", "--tp", "3"])
        .fails_with(1, &["--tp 3", "3 ranks do not divide the 4 attention heads"]);
    lumen(&["generate", "--model", "tiny-olmoe", "--prompt-ids", "5", "--tp", "2"]).fails_with(1, &["--tp 2", "dense models so far"]);
    lumen(&["generate", "--model", "tiny", "--prompt-ids", "5", "--tp", "0"]).fails_with(2, &["--tp"]);
    let s = Scratch::new("tp-zero");
    let config = s.write("zero.yaml", b"tensor_parallel_size: 0\n");
    lumen(&["generate", "--model", "tiny", "--prompt-ids", "5", "--config", &config]).fails_with(1, &["tensor_parallel_size is 0"]);
}
