//! The golden test of the report layout: a report as `trtllm-bench` prints it (the full example
//! in TensorRT-LLM's `perf-benchmarking.md`, kept in `data/trtllm_bench_report.txt`) and lumen's
//! report for a run are read by one small parser written for trtllm-bench's layout, and every
//! field the example holds is found in lumen's, with a value of the same kind, in sections of
//! the same order; lumen's own section comes after all of them.

mod common;

use common::{lumen, Scratch};

/// One `label: value` of a report, with the section it sits in.
#[derive(Debug, Clone, PartialEq)]
struct Field {
    section: String,
    name: String,
    value: String,
}

/// Labels trtllm-bench has printed two ways across versions, mapped to the current one.
const RENAMED: [(&str, &str); 2] = [
    ("Per User Output Throughput (tokens/sec/user)", "Per User Output Throughput [w/ ctx] (tps/user)"),
    ("Per GPU Output Throughput (tokens/sec/gpu)", "Per GPU Output Throughput (tps/gpu)"),
];

/// Fields trtllm-bench itself prints as `None` when the setting does not apply.
const MAY_BE_NONE: [&str; 2] = ["EP Size", "KV Memory Percentage"];

/// Reads a report in trtllm-bench's layout: `= TITLE` lines between rules open a section;
/// `Label: value` and `[TAG] NAME: value` lines are fields; the dataset table's rows give one
/// field per column (`Input MIN`, `Output MIN`, `Seq. Length MIN`); rules, `-- ` subheadings and
/// blank lines carry nothing.
fn parse(text: &str) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut section = String::new();
    let mut columns: Option<[&str; 3]> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("-- ") {
            continue;
        }
        if trimmed.chars().all(|c| c == '=') || trimmed.chars().all(|c| c == '-') {
            if trimmed.starts_with('=') {
                columns = None;
            }
            continue;
        }
        if let Some(title) = trimmed.strip_prefix("= ") {
            section = title.trim().to_owned();
            continue;
        }
        if trimmed.split_whitespace().collect::<Vec<_>>() == ["Input", "Output", "Seq.", "Length"] {
            columns = Some(["Input", "Output", "Seq. Length"]);
            continue;
        }
        let Some(colon) =
            trimmed.char_indices().find(|&(i, c)| c == ':' && trimmed[i + 1..].starts_with(char::is_whitespace)).map(|(i, _)| i)
        else {
            continue;
        };
        let (label, value) = (trimmed[..colon].trim(), trimmed[colon + 1..].trim());
        let field = |name: String, value: &str| Field { section: section.clone(), name, value: value.to_owned() };
        match columns {
            Some(names) => {
                for (column, cell) in names.iter().zip(value.split_whitespace()) {
                    fields.push(field(format!("{column} {label}"), cell));
                }
            }
            None => {
                let label = label.split_whitespace().collect::<Vec<_>>().join(" ");
                let name = RENAMED.iter().find(|(old, _)| *old == label).map_or(label.clone(), |(_, new)| new.to_string());
                fields.push(field(name, value));
            }
        }
    }
    fields
}

fn is_number(value: &str) -> bool {
    value.trim_end_matches('%').parse::<f64>().is_ok()
}

#[test]
fn the_parser_reads_every_field_of_the_trtllm_bench_example() {
    let fields = parse(include_str!("data/trtllm_bench_report.txt"));
    let count = |section: &str| fields.iter().filter(|f| f.section == section).count();
    // 4 request details, 8 world settings, 7 overview lines and 7 latency percentiles, 2 dataset
    // lines and 7 rows of 3 columns.
    assert_eq!(
        [count("REQUEST DETAILS"), count("WORLD + RUNTIME INFORMATION"), count("PERFORMANCE OVERVIEW"), count("DATASET DETAILS")],
        [4, 8, 14, 23],
        "{fields:#?}"
    );
    let find = |name: &str| fields.iter().find(|f| f.name == name).map(|f| f.value.as_str());
    assert_eq!(find("Issue Rate (req/sec)"), Some("1.4117E+17"));
    assert_eq!(find("[Latency] MINIMUM"), Some("2397.1047"));
    assert_eq!(find("Seq. Length P50"), Some("427.0000"));
    assert_eq!(find("Per User Output Throughput [w/ ctx] (tps/user)"), Some("38.1959"));
}

#[test]
fn lumen_s_report_holds_every_field_of_trtllm_bench_s() {
    let example = parse(include_str!("data/trtllm_bench_report.txt"));
    let s = Scratch::new("trtllm-layout");
    let dataset = s.path("d.jsonl");
    let kind =
        ["token-norm-dist", "--num-requests", "6", "--input-mean", "20", "--input-stdev", "4", "--output-mean", "5", "--output-stdev", "2"];
    let mut args = vec!["bench", "prepare-dataset", "--model", "tiny", "--output", &dataset];
    args.extend(kind);
    lumen(&args).ok();
    for streaming in [false, true] {
        let mut args = vec!["bench", "throughput", "--model", "tiny", "--dataset", &dataset];
        if streaming {
            args.push("--streaming");
        }
        let out = lumen(&args).ok().stdout;
        let ours = parse(&out);
        for f in &example {
            let found = ours
                .iter()
                .find(|o| o.section == f.section && o.name == f.name)
                .unwrap_or_else(|| panic!("{:?} / {:?} of trtllm-bench's report is missing from lumen's:\n{out}", f.section, f.name));
            let same_kind =
                is_number(&f.value) == is_number(&found.value) || (found.value == "None" && MAY_BE_NONE.contains(&f.name.as_str()));
            assert!(same_kind, "{}: trtllm-bench prints {:?}, lumen {:?}", f.name, f.value, found.value);
        }
        // trtllm-bench's sections keep their order, and lumen's own comes after the last of them.
        let order = |fields: &[Field]| {
            let mut sections: Vec<String> = Vec::new();
            for f in fields {
                if sections.last() != Some(&f.section) {
                    sections.push(f.section.clone());
                }
            }
            sections
        };
        let theirs = order(&example);
        let ours_order = order(&ours);
        let positions: Vec<usize> =
            theirs.iter().map(|t| ours_order.iter().position(|o| o == t).unwrap_or_else(|| panic!("no section {t:?}"))).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "sections out of trtllm-bench's order: {ours_order:?}");
        let last = ours_order.last().unwrap();
        assert!(last.starts_with("LUMEN DETAILS") && last.contains("not in trtllm-bench"), "lumen's lines are not last: {ours_order:?}");
        if streaming {
            for name in ["Average time-to-first-token [TTFT] (ms)", "[TPOT] P99", "[TTFT] MINIMUM", "[GTPS] AVERAGE"] {
                assert!(
                    ours.iter().any(|o| o.section == "PERFORMANCE OVERVIEW" && o.name == name && is_number(&o.value)),
                    "{name} missing:\n{out}"
                );
            }
        }
    }
}
