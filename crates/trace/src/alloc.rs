//! Host-allocation accounting, lumen's counterpart of TensorRT-LLM's garbage-collector markers: a
//! global allocator that counts allocations, frees and bytes, and, while allocation recording is
//! on, times each allocation and records a range around those slower than a threshold.
//!
//! The binary installs it with `#[global_allocator]`; counting costs two relaxed atomic adds per
//! call, and timing happens only while the `alloc` category is recorded.

use crate::instrument::{self, Category};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// Allocations slower than this get a range of their own.
pub const SLOW_ALLOCATION_NS: u64 = 50_000;

/// Totals since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AllocTotals {
    pub allocations: u64,
    pub frees: u64,
    pub bytes: u64,
}

impl AllocTotals {
    pub fn now() -> Self {
        AllocTotals {
            allocations: ALLOCATIONS.load(Ordering::Relaxed),
            frees: FREES.load(Ordering::Relaxed),
            bytes: BYTES.load(Ordering::Relaxed),
        }
    }

    /// Both counts together (two stretches of work measured apart).
    pub fn plus(self, other: AllocTotals) -> AllocTotals {
        AllocTotals { allocations: self.allocations + other.allocations, frees: self.frees + other.frees, bytes: self.bytes + other.bytes }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: AllocTotals) -> AllocTotals {
        AllocTotals {
            allocations: self.allocations - earlier.allocations,
            frees: self.frees - earlier.frees,
            bytes: self.bytes - earlier.bytes,
        }
    }
}

/// The system allocator with counting and slow-allocation ranges.
pub struct CountingAllocator;

impl CountingAllocator {
    #[inline]
    fn timed<T>(&self, size: usize, f: impl FnOnce() -> T) -> T {
        if cfg!(feature = "no-spans") {
            return f();
        }
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
        if !instrument::category_enabled(Category::Alloc) || instrument::in_recorder() {
            return f();
        }
        let start = crate::now_ns();
        let out = f();
        let elapsed = crate::now_ns() - start;
        if elapsed >= SLOW_ALLOCATION_NS {
            instrument::record_span(Category::Alloc, "slow allocation", start, start + elapsed, Some(format!("{{\"bytes\":{size}}}")));
        }
        out
    }
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.timed(layout.size(), || System.alloc(layout))
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.timed(layout.size(), || System.alloc_zeroed(layout))
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.timed(new_size, || System.realloc(ptr, layout, new_size))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !cfg!(feature = "no-spans") {
            FREES.fetch_add(1, Ordering::Relaxed);
        }
        System.dealloc(ptr, layout)
    }
}
