//! Text ↔ token conversion for lumen: the byte-level BPE tokenizer (built from GGUF
//! metadata or a Hugging Face `tokenizer.json`), streaming detokenization, and chat
//! template rendering.

mod bpe;
mod chat;
mod hf;
mod pretokenizer;
mod stream;

pub use bpe::{TokenType, Tokenizer, TokenizerSpec};
pub use chat::{ChatMessage, ChatTemplate};
pub use pretokenizer::{PreTokenizer, SUPPORTED_GGUF_PRE};
pub use stream::StreamDecoder;
