//! Scratch directories: one per test, unique within the run, removed when dropped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A scratch directory unique to one test, removed when dropped.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    /// Creates a fresh directory under the system's temporary directory, named after `test`, the
    /// process and a counter, so that no two scratch directories of one run share it.
    pub fn new(test: &str) -> Scratch {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("lumen-test-{}-{test}-{n}", std::process::id()));
        // A leftover from an earlier run with the same pid may be there; it is ours to replace.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cannot create the scratch directory");
        Scratch { dir }
    }

    /// Path of `name` inside the directory, as a string for command lines.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("temp paths are UTF-8").to_string()
    }

    /// Writes `contents` to `name` and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        let p = self.path(name);
        std::fs::write(&p, contents).expect("cannot write a scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scratch_directory_is_its_own_and_goes_away_on_drop() {
        let (a, b) = (Scratch::new("same"), Scratch::new("same"));
        assert_ne!(a.dir, b.dir);
        let file = a.write("note.txt", "hello");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello");
        let dir = a.dir.clone();
        drop(a);
        assert!(!dir.exists() && b.dir.exists());
    }
}
