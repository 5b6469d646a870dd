//! Who reads which generation. Each process that adopts generations has a slot: its pid, its
//! configuration cycle, the oldest generation whose blocks it still reads (a snapshot it has not
//! dropped may hold a list from several generations back), and the generation it is adopting,
//! announced before it reads the manifest. A block retired at generation `g` is freed only once
//! every live process's oldest and adopting generations are `g` or later; a dead process's slot
//! counts for nothing and is given to the next.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{alive, Store, MAX_READERS, READERS_AT, READER_SLOT};

/// Nothing: no generation held, none being adopted.
pub(super) const NONE: u64 = u64::MAX;
const PID: usize = 0;
const CYCLE: usize = 1;
const OLDEST: usize = 2;
const ADOPTING: usize = 3;

/// This process's slot and how many of its pins each generation has.
pub(super) struct Readers {
    slot: Option<usize>,
    pins: BTreeMap<u64, usize>,
}

pub(super) static READERS: Mutex<Readers> = Mutex::new(Readers {
    slot: None,
    pins: BTreeMap::new(),
});

impl Store {
    pub(super) fn reader_words(&self, slot: usize) -> &[AtomicU64] {
        self.words(READERS_AT + slot * READER_SLOT, READER_SLOT / 8)
    }

    /// This process's slot, taking a free one (or a dead process's) the first time; `None` when
    /// every slot is a live process's.
    pub(super) fn reader_slot(&self, readers: &mut Readers, cycle: u64) -> Option<usize> {
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
            if holder != 0 && alive(holder as u32) {
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

    /// Counts a pin of `generation`, read by this process until the pin is dropped.
    pub(super) fn pin(&self, readers: &mut Readers, slot: usize, generation: u64) {
        *readers.pins.entry(generation).or_default() += 1;
        self.note_oldest(readers, slot);
    }

    pub(super) fn unpin(&self, readers: &mut Readers, slot: usize, generation: u64) {
        if let Some(count) = readers.pins.get_mut(&generation) {
            *count -= 1;
            if *count == 0 {
                readers.pins.remove(&generation);
            }
        }
        self.note_oldest(readers, slot);
    }

    fn note_oldest(&self, readers: &Readers, slot: usize) {
        let oldest = readers.pins.keys().next().copied().unwrap_or(NONE);
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
