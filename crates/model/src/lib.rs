//! lumen-model: what a model is and how it is loaded.
//!
//! A model spec names one of three sources: a GGUF v3 file, a Hugging Face directory, or a
//! random-weight preset (`NAME` or `NAME@SEED`). Each becomes a [`Model`]: the llama-family
//! [`Decoder`] plus, when the source has one, its tokenizer and chat template.

pub mod config;
pub mod gguf;
pub mod llama;
mod load;
pub mod presets;
pub mod safetensors;
pub mod weights;

pub use config::ModelConfig;
pub use llama::{Decoder, ForwardBatch};
pub use load::{default_model_path, describe_model, load_model, DEFAULT_MODEL_FILE, SETUP_COMMAND};
pub use lumen_tokenizer::{ChatMessage, ChatTemplate, StreamDecoder, Tokenizer};

/// A loaded model, ready for the engine.
pub struct Model {
    /// How the user named it (path or preset), for reports.
    pub name: String,
    /// What it was loaded from: `gguf`, `safetensors` or `preset`.
    pub format: &'static str,
    pub decoder: Decoder,
    pub tokenizer: Option<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
}

impl Model {
    pub fn config(&self) -> &ModelConfig {
        &self.decoder.config
    }

    /// The tokenizer, or an error saying this model takes token ids only.
    pub fn tokenizer(&self) -> anyhow::Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            anyhow::anyhow!("model {} has no tokenizer (random-weight presets take token ids, e.g. --prompt-ids 1,2,3)", self.name)
        })
    }
}
