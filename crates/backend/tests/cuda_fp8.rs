//! FP8 on the GPU against FP8 on the host (`lumen_backend::fp8`), on the GPU machine (skipped
//! without a GPU): the dynamic quantization gives the host's scale and, code for code, its E4M3
//! codes; cuBLASLt's FP8 product of those codes, and the FP8 GEMV kernel on the bf16 rows (which
//! it quantizes itself, to the same codes), both give the host's f32 product of the dequantized
//! operands to within bf16 rounding of the output.

use lumen_backend::cuda::{to_bf16, DType, DeviceBuffer, Gemm, Gpu, Kernels, Tensor};
use lumen_backend::fp8::{from_e4m3, scale_for, to_e4m3};
use std::sync::Arc;

struct Device {
    gpu: Arc<Gpu>,
    kernels: Kernels,
}

fn device() -> Option<Device> {
    let gpu = lumen_test_support::gpu::device_or_skip(Gpu::open(0))?;
    Some(Device { kernels: Kernels::load(&gpu).unwrap(), gpu })
}

/// bf16 values spanning magnitudes from 2^-14 to 2^4 of both signs, with exact E4M3 ties among
/// them, as the host reads them back.
fn values(n: usize, salt: u64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let u = lumen_backend::rng::splitmix64(salt ^ i as u64);
            let magnitude = f32::powi(2.0, (u % 19) as i32 - 14) * (1.0 + ((u >> 8) % 64) as f32 / 64.0);
            let v = if (u >> 20) & 1 == 1 { -magnitude } else { magnitude };
            half::bf16::from_bits(to_bf16(v)).to_f32()
        })
        .collect()
}

/// Quantizes `x` (`rows × cols`, bf16) on the device; returns the FP8 tensor and its buffers.
fn quantize(d: &Device, x: &[f32], rows: usize, cols: usize) -> (Tensor, DeviceBuffer, DeviceBuffer, DeviceBuffer) {
    let bits: Vec<u16> = x.iter().map(|&v| to_bf16(v)).collect();
    let input = d.gpu.upload(&bits, "input").unwrap();
    let codes = d.gpu.alloc(rows * cols, "codes").unwrap();
    let scale = d.gpu.alloc(4, "scale").unwrap();
    let amax = d.gpu.alloc(4, "amax").unwrap();
    let out = Tensor { scale: scale.ptr, ..codes.tensor(DType::Fp8E4M3, rows, cols) };
    d.kernels.quantize_fp8(&d.gpu, input.tensor(DType::Bf16, rows, cols), out, amax.ptr, false).unwrap();
    (out, codes, scale, input)
}

/// The host's codes and scale for `x`.
fn host_quantize(x: &[f32]) -> (Vec<u8>, f32) {
    let scale = scale_for(x.iter().fold(0.0f32, |m, v| m.max(v.abs())));
    (x.iter().map(|&v| to_e4m3(v / scale)).collect(), scale)
}

#[test]
fn quantization_gives_the_hosts_scale_and_codes() {
    let Some(d) = device() else { return };
    for (rows, cols, salt) in [(1, 64, 1), (37, 4096, 2), (512, 1024, 3)] {
        let x = values(rows * cols, salt);
        let (_, codes, scale, _) = quantize(&d, &x, rows, cols);
        let mut got_codes = vec![0u8; rows * cols];
        let mut got_scale = [0f32];
        d.gpu.download(&mut got_codes, codes.ptr).unwrap();
        d.gpu.download(&mut got_scale, scale.ptr).unwrap();
        let (want_codes, want_scale) = host_quantize(&x);
        assert_eq!(got_scale[0], want_scale, "{rows}x{cols}: scale");
        let differ: Vec<usize> = (0..x.len()).filter(|&i| got_codes[i] != want_codes[i]).collect();
        assert!(
            differ.is_empty(),
            "{rows}x{cols}: {} codes differ, first at {:?}",
            differ.len(),
            differ.first().map(|&i| (x[i], got_codes[i], want_codes[i]))
        );
    }
}

