//! Byte-level (GPT-2 style) BPE tokenizer: vocabulary, merge ranks, special-token
//! splitting, encoding and decoding.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::pretokenizer::PreTokenizer;

/// GGUF token types (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// Ordinary BPE token, stored byte-level encoded.
    Normal,
    /// The unknown token.
    Unknown,
    /// Control token such as `<|im_start|>`; matched literally when parsing specials.
    Control,
    /// Added token stored as raw text; always matched literally.
    UserDefined,
    /// Placeholder that never appears in output.
    Unused,
    /// Raw byte token (`<0x0A>`), a SentencePiece concept; decodes to nothing here.
    Byte,
}

impl TokenType {
    /// Converts a GGUF token type code (1..=6).
    pub fn from_gguf(code: i32) -> Option<Self> {
        Some(match code {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// Everything needed to build a [`Tokenizer`], as stored in GGUF metadata.
#[derive(Debug, Clone)]
pub struct TokenizerSpec {
    /// Token strings indexed by id (normal tokens in byte-level encoded form).
    pub tokens: Vec<String>,
    /// GGUF token types per id (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte); empty means all normal.
    pub token_types: Vec<i32>,
    /// Merges as `"left right"` strings, highest priority first.
    pub merges: Vec<String>,
    /// Word splitting applied before BPE.
    pub pre: PreTokenizer,
    /// Beginning-of-sequence token.
    pub bos_id: Option<u32>,
    /// End-of-sequence token.
    pub eos_id: Option<u32>,
    /// Whether [`Tokenizer::encode`] prepends `bos_id`.
    pub add_bos: bool,
}

/// A byte-level BPE tokenizer. Cloning is cheap (the tables are shared).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    /// Decoded bytes of every token (raw text for control/user-defined tokens).
    pieces: Vec<Box<[u8]>>,
    vocab: HashMap<String, u32>,
    /// `(left, right) -> (rank, merged)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Token id of every single byte, or [`NO_TOKEN`] where the vocabulary has none.
    byte_ids: [u32; 256],
    /// Literally matched tokens, longest first: `(text, id, type)`.
    specials: Vec<(String, u32, TokenType)>,
    pre: PreTokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
}

impl Tokenizer {
    /// Builds a tokenizer, validating ids, token types and merges.
    pub fn new(spec: TokenizerSpec) -> Result<Self> {
        let TokenizerSpec { tokens, token_types, merges, pre, bos_id, eos_id, add_bos } = spec;
        let n = tokens.len();
        if n == 0 {
            bail!("tokenizer vocabulary is empty");
        }
        if u32::try_from(n).is_err() {
            bail!("tokenizer vocabulary has {n} tokens, more than u32 ids allow");
        }
        let types = if token_types.is_empty() {
            vec![TokenType::Normal; n]
        } else {
            if token_types.len() != n {
                bail!("tokenizer has {n} tokens but {} token types", token_types.len());
            }
            token_types
                .iter()
                .enumerate()
                .map(|(id, &code)| TokenType::from_gguf(code).with_context(|| format!("token {id} has invalid token type {code}")))
                .collect::<Result<Vec<_>>>()?
        };
        for (name, id) in [("bos", bos_id), ("eos", eos_id)] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                bail!("{name} token id {id} is outside the vocabulary of {n} tokens");
            }
        }
        if add_bos && bos_id.is_none() {
            bail!("add_bos is set but the tokenizer has no bos token");
        }

        let vocab: HashMap<String, u32> = tokens.iter().enumerate().map(|(id, t)| (t.clone(), id as u32)).collect();

        let mut byte_ids = [NO_TOKEN; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            let c = BYTE_TO_CHAR[b];
            if let Some(&id) = vocab.get(c.encode_utf8(&mut [0; 4]) as &str) {
                *slot = id;
            }
        }

        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, merge) in merges.iter().enumerate() {
            let (left, right) = split_merge(merge).with_context(|| format!("merge {rank} {merge:?} is not of the form \"a b\""))?;
            // Hugging Face rejects merges whose parts or result are outside the vocabulary;
            // such a merge could never produce a token, so it is left out.
            let merged = format!("{left}{right}");
            if let (Some(&l), Some(&r), Some(&m)) = (vocab.get(left), vocab.get(right), vocab.get(&merged)) {
                merge_map.entry((l, r)).or_insert((rank as u32, m));
            }
        }

        let pieces = tokens
            .iter()
            .zip(&types)
            .map(|(text, ty)| match ty {
                TokenType::Normal => byte_level_decode(text).into_boxed_slice(),
                TokenType::Unknown | TokenType::Control | TokenType::UserDefined => text.as_bytes().into(),
                TokenType::Unused | TokenType::Byte => Box::default(),
            })
            .collect();

        let mut specials: Vec<(String, u32, TokenType)> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (text, ty))| !text.is_empty() && matches!(ty, TokenType::Control | TokenType::UserDefined))
            .map(|(id, (text, &ty))| (text.clone(), id as u32, ty))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));

        Ok(Self {
            inner: Arc::new(Inner { tokens, types, pieces, vocab, merges: merge_map, byte_ids, specials, pre, bos_id, eos_id, add_bos }),
        })
    }

    /// Encodes `text`, prepending BOS when the tokenizer is configured to.
    ///
    /// With `parse_special`, control tokens written literally in `text` (e.g. `<|im_end|>`)
    /// become their ids; otherwise they are tokenized as ordinary text. User-defined tokens
    /// are always matched literally, as llama.cpp and Hugging Face tokenizers do.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let inner = &*self.inner;
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if inner.add_bos {
            ids.extend(inner.bos_id);
        }
        let mut scratch = Scratch::default();
        for fragment in self.split_specials(text, parse_special) {
            match fragment {
                Fragment::Token(id) => ids.push(id),
                Fragment::Text(t) => {
                    for word in inner.pre.split(t) {
                        self.encode_word(word, &mut scratch, &mut ids);
                    }
                }
            }
        }
        ids
    }

    /// Decodes `ids` to text. Control and unknown tokens are dropped when `skip_special`;
    /// ids outside the vocabulary are ignored; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id, skip_special));
        }
        String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }

    /// The bytes token `id` decodes to (empty for unknown ids, and for control and unknown
    /// tokens when `skip_special`).
    pub fn token_bytes(&self, id: u32, skip_special: bool) -> &[u8] {
        let inner = &*self.inner;
        match inner.types.get(id as usize) {
            None => &[],
            Some(TokenType::Control | TokenType::Unknown) if skip_special => &[],
            Some(_) => &inner.pieces[id as usize],
        }
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.inner.tokens.len()
    }

    /// Id of the token whose stored string is exactly `token`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.vocab.get(token).copied()
    }

    /// Stored string of token `id` (byte-level encoded for normal tokens).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.inner.tokens.get(id as usize).map(String::as_str)
    }

    /// Type of token `id`.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.inner.types.get(id as usize).copied()
    }

    /// Beginning-of-sequence token.
    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos_id
    }

    /// End-of-sequence token.
    pub fn eos_id(&self) -> Option<u32> {
        self.inner.eos_id
    }

    /// Whether [`Tokenizer::encode`] prepends the BOS token.
    pub fn add_bos(&self) -> bool {
        self.inner.add_bos
    }

    /// Splits `text` on literal special tokens, longest token first (llama.cpp order).
    fn split_specials<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut fragments = vec![Fragment::Text(text)];
        for (special, id, ty) in &self.inner.specials {
            if *ty == TokenType::Control && !parse_special {
                continue;
            }
            if !text.contains(special.as_str()) {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(t) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut last = 0;
                for (start, _) in t.match_indices(special.as_str()) {
                    if start > last {
                        next.push(Fragment::Text(&t[last..start]));
                    }
                    next.push(Fragment::Token(*id));
                    last = start + special.len();
                }
                if last < t.len() {
                    next.push(Fragment::Text(&t[last..]));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// Runs BPE on one pre-tokenized word and appends the resulting ids. Bytes without a
    /// vocabulary entry (some vocabularies lack rare control bytes) are dropped, as llama.cpp
    /// and Hugging Face tokenizers without an unknown token do.
    fn encode_word(&self, word: &str, scratch: &mut Scratch, out: &mut Vec<u32>) {
        let inner = &*self.inner;
        if inner.pre.ignore_merges() {
            let encoded: String = word.bytes().map(|b| BYTE_TO_CHAR[b as usize]).collect();
            if let Some(&id) = inner.vocab.get(&encoded) {
                out.push(id);
                return;
            }
        }
        let Scratch { symbols, heap } = scratch;
        symbols.clear();
        heap.clear();
        let len = word.len();
        symbols.extend(word.bytes().enumerate().map(|(i, b)| Symbol {
            id: inner.byte_ids[b as usize],
            prev: i.checked_sub(1),
            next: (i + 1 < len).then_some(i + 1),
            alive: true,
        }));
        let push_pair = |heap: &mut BinaryHeap<Reverse<(u32, usize)>>, symbols: &[Symbol], l: usize| {
            let Some(r) = symbols[l].next else { return };
            if let Some(&(rank, _)) = inner.merges.get(&(symbols[l].id, symbols[r].id)) {
                heap.push(Reverse((rank, l)));
            }
        };
        for i in 0..len.saturating_sub(1) {
            push_pair(heap, symbols, i);
        }
        while let Some(Reverse((rank, l))) = heap.pop() {
            if !symbols[l].alive {
                continue;
            }
            let Some(r) = symbols[l].next else { continue };
            let Some(&(current_rank, merged)) = inner.merges.get(&(symbols[l].id, symbols[r].id)) else {
                continue;
            };
            if current_rank != rank {
                continue;
            }
            symbols[l].id = merged;
            symbols[l].next = symbols[r].next;
            symbols[r].alive = false;
            if let Some(nn) = symbols[r].next {
                symbols[nn].prev = Some(l);
            }
            if let Some(p) = symbols[l].prev {
                push_pair(heap, symbols, p);
            }
            push_pair(heap, symbols, l);
        }
        out.extend(symbols.iter().filter(|s| s.alive && s.id != NO_TOKEN).map(|s| s.id));
    }
}

/// Marks a byte with no token; it never matches a merge and is dropped from the output.
const NO_TOKEN: u32 = u32::MAX;

/// A piece of input: text still to be BPE-encoded, or an already matched special token.
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// One symbol of a word during merging: a doubly linked list over the word's bytes.
struct Symbol {
    id: u32,
    prev: Option<usize>,
    next: Option<usize>,
    alive: bool,
}

/// Buffers reused across the words of one `encode` call.
#[derive(Default)]
struct Scratch {
    symbols: Vec<Symbol>,
    /// Candidate merges ordered by (rank, left position): lowest rank, then leftmost, first.
    heap: BinaryHeap<Reverse<(u32, usize)>>,
}

/// Splits a merge rule `"a b"` at the first space after the first character.
fn split_merge(merge: &str) -> Option<(&str, &str)> {
    let first_len = merge.chars().next()?.len_utf8();
    let space = first_len + merge[first_len..].find(' ')?;
    Some((&merge[..space], &merge[space + 1..]))
}

/// GPT-2 `bytes_to_unicode`: printable bytes map to themselves, the rest to U+0100 + n.
const BYTE_TO_CHAR: [char; 256] = byte_to_char_table();

const fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            b as u32
        } else {
            shifted += 1;
            0x100 + shifted - 1
        };
        table[b] = match char::from_u32(code) {
            Some(c) => c,
            None => panic!("byte-level table entry is not a char"),
        };
        b += 1;
    }
    table
}

