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

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{lumen, Scratch};
use lumen_analyze::html::{section_ids, CHARTS};
use lumen_trace::model::{AllocationRow, ApiCallRow, CounterRow, GpuOpKind, GpuOpRow, IterationRow, ProcessRow, SpanRow};
use lumen_trace::store::{Batch, GpuBatch, TraceWriter};

const CHROMIUM: &str = "/usr/bin/chromium";
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);
/// One browser at a time: the tests share a small machine.
static BROWSER: Mutex<()> = Mutex::new(());

const PID: u32 = 5150;
const TID: u64 = 5151;
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
    let span = |start_ns: u64, end_ns: u64, name: &str, iteration: u64| SpanRow {
        start_ns,
        end_ns,
        tid: TID,
        name: name.into(),
        category: "phase".into(),
        depth: 1,
        iteration: Some(iteration),
        args: None,
    };
    let api = |start_ns: u64, end_ns: u64, name: &str, correlation: u64| ApiCallRow {
        start_ns,
        end_ns,
        pid: PID,
        tid: TID,
        name: name.into(),
        correlation: Some(correlation),
        result: Some(0),
    };
    let op = |kind: GpuOpKind, start_ns: u64, end_ns: u64, name: &str, correlation: u64| GpuOpRow {
        kind,
        start_ns,
        end_ns,
        pid: PID,
        device: 0,
        stream: Some(7),
        correlation: Some(correlation),
        name: name.into(),
        ..GpuOpRow::default()
    };
    for it in 0..run.iterations {
        let t = 1_000_000 + it * 1_000_000;
        let slow = if it == 5 { 150_000 } else { 0 };
        spans.push(span(t, t + 150_000 + slow, "schedule", it));
        spans.push(span(t + 150_000 + slow, t + 700_000, "forward", it));
        spans.push(span(t + 700_000, t + 800_000, "sample", it));
        iterations.push(IterationRow {
            iter: it,
            start_ns: t,
            end_ns: t + (800_000.0 * run.host_scale) as u64,
            ctx_reqs: u64::from(it == 0),
            gen_reqs: 4,
            ctx_tokens: if it == 0 { 64 } else { 0 },
            gen_tokens: 4,
            kv_used_blocks: 8 + it,
            kv_total_blocks: 64,
            host_ms: (0.8 + if it == 5 { 0.9 } else { it as f64 * 0.01 }) * run.host_scale,
            device_ms: with_gpu.then_some(0.55 + it as f64 * 0.005),
            queued_reqs: None,
            weight_bytes: None,
            kv_bytes_read: None,
            flops: None,
        });
        allocations.push(AllocationRow { iteration: it, count: 12, bytes: 8192, frees: 12, kv_blocks_allocated: 1, kv_blocks_freed: 0 });
        let correlation = it * 10;
        api_calls.push(api(t + 100_000, t + 110_000, "cudaMemcpyAsync", correlation));
        gpu_ops.push(GpuOpRow {
            bytes: Some(1 << 20),
            copy_kind: Some("HtoD".into()),
            pinned: Some(false),
            ..op(GpuOpKind::Memcpy, t + 120_000, t + 130_000, "memcpy HtoD", correlation)
        });
        for (k, &(name, length)) in run.kernels.iter().enumerate() {
            let k = k as u64;
            api_calls.push(api(t + 200_000 + k * 10_000, t + 205_000 + k * 10_000, "cuLaunchKernel", correlation + 1 + k));
            let start = t + 300_000 + k * 100_000;
            gpu_ops.push(GpuOpRow {
                grid: Some([132, 1, 1]),
                block: Some([256, 1, 1]),
                ..op(GpuOpKind::Kernel, start, start + length, name, correlation + 1 + k)
            });
        }
        api_calls.push(api(t + 600_000, t + 650_000, "cuStreamSynchronize", correlation + 9));
        for (offset, sm) in [(300_000, 70.0), (500_000, 30.0)] {
            counters.push(CounterRow { ts_ns: t + offset, name: "sm active %".into(), device: Some(0), value: sm + it as f64 });
            counters.push(CounterRow { ts_ns: t + offset, name: "dram read %".into(), device: Some(0), value: sm / 2.0 });
        }
    }
    let path = s.path(run.file);
    let meta = [
        ("command".to_string(), "lumen bench throughput --model <tiny> & \"friends\"".to_string()),
        ("max_batch_size".to_string(), "4".to_string()),
        ("max_num_tokens".to_string(), "2048".to_string()),
    ];
    let mut w = TraceWriter::create(Path::new(&path), &meta).unwrap();
    let threads = [(TID, "engine".to_string())];
    let batch = Batch { threads: &threads, spans: &spans, iterations: &iterations, allocations: &allocations, ..Batch::default() };
    if with_gpu {
        w.append(&Batch { counters: &counters, ..batch }).unwrap();
        let processes = [ProcessRow { pid: PID, name: "lumen <bench>".into() }];
        w.append_gpu(&GpuBatch { processes: &processes, gpu_ops: &gpu_ops, api_calls: &api_calls, ..GpuBatch::default() }).unwrap();
    } else {
        w.append(&batch).unwrap();
    }
    w.finish().unwrap();
    path
}

