//! The host's copy: one anonymous shared mapping made by the process that runs `require("gray")`
//! in init_by_lua (the nginx master, before it forks, beside the metrics region), so every worker
//! of this nginx, old and new across reloads, maps the same memory. One worker at a time holds
//! the Redis session ([`lease`]: its pid, a heartbeat and a fencing token in the header); it
//! publishes what it loaded as generations ([`generation`]: blocks of flat tables and texts,
//! listed by a manifest), and every worker reads them in place. [`readers`] keeps track of which
//! generations each process still reads, so that [`blocks`] no process reads are given back to
//! the system: a thousand changes leave memory where one leaves it.
//!
//! Nothing here is on the request path: the refresher threads publish and adopt; a request reads
//! the adopted tables as plain slices.

mod blocks;
mod generation;
mod lease;
mod readers;

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use once_cell::sync::OnceCell;

use crate::region::{read_sequenced, write_sequenced};

pub use generation::{Adopted, Checks, Content, Item, ItemForm, NewItem, Pin, StoreError};
pub use lease::Token;

const PAGE: usize = 4096;
/// The holder's status, as its link to Redis last was: a sequence number, a length, its JSON.
const STATUS_AT: usize = 512;
const STATUS_SLOT: usize = PAGE - STATUS_AT;
/// Records other workers leave for the holder to write to Redis (their guard trips): a state
/// word (0 free, else the writer's pid; odd length: ready), then a sequenced record.
const MAILBOX_SLOTS: usize = 64;
const MAILBOX_SLOT: usize = 2048;
/// Blocks are made of whole chunks: a small text costs one, a million-entry list a few hundred.
const CHUNK: usize = 64 << 10;
/// Processes that can read generations at once: every worker id, four times (workers still
/// draining after quick reloads read theirs until they exit).
const MAX_READERS: usize = 1024;
/// A reader's slot: its pid, its configuration cycle, the oldest generation it still reads, the
/// generation it is adopting.
const READER_SLOT: usize = 32;
/// A manifest: a sequence number, a length, then the manifest's JSON.
const MANIFEST_SLOT: usize = 256 << 10;
const MAILBOX_AT: usize = PAGE;
const READERS_AT: usize = MAILBOX_AT + MAILBOX_SLOTS * MAILBOX_SLOT;
const MANIFESTS_AT: usize = READERS_AT + MAX_READERS * READER_SLOT;
const CHUNK_WORDS_AT: usize = MANIFESTS_AT + 2 * MANIFEST_SLOT;
/// The mapping sizes tried, largest first: only what is written is ever committed, but a host
/// with strict overcommit may refuse a large reservation.
const DATA_SIZES: [usize; 3] = [4 << 30, 1 << 30, 256 << 20];

#[repr(C)]
struct Header {
    /// The session's holder: its fencing token (high half) and pid (low half, 0 when free).
    lease: AtomicU64,
    /// When the holder last proved itself alive, CLOCK_MONOTONIC milliseconds.
    heartbeat_ms: AtomicU64,
    /// The configuration cycle the holder runs under.
    holder_cycle: AtomicU64,
    /// The newest configuration cycle: the master counts one each time it runs init_by_lua.
    cycle: AtomicU64,
    /// The generation in force: the token that published it (high half), its number (bits 1..32)
    /// and which manifest slot holds it (bit 0).
    dir: AtomicU64,
    /// The generation's number, low 32 bits: readers wait on it (a futex shared by processes).
    published: AtomicU32,
    _pad: u32,
    /// Chunks in the data area.
    chunks: u64,
    /// Block ids given so far: each block's chunks carry its id.
    next_block: AtomicU64,
    /// Generation numbers given so far, one to each attempt to publish: a manifest written by a
    /// holder whose publish then failed never bears the number of the generation in force.
    next_generation: AtomicU64,
}

/// The store of this nginx: made once, by the master, before it forks (see [`create`]); unset in
/// a process that did not make one, where each worker holds its own session.
static STORE: OnceCell<Store> = OnceCell::new();

/// The configuration cycle the master last counted, before it forked this process: a worker's
/// own cycle, whatever the master counts after.
static CYCLE: AtomicU64 = AtomicU64::new(0);

/// Makes the store, once per process, where nginx has not forked yet (the master's
/// init_by_lua), and counts a configuration cycle.
pub fn create() -> io::Result<()> {
    let cycle = STORE.get_or_try_init(Store::create)?.next_cycle();
    CYCLE.store(cycle, Ordering::Release);
    Ok(())
}

/// The configuration cycle this worker was forked under.
pub fn own_cycle() -> u64 {
    CYCLE.load(Ordering::Acquire)
}

/// The store of this nginx, where there is one.
pub fn get() -> Option<&'static Store> {
    STORE.get()
}

pub struct Store {
    base: NonNull<u8>,
    size: usize,
    chunks: usize,
    data_at: usize,
    /// Blocks this process laid out as the holder and no generation lists yet, with their
    /// lengths (see [`Store::stage`]).
    staged: Mutex<Vec<(blocks::Block, usize)>>,
}

