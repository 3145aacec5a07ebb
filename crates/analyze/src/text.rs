//! Building blocks of the terminal report: headings, labelled lines, aligned tables, units.

use std::fmt::Write;

/// The width of the label column of [`line`].
const LABEL_WIDTH: usize = 24;

pub fn heading(out: &mut String, title: &str) {
    if !out.is_empty() {
        out.push('\n');
    }
    let _ = writeln!(out, "== {title} ==");
}

pub fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "  {label:<LABEL_WIDTH$} {value}");
}

pub fn not_available(out: &mut String, label: &str, reason: &str) {
    line(out, label, format_args!("not available: {reason}"));
}

/// `ns` in s, ms, µs or ns, whichever reads best.
pub fn duration(ns: f64) -> String {
    match ns.abs() {
        a if a >= 1e9 => format!("{:.3} s", ns / 1e9),
        a if a >= 1e6 => format!("{:.3} ms", ns / 1e6),
        a if a >= 1e3 => format!("{:.1} µs", ns / 1e3),
        _ => format!("{ns:.0} ns"),
    }
}

pub fn ms(ms: f64) -> String {
    format!("{ms:.3} ms")
}

pub fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

pub fn bytes(n: u64) -> String {
    const UNITS: [(&str, f64); 3] = [("GiB", 1073741824.0), ("MiB", 1048576.0), ("KiB", 1024.0)];
    match UNITS.iter().find(|(_, size)| n as f64 >= *size) {
        Some((unit, size)) => format!("{:.2} {unit}", n as f64 / size),
        None => format!("{n} B"),
    }
}

/// `text` cut to `max` characters, marking the cut with `…`.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Shares (0..=1, `None` for no data) as a one-line bar chart.
pub fn sparkline(values: impl IntoIterator<Item = Option<f64>>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    values
        .into_iter()
        .map(|v| match v {
            Some(v) => BARS[((v.clamp(0.0, 1.0) * 7.0).round()) as usize],
            None => ' ',
        })
        .collect()
}

/// A table whose columns are right-aligned except the ones named in `left`.
pub struct Table {
    header: Vec<String>,
    left: Vec<usize>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str], left: &[usize]) -> Self {
        Table { header: header.iter().map(|h| h.to_string()).collect(), left: left.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self, out: &mut String) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, &width))| {
                    let pad = " ".repeat(width - cell.chars().count());
                    if self.left.contains(&i) {
                        format!("{cell}{pad}")
                    } else {
                        format!("{pad}{cell}")
                    }
                })
                .collect();
            let _ = writeln!(out, "  {}", cells.join("  ").trim_end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_pick_their_unit() {
        assert_eq!(
            [duration(512.0), duration(1_500.0), duration(2_345_678.0), duration(3.2e9)],
            ["512 ns", "1.5 µs", "2.346 ms", "3.200 s"]
        );
        assert_eq!([bytes(512), bytes(1536), bytes(3 << 30)], ["512 B", "1.50 KiB", "3.00 GiB"]);
        assert_eq!(truncate("flash_fwd_kernel", 6), "flash…");
    }

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["name", "µs"], &[0]);
        table.row(vec!["gemm".into(), "12.5".into()]);
        table.row(vec!["a".into(), "3".into()]);
        let mut out = String::new();
        table.render(&mut out);
        assert_eq!(out, "  name    µs\n  gemm  12.5\n  a        3\n");
    }
}
