//! lumen's CUDA kernels compile with NVRTC for the H200's architecture (sm_90a) with no GPU, so a
//! kernel that no longer compiles fails here, in CI, rather than on the GPU machine; and no kernel
//! spills registers to local memory. Skipped, with a message, where NVRTC cannot be loaded
//! (`scripts/setup.sh` fetches it, and `scripts/test.sh` puts it on the library path).

use lumen_backend::cuda::compile::{compile, nvrtc_version};
use lumen_test_support::gpu::skip;

#[test]
fn every_kernel_compiles_for_sm_90a_without_spills() {
    let version = match nvrtc_version() {
        Ok(v) => v,
        Err(e) => return skip(&format!("{e:#}")),
    };
    let (cubin, log) = compile("sm_90a").unwrap_or_else(|e| panic!("NVRTC {}.{}: {e:#}", version.0, version.1));
    assert!(!cubin.is_empty());
    let entries: Vec<&str> = log.lines().filter_map(|l| l.split("Compiling entry function '").nth(1)?.split('\'').next()).collect();
    for kernel in ["embed_rms_norm", "attention_prefill_hd128_bf16", "sample_tokens", "gemv_fp8", "quantize_fp8"] {
        assert!(entries.contains(&kernel), "{kernel} is missing from NVRTC's report: {entries:?}");
    }
    let spills: Vec<&str> =
        log.lines().filter(|l| l.contains("spill") && !l.contains(" 0 bytes spill stores, 0 bytes spill loads")).collect();
    assert!(spills.is_empty(), "kernels spill registers:\n{}", spills.join("\n"));
}