/// `lumen analyze TRACE --html` into the scratch directory; returns the page's path.
fn report(s: &Scratch, trace: &str) -> String {
    let html = s.path("report.html");
    let run = lumen(&["analyze", trace, "--html", &html]).ok();
    assert!(run.stdout.starts_with("== Diagnosis =="), "the text report still prints:\n{}", run.stdout);
    html
}

fn file_url(path: &str) -> String {
    let mut url = String::from("file://");
    for byte in path.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'.' | b'-' | b'_' => url.push(byte as char),
            _ => url.push_str(&format!("%{byte:02X}")),
        }
    }
    url
}

/// What one headless Chromium run printed.
struct Browser {
    stdout: String,
    stderr: String,
}

impl Browser {
    /// The log lines reporting the page's console output and uncaught errors.
    fn console(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught")).collect()
    }
}

/// Runs headless Chromium on `page` with `args`, its profile and output in the scratch directory.
fn chromium(s: &Scratch, case: &str, args: &[String], page: &str) -> Browser {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/setup.sh, which installs the apt package chromium that this test drives"
    );
    let _browser = BROWSER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (stdout_path, stderr_path) = (s.path(&format!("{case}.stdout")), s.path(&format!("{case}.stderr")));
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", s.path(&format!("profile-{case}"))))
        .args(args)
        .arg(file_url(page))
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("create the stdout file"))
        .stderr(File::create(&stderr_path).expect("create the stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {CHROMIUM}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > BROWSER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium ran past {BROWSER_TIMEOUT:?} on case {case}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let browser = Browser {
        stdout: fs::read_to_string(&stdout_path).expect("read chromium's stdout"),
        stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
    };
    assert!(status.success(), "chromium failed on case {case} ({status}):\n{}", browser.stderr);
    browser
}

fn dump_dom(s: &Scratch, case: &str, page: &str) -> Browser {
    chromium(s, case, &["--dump-dom".into()], page)
}

/// The element of the dumped DOM with `id`, from its opening tag to the first `</tag>` after it.
fn element<'a>(dom: &'a str, tag: &str, id: &str) -> &'a str {
    let at = dom.find(&format!(" id=\"{id}\"")).unwrap_or_else(|| panic!("no element with id {id} in the DOM:\n{dom}"));
    let start = dom[..at].rfind('<').expect("an id is inside a tag");
    assert!(dom[start + 1..].starts_with(tag), "{id} is not a <{tag}>: {}", &dom[start..at + 40]);
    let end = dom[start..].find(&format!("</{tag}>")).unwrap_or_else(|| panic!("<{tag} id={id}> is never closed")) + start;
    &dom[start..end]
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
        let browser =
            chromium(&s, case, &[format!("--screenshot={png}"), "--window-size=1280,2000".into(), "--hide-scrollbars".into()], page);
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
