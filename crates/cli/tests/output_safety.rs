//! lumen never destroys a user's file: an output that is one of the command's inputs, or that
//! exists and is not a regular file (a FIFO stands in for devices here), or that is empty or
//! names a directory, is refused before any work, and the file is left exactly as it was.

mod common;

use common::{fixed_length_dataset, lumen, lumen_env, Scratch};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// A small real trace written by `lumen generate --trace`.
fn trace(s: &Scratch) -> String {
    let path = s.path("t.lumen");
    lumen(&["generate", "--model", "tiny", "--prompt-ids", "1,2,3", "--max-tokens", "3", "--trace", &path]).ok();
    path
}

fn fifo(s: &Scratch, name: &str) -> String {
    let path = s.path(name);
    let c = std::ffi::CString::new(path.clone()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {path}");
    path
}

fn assert_fifo(path: &str) {
    let kind = std::fs::metadata(path).expect("the FIFO is still there").file_type();
    assert!(kind.is_fifo(), "{path} was replaced");
}

#[test]
fn a_trace_is_never_its_own_export_or_report() {
    let s = Scratch::new("out-trace");
    let t = trace(&s);
    let before = std::fs::read(&t).unwrap();
    lumen(&["trace", "export", &t, "--format", "chrome", "-o", &t]).fails_with(1, &["-o", "same file as TRACE"]);
    lumen(&["analyze", &t, "--json", &t]).fails_with(1, &["--json", "same file as TRACE"]);
    lumen(&["analyze", &t, "--html", &t]).fails_with(1, &["--html", "same file as TRACE"]);
    lumen(&["trace", "merge", "-o", &t, &t]).fails_with(1, &["-o", "same file as input"]);
    let json = s.write("k.json", "{\"traceEvents\": []}");
    lumen(&["trace", "import", &json, "-o", &json]).fails_with(1, &["-o", "same file as INPUT"]);
    assert_eq!(std::fs::read(&t).unwrap(), before, "the trace changed");
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "{\"traceEvents\": []}");
}

#[test]
fn a_dataset_is_never_a_benchmark_output() {
    let s = Scratch::new("out-dataset");
    let data = fixed_length_dataset(&s, "tiny", "2", "8", "2");
    let before = std::fs::read(&data).unwrap();
    let bench = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["bench", "throughput", "--model", "tiny", "--dataset", &data];
        args.extend_from_slice(extra);
        lumen_env(&args, env)
    };
    bench(&[], &[("LUMEN_TRACE", &data)]).fails_with(1, &["LUMEN_TRACE", "same file as --dataset"]);
    bench(&["--trace", &data], &[]).fails_with(1, &["--trace", "same file as --dataset"]);
    bench(&["--iteration-log", &data], &[]).fails_with(1, &["--iteration-log", "same file as --dataset"]);
    bench(&["--report-json", &data], &[]).fails_with(1, &["--report-json", "same file as --dataset"]);
    let out = s.path("out.json");
    bench(&["--report-json", &out, "--iteration-log", &out], &[]).fails_with(1, &["--iteration-log", "same file as --report-json"]);
    assert_eq!(std::fs::read(&data).unwrap(), before, "the dataset changed");
    assert!(!Path::new(&out).exists(), "nothing was written");
}

#[test]
fn special_files_empty_paths_and_directories_are_refused() {
    let s = Scratch::new("out-special");
    let t = trace(&s);
    let pipe = fifo(&s, "pipe");
    let generate = |env: &[(&str, &str)]| lumen_env(&["generate", "--model", "tiny", "--prompt-ids", "1,2", "--max-tokens", "2"], env);
    generate(&[("LUMEN_TRACE", &pipe)]).fails_with(1, &["LUMEN_TRACE", "is a FIFO, not a regular file"]);
    lumen(&["trace", "merge", "-o", &pipe, &t]).fails_with(1, &["-o", "is a FIFO"]);
    lumen(&["trace", "export", &t, "--format", "perfetto", "-o", &pipe]).fails_with(1, &["-o", "is a FIFO"]);
    lumen(&["analyze", &t, "--json", &pipe]).fails_with(1, &["--json", "is a FIFO"]);
    assert_fifo(&pipe);
    generate(&[("LUMEN_TRACE", "")]).fails_with(1, &["LUMEN_TRACE is empty"]);
    let dir_shaped = format!("{}/", s.path("traces"));
    generate(&[("LUMEN_TRACE", &dir_shaped)]).fails_with(1, &["LUMEN_TRACE", "names a directory"]);
    assert!(!Path::new(&s.path("traces")).exists(), "no file named after the directory");
    let dir = s.path("adir");
    std::fs::create_dir(&dir).unwrap();
    lumen(&["analyze", &t, "--html", &dir]).fails_with(1, &["--html", "is a directory"]);
    assert!(Path::new(&dir).is_dir());
}

#[test]
fn a_report_replaces_an_old_one_whole() {
    let s = Scratch::new("out-replace");
    let t = trace(&s);
    let json = s.write("analysis.json", "old");
    lumen(&["analyze", &t, "--json", &json]).ok();
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("a whole JSON report");
    assert!(v.get("diagnosis").is_some());
    let names: Vec<String> = std::fs::read_dir(&s.dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "no temporary file is left: {names:?}");
}

/// Runs `lumen args` with standard output or standard error on `/dev/full`, where every write
/// fails with "no space left on device"; returns the exit status and the other stream.
fn with_full_stream(args: &[&str], full_stdout: bool) -> (Option<i32>, String) {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full exists on Linux");
    let mut cmd = std::process::Command::new(common::lumen_bin());
    cmd.args(args).env_remove("LUMEN_MODEL");
    if full_stdout {
        cmd.stdout(full).stderr(std::process::Stdio::piped());
    } else {
        cmd.stderr(full).stdout(std::process::Stdio::piped());
    }
    let out = cmd.output().expect("lumen starts");
    let other = if full_stdout { out.stderr } else { out.stdout };
    (out.status.code(), String::from_utf8_lossy(&other).into_owned())
}

#[test]
fn a_full_disk_behind_stdout_or_stderr_is_an_error_not_a_panic() {
    let s = Scratch::new("out-full");
    let t = trace(&s);
    let (code, stderr) = with_full_stream(&["analyze", &t], true);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot write the report to standard output") && !stderr.contains("panicked"), "{stderr}");
    let (code, stderr) = with_full_stream(&["trace", "info", &t], true);
    assert!(code == Some(1) && stderr.contains("standard output") && !stderr.contains("panicked"), "{stderr}");
    let (code, stderr) = with_full_stream(&["generate", "--model", "tiny-untied", "--prompt-ids", "1,2,3", "--max-tokens", "3"], true);
    assert!(code == Some(1) && stderr.contains("cannot write the answer to standard output"), "{stderr}");
    let (code, stdout) = with_full_stream(&["generate", "--model", "tiny-untied", "--prompt-ids", "1,2,3", "--max-tokens", "3"], false);
    assert_eq!(code, Some(0), "a full standard error does not stop the work");
    assert_eq!(stdout.trim().split(',').count(), 3, "the answer still arrives: {stdout}");
    let data = fixed_length_dataset(&s, "tiny", "2", "8", "2");
    let (code, stdout) = with_full_stream(&["bench", "throughput", "--model", "tiny", "--dataset", &data], false);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("Total Output Throughput"), "{stdout}");
}
