//! NCCL, loaded at run time like the other CUDA libraries: one communicator per GPU of this
//! process (`ncclCommInitAll`, single-process multi-device), and the collectives a
//! tensor-parallel forward pass queues on a GPU's stream: an in-place sum all-reduce and an
//! all-gather. They are ordinary stream work, so CUDA graphs capture them with the kernels around
//! them. Each rank's calls come from that rank's own thread; NCCL matches them by order.
//!
//! NVLink multicast (NVLS) stays off: `NCCL_NVLS_ENABLE=0` is set before the first communicator
//! unless the environment already sets it.

use super::device::Gpu;
use super::tensor::DType;
use anyhow::{anyhow, bail, ensure, Result};
use cudarc::nccl::result::{self as nccl, NcclError};
use cudarc::nccl::sys;
use std::ffi::CStr;

/// Whether an NCCL library can be loaded (`libnccl.so` on the loader's path).
pub fn nccl_present() -> bool {
    // SAFETY: only tries to open the library; no symbol is called.
    unsafe { sys::is_culib_present() }
}

fn describe(e: NcclError) -> String {
    // SAFETY: ncclGetErrorString returns a static string for any result code.
    let text = unsafe { CStr::from_ptr(sys::ncclGetErrorString(e.0)) };
    format!("{:?} ({})", e.0, text.to_string_lossy())
}

fn check<T>(result: std::result::Result<T, NcclError>, what: &str) -> Result<T> {
    result.map_err(|e| anyhow!("{what}: NCCL error {}", describe(e)))
}

/// The NCCL data type of `dtype`.
fn nccl_type(dtype: DType) -> Result<sys::ncclDataType_t> {
    Ok(match dtype {
        DType::Bf16 => sys::ncclDataType_t::ncclBfloat16,
        DType::F32 => sys::ncclDataType_t::ncclFloat32,
        other => bail!("NCCL collectives on {other:?} values are not used by lumen"),
    })
}

/// One rank's communicator: its place among the ranks of this process, one GPU each.
pub struct Communicator {
    comm: sys::ncclComm_t,
    pub rank: usize,
    pub ranks: usize,
}

// SAFETY: a communicator may be used from any one thread at a time; lumen gives each to its
// rank's thread.
unsafe impl Send for Communicator {}

impl Communicator {
    /// One communicator per GPU of `ordinals`, rank r on `ordinals[r]`; fails, saying how to
    /// provide it, where NCCL cannot be loaded.
    pub fn for_devices(ordinals: &[usize]) -> Result<Vec<Communicator>> {
        ensure!(!ordinals.is_empty(), "a communicator needs at least one GPU");
        if !nccl_present() {
            bail!(
                "NCCL could not be loaded: put libnccl.so on LD_LIBRARY_PATH (the nvidia-nccl-cu13 wheel ships it as \
                 libnccl.so.2; link it as libnccl.so)"
            );
        }
        if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
            std::env::set_var("NCCL_NVLS_ENABLE", "0");
        }
        let devices: Vec<i32> = ordinals.iter().map(|&o| o as i32).collect();
        let mut comms: Vec<sys::ncclComm_t> = vec![std::ptr::null_mut(); devices.len()];
        // SAFETY: `comms` has room for one handle per device in `devices`.
        check(unsafe { nccl::comm_init_all(comms.as_mut_ptr(), devices.len() as i32, devices.as_ptr()) }, "ncclCommInitAll")?;
        let ranks = comms.len();
        Ok(comms.into_iter().enumerate().map(|(rank, comm)| Communicator { comm, rank, ranks }).collect())
    }

    /// The NCCL version the library reports, as `major.minor.patch`.
    pub fn version() -> Result<String> {
        if !nccl_present() {
            bail!("NCCL could not be loaded");
        }
        let v = check(nccl::get_nccl_version(), "ncclGetVersion")?;
        Ok(format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100))
    }

    /// Queues, on `gpu`'s stream, the sum over ranks of the `count` values at `ptr`, written
    /// back in place on every rank.
    pub fn all_reduce_sum(&self, gpu: &Gpu, ptr: u64, count: usize, dtype: DType) -> Result<()> {
        let stream = gpu.stream as sys::cudaStream_t;
        let op = sys::ncclRedOp_t::ncclSum;
        let buffer = ptr as *mut std::ffi::c_void;
        // SAFETY: `ptr` holds `count` values of `dtype` on this rank's GPU, the caller's promise.
        check(unsafe { nccl::all_reduce(buffer, buffer, count, nccl_type(dtype)?, op, self.comm, stream) }, "ncclAllReduce")?;
        Ok(())
    }

    /// Queues, on `gpu`'s stream, the gather of every rank's `count` values at `send` into
    /// `recv`, rank after rank (`ranks * count` values).
    pub fn all_gather(&self, gpu: &Gpu, send: u64, recv: u64, count: usize, dtype: DType) -> Result<()> {
        let stream = gpu.stream as sys::cudaStream_t;
        let (send, recv) = (send as *const std::ffi::c_void, recv as *mut std::ffi::c_void);
        // SAFETY: `send` holds `count` values and `recv` room for `ranks * count`, the caller's promise.
        check(unsafe { nccl::all_gather(send, recv, count, nccl_type(dtype)?, self.comm, stream) }, "ncclAllGather")?;
        Ok(())
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        // SAFETY: the handle came from ncclCommInitAll and is destroyed once.
        let _ = unsafe { nccl::comm_destroy(self.comm) };
    }
}
