//! The HTML report: [`render_html`] turns an [`Analysis`] into one self-contained page (inline CSS
//! and SVG, no script, nothing fetched) holding what the text report holds, diagnosis first, with
//! charts of the GPU busy series, the kernel-class shares, per-iteration host and device time and
//! the sampled hardware counters. Given a [`Comparison`], the page holds it right after the
//! diagnosis, as the terminal prints it after the report. Every string taken from a trace is
//! escaped.

use std::fmt::Write;

use crate::compare::{self, Assessment, Comparison, FigureDelta, KernelChangeKind, KernelChanges, Outcome, PhaseShifts, Unit, Verdict};
use crate::diagnose::Diagnosis;
use crate::gpu::DeviceUtilisation;
use crate::hardware::Hardware;
use crate::iterations::Iterations;
use crate::kernels::Kernels;
use crate::measured::Measured;
use crate::sol::SpeedOfLight;
use crate::text;
use crate::view::Block;
use crate::Analysis;

/// A section's body from the whole analysis.
type Body = fn(&Analysis, &mut String);

/// The page's sections in order: element id, heading, body.
const SECTIONS: [(&str, &str, Body); 16] = [
    ("diagnosis", "Diagnosis", |a, out| diagnosis(&a.diagnosis, out)),
    ("overview", "Overview", |a, out| blocks(out, crate::overview::view(&a.overview))),
    ("headroom", "Headroom", |a, out| blocks(out, crate::headroom::view(&a.headroom))),
    ("speed-of-light", "Speed of light", |a, out| speed_of_light(&a.speed_of_light, out)),
    ("steps", "Steps and steady state", |a, out| blocks(out, crate::steps::view(&a.steps))),
    ("gpu", "GPU utilisation", |a, out| gpu(&a.gpu, out)),
    ("gaps", "GPU idle gaps", |a, out| blocks(out, crate::gpu::view_gaps(&a.gaps))),
    ("kernels", "Kernels", |a, out| kernels(&a.kernels, out)),
    ("launch", "Launch overhead", |a, out| blocks(out, crate::launch::view(&a.launch))),
    ("iterations", "Iterations", |a, out| iterations(&a.iterations, out)),
    ("phases", "CPU phases", |a, out| blocks(out, crate::iterations::view_phases(&a.phases))),
    ("ranges", "CPU ranges on the GPU", |a, out| blocks(out, crate::ranges::view(&a.ranges))),
    ("hardware", "Hardware counters", |a, out| hardware(&a.hardware, out)),
    ("memory", "Memory", |a, out| blocks(out, crate::memory::view(&a.memory))),
    ("moe", "MoE expert load", |a, out| blocks(out, crate::moe::view(&a.moe))),
    ("collectives", "Collectives", |a, out| blocks(out, crate::collectives::view(&a.collectives))),
];

/// The section of a comparison: element id and heading.
const COMPARISON: (&str, &str) = ("comparison", "Comparison");
/// How many of [`SECTIONS`] come before the comparison: the diagnosis.
const BEFORE_COMPARISON: usize = 1;

/// The element ids and headings of the page's sections in page order, the comparison's included
/// when the page has one.
fn headings(comparison: bool) -> impl Iterator<Item = (&'static str, &'static str)> {
    let (before, after) = SECTIONS.split_at(BEFORE_COMPARISON);
    let heading = |s: &(&'static str, &'static str, Body)| (s.0, s.1);
    before.iter().map(heading).chain(comparison.then_some(COMPARISON)).chain(after.iter().map(heading))
}

/// The element ids of the page's sections, in page order: with `comparison`, those of a page
/// given a [`Comparison`].
pub fn section_ids(comparison: bool) -> impl Iterator<Item = &'static str> {
    headings(comparison).map(|h| h.0)
}

/// The charts' element ids: GPU busy share over time, kernel-class time shares, per-iteration host
/// and device time, hardware counters over time.
/// The speed-of-light chart: DRAM and tensor use against their peaks, per device, kernel class
/// and the engine's iterations.
pub const CHARTS: [&str; 5] = ["chart-gpu-busy", "chart-kernel-classes", "chart-iterations", "chart-hardware", "chart-speed-of-light"];

/// Names longer than this are cut in tables; the full name is the cell's tooltip.
const NAME_CHARS: usize = 120;

