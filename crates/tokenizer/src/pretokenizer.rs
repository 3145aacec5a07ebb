//! Pre-tokenization: splitting text into words with a sequence of regexes before BPE,
//! including the presets named by GGUF's `tokenizer.ggml.pre`.

use anyhow::{bail, Context, Result};
use fancy_regex::Regex;

/// The GPT-2 word-splitting regex (also used by HF `ByteLevel` with `use_regex: true`).
pub const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3 word-splitting regex (GGUF pre `llama-bpe`).
pub const LLAMA3_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2 word-splitting regex (GGUF pre `qwen2`).
pub const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Splits every digit into its own piece.
pub const DIGITS_PATTERN: &str = r"\p{N}";

/// Splits runs of digits into their own pieces.
pub const DIGIT_RUNS_PATTERN: &str = r"\p{N}+";

/// GGUF `tokenizer.ggml.pre` names accepted by [`PreTokenizer::from_gguf_name`].
pub const SUPPORTED_GGUF_PRE: &[&str] =
    &["default", "gpt2", "smollm", "starcoder", "refact", "command-r", "codeshell", "llama-bpe", "qwen2"];

/// How text is cut into words before BPE.
///
/// Each pattern is applied in order to every piece produced so far; a piece is replaced by
/// its matches and the non-empty text between them ("Isolated" split behaviour of llama.cpp
/// and Hugging Face tokenizers). `ignore_merges` makes a word that is already a vocabulary
/// entry encode to that entry without running merges (Llama 3 behaviour).
#[derive(Debug, Clone)]
pub struct PreTokenizer {
    patterns: Vec<Regex>,
    ignore_merges: bool,
}

impl PreTokenizer {
    /// Builds a pre-tokenizer from regex sources, applied in order.
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> Result<Self> {
        let patterns = patterns
            .iter()
            .map(|p| {
                let p = p.as_ref();
                Regex::new(p).with_context(|| format!("invalid pre-tokenizer regex {p:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { patterns, ignore_merges: false })
    }

    /// Builds the preset named by a GGUF `tokenizer.ggml.pre` value.
    pub fn from_gguf_name(name: &str) -> Result<Self> {
        match name {
            "default" | "gpt2" => Self::from_patterns(&[GPT2_PATTERN]),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" => Self::from_patterns(&[DIGITS_PATTERN, GPT2_PATTERN]),
            "llama-bpe" => Ok(Self::from_patterns(&[LLAMA3_PATTERN])?.with_ignore_merges(true)),
            "qwen2" => Self::from_patterns(&[QWEN2_PATTERN]),
            other => bail!("unsupported pre-tokenizer {other:?} (tokenizer.ggml.pre); supported: {}", SUPPORTED_GGUF_PRE.join(", ")),
        }
    }

    /// Sets whether whole words found in the vocabulary bypass BPE merges.
    pub fn with_ignore_merges(mut self, ignore_merges: bool) -> Self {
        self.ignore_merges = ignore_merges;
        self
    }

    /// Whether whole words found in the vocabulary bypass BPE merges.
    pub fn ignore_merges(&self) -> bool {
        self.ignore_merges
    }

    /// Splits `text` into words. The concatenation of the words is always `text`.
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![text];
        for re in &self.patterns {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                split_isolated(re, piece, &mut next);
            }
            pieces = next;
        }
        pieces.retain(|p| !p.is_empty());
        pieces
    }
}

/// Pushes the matches of `re` in `piece` and the text between them onto `out`.
///
/// If the regex engine gives up (backtrack limit), the unsplit remainder is kept as one piece,
/// so the output still covers the whole input.
fn split_isolated<'t>(re: &Regex, piece: &'t str, out: &mut Vec<&'t str>) {
    let mut last = 0;
    for m in re.find_iter(piece) {
        let Ok(m) = m else { break };
        if m.start() == m.end() {
            continue;
        }
        if m.start() > last {
            out.push(&piece[last..m.start()]);
        }
        out.push(m.as_str());
        last = m.end();
    }
    if last < piece.len() {
        out.push(&piece[last..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_gguf_name_is_rejected_with_supported_list() {
        let err = PreTokenizer::from_gguf_name("mystery-pre").unwrap_err().to_string();
        assert!(err.contains("mystery-pre"), "{err}");
        assert!(err.contains("smollm") && err.contains("llama-bpe"), "{err}");
    }

    #[test]
    fn all_supported_names_build() {
        for name in SUPPORTED_GGUF_PRE {
            PreTokenizer::from_gguf_name(name).unwrap();
        }
    }

    #[test]
    fn invalid_regex_is_rejected() {
        let err = PreTokenizer::from_patterns(&["(unclosed"]).unwrap_err();
        assert!(format!("{err:#}").contains("(unclosed"), "{err:#}");
    }

    #[test]
    fn gpt2_split_keeps_whitespace_semantics() {
        let pre = PreTokenizer::from_gguf_name("gpt2").unwrap();
        assert_eq!(pre.split("a   b"), ["a", "  ", " b"]);
        assert_eq!(pre.split("don't stop  "), ["don", "'t", " stop", "  "]);
        assert_eq!(pre.split("\tb"), ["\t", "b"]);
    }

    #[test]
    fn smollm_splits_digits_individually() {
        let pre = PreTokenizer::from_gguf_name("smollm").unwrap();
        assert_eq!(pre.split("x 123"), ["x", " ", "1", "2", "3"]);
    }

    #[test]
    fn llama3_groups_digits_by_three() {
        let pre = PreTokenizer::from_gguf_name("llama-bpe").unwrap();
        assert_eq!(pre.split("12345 ok"), ["123", "45", " ok"]);
        assert!(pre.ignore_merges());
    }
}
