//! What gray counts, where, and how a scrape shows it. Each way a request can be decided (a rule
//! set's rule, its default, its override, the whitelist's listed and unlisted) to each target is
//! one series of the shared [`Region`] ([`series`]); a series holds the requests routed by it and,
//! when responses are counted (`request_end`), their responses by status class and a latency histogram
//! ([`counting`]). Each worker also publishes what it has loaded and how its Redis link is
//! ([`workers`]), so a scrape served by any worker ([`exposition`]) shows every worker, a lagging
//! one included.
//!
//! Counting is one relaxed atomic add into this worker's block; nothing here allocates or locks
//! on the request path. Without a shared region (gray was not required in init_by_lua) nothing is
//! counted: a worker's own counts would read as the whole nginx's.

mod counting;
mod exposition;
mod series;
mod workers;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use once_cell::sync::OnceCell;

use crate::region::Region;
pub use counting::{count, count_response, counter, host_counters, own_counters, traffic};
pub use exposition::{
    json, prometheus_text, GuardState, JSON_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE,
};
pub use series::{keep_only, register, rule_set_series, whitelist_series, Labels};
pub use workers::{publish_state, KeyLoaded, RolloutLoaded, WorkerState, CHECKS_SHOWN};

/// The region this nginx's workers count into: made once, by the master, before it forks (see
/// [`create_region`]), then only read through; unset in a process that did not make one.
static REGION: OnceCell<Region> = OnceCell::new();
/// The worker id (`ngx.worker.id()`) this process counts as, set once as its refresher starts.
static WORKER: AtomicUsize = AtomicUsize::new(0);

/// Makes the shared region, once per process: call it where nginx has not forked yet (the
/// master's init_by_lua).
pub fn create_region() -> io::Result<()> {
    REGION.get_or_try_init(Region::create).map(|_| ())
}

pub fn shared() -> bool {
    REGION.get().is_some()
}

/// Whether a worker of this nginx has counted a response, or `log()` has run.
pub fn responses_counted() -> bool {
    REGION.get().is_some_and(Region::responses_counted)
}

/// Records for every worker of this nginx that responses are counted.
pub fn note_responses_counted() {
    if let Some(region) = REGION.get() {
        region.note_responses_counted();
    }
}

/// The shared region, where there is one.
pub fn region() -> Option<&'static Region> {
    REGION.get()
}

/// Makes this process count as worker `worker` (`ngx.worker.id()`). Says whether it counts:
/// not without a shared region, nor for an id beyond the region's blocks.
pub fn join(worker: usize) -> bool {
    WORKER.store(worker, Ordering::Relaxed);
    let Some(block) = REGION.get().and_then(|region| region.join(worker)) else {
        return false;
    };
    counting::count_into(block);
    true
}

/// The worker id this process counts as.
pub fn worker() -> usize {
    WORKER.load(Ordering::Relaxed)
}
