//! FP8 on the GPU against FP8 on the host (`lumen_backend::fp8`), on the GPU machine (skipped
//! without a GPU): the dynamic quantization, of a weight (one scale) and of activations (one
//! scale a row), gives the host's scales and, code for code, its E4M3 codes; cuBLASLt's FP8
//! product of those codes (the activations' scales as an outer vector), and the FP8 GEMV kernel on
//! the bf16 rows (which it quantizes itself, to the same codes), both give the host's f32 product
//! of the dequantized operands to within bf16 rounding of the output; and the codes the SwiGLU
//! writes for the down product give that product's own bits.

use lumen_backend::cuda::{to_bf16, DType, DeviceBuffer, Gemm, Gpu, Kernels, RowScales, Tensor};
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

/// Quantizes `x` (`rows × cols`, bf16) on the device, as a weight (one scale) or as activations
/// (`per_row`: a scale a row); returns the FP8 tensor and its buffers.
fn quantize(d: &Device, x: &[f32], rows: usize, cols: usize, per_row: bool) -> (Tensor, DeviceBuffer, DeviceBuffer, DeviceBuffer) {
    let bits: Vec<u16> = x.iter().map(|&v| to_bf16(v)).collect();
    let input = d.gpu.upload(&bits, "input").unwrap();
    let codes = d.gpu.alloc(rows * cols, "codes").unwrap();
    let scale = d.gpu.alloc(4 * rows.max(4), "scales").unwrap();
    let out = Tensor { scale: scale.ptr, ..codes.tensor(DType::Fp8E4M3, rows, cols) };
    let x = input.tensor(DType::Bf16, rows, cols);
    if per_row {
        d.kernels.quantize_fp8_rows(&d.gpu, x, out).unwrap();
    } else {
        let amax = d.gpu.alloc(4, "amax").unwrap();
        d.kernels.quantize_fp8(&d.gpu, x, out, amax.ptr).unwrap();
    }
    (out, codes, scale, input)
}

/// The host's codes and scale for `x`.
fn host_quantize(x: &[f32]) -> (Vec<u8>, f32) {
    let scale = scale_for(x.iter().fold(0.0f32, |m, v| m.max(v.abs())));
    (x.iter().map(|&v| to_e4m3(v / scale)).collect(), scale)
}

/// The host's codes and scales for the rows of `cols` values of `x`, each on its own.
fn host_quantize_rows(x: &[f32], cols: usize) -> (Vec<u8>, Vec<f32>) {
    let (mut codes, mut scales) = (Vec::new(), Vec::new());
    for row in x.chunks(cols) {
        let (c, s) = host_quantize(row);
        codes.extend(c);
        scales.push(s);
    }
    (codes, scales)
}

/// bf16 values of `rows` rows whose magnitudes differ by 2^3 from row to row, so that one scale a
/// row differs from one for all.
fn rows_of_values(rows: usize, cols: usize, salt: u64) -> Vec<f32> {
    let mut v = values(rows * cols, salt);
    for (r, row) in v.chunks_mut(cols).enumerate() {
        row.iter_mut().for_each(|x| *x *= f32::powi(2.0, 3 * (r % 4) as i32 - 6));
    }
    v
}

