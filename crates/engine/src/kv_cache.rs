//! The paged KV-cache manager: fixed-size blocks, a free list, and the block table of each
//! sequence. It decides which blocks hold what; the storage itself belongs to the backend.

use lumen_trace::instrument::{mark, Category};

/// Block bookkeeping for all sequences.
#[derive(Debug)]
pub struct KvCacheManager {
    block_size: usize,
    num_blocks: usize,
    free: Vec<u32>,
    /// Blocks handed out and returned since creation, for statistics.
    pub allocated_total: u64,
    pub freed_total: u64,
}

impl KvCacheManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        KvCacheManager { block_size, num_blocks, free: (0..num_blocks as u32).rev().collect(), allocated_total: 0, freed_total: 0 }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    pub fn num_free(&self) -> usize {
        self.free.len()
    }
    pub fn num_used(&self) -> usize {
        self.num_blocks - self.free.len()
    }

    /// Blocks a table of `have` blocks must gain to hold `tokens` tokens.
    pub fn blocks_needed(&self, have: usize, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size).saturating_sub(have)
    }

    /// Grows `table` to hold `tokens` tokens; returns false (and changes nothing) if blocks run out.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let need = self.blocks_needed(table.len(), tokens);
        if need > self.free.len() {
            return false;
        }
        for _ in 0..need {
            table.push(self.free.pop().expect("checked above"));
        }
        self.allocated_total += need as u64;
        if need > 0 {
            mark(Category::Debug, "kv allocate", || Some(format!("{{\"blocks\":{need},\"free\":{}}}", self.free.len())));
        }
        true
    }

    /// Returns every block of `table` to the free list.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        self.freed_total += table.len() as u64;
        mark(Category::Debug, "kv free", || Some(format!("{{\"blocks\":{},\"free\":{}}}", table.len(), self.free.len() + table.len())));
        self.free.append(table);
    }

    /// Checks that the free list and `tables` together hold every block exactly once, and
    /// returns the number of blocks the tables hold. The error names the first block that is
    /// held twice, out of range, or lost (neither free nor in a table).
    pub fn audit<'a>(&self, tables: impl IntoIterator<Item = &'a [u32]>) -> Result<usize, String> {
        let mut owner: Vec<Option<&str>> = vec![None; self.num_blocks];
        let mut claim = |block: u32, by: &'static str| -> Result<(), String> {
            let slot = owner.get_mut(block as usize).ok_or_else(|| format!("block {block} is out of range (of {})", self.num_blocks))?;
            if let Some(first) = slot.replace(by) {
                return Err(format!("block {block} is held twice ({first} and {by})"));
            }
            Ok(())
        };
        for &b in &self.free {
            claim(b, "the free list")?;
        }
        let mut held = 0;
        for table in tables {
            for &b in table {
                claim(b, "a block table")?;
                held += 1;
            }
        }
        match owner.iter().position(Option::is_none) {
            Some(lost) => Err(format!("block {lost} is lost: neither free nor in a block table")),
            None => Ok(held),
        }
    }

    /// The KV slot of position `pos` of a sequence with `table`.
    pub fn slot(&self, table: &[u32], pos: usize) -> usize {
        table[pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_release_and_slots() {
        let mut m = KvCacheManager::new(4, 2);
        let mut a = Vec::new();
        assert!(m.grow(&mut a, 3));
        assert_eq!((a.len(), m.num_free()), (2, 2));
        assert_eq!(m.slot(&a, 2), a[1] as usize * 2);
        let mut b = Vec::new();
        assert!(!m.grow(&mut b, 5), "needs 3 blocks, 2 are free");
        assert!(b.is_empty() && m.num_free() == 2, "a failed grow changes nothing");
        m.release(&mut a);
        assert!(a.is_empty() && m.num_free() == 4);
        assert!(m.grow(&mut b, 8));
        assert_eq!((m.allocated_total, m.freed_total), (6, 2));
    }

    #[test]
    fn the_audit_finds_lost_doubled_and_foreign_blocks() {
        let mut m = KvCacheManager::new(6, 2);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert!(m.grow(&mut a, 3) && m.grow(&mut b, 4));
        assert_eq!(m.audit([a.as_slice(), b.as_slice()]), Ok(4));
        let e = m.audit([a.as_slice()]).unwrap_err();
        assert!(e.contains("lost"), "{e}");
        let twice = [a[0], a[1], a[0]];
        assert!(m.audit([twice.as_slice(), b.as_slice()]).unwrap_err().contains(&format!("block {} is held twice", a[0])));
        assert!(m.audit([a.as_slice(), b.as_slice(), &[9]]).unwrap_err().contains("block 9 is out of range"));
        m.release(&mut a);
        m.release(&mut b);
        assert_eq!(m.audit([]), Ok(0));
    }
}
