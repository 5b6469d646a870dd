//! Who reads which generation. Each process that adopts generations has a slot: its pid, its
//! configuration cycle, the oldest generation it still reads, and the generation it is adopting,
//! announced before it reads the manifest. A process reads a block as long as one of its pins
//! of it lives (a snapshot it has not dropped may hold a list adopted many generations back); what
//! it reads "from" is the last generation that listed the block: a block still in force holds
//! nothing back, and a retired one holds back the generation before its retirement. A block
//! retired at generation `g` is freed only once every live process's oldest and adopting
//! generations are `g` or later; a dead process's slot counts for nothing and is given to the
//! next.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use once_cell::sync::Lazy;

use super::{alive, Store, MAX_READERS, READERS_AT, READER_SLOT};

/// Nothing: no generation held, none being adopted.
pub(super) const NONE: u64 = u64::MAX;
const PID: usize = 0;
const CYCLE: usize = 1;
const OLDEST: usize = 2;
const ADOPTING: usize = 3;

/// This process's slot and its pins: by block id, how many, and the last generation it adopted
/// that listed the block.
pub(super) struct Readers {
    slot: Option<usize>,
    pins: HashMap<u64, (usize, u64)>,
}

/// Held only for a handful of map operations: a request thread dropping the last snapshot that
/// pins a block takes it.
pub(super) static READERS: Lazy<Mutex<Readers>> = Lazy::new(|| {
    Mutex::new(Readers {
        slot: None,
        pins: HashMap::new(),
    })
});

pub(super) fn readers() -> std::sync::MutexGuard<'static, Readers> {
    READERS.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    pub(super) fn reader_words(&self, slot: usize) -> &[AtomicU64] {
        self.words(READERS_AT + slot * READER_SLOT, READER_SLOT / 8)
    }

    /// This process's slot, taking a free one (or a dead process's) the first time; `None` when
    /// every slot is a live process's.
    pub(super) fn reader_slot(&self, cycle: u64) -> Option<usize> {
        let mut readers = readers();
        let pid = u64::from(std::process::id());
        if let Some(slot) = readers.slot {
            // A slot taken before a fork is the parent's.
            if self.reader_words(slot)[PID].load(Ordering::Acquire) == pid {
                return Some(slot);
            }
        }
        for slot in 0..MAX_READERS {
            let words = self.reader_words(slot);
            let holder = words[PID].load(Ordering::Acquire);
            // A slot under this process's own pid that this process did not take was a dead
            // process's, whose pid this one was given.
            if holder != 0 && holder != pid && alive(holder as u32) {
                continue;
            }
            if words[PID]
                .compare_exchange(holder, pid, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                words[CYCLE].store(cycle, Ordering::Relaxed);
                words[OLDEST].store(NONE, Ordering::Relaxed);
                words[ADOPTING].store(NONE, Ordering::Release);
                readers.slot = Some(slot);
                readers.pins.clear();
                return Some(slot);
            }
        }
        None
    }

    /// Announces that this process is adopting generation `generation` (or, with [`NONE`], is
    /// done adopting).
    pub(super) fn announce(&self, slot: usize, generation: u64) {
        self.reader_words(slot)[ADOPTING].store(generation, Ordering::SeqCst);
    }

    /// Counts one new pin of each of `pinned`, and moves every pin of a block `listed` names to
    /// `generation`: they are read from there on.
    pub(super) fn pin(&self, slot: usize, generation: u64, listed: &[u64], pinned: &[u64]) {
        let mut readers = readers();
        for block in listed {
            if let Some((_, read_from)) = readers.pins.get_mut(block) {
                *read_from = generation;
            }
        }
        for &block in pinned {
            readers.pins.entry(block).or_insert((0, generation)).0 += 1;
        }
        self.note_oldest(&readers, slot);
    }

    pub(super) fn unpin(&self, slot: usize, block: u64) {
        let mut readers = readers();
        let mut unread = false;
        if let Some((count, _)) = readers.pins.get_mut(&block) {
            *count -= 1;
            if *count == 0 {
                readers.pins.remove(&block);
                unread = true;
            }
        }
        self.note_oldest(&readers, slot);
        drop(readers);
        if unread {
            self.free_unlisted(block);
        }
    }

    fn note_oldest(&self, readers: &Readers, slot: usize) {
        let oldest = readers
            .pins
            .values()
            .map(|&(_, from)| from)
            .min()
            .unwrap_or(NONE);
        let words = self.reader_words(slot);
        if words[PID].load(Ordering::Relaxed) == u64::from(std::process::id()) {
            words[OLDEST].store(oldest, Ordering::SeqCst);
        }
    }

    /// The oldest generation a live process reads or is adopting: blocks retired before it (at
    /// it or earlier) are read by nobody.
    pub(super) fn oldest_read(&self) -> u64 {
        (0..MAX_READERS)
            .filter_map(|slot| {
                let words = self.reader_words(slot);
                let pid = words[PID].load(Ordering::SeqCst);
                (pid != 0 && alive(pid as u32)).then(|| {
                    words[OLDEST]
                        .load(Ordering::SeqCst)
                        .min(words[ADOPTING].load(Ordering::SeqCst))
                })
            })
            .min()
            .unwrap_or(NONE)
    }

    /// Whether a live process other than this one reads under configuration cycle `cycle` or a
    /// newer one.
    pub fn reader_of_cycle(&self, cycle: u64) -> bool {
        let me = u64::from(std::process::id());
        (0..MAX_READERS).any(|slot| {
            let words = self.reader_words(slot);
            let pid = words[PID].load(Ordering::Acquire);
            pid != 0
                && pid != me
                && words[CYCLE].load(Ordering::Acquire) >= cycle
                && alive(pid as u32)
        })
    }
}