/// Inverse of [`BYTE_TO_CHAR`], indexed by code point (all entries are below U+0144).
const CHAR_TO_BYTE: [Option<u8>; 0x144] = char_to_byte_table();

const fn char_to_byte_table() -> [Option<u8>; 0x144] {
    let mut table = [None; 0x144];
    let mut b = 0usize;
    while b < 256 {
        table[BYTE_TO_CHAR[b] as usize] = Some(b as u8);
        b += 1;
    }
    table
}

/// Maps a byte-level encoded token back to bytes; characters outside the byte table are
/// kept as their UTF-8 encoding.
fn byte_level_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match CHAR_TO_BYTE.get(c as usize).copied().flatten() {
            Some(b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

/// The 256 single-byte tokens of a byte-level vocabulary, in byte order.
#[cfg(test)]
pub(crate) fn byte_tokens() -> Vec<String> {
    BYTE_TO_CHAR.iter().map(|c| c.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte tokens + a few merges + `<|end|>` control and `<sep>` user-defined tokens.
    fn toy() -> Tokenizer {
        let mut tokens = byte_tokens();
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        tokens.push("<|end|>".into());
        tokens.push("<sep>".into());
        let mut token_types = vec![1; tokens.len()];
        let n = token_types.len();
        token_types[n - 2] = 3;
        token_types[n - 1] = 4;
        Tokenizer::new(TokenizerSpec {
            tokens,
            token_types,
            merges: merges.iter().map(|m| m.to_string()).collect(),
            pre: PreTokenizer::from_gguf_name("gpt2").unwrap(),
            bos_id: Some(n as u32 - 2),
            eos_id: Some(n as u32 - 2),
            add_bos: false,
        })
        .unwrap()
    }

    #[test]
    fn byte_table_matches_gpt2() {
        assert_eq!(BYTE_TO_CHAR[b'!' as usize], '!');
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[0], '\u{100}');
        assert_eq!(BYTE_TO_CHAR[0xAD], '\u{143}');
        for b in 0..=255u8 {
            assert_eq!(CHAR_TO_BYTE[BYTE_TO_CHAR[b as usize] as usize], Some(b));
        }
    }

    #[test]
    fn merges_apply_by_rank() {
        let tok = toy();
        let hello = tok.token_to_id("hello").unwrap();
        let wo = tok.token_to_id("Ġwo").unwrap();
        let ids = tok.encode("hello world", false);
        assert_eq!(ids[..2], [hello, wo]);
        assert_eq!(tok.decode(&ids, false), "hello world");
    }

    #[test]
    fn specials_follow_parse_special() {
        let tok = toy();
        let end = tok.token_to_id("<|end|>").unwrap();
        let sep = tok.token_to_id("<sep>").unwrap();
        assert_eq!(tok.encode("a<|end|>b", true), [b'a' as u32, end, b'b' as u32]);
        assert!(!tok.encode("a<|end|>b", false).contains(&end));
        assert_eq!(tok.encode("a<sep>b", false), [b'a' as u32, sep, b'b' as u32]);
        let ids = tok.encode("x<|end|>", true);
        assert_eq!(tok.decode(&ids, true), "x");
        assert_eq!(tok.decode(&ids, false), "x<|end|>");
    }

    #[test]
    fn tokenizer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<crate::StreamDecoder>();
    }

    #[test]
    fn bytes_missing_from_vocab_are_dropped() {
        let tokens = vec!["a".to_string(), "b".to_string()];
        let tok = Tokenizer::new(TokenizerSpec {
            tokens,
            token_types: vec![],
            merges: vec![],
            pre: PreTokenizer::from_gguf_name("gpt2").unwrap(),
            bos_id: None,
            eos_id: None,
            add_bos: false,
        })
        .unwrap();
        assert_eq!(tok.encode("a\u{4}b c", false), [0, 1]);
    }

    #[test]
    fn add_bos_prepends() {
        let mut spec_tokens = byte_tokens();
        spec_tokens.push("<s>".into());
        let tok = Tokenizer::new(TokenizerSpec {
            tokens: spec_tokens,
            token_types: vec![],
            merges: vec![],
            pre: PreTokenizer::from_gguf_name("gpt2").unwrap(),
            bos_id: Some(256),
            eos_id: None,
            add_bos: true,
        })
        .unwrap();
        assert_eq!(tok.encode("a", false), [256, b'a' as u32]);
    }

    #[test]
    fn bad_specs_are_rejected() {
        let spec = |tokens: Vec<String>, token_types: Vec<i32>, merges: Vec<String>| TokenizerSpec {
            tokens,
            token_types,
            merges,
            pre: PreTokenizer::from_gguf_name("gpt2").unwrap(),
            bos_id: None,
            eos_id: None,
            add_bos: false,
        };
        let err = Tokenizer::new(spec(vec![], vec![], vec![])).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = Tokenizer::new(spec(byte_tokens(), vec![1, 2], vec![])).unwrap_err();
        assert!(err.to_string().contains("token types"), "{err}");
        let err = Tokenizer::new(spec(byte_tokens(), vec![9; 256], vec![])).unwrap_err();
        assert!(err.to_string().contains("invalid token type 9"), "{err}");
        let err = Tokenizer::new(spec(byte_tokens(), vec![], vec!["ab".into()])).unwrap_err();
        assert!(format!("{err:#}").contains("\"ab\""), "{err:#}");
        let mut bad_bos = spec(byte_tokens(), vec![], vec![]);
        bad_bos.bos_id = Some(999);
        assert!(Tokenizer::new(bad_bos).is_err());
    }

    #[test]
    fn split_merge_handles_edge_cases() {
        assert_eq!(split_merge("a b"), Some(("a", "b")));
        assert_eq!(split_merge("Ġ Ġ"), Some(("Ġ", "Ġ")));
        assert_eq!(split_merge("ab"), None);
        assert_eq!(split_merge(""), None);
    }
}
