//! The metrics region: one anonymous shared mapping made by the process that runs
//! `require("gray")` in init_by_lua (the nginx master, before it forks), so every worker of this
//! nginx, the old ones still draining after a reload included, counts into the same memory; it
//! lives as long as the master (a binary upgrade's new master makes a new one). A region made in a
//! worker would be that worker's alone, so none is made there.
//!
//! It holds a registry of series names, so an index means the same series in every worker and
//! across reloads; which series' guards have tripped (for which rule set version, since when);
//! one block of counters per worker id, cache-line aligned, each written only by the worker(s)
//! with that id and summed by a scrape; and each worker's state as it last published it.
//! Counting never blocks or allocates; only registering a name takes a lock, when a refresher
//! publishes a snapshot.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use gray_core::clock;

/// Series a region can hold, including the reserved series 0 (counts nothing).
pub const MAX_SERIES: usize = 2048;
/// Counters per series; what each counts is `metrics`' business.
pub const COUNTERS_PER_SERIES: usize = 16;
/// Worker ids (`ngx.worker.id()`) with a block of their own.
pub const MAX_WORKERS: usize = 256;
/// The most bytes of state a worker publishes.
pub const MAX_STATE: usize = STATE_SLOT - 16;

const PAGE: usize = 4096;
const NAME_SLOT: usize = 256;
/// A series name is at most this long.
pub const MAX_NAME: usize = NAME_SLOT - 4;
const STATE_SLOT: usize = 4096;
const NAMES_AT: usize = PAGE;
const TRIPS_AT: usize = NAMES_AT + MAX_SERIES * NAME_SLOT;
/// A trip: the rule set version it tripped under (0: none), when (Unix milliseconds), and how
/// many times the series has tripped or been cleared.
const TRIP_SLOT: usize = 32;
const STATES_AT: usize = TRIPS_AT + (MAX_SERIES * TRIP_SLOT).next_multiple_of(PAGE);
const COUNTERS_AT: usize = STATES_AT + MAX_WORKERS * STATE_SLOT;
const BLOCK: usize = MAX_SERIES * COUNTERS_PER_SERIES * 8;
const SIZE: usize = COUNTERS_AT + MAX_WORKERS * BLOCK;
/// A registration waits at most this long for the lock before it gives up (the holder died).
const LOCK_PATIENCE: Duration = Duration::from_secs(1);

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
    /// A worker of this nginx has counted a response (`log()` is in use).
    responses_counted: AtomicU32,
}

#[derive(Debug)]
pub enum RegisterError {
    Full,
    NameTooLong(usize),
    Busy,
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegisterError::Full => write!(
                f,
                "all {} metrics series are taken (restart nginx to start over)",
                MAX_SERIES - 1
            ),
            RegisterError::NameTooLong(len) => {
                write!(f, "a series name of {len} bytes, over {MAX_NAME}")
            }
            RegisterError::Busy => write!(
                f,
                "the series registry stayed locked for {:.1}s",
                LOCK_PATIENCE.as_secs_f64()
            ),
        }
    }
}

pub struct Region {
    base: NonNull<u8>,
}

