//! lumen's CUDA kernels compile with NVRTC for the H200's architecture (sm_90a) with no GPU, so a
//! kernel that no longer compiles fails here, in CI, rather than on the GPU machine; and no kernel
//! spills registers to local memory beyond the few bytes `SPILLS_ALLOWED` names. Skipped, with a
//! message, where NVRTC cannot be loaded (`scripts/setup.sh` fetches it, and `scripts/test.sh`
//! puts it on the library path).

use lumen_backend::cuda::compile::{compile, nvrtc_version};
use lumen_test_support::gpu::skip;

#[test]
fn every_kernel_compiles_for_sm_90a_within_its_spill_allowance() {
    let version = match nvrtc_version() {
        Ok(v) => v,
        Err(e) => return skip(&format!("{e:#}")),
    };
    let (cubin, log) = compile("sm_90a").unwrap_or_else(|e| panic!("NVRTC {}.{}: {e:#}", version.0, version.1));
    assert!(!cubin.is_empty());
    // The kernels in ptxas's report and their spill stores (an entry line, then its spill line).
    let mut entries = Vec::new();
    let mut spills = Vec::new();
    for line in log.lines() {
        if let Some(name) = line.split("Compiling entry function '").nth(1).and_then(|n| n.split('\'').next()) {
            entries.push(name);
        } else if let Some(bytes) =
            line.split(" bytes spill stores").next().and_then(|l| l.rsplit(' ').next()).and_then(|b| b.parse::<u32>().ok())
        {
            let entry = entries.last().copied().unwrap_or_default();
            let allowed = SPILLS_ALLOWED.iter().find(|(name, _)| *name == entry).map_or(0, |&(_, bytes)| bytes);
            if bytes > allowed {
                spills.push(format!("{entry}: {bytes} bytes of spill stores (allowed {allowed})"));
            }
        }
    }
    for kernel in ["embed_rms_norm", "attention_prefill_hd128_bf16", "sample_tokens", "gemv_fp8_k4096", "quantize_fp8"] {
        assert!(entries.contains(&kernel), "{kernel} is missing from NVRTC's report: {entries:?}");
    }
    assert!(spills.is_empty(), "kernels spill registers:\n{}", spills.join("\n"));
}

/// Kernels allowed a few spilled bytes, and how many: the head-size-128 prefill attention on
/// warp-group products at 128 registers (two blocks of 256 threads a multiprocessor), which
/// spills 52 bytes (bf16 cache) and 16 (FP8) of values that live across the step; at one block
/// a multiprocessor it needs 172 registers and spills nothing, but runs slower
/// (docs/cuda-performance.md, "Prefill attention on warp-group products").
const SPILLS_ALLOWED: [(&str, u32); 2] = [("attention_prefill_hd128_bf16", 64), ("attention_prefill_hd128_fp8", 48)];
