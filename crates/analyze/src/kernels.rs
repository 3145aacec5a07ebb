//! Kernels: the top kernels by total time, kernel classes by ordered name rules (GEMM, attention,
//! norm/elementwise, MoE, communication, memory, other), and kernels that ran shorter than the API
//! call that launched them.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};

use lumen_trace::model::{GpuOpKind, GpuOpRow, TraceData};
use serde::Serialize;

use crate::measured::{Measured, NO_GPU_OPS};
use crate::stats::{share, Distribution};
use crate::text;
use crate::view::{fact, measured, missing, Block};
use crate::LaunchIndex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelClass {
    Gemm,
    Attention,
    NormElementwise,
    Moe,
    Communication,
    Memory,
    Other,
}

impl KernelClass {
    pub const ALL: [KernelClass; 7] = [
        KernelClass::Gemm,
        KernelClass::Attention,
        KernelClass::NormElementwise,
        KernelClass::Moe,
        KernelClass::Communication,
        KernelClass::Memory,
        KernelClass::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KernelClass::Gemm => "gemm",
            KernelClass::Attention => "attention",
            KernelClass::NormElementwise => "norm/elementwise",
            KernelClass::Moe => "moe",
            KernelClass::Communication => "communication",
            KernelClass::Memory => "memory",
            KernelClass::Other => "other",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "norm" | "elementwise" => Some(KernelClass::NormElementwise),
            name => KernelClass::ALL.into_iter().find(|class| class.as_str() == name),
        }
    }
}

/// Kernels whose name contains one of `patterns` (case-insensitive; a pattern starting with `^`
/// must begin the name) belong to `class`. Rules are tried in order; the first match wins.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassRule {
    pub class: KernelClass,
    pub patterns: Vec<String>,
}

impl ClassRule {
    fn new(class: KernelClass, patterns: &[&str]) -> Self {
        ClassRule { class, patterns: patterns.iter().map(|p| p.to_ascii_lowercase()).collect() }
    }

    fn matches(&self, lower_name: &str) -> bool {
        self.patterns.iter().any(|p| match p.strip_prefix('^') {
            Some(prefix) => lower_name.starts_with(prefix),
            None => lower_name.contains(p.as_str()),
        })
    }
}

/// The default rules, most specific first: NCCL's `AllReduce` would otherwise read as a
/// reduction, `topkGatingSoftmax` as a softmax and CUTLASS-built attention as a GEMM.
pub fn default_rules() -> Vec<ClassRule> {
    vec![
        ClassRule::new(KernelClass::Communication, &["nccl", "allreduce", "all_gather", "reduce_scatter"]),
        ClassRule::new(KernelClass::Attention, &["attention", "flash", "fmha", "attn", "paged"]),
        ClassRule::new(KernelClass::Moe, &["moe", "expert", "topk_gating", "router"]),
        ClassRule::new(KernelClass::Gemm, &["gemm", "nvjet", "cutlass", "xmma", "cublas", "matmul", "gemv", "sm90_", "sm80_"]),
        ClassRule::new(KernelClass::Memory, &["memcpy", "memset"]),
        ClassRule::new(
            KernelClass::NormElementwise,
            &[
                "norm",
                "elementwise",
                "silu",
                "gelu",
                "rope",
                "rotary",
                "softmax",
                "add_",
                "mul_",
                "copy",
                "fill",
                "reduce",
                "vectorized",
                "quantize",
                "amax",
            ],
        ),
    ]
}

/// `rules` with the rules of `extra` in front of them: one `class=pattern,pattern` a line; blank
/// lines and lines starting with `#` are skipped.
pub fn with_extra_rules(rules: Vec<ClassRule>, extra: &str) -> Result<Vec<ClassRule>> {
    let mut added = Vec::new();
    for (number, text) in extra.lines().enumerate() {
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let bad = || {
            let classes: Vec<&str> = KernelClass::ALL.iter().map(|c| c.as_str()).collect();
            format!(
                "kernel class rule line {} {text:?}: expected CLASS=PATTERN[,PATTERN...] with CLASS one of {}",
                number + 1,
                classes.join(", ")
            )
        };
        let (class, patterns) = text.split_once('=').with_context(bad)?;
        let class = KernelClass::parse(class).with_context(bad)?;
        let patterns: Vec<&str> = patterns.split(',').map(str::trim).filter(|p| !p.is_empty() && *p != "^").collect();
        ensure!(!patterns.is_empty(), bad());
        added.push(ClassRule::new(class, &patterns));
    }
    added.extend(rules);
    Ok(added)
}

