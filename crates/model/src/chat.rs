//! Prompts and answers as text: a chat turn rendered with the model's chat template and encoded
//! into prompt ids, plain text encoded as it is, and streamed answer tokens turned back into
//! printable text. Shared by every front end (the CLI, a server) so they build the same prompts.

use crate::Model;
use anyhow::{Context, Result};
use lumen_tokenizer::{ChatMessage, StreamDecoder};
use lumen_trace::instrument::{span, Category};

/// The messages of one user turn: `system` first when given (else the template's own system
/// message applies), then `user`.
pub fn user_turn(system: Option<&str>, user: &str) -> Vec<ChatMessage> {
    let system = system.map(|s| ChatMessage::new("system", s));
    system.into_iter().chain([ChatMessage::new("user", user)]).collect()
}

/// The prompt ids of `messages` in the model's chat template, ending with the opening of the
/// assistant's turn; the template's special tokens are encoded as such. Fails for a model without
/// a tokenizer or without a chat template.
pub fn chat_prompt_ids(model: &Model, messages: &[ChatMessage]) -> Result<Vec<u32>> {
    let tokenizer = model.tokenizer()?;
    let template = model.chat_template.as_ref().with_context(|| format!("model {} has no chat template", model.name))?;
    let token_text = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or("").to_string();
    let rendered = template.render(messages, true, &token_text(tokenizer.bos_id()), &token_text(tokenizer.eos_id()))?;
    Ok(tokenizer.encode(&rendered, true))
}

/// The prompt ids of `text` as it is: no template, and special-token text encoded as plain text.
/// Fails for a model without a tokenizer.
pub fn text_prompt_ids(model: &Model, text: &str) -> Result<Vec<u32>> {
    Ok(model.tokenizer()?.encode(text, false))
}

/// Turns a request's streamed token ids into text to print as they arrive: detokenised with the
/// model's tokenizer (special tokens skipped, a UTF-8 sequence split across tokens held back
/// until complete), or, for a model without one, the ids themselves, comma-separated.
pub struct AnswerText {
    decoder: Option<StreamDecoder>,
    tokens: usize,
}

impl AnswerText {
    pub fn new(model: &Model) -> Self {
        AnswerText { decoder: model.tokenizer.as_ref().map(|t| StreamDecoder::new(t, true)), tokens: 0 }
    }

    /// The text token `id` completes (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.tokens += 1;
        match self.decoder.as_mut() {
            Some(d) => {
                let _s = span(Category::Api, "detokenize");
                d.push(id)
            }
            None if self.tokens > 1 => format!(",{id}"),
            None => id.to_string(),
        }
    }

    /// What is still held back at the end of the answer (an incomplete UTF-8 sequence as U+FFFD).
    pub fn finish(&mut self) -> String {
        self.decoder.as_mut().map(StreamDecoder::flush).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{default_model_path, load_model};

    fn gguf() -> Model {
        let path = default_model_path();
        load_model(path.to_str().unwrap()).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
    }

    #[test]
    fn a_user_turn_is_the_system_message_then_the_user_message() {
        assert_eq!(user_turn(None, "hi"), [ChatMessage::new("user", "hi")]);
        assert_eq!(user_turn(Some("be brief"), "hi"), [ChatMessage::new("system", "be brief"), ChatMessage::new("user", "hi")]);
    }

    #[test]
    fn chat_prompts_are_the_template_rendered_with_special_tokens() {
        let model = gguf();
        let tokenizer = model.tokenizer().unwrap();
        let ids = chat_prompt_ids(&model, &user_turn(Some("Be brief."), "What is the capital of France?")).unwrap();
        let want =
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(tokenizer.decode(&ids, false), want);
        let im_start = tokenizer.token_to_id("<|im_start|>").unwrap();
        assert_eq!(ids[0], im_start, "the template's special tokens are single tokens");
        // Without a system message the template supplies its own.
        let ids = chat_prompt_ids(&model, &user_turn(None, "Hi")).unwrap();
        let text = tokenizer.decode(&ids, false);
        assert!(
            text.starts_with("<|im_start|>system\n") && text.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
            "{text}"
        );
    }

    #[test]
    fn plain_prompts_encode_special_token_text_as_text() {
        let model = gguf();
        let tokenizer = model.tokenizer().unwrap();
        let ids = text_prompt_ids(&model, "<|im_start|>Paris").unwrap();
        assert_eq!(tokenizer.decode(&ids, false), "<|im_start|>Paris");
        assert!(!ids.contains(&tokenizer.token_to_id("<|im_start|>").unwrap()));
    }

    #[test]
    fn answers_stream_as_text_and_hold_back_split_characters() {
        let model = gguf();
        let tokenizer = model.tokenizer().unwrap();
        let ids = tokenizer.encode("The capital of France is Paris. Ça va 😀", false);
        let mut answer = AnswerText::new(&model);
        let streamed: String = ids.iter().map(|&id| answer.push(id)).collect::<String>() + &answer.finish();
        assert_eq!(streamed, "The capital of France is Paris. Ça va 😀");
        let eos = tokenizer.eos_id().unwrap();
        assert_eq!(answer.push(eos), "", "special tokens are skipped");
        // The emoji's four bytes arrive over several tokens; nothing prints until it is whole.
        let emoji = tokenizer.encode("😀", false);
        assert!(emoji.len() > 1, "{emoji:?}");
        let mut answer = AnswerText::new(&model);
        assert_eq!(answer.push(emoji[0]), "");
        assert_eq!(answer.finish(), "\u{FFFD}", "an incomplete character is flushed as U+FFFD");
    }

    #[test]
    fn models_without_a_tokenizer_or_template_say_so() {
        let mut preset = load_model("tiny").unwrap();
        let e = format!("{:#}", chat_prompt_ids(&preset, &user_turn(None, "hi")).unwrap_err());
        assert!(e.contains("has no tokenizer") && e.contains("--prompt-ids"), "{e}");
        let e = format!("{:#}", text_prompt_ids(&preset, "hi").unwrap_err());
        assert!(e.contains("has no tokenizer"), "{e}");
        let mut answer = AnswerText::new(&preset);
        assert_eq!([answer.push(5), answer.push(17), answer.push(2), answer.finish()], ["5", ",17", ",2", ""], "ids, comma-separated");
        preset.tokenizer = gguf().tokenizer;
        let e = format!("{:#}", chat_prompt_ids(&preset, &user_turn(None, "hi")).unwrap_err());
        assert_eq!(e, format!("model {} has no chat template", preset.name));
    }
}
