//! The metrics region: one anonymous shared mapping made by the process that runs
//! `require("gray")` in init_by_lua (the nginx master, before it forks), so every worker of this
//! nginx, the old ones still draining after a reload included, counts into the same memory; it
//! lives as long as the master (a binary upgrade's new master makes a new one). A region made in a
//! worker would be that worker's alone, so none is made there.
//!
//! It holds a registry of series names, so an index means the same series in every worker and
//! across reloads, and which process uses which series, so a series no live process uses can be
//! given to a new name ([`registry`]); which series' guards have tripped ([`trips`]); one block
//! of counters per worker id, cache-line aligned, each written only by the worker(s) with that id
//! and summed by a scrape (here); and each worker's state as it last published it ([`states`]).
//! Counting never blocks or allocates; only registering a name takes a lock, when a refresher
//! builds a snapshot.

mod registry;
mod states;
mod trips;

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::SystemTime;

use gray_core::clock;

pub use registry::RegisterError;

/// Series a region can hold, including the reserved series 0 (counts nothing).
pub const MAX_SERIES: usize = 2048;
/// Counters per series; what each counts is `metrics`' business.
pub const COUNTERS_PER_SERIES: usize = 16;
/// Worker ids (`ngx.worker.id()`) with a block of their own.
pub const MAX_WORKERS: usize = 256;
/// The most bytes of state a worker publishes.
pub const MAX_STATE: usize = STATE_SLOT - 16;
/// A series name is at most this long.
pub const MAX_NAME: usize = NAME_SLOT - 16;
/// Processes that can hold series at once: every worker id, four times (workers still draining
/// after quick reloads hold theirs until they exit).
const MAX_USERS: usize = 4 * MAX_WORKERS;

const PAGE: usize = 4096;
/// A series name: a sequence number and a length (a word each), then the name.
const NAME_SLOT: usize = 256;
const STATE_SLOT: usize = 4096;
/// A trip: the rule set version it tripped under (0: none), when (Unix milliseconds), and how
/// many times the series has tripped, been cleared or been given a new name.
const TRIP_SLOT: usize = 32;
/// A process that uses series: its pid (a word), then one bit per series.
const USER_SLOT: usize = 8 + MAX_SERIES / 8;
const NAMES_AT: usize = PAGE;
const TRIPS_AT: usize = NAMES_AT + MAX_SERIES * NAME_SLOT;
const USERS_AT: usize = TRIPS_AT + (MAX_SERIES * TRIP_SLOT).next_multiple_of(PAGE);
const STATES_AT: usize = USERS_AT + (MAX_USERS * USER_SLOT).next_multiple_of(PAGE);
const COUNTERS_AT: usize = STATES_AT + MAX_WORKERS * STATE_SLOT;
const BLOCK: usize = MAX_SERIES * COUNTERS_PER_SERIES * 8;
const SIZE: usize = COUNTERS_AT + MAX_WORKERS * BLOCK;

#[repr(C)]
struct Header {
    /// When the region was made, Unix milliseconds: a counter reset for Prometheus.
    created_ms: u64,
    /// The pid holding the registry lock, 0 when free.
    lock: AtomicU32,
    /// Series registered so far, series 0 included.
    registered: AtomicU32,
    /// One past the highest worker id that has counted.
    workers: AtomicU32,
    /// A worker of this nginx has counted a response, or `log()` has run: responses are counted.
    responses_counted: AtomicU32,
    /// Where the registry looks first for a series to give a new name: the one after the last
    /// it gave, so the series freed last are given last.
    reclaim_from: AtomicU32,
}

pub struct Region {
    base: NonNull<u8>,
}

// SAFETY: everything in the region past the header's creation time is reached through atomics.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Maps a new, zeroed region. Pages are committed as they are first written.
    pub fn create() -> io::Result<Region> {
        // SAFETY: an anonymous mapping with no address hint; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let region = Region {
            base: NonNull::new(base.cast()).expect("mmap returned a mapping"),
        };
        let created_ms = clock::unix_ms(SystemTime::now());
        // SAFETY: the mapping is fresh, page-aligned and no other process sees it yet.
        unsafe {
            (*region.base.as_ptr().cast::<Header>()).created_ms = created_ms;
        }
        region.header().registered.store(1, Ordering::Release);
        Ok(region)
    }

    fn header(&self) -> &Header {
        // SAFETY: the header sits at the start of the mapping, which lives as long as `self`.
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    /// `count` words from byte `at` on, as atomics: every part of the region past the header is
    /// only ever reached this way.
    fn words(&self, at: usize, count: usize) -> &[AtomicU64] {
        assert!(
            at.is_multiple_of(8) && at + count * 8 <= SIZE,
            "words out of the region"
        );
        // SAFETY: checked above to lie inside the mapping, 8-aligned (the mapping is
        // page-aligned), which lives as long as `self`; shared memory is only accessed as atomics.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(at).cast::<AtomicU64>(), count) }
    }

    /// When the region was made, Unix seconds.
    pub fn created(&self) -> f64 {
        self.header().created_ms as f64 / 1000.0
    }

    /// One past the highest worker id that has joined.
    pub fn workers(&self) -> usize {
        (self.header().workers.load(Ordering::Relaxed) as usize).min(MAX_WORKERS)
    }

    /// Records that responses are counted here (once; a load first keeps the line shared).
    pub fn note_responses_counted(&self) {
        let flag = &self.header().responses_counted;
        if flag.load(Ordering::Relaxed) == 0 {
            flag.store(1, Ordering::Relaxed);
        }
    }

    /// Whether a worker of this nginx has counted a response: a new worker then keeps track of
    /// the requests it routes from its first one.
    pub fn responses_counted(&self) -> bool {
        self.header().responses_counted.load(Ordering::Relaxed) != 0
    }

    /// The counters of worker `worker`: `COUNTERS_PER_SERIES` per series, series by series.
    /// Records the worker as one whose counters a scrape reads.
    pub fn join(&self, worker: usize) -> Option<&[AtomicU64]> {
        if worker >= MAX_WORKERS {
            return None;
        }
        self.header()
            .workers
            .fetch_max(worker as u32 + 1, Ordering::Relaxed);
        Some(self.block(worker))
    }

    fn block(&self, worker: usize) -> &[AtomicU64] {
        self.words(
            COUNTERS_AT + worker * BLOCK,
            MAX_SERIES * COUNTERS_PER_SERIES,
        )
    }

    /// Series `series`' counters in worker `worker`'s block.
    fn counters(&self, worker: usize, series: usize) -> &[AtomicU64] {
        &self.block(worker)[series * COUNTERS_PER_SERIES..][..COUNTERS_PER_SERIES]
    }

    /// Series `series`' counters summed over every worker that has joined.
    pub fn totals(&self, series: usize) -> [u64; COUNTERS_PER_SERIES] {
        let mut totals = [0u64; COUNTERS_PER_SERIES];
        if series >= MAX_SERIES {
            return totals;
        }
        for worker in 0..self.workers() {
            for (total, counter) in totals.iter_mut().zip(self.counters(worker, series)) {
                *total += counter.load(Ordering::Relaxed);
            }
        }
        totals
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `create`, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), SIZE);
        }
    }
}

