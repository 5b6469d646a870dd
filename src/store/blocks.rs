//! The data area, in blocks of whole chunks. Two words per chunk: the id of the block that owns
//! it (0: free; [`SPARE`]: free, its pages kept), and, on a block's first chunk, the generation
//! at which it was retired (0: in use). Only the lease holder allocates, retires and frees; a
//! block is written before any manifest names it and never after. A retired block is freed when
//! no live process reads a generation before the one that retired it.
//!
//! A freed block keeps its pages, as a spare, for the next block to reuse: the next version of
//! a large list then costs no page faults, neither in the holder that writes it nor in the
//! workers that read it (their page tables still map those pages). Spares are given back to the
//! system (MADV_REMOVE, for every process at once) when they outnumber the chunks in use, and
//! all of them once changes pause ([`Store::trim_spares`]).

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Store, CHUNK, CHUNK_WORDS_AT};

/// The owner of a free chunk whose pages are kept for reuse.
const SPARE: u64 = u64::MAX;

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

    /// A new block of at least `len` bytes (one chunk for an empty one), on spare chunks if a
    /// run of them is long enough; `None` when no run of free chunks is.
    pub(super) fn allocate(&self, len: usize) -> Option<Block> {
        let chunks = len.div_ceil(CHUNK).max(1);
        let id = self.header().next_block.fetch_add(1, Ordering::AcqRel) + 1;
        let first = self
            .claim(chunks, id, |owner| owner == SPARE)
            .or_else(|| self.claim(chunks, id, |owner| owner == 0 || owner == SPARE))?;
        self.retired()[first].store(0, Ordering::Release);
        Some(Block { first, chunks, id })
    }

    /// Claims for block `id` the first run of `chunks` chunks whose owners are all `free`.
    fn claim(&self, chunks: usize, id: u64, free: impl Fn(u64) -> bool) -> Option<usize> {
        let owners = self.owners();
        let mut first = 0;
        while first + chunks <= self.chunks {
            match (first..first + chunks).find(|&c| !free(owners[c].load(Ordering::Acquire))) {
                Some(taken) => first = taken + 1,
                None => {
                    let mut claimed = Vec::with_capacity(chunks);
                    for chunk in &owners[first..first + chunks] {
                        let owner = chunk.load(Ordering::Acquire);
                        if !free(owner)
                            || chunk
                                .compare_exchange(owner, id, Ordering::AcqRel, Ordering::Relaxed)
                                .is_err()
                        {
                            break;
                        }
                        claimed.push(owner);
                    }
                    if claimed.len() == chunks {
                        return Some(first);
                    }
                    for (owner, was) in owners[first..].iter().zip(&claimed) {
                        owner.store(*was, Ordering::Release);
                    }
                    first += claimed.len() + 1;
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

    /// Has `write` fill the first `len` bytes of `block`; false if the block is no longer this
    /// holder's (it was stopped, and its successor freed it) or too small.
    pub(super) fn write_block(
        &self,
        block: Block,
        len: usize,
        write: impl FnOnce(&mut [u8]),
    ) -> bool {
        if len > block.chunks * CHUNK || !self.owns(block) {
            return false;
        }
        // SAFETY: the block's chunks are this holder's, inside the data area, and no manifest
        // names them yet: nobody else reads or writes them.
        let out = unsafe {
            std::slice::from_raw_parts_mut(
                self.base.as_ptr().add(self.data_at + block.first * CHUNK),
                len,
            )
        };
        write(out);
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
            self.keep_spare(block.first, block.chunks);
        }
    }

    /// Marks chunks free, their pages kept.
    fn keep_spare(&self, first: usize, chunks: usize) {
        self.retired()[first].store(0, Ordering::Release);
        for owner in &self.owners()[first..first + chunks] {
            owner.store(SPARE, Ordering::Release);
        }
    }

    /// Gives every spare chunk's pages back to the system, for every process at once: changes
    /// paused, or spares outnumber the chunks in use.
    pub fn trim_spares(&self) {
        let owners = self.owners();
        let mut chunk = 0;
        while chunk < self.chunks {
            let first = chunk;
            while chunk < self.chunks
                && owners[chunk]
                    .compare_exchange(SPARE, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                chunk += 1;
            }
            if chunk > first {
                // SAFETY: the chunks' own pages, inside the mapping; marked free (not spare)
                // first, and only the lease holder allocates: nobody reads or writes them.
                unsafe {
                    libc::madvise(
                        self.base.as_ptr().add(self.data_at + first * CHUNK).cast(),
                        (chunk - first) * CHUNK,
                        libc::MADV_REMOVE,
                    );
                }
            } else {
                chunk += 1;
            }
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
                let run = if id == 0 || id == SPARE {
                    0
                } else {
                    self.run(first, id)
                };
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

    /// Frees the retired blocks no live process reads, as spares; returns how many chunks it
    /// freed.
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
            self.keep_spare(first, run);
        }
        if self.chunks_spare() > self.chunks_held() {
            self.trim_spares();
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
        self.count_owners(|owner| owner != 0 && owner != SPARE)
    }

    /// Spare chunks: free, their pages kept for reuse.
    pub fn chunks_spare(&self) -> usize {
        self.count_owners(|owner| owner == SPARE)
    }

    fn count_owners(&self, counted: impl Fn(u64) -> bool) -> usize {
        self.owners()
            .iter()
            .filter(|o| counted(o.load(Ordering::Relaxed)))
            .count()
    }

    /// Bytes of the data area in use or retired but not yet freed.
    pub fn bytes_held(&self) -> usize {
        self.chunks_held() * CHUNK
    }
}