const STYLE: &str = "\
body{margin:0;background:#f4f5f7;color:#1d2330;font:14px/1.45 system-ui,'Segoe UI',Helvetica,Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:12px 24px 40px}
h1{font-size:22px;margin:8px 0 2px}
.subtitle{color:#555;margin:0 0 8px}
nav{margin:4px 0 12px}
nav a{margin-right:14px;color:#2457a6;text-decoration:none}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px 16px 12px;margin:14px 0;overflow-x:auto}
h2{font-size:17px;margin:0 0 8px}
h3{font-size:14px;margin:12px 0 4px}
table{border-collapse:collapse;margin:4px 0 10px}
th,td{padding:2px 10px;border-bottom:1px solid #eceff3;text-align:left;vertical-align:top}
td:first-child:not(.num){overflow-wrap:anywhere;min-width:14em}
thead th{border-bottom:1px solid #b9c0c9;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.facts th{font-weight:normal;color:#555;white-space:nowrap;padding-left:0}
.not-available{color:#8a5a00}
.better{color:#1e7b34;font-weight:600}
.worse{color:#b42318;font-weight:600}
p.verdict{font-size:16px;margin:4px 0 6px}
.finding{border-left:4px solid #c9302c;background:#fcf3f2;padding:8px 12px;margin:10px 0}
.finding h3{margin:0 0 4px}
.finding ul,.finding ol{margin:4px 0;padding-left:22px}
.action{font-weight:600;margin:6px 0 0}
figure.chart{margin:14px 0 6px}
figcaption{font-weight:600;margin-bottom:4px}
figure svg{display:block;width:100%;height:auto;background:#fff}
svg text{font-size:11px;fill:#4a5260}
svg .axis{stroke:#9aa3ae}
svg .grid{stroke:#e6e9ee}
.legend{list-style:none;margin:4px 0;padding:0;display:flex;flex-wrap:wrap;gap:2px 18px}
.swatch{display:inline-block;width:12px;height:12px;margin-right:6px;vertical-align:-1px}
";

/// Line and bar colours, taken in turn.
const PALETTE: [&str; 8] = ["#2f6db5", "#e07b18", "#2e9e4f", "#c9302c", "#7d55b8", "#8c564b", "#d45fb0", "#6b7280"];

/// The whole analysis as one self-contained HTML page; with `comparison`, what changed from a
/// base trace to the analysed one follows the diagnosis.
pub fn render_html(a: &Analysis, comparison: Option<&Comparison>) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let title = match (&a.overview.command, &a.overview.model) {
        (Some(command), _) => format!("lumen analyze: {command}"),
        (None, Some(model)) => format!("lumen analyze: {model}"),
        (None, None) => "lumen analyze".to_string(),
    };
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>\n{STYLE}</style>\n</head>\n\
         <body>\n<main>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    if let Measured::Available(span) = &a.overview.span {
        let _ = writeln!(out, "<p class=\"subtitle\">a trace of {}</p>", escape(&text::duration(span.duration_ns as f64)));
    }
    out.push_str("<nav>");
    for (id, heading) in headings(comparison.is_some()) {
        let _ = write!(out, "<a href=\"#{id}\">{heading}</a>");
    }
    out.push_str("</nav>\n");
    for (i, (id, heading, body)) in SECTIONS.into_iter().enumerate() {
        if let (BEFORE_COMPARISON, Some(c)) = (i, comparison) {
            section(&mut out, COMPARISON.0, COMPARISON.1, |out| comparison_section(c, out));
        }
        section(&mut out, id, heading, |out| body(a, out));
    }
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

fn section(out: &mut String, id: &str, heading: &str, body: impl FnOnce(&mut String)) {
    let _ = writeln!(out, "<section id=\"{id}\">\n<h2>{heading}</h2>");
    body(out);
    out.push_str("</section>\n");
}

/// `s` made safe for HTML text and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn not_available(out: &mut String, why: &str) {
    let _ = writeln!(out, "<p class=\"not-available\">not available: {}</p>", escape(why));
}

/// Labelled values, the page's form of the text report's labelled lines.
fn facts(out: &mut String, rows: Vec<(String, Measured<String>)>) {
    if rows.is_empty() {
        return;
    }
    out.push_str("<table class=\"facts\"><tbody>\n");
    for (label, value) in rows {
        let _ = match value {
            Measured::Available(v) => writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", escape(&label), escape(&v)),
            Measured::NotAvailable(why) => {
                writeln!(out, "<tr><th>{}</th><td class=\"not-available\">not available: {}</td></tr>", escape(&label), escape(&why))
            }
        };
    }
    out.push_str("</tbody></table>\n");
}

/// A table whose columns are right-aligned numbers except the ones named in `left`; a long cell in
/// a left column is cut, its full text in the tooltip.
fn table(out: &mut String, header: &[&str], left: &[usize], rows: impl IntoIterator<Item = Vec<String>>) {
    marked_table(out, header, left, rows.into_iter().map(|row| (row, None)));
}

/// [`table`] whose rows may each mark one cell, given by its column, with a CSS class.
fn marked_table(
    out: &mut String,
    header: &[&str],
    left: &[usize],
    rows: impl IntoIterator<Item = (Vec<String>, Option<(usize, &'static str)>)>,
) {
    let class = |i: usize, mark: Option<&str>| {
        let classes: Vec<&str> = (!left.contains(&i)).then_some("num").into_iter().chain(mark).collect();
        if classes.is_empty() {
            String::new()
        } else {
            format!(" class=\"{}\"", classes.join(" "))
        }
    };
    out.push_str("<table><thead><tr>");
    for (i, h) in header.iter().enumerate() {
        let _ = write!(out, "<th{}>{}</th>", class(i, None), escape(h));
    }
    out.push_str("</tr></thead><tbody>\n");
    for (row, mark) in rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let class = class(i, mark.filter(|m| m.0 == i).map(|m| m.1));
            if left.contains(&i) && cell.chars().count() > NAME_CHARS {
                let _ = write!(out, "<td{class} title=\"{}\">{}</td>", escape(cell), escape(&text::truncate(cell, NAME_CHARS)));
            } else {
                let _ = write!(out, "<td{class}>{}</td>", escape(cell));
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

fn h3(out: &mut String, heading: &str) {
    let _ = writeln!(out, "<h3>{}</h3>", escape(heading));
}

fn list(out: &mut String, tag: &str, class: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = write!(out, "<{tag} class=\"{class}\">");
    for item in items {
        let _ = write!(out, "<li>{}</li>", escape(item));
    }
    let _ = writeln!(out, "</{tag}>");
}

fn diagnosis(d: &Diagnosis, out: &mut String) {
    if d.findings.is_empty() {
        out.push_str("<p>no pattern found</p>\n");
    }
    for f in &d.findings {
        let _ = writeln!(out, "<article class=\"finding\">\n<h3 class=\"pattern\">{}</h3>", escape(f.pattern));
        if let Some(gain) = f.expected_gain.filter(|&g| g > 1.0) {
            let _ = writeln!(out, "<p class=\"gain\">expected gain {gain:.2}×</p>");
        } else if f.explained_ns > 0 {
            let _ = writeln!(out, "<p class=\"explains\">explains {}</p>", escape(&text::duration(f.explained_ns as f64)));
        }
        list(out, "ul", "evidence", &f.evidence);
        if let Some((start, end)) = f.range_ns {
            let during = format!("during +{} .. +{}", text::duration(start as f64), text::duration(end as f64));
            let _ = writeln!(out, "<p class=\"range\">{}</p>", escape(&during));
        }
        if !f.offenders.is_empty() {
            out.push_str("<p>top offenders:</p>\n");
            list(out, "ol", "offenders", &f.offenders);
        }
        let _ = writeln!(out, "<p class=\"action\">action: {}</p>\n</article>", escape(&f.action));
    }
    if !d.not_found.is_empty() {
        let _ = writeln!(out, "<p class=\"not-found\">checked, not found: {}</p>", escape(&d.not_found.join(", ")));
    }
    facts(out, d.not_available.iter().map(|u| (u.pattern.to_string(), Measured::NotAvailable(u.reason.clone()))).collect());
}

/// A section's blocks (crate::view) as facts tables and tables.
fn blocks(out: &mut String, blocks: Vec<Block>) {
    for block in blocks {
        match block {
            Block::Facts(rows) => facts(out, rows),
            Block::Table { header, left, rows } => table(out, &header, &left, rows),
            Block::Series { .. } => {}
        }
    }
}

fn speed_of_light(sol: &SpeedOfLight, out: &mut String) {
    blocks(out, crate::sol::view(sol));
    let caption = format!(
        "DRAM and tensor use, % of peak (dashed: SOL_BOUND_PERCENT, {}%; the unit nearest its ceiling above it bounds the work)",
        crate::sol::SOL_BOUND_PERCENT
    );
    figure(out, "chart-speed-of-light", &caption, sol_chart(sol));
}

/// One pair of bars (DRAM, tensor) per device, kernel class and the engine's iterations, against
/// a line at the bound threshold.
fn sol_chart(sol: &SpeedOfLight) -> Result<Chart, String> {
    const BAR: f64 = 12.0;
    const ROW: f64 = 2.0 * BAR + 14.0;
    let mut rows: Vec<(String, f64, Option<f64>)> = Vec::new();
    if let Measured::Available(devices) = &sol.devices {
        rows.extend(devices.iter().chain(&sol.classes).chain(&sol.phases).map(|u| (u.name.clone(), u.dram_percent, u.tensor_percent)));
    }
    if let Measured::Available(ops) = &sol.ops {
        rows.extend(ops.iter().filter_map(|o| Some((format!("{} (operators)", o.name), o.dram_percent?, o.tensor_percent))));
    }
    if let Measured::Available(w) = &sol.work {
        if let Some(dram) = w.dram_percent {
            rows.push(("engine iterations".into(), dram, w.tensor_percent));
        }
    }
    if rows.is_empty() {
        return Err("no counter samples, and no operator or engine bytes and FLOPs against known peaks".into());
    }
    let label_width = 200.0;
    let (x0, x1) = (LEFT + label_width, WIDTH - RIGHT);
    let x = |percent: f64| x0 + (x1 - x0) * percent.clamp(0.0, 100.0) / 100.0;
    let height = 30.0 + rows.len() as f64 * ROW;
    let mut svg = String::new();
    svg_open(&mut svg, height, "DRAM and tensor use as % of peak");
    for tick in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let _ = write!(svg, "<line class=\"grid\" x1=\"{0:.1}\" y1=\"16\" x2=\"{0:.1}\" y2=\"{1:.1}\"/>", x(tick), height - 4.0);
        label(&mut svg, x(tick), 12.0, "middle", &format!("{tick:.0}%"));
    }
    let bound = x(crate::sol::SOL_BOUND_PERCENT);
    let _ = write!(
        svg,
        "<line class=\"axis\" stroke-dasharray=\"4 3\" x1=\"{bound:.1}\" y1=\"16\" x2=\"{bound:.1}\" y2=\"{:.1}\"/>",
        height - 4.0
    );
    for (i, (name, dram, tensor)) in rows.iter().enumerate() {
        let top = 22.0 + i as f64 * ROW;
        label(&mut svg, x0 - 8.0, top + BAR + 4.0, "end", &text::truncate(name, 30));
        for (j, value) in [Some(*dram), *tensor].into_iter().enumerate() {
            let Some(value) = value else { continue };
            let y = top + j as f64 * BAR;
            let _ = write!(
                svg,
                "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {value:.1}%</title></rect>",
                x(value) - x0,
                BAR - 2.0,
                colour(j),
                escape(&format!("{name} {}", if j == 0 { "DRAM" } else { "tensor" }))
            );
        }
    }
    svg.push_str("</svg>");
    Ok(Chart { svg, legend: vec!["DRAM (read + write)".into(), "tensor pipe".into()], note: None })
}

fn comparison_section(c: &Comparison, out: &mut String) {
    h3(out, "Verdict");
    verdict(&c.verdict, out);
    h3(out, "Headline figures");
    figures(&c.figures, out);
    h3(out, "Kernels");
    kernel_changes(&c.kernels, out);
    h3(out, "CPU phases");
    phase_shifts(&c.phases, out);
}

/// The CSS class of a change for the better or the worse; none for the others.
fn direction(assessment: Assessment) -> Option<&'static str> {
    match assessment {
        Assessment::Better | Assessment::Worse => Some(assessment.as_str()),
        Assessment::Same | Assessment::Changed => None,
    }
}

fn verdict(verdict: &Measured<Verdict>, out: &mut String) {
    let v = match verdict {
        Measured::Available(v) => v,
        Measured::NotAvailable(why) => return facts(out, vec![("verdict".into(), Measured::NotAvailable(why.clone()))]),
    };
    let class = match v.outcome {
        Outcome::Slower => "verdict worse",
        Outcome::Faster => "verdict better",
        Outcome::NoSignificantDifference => "verdict",
    };
    let _ = writeln!(out, "<p class=\"{class}\">{}</p>", escape(&v.summary));
    facts(out, compare::verdict_lines(v).into_iter().map(|(label, value)| (label.to_string(), Measured::Available(value))).collect());
}

fn figures(figures: &[FigureDelta], out: &mut String) {
    let rows = figures.iter().filter_map(|f| {
        let c = f.change.get()?;
        let cells = vec![
            f.name.clone(),
            compare::value(f.unit, c.base),
            compare::value(f.unit, c.new),
            compare::signed(f.unit, c.delta),
            compare::relative(c.relative),
            c.assessment.as_str().into(),
        ];
        Some((cells, direction(c.assessment).map(|class| (5, class))))
    });
    marked_table(out, &["figure", "base", "new", "delta", "change", "assessment"], &[0, 5], rows);
    facts(out, compare::missing_figures(figures).into_iter().map(|(names, why)| (names, Measured::NotAvailable(why.into()))).collect());
}

fn kernel_changes(kernels: &Measured<KernelChanges>, out: &mut String) {
    let k = match kernels {
        Measured::Available(k) => k,
        Measured::NotAvailable(why) => return not_available(out, why),
    };
    facts(out, compare::kernel_lines(k).into_iter().map(|(label, value)| (label.to_string(), Measured::Available(value))).collect());
    if k.changes.is_empty() {
        return;
    }
    let rows = k.changes.iter().take(compare::LISTED_KERNELS).map(|c| {
        let cells = vec![
            c.name.clone(),
            c.change.as_str().into(),
            compare::kernel_count(c),
            compare::kernel_mean(&c.base),
            compare::kernel_mean(&c.new),
            compare::relative(c.mean_relative),
            compare::signed(Unit::Ns, c.impact_ns),
        ];
        let mark = match c.change {
            KernelChangeKind::Slower => Some((1, "worse")),
            KernelChangeKind::Faster => Some((1, "better")),
            KernelChangeKind::Appeared | KernelChangeKind::Disappeared => None,
        };
        (cells, mark)
    });
    marked_table(out, &["kernel", "change", "count", "base mean", "new mean", "mean change", "impact"], &[0, 1], rows);
    if k.changes.len() > compare::LISTED_KERNELS {
        let more = format!("and {} more (the JSON lists them all)", k.changes.len() - compare::LISTED_KERNELS);
        let _ = writeln!(out, "<p>{}</p>", escape(&more));
    }
}

fn phase_shifts(phases: &Measured<PhaseShifts>, out: &mut String) {
    let p = match phases {
        Measured::Available(p) => p,
        Measured::NotAvailable(why) => return not_available(out, why),
    };
    let over = format!("{} base and {} new iterations", p.base_iterations, p.new_iterations);
    facts(out, vec![("per iteration, over".into(), Measured::Available(over))]);
    let rows = p.phases.iter().map(|s| {
        vec![
            s.name.clone(),
            s.base_ns.map_or("-".into(), text::duration),
            s.new_ns.map_or("-".into(), text::duration),
            compare::signed(Unit::Ns, s.delta_ns),
            compare::relative(s.relative),
        ]
    });
    table(out, &["phase", "base", "new", "delta", "change"], &[0], rows);
}

fn gpu(devices: &Measured<Vec<DeviceUtilisation>>, out: &mut String) {
    blocks(out, crate::gpu::view_utilisation(devices));
    let chart = match devices {
        Measured::Available(devices) => busy_chart(devices),
        Measured::NotAvailable(why) => Err(why.clone()),
    };
    figure(out, CHARTS[0], "GPU busy share over time", chart);
}

fn kernels(kernels: &Measured<Kernels>, out: &mut String) {
    blocks(out, crate::kernels::view(kernels));
    let chart = match kernels {
        Measured::Available(k) => Ok(class_chart(k)),
        Measured::NotAvailable(why) => Err(why.clone()),
    };
    figure(out, CHARTS[1], "Time share per kernel class", chart);
}

fn iterations(iterations: &Measured<Iterations>, out: &mut String) {
    blocks(out, crate::iterations::view(iterations));
    let chart = match iterations {
        Measured::Available(it) => Ok(iteration_chart(it)),
        Measured::NotAvailable(why) => Err(why.clone()),
    };
    figure(out, CHARTS[2], "Host and device time per iteration", chart);
}

fn hardware(hardware: &Measured<Hardware>, out: &mut String) {
    blocks(out, crate::hardware::view(hardware));
    let chart = match hardware {
        Measured::Available(h) => hardware_chart(h),
        Measured::NotAvailable(why) => Err(why.clone()),
    };
    figure(out, CHARTS[3], "Hardware counters over time", chart);
}

/// An SVG chart with the legend under it, and a note on what it leaves out.
struct Chart {
    svg: String,
    legend: Vec<String>,
    note: Option<String>,
}

/// A chart in its figure, or why it cannot be drawn.
fn figure(out: &mut String, id: &str, caption: &str, chart: Result<Chart, String>) {
    let _ = writeln!(out, "<figure class=\"chart\" id=\"{id}\">\n<figcaption>{}</figcaption>", escape(caption));
    match chart {
        Ok(chart) => {
            out.push_str(&chart.svg);
            if !chart.legend.is_empty() {
                out.push_str("\n<ul class=\"legend\">");
                for (i, name) in chart.legend.iter().enumerate() {
                    let _ = write!(out, "<li><span class=\"swatch\" style=\"background:{}\"></span>{}</li>", colour(i), escape(name));
                }
                out.push_str("</ul>");
            }
            out.push('\n');
            if let Some(note) = chart.note {
                not_available(out, &note);
            }
        }
        Err(why) => not_available(out, &why),
    }
    out.push_str("</figure>\n");
}

/// The drawing's width in SVG units, and the plot area's left and right margins.
const WIDTH: f64 = 960.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 24.0;

fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

fn svg_open(svg: &mut String, height: f64, label: &str) {
    let _ = write!(svg, "<svg viewBox=\"0 0 {WIDTH} {height:.0}\" role=\"img\" aria-label=\"{}\">", escape(label));
}

fn label(svg: &mut String, x: f64, y: f64, anchor: &str, content: &str) {
    let _ = write!(svg, "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\">{}</text>", escape(content));
}

fn hline(svg: &mut String, class: &str, x0: f64, x1: f64, y: f64) {
    let _ = write!(svg, "<line class=\"{class}\" x1=\"{x0:.1}\" y1=\"{y:.1}\" x2=\"{x1:.1}\" y2=\"{y:.1}\"/>");
}

/// A round top for an axis from 0 to `max`, and the tick step: four or five ticks.
fn axis(max: f64) -> (f64, f64) {
    if !max.is_finite() || max <= 0.0 {
        return (1.0, 0.25);
    }
    let raw = max / 4.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|&s| s >= raw).unwrap_or(10.0 * magnitude);
    ((max / step).ceil() * step, step)
}

/// Round ticks inside `[lo, hi]`, at least `min_step` apart.
fn ticks(lo: f64, hi: f64, min_step: f64) -> Vec<f64> {
    let step = axis(hi - lo).1.max(min_step);
    let first = (lo / step).ceil() * step;
    (0..).map(|i| first + i as f64 * step).take_while(|&t| t <= hi + step * 1e-9).collect()
}

/// `v` with at most three decimals, without trailing zeros.
fn number(v: f64) -> String {
    let fixed = format!("{v:.3}");
    fixed.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The bucket at `i` of `n` along `[0, span]`, as a time label.
fn at(span: f64, i: f64, n: f64) -> String {
    format!("+{}", text::duration(span * i / n))
}

/// Per device, a row of bars: the busy share of each bucket of its window.
fn busy_chart(devices: &[DeviceUtilisation]) -> Result<Chart, String> {
    const ROW: f64 = 84.0;
    const ROW_GAP: f64 = 40.0;
    if devices.iter().all(|d| d.series.is_empty()) {
        return Err("the GPU operations take no time: every busy window is 0 ns long".into());
    }
    let plot = WIDTH - LEFT - RIGHT;
    let mut svg = String::new();
    svg_open(&mut svg, devices.len() as f64 * (ROW + ROW_GAP) + 8.0, "GPU busy share over time, per device");
    for (row, d) in devices.iter().enumerate() {
        let top = 24.0 + row as f64 * (ROW + ROW_GAP);
        let bottom = top + ROW;
        label(&mut svg, LEFT, top - 8.0, "start", &format!("device {}: busy {}", d.device, text::percent(d.busy_share)));
        for (share, y) in [(0.0, bottom), (0.5, top + ROW / 2.0), (1.0, top)] {
            hline(&mut svg, if share == 0.0 { "axis" } else { "grid" }, LEFT, WIDTH - RIGHT, y);
            label(&mut svg, LEFT - 6.0, y + 4.0, "end", &text::percent(share));
        }
        let window = (d.end_ns - d.start_ns) as f64;
        let n = d.series.len() as f64;
        for (b, &busy) in d.series.iter().enumerate() {
            let height = busy.clamp(0.0, 1.0) * ROW;
            if height <= 0.0 {
                continue;
            }
            let x = LEFT + plot * b as f64 / n;
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.2}\" height=\"{height:.1}\" fill=\"{}\"><title>{}: {} busy</title></rect>",
                bottom - height,
                plot / n,
                colour(0),
                escape(&at(window, b as f64, n)),
                escape(&text::percent(busy))
            );
        }
        for (k, anchor) in ["start", "middle", "middle", "middle", "end"].into_iter().enumerate() {
            label(&mut svg, LEFT + plot * k as f64 / 4.0, bottom + 14.0, anchor, &at(window, k as f64, 4.0));
        }
    }
    svg.push_str("</svg>");
    Ok(Chart { svg, legend: Vec::new(), note: None })
}

/// One bar per kernel class: its share of kernel, copy and memset time.
fn class_chart(k: &Kernels) -> Chart {
    const ROW: f64 = 24.0;
    const NAMES: f64 = 130.0;
    const VALUES: f64 = 220.0;
    let plot = WIDTH - NAMES - VALUES;
    let mut svg = String::new();
    svg_open(&mut svg, k.classes.len() as f64 * ROW + 12.0, "time share per kernel class");
    for (i, c) in k.classes.iter().enumerate() {
        let y = 6.0 + i as f64 * ROW;
        label(&mut svg, NAMES - 8.0, y + 16.0, "end", c.class.as_str());
        let width = c.share.clamp(0.0, 1.0) * plot;
        let _ = write!(
            svg,
            "<rect x=\"{NAMES}\" y=\"{:.1}\" width=\"{width:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}</title></rect>",
            y + 3.0,
            ROW - 6.0,
            colour(i),
            escape(c.class.as_str())
        );
        let value = format!("{} ({}, {} ops)", text::percent(c.share), text::duration(c.total_ns as f64), c.count);
        label(&mut svg, NAMES + width + 6.0, y + 16.0, "start", &value);
    }
    svg.push_str("</svg>");
    Chart { svg, legend: Vec::new(), note: None }
}

/// A named line; `None` points break it.
struct Series {
    name: String,
    points: Vec<Option<(f64, f64)>>,
}

/// The axes of a line chart: x tick labels, at least `x_min_step` apart; the y axis from 0.
struct Axes<'a> {
    x_label: &'a dyn Fn(f64) -> String,
    x_min_step: f64,
    y_label: &'a dyn Fn(f64) -> String,
    y_max: Option<f64>,
}

/// Lines over shared axes; a lone point is a dot. Non-finite values are left out.
fn line_chart(aria: &str, series: Vec<Series>, axes: Axes) -> Chart {
    const HEIGHT: f64 = 260.0;
    const TOP: f64 = 12.0;
    const BOTTOM: f64 = 32.0;
    let finite = |p: &Option<(f64, f64)>| p.filter(|(x, y)| x.is_finite() && y.is_finite());
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().filter_map(finite)).collect();
    let (mut lo, mut hi) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(x, _)| (lo.min(x), hi.max(x)));
    if lo >= hi {
        (lo, hi) = if lo.is_finite() { (lo - 0.5, lo + 0.5) } else { (0.0, 1.0) };
    }
    let data_max = all.iter().map(|p| p.1).fold(0.0, f64::max);
    let (y_top, y_step) = axis(axes.y_max.map_or(data_max, |m| m.max(data_max)));
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x_of = |x: f64| LEFT + (x - lo) / (hi - lo) * plot_w;
    let y_of = |y: f64| TOP + plot_h - y.max(0.0) / y_top * plot_h;
    let mut svg = String::new();
    svg_open(&mut svg, HEIGHT, aria);
    for y in ticks(0.0, y_top, y_step) {
        hline(&mut svg, if y == 0.0 { "axis" } else { "grid" }, LEFT, WIDTH - RIGHT, y_of(y));
        label(&mut svg, LEFT - 6.0, y_of(y) + 4.0, "end", &(axes.y_label)(y));
    }
    for x in ticks(lo, hi, axes.x_min_step) {
        let _ = write!(
            svg,
            "<line class=\"axis\" x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\"/>",
            x_of(x),
            TOP + plot_h,
            TOP + plot_h + 4.0
        );
        let anchor = match x_of(x) {
            at if at < LEFT + 40.0 => "start",
            at if at > WIDTH - RIGHT - 40.0 => "end",
            _ => "middle",
        };
        label(&mut svg, x_of(x), TOP + plot_h + 18.0, anchor, &(axes.x_label)(x));
    }
    for (i, s) in series.iter().enumerate() {
        let points: Vec<Option<(f64, f64)>> = s.points.iter().map(finite).collect();
        for run in points.split(Option::is_none).filter(|run| !run.is_empty()) {
            let coords: Vec<(f64, f64)> = run.iter().flatten().map(|&(x, y)| (x_of(x), y_of(y))).collect();
            if let [(x, y)] = coords[..] {
                let _ = write!(
                    svg,
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\" fill=\"{}\"><title>{}</title></circle>",
                    colour(i),
                    escape(&s.name)
                );
            } else {
                let path: Vec<String> = coords.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = write!(
                    svg,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\"><title>{}</title></polyline>",
                    path.join(" "),
                    colour(i),
                    escape(&s.name)
                );
            }
        }
    }
    svg.push_str("</svg>");
    Chart { svg, legend: series.into_iter().map(|s| s.name).collect(), note: None }
}

/// Host time and, where the rows have it, device time over the iteration number.
fn iteration_chart(it: &Iterations) -> Chart {
    let mut rows: Vec<_> = it.per_iteration.iter().collect();
    rows.sort_by_key(|i| i.iter);
    let mut series = vec![Series { name: "host ms".into(), points: rows.iter().map(|i| Some((i.iter as f64, i.host_ms))).collect() }];
    if it.device_ms.get().is_some() {
        series.push(Series { name: "device ms".into(), points: rows.iter().map(|i| Some((i.iter as f64, i.device_ms?))).collect() });
    }
    let mut chart = line_chart(
        "host and device time per iteration",
        series,
        Axes { x_label: &number, x_min_step: 1.0, y_label: &|y| format!("{} ms", number(y)), y_max: None },
    );
    if let Measured::NotAvailable(why) = &it.device_ms {
        chart.note = Some(format!("device time: {why}"));
    }
    chart
}

/// One line per counter and device over the trace's time, on one axis: 0–100 when every counter
/// is a percentage. The line joins the buckets that hold samples.
fn hardware_chart(h: &Hardware) -> Result<Chart, String> {
    let drawn: Vec<_> = h.counters.iter().filter(|c| !c.series.is_empty()).collect();
    let (Some(start), Some(end)) = (drawn.iter().map(|c| c.start_ns).min(), drawn.iter().map(|c| c.end_ns).max()) else {
        return Err("every counter has samples at one instant only: there is no series over time".into());
    };
    let series = drawn
        .iter()
        .map(|c| {
            let (span, n) = ((c.end_ns - c.start_ns) as f64, c.series.len() as f64);
            let offset = (c.start_ns - start) as f64;
            let points =
                c.series.iter().enumerate().filter_map(|(i, v)| v.map(|v| Some((offset + span * (i as f64 + 0.5) / n, v)))).collect();
            Series { name: format!("{} (device {})", c.name, c.device), points }
        })
        .collect();
    let percent = h.counters.iter().all(|c| c.name.ends_with('%'));
    let window = (end - start) as f64;
    let axes = Axes {
        x_label: &|x| format!("+{}", text::duration(x)),
        x_min_step: (window / 10.0).max(1.0),
        y_label: if percent { &|y| format!("{}%", number(y)) } else { &number },
        y_max: percent.then_some(100.0),
    };
    Ok(line_chart("hardware counters over time", series, axes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{analyze, Options};
    use lumen_test_support::rows::{api, iteration, named, span};
    use lumen_trace::model::{CounterRow, ProcessRow, ThreadRow, TraceData};

    const HOSTILE: &str = "void gemm<float, Tile<128,64>>(T const&, \"a\" 'b') </td><script>alert(1)</script>";

    fn analysis(trace: &TraceData) -> Analysis {
        analyze(trace, &Options { buckets: 20, ..Options::default() }).unwrap()
    }

    fn page(trace: &TraceData) -> String {
        render_html(&analysis(trace), None)
    }

    fn compared_page(base: &TraceData, new: &TraceData) -> String {
        let (a, b) = (analysis(base), analysis(new));
        render_html(&b, Some(&compare::compare(&a, &b, base, new)))
    }

    /// The first row of `html` holding `cell` as a cell's whole text.
    fn row<'a>(html: &'a str, cell: &str) -> &'a str {
        let at = html.find(&format!(">{cell}</td>")).unwrap_or_else(|| panic!("no cell {cell}:\n{html}"));
        let start = html[..at].rfind("<tr>").expect("a cell is in a row");
        &html[start..at + html[at..].find("</tr>").expect("the row is closed")]
    }

    /// The `tag` element with `id`, from its opening tag to its closing tag.
    fn element<'a>(html: &'a str, tag: &str, id: &str) -> &'a str {
        let at = html.find(&format!(" id=\"{id}\"")).unwrap_or_else(|| panic!("no element with id {id}:\n{html}"));
        let start = html[..at].rfind('<').expect("an id is inside a tag");
        assert!(html[start + 1..].starts_with(tag), "{id} is not a <{tag}>");
        let end = html[start..].find(&format!("</{tag}>")).expect("the element is closed") + start;
        &html[start..end]
    }

    /// Every element opened is closed in order (void and self-closed elements aside).
    fn assert_well_formed(html: &str) {
        const VOID: [&str; 2] = ["meta", "!DOCTYPE"];
        let mut open: Vec<&str> = Vec::new();
        let mut rest = html;
        while let Some(i) = rest.find('<') {
            let end = rest[i..].find('>').expect("every tag ends") + i;
            let tag = &rest[i + 1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name), "</{name}> closes the wrong element");
            } else {
                let name = tag.split(|c: char| c.is_whitespace() || c == '/').next().unwrap();
                if !VOID.contains(&name) && !tag.ends_with('/') {
                    open.push(name);
                }
            }
        }
        assert!(open.is_empty(), "never closed: {open:?}");
    }

    /// Eight 1 ms iterations, each a phase span and a stream synchronise, a kernel named `name` and
    /// an attention kernel, and SM and DRAM samples; iteration 3 has no device time.
    fn full_trace(name: &str) -> TraceData {
        let mut trace = TraceData {
            meta: vec![("command".into(), format!("lumen bench {name}")), ("gpu_metrics_source".into(), "cupti-pm".into())],
            processes: vec![ProcessRow { pid: 1, name: name.into() }],
            threads: vec![ThreadRow { pid: 1, tid: 1, name: name.into() }],
            ..TraceData::default()
        };
        for i in 0..8u64 {
            let t = i * 1_000_000;
            let mut row = iteration(i, t, t + 900_000, 0.9 + i as f64 * 0.01);
            row.device_ms = (i != 3).then_some(0.5);
            trace.iterations.push(row);
            trace.spans.push(span(t, t + 900_000, 1, name, "phase"));
            trace.api_calls.push(api("cuLaunchKernel", t + 1_000, t + 2_000, i * 10));
            trace.gpu_ops.push(named(name, t + 10_000, t + 300_000, i * 10));
            trace.gpu_ops.push(named("flash_fwd_kernel", t + 400_000, t + 500_000, i * 10 + 1));
            trace.api_calls.push(api("cuStreamSynchronize", t + 500_000, t + 600_000, i * 10 + 2));
            for (counter, value) in [("sm active %", 40.0 + i as f64), ("dram read %", 20.0)] {
                trace.counters.push(CounterRow { ts_ns: t, name: counter.into(), device: Some(0), value });
            }
        }
        trace
    }

    #[test]
    fn strings_from_the_trace_are_escaped_everywhere() {
        let html = page(&full_trace(HOSTILE));
        assert!(!html.contains("<script"), "a name opened a script element:\n{html}");
        let escaped = "void gemm&lt;float, Tile&lt;128,64&gt;&gt;(T const&amp;, &quot;a&quot; &#39;b&#39;) &lt;/td&gt;&lt;script&gt;alert(1)&lt;/script&gt;";
        for id in ["overview", "gaps", "kernels", "phases"] {
            assert!(element(&html, "section", id).contains(escaped), "{id} lacks the escaped name:\n{}", element(&html, "section", id));
        }
        assert!(element(&html, "section", "ranges").contains("Tile&lt;N,N&gt;&gt;"), "range names have their numbers grouped");
        assert!(html.contains(&format!("<title>lumen analyze: lumen bench {escaped}</title>")));
        assert_well_formed(&html);
    }

    #[test]
    fn long_names_are_cut_in_tables_with_the_full_name_as_tooltip() {
        let long = format!("{}{HOSTILE}", "x".repeat(NAME_CHARS));
        let html = page(&full_trace(&long));
        let kernels = element(&html, "section", "kernels");
        assert!(kernels.contains(&format!("<td title=\"{}\">{}…</td>", escape(&long), "x".repeat(NAME_CHARS - 1))), "{kernels}");
    }

    #[test]
    fn sections_without_data_say_why_and_so_do_their_charts() {
        let html = page(&TraceData::default());
        let ids: Vec<&str> = section_ids(false).collect();
        assert_eq!(
            ids,
            [
                "diagnosis",
                "overview",
                "headroom",
                "speed-of-light",
                "steps",
                "gpu",
                "gaps",
                "kernels",
                "launch",
                "iterations",
                "phases",
                "ranges",
                "hardware",
                "memory",
                "moe",
                "collectives"
            ]
        );
        assert!(element(&html, "section", "collectives").contains("not available: the trace has no collective kernels"));
        assert!(element(&html, "section", "moe").contains("not available: the trace has no expert_load rows"));
        let no_gpu = "not available: the trace has no GPU operations; record one with `lumen profile`";
        for id in ["gpu", "gaps", "kernels"] {
            assert!(element(&html, "section", id).contains(no_gpu), "{}", element(&html, "section", id));
        }
        assert!(element(&html, "section", "launch").contains("not available: the trace has no CUDA API calls"));
        assert!(element(&html, "section", "iterations").contains("not available: the trace has no iteration rows"));
        assert!(element(&html, "section", "hardware").contains("not available: the trace has no GPU metric samples"));
        assert!(element(&html, "section", "headroom").contains("not available: the trace has no iteration rows with requests"));
        assert!(element(&html, "section", "steps").contains("not available: the trace has no steps"));
        let charts = [
            (CHARTS[0], no_gpu),
            (CHARTS[1], no_gpu),
            (CHARTS[2], "no iteration rows"),
            (CHARTS[3], "no GPU metric samples"),
            (CHARTS[4], "no counter samples, and no operator or engine bytes and FLOPs against known peaks"),
        ];
        for (id, why) in charts {
            let figure = element(&html, "figure", id);
            assert!(figure.contains(why) && !figure.contains("<svg"), "{id}: {figure}");
        }
        assert!(element(&html, "section", "diagnosis").contains("<p>no pattern found</p>"));
        assert_well_formed(&html);
    }

    #[test]
    fn every_chart_is_drawn_when_its_data_exists() {
        let a = analysis(&full_trace("gemm_kernel"));
        let html = render_html(&a, None);
        for id in CHARTS {
            assert!(element(&html, "figure", id).contains("<svg viewBox="), "{id} has no SVG:\n{}", element(&html, "figure", id));
        }
        // 8 × (290 µs + 100 µs) busy from 10 µs to 7.5 ms.
        let busy = element(&html, "figure", CHARTS[0]);
        assert!(busy.contains(">device 0: busy 41.7%</text>"), "{busy}");
        let bars = busy.matches("<rect ").count();
        assert!((8..=20).contains(&bars), "one bar per busy bucket, {bars}:\n{busy}");
        let classes = element(&html, "figure", CHARTS[1]);
        assert_eq!(classes.matches("<rect ").count(), 2, "{classes}");
        assert!(classes.contains(">gemm</text>") && classes.contains(">attention</text>"), "{classes}");
        assert!(classes.contains(">74.4% (2.320 ms, 8 ops)</text>"), "{classes}");
        let iterations = element(&html, "figure", CHARTS[2]);
        assert_eq!(iterations.matches("<polyline ").count(), 1 + 2, "host in one line, device broken at iteration 3:\n{iterations}");
        assert!(iterations.contains("<li><span class=\"swatch\" style=\"background:#2f6db5\"></span>host ms</li>"), "{iterations}");
        assert!(iterations.contains(">device ms</li>") && !iterations.contains("not available"), "{iterations}");
        let hardware = element(&html, "figure", CHARTS[3]);
        assert_eq!(hardware.matches("<polyline ").count(), 2, "sparse samples still make one line per counter:\n{hardware}");
        assert!(hardware.contains(">sm active % (device 0)</li>") && hardware.contains(">100%</text>"), "{hardware}");
        let sol = element(&html, "figure", CHARTS[4]);
        assert!(sol.contains("<rect ") && sol.contains(">device 0</text>") && sol.contains(">DRAM (read + write)</li>"), "{sol}");
        let findings = html.matches("<article class=\"finding\">").count();
        assert!(findings > 0 && findings == a.diagnosis.findings.len(), "{findings} findings drawn");
        let diagnosis = element(&html, "section", "diagnosis");
        assert!(diagnosis.contains("<h3 class=\"pattern\">low GPU utilisation</h3>") && diagnosis.contains("<p class=\"action\">action: "));
        assert!(!html.contains("NaN") && !html.contains("inf\""), "every coordinate is a number");
        assert_well_formed(&html);
    }

    #[test]
    fn iterations_without_device_time_draw_host_time_and_say_why() {
        let rows = (0..4).map(|i| iteration(i, i * 10, i * 10 + 5, 1.0 + i as f64)).collect();
        let html = page(&TraceData { iterations: rows, ..TraceData::default() });
        let chart = element(&html, "figure", CHARTS[2]);
        assert_eq!(chart.matches("<polyline ").count(), 1, "{chart}");
        assert!(chart.contains("not available: device time: no iteration row has a device time"), "{chart}");
        assert!(!chart.contains(">device ms</li>"), "{chart}");
    }

    #[test]
    fn counters_leave_out_non_finite_samples_and_need_two_instants() {
        let sample = |ts_ns, name: &str, value| CounterRow { ts_ns, name: name.into(), device: Some(0), value };
        let trace = TraceData {
            counters: vec![
                sample(0, "sm active %", f64::NAN),
                sample(10, "sm active %", 50.0),
                sample(20, "sm active %", 60.0),
                sample(5, "power W", 300.0),
            ],
            ..TraceData::default()
        };
        let html = page(&trace);
        let chart = element(&html, "figure", CHARTS[3]);
        assert_eq!(chart.matches("<polyline ").count(), 1, "{chart}");
        assert!(!chart.contains("NaN") && !chart.contains(">power W (device 0)</li>"), "{chart}");
        let once = page(&TraceData { counters: vec![sample(5, "power W", 300.0)], ..TraceData::default() });
        let chart = element(&once, "figure", CHARTS[3]);
        assert!(chart.contains("not available: every counter has samples at one instant only") && !chart.contains("<svg"), "{chart}");
    }

    #[test]
    fn a_comparison_follows_the_diagnosis_with_its_verdict_and_tables() {
        let base = full_trace("gemm_kernel");
        let mut new = full_trace(HOSTILE);
        for row in &mut new.iterations {
            row.host_ms *= 1.2;
        }
        let html = compared_page(&base, &new);
        let ids: Vec<&str> = section_ids(true).collect();
        assert_eq!(ids[..3], ["diagnosis", "comparison", "overview"]);
        assert_eq!(ids.len(), section_ids(false).count() + 1);
        let order: Vec<usize> = ids.iter().map(|id| html.find(&format!("<section id=\"{id}\">")).unwrap()).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "sections out of page order: {order:?}");
        assert!(
            html.contains("<a href=\"#diagnosis\">Diagnosis</a><a href=\"#comparison\">Comparison</a><a href=\"#overview\">"),
            "{html}"
        );

        let c = element(&html, "section", "comparison");
        let headings: Vec<usize> =
            ["Verdict", "Headline figures", "Kernels", "CPU phases"].iter().map(|h| c.find(&format!("<h3>{h}</h3>")).unwrap()).collect();
        assert!(headings.windows(2).all(|w| w[0] < w[1]), "{c}");
        assert!(c.contains("<p class=\"verdict worse\">slower by 20.0% (95% CI "), "{c}");
        assert!(
            c.contains(
                "<tr><th>compared</th><td>median host time per iteration per request in the batch (about one output token each)</td></tr>"
            ),
            "{c}"
        );
        assert!(c.contains("<tr><th>base</th><td>8 iterations (iteration rows), median 0.468 ms</td></tr>"), "{c}");
        assert!(
            c.contains(
                "<tr><th>confidence</th><td>low: 8 base and 8 new iterations; a confident verdict needs at least 20 in each</td></tr>"
            ),
            "{c}"
        );
        assert!(c.contains("<tr><th>method</th><td>bootstrap of the difference of medians, 2000 resamples, seed 0x"), "{c}");

        let mean = row(c, "iteration host time, mean");
        assert!(mean.contains("<td class=\"num\">+20.0%</td><td class=\"worse\">worse</td>"), "{mean}");
        let same = row(c, "kernel time");
        assert!(same.contains("<td class=\"num\">0</td><td class=\"num\">+0.0%</td><td>same</td>"), "no class for the same: {same}");
        assert!(
            c.contains("<tr><th>kernels</th><td>1 in both (1 unchanged); 1 appeared, 1 disappeared, 0 slower, 0 faster</td></tr>"),
            "{c}"
        );
        let gone = row(c, "gemm_kernel");
        assert!(
            gone.contains("<td>disappeared</td><td class=\"num\">8→-</td><td class=\"num\">290.0 µs</td><td class=\"num\">-</td>"),
            "{gone}"
        );
        assert!(gone.contains("<td class=\"num\">-2.320 ms</td>"), "{gone}");
        assert!(c.contains("<tr><th>per iteration, over</th><td>8 base and 8 new iterations</td></tr>"), "{c}");
        assert_well_formed(&html);
    }

    #[test]
    fn faster_kernels_and_runs_are_marked_better() {
        let mut base = full_trace("gemm_kernel");
        for i in 0..30u64 {
            let t = 10_000_000 + i * 1_000_000;
            base.iterations.push(iteration(8 + i, t, t + 900_000, 1.2));
        }
        let mut new = base.clone();
        for op in new.gpu_ops.iter_mut().filter(|op| op.name == "gemm_kernel") {
            op.end_ns -= 100_000;
        }
        for row in &mut new.iterations {
            row.host_ms *= 0.8;
        }
        let c = compared_page(&base, &new);
        let c = element(&c, "section", "comparison");
        assert!(c.contains("<p class=\"verdict better\">faster by 20.0% (95% CI "), "{c}");
        assert!(c.contains("<tr><th>confidence</th><td>high: at least 20 iterations in each trace</td></tr>"), "{c}");
        assert!(row(c, "gemm_kernel").contains("<td class=\"better\">faster</td><td class=\"num\">8→8</td>"), "{}", row(c, "gemm_kernel"));
        assert!(row(c, "iteration host time, median").contains("<td class=\"better\">better</td>"), "{c}");
    }

    #[test]
    fn hostile_names_in_the_comparison_are_escaped() {
        let html = compared_page(&full_trace("gemm_kernel"), &full_trace(HOSTILE));
        assert!(!html.contains("<script"), "a name opened a script element");
        let c = element(&html, "section", "comparison");
        let escaped = "void gemm&lt;float, Tile&lt;128,64&gt;&gt;(T const&amp;, &quot;a&quot; &#39;b&#39;) &lt;/td&gt;&lt;script&gt;alert(1)&lt;/script&gt;";
        let appeared = row(c, escaped);
        assert!(appeared.contains("<td>appeared</td><td class=\"num\">-→8</td>"), "{appeared}");
        let phase = c.rfind(&format!("<td>{escaped}</td>")).unwrap();
        assert!(c[phase..].starts_with(&format!("<td>{escaped}</td><td class=\"num\">-</td><td class=\"num\">900.0 µs</td>")), "{c}");
        assert_well_formed(&html);
    }

    #[test]
    fn what_the_traces_cannot_compare_says_why() {
        let empty = TraceData::default();
        let html = compared_page(&empty, &empty);
        let c = element(&html, "section", "comparison");
        assert!(
            c.contains("<tr><th>verdict</th><td class=\"not-available\">not available: neither trace has iterations (no iteration rows"),
            "{c}"
        );
        let no_gpu = "not available: both traces: the trace has no GPU operations; record one with `lumen profile`";
        assert!(c.contains(&format!("<h3>Kernels</h3>\n<p class=\"not-available\">{no_gpu}</p>")), "{c}");
        assert!(
            c.contains("<h3>CPU phases</h3>\n<p class=\"not-available\">not available: both traces: the trace has no phase spans"),
            "{c}"
        );
        assert!(
            c.contains(
                "<tr><th>hardware counters</th><td class=\"not-available\">not available: both traces: the trace has no GPU metric samples"
            ),
            "{c}"
        );
        assert!(c.contains("<tr><th>GPU busy, GPU busy time, GPU idle time, "), "figures with one reason share a row:\n{c}");

        let mut new = full_trace("gemm_kernel");
        for row in &mut new.iterations {
            row.device_ms = None;
        }
        let html = compared_page(&full_trace("gemm_kernel"), &new);
        assert!(
            element(&html, "section", "comparison").contains(
                "<tr><th>iteration device time, mean, iteration device time, median</th>\
                 <td class=\"not-available\">not available: new: no iteration row has a device time</td></tr>"
            ),
            "{html}"
        );
        assert_well_formed(&html);
    }

    #[test]
    fn without_a_comparison_the_page_has_none() {
        let html = page(&full_trace("gemm_kernel"));
        assert!(!html.contains("id=\"comparison\"") && !html.contains("#comparison"), "{html}");
        assert!(!section_ids(false).any(|id| id == "comparison"));
    }

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(axis(0.93), (1.0, 0.25));
        assert_eq!(axis(37.0), (40.0, 10.0));
        assert_eq!(axis(100.0), (100.0, 25.0));
        assert_eq!(axis(f64::NAN), (1.0, 0.25));
        assert_eq!(ticks(3.0, 11.0, 1.0), [4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(0.0, 2.0, 1.0), [0.0, 1.0, 2.0]);
        assert_eq!([number(0.30000000000000004), number(25.0), number(0.0)], ["0.3", "25", "0"]);
    }
}
