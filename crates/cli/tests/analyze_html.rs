//! `lumen analyze --html` checked in a real browser. A trace with GPU operations, iterations and
//! hardware counter samples (so every chart has data), its kernels named like C++ templates with
//! `<`, `>`, `&`, quotes and a `<script>` in them, is written through the trace store and analysed
//! by the `lumen` binary; headless Chromium then loads the page it wrote. The page must load with
//! no console message, hold every section, the findings and the four charts in its DOM, keep the
//! hostile names as text, and render a screenshot that is not blank; a copy of the page with a
//! script error shows the console check catches one. With `--compare`, the page of a slower run
//! must show the verdict and the kernels that changed after the diagnosis. Needs
//! `/usr/bin/chromium` (the apt package `chromium`, installed by `scripts/setup.sh`).

mod common;

use std::fs;

use common::{lumen, Scratch};
use lumen_analyze::html::{section_ids, CHARTS};
use lumen_test_support::chromium::{self, dump_dom, element};
use lumen_test_support::rows::{self, iteration, Origin};
use lumen_trace::model::{AllocationRow, CounterRow, GpuOpKind, GpuOpRow, IterationRow, TraceData};

const ENGINE: Origin = Origin { pid: 5150, tid: 5151, device: 0, stream: 7 };
const ITERATIONS: u64 = 16;
const GEMM: &str = "void cutlass::Kernel<cutlass::gemm::GemmUniversal<bf16, 128>>(Params const&)";
const ATTENTION: &str = "flash_fwd<\"causal\" & 'paged'><script>console.error(\"injected\")</script>";
const NORM: &str = "rms_norm_kernel<__nv_bfloat16>";
const ROPE: &str = "fused_rope_kernel<bf16, 128>";
/// The kernels of one iteration and their lengths in ns.
const KERNELS: [(&str, u64); 3] = [(GEMM, 90_000), (ATTENTION, 60_000), (NORM, 8_000)];
/// [`KERNELS`] with attention 50% slower and one more kernel.
const SLOWER_KERNELS: [(&str, u64); 4] = [(GEMM, 90_000), (ATTENTION, 90_000), (NORM, 8_000), (ROPE, 20_000)];

/// What one written run holds.
struct Workload<'a> {
    file: &'a str,
    iterations: u64,
    /// Host time per iteration relative to the standard run's.
    host_scale: f64,
    kernels: &'a [(&'a str, u64)],
    with_gpu: bool,
}

/// The standard run: [`ITERATIONS`] iterations of [`KERNELS`].
fn write_trace(s: &Scratch, with_gpu: bool) -> String {
    let file = if with_gpu { "gpu.lumen" } else { "host.lumen" };
    write_run(s, &Workload { file, iterations: ITERATIONS, host_scale: 1.0, kernels: &KERNELS, with_gpu })
}