#[test]
fn quantization_gives_the_hosts_scales_and_codes() {
    let Some(d) = device() else { return };
    for (rows, cols, salt, per_row) in
        [(1, 64, 1, false), (37, 4096, 2, false), (512, 1024, 3, false), (1, 64, 4, true), (37, 4096, 5, true)]
    {
        let x = rows_of_values(rows, cols, salt);
        let (_, codes, scale, _) = quantize(&d, &x, rows, cols, per_row);
        let mut got_codes = vec![0u8; rows * cols];
        let scales = if per_row { rows } else { 1 };
        let mut got_scales = vec![0f32; scales];
        d.gpu.download(&mut got_codes, codes.ptr).unwrap();
        d.gpu.download(&mut got_scales, scale.ptr).unwrap();
        let (want_codes, want_scales) =
            if per_row { host_quantize_rows(&x, cols) } else { (host_quantize(&x).0, vec![host_quantize(&x).1]) };
        assert_eq!(got_scales, want_scales, "{rows}x{cols}: scales");
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
    let (w_dev, _wc, _ws, _wi) = quantize(&d, &w, n, k, false);
    let (w_codes, w_scale) = host_quantize(&w);
    let one = d.gpu.upload(&[1.0f32, 0.0, 0.0, 0.0], "one").unwrap();
    for t in [1, 3, 4, 64] {
        let x = rows_of_values(t, k, 20 + t as u64);
        let (x_dev, _xc, _xs, x_bf16) = quantize(&d, &x, t, k, true);
        let (x_codes, x_scales) = host_quantize_rows(&x, k);
        let want: Vec<f32> = (0..t * n)
            .map(|i| {
                let (row, col) = (i / n, i % n);
                let dot: f64 = (0..k).map(|j| from_e4m3(x_codes[row * k + j]) as f64 * from_e4m3(w_codes[col * k + j]) as f64).sum();
                (dot * x_scales[row] as f64 * w_scale as f64) as f32
            })
            .collect();
        let out = d.gpu.alloc(t * n * 2, "out").unwrap();
        let y = out.tensor(DType::Bf16, t, n);
        // Every candidate algorithm cuBLASLt offers (the tuner may keep any of them), then the GEMV.
        // cuBLASLt takes one scale an operand: it gets 1.0 for the activations, whose row scales
        // `scale_rows` applies after it, as `Linear` does.
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
                gemm.matmul(&d.gpu, Tensor { scale: one.ptr, ..x_dev }, w_dev, y).unwrap();
                d.kernels.scale_rows(&d.gpu, y, RowScales(x_dev.scale)).unwrap();
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

/// `Linear::input_codes`: the codes `silu_mul_fp8` writes for the FP8 down product of a SwiGLU
/// (`Linear::run_feed_forward`) give, bit for bit, that product after `silu_mul` and its own
/// quantization; a note that a norm wrote codes is spent on the next product only, and only where
/// that product reads those activations, so a product of other activations in between, and any
/// later one, quantize their own.
#[test]
fn codes_written_by_the_producer_give_the_products_own_bits() {
    let Some(d) = device() else { return };
    let mut linear = lumen_backend::cuda::Linear::new(&d.gpu, false).unwrap();
    let (t, k, f, n) = (64, 1024, 2048, 512);
    linear.reserve_fp8_inputs(&d.gpu, t, f).unwrap();
    let (gate_up, _gc, _gs, _gi) = quantize(&d, &values(2 * f * k, 31), 2 * f, k, false);
    let (down, _dc, _ds, _di) = quantize(&d, &values(n * f, 32), n, f, false);
    let bf16_input = |v: &[f32]| d.gpu.upload(&v.iter().map(|&x| to_bf16(x)).collect::<Vec<u16>>(), "input").unwrap();
    let (x, other) = (bf16_input(&rows_of_values(t, k, 33)), bf16_input(&values(t * f, 34)));
    let act = d.gpu.alloc(t * f * 2, "act").unwrap();
    let scratch = d.gpu.alloc(t * 2 * f * 2, "gate/up").unwrap();
    let out = d.gpu.alloc(t * n * 2, "out").unwrap();
    let read_out = || -> Vec<u16> {
        let mut bits = vec![0u16; t * n];
        d.gpu.download(&mut bits, out.ptr).unwrap();
        bits
    };
    let product = |linear: &mut lumen_backend::cuda::Linear, input: &DeviceBuffer| -> Vec<u16> {
        d.gpu.fill(out.ptr, 0xff, out.bytes).unwrap();
        linear.run(&d.gpu, &d.kernels, input.tensor(DType::Bf16, t, f), down, out.tensor(DType::Bf16, t, n)).unwrap();
        read_out()
    };
    let (x_t, act_t, scratch_t) = (x.tensor(DType::Bf16, t, k), act.tensor(DType::Bf16, t, f), scratch.tensor(DType::Bf16, t, 2 * f));
    // The SwiGLU in bf16, then the down product quantizing act itself.
    linear.run(&d.gpu, &d.kernels, x_t, gate_up, scratch_t).unwrap();
    d.kernels.silu_mul(&d.gpu, t, f, scratch.ptr, Default::default(), act.ptr).unwrap();
    let own_pass = product(&mut linear, &act);
    assert!(own_pass.iter().any(|&b| b != 0xffff && b != 0), "the product wrote nothing");
    // The whole feed-forward, act's codes written by silu_mul_fp8 (act itself is not written).
    d.gpu.fill(act.ptr, 0, act.bytes).unwrap();
    d.gpu.fill(out.ptr, 0xff, out.bytes).unwrap();
    linear.run_feed_forward(&d.gpu, &d.kernels, x_t, gate_up, down, act_t, scratch_t, out.tensor(DType::Bf16, t, n), false).unwrap();
    let fused = read_out();
    // A note spent by a product of other activations, then act (rewritten in bf16) on its own.
    linear.run(&d.gpu, &d.kernels, x_t, gate_up, scratch_t).unwrap();
    d.kernels.silu_mul(&d.gpu, t, f, scratch.ptr, Default::default(), act.ptr).unwrap();
    let other_alone = product(&mut linear, &other);
    let noted = linear.input_codes(act_t);
    assert_ne!(noted.codes, 0, "{t} rows of an FP8 model's activations get codes written by their producer");
    d.gpu.fill(noted.codes, 0x7e, t * f).unwrap();
    let other_after = product(&mut linear, &other);
    let act_later = product(&mut linear, &act);
    let differ = |a: &[u16], b: &[u16]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    for (what, got, want) in [
        ("the down product of silu_mul_fp8's codes, against its own quantization", &fused, &own_pass),
        ("a product of other activations after a note for act", &other_after, &other_alone),
        ("a later product of act, the note spent", &act_later, &own_pass),
    ] {
        assert_eq!(differ(got, want), 0, "{what}: values differ, of {}", t * n);
    }
}
