//! The refresher's health, the ground floor every part reports to: the status a worker's
//! `status()` and scrapes show, the error log (one line per new error, throttled repeats, one
//! warning per condition), and the signal that lets `init_worker` return once the first load
//! attempt is over. It owns no connection and reads nothing.

use std::collections::HashSet;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use crate::log::{Level, Throttle};
use crate::state::Shared;

/// The same Redis error is logged at most this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);

pub(super) struct Health {
    pub shared: &'static Shared,
    throttle: Throttle,
    failures_in_a_row: u64,
    first_load_done: Option<mpsc::Sender<()>>,
    warned: HashSet<String>,
}

impl Health {
    pub fn new(shared: &'static Shared, first_load_done: mpsc::Sender<()>) -> Health {
        Health {
            shared,
            throttle: Throttle::new(ERROR_LOG_INTERVAL),
            failures_in_a_row: 0,
            first_load_done: Some(first_load_done),
            warned: HashSet::new(),
        }
    }

    pub fn log(&self, level: Level, message: String) {
        self.shared.log(level, message);
    }

    /// A condition that repeats on every reconnect but is not a failure.
    pub fn warn_once(&mut self, message: String) {
        self.log_once(Level::Warn, message);
    }

    /// A condition that repeats on every poll or reconnect, logged the first time.
    pub fn log_once(&mut self, level: Level, message: String) {
        if self.warned.insert(message.clone()) {
            self.shared.log(level, message);
        }
    }

    /// Attempts failed since the last success.
    pub fn failures_in_a_row(&self) -> u64 {
        self.failures_in_a_row
    }

    /// Redis answered: connected, and heard from now.
    pub fn succeeded(&mut self) {
        if self.failures_in_a_row > 0 {
            self.shared.log(
                Level::Notice,
                format!(
                    "redis is back after {} failed attempts",
                    self.failures_in_a_row
                ),
            );
        }
        self.failures_in_a_row = 0;
        self.throttle.clear();
        self.shared.update_status(|s| {
            s.connected = true;
            s.last_ok_at = Some(SystemTime::now());
        });
    }

    /// `error` happened; `still_connected` when Redis answered and the connection is in use.
    pub fn failed(&mut self, error: &str, still_connected: bool) {
        self.failures_in_a_row += 1;
        let keeping = if self.shared.current().loaded.is_some() {
            "keeping the last good list"
        } else {
            "no list loaded yet, routing everyone to production"
        };
        if let Some(line) = self.throttle.check(error, Instant::now()) {
            self.shared.log(Level::Err, format!("{line}; {keeping}"));
        }
        self.shared.update_status(|s| {
            s.connected = still_connected;
            s.subscribed &= still_connected;
            s.tracking &= still_connected;
            s.failures += 1;
            s.last_error = Some(error.to_string());
            s.last_error_at = Some(SystemTime::now());
        });
    }

    /// What Redis holds is wrong (a rule set rejected): said once a value, not a failure to reach it.
    pub fn rejected(&self, error: String) {
        self.shared.update_status(|s| {
            s.last_error = Some(error);
            s.last_error_at = Some(SystemTime::now());
        });
    }

    /// Lets `init_worker` go on serving: the first load attempt is over, however it went.
    pub fn first_load_over(&mut self) {
        if let Some(done) = self.first_load_done.take() {
            let _ = done.send(());
        }
    }
}
