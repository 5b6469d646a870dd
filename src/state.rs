//! What one worker process shares between its request path and its refresher thread: the current
//! snapshot (swapped atomically, read lock-free), the refresher's status, and the log queue.
//! Plain Rust data only; nothing here knows about Lua.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use once_cell::sync::Lazy;
use serde::{Deserialize, Serialize};

use crate::log::{Level, LogQueue};
use gray_core::guard::TripRecord;
use gray_core::snapshot::Snapshot;

/// What the refresher last saw of Redis, for `status()`.
#[derive(Debug, Clone, Default)]
pub struct RefreshStatus {
    /// The refresher thread is alive and refreshing (false while it restarts after a panic).
    pub running: bool,
    /// How often the refresher panicked and was restarted.
    pub restarts: u64,
    pub connected: bool,
    /// The node the sentinels named, last connected to (`sentinels` only).
    pub node: Option<String>,
    pub subscribed: bool,
    /// Redis pushes writes to gray's keys to the refresher (client-side caching, BCAST).
    pub tracking: bool,
    pub last_ok_at: Option<SystemTime>,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    pub failures: u64,
}

/// A guard's trip this worker made, for the refresher to write to the rule set's guard hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TripToRecord {
    pub key: String,
    pub field: String,
    pub record: TripRecord,
}

#[derive(Default)]
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub status: Mutex<RefreshStatus>,
    pub log: LogQueue,
    trips: Mutex<Vec<TripToRecord>>,
}

pub static SHARED: Lazy<Shared> = Lazy::new(Shared::default);

impl Shared {
    pub fn status(&self) -> RefreshStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn update_status(&self, update: impl FnOnce(&mut RefreshStatus)) {
        update(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn log(&self, level: Level, message: String) {
        self.log.push(level, message);
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn queue_trip(&self, trip: TripToRecord) {
        self.trips
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(trip);
    }

    pub fn take_trips(&self) -> Vec<TripToRecord> {
        std::mem::take(&mut *self.trips.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