/// The class of a kernel named `name` under `rules`.
pub fn classify(rules: &[ClassRule], name: &str) -> KernelClass {
    let lower = name.to_ascii_lowercase();
    rules.iter().find(|rule| rule.matches(&lower)).map_or(KernelClass::Other, |rule| rule.class)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kernels {
    pub count: usize,
    pub total_ns: u64,
    /// The kernels with the most total time, most first.
    pub top: Vec<KernelStats>,
    /// Kernels, copies and memsets by class, most time first; shares are of their summed time.
    pub classes: Vec<ClassTotal>,
    pub shorter_than_launch: Measured<ShorterThanLaunch>,
    /// Kernels that started before the kernel ahead of them on their stream had ended
    /// (programmatic dependent launch), timed from that end ([`crate::gpu::serialize_streams`]).
    pub early_starts: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelStats {
    pub name: String,
    pub class: KernelClass,
    pub count: usize,
    pub total_ns: u64,
    pub mean_ns: f64,
    pub median_ns: f64,
    pub min_ns: u64,
    pub max_ns: u64,
    /// Of all kernel time.
    pub share: f64,
    /// The most common launch configuration.
    pub grid: Option<[u32; 3]>,
    pub block: Option<[u32; 3]>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassTotal {
    pub class: KernelClass,
    pub count: usize,
    pub total_ns: u64,
    pub share: f64,
}

/// Kernels that ran for less time than their launch API call took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShorterThanLaunch {
    /// Kernels whose launch call is in the trace.
    pub with_launch: usize,
    pub count: usize,
    pub share: f64,
    /// The names most often shorter than their launch, with how often.
    pub names: Vec<(String, usize)>,
}

/// A kernel's grid and block.
type LaunchConfig = (Option<[u32; 3]>, Option<[u32; 3]>);

fn duration(op: &GpuOpRow) -> u64 {
    op.end_ns.saturating_sub(op.start_ns)
}

pub fn analyze(trace: &TraceData, launches: &LaunchIndex, rules: &[ClassRule], top: usize, early_starts: usize) -> Measured<Kernels> {
    let kernels: Vec<&GpuOpRow> = trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Kernel).collect();
    if kernels.is_empty() {
        let graphs = trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Graph).count();
        return Measured::NotAvailable(match (trace.gpu_ops.is_empty(), graphs) {
            (true, _) => NO_GPU_OPS.into(),
            (false, 0) => "the trace has no kernels".into(),
            (false, n) => format!(
                "the trace has no kernels: its {n} CUDA graph launches were traced as whole graphs; record with `lumen profile --cuda-graph-trace node` to see their kernels"
            ),
        });
    }
    let mut by_name: HashMap<&str, Vec<&GpuOpRow>> = HashMap::new();
    for &k in &kernels {
        by_name.entry(k.name.as_str()).or_default().push(k);
    }
    let total_ns: u64 = kernels.iter().map(|k| duration(k)).sum();
    let mut totals: Vec<(&str, u64)> = by_name.iter().map(|(name, ops)| (*name, ops.iter().map(|op| duration(op)).sum())).collect();
    totals.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let stats = totals.iter().take(top).map(|(name, _)| kernel_stats(name, &by_name[name], rules, total_ns)).collect();
    Measured::Available(Kernels {
        count: kernels.len(),
        total_ns,
        top: stats,
        classes: classes(trace, &by_name, rules),
        shorter_than_launch: shorter_than_launch(&kernels, launches, top),
        early_starts,
    })
}

fn kernel_stats(name: &str, ops: &[&GpuOpRow], rules: &[ClassRule], kernel_ns: u64) -> KernelStats {
    let mut durations: Vec<f64> = ops.iter().map(|op| duration(op) as f64).collect();
    let d = Distribution::of(&mut durations).expect("a kernel name has at least one kernel");
    let mut configs: HashMap<LaunchConfig, usize> = HashMap::new();
    for op in ops {
        *configs.entry((op.grid, op.block)).or_default() += 1;
    }
    let ((grid, block), _) = configs.into_iter().max_by_key(|&(config, n)| (n, std::cmp::Reverse(config))).expect("at least one config");
    let total_ns = ops.iter().map(|op| duration(op)).sum();
    KernelStats {
        name: name.to_string(),
        class: classify(rules, name),
        count: ops.len(),
        total_ns,
        mean_ns: d.mean,
        median_ns: d.median,
        min_ns: d.min as u64,
        max_ns: d.max as u64,
        share: share(total_ns as f64, kernel_ns as f64),
        grid,
        block,
    }
}