// SAFETY: everything in the mapping is reached through atomics, except blocks, which are written
// once by the lease holder before any manifest names them and only read after.
unsafe impl Send for Store {}
// SAFETY: as above.
unsafe impl Sync for Store {}

impl Store {
    /// Maps a new, zeroed store; pages are committed as they are first written.
    pub fn create() -> io::Result<Store> {
        let mut last_error = None;
        for data in DATA_SIZES {
            let chunks = data / CHUNK;
            let data_at = (CHUNK_WORDS_AT + 2 * chunks * 8).next_multiple_of(CHUNK);
            let size = data_at + data;
            // SAFETY: an anonymous mapping with no address hint; the result is checked.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                last_error = Some(io::Error::last_os_error());
                continue;
            }
            let store = Store {
                base: NonNull::new(base.cast()).expect("mmap returned a mapping"),
                size,
                chunks,
                data_at,
                staged: Mutex::new(Vec::new()),
            };
            // SAFETY: the mapping is fresh, page-aligned and no other process sees it yet.
            unsafe { (*store.base.as_ptr().cast::<Header>()).chunks = chunks as u64 };
            for slot in 0..MAX_READERS {
                store.reader_words(slot)[2..]
                    .iter()
                    .for_each(|w| w.store(u64::MAX, Ordering::Relaxed));
            }
            return Ok(store);
        }
        Err(last_error.expect("a size was tried"))
    }

    fn header(&self) -> &Header {
        // SAFETY: the header sits at the start of the mapping, which lives as long as `self`.
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    /// `count` words from byte `at` on, as atomics.
    fn words(&self, at: usize, count: usize) -> &[AtomicU64] {
        assert!(
            at.is_multiple_of(8) && at + count * 8 <= self.data_at,
            "words out of the store's tables"
        );
        // SAFETY: checked above to lie inside the mapping, 8-aligned (the mapping is
        // page-aligned), which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(at).cast::<AtomicU64>(), count) }
    }

    /// Writes the holder's status (JSON) for the other workers to show.
    pub fn write_status(&self, status: &[u8]) {
        write_sequenced(self.words(STATUS_AT, STATUS_SLOT / 8), status);
    }

    /// The holder's status as it last wrote it.
    pub fn read_status(&self) -> Option<Vec<u8>> {
        read_sequenced(self.words(STATUS_AT, STATUS_SLOT / 8))
    }

    /// Leaves `record` for the holder; false when every slot is taken (or it is too long).
    pub fn post(&self, record: &[u8]) -> bool {
        if record.len() > MAILBOX_SLOT - 24 {
            return false;
        }
        let pid = u64::from(std::process::id()) << 1;
        for slot in 0..MAILBOX_SLOTS {
            let words = self.words(MAILBOX_AT + slot * MAILBOX_SLOT, MAILBOX_SLOT / 8);
            let state = words[0].load(Ordering::Acquire);
            let free = state == 0 || (!alive((state >> 1) as u32) && state & 1 == 0);
            if free
                && words[0]
                    .compare_exchange(state, pid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                write_sequenced(&words[1..], record);
                words[0].store(pid | 1, Ordering::Release);
                return true;
            }
        }
        false
    }

    /// Takes every record left for the holder.
    pub fn collect(&self) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        for slot in 0..MAILBOX_SLOTS {
            let words = self.words(MAILBOX_AT + slot * MAILBOX_SLOT, MAILBOX_SLOT / 8);
            let state = words[0].load(Ordering::Acquire);
            if state & 1 == 1 {
                records.extend(read_sequenced(&words[1..]));
                words[0].store(0, Ordering::Release);
            }
        }
        records
    }

    /// Counts a new configuration cycle (the master, as init_by_lua runs); returns it.
    pub fn next_cycle(&self) -> u64 {
        self.header().cycle.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The newest configuration cycle.
    pub fn cycle(&self) -> u64 {
        self.header().cycle.load(Ordering::Acquire)
    }

    /// The generation last published, low 32 bits: what [`Store::wait`] compares.
    pub fn published(&self) -> u32 {
        self.header().published.load(Ordering::Acquire)
    }

    /// Waits until a generation other than `seen` is published, or `timeout` passes.
    pub fn wait(&self, seen: u32, timeout: Duration) {
        let word = &self.header().published;
        if word.load(Ordering::Acquire) != seen {
            return;
        }
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: a futex wait on a word of the shared mapping (not private: other processes
        // wake it), bounded by `timeout`; it only reads the word.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT,
                seen,
                &timeout as *const libc::timespec,
                std::ptr::null::<u32>(),
                0,
            );
        }
    }

    fn wake_readers(&self) {
        // SAFETY: wakes every process waiting on the shared word; reads nothing else.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.header().published.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0,
            );
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `create`, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.size);
        }
    }
}

/// CLOCK_MONOTONIC in milliseconds: the same clock in every process of the host.
fn monotonic_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the current time into `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}

/// Whether process `pid` exists (one of another user counts: only "no such process" is dead).
fn alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let signalled = unsafe { libc::kill(pid as libc::pid_t, 0) };
    signalled == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests;
