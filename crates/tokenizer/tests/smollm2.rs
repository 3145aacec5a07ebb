//! Checks the tokenizer and chat template against references produced from the real
//! SmolLM2 GGUF by `scripts/reference_tokenizer.py` (llama-cpp-python and jinja2).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lumen_tokenizer::{ChatMessage, ChatTemplate, PreTokenizer, StreamDecoder, Tokenizer, TokenizerSpec};
use serde::Deserialize;
use serde_json::json;

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Test-only reader for the GGUF v3 metadata section.
mod gguf {
    use super::*;

    #[derive(Debug, Clone)]
    pub enum Value {
        Int(i64),
        UInt(u64),
        /// f32/f64 values; the tokenizer needs none, so they are skipped.
        Float,
        Bool(bool),
        Str(String),
        Array(Vec<Value>),
    }

    impl Value {
        pub fn as_str(&self) -> &str {
            match self {
                Value::Str(s) => s,
                other => panic!("expected a string, got {other:?}"),
            }
        }
        pub fn as_u32(&self) -> u32 {
            match *self {
                Value::UInt(v) => v as u32,
                Value::Int(v) => v as u32,
                ref other => panic!("expected an integer, got {other:?}"),
            }
        }
        pub fn as_bool(&self) -> bool {
            match *self {
                Value::Bool(b) => b,
                ref other => panic!("expected a bool, got {other:?}"),
            }
        }
        pub fn as_array(&self) -> &[Value] {
            match self {
                Value::Array(a) => a,
                other => panic!("expected an array, got {other:?}"),
            }
        }
    }

    struct Reader(BufReader<File>);

    impl Reader {
        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            let mut buf = [0; N];
            self.0.read_exact(&mut buf).expect("truncated GGUF metadata");
            buf
        }
        fn u32(&mut self) -> u32 {
            u32::from_le_bytes(self.bytes())
        }
        fn u64(&mut self) -> u64 {
            u64::from_le_bytes(self.bytes())
        }
        fn string(&mut self) -> String {
            let len = self.u64() as usize;
            let mut buf = vec![0; len];
            self.0.read_exact(&mut buf).expect("truncated GGUF string");
            String::from_utf8(buf).expect("GGUF string is not UTF-8")
        }
        fn value(&mut self, ty: u32) -> Value {
            match ty {
                0 => Value::UInt(u8::from_le_bytes(self.bytes()).into()),
                1 => Value::Int(i8::from_le_bytes(self.bytes()).into()),
                2 => Value::UInt(u16::from_le_bytes(self.bytes()).into()),
                3 => Value::Int(i16::from_le_bytes(self.bytes()).into()),
                4 => Value::UInt(self.u32().into()),
                5 => Value::Int(i32::from_le_bytes(self.bytes()).into()),
                6 => {
                    self.bytes::<4>();
                    Value::Float
                }
                7 => Value::Bool(self.bytes::<1>()[0] != 0),
                8 => Value::Str(self.string()),
                9 => {
                    let elem = self.u32();
                    let count = self.u64();
                    Value::Array((0..count).map(|_| self.value(elem)).collect())
                }
                10 => Value::UInt(self.u64()),
                11 => Value::Int(i64::from_le_bytes(self.bytes())),
                12 => {
                    self.bytes::<8>();
                    Value::Float
                }
                other => panic!("unknown GGUF value type {other}"),
            }
        }
    }

    /// All metadata key/value pairs of a GGUF v3 file.
    pub fn read_metadata(path: &Path) -> Vec<(String, Value)> {
        let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let mut r = Reader(BufReader::new(file));
        assert_eq!(&r.bytes::<4>(), b"GGUF", "{} is not a GGUF file", path.display());
        let version = r.u32();
        assert_eq!(version, 3, "unsupported GGUF version {version}");
        let _tensor_count = r.u64();
        let kv_count = r.u64();
        (0..kv_count)
            .map(|_| {
                let key = r.string();
                let ty = r.u32();
                (key, r.value(ty))
            })
            .collect()
    }
}

