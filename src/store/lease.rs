//! Who holds the Redis session: a lease in the store's header, the holder's pid beside a fencing
//! token that every takeover raises, and a heartbeat the holder's process renews. Any worker
//! takes the lease when it is free (released by a holder that stepped down or retired), when its
//! holder's process is gone (SIGKILL, a crash), or when it saw the same lease and heartbeat for
//! longer than a holder may be silent (a holder stopped or hung): judged by what the taker saw
//! change, not by comparing clocks, so a taker preempted between taking the lease and its first
//! heartbeat is not taken over at once. A takeover also stamps its token on the generation in force, so a
//! holder that was stopped and comes back cannot publish over its successor: its publish
//! compares the token and fails (see `generation`).

use std::sync::atomic::Ordering;

use super::{alive, monotonic_ms, Store};

/// A holder's proof of its lease: the lease word it took (fence and pid), and the configuration
/// cycle it runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    lease: u64,
    pub(super) cycle: u64,
}

impl Token {
    fn fence(self) -> u64 {
        self.lease >> 32
    }
}

impl Store {
    /// The lease and its heartbeat as they are now: what a taker watches for a change.
    pub fn lease(&self) -> (u64, u64) {
        let header = self.header();
        (
            header.lease.load(Ordering::Acquire),
            header.heartbeat_ms.load(Ordering::Acquire),
        )
    }

    /// Takes the lease for process `pid` (of configuration cycle `cycle`) if it is free, if its
    /// holder is gone, or if it is still `silent`: a lease its taker saw unchanged, heartbeat and
    /// all, for too long.
    pub fn try_take(&self, pid: u32, cycle: u64, silent: Option<u64>) -> Option<Token> {
        let header = self.header();
        let current = header.lease.load(Ordering::Acquire);
        let holder = current as u32;
        if holder == pid {
            return Some(Token {
                lease: current,
                cycle,
            });
        }
        let takeable = holder == 0 || !alive(holder) || silent == Some(current);
        if !takeable {
            return None;
        }
        let token = Token {
            lease: (((current >> 32) + 1) << 32) | u64::from(pid),
            cycle,
        };
        header
            .lease
            .compare_exchange(current, token.lease, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        header.heartbeat_ms.store(monotonic_ms(), Ordering::Release);
        header.holder_cycle.store(cycle, Ordering::Release);
        self.fence_generation(token);
        // Taken over already, while it fenced: the newer fence stands.
        self.holds(token).then_some(token)
    }

    /// Renews the heartbeat; false once the lease is no longer `token`'s.
    pub fn beat(&self, token: Token) -> bool {
        let header = self.header();
        if !self.holds(token) {
            return false;
        }
        header.heartbeat_ms.store(monotonic_ms(), Ordering::Release);
        true
    }

    /// Whether `token` still holds the lease.
    pub fn holds(&self, token: Token) -> bool {
        self.header().lease.load(Ordering::Acquire) == token.lease
    }

    /// Gives the lease up: the next worker to look takes it at once.
    pub fn release(&self, token: Token) {
        let _ = self.header().lease.compare_exchange(
            token.lease,
            token.lease & !u64::from(u32::MAX),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// The holder's pid, if any.
    pub fn holder(&self) -> Option<u32> {
        Some(self.header().lease.load(Ordering::Acquire) as u32).filter(|&pid| pid != 0)
    }

    /// Stamps `token` on the generation in force, so that only its holder publishes the next;
    /// a newer fence is never lowered.
    pub(super) fn fence_generation(&self, token: Token) {
        let dir = &self.header().dir;
        let mut current = dir.load(Ordering::Acquire);
        loop {
            if current >> 32 >= token.fence() {
                return;
            }
            let fenced = (token.fence() << 32) | (current & u64::from(u32::MAX));
            match dir.compare_exchange(current, fenced, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }

    /// The configuration cycle the holder runs under.
    pub fn holder_cycle(&self) -> u64 {
        self.header().holder_cycle.load(Ordering::Acquire)
    }

    /// Whether the generation in force was last stamped by `token`.
    pub(super) fn fenced_by(&self, dir: u64, token: Token) -> bool {
        dir >> 32 == token.fence()
    }
}