/// Per iteration: schedule, forward and sample phases; a pageable async upload; the kernels
/// launched back to back, 100 µs apart; a stream synchronise; SM and DRAM samples. Iteration 5 is
/// slow on the host. Returns the trace's path.
fn write_run(s: &Scratch, run: &Workload) -> String {
    let with_gpu = run.with_gpu;
    let (mut spans, mut iterations, mut counters, mut allocations) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut api_calls, mut gpu_ops) = (Vec::new(), Vec::new());
    for it in 0..run.iterations {
        let t = 1_000_000 + it * 1_000_000;
        let slow = if it == 5 { 150_000 } else { 0 };
        spans.push(ENGINE.phase("schedule", t, t + 150_000 + slow, it));
        spans.push(ENGINE.phase("forward", t + 150_000 + slow, t + 700_000, it));
        spans.push(ENGINE.phase("sample", t + 700_000, t + 800_000, it));
        let host_ms = (0.8 + if it == 5 { 0.9 } else { it as f64 * 0.01 }) * run.host_scale;
        iterations.push(IterationRow {
            ctx_reqs: u64::from(it == 0),
            gen_reqs: 4,
            ctx_tokens: if it == 0 { 64 } else { 0 },
            gen_tokens: 4,
            kv_used_blocks: 8 + it,
            kv_total_blocks: 64,
            device_ms: with_gpu.then_some(0.55 + it as f64 * 0.005),
            ..iteration(it, t, t + (800_000.0 * run.host_scale) as u64, host_ms)
        });
        allocations.push(AllocationRow { iteration: it, count: 12, bytes: 8192, frees: 12, kv_blocks_allocated: 1, kv_blocks_freed: 0 });
        let correlation = it * 10;
        api_calls.push(ENGINE.api("cudaMemcpyAsync", t + 100_000, t + 110_000, correlation));
        gpu_ops.push(GpuOpRow {
            bytes: Some(1 << 20),
            copy_kind: Some("HtoD".into()),
            pinned: Some(false),
            ..ENGINE.gpu_op(GpuOpKind::Memcpy, "memcpy HtoD", t + 120_000, t + 130_000, correlation)
        });
        for (k, &(name, length)) in run.kernels.iter().enumerate() {
            let k = k as u64;
            api_calls.push(ENGINE.api("cuLaunchKernel", t + 200_000 + k * 10_000, t + 205_000 + k * 10_000, correlation + 1 + k));
            let start = t + 300_000 + k * 100_000;
            gpu_ops.push(GpuOpRow {
                grid: Some([132, 1, 1]),
                block: Some([256, 1, 1]),
                ..ENGINE.gpu_op(GpuOpKind::Kernel, name, start, start + length, correlation + 1 + k)
            });
        }
        api_calls.push(ENGINE.api("cuStreamSynchronize", t + 600_000, t + 650_000, correlation + 9));
        for (offset, sm) in [(300_000, 70.0), (500_000, 30.0)] {
            counters.push(CounterRow { ts_ns: t + offset, name: "sm active %".into(), device: Some(0), value: sm + it as f64 });
            counters.push(CounterRow { ts_ns: t + offset, name: "dram read %".into(), device: Some(0), value: sm / 2.0 });
        }
    }
    let mut trace = TraceData {
        meta: vec![
            ("command".to_string(), "lumen bench throughput --model <tiny> & \"friends\"".to_string()),
            ("max_batch_size".to_string(), "4".to_string()),
            ("max_num_tokens".to_string(), "2048".to_string()),
        ],
        threads: vec![ENGINE.thread("engine")],
        spans,
        iterations,
        allocations,
        ..TraceData::default()
    };
    if with_gpu {
        trace.counters = counters;
        trace.processes = vec![ENGINE.process("lumen <bench>")];
        trace.gpu_ops = gpu_ops;
        trace.api_calls = api_calls;
    }
    let path = s.path(run.file);
    rows::write_trace(&path, &trace);
    path
}

/// `lumen analyze TRACE --html` into the scratch directory; returns the page's path.
fn report(s: &Scratch, trace: &str) -> String {
    let html = s.path("report.html");
    let run = lumen(&["analyze", trace, "--html", &html]).ok();
    assert!(run.stdout.starts_with("== Diagnosis =="), "the text report still prints:\n{}", run.stdout);
    html
}

/// A name as the DOM serialises it in a text node.
fn dom_text(name: &str) -> String {
    name.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The first table row of `dom` with a cell whose whole text is `text`.
fn row<'a>(dom: &'a str, text: &str) -> &'a str {
    let at = dom.find(&format!("<td>{text}</td>")).unwrap_or_else(|| panic!("no cell {text}:\n{dom}"));
    let start = dom[..at].rfind("<tr>").expect("a cell is in a row");
    &dom[start..at + dom[at..].find("</tr>").expect("the row is closed")]
}

