//! Loading a Hugging Face `tokenizer.json` (byte-level BPE models only) into a
//! [`TokenizerSpec`].

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::bpe::{Tokenizer, TokenizerSpec};
use crate::pretokenizer::{PreTokenizer, DIGITS_PATTERN, DIGIT_RUNS_PATTERN, GPT2_PATTERN};

const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json` describing a byte-level BPE model.
    ///
    /// Supported pre-tokenizers: `ByteLevel`, `Split` (regex, `Isolated`), `Digits` and
    /// `Sequence` of those. Special added tokens become control tokens, other added tokens
    /// user-defined ones. BOS comes from a `TemplateProcessing` post-processor; a
    /// `tokenizer_config.json` next to the file, if present, supplies `bos_token`,
    /// `eos_token` and `add_bos_token`.
    pub fn from_hf_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).with_context(|| format!("reading tokenizer file {}", path.display()))?;
        let json: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        let config_path = path.with_file_name("tokenizer_config.json");
        let config = match std::fs::read_to_string(&config_path) {
            Ok(text) => Some(serde_json::from_str::<Value>(&text).with_context(|| format!("{} is not valid JSON", config_path.display()))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", config_path.display())),
        };
        let spec = spec_from_hf(&json, config.as_ref()).with_context(|| format!("unsupported tokenizer file {}", path.display()))?;
        Self::new(spec).with_context(|| format!("invalid tokenizer file {}", path.display()))
    }
}

/// Builds a spec from parsed `tokenizer.json` (and optional `tokenizer_config.json`).
fn spec_from_hf(json: &Value, config: Option<&Value>) -> Result<TokenizerSpec> {
    let model = json.get("model").context("missing \"model\"")?;
    match model.get("type").and_then(Value::as_str) {
        Some("BPE") => {}
        Some(other) => bail!("model.type {other:?} is not supported (only \"BPE\")"),
        None => bail!("model.type is missing (only \"BPE\" is supported)"),
    }
    if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
        bail!("model.byte_fallback is set: SentencePiece-style BPE is not supported, only byte-level");
    }
    if let Some(normalizer) = json.get("normalizer").filter(|v| !v.is_null()) {
        bail!("normalizer {} is not supported", type_name(normalizer));
    }

    let vocab = model.get("vocab").and_then(Value::as_object).context("model.vocab is missing or not an object")?;
    let mut by_id: HashMap<u32, (String, i32)> = HashMap::with_capacity(vocab.len());
    for (token, id) in vocab {
        let id = as_id(id).with_context(|| format!("model.vocab[{token:?}] is not a token id"))?;
        by_id.insert(id, (token.clone(), 1));
    }
    for (i, added) in json.get("added_tokens").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default().iter().enumerate() {
        let id = added.get("id").and_then(as_id).with_context(|| format!("added_tokens[{i}].id is missing or invalid"))?;
        let content = added.get("content").and_then(Value::as_str).with_context(|| format!("added_tokens[{i}].content is missing"))?;
        let special = added.get("special").and_then(Value::as_bool).unwrap_or(false);
        let ty = if special { CONTROL } else { USER_DEFINED };
        by_id.insert(id, (content.to_owned(), ty));
    }
    let n = by_id.len();
    let mut tokens = Vec::with_capacity(n);
    let mut token_types = Vec::with_capacity(n);
    for id in 0..n as u32 {
        let (token, ty) = by_id.remove(&id).with_context(|| format!("token ids are not contiguous: id {id} is missing"))?;
        tokens.push(token);
        token_types.push(ty);
    }
    if let Some(id) = by_id.keys().min() {
        bail!("token ids are not contiguous: id {id} follows a gap");
    }

    let merges = model
        .get("merges")
        .and_then(Value::as_array)
        .context("model.merges is missing or not an array")?
        .iter()
        .enumerate()
        .map(|(i, m)| parse_merge(m).with_context(|| format!("model.merges[{i}] is invalid")))
        .collect::<Result<Vec<_>>>()?;

    let pre_json =
        json.get("pre_tokenizer").filter(|v| !v.is_null()).context("pre_tokenizer is missing: only byte-level BPE is supported")?;
    let mut patterns = Vec::new();
    let mut byte_level = false;
    collect_pre(pre_json, &mut patterns, &mut byte_level)?;
    if !byte_level {
        bail!("pre_tokenizer has no ByteLevel step: only byte-level BPE is supported");
    }
    let ignore_merges = model.get("ignore_merges").and_then(Value::as_bool) == Some(true);
    let pre = PreTokenizer::from_patterns(&patterns)?.with_ignore_merges(ignore_merges);

    let token_id = |name: &str| -> Result<u32> {
        tokens.iter().position(|t| t == name).map(|i| i as u32).ok_or_else(|| anyhow!("token {name:?} is not in the vocabulary"))
    };
    let mut bos_id = match json.get("post_processor") {
        Some(pp) => post_processor_bos(pp)?.map(token_id).transpose()?,
        None => None,
    };
    let mut add_bos = bos_id.is_some();
    let mut eos_id = None;
    if let Some(config) = config {
        if let Some(bos) = config.get("bos_token").and_then(token_content) {
            bos_id = Some(token_id(bos).context("tokenizer_config.json bos_token")?);
        }
        if let Some(eos) = config.get("eos_token").and_then(token_content) {
            eos_id = Some(token_id(eos).context("tokenizer_config.json eos_token")?);
        }
        if let Some(flag) = config.get("add_bos_token").and_then(Value::as_bool) {
            add_bos = flag;
        }
    }

    Ok(TokenizerSpec { tokens, token_types, merges, pre, bos_id, eos_id, add_bos })
}

/// Appends the regexes of a pre-tokenizer description; records whether ByteLevel occurs.
fn collect_pre(pre: &Value, patterns: &mut Vec<String>, byte_level: &mut bool) -> Result<()> {
    match pre.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            let steps =
                pre.get("pretokenizers").and_then(Value::as_array).context("pre_tokenizer Sequence has no \"pretokenizers\" array")?;
            for step in steps {
                collect_pre(step, patterns, byte_level)?;
            }
        }
        Some("ByteLevel") => {
            if pre.get("add_prefix_space").and_then(Value::as_bool) == Some(true) {
                bail!("pre_tokenizer ByteLevel with add_prefix_space=true is not supported");
            }
            if pre.get("use_regex").and_then(Value::as_bool).unwrap_or(true) {
                patterns.push(GPT2_PATTERN.to_owned());
            }
            *byte_level = true;
        }
        Some("Split") => {
            let behavior = pre.get("behavior").and_then(Value::as_str);
            if behavior != Some("Isolated") {
                bail!("pre_tokenizer Split with behavior {behavior:?} is not supported (only \"Isolated\")");
            }
            if pre.get("invert").and_then(Value::as_bool) == Some(true) {
                bail!("pre_tokenizer Split with invert=true is not supported");
            }
            let pattern = pre.get("pattern").context("pre_tokenizer Split has no pattern")?;
            if let Some(regex) = pattern.get("Regex").and_then(Value::as_str) {
                patterns.push(regex.to_owned());
            } else if let Some(literal) = pattern.get("String").and_then(Value::as_str) {
                patterns.push(fancy_regex::escape(literal).into_owned());
            } else {
                bail!("pre_tokenizer Split pattern {pattern} is neither Regex nor String");
            }
        }
        Some("Digits") => {
            let individual = pre.get("individual_digits").and_then(Value::as_bool).unwrap_or(false);
            let pattern = if individual { DIGITS_PATTERN } else { DIGIT_RUNS_PATTERN };
            patterns.push(pattern.to_owned());
        }
        _ => bail!("pre_tokenizer {} is not supported", type_name(pre)),
    }
    Ok(())
}

/// The special token a `TemplateProcessing` post-processor puts before a single sequence.
fn post_processor_bos(pp: &Value) -> Result<Option<&str>> {
    match pp.get("type").and_then(Value::as_str) {
        Some("TemplateProcessing") => {
            let first = pp.get("single").and_then(Value::as_array).and_then(|items| items.first());
            Ok(first.and_then(|item| item.get("SpecialToken")).and_then(|special| special.get("id")).and_then(Value::as_str))
        }
        Some("Sequence") => {
            for step in pp.get("processors").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
                if let Some(bos) = post_processor_bos(step)? {
                    return Ok(Some(bos));
                }
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// A merge as `"a b"` or `["a", "b"]`, normalized to `"a b"`.
fn parse_merge(merge: &Value) -> Result<String> {
    match merge {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => match parts.as_slice() {
            [Value::String(a), Value::String(b)] => Ok(format!("{a} {b}")),
            _ => bail!("expected a pair of strings, got {merge}"),
        },
        _ => bail!("expected \"a b\" or [\"a\", \"b\"], got {merge}"),
    }
}

fn as_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|id| u32::try_from(id).ok())
}

/// `tokenizer_config.json` token fields are a string or `{"content": ...}`.
fn token_content(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v.get("content").and_then(Value::as_str))
}

fn type_name(v: &Value) -> String {
    match v.get("type").and_then(Value::as_str) {
        Some(t) => format!("of type {t:?}"),
        None => format!("{v}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn byte_vocab() -> serde_json::Map<String, Value> {
        crate::bpe::byte_tokens().into_iter().enumerate().map(|(i, t)| (t, json!(i))).collect()
    }

    fn base() -> Value {
        let mut vocab = byte_vocab();
        vocab.insert("hi".into(), json!(256));
        json!({
            "added_tokens": [{"id": 257, "content": "<|eot|>", "special": true},
                             {"id": 258, "content": "<pad>", "special": false}],
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]},
            "post_processor": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": vocab, "merges": [["h", "i"]]}
        })
    }

    fn load(json: &Value) -> Result<Tokenizer> {
        Tokenizer::new(spec_from_hf(json, None)?)
    }

    #[test]
    fn loads_minimal_byte_level_bpe() {
        let tok = load(&base()).unwrap();
        assert_eq!(tok.vocab_size(), 259);
        assert_eq!(tok.encode("hi<|eot|>", true), [256, 257]);
        assert_eq!(tok.token_type(257), Some(crate::TokenType::Control));
        assert_eq!(tok.token_type(258), Some(crate::TokenType::UserDefined));
        assert_eq!(tok.encode("12", false), [b'1' as u32, b'2' as u32]);
        assert!(!tok.add_bos());
    }

    #[test]
    fn template_processing_sets_bos_and_config_sets_eos() {
        let mut json = base();
        json["post_processor"] = json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|eot|>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}]});
        let config = json!({"eos_token": {"content": "<pad>"}});
        let tok = Tokenizer::new(spec_from_hf(&json, Some(&config)).unwrap()).unwrap();
        assert_eq!(tok.bos_id(), Some(257));
        assert_eq!(tok.eos_id(), Some(258));
        assert_eq!(tok.encode("hi", false), [257, 256]);
    }

    fn err_of(json: &Value) -> String {
        format!("{:#}", load(json).unwrap_err())
    }

    #[test]
    fn unsupported_parts_are_named() {
        let mut json = base();
        json["model"]["type"] = json!("Unigram");
        assert!(err_of(&json).contains("\"Unigram\""));

        let mut json = base();
        json["normalizer"] = json!({"type": "NFC"});
        assert!(err_of(&json).contains("\"NFC\""));

        let mut json = base();
        json["pre_tokenizer"] = json!({"type": "Metaspace"});
        assert!(err_of(&json).contains("\"Metaspace\""));

        let mut json = base();
        json["pre_tokenizer"] = json!({"type": "Split", "pattern": {"Regex": "x"},
                                       "behavior": "Removed", "invert": false});
        assert!(err_of(&json).contains("Removed"));

        let mut json = base();
        json["pre_tokenizer"] = json!({"type": "Digits", "individual_digits": true});
        assert!(err_of(&json).contains("no ByteLevel"));
    }

    #[test]
    fn malformed_files_are_rejected() {
        let mut json = base();
        json["model"]["merges"] = json!([42]);
        assert!(err_of(&json).contains("model.merges[0]"));

        let mut json = base();
        json["model"]["vocab"]["gap"] = json!(1000);
        assert!(err_of(&json).contains("not contiguous"));

        let mut json = base();
        json["model"].as_object_mut().unwrap().remove("vocab");
        assert!(err_of(&json).contains("model.vocab"));

        let dir = std::env::temp_dir().join(format!("lumen-tokenizer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, "{ not json").unwrap();
        let err = format!("{:#}", Tokenizer::from_hf_json(&path).unwrap_err());
        assert!(err.contains("tokenizer.json") && err.contains("not valid JSON"), "{err}");
        std::fs::write(&path, json!({"model": {"type": "WordPiece"}}).to_string()).unwrap();
        let err = format!("{:#}", Tokenizer::from_hf_json(&path).unwrap_err());
        assert!(err.contains("tokenizer.json") && err.contains("WordPiece"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = format!("{:#}", Tokenizer::from_hf_json(&path).unwrap_err());
        assert!(err.contains("reading tokenizer file"), "{err}");
    }
}