#[test]
fn fp8_products_through_gemv_and_cublaslt_match_the_host() {
    let Some(d) = device() else { return };
    let mut gemm = Gemm::new(&d.gpu, false).unwrap();
    let (n, k) = (384, 1024);
    let w = values(n * k, 11);
    let (w_dev, _wc, _ws, _wi) = quantize(&d, &w, n, k);
    let (w_codes, w_scale) = host_quantize(&w);
    for t in [1, 3, 4, 64] {
        let x = values(t * k, 20 + t as u64);
        let (x_dev, _xc, _xs, x_bf16) = quantize(&d, &x, t, k);
        let (x_codes, x_scale) = host_quantize(&x);
        let want: Vec<f32> = (0..t * n)
            .map(|i| {
                let (row, col) = (i / n, i % n);
                let dot: f64 = (0..k).map(|j| from_e4m3(x_codes[row * k + j]) as f64 * from_e4m3(w_codes[col * k + j]) as f64).sum();
                (dot * x_scale as f64 * w_scale as f64) as f32
            })
            .collect();
        let out = d.gpu.alloc(t * n * 2, "out").unwrap();
        let y = out.tensor(DType::Bf16, t, n);
        // Every candidate algorithm cuBLASLt offers (the tuner may keep any of them), then the GEMV.
        let algorithms = gemm.algorithms(t, n, k, DType::Fp8E4M3, DType::Bf16).unwrap();
        let e = gemm.use_algorithm(t, n, k, DType::Fp8E4M3, DType::Bf16, algorithms).unwrap_err().to_string();
        assert!(e.contains(&format!("{algorithms} offered")), "{e}");
        let mut paths: Vec<_> = (0..algorithms).map(|i| (format!("cuBLASLt algorithm {i} of {algorithms}"), Some(i))).collect();
        if t <= lumen_backend::cuda::kernels::GEMV_MAX_TOKENS {
            paths.push(("gemv".to_string(), None));
        }
        for (path, algorithm) in paths {
            d.gpu.fill(out.ptr, 0xff, out.bytes).unwrap();
            if let Some(index) = algorithm {
                gemm.use_algorithm(t, n, k, DType::Fp8E4M3, DType::Bf16, index).unwrap();
                gemm.matmul(&d.gpu, x_dev, w_dev, y).unwrap();
            } else {
                d.kernels.gemv(&d.gpu, x_bf16.tensor(DType::Bf16, t, k), w_dev, y).unwrap();
            }
            let mut bits = vec![0u16; t * n];
            d.gpu.download(&mut bits, out.ptr).unwrap();
            let got: Vec<f32> = bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect();
            let norm = want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            let err = got.iter().zip(&want).map(|(g, w)| (*g as f64 - *w as f64).powi(2)).sum::<f64>().sqrt() / norm;
            eprintln!("{path} t={t}: relative error {err:.2e}");
            assert!(err <= 4e-3, "{path}, {t} rows: relative error {err:.2e} against the host's FP8 product");
        }
    }
}

/// `Linear::input_amax`: a SwiGLU's output amax, written by `silu_mul`, spares the FP8 down
/// product its own pass over the activations and changes no bit of the product; the note is
/// spent on the next product only, and only where that product reads those activations, so a
/// product of other activations in between, and any later one, find their own amax.
#[test]
fn an_amax_written_by_the_producer_gives_the_products_own_bits() {
    let Some(d) = device() else { return };
    let mut linear = lumen_backend::cuda::Linear::new(&d.gpu, false).unwrap();
    let (t, k, f, n) = (64, 1024, 2048, 512);
    linear.reserve_fp8_inputs(&d.gpu, t * f).unwrap();
    let (gate_up, _gc, _gs, _gi) = quantize(&d, &values(2 * f * k, 31), 2 * f, k);
    let (down, _dc, _ds, _di) = quantize(&d, &values(n * f, 32), n, f);
    let bf16_input = |v: &[f32]| d.gpu.upload(&v.iter().map(|&x| to_bf16(x)).collect::<Vec<u16>>(), "input").unwrap();
    let (x, other) = (bf16_input(&values(t * k, 33)), bf16_input(&values(t * f, 34)));
    let act = d.gpu.alloc(t * f * 2, "act").unwrap();
    let scratch = d.gpu.alloc(t * 2 * f * 2, "gate/up").unwrap();
    let out = d.gpu.alloc(t * n * 2, "out").unwrap();
    let product = |linear: &mut lumen_backend::cuda::Linear, input: &DeviceBuffer| -> Vec<u16> {
        d.gpu.fill(out.ptr, 0xff, out.bytes).unwrap();
        linear.run(&d.gpu, &d.kernels, input.tensor(DType::Bf16, t, f), down, out.tensor(DType::Bf16, t, n)).unwrap();
        let mut bits = vec![0u16; t * n];
        d.gpu.download(&mut bits, out.ptr).unwrap();
        bits
    };
    let (act_t, scratch_t) = (act.tensor(DType::Bf16, t, f), scratch.tensor(DType::Bf16, t, 2 * f));
    linear.run_swiglu(&d.gpu, &d.kernels, x.tensor(DType::Bf16, t, k), gate_up, act_t, scratch_t).unwrap();
    let differ = |a: &[u16], b: &[u16]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    let folded = product(&mut linear, &act);
    let own_pass = product(&mut linear, &act);
    assert!(folded.iter().any(|&b| b != 0xffff && b != 0), "the product wrote nothing");
    let other_alone = product(&mut linear, &other);
    linear.run_swiglu(&d.gpu, &d.kernels, x.tensor(DType::Bf16, t, k), gate_up, act_t, scratch_t).unwrap();
    let other_after = product(&mut linear, &other);
    let act_later = product(&mut linear, &act);
    for (what, got, want) in [
        ("the down product with silu_mul's amax, against its own pass", &folded, &own_pass),
        ("a product of other activations right after the SwiGLU", &other_after, &other_alone),
        ("a later product of the SwiGLU's output", &act_later, &own_pass),
    ] {
        assert_eq!(differ(got, want), 0, "{what}: values differ, of {}", t * n);
    }
}