struct Model {
    spec: TokenizerSpec,
    pre_name: String,
    chat_template: String,
    tokenizer: Tokenizer,
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = repo_root().join("models").join(MODEL_FILE);
        assert!(path.is_file(), "model file {} is missing: run scripts/setup.sh to download it", path.display());
        let meta = gguf::read_metadata(&path);
        let get = |key: &str| meta.iter().find(|(k, _)| k == key).map(|(_, v)| v).unwrap_or_else(|| panic!("GGUF metadata lacks {key}"));
        let strings = |key: &str| -> Vec<String> { get(key).as_array().iter().map(|v| v.as_str().to_owned()).collect() };
        assert_eq!(get("tokenizer.ggml.model").as_str(), "gpt2");
        let pre_name = get("tokenizer.ggml.pre").as_str().to_owned();
        let spec = TokenizerSpec {
            tokens: strings("tokenizer.ggml.tokens"),
            token_types: get("tokenizer.ggml.token_type").as_array().iter().map(|v| v.as_u32() as i32).collect(),
            merges: strings("tokenizer.ggml.merges"),
            pre: PreTokenizer::from_gguf_name(&pre_name).unwrap(),
            bos_id: Some(get("tokenizer.ggml.bos_token_id").as_u32()),
            eos_id: Some(get("tokenizer.ggml.eos_token_id").as_u32()),
            add_bos: get("tokenizer.ggml.add_bos_token").as_bool(),
        };
        let tokenizer = Tokenizer::new(spec.clone()).expect("building the SmolLM2 tokenizer");
        Model { spec, pre_name, chat_template: get("tokenizer.chat_template").as_str().to_owned(), tokenizer }
    })
}

#[derive(Deserialize)]
struct Case {
    text: String,
    parse_special: bool,
    ids: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let cases: Vec<Case> = serde_json::from_str(&fixture("smollm2_tokenizer.json")).unwrap();
    assert!(cases.len() >= 30, "fixture has only {} cases", cases.len());
    cases
}

fn assert_matches_reference(tok: &Tokenizer, what: &str) {
    let mismatches: Vec<String> = cases()
        .iter()
        .filter_map(|c| {
            let got = tok.encode(&c.text, c.parse_special);
            (got != c.ids)
                .then(|| format!("{:?} (parse_special={}):\n  expected {:?}\n  got      {:?}", c.text, c.parse_special, c.ids, got))
        })
        .collect();
    assert!(mismatches.is_empty(), "{what} differs from llama.cpp:\n{}", mismatches.join("\n"));
}

#[test]
fn encode_matches_llama_cpp_reference() {
    let m = model();
    assert_eq!(m.pre_name, "smollm");
    assert_eq!(m.tokenizer.vocab_size(), 49152);
    assert_eq!(m.tokenizer.bos_id(), Some(1));
    assert_eq!(m.tokenizer.eos_id(), Some(2));
    assert!(!m.tokenizer.add_bos());
    assert_matches_reference(&m.tokenizer, "GGUF tokenizer");
}

/// Bytes that SmolLM2's vocabulary has no token for; encoding drops them (as llama.cpp does).
const UNREPRESENTABLE: &[char] = &['\u{4}', '\u{6}', '\u{13}', '\u{14}', '\u{16}', '\u{1d}'];

#[test]
fn decode_round_trips() {
    let tok = &model().tokenizer;
    for c in cases() {
        let ids = tok.encode(&c.text, c.parse_special);
        let expected = c.text.replace(UNREPRESENTABLE, "");
        assert_eq!(tok.decode(&ids, false), expected, "round trip of {:?}", c.text);
    }
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>\n", true);
    assert_eq!(tok.decode(&ids, true), "user\nHi\n");
    assert_eq!(tok.id_to_token(1), Some("<|im_start|>"));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_to_id("Hello"), Some(19556));
}

