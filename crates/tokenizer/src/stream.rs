//! Incremental detokenization for streaming output: emits text as tokens arrive while
//! holding back UTF-8 sequences that are split across tokens.

use crate::bpe::Tokenizer;

/// Turns a stream of token ids into text chunks that are always valid UTF-8.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    skip_special: bool,
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Creates a decoder; `skip_special` drops control tokens as in [`Tokenizer::decode`].
    pub fn new(tokenizer: &Tokenizer, skip_special: bool) -> Self {
        Self { tokenizer: tokenizer.clone(), skip_special, pending: Vec::new() }
    }

    /// Adds one token and returns the text it completes (possibly empty). Bytes of a UTF-8
    /// sequence that may still be completed by later tokens are held back; bytes that can
    /// never form valid UTF-8 are emitted as U+FFFD.
    pub fn push(&mut self, id: u32) -> String {
        self.pending.extend_from_slice(self.tokenizer.token_bytes(id, self.skip_special));
        let mut out = String::new();
        let mut rest = &self.pending[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).expect("validated prefix"));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        self.pending.drain(..self.pending.len() - keep);
        out
    }

    /// Returns whatever is still held back (as U+FFFD for an incomplete sequence) and resets.
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
