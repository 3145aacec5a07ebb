//! Building blocks of the terminal report: headings, labelled lines, aligned tables, units. No
//! line is wider than [`WIDTH`] columns: long values wrap at spaces, sparklines are resampled to
//! [`SPARK_WIDTH`], and a table too wide for the terminal truncates its widest left-aligned column
//! or wraps its last one, or else puts each row apart.

use std::fmt::Write;

/// The widest line the report writes, in characters.
pub const WIDTH: usize = 100;
/// The width of the label column of [`line`].
const LABEL_WIDTH: usize = 24;
/// The characters a sparkline may take.
pub const SPARK_WIDTH: usize = 70;
/// A table never narrows a column below this to fit.
const MIN_COLUMN: usize = 12;

pub fn heading(out: &mut String, title: &str) {
    if !out.is_empty() {
        out.push('\n');
    }
    let _ = writeln!(out, "== {title} ==");
}

pub fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    wrapped(out, &format!("  {label:<LABEL_WIDTH$} "), LABEL_WIDTH + 3, &value.to_string());
}

/// `text` broken at spaces into lines of at most `width` characters (at least one line); a word
/// longer than `width` is split.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let current = lines.last_mut().expect("never empty");
            let used = current.chars().count();
            let room = if used == 0 { width } else { width.saturating_sub(used + 1) };
            if word.len() <= room {
                if used > 0 {
                    current.push(' ');
                }
                current.extend(word);
                break;
            }
            if used == 0 {
                current.extend(word.drain(..width));
            }
            lines.push(String::new());
        }
    }
    lines
}

