//! The CPU backend: f32 kernels for the llama-family decoder.
//!
//! Each kernel's result for one token depends only on that token's inputs, never on the batch it
//! was computed in: reductions run in a fixed order and parallelism only splits independent
//! outputs. This makes greedy decoding batch-invariant, which the engine's tests rely on.

pub mod attention;
pub mod kv;
pub mod matmul;
pub mod norm;
pub mod rope;

pub use attention::{paged_attention, LayerAttention};
pub use matmul::{matmul, PackedMatrix};
pub use norm::{add_rms_norm, rms_norm, rms_norm_heads, silu_mul};
pub use rope::{apply_rope, RopeTable};

/// Bytes of memory the operating system reports as available (`MemAvailable`), where it says.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
}

/// Fails when `bytes` of host memory for `what` exceed what is available.
pub fn ensure_fits_in_memory(bytes: u64, what: &str) -> anyhow::Result<()> {
    match available_memory() {
        Some(avail) if bytes >= avail => Err(anyhow::anyhow!(
            "{what} needs {:.1} GiB, more than the {:.1} GiB of available memory",
            bytes as f64 / (1u64 << 30) as f64,
            avail as f64 / (1u64 << 30) as f64
        )),
        _ => Ok(()),
    }
}

/// A raw pointer that rayon tasks may share when each writes a disjoint part of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(*mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    pub(crate) fn new(buffer: &mut [f32]) -> SharedMut {
        SharedMut(buffer.as_mut_ptr())
    }

    /// The `len` values from `offset` on, as the one task that writes them.
    ///
    /// # Safety
    /// The range lies inside the buffer, and no other task touches it while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}
