//! The decode products of a dense model's layers chained as a batch-1 step runs them, on the GPU
//! machine: per layer the QKV product, the output projection, the fused gate/up product with its
//! SwiGLU and the down product, over enough layers that the weights do not stay in L2, once through
//! the GEMV kernels (`gemv`, `gemv_fp8`) and once through cuBLASLt (an FP8 weight's activations
//! quantized first, the SwiGLU its own launch), for bf16 and FP8 weights and 1 to 4 tokens. Prints
//! the median time a layer over repeated chains (CUDA events) and the weights' bytes over it; then
//! each shape's products alone, chained over the layers, by both.
//! `gemv_speed [hidden intermediate q_dim kv_dim layers]` (default: Llama-3.1-8B, 8 layers).

use lumen_backend::cuda::kernels::GEMV_MAX_TOKENS;
use lumen_backend::cuda::{DType, DeviceBuffer, Gpu, Kernels, Linear, Tensor};

/// One layer's four weights, as (name, rows, cols).
fn layer_shapes(h: usize, f: usize, qd: usize, kd: usize) -> [(&'static str, usize, usize); 4] {
    [("qkv", qd + 2 * kd, h), ("o", h, qd), ("gate_up", 2 * f, h), ("down", h, f)]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("sizes are integers")).collect();
    let [h, f, qd, kd, layers] = if args.len() == 5 { [args[0], args[1], args[2], args[3], args[4]] } else { [4096, 14336, 4096, 1024, 8] };
    let gpu = Gpu::open(0)?;
    let kernels = Kernels::load(&gpu)?;
    let shapes = layer_shapes(h, f, qd, kd);
    let widest = shapes.iter().map(|s| s.1.max(s.2)).max().unwrap_or(0);
    let x = gpu.alloc(GEMV_MAX_TOKENS * widest * 2, "activations")?;
    let y = gpu.alloc(GEMV_MAX_TOKENS * widest * 2, "outputs")?;
    let scratch = gpu.alloc(GEMV_MAX_TOKENS * 2 * f * 2, "gate/up outputs")?;
    let activated = gpu.alloc(GEMV_MAX_TOKENS * f * 2, "SwiGLU outputs")?;
    // bf16 1/64 everywhere; E4M3 0x30 is 0.5, its weights' scale 1/64.
    gpu.fill(x.ptr, 0x3c, x.bytes)?;
    let w_scale = gpu.upload(&[1.0f32 / 64.0], "weight scale")?;
    println!("{} | {layers} layers of {shapes:?}, median of 20 chains", gpu.info.name);
    println!("{:>6} {:>3} {:>10} {:>12} {:>8}", "weights", "t", "engine", "us a layer", "GB/s");
    for dtype in [DType::Bf16, DType::Fp8E4M3] {
        let weights: Vec<Vec<(DeviceBuffer, Tensor)>> = (0..layers)
            .map(|_| {
                shapes
                    .iter()
                    .map(|&(name, rows, cols)| {
                        let buffer = gpu.alloc(rows * cols * dtype.size(), name)?;
                        gpu.fill(buffer.ptr, if dtype == DType::Bf16 { 0x3c } else { 0x30 }, buffer.bytes)?;
                        let scale = if dtype == DType::Fp8E4M3 { w_scale.ptr } else { 0 };
                        let tensor = Tensor { scale, ..buffer.tensor(dtype, rows, cols) };
                        Ok((buffer, tensor))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .collect::<anyhow::Result<_>>()?;
        let bytes_a_layer: usize = shapes.iter().map(|s| s.1 * s.2 * dtype.size()).sum();
        let mut linear = Linear::new(&gpu, false)?;
        linear.reserve_fp8_inputs(&gpu, GEMV_MAX_TOKENS, widest)?;
        for t in 1..=GEMV_MAX_TOKENS {
            for engine in ["gemv", "cublaslt"] {
                let mut chain = || -> anyhow::Result<()> {
                    for layer in &weights {
                        let [qkv, o, gate_up, down] = [layer[0].1, layer[1].1, layer[2].1, layer[3].1];
                        let input = |w: Tensor| x.tensor(DType::Bf16, t, w.cols);
                        let output = |w: Tensor| y.tensor(DType::Bf16, t, w.rows);
                        let act = activated.tensor(DType::Bf16, t, f);
                        if engine == "gemv" {
                            kernels.gemv(&gpu, input(qkv), qkv, output(qkv))?;
                            kernels.gemv(&gpu, input(o), o, output(o))?;
                            kernels.gemv_swiglu(&gpu, input(gate_up), gate_up, act)?;
                            kernels.gemv(&gpu, input(down), down, output(down))?;
                        } else {
                            linear.run(&gpu, &kernels, input(qkv), qkv, output(qkv))?;
                            linear.run(&gpu, &kernels, input(o), o, output(o))?;
                            let scratch = scratch.tensor(DType::Bf16, t, 2 * f);
                            linear.run_feed_forward(&gpu, &kernels, input(gate_up), gate_up, down, act, scratch, output(down), false)?;
                        }
                    }
                    Ok(())
                };
                let ms = gpu.median_ms(3, 20, &mut chain)? / layers as f64;
                println!("{:>6} {t:>3} {engine:>10} {:>12.1} {:>8.0}", format!("{dtype:?}"), ms * 1e3, bytes_a_layer as f64 / ms / 1e6);
            }
        }
        // Each shape alone, chained over the layers: what a per-shape choice between the two sees.
        for (i, &(name, rows, cols)) in shapes.iter().enumerate() {
            for t in 1..=GEMV_MAX_TOKENS {
                let mut line = format!("{:>6} {t:>3} {:>10}", format!("{dtype:?}"), name);
                for engine in ["gemv", "cublaslt"] {
                    let mut chain = || -> anyhow::Result<()> {
                        for layer in &weights {
                            let w = layer[i].1;
                            let (input, output) = (x.tensor(DType::Bf16, t, w.cols), y.tensor(DType::Bf16, t, w.rows));
                            if engine == "gemv" {
                                kernels.gemv(&gpu, input, w, output)?;
                            } else {
                                linear.run(&gpu, &kernels, input, w, output)?;
                            }
                        }
                        Ok(())
                    };
                    let ms = gpu.median_ms(3, 20, &mut chain)? / layers as f64;
                    line += &format!(" {engine} {:>7.1} us {:>5.0} GB/s", ms * 1e3, (rows * cols * dtype.size()) as f64 / ms / 1e6);
                }
                println!("{line}");
            }
        }
    }
    Ok(())
}
