//! cuBLASLt speed on the decoder's shapes, on the GPU machine: for each weight shape of a model
//! and each token count, the median time of `out[t, n] = x[t, k] · w[n, k]ᵀ` over repeated runs
//! (CUDA events), with the achieved bandwidth and FLOP rate: the heuristic's first algorithm
//! (`cublaslt`), the fastest of its candidates (`cublaslt#i`, the i-th), and the GEMV kernel.
//! `gemm_speed [hidden intermediate q_dim kv_dim vocab]` (default: Llama-3.1-8B).

use lumen_backend::cuda::kernels::GEMV_MAX_TOKENS;
use lumen_backend::cuda::{DType, Gemm, Gpu, Kernels};

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("sizes are integers")).collect();
    let [h, f, qd, kd, vocab] =
        if args.len() == 5 { [args[0], args[1], args[2], args[3], args[4]] } else { [4096, 14336, 4096, 1024, 128256] };
    let gpu = Gpu::open(0)?;
    let mut gemm = Gemm::new(&gpu, false)?;
    let kernels = Kernels::load(&gpu)?;
    println!("{} | bf16, median of 30 runs", gpu.info.name);
    println!("{:>20} {:>5} {:>9} {:>8} {:>9}", "shape (n x k)", "t", "time us", "GB/s", "TFLOP/s");
    let shapes = [("qkv", qd + 2 * kd, h), ("o", h, qd), ("gate_up", 2 * f, h), ("down", h, f), ("lm_head", vocab, h)];
    for (name, n, k) in shapes {
        let w = gpu.upload(
            &(0..n * k).map(|i| lumen_backend::cuda::to_bf16(((i * 7919 % 1000) as f32 - 500.0) / 5000.0)).collect::<Vec<u16>>(),
            "w",
        )?;
        for t in [1usize, 2, 4, 16, 256, 512, 1024] {
            let x = gpu.upload(
                &(0..t * k).map(|i| lumen_backend::cuda::to_bf16(((i * 31 % 100) as f32 - 50.0) / 50.0)).collect::<Vec<u16>>(),
                "x",
            )?;
            let out = gpu.alloc(t * n * 2, "out")?;
            let (x, w, out) = (x.tensor(DType::Bf16, t, k), w.tensor(DType::Bf16, n, k), out.tensor(DType::Bf16, t, n));
            let mut candidates = Vec::new();
            for index in 0..gemm.algorithms(t, n, k, DType::Bf16, DType::Bf16)? {
                gemm.use_algorithm(t, n, k, DType::Bf16, DType::Bf16, index)?;
                candidates.push(gpu.median_ms(3, 30, || gemm.matmul(&gpu, x, w, out))?);
            }
            let fastest = (0..candidates.len()).min_by(|&a, &b| candidates[a].total_cmp(&candidates[b])).unwrap_or(0);
            gemm.use_algorithm(t, n, k, DType::Bf16, DType::Bf16, 0)?;
            for engine in ["cublaslt".to_string(), format!("cublaslt#{fastest}"), "gemv".to_string()] {
                if engine == "gemv" && t > GEMV_MAX_TOKENS {
                    continue;
                }
                let ms = match engine.as_str() {
                    "gemv" => gpu.median_ms(3, 30, || kernels.gemv(&gpu, x, w, out))?,
                    "cublaslt" => candidates[0],
                    _ => candidates[fastest],
                };
                let bytes = (n * k + t * k + t * n) * 2;
                println!(
                    "{:>20} {t:>5} {:>9.1} {:>8.0} {:>9.1}",
                    format!("{name} {n}x{k} {engine}"),
                    ms * 1e3,
                    bytes as f64 / ms / 1e6,
                    2.0 * (n * k * t) as f64 / ms / 1e9
                );
            }
        }
    }
    Ok(())
}
