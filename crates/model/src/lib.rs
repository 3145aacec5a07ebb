//! lumen-model: what a model is and how it computes. It owns the config, the layer plan, loading
//! GGUF, Hugging Face and preset weights into the plan, chat prompts, and the llama-family forward
//! pass (dense or mixture-of-experts) on the CPU, and the dense one on one GPU.
//!
//! A model spec names one of three sources: a GGUF v3 file, a Hugging Face directory, or a
//! random-weight preset (`NAME` or `NAME@SEED`). Each becomes a [`Model`]: the llama-family
//! [`Decoder`] plus, when the source has one, its tokenizer and chat template.

pub mod chat;
pub mod config;
pub mod cuda;
pub mod deepseek_config;
pub mod gguf;
mod gpt_oss_checkpoint;
pub mod llama;
mod load;
pub mod mla_cpu;
pub mod moe;
mod moe_cpu;
pub mod mxfp4;
pub mod perfect_router;
pub mod plan;
pub mod presets;
pub mod safetensors;
pub mod tensor_parallel;
pub mod weights;
pub mod yarn;

pub use config::ModelConfig;
pub use llama::{Decoder, ForwardBatch, ForwardOutput, OwnedBatch};
pub use load::{
    default_model_path, describe_model, load_model, load_model_on, load_model_ranks, load_model_split, load_model_with, Device,
    LoadOptions, DEFAULT_MODEL_FILE, SETUP_COMMAND,
};
pub use lumen_tokenizer::{ChatMessage, ChatTemplate, StreamDecoder, Tokenizer};
pub use plan::Quantization;

/// A loaded model, ready for the engine.
pub struct Model {
    /// How the user named it (path or preset), for reports.
    pub name: String,
    /// What it was loaded from: `gguf`, `safetensors` or `preset`.
    pub format: &'static str,
    pub config: ModelConfig,
    pub executor: Executor,
    pub tokenizer: Option<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
}

/// Where the weights live and what runs the forward pass. A model holds one, so its variants'
/// sizes cost nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Executor {
    /// f32 weights in host memory, run by the CPU backend.
    Cpu(Decoder),
    /// bf16 weights on one GPU, run by the forward pass in [`cuda::forward`].
    Cuda(cuda::CudaWeights),
    /// bf16 weights split over GPUs 0..N by tensor parallelism, rank r on GPU r.
    CudaRanks(Vec<cuda::RankShard>),
}

impl Model {
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The CPU decoder, or an error when the model was loaded on a GPU.
    pub fn cpu_decoder(&self) -> anyhow::Result<&Decoder> {
        match &self.executor {
            Executor::Cpu(d) => Ok(d),
            Executor::Cuda(_) | Executor::CudaRanks(_) => anyhow::bail!("model {} is loaded on the GPU, not the CPU", self.name),
        }
    }

    /// Whether the MoE layers route with the perfect router (`LUMEN_PERFECT_ROUTER=1`); false for
    /// a dense model, which has no router.
    pub fn perfect_router(&self) -> bool {
        match &self.executor {
            Executor::Cpu(d) => d.perfect_router,
            Executor::Cuda(w) => w.perfect_router,
            Executor::CudaRanks(_) => false,
        }
    }

    /// How the layers' projection matrices were quantized at load, on either device.
    pub fn quantization(&self) -> Quantization {
        match &self.executor {
            Executor::Cpu(d) => d.quantization,
            Executor::Cuda(w) => w.quantization,
            Executor::CudaRanks(ranks) => ranks[0].weights.quantization,
        }
    }

    /// The weights on the GPU, or, split over several, on the first one.
    pub fn cuda_weights(&self) -> Option<&cuda::CudaWeights> {
        match &self.executor {
            Executor::Cuda(w) => Some(w),
            Executor::CudaRanks(ranks) => Some(&ranks[0].weights),
            Executor::Cpu(_) => None,
        }
    }

    /// Ranks the weights are split over by tensor parallelism (1 when they are not).
    pub fn tensor_parallel_size(&self) -> usize {
        match &self.executor {
            Executor::CudaRanks(ranks) => ranks.len(),
            _ => 1,
        }
    }

    /// `cpu`, or `cuda:<ordinal> (<GPU name>)`.
    pub fn device_description(&self) -> String {
        match &self.executor {
            Executor::Cpu(_) => "cpu".into(),
            Executor::Cuda(w) => format!("cuda:{} ({})", w.gpu.ordinal, w.gpu.info.name),
            Executor::CudaRanks(ranks) => format!("cuda:0-{} ({} x {})", ranks.len() - 1, ranks.len(), ranks[0].weights.gpu.info.name),
        }
    }

    /// The tokenizer, or an error saying this model takes token ids only.
    pub fn tokenizer(&self) -> anyhow::Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            anyhow::anyhow!("model {} has no tokenizer (random-weight presets take token ids, e.g. --prompt-ids 1,2,3)", self.name)
        })
    }
}
