//! Counting: what each of a series' counters counts, and the adds themselves, into this worker's
//! block of the region (one relaxed atomic add, no lock, no allocation; the request path's cost).

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use gray_core::rollout::judge::Traffic;

use super::REGION;
use crate::region::{COUNTERS_PER_SERIES, MAX_SERIES};

/// What each counter of a series counts.
pub mod counter {
    pub const REQUESTS: usize = 0;
    /// Responses by status class: `CLASSES + 0` is 1xx ... `CLASSES + 4` is 5xx.
    pub const CLASSES: usize = 1;
    /// The sum of response times, in microseconds.
    pub const LATENCY_SUM_US: usize = 6;
    /// Responses timed.
    pub const LATENCY_COUNT: usize = 7;
    /// Responses no slower than each of `LATENCY_BOUNDS` (and slower than the one before).
    pub const LATENCY_BUCKETS: usize = 8;
}

/// The latency histogram's upper bounds, in seconds (core's: a rollout judges p99 by them).
pub use gray_core::rollout::judge::LATENCY_BOUNDS;
const _: () = assert!(counter::LATENCY_BUCKETS + LATENCY_BOUNDS.len() == COUNTERS_PER_SERIES);

/// The status classes, as the `class` label shows them.
pub const CLASS_NAMES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// This worker's counters; null where nothing is counted. Set once, as the worker joins.
static BLOCK: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());

/// Counts into `block` from now on: this worker's counters in the region.
pub(super) fn count_into(block: &[AtomicU64]) {
    BLOCK.store(block.as_ptr().cast_mut(), Ordering::Release);
}

/// The class counter and the latency bucket (if within the last bound) of a response.
pub fn response_counters(status: u32, seconds: f64) -> (Option<usize>, Option<usize>) {
    let class = match status / 100 {
        class @ 1..=5 => Some(counter::CLASSES + class as usize - 1),
        _ => None,
    };
    let bucket = LATENCY_BOUNDS
        .iter()
        .position(|&bound| seconds <= bound)
        .map(|i| counter::LATENCY_BUCKETS + i);
    (class, bucket)
}

/// This worker's own counters of series `series` (its share of the region's totals); `None`
/// where nothing is counted.
pub fn own_counters(series: u32) -> Option<[u64; COUNTERS_PER_SERIES]> {
    let block = BLOCK.load(Ordering::Relaxed);
    if block.is_null() || series == 0 || series as usize >= MAX_SERIES {
        return None;
    }
    let mut counters = [0; COUNTERS_PER_SERIES];
    for (i, value) in counters.iter_mut().enumerate() {
        // SAFETY: as in `count`: this worker's block, and the index is within it.
        *value = unsafe {
            (*block.add(series as usize * COUNTERS_PER_SERIES + i)).load(Ordering::Relaxed)
        };
    }
    Some(counters)
}

/// What every worker of this nginx counted in `series`, summed.
pub fn host_counters(series: u32) -> Option<[u64; COUNTERS_PER_SERIES]> {
    (series != 0).then(|| {
        super::REGION
            .get()
            .map(|region| region.totals(series as usize))
    })?
}

/// A series' counters as a rollout judges them: responses of any class, the 5xx among them,
/// and the latency histogram.
pub fn traffic(counters: &[u64; COUNTERS_PER_SERIES]) -> Traffic {
    let mut buckets = [0; LATENCY_BOUNDS.len()];
    buckets.copy_from_slice(&counters[counter::LATENCY_BUCKETS..]);
    Traffic {
        responses: counters[counter::CLASSES..counter::CLASSES + CLASS_NAMES.len()]
            .iter()
            .sum(),
        errors: counters[counter::CLASSES + 4],
        buckets,
    }
}

/// Adds `n` to counter `counter` of series `series` (0: nothing counted).
#[inline]
pub fn count(series: u32, counter: usize, n: u64) {
    let block = BLOCK.load(Ordering::Relaxed);
    let index = series as usize * COUNTERS_PER_SERIES + counter;
    if block.is_null() || series == 0 || index >= MAX_SERIES * COUNTERS_PER_SERIES {
        return;
    }
    // SAFETY: a non-null block is this worker's, MAX_SERIES * COUNTERS_PER_SERIES counters long
    // in a mapping that lives as long as the process; `index` is within it.
    unsafe { (*block.add(index)).fetch_add(n, Ordering::Relaxed) };
}

/// Counts a response of `status` that took `seconds`, in `series`.
pub fn count_response(series: u32, status: u32, seconds: f64) {
    if let Some(region) = REGION.get() {
        region.note_responses_counted();
    }
    let (class, bucket) = response_counters(status, seconds);
    if let Some(class) = class {
        count(series, class, 1);
    }
    count(series, counter::LATENCY_COUNT, 1);
    count(
        series,
        counter::LATENCY_SUM_US,
        (seconds.max(0.0) * 1e6).round() as u64,
    );
    if let Some(bucket) = bucket {
        count(series, bucket, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_lands_in_its_class_and_the_first_bucket_that_holds_it() {
        use counter::*;
        assert_eq!(
            response_counters(200, 0.001),
            (Some(CLASSES + 1), Some(LATENCY_BUCKETS))
        );
        assert_eq!(
            response_counters(503, 0.005),
            (Some(CLASSES + 4), Some(LATENCY_BUCKETS))
        );
        assert_eq!(
            response_counters(404, 0.3),
            (Some(CLASSES + 3), Some(LATENCY_BUCKETS + 6))
        );
        assert_eq!(response_counters(0, 9.0), (None, None));
        assert_eq!(response_counters(600, 1.0).0, None);
    }
}
