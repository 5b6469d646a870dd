//! Which series each routed request is counted in, until `log()` counts its response: kept per
//! request (by the address of nginx's request) once responses are counted on this nginx, so a
//! gateway without `log()` keeps nothing but the last request routed (which also covers the
//! first response a worker counts). Touched only by the FFI functions of the request path and
//! the log phase, which nginx runs on its one event-loop thread, so it needs no lock.

use std::cell::UnsafeCell;
use std::collections::HashMap;

use crate::metrics;

/// More requests than this waiting for their log phase means `log()` does not run for them (a
/// location's own `log_by_lua*` hides the http-level one): the table is dropped and counted.
const MAX_PENDING: usize = 65_536;

#[derive(Default)]
struct Pending {
    /// Keeping every routed request: responses are counted on this nginx.
    keeping: bool,
    by_request: HashMap<usize, u32, foldhash::fast::RandomState>,
    last: (usize, u32),
    /// Times the table was dropped for growing past `MAX_PENDING`.
    dropped: u64,
}

struct EventLoopOnly(UnsafeCell<Option<Pending>>);

// SAFETY: only nginx's event-loop thread calls into this module (see the module comment); the
// refresher thread never does.
unsafe impl Sync for EventLoopOnly {}

static PENDING: EventLoopOnly = EventLoopOnly(UnsafeCell::new(None));

fn pending() -> &'static mut Pending {
    // SAFETY: one thread (nginx's event loop) and no reentrancy: no other reference is alive.
    unsafe { (*PENDING.0.get()).get_or_insert_with(Pending::default) }
}

/// Request `request` was routed and counted in `series`.
#[inline]
pub fn routed(request: usize, series: u32) {
    let pending = pending();
    if !pending.keeping && !metrics::responses_counted() {
        pending.last = (request, series);
        return;
    }
    pending.keeping = true;
    if pending.by_request.len() >= MAX_PENDING {
        pending.by_request.clear();
        pending.dropped += 1;
    }
    pending.by_request.insert(request, series);
}

/// The series request `request` was counted in, if it was routed; forgotten with this call.
pub fn take(request: usize) -> Option<u32> {
    let pending = pending();
    if let Some(series) = pending.by_request.remove(&request) {
        return Some(series);
    }
    if pending.keeping {
        return None;
    }
    pending.keeping = true;
    let (last, series) = std::mem::take(&mut pending.last);
    (last == request).then_some(series)
}

/// How often routed requests piled up without reaching `log()`.
pub fn dropped() -> u64 {
    pending().dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the table belongs to one thread, as nginx's event loop has it.
    #[test]
    fn the_last_request_is_kept_until_responses_are_counted_then_every_one() {
        routed(1, 5);
        routed(2, 6);
        assert_eq!(take(1), None, "only the last routed request is kept before");
        routed(3, 7);
        assert_eq!(take(3), Some(7));
        routed(4, 8);
        routed(5, 9);
        assert_eq!((take(5), take(4), take(4)), (Some(9), Some(8), None));
        for request in 0..=MAX_PENDING {
            routed(100 + request, 1);
        }
        assert_eq!(dropped(), 1);
        assert_eq!(take(100 + MAX_PENDING), Some(1));
    }
}
