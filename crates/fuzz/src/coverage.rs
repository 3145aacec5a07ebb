//! Edge coverage from LLVM SanitizerCoverage, on stable Rust.
//!
//! Built with `-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=3
//! -Cllvm-args=-sanitizer-coverage-inline-8bit-counters` (as `scripts/fuzz.sh` does), every edge
//! of the control-flow graph of every crate compiled from source gets one byte in a counter array
//! that the instrumented code increments inline; the binary's constructors hand that array to
//! [`__sanitizer_cov_8bit_counters_init`] before `main`. Built without those flags, nothing is
//! registered and [`Coverage::instrumented`] is false.
//!
//! A run is measured as: [`Coverage::clear`] the counters, run the parser, [`Coverage::take`] a
//! copy of them (a plain `memcpy`, so the scan that follows does not count itself), then
//! [`Coverage::merge`] the copy into the map of what was seen. Each edge's hit count falls into one
//! of eight buckets (1, 2, 3, 4–7, 8–15, 16–31, 32–127, 128+); a feature is an edge in a bucket, and
//! an input is interesting when it shows a feature never seen before.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Counter arrays registered; a linked binary normally has one.
const MAX_RANGES: usize = 16;

static STARTS: [AtomicPtr<u8>; MAX_RANGES] = [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_RANGES];
static LENS: [AtomicUsize; MAX_RANGES] = [const { AtomicUsize::new(0) }; MAX_RANGES];
static RANGES: AtomicUsize = AtomicUsize::new(0);

/// Called by the constructor of each instrumented module with its counter array, one byte per
/// edge. Modules linked into one binary share the array, so a range already registered is skipped.
#[no_mangle]
pub extern "C" fn __sanitizer_cov_8bit_counters_init(start: *mut u8, stop: *mut u8) {
    let len = (stop as usize).saturating_sub(start as usize);
    let count = RANGES.load(Ordering::Acquire);
    if len == 0 || count == MAX_RANGES || (0..count).any(|i| STARTS[i].load(Ordering::Relaxed) == start) {
        return;
    }
    STARTS[count].store(start, Ordering::Relaxed);
    LENS[count].store(len, Ordering::Relaxed);
    RANGES.store(count + 1, Ordering::Release);
}

/// The bucket bit of a hit count: 0 for none, then one bit each for 1, 2, 3, 4–7, 8–15, 16–31,
/// 32–127 and 128 or more (a counter wraps past 255).
const BUCKETS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut n = 1;
    while n < 256 {
        table[n] = match n {
            1 => 1,
            2 => 2,
            3 => 4,
            4..=7 => 8,
            8..=15 => 16,
            16..=31 => 32,
            32..=127 => 64,
            _ => 128,
        };
        n += 1;
    }
    table
};

/// The counters of this binary, the last run's copy of them and the features seen so far.
pub struct Coverage {
    ranges: Vec<(*mut u8, usize)>,
    last: Vec<u8>,
    seen: Vec<u8>,
}

impl Coverage {
    pub fn new() -> Coverage {
        let count = RANGES.load(Ordering::Acquire);
        let ranges: Vec<_> = (0..count).map(|i| (STARTS[i].load(Ordering::Relaxed), LENS[i].load(Ordering::Relaxed))).collect();
        let edges = ranges.iter().map(|r| r.1).sum();
        Coverage { ranges, last: vec![0; edges], seen: vec![0; edges] }
    }

    /// Whether the binary was built with the counters.
    pub fn instrumented(&self) -> bool {
        !self.last.is_empty()
    }

    /// Edges instrumented in the whole binary.
    pub fn edges(&self) -> usize {
        self.last.len()
    }

    /// Zeroes the counters before a run.
    pub fn clear(&mut self) {
        for &(start, len) in &self.ranges {
            // SAFETY: the range is the counter array the binary's constructor registered; it lives
            // as long as the program, and only instrumented code on this thread writes it.
            unsafe { std::ptr::write_bytes(start, 0, len) };
        }
    }

    /// Copies the counters after a run.
    pub fn take(&mut self) {
        let mut at = 0;
        for &(start, len) in &self.ranges {
            // SAFETY: as in `clear`.
            let counters = unsafe { std::slice::from_raw_parts(start, len) };
            self.last[at..at + len].copy_from_slice(counters);
            at += len;
        }
    }

    /// Folds the last run into the features seen; true when it showed one never seen before.
    pub fn merge(&mut self) -> bool {
        let mut new = false;
        let mut words = self.last.chunks_exact(8);
        let mut at = 0;
        for word in words.by_ref() {
            if u64::from_ne_bytes(word.try_into().unwrap()) != 0 {
                new |= fold(word, &mut self.seen[at..at + 8]);
            }
            at += 8;
        }
        new |= fold(words.remainder(), &mut self.seen[at..]);
        new
    }

    /// Edges the last run reached: how deep it went.
    pub fn depth(&self) -> usize {
        self.last.iter().filter(|&&c| c != 0).count()
    }

    /// Edges reached so far.
    pub fn reached(&self) -> usize {
        self.seen.iter().filter(|&&s| s != 0).count()
    }

    /// Features (an edge in one hit-count bucket) seen so far.
    pub fn features(&self) -> usize {
        self.seen.iter().map(|s| s.count_ones() as usize).sum()
    }

    /// Forgets the features seen, for the next target.
    pub fn forget(&mut self) {
        self.seen.fill(0);
    }
}

fn fold(counts: &[u8], seen: &mut [u8]) -> bool {
    let mut new = false;
    for (&count, seen) in counts.iter().zip(seen) {
        let bit = BUCKETS[count as usize];
        if *seen & bit != bit {
            *seen |= bit;
            new = true;
        }
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_hit_counts() {
        let expect = [(0, 0), (1, 1), (2, 2), (3, 4), (4, 8), (7, 8), (8, 16), (31, 32), (32, 64), (127, 64), (128, 128), (255, 128)];
        for (count, bit) in expect {
            assert_eq!(BUCKETS[count], bit, "count {count}");
        }
    }

    #[test]
    fn merge_reports_only_new_features() {
        let mut cov = Coverage { ranges: Vec::new(), last: vec![0; 11], seen: vec![0; 11] };
        cov.last[3] = 1;
        cov.last[10] = 5;
        assert!(cov.merge());
        assert!(!cov.merge(), "the same counts again are nothing new");
        cov.last[3] = 2;
        assert!(cov.merge(), "a new hit-count bucket of a known edge is new");
        assert_eq!((cov.reached(), cov.features()), (2, 3));
        cov.forget();
        assert_eq!(cov.reached(), 0);
    }
}
