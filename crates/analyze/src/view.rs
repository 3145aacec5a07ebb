//! The report's view model: a section built once as blocks (labelled facts and tables) that the
//! terminal report (crate::text) and the HTML page (crate::html) both render, so a figure is
//! formatted in one place. The JSON is the analysis itself. Charts stay the page's own, and
//! sparklines the terminal's.

use crate::measured::Measured;
use crate::text::{self, line, not_available, Table};

/// One part of a section.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Labelled values, each or the reason it is missing.
    Facts(Vec<(String, Measured<String>)>),
    /// Columns right-aligned except those in `left`.
    Table { header: Vec<&'static str>, left: Vec<usize>, rows: Vec<Vec<String>> },
    /// A series of shares of full scale (0..=1, `None` for a gap): a sparkline in the terminal;
    /// the page draws its section's chart instead.
    Series { label: String, values: Vec<Option<f64>> },
}

/// A labelled value.
pub fn fact(label: &str, value: impl Into<String>) -> (String, Measured<String>) {
    (label.to_string(), Measured::Available(value.into()))
}

/// A labelled reason why a value is missing.
pub fn missing(label: &str, why: &str) -> (String, Measured<String>) {
    (label.to_string(), Measured::NotAvailable(why.to_string()))
}

/// A labelled figure shown by `show`, or the reason it is missing.
pub fn measured<T>(label: &str, value: &Measured<T>, show: impl FnOnce(&T) -> String) -> (String, Measured<String>) {
    match value {
        Measured::Available(v) => fact(label, show(v)),
        Measured::NotAvailable(why) => missing(label, why),
    }
}

/// The blocks as terminal lines and tables.
pub fn render_text(blocks: &[Block], out: &mut String) {
    for block in blocks {
        match block {
            Block::Facts(facts) => {
                for (label, value) in facts {
                    match value {
                        Measured::Available(v) => line(out, label, v),
                        Measured::NotAvailable(why) => not_available(out, label, why),
                    }
                }
            }
            Block::Table { header, left, rows } => {
                let mut table = Table::new(header, left);
                for row in rows {
                    table.row(row.clone());
                }
                table.render(out);
            }
            Block::Series { label, values } => line(out, label, text::sparkline(values.iter().copied())),
        }
    }
}

/// A whole section in the terminal: its heading, then its blocks.
pub fn render_section(title: &str, blocks: &[Block], out: &mut String) {
    text::heading(out, title);
    render_text(blocks, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{analyze, render_html, render_text, Options};
    use lumen_trace::model::{IterationRow, TraceData};

    #[test]
    fn blocks_render_as_labelled_lines_and_aligned_tables() {
        let blocks = vec![
            Block::Facts(vec![fact("peaks", "H200"), missing("counters", "no samples")]),
            Block::Table { header: vec!["step", "time"], left: vec![0], rows: vec![vec!["ProfilerStep#0".into(), "1 ms".into()]] },
        ];
        let mut out = String::new();
        render_section("Speed of light", &blocks, &mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "== Speed of light ==");
        assert!(lines[1].starts_with("  peaks") && lines[1].ends_with(" H200"), "{out}");
        assert!(lines[2].ends_with("not available: no samples"), "{out}");
        assert!(lines[3].contains("step") && lines[4].starts_with("  ProfilerStep#0"), "{out}");
    }

    /// A section built once reads the same in the terminal and on the page.
    #[test]
    fn the_terminal_and_the_page_show_the_same_built_values() {
        let row = |iter: u64| IterationRow {
            iter,
            start_ns: iter * 1_000_000,
            end_ns: iter * 1_000_000 + 900_000,
            gen_reqs: 4,
            gen_tokens: 4,
            kv_used_blocks: 4,
            kv_total_blocks: 1_000,
            host_ms: 0.9,
            queued_reqs: Some(0),
            ..IterationRow::default()
        };
        let trace = TraceData {
            meta: vec![("max_batch_size".into(), "4".into()), ("max_num_tokens".into(), "64".into())],
            iterations: (0..6).map(row).collect(),
            ..TraceData::default()
        };
        let a = analyze(&trace, &Options::default()).unwrap();
        let (text, html) = (render_text(&a), render_html(&a, None));
        let Block::Facts(facts) = &crate::headroom::view(&a.headroom)[0] else { panic!("headroom opens with facts") };
        for (_, value) in facts {
            let value = value.get().expect("every headroom figure is there");
            assert!(text.contains(value.as_str()) || text.contains(&value[..value.len().min(60)]), "{value} not in the text");
            assert!(html.contains(&crate::html::escape(value)), "{value} not on the page");
        }
    }
}
