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
//! all of them once changes pause ([`Store::trim_spares`]): marked as being trimmed by this pid
//! first, so that no allocation takes them until their pages are gone, even if the trimmer is
//! stopped meanwhile and a successor holds the lease; chunks a dead trimmer left are finished by
//! the next trim. Every owner word moves by compare-and-swap from the value it was seen with, so
//! a holder that was stopped and resumes cannot free or trim what its successor reallocated.

use std::sync::atomic::{AtomicU64, Ordering};

use gray_core::flat::{page_size, populate_pages};

use super::{Store, CHUNK, CHUNK_WORDS_AT};

/// The owner of a free chunk whose pages are kept for reuse.
const SPARE: u64 = u64::MAX;
/// The owner of a chunk whose pages process `pid` is giving back: `TRIMMING | pid`.
const TRIMMING: u64 = 1 << 63;

/// Blocks from this size up are populated by two threads at once.
const POPULATE_APART: usize = 4 << 20;

/// Maps the pages of `out` before they are written ([`populate_pages`]): chunks whose pages were
/// given back (after a pause in changes) would otherwise fault one page at a time. Giving a page
/// of shared memory (allocating, zeroing, accounting it) is kernel work that splits across cores:
/// the 24 MB of a 1M-entry list took 16-18 ms populated by one thread on the bench machine,
/// 9-10 ms by two.
fn populate(out: &mut [u8]) {
    if out.len() < POPULATE_APART {
        populate_pages(out);
        return;
    }
    // The advice takes whole pages from a page's start: split on one.
    let page = page_size();
    let (front, back) = out.split_at_mut(out.len() / 2 / page * page);
    std::thread::scope(|scope| {
        // Without a second thread the writes fault the back half in.
        let _ = std::thread::Builder::new()
            .name("gray-populate".into())
            .spawn_scoped(scope, || populate_pages(back));
        populate_pages(front);
    });
}

/// Whether `owner` names a block (not free, spare or being trimmed): block ids count up from 1.
fn is_block(owner: u64) -> bool {
    owner != 0 && owner & TRIMMING == 0
}

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
                    for (owner, &was) in owners[first..].iter().zip(&claimed) {
                        let _ =
                            owner.compare_exchange(id, was, Ordering::AcqRel, Ordering::Relaxed);
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
        populate(out);
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

    /// Whether `block` is allocated as it was when named, and not retired.
    pub(super) fn in_use(&self, block: Block) -> bool {
        self.owns(block) && self.retired()[block.first].load(Ordering::Acquire) == 0
    }

    /// Frees `block` at once: no manifest names it.
    pub(super) fn free(&self, block: Block) {
        if self.owns(block) {
            self.keep_spare(block.first, block.chunks, block.id);
        }
    }

    /// Marks block `id`'s chunks free, their pages kept; a chunk another block owns by now is
    /// left as it is.
    fn keep_spare(&self, first: usize, chunks: usize, id: u64) {
        let owners = &self.owners()[first..first + chunks];
        let spare = |owner: &AtomicU64| {
            owner
                .compare_exchange(id, SPARE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        };
        if spare(&owners[0]) {
            self.retired()[first].store(0, Ordering::Release);
        }
        for owner in &owners[1..] {
            spare(owner);
        }
    }

    /// Gives every spare chunk's pages back to the system, for every process at once: changes
    /// paused, or spares outnumber the chunks in use. Also finishes what a trimmer that died
    /// midway left.
    pub fn trim_spares(&self) {
        let owners = self.owners();
        let mine = TRIMMING | u64::from(std::process::id());
        let mut chunk = 0;
        while chunk < self.chunks {
            let first = chunk;
            while chunk < self.chunks && self.take_to_trim(&owners[chunk], mine) {
                chunk += 1;
            }
            if chunk == first {
                chunk += 1;
                continue;
            }
            // SAFETY: the chunks' own pages, inside the mapping, marked as this process's to
            // trim: no allocation takes them, and no manifest names them.
            unsafe {
                libc::madvise(
                    self.base.as_ptr().add(self.data_at + first * CHUNK).cast(),
                    (chunk - first) * CHUNK,
                    libc::MADV_REMOVE,
                );
            }
            for owner in &owners[first..chunk] {
                let _ = owner.compare_exchange(mine, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// Marks every spare chunk as process `pid`'s to trim, as a trimmer stopped midway leaves
    /// them; how many.
    #[cfg(test)]
    pub(super) fn mark_spares_trimmed_by(&self, pid: u32) -> usize {
        self.owners()
            .iter()
            .filter(|owner| {
                owner
                    .compare_exchange(
                        SPARE,
                        TRIMMING | u64::from(pid),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            })
            .count()
    }

    /// Marks a spare chunk, or one a dead trimmer left, as `mine` to trim.
    fn take_to_trim(&self, owner: &AtomicU64, mine: u64) -> bool {
        let seen = owner.load(Ordering::Acquire);
        let left_by_the_dead = seen != SPARE
            && seen & TRIMMING != 0
            && seen != mine
            && !super::alive((seen & !TRIMMING) as u32);
        (seen == SPARE || left_by_the_dead)
            && owner
                .compare_exchange(seen, mine, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
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
                let run = if is_block(id) { self.run(first, id) } else { 0 };
                chunk += run.max(1);
                if run > 0 {
                    return Some((first, run, id));
                }
            }
            None
        })
    }

    /// Retires, at generation `generation`, every block in use that `keep` does not name, of
    /// the first `allocated` blocks.
    pub(super) fn retire_others(&self, keep: &[Block], generation: u64, allocated: u64) {
        let retired = self.retired();
        for (first, _, id) in self.blocks() {
            if id <= allocated
                && !keep.iter().any(|b| b.first == first && b.id == id)
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
        let freeable: Vec<(usize, usize, u64)> = self
            .blocks()
            .filter(|&(first, _, _)| {
                let at = retired[first].load(Ordering::Acquire);
                at != 0 && at <= oldest
            })
            .collect();
        for &(first, run, id) in &freeable {
            self.keep_spare(first, run, id);
        }
        if self.chunks_spare() > self.chunks_held() {
            self.trim_spares();
        }
        freeable.iter().map(|&(_, run, _)| run).sum()
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
        self.count_owners(is_block)
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

    /// Bytes of spare chunks: free, their pages kept for the next change.
    pub fn bytes_spare(&self) -> usize {
        self.chunks_spare() * CHUNK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether every page of `bytes` (page-aligned) is mapped in, by mincore.
    fn resident(bytes: &[u8]) -> bool {
        let mut pages = vec![0u8; bytes.len().div_ceil(page_size())];
        // SAFETY: `pages` has a byte for each page of `bytes`, a page-aligned live mapping.
        let rc =
            unsafe { libc::mincore(bytes.as_ptr() as *mut _, bytes.len(), pages.as_mut_ptr()) };
        rc == 0 && pages.iter().all(|&p| p & 1 == 1)
    }

    #[test]
    fn a_large_block_is_populated_whole_by_its_two_halves() {
        // Not a whole number of pages in each half: the split still falls on a page.
        let len = POPULATE_APART + 3 * page_size() + 100;
        // SAFETY: a fresh shared anonymous mapping, as the store's; checked, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        // SAFETY: the mapping just made, `len` bytes, used by nothing else.
        let out = unsafe { std::slice::from_raw_parts_mut(base.cast::<u8>(), len) };
        assert!(!resident(out));
        populate(out);
        assert!(resident(out));
        // SAFETY: the mapping made above, no longer borrowed.
        unsafe { libc::munmap(base, len) };
    }
}
