//! The layer plan against what the loaders fill: every preset, the real GGUF and (in
//! hf_directory.rs) a Hugging Face directory, on the CPU; a preset and the GGUF on the GPU
//! machine through CUDA (skipped, with a message, elsewhere; a failure under
//! `LUMEN_REQUIRE_GPU=1`). Each filled weight has the label and shape its plan entry gives.

use lumen_model::plan::ModelPlan;
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
