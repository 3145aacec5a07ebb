//! Paged KV-cache storage: per layer, `num_blocks` blocks of `block_size` token slots, each slot
//! holding `kv_heads × head_dim` keys and as many values. A token's slot is
//! `block_id * block_size + offset`; block tables map a sequence's positions to blocks.

/// The key/value memory of every layer.
pub struct KvStorage {
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

/// What attention needs to know about one sequence of the flattened batch.
#[derive(Debug, Clone)]
pub struct AttentionSeq<'a> {
    /// Index of the sequence's first token in the flattened batch.
    pub start: usize,
    /// Number of tokens of this sequence in the batch.
    pub len: usize,
    /// Position of the first of those tokens; the last one sees `first_pos + len` cached tokens.
    pub first_pos: usize,
    /// Blocks holding the sequence's positions, in order.
    pub block_table: &'a [u32],
}

impl KvStorage {
    pub fn new(layers: usize, num_blocks: usize, block_size: usize, kv_heads: usize, head_dim: usize) -> Self {
        let per_layer = num_blocks * block_size * kv_heads * head_dim;
        KvStorage {
            num_blocks,
            block_size,
            kv_heads,
            head_dim,
            keys: (0..layers).map(|_| vec![0.0; per_layer]).collect(),
            values: (0..layers).map(|_| vec![0.0; per_layer]).collect(),
        }
    }

    /// Bytes one token slot takes across all layers, keys and values.
    pub fn bytes_per_token(layers: usize, kv_heads: usize, head_dim: usize) -> usize {
        2 * layers * kv_heads * head_dim * std::mem::size_of::<f32>()
    }

    fn slot_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Stores each token's key and value row (`kv_heads × head_dim`) at its slot.
    pub fn write(&mut self, layer: usize, slots: &[usize], k: &[f32], v: &[f32]) {
        let w = self.slot_width();
        for (i, &slot) in slots.iter().enumerate() {
            self.keys[layer][slot * w..(slot + 1) * w].copy_from_slice(&k[i * w..(i + 1) * w]);
            self.values[layer][slot * w..(slot + 1) * w].copy_from_slice(&v[i * w..(i + 1) * w]);
        }
    }

    /// The keys and values of one block of one layer: `block_size` slots of `kv_heads × head_dim`.
    #[inline]
    pub fn block(&self, layer: usize, block: u32) -> (&[f32], &[f32]) {
        let len = self.block_size * self.slot_width();
        let at = block as usize * len;
        (&self.keys[layer][at..at + len], &self.values[layer][at..at + len])
    }
}