#[test]
fn the_page_loads_cleanly_and_holds_every_section_finding_and_chart() {
    let s = Scratch::new("html-dom");
    let page = report(&s, &write_trace(&s, true));
    let html = fs::read_to_string(&page).unwrap();
    for external in ["http:", "https:", "src=", "<link", "@import", "url("] {
        assert!(!html.contains(external), "the page must be self-contained, yet holds {external:?}");
    }
    let browser = dump_dom(&s, "dom", &page);
    assert!(browser.console().is_empty(), "the page logged to the console:\n{}", browser.console().join("\n"));
    let dom = &browser.stdout;
    for id in section_ids(false) {
        assert!(dom.contains(&format!("<section id=\"{id}\">")), "section {id} missing from the DOM");
    }
    let diagnosis = element(dom, "section", "diagnosis");
    assert!(diagnosis.matches("<article class=\"finding\">").count() >= 2, "{diagnosis}");
    // The host works 480 µs after each synchronise returns: host time, not the sync's. Every
    // batch sits at its cap of 4 with the KV cache under a third full.
    for pattern in ["batch size too small", "pageable memcpy", "CPU bottleneck"] {
        assert!(diagnosis.contains(&format!("<h3 class=\"pattern\">{pattern}</h3>")), "{pattern} missing:\n{diagnosis}");
    }
    assert!(diagnosis.contains("16 async copies from or to pageable memory, 16.00 MiB"), "{diagnosis}");
    let first = diagnosis.find("<h3 class=\"pattern\">").expect("a finding");
    assert!(diagnosis[first..].starts_with("<h3 class=\"pattern\">batch size too small</h3>"), "headroom ranks first:\n{diagnosis}");
    assert!(diagnosis.contains("<p class=\"gain\">") || diagnosis.contains("expected gain not estimable"), "{diagnosis}");
    let headroom = element(dom, "section", "headroom");
    assert!(headroom.contains("<th>suggested</th>") && headroom.contains("--max-batch-size 8 --max-num-tokens 2048"), "{headroom}");
    let sol = element(dom, "figure", "chart-speed-of-light");
    assert!(sol.contains(">device 0</text>") && sol.contains("<rect "), "{sol}");
    for id in CHARTS {
        let figure = element(dom, "figure", id);
        assert!(figure.contains("<svg ") && figure.contains("</svg>") && !figure.contains("not available"), "{id}:\n{figure}");
    }
    assert!(element(dom, "figure", "chart-kernel-classes").contains(">attention</text>"));
    assert_eq!(element(dom, "figure", "chart-hardware").matches("<polyline ").count(), 2);

    assert!(!dom.contains("<script"), "a kernel name became a script element");
    let kernels = element(dom, "section", "kernels");
    for name in [GEMM, ATTENTION, NORM] {
        assert!(kernels.contains(&format!("<td>{}</td>", dom_text(name))), "{name} is not a table cell's text:\n{kernels}");
    }
    let title = "<title>lumen analyze: lumen bench throughput --model &lt;tiny&gt; &amp; \"friends\"</title>";
    assert!(dom.contains(title), "{}", &dom[..dom.len().min(600)]);
}

#[test]
fn a_compared_page_shows_the_verdict_and_the_changed_kernels_after_the_diagnosis() {
    let s = Scratch::new("html-compare");
    let workload =
        |file, host_scale, kernels: &'static [(&'static str, u64)]| Workload { file, iterations: 24, host_scale, kernels, with_gpu: true };
    let base = write_run(&s, &workload("base.lumen", 1.0, &KERNELS));
    let new = write_run(&s, &workload("new.lumen", 1.2, &SLOWER_KERNELS));
    let page = s.path("page.html");
    let run = lumen(&["analyze", &new, "--compare", &base, "--html", &page]).ok();
    assert!(run.stdout.contains("== Comparison: verdict =="), "the terminal still prints the comparison:\n{}", run.stdout);
    let browser = dump_dom(&s, "compare", &page);
    assert!(browser.console().is_empty(), "the page logged to the console:\n{}", browser.console().join("\n"));
    let dom = &browser.stdout;
    let at: Vec<usize> = section_ids(true)
        .map(|id| dom.find(&format!("<section id=\"{id}\">")).unwrap_or_else(|| panic!("section {id} missing from the DOM")))
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "the sections are out of order: {at:?}");
    assert!(dom.contains("<a href=\"#comparison\">Comparison</a>"), "the navigation links the comparison");

    let comparison = element(dom, "section", "comparison");
    assert!(comparison.contains("<p class=\"verdict worse\">slower by 20.0% (95% CI "), "{comparison}");
    assert!(comparison.contains("<td>high: at least 20 iterations in each trace</td>"), "{comparison}");
    let median = row(comparison, "iteration host time, median");
    assert!(median.contains("<td class=\"num\">+20.0%</td><td class=\"worse\">worse</td>"), "{median}");
    assert!(comparison.contains("<td>3 in both (2 unchanged); 1 appeared, 0 disappeared, 1 slower, 0 faster</td>"), "{comparison}");
    let slower = row(comparison, &dom_text(ATTENTION));
    assert!(
        slower.contains("<td class=\"worse\">slower</td><td class=\"num\">24→24</td><td class=\"num\">60.0 µs</td><td class=\"num\">90.0 µs</td><td class=\"num\">+50.0%</td><td class=\"num\">+720.0 µs</td>"),
        "{slower}"
    );
    let appeared = row(comparison, &dom_text(ROPE));
    assert!(appeared.contains("<td>appeared</td><td class=\"num\">-→24</td>"), "{appeared}");
    assert!(row(comparison, "forward").contains("<td class=\"num\">0</td>"), "the phases take the same time");
    assert!(!dom.contains("<script"), "a kernel name became a script element");
}