/// Kernels by the class of their name; copies and memsets are memory.
fn classes(trace: &TraceData, by_name: &HashMap<&str, Vec<&GpuOpRow>>, rules: &[ClassRule]) -> Vec<ClassTotal> {
    let mut totals: HashMap<KernelClass, (usize, u64)> = HashMap::new();
    for (name, ops) in by_name {
        let total = totals.entry(classify(rules, name)).or_default();
        total.0 += ops.len();
        total.1 += ops.iter().map(|op| duration(op)).sum::<u64>();
    }
    for op in trace.gpu_ops.iter().filter(|op| matches!(op.kind, GpuOpKind::Memcpy | GpuOpKind::Memset)) {
        let total = totals.entry(KernelClass::Memory).or_default();
        total.0 += 1;
        total.1 += duration(op);
    }
    let all_ns: u64 = totals.values().map(|t| t.1).sum();
    let mut classes: Vec<ClassTotal> = KernelClass::ALL
        .into_iter()
        .filter_map(|class| {
            let &(count, total_ns) = totals.get(&class)?;
            Some(ClassTotal { class, count, total_ns, share: share(total_ns as f64, all_ns as f64) })
        })
        .collect();
    classes.sort_by_key(|c| std::cmp::Reverse(c.total_ns));
    classes
}

/// Kernels launched one by one that ran shorter than their launch call. A kernel of a CUDA graph
/// shares its graph's one launch call with every other node, so it is left out, whether the trace
/// says so by graph ids or only by the launch call (torch.profiler's).
fn shorter_than_launch(kernels: &[&GpuOpRow], launches: &LaunchIndex, top: usize) -> Measured<ShorterThanLaunch> {
    let mut with_launch = 0;
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for k in kernels.iter().filter(|k| !launches.from_graph(k)) {
        if let Some(call) = launches.launch_of(k) {
            with_launch += 1;
            if duration(k) < call.end_ns.saturating_sub(call.start_ns) {
                *by_name.entry(k.name.as_str()).or_default() += 1;
            }
        }
    }
    if with_launch == 0 {
        return Measured::NotAvailable(if kernels.iter().all(|k| launches.from_graph(k)) {
            "every kernel ran as a node of a CUDA graph, whose one launch call starts them all".into()
        } else {
            "no kernel has its launch API call in the trace (matched by process and correlation id)".into()
        });
    }
    let count = by_name.values().sum();
    let mut names: Vec<(String, usize)> = by_name.into_iter().map(|(name, n)| (name.to_string(), n)).collect();
    names.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    names.truncate(top);
    Measured::Available(ShorterThanLaunch { with_launch, count, share: share(count as f64, with_launch as f64), names })
}

fn dims(d: Option<[u32; 3]>) -> String {
    d.map_or("-".into(), |[x, y, z]| format!("{x},{y},{z}"))
}