/// Writes `bytes` into `words` (a sequence number, a length, then the bytes) so that readers in
/// other processes can tell a torn copy: the number is odd while writing. It is set, not
/// incremented, so a writer killed mid-write (an odd number left behind) does not turn the next
/// writer's parity around.
pub(crate) fn write_sequenced(words: &[AtomicU64], bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min((words.len() - 2) * 8)];
    let writing = (words[0].load(Ordering::Relaxed) | 1).wrapping_add(2);
    words[0].store(writing, Ordering::Relaxed);
    std::sync::atomic::fence(Ordering::Release);
    words[1].store(bytes.len() as u64, Ordering::Relaxed);
    for (word, chunk) in words[2..].iter().zip(bytes.chunks(8)) {
        let mut padded = [0u8; 8];
        padded[..chunk.len()].copy_from_slice(chunk);
        word.store(u64::from_le_bytes(padded), Ordering::Relaxed);
    }
    words[0].store(writing.wrapping_add(1), Ordering::Release);
}

/// What [`write_sequenced`] wrote in `words`; `None` if nothing was, or if a writer kept writing
/// while this read.
pub(crate) fn read_sequenced(words: &[AtomicU64]) -> Option<Vec<u8>> {
    let capacity = (words.len() - 2) * 8;
    for _ in 0..100 {
        let before = words[0].load(Ordering::Acquire);
        if before == 0 {
            return None;
        }
        if before % 2 == 1 {
            std::thread::yield_now();
            continue;
        }
        let len = (words[1].load(Ordering::Relaxed) as usize).min(capacity);
        let mut bytes = Vec::with_capacity(len + 8);
        for word in &words[2..2 + len.div_ceil(8)] {
            bytes.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        bytes.truncate(len);
        std::sync::atomic::fence(Ordering::Acquire);
        if words[0].load(Ordering::Relaxed) == before {
            return Some(bytes);
        }
    }
    None
}

/// Whether process `pid` exists (one of another user counts: only "no such process" is dead).
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let signalled = unsafe { libc::kill(pid as libc::pid_t, 0) };
    signalled == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_the_workers_that_joined() {
        let region = Region::create().unwrap();
        let series = region.series(b"s").unwrap() as usize;
        for worker in [0, 3] {
            let block = region.join(worker).unwrap();
            block[series * COUNTERS_PER_SERIES + 1].fetch_add(worker as u64 + 1, Ordering::Relaxed);
        }
        assert_eq!(region.workers(), 4);
        assert_eq!(region.totals(series)[1], 5);
        assert!(region.join(MAX_WORKERS).is_none());
    }

    #[test]
    fn counts_made_after_a_fork_reach_the_parent() {
        let region = Region::create().unwrap();
        let series = region.series(b"forked").unwrap() as usize;
        // SAFETY: the child only touches the region and exits at once.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            region.join(1).unwrap()[series * COUNTERS_PER_SERIES].fetch_add(41, Ordering::Relaxed);
            region.series(b"from the child").unwrap();
            // SAFETY: ends the child without running the test harness's exit handlers.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        region.join(0).unwrap()[series * COUNTERS_PER_SERIES].fetch_add(1, Ordering::Relaxed);
        assert_eq!(region.totals(series)[0], 42);
        assert_eq!(region.series(b"from the child").unwrap(), series as u32 + 1);
    }

    #[test]
    fn a_sequenced_copy_reads_back_as_written_and_heals_after_a_killed_writer() {
        let region = Region::create().unwrap();
        let words = region.words(STATES_AT, 4);
        assert_eq!(read_sequenced(words), None);
        write_sequenced(words, b"0123456789abcdef");
        assert_eq!(read_sequenced(words).unwrap(), b"0123456789abcdef");
        write_sequenced(words, b"short");
        assert_eq!(read_sequenced(words).unwrap(), b"short");
        words[0].store(7, Ordering::Relaxed);
        assert_eq!(read_sequenced(words), None);
        write_sequenced(words, b"healed");
        assert_eq!(read_sequenced(words).unwrap(), b"healed");
    }
}