#[test]
fn the_console_check_catches_a_script_error() {
    let s = Scratch::new("html-console");
    let page = report(&s, &write_trace(&s, true));
    let broken = fs::read_to_string(&page).unwrap().replace("</body>", "<script>reportIsNotDefined();</script></body>");
    let broken_page = s.write("broken.html", broken);
    let browser = dump_dom(&s, "broken", &broken_page);
    let console = browser.console();
    assert!(
        console.iter().any(|l| l.contains("Uncaught ReferenceError") && l.contains("reportIsNotDefined")),
        "the script error went unseen:\n{}",
        browser.stderr
    );
}

/// Width, height and byte count of a PNG file, after checking its signature.
fn png_size(path: &str) -> (u32, u32, usize) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("no screenshot at {path}: {e}"));
    assert!(bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR", "{path} is not a PNG");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20), bytes.len())
}

#[test]
fn the_page_renders_a_screenshot_that_is_not_blank() {
    let s = Scratch::new("html-screenshot");
    let page = report(&s, &write_trace(&s, true));
    let blank = s.write("blank.html", "<!DOCTYPE html><html><head><title>blank</title></head><body></body></html>");
    let mut sizes = Vec::new();
    for (case, page) in [("report", &page), ("blank", &blank)] {
        let png = s.path(&format!("{case}.png"));
        let browser = chromium::screenshot(&s, case, page, &png, (1280, 2000));
        assert!(browser.console().is_empty(), "{case} logged to the console:\n{}", browser.console().join("\n"));
        let (width, height, bytes) = png_size(&png);
        assert_eq!((width, height), (1280, 2000), "{case}");
        sizes.push(bytes);
    }
    // A flat page compresses to a few KB at any colour; tables, text and charts do not.
    let (report, blank) = (sizes[0], sizes[1]);
    assert!(
        report > 4 * blank && report > 40_000,
        "the report's screenshot ({report} bytes) is no bigger than a blank page's ({blank} bytes)"
    );
}

#[test]
fn a_trace_without_gpu_rows_says_why_its_charts_are_missing() {
    let s = Scratch::new("html-host-only");
    let page = report(&s, &write_trace(&s, false));
    let browser = dump_dom(&s, "host", &page);
    assert!(browser.console().is_empty(), "the page logged to the console:\n{}", browser.console().join("\n"));
    let dom = &browser.stdout;
    for id in ["chart-gpu-busy", "chart-kernel-classes"] {
        let figure = element(dom, "figure", id);
        assert!(figure.contains("not available: the trace has no GPU operations") && !figure.contains("<svg"), "{id}:\n{figure}");
    }
    assert!(element(dom, "figure", "chart-hardware").contains("not available: the trace has no GPU metric samples"));
    let iterations = element(dom, "figure", "chart-iterations");
    assert_eq!(iterations.matches("<polyline ").count(), 1, "host time only:\n{iterations}");
    assert!(iterations.contains("device time: no iteration row has a device time"), "{iterations}");
}

#[test]
fn an_unwritable_html_path_is_an_error_naming_it() {
    let s = Scratch::new("html-unwritable");
    let trace = write_trace(&s, false);
    let html = s.path("no-such-dir/report.html");
    lumen(&["analyze", &trace, "--html", &html]).fails_with(1, &["cannot write the HTML report", &html]);
}