/// The section's blocks, for the terminal and the page (which adds the class chart).
pub fn view(kernels: &Measured<Kernels>) -> Vec<Block> {
    let k = match kernels {
        Measured::Available(k) => k,
        Measured::NotAvailable(why) => return vec![Block::Facts(vec![missing("kernels", why)])],
    };
    // Two tables joined by rank, so that each fits the terminal with the names legible.
    let (mut top, mut timing) = (Vec::new(), Vec::new());
    for (rank, s) in k.top.iter().enumerate() {
        let rank = (rank + 1).to_string();
        top.push(vec![
            rank.clone(),
            s.name.clone(),
            s.class.as_str().into(),
            s.count.to_string(),
            text::duration(s.total_ns as f64),
            text::percent(s.share),
        ]);
        timing.push(vec![
            rank,
            text::duration(s.mean_ns),
            text::duration(s.median_ns),
            text::duration(s.min_ns as f64),
            text::duration(s.max_ns as f64),
            dims(s.grid),
            dims(s.block),
        ]);
    }
    let classes = k
        .classes
        .iter()
        .map(|c| vec![c.class.as_str().into(), c.count.to_string(), text::duration(c.total_ns as f64), text::percent(c.share)]);
    let mut facts = vec![fact("kernels", format!("{} ({} in all)", k.count, text::duration(k.total_ns as f64)))];
    if k.early_starts > 0 {
        facts.push(fact(
            "started early",
            format!(
                "{} of {} kernels began before the kernel ahead of them on their stream ended (programmatic dependent launch); each is timed from that end",
                k.early_starts, k.count
            ),
        ));
    }
    let mut blocks = vec![
        Block::Facts(facts),
        Block::Table { header: vec!["#", "kernel", "class", "count", "total", "share"], left: vec![1, 2], rows: top },
        Block::Table { header: vec!["#", "mean", "median", "min", "max", "grid", "block"], left: vec![], rows: timing },
        Block::Table { header: vec!["class", "ops", "total", "share"], left: vec![0], rows: classes.collect() },
        Block::Facts(vec![measured("shorter than launch", &k.shorter_than_launch, |s| {
            format!("{} of {} launched kernels ({})", s.count, s.with_launch, text::percent(s.share))
        })]),
    ];
    if let Measured::Available(s) = &k.shorter_than_launch {
        if !s.names.is_empty() {
            let rows = s.names.iter().map(|(name, n)| vec![name.clone(), n.to_string()]).collect();
            blocks.push(Block::Table { header: vec!["kernels shorter than their launch", "count"], left: vec![0], rows });
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_test_support::rows::{api, named, op};

    #[test]
    fn rules_classify_in_order_and_ignore_case() {
        let rules = default_rules();
        let cases = [
            ("sm90_xmma_gemm_bf16", KernelClass::Gemm),
            ("void flash_fwd_kernel<Flash_fwd_params>", KernelClass::Attention),
            ("FusedAddRMSNorm", KernelClass::NormElementwise),
            ("fused_moe_kernel", KernelClass::Moe),
            ("ncclDevKernel_AllReduce_Sum", KernelClass::Communication),
            ("void cutlass::device_kernel<flash::FlashAttnFwdSm90<>>", KernelClass::Attention),
            ("topk_gating_softmax", KernelClass::Moe),
            ("memcpy32_post", KernelClass::Memory),
            ("quantize_fp8_block", KernelClass::NormElementwise),
            ("gemv_fp8", KernelClass::Gemm),
            ("argmax_kernel", KernelClass::Other),
        ];
        for (name, class) in cases {
            assert_eq!(classify(&rules, name), class, "{name}");
        }
    }

    #[test]
    fn extra_rules_go_first_and_bad_lines_are_errors() {
        let rules = with_extra_rules(default_rules(), "# mine\nattention = my_kernel, ^argmax\n\nnorm=gemm_epilogue").unwrap();
        assert_eq!(classify(&rules, "My_Kernel_v2"), KernelClass::Attention);
        assert_eq!(classify(&rules, "argmax_kernel"), KernelClass::Attention);
        assert_eq!(classify(&rules, "top_argmax"), KernelClass::Other, "^ anchors at the start");
        assert_eq!(classify(&rules, "gemm_epilogue_relu"), KernelClass::NormElementwise);
        for (extra, bad_line) in [("gemm=a\nattention", 2), ("tensor=x", 1), ("gemm=", 1), ("\n\ngemm= , ", 3)] {
            let err = with_extra_rules(default_rules(), extra).unwrap_err().to_string();
            assert!(err.contains(&format!("line {bad_line} ")) && err.contains("expected CLASS=PATTERN"), "{err}");
        }
    }

    #[test]
    fn top_kernels_and_classes() {
        let mut a = [named("gemm_a", 0, 100, 1), named("gemm_a", 200, 230, 2), named("gemm_a", 300, 320, 3), named("softmax", 400, 450, 4)];
        a[0].grid = Some([8, 1, 1]);
        a[1].grid = Some([4, 1, 1]);
        a[2].grid = Some([4, 1, 1]);
        let mut copy = op(GpuOpKind::Memcpy, 500, 550, 5);
        copy.bytes = Some(10);
        let trace = TraceData { gpu_ops: a.into_iter().chain([copy]).collect(), ..TraceData::default() };
        let k = analyze(&trace, &LaunchIndex::new(&trace), &default_rules(), 15, 0);
        let k = k.get().unwrap();
        assert_eq!((k.count, k.total_ns), (4, 200));
        let gemm = &k.top[0];
        assert_eq!(
            (gemm.name.as_str(), gemm.class, gemm.count, gemm.total_ns, gemm.min_ns, gemm.max_ns),
            ("gemm_a", KernelClass::Gemm, 3, 150, 20, 100)
        );
        assert_eq!((gemm.mean_ns, gemm.median_ns, gemm.share, gemm.grid), (50.0, 30.0, 0.75, Some([4, 1, 1])));
        assert_eq!((k.top[1].name.as_str(), k.top[1].share), ("softmax", 0.25));
        let classes: Vec<(KernelClass, usize, u64, f64)> = k.classes.iter().map(|c| (c.class, c.count, c.total_ns, c.share)).collect();
        assert_eq!(
            classes,
            [(KernelClass::Gemm, 3, 150, 0.6), (KernelClass::NormElementwise, 1, 50, 0.2), (KernelClass::Memory, 1, 50, 0.2)]
        );
        assert!(matches!(&k.shorter_than_launch, Measured::NotAvailable(why) if why.contains("launch API call")));
    }

    #[test]
    fn kernels_shorter_than_their_launch() {
        let trace = TraceData {
            gpu_ops: vec![named("tiny", 100, 102, 1), named("tiny", 200, 203, 2), named("big", 300, 400, 3), named("unmatched", 0, 1, 9)],
            api_calls: vec![api("cuLaunchKernel", 90, 95, 1), api("cuLaunchKernel", 190, 195, 2), api("cuLaunchKernel", 290, 295, 3)],
            ..TraceData::default()
        };
        let k = analyze(&trace, &LaunchIndex::new(&trace), &default_rules(), 15, 0);
        let s = k.get().unwrap().shorter_than_launch.get().unwrap();
        assert_eq!((s.with_launch, s.count, s.names.clone()), (3, 2, vec![("tiny".to_string(), 2)]));
        assert!((s.share - 2.0 / 3.0).abs() < 1e-12);
    }

    /// A replayed graph's 580 kernels all carry the correlation id of its one cuGraphLaunch:
    /// none is "shorter than its launch" for that.
    #[test]
    fn graph_kernels_are_not_compared_with_their_graphs_launch() {
        let node = |name: &str, start, end, id| GpuOpRow { graph_id: Some(1), graph_node_id: Some(id), ..named(name, start, end, 7) };
        let mut trace = TraceData {
            gpu_ops: vec![node("a", 1_000, 1_002, 1), node("b", 1_002, 1_004, 2)],
            api_calls: vec![api("cuGraphLaunch", 0, 500, 7)],
            ..TraceData::default()
        };
        let k = analyze(&trace, &LaunchIndex::new(&trace), &default_rules(), 15, 0);
        let why = k.get().unwrap().shorter_than_launch.reason().unwrap().to_string();
        assert!(why.contains("node of a CUDA graph"), "{why}");
        trace.gpu_ops.push(named("eager", 2_000, 2_001, 8));
        trace.api_calls.push(api("cuLaunchKernel", 1_990, 1_995, 8));
        let k = analyze(&trace, &LaunchIndex::new(&trace), &default_rules(), 15, 0);
        let s = k.get().unwrap().shorter_than_launch.get().unwrap();
        assert_eq!((s.with_launch, s.count), (1, 1));
    }

    /// torch.profiler keeps no graph ids: a replayed graph's kernels are known only by the
    /// `cudaGraphLaunch` call they correlate with, and are left out all the same.
    #[test]
    fn graph_kernels_without_graph_ids_are_known_by_their_launch_call() {
        let trace = TraceData {
            gpu_ops: vec![named("a", 1_000, 1_002, 7), named("b", 1_002, 1_004, 7), named("eager", 2_000, 2_001, 8)],
            api_calls: vec![api("cudaGraphLaunch", 0, 500, 7), api("cudaLaunchKernel", 1_990, 1_995, 8)],
            ..TraceData::default()
        };
        let k = analyze(&trace, &LaunchIndex::new(&trace), &default_rules(), 15, 0);
        let s = k.get().unwrap().shorter_than_launch.get().unwrap();
        assert_eq!((s.with_launch, s.count, s.names.clone()), (1, 1, vec![("eager".to_string(), 1)]));
    }

    #[test]
    fn graph_only_traces_say_how_to_see_kernels() {
        let trace = TraceData { gpu_ops: vec![op(GpuOpKind::Graph, 0, 10, 1)], ..TraceData::default() };
        let k = analyze(&trace, &LaunchIndex::new(&trace), &default_rules(), 15, 0);
        assert!(
            matches!(k, Measured::NotAvailable(why) if why.contains("1 CUDA graph launches") && why.contains("--cuda-graph-trace node"))
        );
    }
}
