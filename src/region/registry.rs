//! The series registry: a name for each series index, the same in every worker and across
//! reloads, and for each process the series it uses. Rules are renamed and rule sets replaced
//! over a master's lifetime, so names come and go: when every index has been given, a new name
//! takes a series no live process uses (its counters and trip cleared first), the one after the
//! last so given, so that the series freed last are reused last. Only when the processes alive
//! use every series at once is a name refused, and then the refresher says so as an error.
//!
//! Everything here runs under the registry lock, in a refresher thread, never on the request
//! path; a scrape reads names without it, through their sequence numbers.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{
    alive, read_sequenced, write_sequenced, Region, MAX_NAME, MAX_SERIES, MAX_USERS, MAX_WORKERS,
    NAMES_AT, NAME_SLOT, USERS_AT, USER_SLOT,
};

/// A registration waits at most this long for the lock before it gives up (the holder died).
const LOCK_PATIENCE: Duration = Duration::from_secs(1);
/// Words of a process's bitmap of series.
const USE_WORDS: usize = MAX_SERIES / 64;

#[derive(Debug)]
pub enum RegisterError {
    /// The processes alive use every series.
    Full,
    /// So many processes use series that none is free for this one.
    Users,
    NameTooLong(usize),
    Busy,
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegisterError::Full => write!(
                f,
                "all {} metrics series are in use by the loaded rule sets of live workers",
                MAX_SERIES - 1
            ),
            RegisterError::Users => write!(
                f,
                "{MAX_USERS} live processes already count into the metrics region"
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

impl Region {
    fn name_words(&self, series: usize) -> &[AtomicU64] {
        self.words(NAMES_AT + series * NAME_SLOT, NAME_SLOT / 8)
    }

    /// A process's slot: its pid, then its bitmap of series.
    fn user_words(&self, user: usize) -> &[AtomicU64] {
        self.words(USERS_AT + user * USER_SLOT, USER_SLOT / 8)
    }

    /// Indexes given a name so far, series 0 included.
    pub fn registered(&self) -> usize {
        (self.header().registered.load(Ordering::Acquire) as usize).min(MAX_SERIES)
    }

    /// The name of series `series`; `None` for one never named (or renamed while this read).
    pub fn name(&self, series: usize) -> Option<Vec<u8>> {
        if series == 0 || series >= self.registered() {
            return None;
        }
        read_sequenced(self.name_words(series))
    }

    /// The series named `name`, given a series if it is new, and marked as used by this
    /// process until its next [`Region::keep_only`].
    pub fn series(&self, name: &[u8]) -> Result<u32, RegisterError> {
        if name.len() > MAX_NAME {
            return Err(RegisterError::NameTooLong(name.len()));
        }
        let _lock = self.lock()?;
        let user = self.user(std::process::id())?;
        let series = match self.find(name) {
            Some(found) => found,
            None => self.give(name)?,
        };
        let bits = &self.user_words(user)[1..];
        bits[series / 64].fetch_or(1 << (series % 64), Ordering::Relaxed);
        Ok(series as u32)
    }

    /// Marks as used by this process the series `in_use` and no other: what its loaded rule
    /// sets and whitelist count into.
    pub fn keep_only(&self, in_use: &[u32]) -> Result<(), RegisterError> {
        let mut wanted = [0u64; USE_WORDS];
        for &series in in_use.iter().filter(|&&s| (s as usize) < MAX_SERIES) {
            wanted[series as usize / 64] |= 1 << (series % 64);
        }
        let _lock = self.lock()?;
        let user = self.user(std::process::id())?;
        for (word, bits) in self.user_words(user)[1..].iter().zip(wanted) {
            word.store(bits, Ordering::Relaxed);
        }
        Ok(())
    }

    fn find(&self, name: &[u8]) -> Option<usize> {
        (1..self.registered()).find(|&i| self.name(i).as_deref() == Some(name))
    }

    /// A series for the new name `name`: one never named, else one no live process uses.
    fn give(&self, name: &[u8]) -> Result<usize, RegisterError> {
        let registered = self.registered();
        if registered < MAX_SERIES {
            write_sequenced(self.name_words(registered), name);
            self.header()
                .registered
                .store(registered as u32 + 1, Ordering::Release);
            return Ok(registered);
        }
        let series = self.unused().ok_or(RegisterError::Full)?;
        // Odd while renamed: a scrape skips the series until its counters are cleared and its
        // new name written.
        let words = self.name_words(series);
        words[0].store(words[0].load(Ordering::Relaxed) | 1, Ordering::Release);
        for worker in 0..MAX_WORKERS {
            for counter in self.counters(worker, series) {
                counter.store(0, Ordering::Relaxed);
            }
        }
        self.clear_trip(series);
        write_sequenced(words, name);
        Ok(series)
    }

    /// A series no live process uses, looking from the one after the last given; forgets the
    /// processes that have exited.
    fn unused(&self) -> Option<usize> {
        let mut used = [0u64; USE_WORDS];
        used[0] = 1;
        for user in 0..MAX_USERS {
            let words = self.user_words(user);
            let pid = words[0].load(Ordering::Relaxed) as u32;
            if pid == 0 {
                continue;
            }
            if !alive(pid) {
                words.iter().for_each(|w| w.store(0, Ordering::Relaxed));
                continue;
            }
            for (all, word) in used.iter_mut().zip(&words[1..]) {
                *all |= word.load(Ordering::Relaxed);
            }
        }
        let from = self.header().reclaim_from.load(Ordering::Relaxed) as usize;
        let series = (0..MAX_SERIES)
            .map(|i| (from + i) % MAX_SERIES)
            .find(|&s| used[s / 64] & (1 << (s % 64)) == 0)?;
        self.header()
            .reclaim_from
            .store(((series + 1) % MAX_SERIES) as u32, Ordering::Relaxed);
        Some(series)
    }

    /// Process `pid`'s slot, taking a free one (or an exited process's) the first time.
    fn user(&self, pid: u32) -> Result<usize, RegisterError> {
        let pid_of = |user: usize| self.user_words(user)[0].load(Ordering::Relaxed) as u32;
        if let Some(user) = (0..MAX_USERS).find(|&u| pid_of(u) == pid) {
            return Ok(user);
        }
        let free = (0..MAX_USERS)
            .find(|&u| pid_of(u) == 0 || !alive(pid_of(u)))
            .ok_or(RegisterError::Users)?;
        let words = self.user_words(free);
        words[1..]
            .iter()
            .for_each(|w| w.store(0, Ordering::Relaxed));
        words[0].store(pid.into(), Ordering::Relaxed);
        Ok(free)
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
}

struct RegistryLock<'a>(&'a AtomicU32);

impl Drop for RegistryLock<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::super::COUNTERS_PER_SERIES;
    use super::*;

    /// Runs `child` in a forked process that exits at once; waits for it.
    fn in_child(child: impl FnOnce()) {
        // SAFETY: the child only touches the region and exits at once.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            child();
            // SAFETY: ends the child without running the test harness's exit handlers.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }

    fn fill(region: &Region) {
        for i in region.registered()..MAX_SERIES {
            assert_eq!(region.series(i.to_string().as_bytes()).unwrap(), i as u32);
        }
    }

    #[test]
    fn a_name_keeps_its_series_and_series_zero_counts_nothing() {
        let region = Region::create().unwrap();
        let a = region.series(b"a").unwrap();
        let b = region.series(b"b").unwrap();
        assert_eq!((a, b), (1, 2));
        assert_eq!(region.series(b"a").unwrap(), a);
        assert_eq!(region.name(2).unwrap(), b"b");
        assert_eq!(region.name(0), None);
        assert!(matches!(
            region.series(&[b'x'; MAX_NAME + 1]),
            Err(RegisterError::NameTooLong(_))
        ));
    }

    #[test]
    fn a_full_registry_in_use_refuses_new_names_and_keeps_the_old() {
        let region = Region::create().unwrap();
        fill(&region);
        assert!(matches!(
            region.series(b"one more"),
            Err(RegisterError::Full)
        ));
        assert_eq!(region.series(b"7").unwrap(), 7);
    }

    #[test]
    fn a_new_name_takes_a_series_its_process_let_go_counters_and_trip_cleared() {
        let region = Region::create().unwrap();
        fill(&region);
        let kept: Vec<u32> = (1..MAX_SERIES as u32)
            .filter(|&s| s != 9 && s != 5)
            .collect();
        region.keep_only(&kept).unwrap();
        region.join(0).unwrap()[5 * COUNTERS_PER_SERIES].fetch_add(3, Ordering::Relaxed);
        region.trip(5, 1, 1000);
        let epoch = region.trip_epoch(5);
        assert_eq!(region.series(b"renamed").unwrap(), 5);
        assert_eq!(region.name(5).unwrap(), b"renamed");
        assert_eq!(region.totals(5)[0], 0);
        assert_eq!(region.tripped(5), None);
        assert!(region.trip_epoch(5) > epoch);
        // The next goes on from there, and the old names are gone for good.
        assert_eq!(region.series(b"again").unwrap(), 9);
        assert!(matches!(region.series(b"5"), Err(RegisterError::Full)));
    }

    #[test]
    fn a_series_another_live_process_uses_is_not_taken_one_an_exited_process_used_is() {
        let region = Region::create().unwrap();
        fill(&region);
        region.keep_only(&[]).unwrap();
        // A child that marks series 3 and stays alive until told to exit; another that marks
        // series 4 and exits.
        let mut pipe = [0; 2];
        // SAFETY: a pipe for the child to wait on.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child only touches the region and the pipe, and exits.
        let holder = unsafe { libc::fork() };
        if holder == 0 {
            // SAFETY: the child keeps only the reading end, so the parent's close ends its wait.
            unsafe { libc::close(pipe[1]) };
            region.keep_only(&[3]).unwrap();
            let mut byte = 0u8;
            // SAFETY: blocks on the pipe until the parent closes it.
            unsafe { libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1) };
            // SAFETY: ends the child without running the test harness's exit handlers.
            unsafe { libc::_exit(0) };
        }
        in_child(|| region.keep_only(&[1, 2, 4]).unwrap());
        while (0..MAX_USERS)
            .all(|u| region.user_words(u)[0].load(Ordering::Relaxed) != holder as u64)
        {
            std::thread::yield_now();
        }
        let given: Vec<u32> = (0..3)
            .map(|i| region.series(format!("new {i}").as_bytes()).unwrap())
            .collect();
        assert_eq!(given, vec![1, 2, 4]);
        // SAFETY: closes both ends: the holder reads end of file and exits.
        unsafe {
            libc::close(pipe[1]);
            libc::close(pipe[0]);
            libc::waitpid(holder, std::ptr::null_mut(), 0);
        }
    }
}
