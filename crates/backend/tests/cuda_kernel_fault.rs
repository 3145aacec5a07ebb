//! A fault inside a CUDA kernel is reported with the kernel's name, never as a silent wrong
//! answer. Runs on the GPU machine (skipped without a GPU, failing instead under `LUMEN_REQUIRE_GPU=1`); its own process, because a fault
//! leaves the CUDA context unusable.

use lumen_backend::cuda::{Gpu, Kernels};

#[test]
fn a_trapping_kernel_is_named_in_the_error() {
    let Some(gpu) = lumen_test_support::gpu::device_or_skip(Gpu::open(0)) else { return };
    let mut kernels = Kernels::load(&gpu).unwrap();
    kernels.set_sync_each_launch(true);
    let (vocab, hidden) = (64usize, 32usize);
    let embed = gpu.upload(&vec![0x3f80u16; vocab * hidden], "embedding").unwrap();
    let weight = gpu.upload(&vec![0x3f80u16; hidden], "norm").unwrap();
    let residual = gpu.alloc(2 * hidden * 4, "residual").unwrap();
    let normed = gpu.alloc(2 * hidden * 2, "normed").unwrap();
    let good = gpu.upload(&[3u32, 63], "tokens").unwrap();
    kernels
        .embed_rms_norm(&gpu, good.ptr, 0, 2, embed.ptr, weight.ptr, 1e-5, hidden, vocab, residual.ptr, normed.ptr, Default::default())
        .unwrap();
    let bad = gpu.upload(&[3u32, vocab as u32 + 5], "tokens").unwrap();
    let err = kernels
        .embed_rms_norm(&gpu, bad.ptr, 0, 2, embed.ptr, weight.ptr, 1e-5, hidden, vocab, residual.ptr, normed.ptr, Default::default())
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("embed_rms_norm"), "the error names the kernel: {text}");
    assert!(text.contains("CUDA_ERROR"), "the error carries the CUDA error: {text}");
}
