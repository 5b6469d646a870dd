//! Wall-clock times as gray writes them into Redis records, scrapes and status: Unix seconds or
//! milliseconds, 0 for a clock set before 1970.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Now in Unix seconds, for ramps.
pub fn unix_now() -> f64 {
    unix_seconds(SystemTime::now())
}
