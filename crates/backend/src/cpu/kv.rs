//! Paged KV-cache storage: per layer, `num_blocks` blocks of `block_size` token slots, each slot
//! holding `kv_heads × head_dim` keys and as many values, or, for multi-head latent attention
//! ([`KvStorage::latent`]), one row of `head_dim` values (the latent and the rotary key) and no
//! separate values. A token's slot is
//! `block_id * block_size + offset`; block tables map a sequence's positions to blocks. An FP8 store
//! ([`KvStorage::storing_fp8`]) keeps f32 values, each the value of the E4M3 code (scale 1) that
//! the CUDA cache would hold for it: the reference for `--kv-cache-dtype fp8`.

/// The key/value memory of every layer.
pub struct KvStorage {
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    keys: Vec<Vec<f32>>,
    /// Empty per layer in a latent store.
    values: Vec<Vec<f32>>,
    /// Written values are rounded as an FP8 cache rounds them.
    fp8: bool,
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
            fp8: false,
        }
    }

    /// A latent store: every slot of every layer holds one row of `width` values.
    pub fn latent(layers: usize, num_blocks: usize, block_size: usize, width: usize) -> Self {
        KvStorage {
            num_blocks,
            block_size,
            kv_heads: 1,
            head_dim: width,
            keys: (0..layers).map(|_| vec![0.0; num_blocks * block_size * width]).collect(),
            values: (0..layers).map(|_| Vec::new()).collect(),
            fp8: false,
        }
    }

    /// The same store, rounding what it is given as the CUDA FP8 cache does: to bf16 (the type
    /// the cache is written from), then to an E4M3 code of scale 1.
    pub fn storing_fp8(self) -> Self {
        KvStorage { fp8: true, ..self }
    }

    /// Bytes one token slot takes across all layers that keep `values_per_layer` values of it
    /// each (keys and values, or a latent row).
    pub fn bytes_per_token(layers: usize, values_per_layer: usize) -> usize {
        layers * values_per_layer * std::mem::size_of::<f32>()
    }

    fn slot_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    fn store(fp8: bool, to: &mut [f32], from: &[f32]) {
        if fp8 {
            to.iter_mut().zip(from).for_each(|(t, &f)| *t = crate::fp8::from_e4m3(crate::fp8::to_e4m3(half::bf16::from_f32(f).to_f32())));
        } else {
            to.copy_from_slice(from);
        }
    }

    /// Stores each token's key and value row (`kv_heads × head_dim`) at its slot.
    pub fn write(&mut self, layer: usize, slots: &[usize], k: &[f32], v: &[f32]) {
        let w = self.slot_width();
        for (i, &slot) in slots.iter().enumerate() {
            Self::store(self.fp8, &mut self.keys[layer][slot * w..(slot + 1) * w], &k[i * w..(i + 1) * w]);
            Self::store(self.fp8, &mut self.values[layer][slot * w..(slot + 1) * w], &v[i * w..(i + 1) * w]);
        }
    }

    /// Stores each token's latent row (`head_dim` values) at its slot of a latent store.
    pub fn write_latent(&mut self, layer: usize, slots: &[usize], rows: &[f32]) {
        let w = self.slot_width();
        for (i, &slot) in slots.iter().enumerate() {
            Self::store(self.fp8, &mut self.keys[layer][slot * w..(slot + 1) * w], &rows[i * w..(i + 1) * w]);
        }
    }

    /// The latent row of slot `slot` of one layer of a latent store.
    #[inline]
    pub fn latent_row(&self, layer: usize, slot: usize) -> &[f32] {
        let w = self.slot_width();
        &self.keys[layer][slot * w..(slot + 1) * w]
    }

    /// The keys and values of one block of one layer: `block_size` slots of `kv_heads × head_dim`.
    #[inline]
    pub fn block(&self, layer: usize, block: u32) -> (&[f32], &[f32]) {
        let len = self.block_size * self.slot_width();
        let at = block as usize * len;
        (&self.keys[layer][at..at + len], &self.values[layer][at..at + len])
    }
}
