//! Run-time compilation of lumen's CUDA C++ (the `.cu` files under `kernels/`) with NVRTC, for
//! the device's own architecture (sm_90a on Hopper), cached on disk under a key made of the
//! source hash, the architecture and the NVRTC version, then loaded as one module.

use super::device::{describe, DriverContext, Gpu};
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{result as cu, sys};
use cudarc::nvrtc::{result as rtc, sys as rtc_sys};
use std::ffi::{c_char, CString};
use std::io::Write;
use std::path::PathBuf;

/// The kernel sources, in compilation order.
pub const SOURCES: [(&str, &str); 13] = [
    ("prelude.cu", include_str!("kernels/prelude.cu")),
    ("elementwise.cu", include_str!("kernels/elementwise.cu")),
    ("attention.cu", include_str!("kernels/attention.cu")),
    ("attention_prefill.cu", include_str!("kernels/attention_prefill.cu")),
    ("attention_decode.cu", include_str!("kernels/attention_decode.cu")),
    ("sampling.cu", include_str!("kernels/sampling.cu")),
    ("gemv.cu", include_str!("kernels/gemv.cu")),
    ("fill.cu", include_str!("kernels/fill.cu")),
    ("fp8.cu", include_str!("kernels/fp8.cu")),
    ("moe.cu", include_str!("kernels/moe.cu")),
    ("moe_experts.cu", include_str!("kernels/moe_experts.cu")),
    ("moe_decode.cu", include_str!("kernels/moe_decode.cu")),
    ("mla.cu", include_str!("kernels/mla.cu")),
];

/// A loaded module.
pub struct Module {
    module: sys::CUmodule,
}

unsafe impl Send for Module {}
unsafe impl Sync for Module {}

impl Module {
    pub fn function(&self, name: &str) -> Result<sys::CUfunction> {
        let c = CString::new(name).expect("kernel names have no NUL");
        unsafe { cu::module::get_function(self.module, c) }.cuda(|| format!("kernel {name} is missing from the compiled module"))
    }

    /// Writes `value` into the module's `__constant__ int` named `name`, before any launch reads it.
    pub fn set_constant_i32(&self, name: &str, value: i32) -> Result<()> {
        let c = CString::new(name).expect("constant names have no NUL");
        let (ptr, bytes) =
            unsafe { cu::module::get_global(self.module, c) }.cuda(|| format!("constant {name} is missing from the compiled module"))?;
        if bytes != std::mem::size_of::<i32>() {
            bail!("constant {name} holds {bytes} bytes, not an int's 4");
        }
        unsafe { cu::memcpy_htod_sync(ptr, &[value]) }.cuda(|| format!("writing constant {name}"))
    }
}

/// The architecture NVRTC compiles for: `sm_90a` on compute capability 9.0 (Hopper's
/// architecture-specific instructions), `sm_XY` elsewhere.
pub fn arch_for(cc: (i32, i32)) -> String {
    if cc == (9, 0) {
        "sm_90a".into()
    } else {
        format!("sm_{}{}", cc.0, cc.1)
    }
}

pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !unsafe { rtc_sys::is_culib_present() } {
        bail!("NVRTC (libnvrtc.so) could not be loaded; lumen compiles its CUDA kernels at run time and needs it (set LD_LIBRARY_PATH to the CUDA toolkit's lib directory)");
    }
    let (mut major, mut minor) = (0, 0);
    unsafe { rtc_sys::nvrtcVersion(&mut major, &mut minor) }.result().map_err(|e| anyhow!("nvrtcVersion: {e:?}"))?;
    Ok((major, minor))
}

fn fnv1a64(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(seed, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// `$LUMEN_CACHE_DIR`, else `$XDG_CACHE_HOME/lumen`, else `~/.cache/lumen`, else the temp dir.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LUMEN_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("lumen");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/lumen"),
        None => std::env::temp_dir().join("lumen-cache"),
    }
}

/// The cache file for these sources, this architecture and this NVRTC.
pub fn cache_path(arch: &str, nvrtc: (i32, i32)) -> PathBuf {
    let mut h = 0xcbf29ce484222325u64;
    for (name, text) in SOURCES {
        h = fnv1a64(name.as_bytes(), h);
        h = fnv1a64(text.as_bytes(), h);
    }
    h = fnv1a64(format!("{arch} nvrtc {}.{}", nvrtc.0, nvrtc.1).as_bytes(), h);
    cache_dir().join("kernels").join(format!("{h:016x}-{arch}.cubin"))
}

/// Compiles the kernels for `arch` (no GPU needed, only NVRTC); returns the cubin and NVRTC's
/// log, which holds ptxas's resource report (registers, spills, shared memory) per kernel.
pub fn compile(arch: &str) -> Result<(Vec<u8>, String)> {
    let source: String = SOURCES.iter().map(|(name, text)| format!("// ---- {name}\n{text}\n")).collect();
    let src = CString::new(source).expect("sources have no NUL");
    let prog = rtc::create_program(&src, Some(c"lumen_kernels.cu")).map_err(|e| anyhow!("nvrtcCreateProgram: {e:?}"))?;
    let options = [format!("--gpu-architecture={arch}"), "--std=c++17".into(), "-default-device".into(), "--ptxas-options=-v".into()];
    let compiled = unsafe { rtc::compile_program(prog, &options) };
    let log = unsafe { rtc::get_program_log(prog) }.map(|l| chars_to_string(&l)).unwrap_or_default();
    if let Err(e) = compiled {
        unsafe {
            let _ = rtc::destroy_program(prog);
        }
        bail!("NVRTC could not compile lumen's kernels for {arch} ({e:?}):\n{log}");
    }
    let mut size = 0usize;
    unsafe { rtc_sys::nvrtcGetCUBINSize(prog, &mut size) }.result().map_err(|e| anyhow!("nvrtcGetCUBINSize: {e:?}"))?;
    let mut cubin = vec![0u8; size];
    unsafe { rtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char) }.result().map_err(|e| anyhow!("nvrtcGetCUBIN: {e:?}"))?;
    unsafe {
        let _ = rtc::destroy_program(prog);
    }
    Ok((cubin, log))
}

fn chars_to_string(c: &[c_char]) -> String {
    let bytes: Vec<u8> = c.iter().take_while(|&&b| b != 0).map(|&b| b as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Loads lumen's kernels for `gpu`, from the disk cache when it holds them, else compiling and
/// caching them.
pub fn load_kernels(gpu: &Gpu) -> Result<Module> {
    gpu.bind()?;
    let arch = arch_for(gpu.info.compute_capability);
    let nvrtc = nvrtc_version()?;
    let path = cache_path(&arch, nvrtc);
    let (cubin, origin) = match std::fs::read(&path) {
        Ok(bytes) if !bytes.is_empty() => (bytes, path.display().to_string()),
        _ => {
            let (cubin, _) = compile(&arch)?;
            let written = path.parent().map(std::fs::create_dir_all).transpose().and_then(|_| {
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, &cubin)?;
                std::fs::rename(&tmp, &path)
            });
            if let Err(e) = written {
                // A full or closed standard error must not stop the compile.
                let _ = writeln!(std::io::stderr(), "[lumen] kernel cache {} not written: {e}", path.display());
            }
            (cubin, "compiled".to_string())
        }
    };
    let module = unsafe { cu::module::load_data(cubin.as_ptr() as *const _) }
        .map_err(|e| anyhow!("cannot load the kernel module for {arch} from {origin}: CUDA error {}", describe(e)))
        .context("a stale cache file can be removed safely")?;
    Ok(Module { module })
}
