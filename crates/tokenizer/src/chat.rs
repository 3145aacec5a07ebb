//! Chat prompt formatting: renders a model's Jinja chat template (Hugging Face conventions)
//! with minijinja.

use anyhow::{anyhow, Result};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

const TEMPLATE_NAME: &str = "chat_template";

/// One conversation turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// Message text.
    pub content: String,
}

impl ChatMessage {
    /// Creates a message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template.
///
/// The environment matches Hugging Face `transformers`: `trim_blocks` and `lstrip_blocks`
/// on, loop controls, Python string/dict methods (`.strip()`, `.startswith()`, `.items()`,
/// ...) and a `raise_exception(message)` function that aborts rendering.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    /// Compiles `source`; syntax errors are reported with their line.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned()).map_err(|e| anyhow!("invalid chat template: {}", describe(&e)))?;
        Ok(Self { env })
    }

    /// Renders the prompt for `messages`. With `add_generation_prompt`, the template appends
    /// the opening of an assistant turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool, bos_token: &str, eos_token: &str) -> Result<String> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| anyhow!("chat template is unavailable: {}", describe(&e)))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos_token,
                eos_token => eos_token,
            })
            .map_err(|e| anyhow!("chat template rendering failed: {}", describe(&e)))
    }
}

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("raise_exception: {message}")))
}

/// The error with its chain of causes on one line.
fn describe(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![ChatMessage::new("system", "  be brief  "), ChatMessage::new("user", "hi")]
    }

    #[test]
    fn renders_with_hf_whitespace_rules_and_python_methods() {
        let src = "{{ bos_token }}{% for m in messages %}\n  {% if m.role.startswith('sys') %}\n[S]{{ m['content'].strip() }}\n  {% else %}\n[{{ m.role|upper }}]{{ m.content }}\n  {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}[A]{% endif %}";
        let out = ChatTemplate::new(src).unwrap().render(&msgs(), true, "<s>", "</s>").unwrap();
        assert_eq!(out, "<s>[S]be brief\n[USER]hi\n[A]");
    }

    #[test]
    fn raise_exception_surfaces_message() {
        let src = "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}";
        let err = ChatTemplate::new(src).unwrap().render(&msgs(), false, "", "").unwrap_err().to_string();
        assert!(err.contains("System role not supported"), "{err}");
        assert!(err.contains("rendering failed"), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported() {
        let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}").unwrap_err().to_string();
        assert!(err.starts_with("invalid chat template"), "{err}");
        assert!(err.contains("chat_template:1"), "{err}");
    }
}
