//! CUPTI results as errors, for the injected collector and PM sampling alike.

use anyhow::{bail, Result};
use cudarc::cupti::sys;
use std::ffi::{c_char, CStr};

/// `Ok` for `CUPTI_SUCCESS`; otherwise an error naming `what` with CUPTI's own description, or,
/// for missing rights to the profiling counters, how to get them.
pub(crate) fn check(r: sys::CUptiResult, what: &str) -> Result<()> {
    match r {
        sys::CUptiResult::CUPTI_SUCCESS => Ok(()),
        sys::CUptiResult::CUPTI_ERROR_INSUFFICIENT_PRIVILEGES => bail!(
            "{what}: profiling counters need admin rights (run as root, or load the NVIDIA driver with NVreg_RestrictProfilingToAdminUsers=0)"
        ),
        _ => {
            let mut text: *const c_char = std::ptr::null();
            // SAFETY: CUPTI points `text` at a static string, or leaves it null.
            let text = unsafe {
                sys::cuptiGetResultString(r, &mut text);
                if text.is_null() { format!("{r:?}") } else { CStr::from_ptr(text).to_string_lossy().into_owned() }
            };
            bail!("{what} failed: {text}")
        }
    }
}
