//! The data area, in blocks of whole chunks. Two words per chunk: the id of the block that owns
//! it (0: free), and, on a block's first chunk, the generation at which it was retired (0: in
//! use). Only the lease holder allocates, retires and frees; a block is written before any
//! manifest names it and never after. A retired block is freed (its pages given back with
//! MADV_REMOVE, for every process at once) when no live process reads a generation before the
//! one that retired it.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Store, CHUNK, CHUNK_WORDS_AT};

/// Where a block lies: its first chunk, its chunks, its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Block {
    pub first: usize,
    pub chunks: usize,
    pub id: u64,
}

impl Store {
    fn owners(&self) -> &[AtomicU64] {
        self.words(CHUNK_WORDS_AT, self.chunks)
    }

    fn retired(&self) -> &[AtomicU64] {
        self.words(CHUNK_WORDS_AT + self.chunks * 8, self.chunks)
    }

    /// A new block of at least `len` bytes (one chunk for an empty one); `None` when no run of
    /// free chunks is that long.
    pub(super) fn allocate(&self, len: usize) -> Option<Block> {
        let chunks = len.div_ceil(CHUNK).max(1);
        let owners = self.owners();
        let id = self.header().next_block.fetch_add(1, Ordering::AcqRel) + 1;
        let mut first = 0;
        while first + chunks <= self.chunks {
            match (first..first + chunks).find(|&c| owners[c].load(Ordering::Acquire) != 0) {
                Some(taken) => first = taken + 1,
                None => {
                    let claimed = (first..first + chunks).take_while(|&c| {
                        owners[c]
                            .compare_exchange(0, id, Ordering::AcqRel, Ordering::Relaxed)
                            .is_ok()
                    });
                    let claimed = claimed.count();
                    if claimed == chunks {
                        self.retired()[first].store(0, Ordering::Release);
                        return Some(Block { first, chunks, id });
                    }
                    for owner in &owners[first..first + claimed] {
                        owner.store(0, Ordering::Release);
                    }
                    first += claimed + 1;
                }
            }
        }
        None
    }

    /// The block's memory. Written only by the holder, before a manifest names the block.
    pub(super) fn block_bytes(&self, first: usize, len: usize) -> Option<&[u8]> {
        let at = first.checked_mul(CHUNK)?;
        if at.checked_add(len)? > self.chunks * CHUNK {
            return None;
        }
        // SAFETY: checked to lie inside the data area, which lives as long as `self`.
        Some(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(self.data_at + at), len) })
    }

    /// Writes `bytes` into `block`; false if the block is no longer this holder's (it was
    /// stopped, and its successor freed it) or too small.
    pub(super) fn write_block(&self, block: Block, bytes: &[u8]) -> bool {
        if bytes.len() > block.chunks * CHUNK || !self.owns(block) {
            return false;
        }
        // SAFETY: the block's chunks are this holder's, inside the data area, and no manifest
        // names them yet: nobody else reads or writes them.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.as_ptr().add(self.data_at + block.first * CHUNK),
                bytes.len(),
            );
        }
        true
    }

    /// Whether `block` is still allocated as it was when named.
    pub(super) fn owns(&self, block: Block) -> bool {
        block.chunks > 0
            && block
                .first
                .checked_add(block.chunks)
                .is_some_and(|end| end <= self.chunks)
            && self.owners()[block.first..block.first + block.chunks]
                .iter()
                .all(|o| o.load(Ordering::Acquire) == block.id)
    }

    /// Frees `block` at once: no manifest names it.
    pub(super) fn free(&self, block: Block) {
        if self.owns(block) {
            self.give_back(block.first, block.chunks);
        }
    }

    /// Gives chunks back to the system, for every process at once, and marks them free.
    fn give_back(&self, first: usize, chunks: usize) {
        // SAFETY: the chunks' own pages, inside the mapping; nobody reads them.
        unsafe {
            libc::madvise(
                self.base.as_ptr().add(self.data_at + first * CHUNK).cast(),
                chunks * CHUNK,
                libc::MADV_REMOVE,
            );
        }
        self.retired()[first].store(0, Ordering::Release);
        for owner in &self.owners()[first..first + chunks] {
            owner.store(0, Ordering::Release);
        }
    }

    /// Every block allocated, as `(first chunk, chunks, id)`, first to last.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize, u64)> + '_ {
        let owners = self.owners();
        let mut chunk = 0;
        std::iter::from_fn(move || {
            while chunk < self.chunks {
                let first = chunk;
                let id = owners[first].load(Ordering::Acquire);
                // An owner that changed meanwhile ends the run at once: move on all the same.
                let run = if id == 0 { 0 } else { self.run(first, id) };
                chunk += run.max(1);
                if run > 0 {
                    return Some((first, run, id));
                }
            }
            None
        })
    }

    /// Retires, at generation `generation`, every block in use that `keep` does not name.
    pub(super) fn retire_others(&self, keep: &[Block], generation: u64) {
        let retired = self.retired();
        for (first, _, id) in self.blocks() {
            if !keep.iter().any(|b| b.first == first && b.id == id)
                && retired[first].load(Ordering::Acquire) == 0
            {
                retired[first].store(generation, Ordering::Release);
            }
        }
    }

    /// Frees the retired blocks no live process reads; returns how many chunks it freed.
    pub fn reclaim(&self) -> usize {
        let oldest = self.oldest_read();
        let retired = self.retired();
        let freeable: Vec<(usize, usize)> = self
            .blocks()
            .filter(|&(first, _, _)| {
                let at = retired[first].load(Ordering::Acquire);
                at != 0 && at <= oldest
            })
            .map(|(first, run, _)| (first, run))
            .collect();
        for &(first, run) in &freeable {
            self.give_back(first, run);
        }
        freeable.iter().map(|&(_, run)| run).sum()
    }

    /// The chunks from `first` on that belong to block `id`.
    fn run(&self, first: usize, id: u64) -> usize {
        self.owners()[first..]
            .iter()
            .take_while(|o| o.load(Ordering::Acquire) == id)
            .count()
    }

    /// Chunks in use or retired but not yet freed.
    pub fn chunks_held(&self) -> usize {
        self.owners()
            .iter()
            .filter(|o| o.load(Ordering::Relaxed) != 0)
            .count()
    }

    /// Bytes of the data area in use or retired but not yet freed.
    pub fn bytes_held(&self) -> usize {
        self.chunks_held() * CHUNK
    }
}