#[test]
fn stream_decoder_holds_back_split_emoji() {
    let tok = &model().tokenizer;
    let text = "Emoji: 😀🚀 done";
    let ids = tok.encode(text, false);
    let mut dec = StreamDecoder::new(tok, false);
    let chunks: Vec<String> = ids.iter().map(|&id| dec.push(id)).collect();
    assert_eq!(dec.flush(), "");
    assert_eq!(chunks.concat(), text);
    // Both emoji are split across tokens: the completing token yields the whole emoji and
    // nothing of it leaks out earlier.
    for emoji in ['😀', '🚀'] {
        let at = chunks.iter().position(|c| c.contains(emoji)).unwrap();
        assert!(chunks[at].starts_with(emoji), "{chunks:?}");
        assert!(tok.token_bytes(ids[at], false).len() < 4, "{emoji} is not split: {chunks:?}");
    }
    let rocket_at = chunks.iter().position(|c| c.contains('🚀')).unwrap();
    assert_eq!(chunks[rocket_at - 1], "", "{chunks:?}");
    assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");

    // A stream that stops inside the emoji flushes the incomplete bytes as U+FFFD.
    let mut dec = StreamDecoder::new(tok, false);
    let head: String = ids[..rocket_at].iter().map(|&id| dec.push(id)).collect();
    assert_eq!(head, "Emoji: 😀");
    assert_eq!(dec.flush(), "\u{FFFD}");
}

#[test]
fn chat_template_matches_jinja2_reference() {
    #[derive(Deserialize)]
    struct ChatCase {
        messages: Vec<ChatMessage>,
        add_generation_prompt: bool,
        bos_token: String,
        eos_token: String,
        expected: String,
    }
    let cases: Vec<ChatCase> = serde_json::from_str(&fixture("smollm2_chat_template.json")).unwrap();
    assert!(cases.len() >= 2);
    let template = ChatTemplate::new(&model().chat_template).unwrap();
    for c in cases {
        let got = template.render(&c.messages, c.add_generation_prompt, &c.bos_token, &c.eos_token).unwrap();
        assert_eq!(got, c.expected, "messages: {:?}", c.messages);
    }
}

/// The same vocabulary written as a Hugging Face `tokenizer.json` (SmolLM2's pre-tokenizer
/// is Digits(individual) + ByteLevel) must tokenize identically.
#[test]
fn hf_json_loader_matches_reference() {
    let spec = &model().spec;
    let vocab: serde_json::Map<String, serde_json::Value> =
        spec.tokens.iter().enumerate().filter(|(id, _)| spec.token_types[*id] == 1).map(|(id, t)| (t.clone(), json!(id))).collect();
    let added: Vec<serde_json::Value> = spec
        .tokens
        .iter()
        .enumerate()
        .filter(|(id, _)| spec.token_types[*id] == 3)
        .map(|(id, t)| json!({"id": id, "content": t, "special": true}))
        .collect();
    let merges: Vec<Vec<&str>> = spec.merges.iter().map(|m| m.splitn(2, ' ').collect()).collect();
    let doc = json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": merges}
    });
    let dir = std::env::temp_dir().join(format!("lumen-tokenizer-smollm2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}).to_string()).unwrap();
    let loaded = Tokenizer::from_hf_json(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    let tok = loaded.unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.add_bos()), (Some(1), Some(2), false));
    assert_matches_reference(&tok, "tokenizer.json tokenizer");
}

/// Mixed fixture text plus worst cases for the regexes and merging: one 10k-byte word, a
/// long whitespace run, and CJK without spaces.
#[test]
fn encoding_10k_chars_is_fast() {
    let tok = &model().tokenizer;
    let mixed: String = cases()
        .iter()
        .map(|c| c.text.as_str())
        .cycle()
        .flat_map(str::chars)
        .take(10_000)
        .filter(|ch| !UNREPRESENTABLE.contains(ch))
        .collect();
    let texts = [
        ("mixed", mixed),
        ("one word", "abcdefghij".repeat(1_000)),
        ("whitespace", " \t".repeat(5_000) + "x"),
        ("cjk", "日本語のテキストと中文文本".repeat(770)),
    ];
    for (name, text) in texts {
        let best = (0..3)
            .map(|_| {
                let start = Instant::now();
                let ids = tok.encode(&text, true);
                let elapsed = start.elapsed();
                assert_eq!(tok.decode(&ids, false), text);
                elapsed
            })
            .min()
            .unwrap();
        println!("{name}: {} chars in {best:?}", text.chars().count());
        assert!(best < Duration::from_millis(50), "encoding {name} (10k chars) took {best:?}");
    }
}
