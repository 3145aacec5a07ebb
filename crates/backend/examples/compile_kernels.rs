//! Compiles lumen's CUDA kernels with NVRTC for one architecture, without a GPU, and prints
//! ptxas's resource report: `cargo run -p lumen-backend --example compile_kernels -- sm_90a`
//! (NVRTC must be on the library path).

fn main() -> anyhow::Result<()> {
    let arch = std::env::args().nth(1).unwrap_or_else(|| "sm_90a".into());
    let nvrtc = lumen_backend::cuda::compile::nvrtc_version()?;
    let (cubin, log) = lumen_backend::cuda::compile::compile(&arch)?;
    println!("NVRTC {}.{}: {} bytes of {arch} code", nvrtc.0, nvrtc.1, cubin.len());
    for line in log.lines().filter(|l| l.contains("Compiling entry") || l.contains("Used") || l.contains("spill")) {
        println!("{line}");
    }
    Ok(())
}