/// Writes `text` after `first`, continuing on lines indented by `indent` spaces, all within
/// [`WIDTH`].
pub fn wrapped(out: &mut String, first: &str, indent: usize, text: &str) {
    let first_width = WIDTH.saturating_sub(first.chars().count()).max(MIN_COLUMN);
    let mut lines = wrap(text, first_width).into_iter();
    let head = lines.next().unwrap_or_default();
    let _ = writeln!(out, "{first}{head}");
    let rest: Vec<String> = lines.collect();
    if !rest.is_empty() {
        for line in wrap(&rest.join(" "), WIDTH - indent) {
            let _ = writeln!(out, "{}{line}", " ".repeat(indent));
        }
    }
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

/// Shares (0..=1, `None` for no data) as a one-line bar chart of at most [`SPARK_WIDTH`]
/// characters: longer series are averaged over runs of adjacent values.
pub fn sparkline(values: impl IntoIterator<Item = Option<f64>>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let values: Vec<Option<f64>> = values.into_iter().collect();
    let per_char = values.len().div_ceil(SPARK_WIDTH).max(1);
    values
        .chunks(per_char)
        .map(|run| {
            let known: Vec<f64> = run.iter().flatten().copied().collect();
            (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
        })
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

    /// Writes the table within [`WIDTH`]: when it is wider, a left-aligned last column wraps
    /// onto continuation lines; otherwise the widest left-aligned columns are truncated; and
    /// where the columns still do not fit, each row becomes a block ([`Table::render_rows_apart`]).
    pub fn render(&self, out: &mut String) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let total = |widths: &[usize]| 2 + widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
        let last = widths.len().saturating_sub(1);
        let wrap_last = total(&widths) > WIDTH && self.left.contains(&last);
        if wrap_last {
            widths[last] = widths[last].saturating_sub(total(&widths) - WIDTH).max(MIN_COLUMN);
        }
        while total(&widths) > WIDTH {
            let widest = self.left.iter().copied().filter(|&i| i < widths.len() && widths[i] > MIN_COLUMN).max_by_key(|&i| widths[i]);
            let Some(i) = widest else { return self.render_rows_apart(out) };
            widths[i] -= 1;
        }
        let start_of_last = total(&widths) - widths[last];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut continuation = Vec::new();
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, &width))| {
                    let cell = if wrap_last && i == last {
                        let mut lines = wrap(cell, width);
                        continuation = lines.split_off(1);
                        lines.remove(0)
                    } else {
                        truncate(cell, width)
                    };
                    let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
                    if self.left.contains(&i) {
                        format!("{cell}{pad}")
                    } else {
                        format!("{pad}{cell}")
                    }
                })
                .collect();
            let _ = writeln!(out, "  {}", cells.join("  ").trim_end());
            for line in continuation {
                let _ = writeln!(out, "{}{line}", " ".repeat(start_of_last));
            }
        }
    }

    /// The layout for columns that cannot share a line: a row's first cell on a line of its own,
    /// then its other cells as `header: value`, wrapped under it.
    fn render_rows_apart(&self, out: &mut String) {
        for row in &self.rows {
            let Some((first, rest)) = row.split_first() else { continue };
            wrapped(out, "  ", 2, first);
            let pairs: Vec<String> = self.header.iter().skip(1).zip(rest).map(|(h, v)| format!("{h}: {v}")).collect();
            wrapped(out, "      ", 6, &pairs.join("; "));
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
    fn long_text_wraps_at_spaces_and_long_words_are_split() {
        assert_eq!(wrap("one two three four", 9), ["one two", "three", "four"]);
        assert_eq!(wrap("abcdefghij xy", 4), ["abcd", "efgh", "ij", "xy"]);
        assert_eq!(wrap("", 10), [""]);
        let mut out = String::new();
        line(&mut out, "action", "word ".repeat(40).trim_end());
        assert!(out.lines().count() > 1 && out.lines().all(|l| l.chars().count() <= WIDTH), "{out}");
        assert!(
            out.lines().skip(1).all(|l| l.starts_with(&" ".repeat(LABEL_WIDTH + 3)) && !l[LABEL_WIDTH + 3..].starts_with(' ')),
            "{out}"
        );
        assert_eq!(out.split_whitespace().filter(|w| *w == "word").count(), 40, "no word is lost");
    }

    #[test]
    fn sparklines_average_long_series_down_to_their_width() {
        let series: Vec<Option<f64>> = (0..SPARK_WIDTH * 2).map(|i| Some(if i % 2 == 0 { 0.0 } else { 1.0 })).collect();
        assert_eq!(sparkline(series), "▅".repeat(SPARK_WIDTH), "each character averages a pair: 0.5");
        assert_eq!(sparkline([Some(0.0), None, Some(1.0)]), "▁ █");
    }

    #[test]
    fn wide_tables_wrap_their_last_column_or_truncate_the_widest_left_one() {
        let mut gaps = Table::new(&["at", "spans"], &[1]);
        gaps.row(vec!["+1 ms".into(), "forward (main, 53.1 µs); ".repeat(8).trim_end().into()]);
        let mut out = String::new();
        gaps.render(&mut out);
        assert!(out.lines().count() > 2 && out.lines().all(|l| l.chars().count() <= WIDTH), "{out}");
        assert_eq!(out.matches("forward").count(), 8, "the wrapped column keeps every word:\n{out}");

        let mut kernels = Table::new(&["kernel", "total", "share"], &[0]);
        kernels.row(vec!["void at::native::vectorized_elementwise_kernel<".repeat(3), "1.0 ms".into(), "50.0%".into()]);
        let mut out = String::new();
        kernels.render(&mut out);
        let row = out.lines().nth(1).unwrap();
        assert_eq!(row.chars().count(), WIDTH, "{out}");
        assert!(row.contains('…') && row.ends_with("1.0 ms  50.0%"), "{out}");
    }

    #[test]
    fn tables_whose_numbers_alone_are_too_wide_put_each_row_apart() {
        let header = ["kernel", "calls", "total", "mean", "p50", "p99", "max", "bytes", "rate", "share of the GPU time"];
        let mut t = Table::new(&header, &[0]);
        t.row(
            ["gemv_fp8_swiglu", "1234567", "12.345 ms", "10.0 µs", "9.9 µs", "12.1 µs", "13.0 µs", "50.3 MB", "2.34 TB/s", "18.6%"]
                .map(String::from)
                .to_vec(),
        );
        let mut out = String::new();
        t.render(&mut out);
        assert!(out.lines().all(|l| l.chars().count() <= WIDTH), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "  gemv_fp8_swiglu", "{out}");
        assert!(lines[1].starts_with("      calls: 1234567; total: 12.345 ms;"), "{out}");
        assert!(out.contains("share of the GPU time: 18.6%") && !out.trim_end().ends_with(';'), "{out}");
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
