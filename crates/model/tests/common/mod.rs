//! Helpers the model's integration tests share: a whole prompt through the CPU decoder in one
//! forward pass, and a safetensors file written from named tensors.
#![allow(dead_code)]

use lumen_backend::AttentionSeq;
use lumen_model::{ForwardBatch, ForwardOutput, Model};
use std::path::Path;

/// `tokens` as one sequence from position 0, in one forward pass over a fresh paged cache of
/// 16-token blocks, with logits for `logit_rows`.
pub fn one_pass(model: &Model, tokens: &[u32], logit_rows: &[usize]) -> ForwardOutput {
    let decoder = model.cpu_decoder().unwrap();
    let n = tokens.len();
    let table: Vec<u32> = (0..n.div_ceil(16) as u32).collect();
    let mut kv = decoder.new_kv_storage(table.len(), 16);
    let positions: Vec<usize> = (0..n).collect();
    let seqs = [AttentionSeq { start: 0, len: n, first_pos: 0, block_table: &table }];
    decoder.forward_step(&ForwardBatch { tokens, positions: &positions, slots: &positions, seqs: &seqs, logit_rows }, &mut kv)
}

/// One tensor of a safetensors file: its name, dtype, shape and little-endian bytes.
pub struct StoredTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl StoredTensor {
    pub fn f32(name: String, shape: Vec<usize>, values: &[f32]) -> Self {
        StoredTensor { name, dtype: "F32".into(), shape, bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }
}

/// Writes `tensors` at `path` as one safetensors file: the JSON header's length, the header,
/// then the tensors' bytes in order.
pub fn write_safetensors(path: &Path, tensors: &[StoredTensor]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for t in tensors {
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.len()]}),
        );
        offset += t.bytes.len();
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header.as_bytes());
    tensors.iter().for_each(|t| file.extend(&t.bytes));
    std::fs::write(path, file).unwrap();
}
