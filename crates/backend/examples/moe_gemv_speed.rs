//! A mixture-of-experts layer's decode products as a batch-1 step runs them, on the GPU machine:
//! per layer `moe_gemv`'s gate/up product with its activation, then its down product, for one
//! token routed to `top_k` distinct experts, chained over enough layers of their own expert
//! weights that nothing stays in L2. Times every choice of warps a weight row (`k_split`) for
//! each of the two products, and the launcher's own choice, as the median time a layer over
//! repeated chains (CUDA events) and the routed weights' bytes over it.
//! `moe_gemv_speed [hidden expert_ffn experts top_k layers gpt_oss]` (default: qwen3-30b-a3b's
//! shape over 8 layers; `gpt_oss` 1 gives every expert biases and the clamped SwiGLU).

use lumen_backend::cuda::kernels::moe_gemv_k_split;
use lumen_backend::cuda::{DeviceBuffer, Gpu, Kernels};
use lumen_backend::ExpertActivation;

/// One layer's expert weights and bias tables (device arrays of one pointer per expert), the
/// buffers behind them, and its routing (one token's `top_k` experts).
struct Layer {
    _buffers: Vec<DeviceBuffer>,
    gate_up: DeviceBuffer,
    down: DeviceBuffer,
    gate_up_bias: Option<DeviceBuffer>,
    down_bias: Option<DeviceBuffer>,
    routing: DeviceBuffer,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("sizes are integers")).collect();
    let [h, f, experts, top, layers, gpt_oss] =
        if args.len() == 6 { [args[0], args[1], args[2], args[3], args[4], args[5]] } else { [2048, 768, 128, 8, 8, 0] };
    anyhow::ensure!(top <= experts, "top_k {top} of {experts} experts");
    let gpu = Gpu::open(0)?;
    let kernels = Kernels::load(&gpu)?;
    let activation = if gpt_oss == 1 { ExpertActivation::ClampedSwiGlu { alpha: 1.702, limit: 7.0 } } else { ExpertActivation::SwiGlu };
    let table = |buffers: &[DeviceBuffer], what: &str| gpu.upload(&buffers.iter().map(|b| b.ptr).collect::<Vec<u64>>(), what);
    let all: Vec<Layer> = (0..layers)
        .map(|layer| {
            let alloc = |rows: usize, cols: usize, what: &str| -> anyhow::Result<Vec<DeviceBuffer>> {
                (0..experts)
                    .map(|_| {
                        let b = gpu.alloc(rows * cols * 2, what)?;
                        gpu.fill(b.ptr, 0x3c, b.bytes)?;
                        Ok(b)
                    })
                    .collect()
            };
            let (gate_up_w, down_w) = (alloc(2 * f, h, "gate/up")?, alloc(h, f, "down")?);
            let (gate_up_b, down_b) =
                if gpt_oss == 1 { (alloc(2 * f, 1, "gate/up bias")?, alloc(h, 1, "down bias")?) } else { (vec![], vec![]) };
            // Distinct experts: a stride coprime with a power-of-two expert count.
            let routing: Vec<u32> = (0..top).map(|j| ((layer * 37 + j * 17) % experts) as u32).collect();
            let bias = |b: &[DeviceBuffer], what: &str| if b.is_empty() { Ok(None) } else { table(b, what).map(Some) };
            Ok(Layer {
                gate_up: table(&gate_up_w, "gate/up table")?,
                down: table(&down_w, "down table")?,
                gate_up_bias: bias(&gate_up_b, "gate/up bias table")?,
                down_bias: bias(&down_b, "down bias table")?,
                routing: gpu.upload(&routing, "routing")?,
                _buffers: gate_up_w.into_iter().chain(down_w).chain(gate_up_b).chain(down_b).collect(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let x = gpu.alloc(h * 2, "token")?;
    gpu.fill(x.ptr, 0x3c, x.bytes)?;
    let act = gpu.alloc(top * f * 2, "activations")?;
    let y = gpu.alloc(top * h * 2, "outputs")?;
    let bytes = |rows: usize, cols: usize| (top * rows * cols * 2) as f64;
    let (gate_up_bytes, down_bytes) = (bytes(2 * f, h), bytes(h, f));
    let ptr = |b: &Option<DeviceBuffer>| b.as_ref().map_or(0, |b| b.ptr);
    // The products run with the given warps a weight row; a product without a split is left out.
    let time = |gate_up_split: Option<usize>, down_split: Option<usize>| -> anyhow::Result<f64> {
        let ms = gpu.median_ms(3, 20, || {
            for l in &all {
                let (routing, gate_up_bias, down_bias) = (l.routing.ptr, ptr(&l.gate_up_bias), ptr(&l.down_bias));
                if gate_up_split.is_some() {
                    let (w, split, gated) = (l.gate_up.ptr, gate_up_split, Some(activation));
                    kernels.moe_gemv(&gpu, x.ptr, top, routing, w, gate_up_bias, top, f, h, gated, false, split, act.ptr)?;
                }
                if down_split.is_some() {
                    kernels.moe_gemv(&gpu, act.ptr, 1, routing, l.down.ptr, down_bias, top, h, f, None, true, down_split, y.ptr)?;
                }
            }
            Ok(())
        })?;
        Ok(ms / layers as f64)
    };
    let chosen = (moe_gemv_k_split(h, true), moe_gemv_k_split(f, false));
    println!("{} | {layers} layers, {experts} experts of {h} × {f}, top {top}, {activation:?}; median of 20 chains", gpu.info.name);
    println!("the launcher's choice: gate/up {} warps a row, down {}", chosen.0, chosen.1);
    println!("{:>10} {:>6} {:>12} {:>8}", "product", "split", "us a layer", "GB/s");
    for split in [1, 2, 4] {
        let ms = time(Some(split), None)?;
        println!("{:>10} {split:>6} {:>12.2} {:>8.0}", "gate/up", ms * 1e3, gate_up_bytes / ms / 1e6);
    }
    for split in [1, 2, 4, 8] {
        let ms = time(None, Some(split))?;
        println!("{:>10} {split:>6} {:>12.2} {:>8.0}", "down", ms * 1e3, down_bytes / ms / 1e6);
    }
    let ms = time(Some(chosen.0), Some(chosen.1))?;
    println!("{:>10} {:>6} {:>12.2} {:>8.0}", "both", "chosen", ms * 1e3, (gate_up_bytes + down_bytes) / ms / 1e6);
    Ok(())
}