// SAFETY: everything in the region is reached through atomics, or written once under the
// registry lock before `registered` publishes it.
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

    /// When the region was made, Unix seconds.
    pub fn created(&self) -> f64 {
        self.header().created_ms as f64 / 1000.0
    }

    /// Series registered, series 0 included.
    pub fn registered(&self) -> usize {
        (self.header().registered.load(Ordering::Acquire) as usize).min(MAX_SERIES)
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

    /// The name of series `series` (registered ones only).
    pub fn name(&self, series: usize) -> Option<&[u8]> {
        if series == 0 || series >= self.registered() {
            return None;
        }
        // SAFETY: registered slots were written before `registered` was raised past them and
        // are never written again.
        unsafe {
            let slot = self.base.as_ptr().add(NAMES_AT + series * NAME_SLOT);
            let len = (slot.cast::<u32>().read() as usize).min(MAX_NAME);
            Some(std::slice::from_raw_parts(slot.add(4), len))
        }
    }

    /// The series named `name`, registered now if it is new.
    pub fn series(&self, name: &[u8]) -> Result<u32, RegisterError> {
        if let Some(found) = self.find(name, 1) {
            return Ok(found);
        }
        if name.len() > MAX_NAME {
            return Err(RegisterError::NameTooLong(name.len()));
        }
        let _lock = self.lock()?;
        let registered = self.registered();
        if let Some(found) = self.find(name, 1) {
            return Ok(found);
        }
        if registered >= MAX_SERIES {
            return Err(RegisterError::Full);
        }
        // SAFETY: slot `registered` is not visible to readers until `registered` is raised,
        // and only the lock holder writes it.
        unsafe {
            let slot = self.base.as_ptr().add(NAMES_AT + registered * NAME_SLOT);
            slot.cast::<u32>().write(name.len() as u32);
            std::ptr::copy_nonoverlapping(name.as_ptr(), slot.add(4), name.len());
        }
        self.header()
            .registered
            .store(registered as u32 + 1, Ordering::Release);
        Ok(registered as u32)
    }

    fn find(&self, name: &[u8], from: usize) -> Option<u32> {
        (from..self.registered())
            .find(|&i| self.name(i) == Some(name))
            .map(|i| i as u32)
    }

    fn lock(&self) -> Result<RegistryLock<'_>, RegisterError> {
        let lock = &self.header().lock;
        let me = std::process::id();
        let started = Instant::now();
        loop {
            match lock.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(RegistryLock(lock)),
                Err(holder) if !alive(holder) => {
                    let _ = lock.compare_exchange(holder, 0, Ordering::AcqRel, Ordering::Relaxed);
                }
                Err(_) if started.elapsed() > LOCK_PATIENCE => return Err(RegisterError::Busy),
                Err(_) => std::thread::yield_now(),
            }
        }
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
        // SAFETY: block `worker` lies inside the mapping, 8-aligned (page-aligned in fact), and
        // is only ever accessed as atomics.
        unsafe {
            std::slice::from_raw_parts(
                self.base
                    .as_ptr()
                    .add(COUNTERS_AT + worker * BLOCK)
                    .cast::<AtomicU64>(),
                MAX_SERIES * COUNTERS_PER_SERIES,
            )
        }
    }

    /// Series `series`' counters summed over every worker that has joined.
    pub fn totals(&self, series: usize) -> [u64; COUNTERS_PER_SERIES] {
        let mut totals = [0u64; COUNTERS_PER_SERIES];
        if series >= MAX_SERIES {
            return totals;
        }
        for worker in 0..self.workers() {
            let block = &self.block(worker)[series * COUNTERS_PER_SERIES..][..COUNTERS_PER_SERIES];
            for (total, counter) in totals.iter_mut().zip(block) {
                *total += counter.load(Ordering::Relaxed);
            }
        }
        totals
    }

    fn trip_slot(&self, series: usize) -> Option<&[AtomicU64; 3]> {
        if series == 0 || series >= MAX_SERIES {
            return None;
        }
        // SAFETY: trip slot `series` lies inside the mapping, 32-aligned, only accessed as atomics.
        Some(unsafe {
            &*self
                .base
                .as_ptr()
                .add(TRIPS_AT + series * TRIP_SLOT)
                .cast::<[AtomicU64; 3]>()
        })
    }

    /// How many times series `series` has tripped or been cleared: a guard that watched it
    /// under another count starts its window over.
    pub fn trip_epoch(&self, series: usize) -> u64 {
        self.trip_slot(series)
            .map_or(0, |[_, _, epoch]| epoch.load(Ordering::Acquire))
    }

    /// Marks series `series`' guard tripped under rule set version `version` at `at_ms`. Says
    /// whether this call tripped it (false: it already was, for that version).
    pub fn trip(&self, series: usize, version: u64, at_ms: u64) -> bool {
        let Some([tripped, at, epoch]) = self.trip_slot(series) else {
            return false;
        };
        let current = tripped.load(Ordering::Acquire);
        if current == version {
            return false;
        }
        // The time first: whoever sees the version sees its time, never an older one.
        at.store(at_ms, Ordering::Release);
        if tripped
            .compare_exchange(current, version, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        epoch.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// The rule set version series `series`' guard tripped under, and when (Unix ms).
    pub fn tripped(&self, series: usize) -> Option<(u64, u64)> {
        let [tripped, at, _] = self.trip_slot(series)?;
        match tripped.load(Ordering::Acquire) {
            0 => None,
            version => Some((version, at.load(Ordering::Acquire))),
        }
    }

    /// Clears series `series`' trip if it is still the one under `version`.
    pub fn untrip(&self, series: usize, version: u64) -> bool {
        self.trip_slot(series).is_some_and(|[tripped, _, epoch]| {
            let cleared = tripped
                .compare_exchange(version, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if cleared {
                epoch.fetch_add(1, Ordering::AcqRel);
            }
            cleared
        })
    }

    fn state_words(&self, worker: usize) -> &[AtomicU64] {
        // SAFETY: state slot `worker` lies inside the mapping, page-aligned, only accessed as
        // atomics.
        unsafe {
            std::slice::from_raw_parts(
                self.base
                    .as_ptr()
                    .add(STATES_AT + worker * STATE_SLOT)
                    .cast::<AtomicU64>(),
                STATE_SLOT / 8,
            )
        }
    }

    /// Publishes worker `worker`'s state (at most `MAX_STATE` bytes; longer is cut). A sequence
    /// number, odd while writing, lets readers in other processes skip a torn copy. It is set,
    /// not incremented, so a writer killed mid-write (an odd number left behind) does not turn
    /// the next writer's parity around. Two writers at once (an old worker draining after a
    /// reload and its successor) can still tear a copy: readers parse what they read and drop
    /// what does not parse.
    pub fn write_state(&self, worker: usize, state: &[u8]) {
        if worker >= MAX_WORKERS {
            return;
        }
        let words = self.state_words(worker);
        let state = &state[..state.len().min(MAX_STATE)];
        let writing = (words[0].load(Ordering::Relaxed) | 1).wrapping_add(2);
        words[0].store(writing, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        words[1].store(state.len() as u64, Ordering::Relaxed);
        for (word, chunk) in words[2..].iter().zip(state.chunks(8)) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
        words[0].store(writing.wrapping_add(1), Ordering::Release);
    }

    /// Worker `worker`'s last published state; `None` if it never published (or kept writing
    /// while this read it).
    pub fn read_state(&self, worker: usize) -> Option<Vec<u8>> {
        if worker >= MAX_WORKERS {
            return None;
        }
        let words = self.state_words(worker);
        for _ in 0..100 {
            let before = words[0].load(Ordering::Acquire);
            if before == 0 {
                return None;
            }
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let len = (words[1].load(Ordering::Relaxed) as usize).min(MAX_STATE);
            let mut state = Vec::with_capacity(len + 8);
            for word in &words[2..2 + len.div_ceil(8)] {
                state.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
            }
            state.truncate(len);
            std::sync::atomic::fence(Ordering::Acquire);
            if words[0].load(Ordering::Relaxed) == before {
                return Some(state);
            }
        }
        None
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

struct RegistryLock<'a>(&'a AtomicU32);

impl Drop for RegistryLock<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let signalled = unsafe { libc::kill(pid as libc::pid_t, 0) };
    signalled == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_keeps_its_series_and_series_zero_counts_nothing() {
        let region = Region::create().unwrap();
        let a = region.series(b"a").unwrap();
        let b = region.series(b"b").unwrap();
        assert_eq!((a, b), (1, 2));
        assert_eq!(region.series(b"a").unwrap(), a);
        assert_eq!(region.name(2), Some(&b"b"[..]));
        assert_eq!(region.name(0), None);
        assert!(matches!(
            region.series(&[b'x'; MAX_NAME + 1]),
            Err(RegisterError::NameTooLong(_))
        ));
    }

    #[test]
    fn a_full_registry_refuses_new_names_and_keeps_the_old() {
        let region = Region::create().unwrap();
        for i in 1..MAX_SERIES {
            assert_eq!(region.series(i.to_string().as_bytes()).unwrap(), i as u32);
        }
        assert!(matches!(
            region.series(b"one more"),
            Err(RegisterError::Full)
        ));
        assert_eq!(region.series(b"7").unwrap(), 7);
    }

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
    fn a_trip_happens_once_per_version_and_clears_only_for_its_version() {
        let region = Region::create().unwrap();
        let series = region.series(b"guarded").unwrap() as usize;
        assert_eq!(region.tripped(series), None);
        assert!(region.trip(series, 7, 1000));
        assert!(!region.trip(series, 7, 2000));
        assert_eq!(region.tripped(series), Some((7, 1000)));
        assert!(!region.untrip(series, 6));
        assert_eq!(region.trip_epoch(series), 1);
        assert!(region.untrip(series, 7));
        assert_eq!(region.tripped(series), None);
        assert_eq!(region.trip_epoch(series), 2);
        assert!(!region.trip(0, 7, 1000));
    }

    #[test]
    fn a_state_reads_back_as_written_and_is_cut_at_the_limit() {
        let region = Region::create().unwrap();
        assert_eq!(region.read_state(2), None);
        region.write_state(2, b"{\"pid\":1}");
        assert_eq!(region.read_state(2).unwrap(), b"{\"pid\":1}");
        region.write_state(2, &vec![b'x'; MAX_STATE + 100]);
        assert_eq!(region.read_state(2).unwrap().len(), MAX_STATE);
        region.write_state(2, b"short");
        assert_eq!(region.read_state(2).unwrap(), b"short");
        // A writer killed mid-write leaves an odd number: the next write still publishes.
        region.state_words(2)[0].store(7, Ordering::Relaxed);
        assert_eq!(region.read_state(2), None);
        region.write_state(2, b"healed");
        assert_eq!(region.read_state(2).unwrap(), b"healed");
    }
}
