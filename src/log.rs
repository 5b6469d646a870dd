//! Log lines from the refresher thread to nginx's error log. The thread must never touch Lua, so it
//! queues lines here and a Lua timer in the worker drains them through `ngx.log`. The queue is
//! bounded: a flood costs a "N lines dropped" line, never memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const QUEUE_MAX: usize = 256;

/// nginx log levels, numbered as the Lua side maps them onto `ngx.ERR` .. `ngx.NOTICE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Err = 1,
    Warn = 2,
    Notice = 3,
}

#[derive(Default)]
pub struct LogQueue {
    lines: Mutex<VecDeque<(Level, String)>>,
    /// Lets the drain timer skip the lock when there is nothing to say.
    pending: AtomicBool,
    dropped: AtomicUsize,
}

impl LogQueue {
    pub fn push(&self, level: Level, message: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() >= QUEUE_MAX {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            lines.push_back((level, message));
        }
        self.pending.store(true, Ordering::Release);
    }

    /// Everything queued since the last call, oldest first; `None` when empty.
    pub fn take(&self) -> Option<Vec<(Level, String)>> {
        if !self.pending.swap(false, Ordering::Acquire) {
            return None;
        }
        let mut lines: Vec<_> = self
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            lines.push((
                Level::Warn,
                format!("{dropped} log lines dropped (queue full)"),
            ));
        }
        Some(lines)
    }
}

/// Keeps a failing Redis from flooding the log: the same error is logged once, then again at most
/// every `interval` with the count of repeats in between.
pub struct Throttle {
    interval: Duration,
    last: Option<(String, Instant)>,
    repeats: u64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            last: None,
            repeats: 0,
        }
    }

    /// The line to log for this occurrence of `error`, if any.
    pub fn check(&mut self, error: &str, now: Instant) -> Option<String> {
        match &self.last {
            Some((last, at)) if last == error && now.duration_since(*at) < self.interval => {
                self.repeats += 1;
                None
            }
            Some((last, _)) if last == error => {
                let line = format!("{error} (repeated {} times)", self.repeats + 1);
                self.last = Some((error.to_string(), now));
                self.repeats = 0;
                Some(line)
            }
            _ => {
                self.last = Some((error.to_string(), now));
                self.repeats = 0;
                Some(error.to_string())
            }
        }
    }

    /// Forgets the error once things work again, so the next failure is logged at once.
    pub fn clear(&mut self) {
        self.last = None;
        self.repeats = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_bounded_and_reports_drops() {
        let q = LogQueue::default();
        assert!(q.take().is_none());
        for i in 0..QUEUE_MAX + 5 {
            q.push(Level::Err, format!("line {i}"));
        }
        let lines = q.take().unwrap();
        assert_eq!(lines.len(), QUEUE_MAX + 1);
        assert_eq!(lines.last().unwrap().1, "5 log lines dropped (queue full)");
        assert!(q.take().is_none());
    }

    #[test]
    fn throttle_logs_a_repeated_error_once_per_interval() {
        let mut t = Throttle::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(t.check("down", t0).as_deref(), Some("down"));
        assert_eq!(t.check("down", t0 + Duration::from_secs(1)), None);
        assert_eq!(t.check("down", t0 + Duration::from_secs(2)), None);
        assert_eq!(
            t.check("down", t0 + Duration::from_secs(31)).as_deref(),
            Some("down (repeated 3 times)")
        );
        assert_eq!(
            t.check("other", t0 + Duration::from_secs(32)).as_deref(),
            Some("other")
        );
        t.clear();
        assert_eq!(
            t.check("other", t0 + Duration::from_secs(33)).as_deref(),
            Some("other")
        );
    }
}
