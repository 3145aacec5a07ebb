//! Where lumen writes, and how: the checks every output path passes before a command does any
//! work ([`check_outputs`]), and replacement through a temporary file beside the target
//! ([`AtomicFile`], [`write_atomically`]), so that a failure leaves an existing file whole.
//!
//! Terminal output never panics either: [`status!`](crate::status) writes a line to standard
//! error and drops it when standard error cannot take it (closed, or a full disk), and
//! [`print_report`] names standard output in its error.
//!
//! An output is refused when it is empty or names a directory, when it exists and is not a
//! regular file (a device, a FIFO, a directory), and when it is the same file as one of the
//! command's inputs or another of its outputs.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Writes a line to standard error, as `eprintln!` does, but never panics: when standard error
/// cannot be written (closed, or a full disk) the line is dropped and the work goes on.
#[macro_export]
macro_rules! status {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Writes a report to standard output; the error says standard output could not take it.
pub fn print_report(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|_| out.flush()).context("cannot write the report to standard output")
}

/// A path a command reads or writes, with the option or argument that named it.
#[derive(Debug, Clone, Copy)]
pub struct Named<'a> {
    pub what: &'a str,
    pub path: &'a Path,
}

impl<'a> Named<'a> {
    pub fn new(what: &'a str, path: &'a Path) -> Self {
        Named { what, path }
    }
}

/// The device and inode of an existing file, which identify it whatever path names it.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The absolute place a path names, its directory resolved, whether or not the file exists yet.
fn location(path: &Path) -> Option<PathBuf> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some(parent.canonicalize().ok()?.join(path.file_name()?))
}

/// Whether two paths name one file: the same existing file, or the same place.
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    match (identity(a), identity(b)) {
        (Some(x), Some(y)) => x == y,
        _ => location(a).is_some_and(|l| location(b) == Some(l)),
    }
}

/// Checks each of `outputs` as the module says, against `inputs` and against the outputs before
/// it. The error names the option and the path.
pub fn check_outputs(outputs: &[Named], inputs: &[Named]) -> Result<()> {
    for (i, out) in outputs.iter().enumerate() {
        let shown = out.path.display();
        let text = out.path.as_os_str().to_string_lossy();
        if text.is_empty() {
            bail!("{} is empty; expected the path of a file to write", out.what);
        }
        if text.ends_with('/') {
            bail!("{} {shown} names a directory; expected the path of a file to write", out.what);
        }
        if let Ok(meta) = std::fs::metadata(out.path) {
            let kind = meta.file_type();
            let odd = if kind.is_dir() {
                Some("a directory")
            } else if kind.is_fifo() {
                Some("a FIFO")
            } else if kind.is_char_device() || kind.is_block_device() {
                Some("a device")
            } else if kind.is_socket() {
                Some("a socket")
            } else {
                None
            };
            if let Some(odd) = odd {
                bail!("{} {shown} is {odd}, not a regular file; lumen writes only regular files", out.what);
            }
        }
        for other in inputs.iter().chain(&outputs[..i]) {
            if same_file(out.path, other.path) {
                bail!("{} {shown} is the same file as {} {}; refusing to overwrite it", out.what, other.what, other.path.display());
            }
        }
    }
    Ok(())
}

/// A file written beside its target and renamed over it by [`AtomicFile::commit`]; dropped
/// without a commit, it removes itself and leaves the target as it was.
pub struct AtomicFile {
    target: PathBuf,
    temporary: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(target: &Path) -> Result<Self> {
        let name = target.file_name().with_context(|| format!("{} has no file name", target.display()))?;
        let temporary = target.with_file_name(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
        let file =
            File::create(&temporary).with_context(|| format!("cannot create {} (beside {})", temporary.display(), target.display()))?;
        Ok(AtomicFile { target: target.to_path_buf(), temporary, writer: Some(BufWriter::new(file)) })
    }

    /// Flushes the file to disk and renames it over the target.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("a file is committed once");
        let file = writer.into_inner().map_err(|e| e.into_error()).with_context(|| format!("cannot write {}", self.target.display()))?;
        file.sync_all().with_context(|| format!("cannot write {}", self.target.display()))?;
        std::fs::rename(&self.temporary, &self.target).with_context(|| format!("cannot replace {}", self.target.display()))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.as_mut().expect("not yet committed").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.as_mut().expect("not yet committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Writes `bytes` to `path` through an [`AtomicFile`].
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lumen-output-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn outputs_that_are_inputs_directories_or_special_files_are_refused() {
        let dir = scratch("check");
        let input = dir.join("data.jsonl");
        std::fs::write(&input, "x").unwrap();
        let e = check_outputs(&[Named::new("--json", &input)], &[Named::new("TRACE", &input)]).unwrap_err().to_string();
        assert!(e.contains("--json") && e.contains("same file as TRACE"), "{e}");
        let aliased = dir.join("sub/../data.jsonl");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        assert!(check_outputs(&[Named::new("-o", &aliased)], &[Named::new("TRACE", &input)]).is_err(), "another path to the same file");
        let out = dir.join("out.json");
        std::fs::write(&out, "old").unwrap();
        let e = check_outputs(&[Named::new("--json", &out), Named::new("--html", &out)], &[]).unwrap_err().to_string();
        assert!(e.contains("--html") && e.contains("same file as --json"), "{e}");
        let fresh = dir.join("fresh.json");
        let e = check_outputs(&[Named::new("--report-json", &fresh), Named::new("--iteration-log", &dir.join("sub/../fresh.json"))], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("same file as --report-json"), "two outputs not yet written: {e}");
        assert!(check_outputs(&[Named::new("--json", &out), Named::new("--html", &dir.join("new.html"))], &[Named::new("TRACE", &input)])
            .is_ok());
        let e = check_outputs(&[Named::new("-o", &dir)], &[]).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = check_outputs(&[Named::new("LUMEN_TRACE", Path::new("somewhere/"))], &[]).unwrap_err().to_string();
        assert!(e.contains("names a directory"), "{e}");
        let e = check_outputs(&[Named::new("LUMEN_TRACE", Path::new(""))], &[]).unwrap_err().to_string();
        assert!(e.contains("LUMEN_TRACE is empty"), "{e}");
        let e = check_outputs(&[Named::new("-o", Path::new("/dev/null"))], &[]).unwrap_err().to_string();
        assert!(e.contains("is a device"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_uncommitted_file_leaves_the_target_whole() {
        let dir = scratch("atomic");
        let target = dir.join("report.json");
        std::fs::write(&target, "old").unwrap();
        {
            let mut f = AtomicFile::create(&target).unwrap();
            f.write_all(b"half of a new report").unwrap();
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "the temporary file is gone");
        write_atomically(&target, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
