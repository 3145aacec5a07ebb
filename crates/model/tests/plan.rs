//! The layer plan against what the loaders fill: every preset, the real GGUF and (in
//! hf_directory.rs) a Hugging Face directory, on the CPU; a preset and the GGUF on the GPU
//! machine through CUDA (skipped, with a message, elsewhere; a failure under
//! `LUMEN_REQUIRE_GPU=1`). Each filled weight has the label and shape its plan entry gives.

use lumen_model::plan::{Entry, ModelPlan};
use lumen_model::presets::random_tensor;
use lumen_model::presets::PRESET_NAMES;
use lumen_model::{load_model, load_model_on, Device, Model};

/// The CPU-filled shapes of `model`: packed matrices as `[n, k]`, vectors by length.
fn cpu_shapes(model: &Model) -> Vec<(String, Vec<usize>)> {
    model.cpu_decoder().unwrap().weights.shapes(|m| vec![m.n, m.k], |v| vec![v.len()])
}

fn assert_filled_as_planned(model: &Model, filled: Vec<(String, Vec<usize>)>) {
    let planned = ModelPlan::for_config(model.config()).planned_shapes();
    assert!(planned.len() > 4 * model.config().num_layers, "{}: {} planned weights", model.name, planned.len());
    assert_eq!(filled, planned, "{}: the filled weights differ from the plan", model.name);
}

#[test]
fn every_small_preset_fills_its_plan_on_the_cpu() {
    for name in PRESET_NAMES.iter().filter(|n| n.starts_with("tiny") || n.starts_with("smollm2")) {
        let model = load_model(name).unwrap();
        assert_filled_as_planned(&model, cpu_shapes(&model));
    }
}

#[test]
fn the_gguf_fills_its_plan_on_the_cpu() {
    let model = load_model(lumen_model::default_model_path().to_str().unwrap()).unwrap_or_else(|e| panic!("{e:#} (run scripts/setup.sh)"));
    assert_filled_as_planned(&model, cpu_shapes(&model));
}

#[test]
fn cuda_fills_the_plan_with_bf16_tensors() {
    if lumen_test_support::gpu::device_or_skip(lumen_backend::cuda::Gpu::open(0)).is_none() {
        return;
    }
    for spec in ["tiny-qwen3", "smollm2-135m-untied"] {
        let model = load_model_on(spec, Device::Cuda).unwrap();
        let w = &model.cuda_weights().unwrap().weights;
        let mut dtypes = std::collections::BTreeSet::new();
        let filled = w.shapes(
            |m| {
                dtypes.insert(m.dtype.to_string());
                vec![m.rows, m.cols]
            },
            |v| vec![v.rows * v.cols],
        );
        assert_filled_as_planned(&model, filled);
        assert_eq!(dtypes.into_iter().collect::<Vec<_>>(), ["bf16"]);
    }
}

/// A preset's weights drawn on the device (`preset_fill`) equal, bit for bit, the host's values
/// (`presets::random_tensor`) rounded to bf16, for every weight, fused parts included.
#[test]
fn cuda_draws_preset_weights_bit_for_bit_as_the_host() {
    if lumen_test_support::gpu::device_or_skip(lumen_backend::cuda::Gpu::open(0)).is_none() {
        return;
    }
    for (spec, seed) in [("tiny-qwen3@3", 3), ("smollm2-135m-untied@7", 7), ("llama-3.2-1b", 0)] {
        let model = load_model_on(spec, Device::Cuda).unwrap();
        let cuda = model.cuda_weights().unwrap();
        let mut planned = Vec::new();
        ModelPlan::for_config(model.config()).visit(&mut |label, entry| {
            let (Entry::Matrix(s) | Entry::Vector(s)) = entry;
            planned.push((label.to_string(), s.clone()));
        });
        let mut filled = Vec::new();
        cuda.weights.visit(&mut |_, entry| {
            let (Entry::Matrix(t) | Entry::Vector(t)) = entry;
            filled.push((t.buffer.at(0), t.rows * t.cols));
        });
        assert_eq!(planned.len(), filled.len(), "{spec}");
        for ((label, planned), (ptr, len)) in planned.iter().zip(filled) {
            let host: Vec<u16> =
                planned.parts.iter().flat_map(|p| random_tensor(seed, &p.name, &p.shape)).map(lumen_backend::cuda::to_bf16).collect();
            let mut device = vec![0u16; len];
            cuda.gpu.download(&mut device, ptr).unwrap();
            let differ = host.iter().zip(&device).filter(|(h, d)| h != d).count();
            assert!(host.len() == len && differ == 0, "{spec} {label}: {differ} of {len} values differ from the host's");
        }
    }
}
