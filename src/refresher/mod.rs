//! The background refresher: one thread per worker process that keeps the snapshot in step with
//! Redis, and never touches the Lua state (it talks to the worker only through [`Shared`]) nor
//! blocks a request. A session is one connection's life: subscribe, read every key, then wait for
//! a change (pushed by Redis, or announced on `channel`) or the next `refresh`, read what changed,
//! and publish a new snapshot when anything did; until something fails, when it reconnects with
//! backoff and keeps the last good snapshot meanwhile. A panic is caught and the refresher
//! started again. Its parts, each with its own state: the link to Redis and the health they
//! report to ([`link`], [`health`]: the ground floor), change detection ([`watch`]), reading keys
//! ([`reader`]), the loaded state and the snapshot built from it ([`loaded`], lists parsed by
//! [`parse`]), failover
//! ([`failover`]), what it writes ([`writes`]) and its part in rollout plans ([`rollouts`]).

mod failover;
mod health;
mod host;
mod link;
mod loaded;
mod parse;
mod reader;
mod rollouts;
mod watch;
mod writes;

use std::collections::HashSet;
use std::convert::Infallible;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use gray_core::config::Config;
use gray_core::value::ListBuilder;
use gray_io::endpoint::Endpoint;
use gray_io::read::Limit;

use crate::log::Level;
use crate::os;
use crate::state::Shared;
use crate::store::StoreError;
use failover::Failover;
use health::Health;
use host::{Adopting, Host, Lists, Unchecked, CHECK_DELAY, FOLLOW_TICK};
use link::Link;
use loaded::{Loaded, Source};
use reader::{Polled, Read, Reader, LARGE_READ};
use rollouts::Rollouts;
use watch::{Reading, Watch, Woke};
use writes::Writes;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before a refresher that panicked is started again.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// Why nothing is shared between workers without the host's store.
const NOT_HOSTED: &str = "each worker holds its own Redis session and its own copy of the lists: require(\"gray\") in init_by_lua* (the nginx master) so that the workers of this nginx share one session and one copy";
/// A holder waits for Redis at most this long before it looks at its lease again.
const HOLDER_TICK: Duration = Duration::from_secs(1);
/// Memory that makes the next change of a large list cheaper (the host's spare pages, the last
/// layout of a SET kept as of a change) is kept this long after a change, then given back.
const KEEP_FOR_CHANGES: Duration = Duration::from_secs(10);

/// Fault injection for tests, set in the worker's environment (nginx's `env` directive):
/// `refresher-panic` makes the first session of each process panic (the supervisor's tests),
/// `address-layout` makes the request's layout fail its proof (nginx_request).
pub const FAULT_ENV: &str = "GRAY_FAULT";
static FAULT_INJECTED: AtomicBool = AtomicBool::new(false);

/// Starts the refresher. The receiver gets one message when the first load attempt has finished,
/// successful or not, so the worker can load before it serves.
pub fn spawn(
    config: Arc<Config>,
    endpoint: Endpoint,
    shared: &'static Shared,
) -> std::io::Result<mpsc::Receiver<()>> {
    os::map_large_allocations();
    let (first_load_done, first_load) = mpsc::channel();
    let host = Host::new();
    if host.is_none() {
        shared.log(Level::Notice, NOT_HOSTED.into());
    }
    let mut refresher = Refresher {
        link: Link::new(endpoint, shared),
        health: Health::new(shared, first_load_done),
        watch: Watch::default(),
        reader: Reader::default(),
        loaded: Loaded::new(config.clone()),
        failover: Failover::default(),
        writes: Writes::default(),
        rollouts: Rollouts::new(host.is_some()),
        host,
        config,
    };
    shared.update_status(|s| s.running = true);
    let spawned = thread::Builder::new()
        .name("gray-refresher".into())
        .spawn(move || {
            os::block_process_signals();
            os::lower_thread_priority();
            supervise(
                || match refresher.run() {},
                |message, backoff| {
                    host::release_held();
                    shared.update_status(|s| {
                        s.running = false;
                        s.restarts += 1;
                        s.last_error = Some(format!("the refresher panicked: {message}"));
                        s.last_error_at = Some(SystemTime::now());
                    });
                    shared.log(
                        Level::Err,
                        format!(
                            "the refresher panicked ({message}); restarting it in {:.1}s, keeping the last good list",
                            backoff.as_secs_f64()
                        ),
                    );
                },
                || shared.update_status(|s| s.running = true),
            );
        });
    if let Err(e) = spawned {
        shared.update_status(|s| s.running = false);
        return Err(e);
    }
    Ok(first_load)
}

/// Runs `body` until it returns, catching every panic: `panicked` is told the message and the
/// backoff, then `restarted` once the backoff has passed and `body` runs again. The backoff
/// doubles up to `MAX_RESTART_BACKOFF` and starts over after a run of an hour without a panic.
fn supervise(
    mut body: impl FnMut(),
    mut panicked: impl FnMut(&str, Duration),
    mut restarted: impl FnMut(),
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let began = Instant::now();
        let payload = match panic::catch_unwind(AssertUnwindSafe(&mut body)) {
            Ok(()) => return,
            Err(payload) => payload,
        };
        if began.elapsed() > Duration::from_secs(3600) {
            backoff = FIRST_BACKOFF;
        }
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        panicked(&message, backoff);
        thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
        restarted();
    }
}

struct Refresher {
    config: Arc<Config>,
    link: Link,
    health: Health,
    watch: Watch,
    reader: Reader,
    loaded: Loaded,
    failover: Failover,
    writes: Writes,
    rollouts: Rollouts,
    /// This worker's part in the host's session; `None` without the host's store.
    host: Option<Host>,
}

/// Why a session ended.
enum Ended {
    Failed(String),
    /// Another worker holds the host's session now.
    SteppedDown,
}

impl From<String> for Ended {
    fn from(error: String) -> Self {
        Ended::Failed(error)
    }
}

impl Refresher {
    fn run(&mut self) -> Infallible {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if self
                .host
                .as_mut()
                .is_some_and(|host| !host.keep_holding() && !host.try_take())
            {
                self.follow();
                continue;
            }
            let error = match self.session() {
                Err(Ended::SteppedDown) => continue,
                Err(Ended::Failed(error)) => error,
            };
            if self.health.failures_in_a_row() == 0 {
                backoff = FIRST_BACKOFF;
            }
            self.record_failure(&error, false);
            self.failover.pause(&self.link, backoff);
            // Never wait longer than a poll would: Redis coming back is seen within `refresh`.
            backoff = (backoff * 2).min(self.config.refresh);
        }
    }

    /// A follower's life: adopt each generation the holder publishes, show the holder's status,
    /// hand it this worker's guard trips, until the lease is this worker's.
    fn follow(&mut self) {
        let shared = self.health.shared;
        // A holder that stepped down lets its connections go, and the SETs it kept for their
        // deltas: it routes by the store's copy, and reads Redis whole if it holds again.
        self.link.drop_command();
        self.reader.drop_kept();
        self.watch = Watch::default();
        self.health.log(
            Level::Notice,
            "following the host's session: another worker reads Redis".into(),
        );
        let mut state_published = Instant::now();
        let mut published = None;
        let mut unchecked: Option<Unchecked> = None;
        loop {
            let Some(host) = self.host.as_mut() else {
                return;
            };
            // Woken by a publish, or every tick to look at the lease: never in a loop on a
            // generation it cannot adopt.
            let seen = published.unwrap_or(host.seen() as u32);
            let wait = unchecked.as_ref().map_or(FOLLOW_TICK, |u| {
                u.due.saturating_duration_since(Instant::now())
            });
            host.store.wait(seen, wait);
            published = Some(host.store.published());
            let taken = host.try_take();
            // What was adopted unchecked is checked before anything else is adopted (a
            // generation published meanwhile waits for it), and before this worker publishes
            // for the host.
            if let Some(due) = unchecked.take() {
                if taken || published != Some(seen) || Instant::now() >= due.due {
                    self.check_after(due);
                } else {
                    unchecked = Some(due);
                }
            }
            let Some(host) = self.host.as_mut().filter(|_| !taken) else {
                return;
            };
            host.post_trips(shared);
            let mirrored = host.mirror_status(shared);
            let adopted = match unchecked.is_none().then(|| host.adopt()) {
                None => None,
                Some(Ok(adopted)) => adopted,
                Some(Err(e)) => {
                    self.health
                        .log_once(Level::Err, format!("{e}; keeping the last good snapshot"));
                    None
                }
            };
            let fresh = adopted.is_some();
            if let Some(adopted) = adopted {
                let to_check = adopted.unchecked_items();
                let unchecked_keys: Vec<String> =
                    to_check.iter().map(|(item, _)| item.key.clone()).collect();
                if !to_check.is_empty() {
                    unchecked = Some(Unchecked {
                        items: to_check,
                        before: self.loaded.whitelists(),
                        due: Instant::now() + CHECK_DELAY,
                    });
                }
                let items = adopted.items.clone();
                let read = self
                    .loaded
                    .poll(&mut Adopting::new(adopted, &mut self.health));
                if let Err(e) = read {
                    self.health.log_once(Level::Err, e);
                }
                // Lists this worker laid out as the holder, of versions the holder has now too.
                if host::share(&mut self.loaded, &items, &unchecked_keys, Lists::OwnLayouts) {
                    self.loaded.mark_unpublished();
                }
                self.publish_adopted();
            }
            if fresh && self.host.as_ref().is_some_and(Host::current) {
                self.health.first_load_over();
            }
            if fresh || mirrored || state_published.elapsed() >= Duration::from_secs(1) {
                self.loaded.publish_state(shared);
                state_published = Instant::now();
            }
        }
    }

    /// Checks what was adopted unchecked; a list that does not match its checksum is put back
    /// as it was before, and is checked before it is adopted again.
    fn check_after(&mut self, unchecked: Unchecked) {
        let Some(host) = self.host.as_mut() else {
            return;
        };
        let broken = host.check_after(&unchecked.items);
        for key in &broken {
            self.health.log(
                Level::Err,
                format!(
                    "{}; back to the last good snapshot",
                    StoreError::mismatched(key)
                ),
            );
            self.loaded.put_back(key, &unchecked.before);
        }
        if !broken.is_empty() {
            self.publish_adopted();
            self.loaded.publish_state(self.health.shared);
        }
    }

    /// Publishes what a follower adopted, unless the snapshot in force has it.
    fn publish_adopted(&mut self) {
        let shared = self.health.shared;
        if self.loaded.unpublished(&shared.current()) {
            let health = &mut self.health;
            self.loaded.publish(shared, &mut |level, message| {
                health.log_once(level, message)
            });
        }
    }

    /// One connection's life: subscribe, load, then wait for a message or the next poll, until
    /// something fails or another worker holds the host's session.
    fn session(&mut self) -> Result<Infallible, Ended> {
        if std::env::var(FAULT_ENV).is_ok_and(|f| f == "refresher-panic")
            && !FAULT_INJECTED.swap(true, Ordering::SeqCst)
        {
            panic!("fault injected by {FAULT_ENV}=refresher-panic");
        }
        self.link.reconnect()?;
        self.failover.connected();
        self.subscribe()?;
        self.reader.start(self.config.resync, self.config.refresh);
        let mut resynced_at = Instant::now();
        let mut changed_at = Instant::now();
        let mut ticked_at = Instant::now();
        let mut due = Some(Reading::All);
        loop {
            let mut changed = false;
            if let Some(reading) = due.take() {
                if reading == Reading::All {
                    resynced_at = Instant::now();
                }
                let polled = self.poll(reading)?;
                changed = polled.replaced;
                if changed {
                    changed_at = Instant::now();
                }
                // The read's temporaries, the parse's and any replaced list are freed by now:
                // give them back in one go.
                if polled.bytes >= LARGE_READ || polled.replaced {
                    os::release_freed_memory();
                }
            }
            self.writes.report(
                &mut self.link,
                &mut self.health,
                &self.config,
                &self.loaded,
                changed,
            )?;
            if let Some(host) = &self.host {
                host.collect_trips(self.health.shared);
            }
            self.writes.record_trips(&mut self.link, &mut self.health)?;
            let written = self.rollouts.round(
                &mut self.link,
                &mut self.health,
                &self.config,
                &mut self.loaded,
            )?;
            if !written.is_empty() {
                // Redis tells no tracked connection of its own writes: read them now.
                due = Some(Reading::Keys(written));
                continue;
            }
            let loaded = &self.loaded;
            // A running plan's lease comes round every second, and its turns wake the loop
            // between ticks: the ticks keep their own pace, whatever wakes it meanwhile.
            let rollout_running = loaded.rollout_running();
            let tick = if rollout_running || self.host.is_some() {
                self.config.refresh.min(HOLDER_TICK)
            } else {
                self.config.refresh
            };
            let mut wait = tick.saturating_sub(ticked_at.elapsed());
            if rollout_running {
                wait = wait.min(self.rollouts.until_next_turn());
            }
            let woke = self
                .watch
                .wait(&self.link, wait, |key| loaded.reads_key(key))?;
            let ticked = matches!(woke, Woke::Tick) && ticked_at.elapsed() >= tick;
            if ticked {
                ticked_at = Instant::now();
            }
            if let Some(host) = self.host.as_mut() {
                if !host.keep_holding() {
                    return Err(Ended::SteppedDown);
                }
                host.repair();
                // The generation before the last is freed once every worker adopted the last;
                // its pages are kept for the next change while changes come.
                host.store.reclaim();
            }
            if ticked && changed_at.elapsed() >= KEEP_FOR_CHANGES {
                if let Some(host) = self.host.as_ref().filter(|host| host.holding()) {
                    host.store.trim_spares();
                }
                self.reader.release_layouts();
            }
            if ticked {
                self.failover.check(&self.link, &mut self.health)?;
            }
            due = match woke {
                Woke::Change(reading) => Some(reading),
                // A rollout turn only: the round at the top of the loop takes it.
                Woke::Tick if !ticked => None,
                // Redis pushes every change to gray's keys: each `refresh` only proves the
                // subscriber is alive, and the keys are read again whole every `resync`; a
                // large key whose read waited for its `refresh` is read now.
                Woke::Tick => match self
                    .watch
                    .check_alive(&self.link, |key| loaded.reads_key(key))?
                {
                    Some(pushed) => {
                        self.record_success();
                        if resynced_at.elapsed() >= self.reader.resync {
                            Some(Reading::All)
                        } else if self.reader.deferred_due() {
                            Some(pushed.unwrap_or_else(|| Reading::Keys(HashSet::new())))
                        } else {
                            pushed
                        }
                    }
                    None => Some(Reading::Poll),
                },
            };
            if self.host.as_ref().is_some_and(|host| host.unpublished) {
                // The other workers wait for what the last publish could not give them.
                self.loaded.mark_unpublished();
                due = due.or(Some(Reading::Keys(HashSet::new())));
            }
        }
    }

    fn subscribe(&mut self) -> Result<(), Ended> {
        Ok(self
            .watch
            .subscribe(&mut self.link, &mut self.health, &self.config)?)
    }

    /// Reads the keys `reading` names (the whitelist, each rule set and the keys its rules
    /// reference, the guards' resets) and swaps in a new snapshot if anything changed.
    fn poll(&mut self, reading: Reading) -> Result<Polled, Ended> {
        let stage = self.host.as_ref().and_then(Host::staging);
        self.reader.begin(reading, stage);
        let mut polled = Polled::default();
        let mut read = self.loaded.poll(&mut Session {
            link: &mut self.link,
            health: &mut self.health,
            reader: &mut self.reader,
            tracking: self.watch.tracking,
            polled: &mut polled,
        });
        if let Ok(replaced) = read {
            read = self
                .writes
                .read_guard_resets(&mut self.link, &mut self.health, &self.loaded)
                .map(|cleared| {
                    if cleared {
                        self.loaded.mark_unpublished();
                    }
                    replaced || cleared
                });
        }
        let refused = !polled.refusals.is_empty();
        for refusal in std::mem::take(&mut polled.refusals) {
            self.record_failure(&refusal, true);
        }
        // What was loaded before a failure is published all the same, after the next poll,
        // which may find nothing new to read.
        polled.replaced = read?;
        let shared = self.health.shared;
        if !refused {
            // Before the other workers adopt what this read: they show this status with it.
            self.health.succeeded();
        }
        if self.loaded.unpublished(&shared.current()) {
            if let Some(host) = self.host.as_mut() {
                host.share_status(shared);
                match host.publish(&mut self.loaded) {
                    Ok(()) => {}
                    Err(StoreError::LeaseLost) => return Err(Ended::SteppedDown),
                    Err(e) => self.health.log_once(
                        Level::Err,
                        format!("the other workers keep what they have: {e}"),
                    ),
                }
            }
            let health = &mut self.health;
            self.loaded.publish(shared, &mut |level, message| {
                health.log_once(level, message)
            });
            self.loaded.publish_state(shared);
        }
        if refused {
            self.health.first_load_over();
        } else {
            self.share_state();
        }
        Ok(polled)
    }

    fn record_success(&mut self) {
        self.health.succeeded();
        self.share_state();
    }

    fn record_failure(&mut self, error: &str, still_connected: bool) {
        self.health.failed(error, still_connected);
        self.share_state();
    }

    /// Publishes this worker's state for scrapes and, holding the host's session, its status for
    /// the other workers; the first load attempt is over.
    fn share_state(&mut self) {
        self.loaded.publish_state(self.health.shared);
        if let Some(host) = &self.host {
            host.share_status(self.health.shared);
        }
        self.health.first_load_over();
    }
}

/// The loaded state's [`Source`] during a poll: keys read through the link, by the reader's
/// rules, what it says reported to the health.
struct Session<'a> {
    link: &'a mut Link,
    health: &'a mut Health,
    reader: &'a mut Reader,
    tracking: bool,
    polled: &'a mut Polled,
}

impl Source for Session<'_> {
    fn read<B: ListBuilder>(
        &mut self,
        key: &str,
        limit: Limit,
        loaded: Option<u64>,
    ) -> Result<Read<B>, String> {
        let read = self.reader.read(
            self.link,
            self.health,
            self.tracking,
            (limit, loaded),
            key,
            self.polled,
        )?;
        if let Read::Refused(why) = &read {
            self.polled.refusals.push(why.clone());
        }
        Ok(read)
    }

    fn forget(&mut self, key: &str) {
        self.reader.forget(key);
    }

    fn log(&mut self, level: Level, message: String) {
        self.health.log(level, message);
    }

    fn log_once(&mut self, level: Level, message: String) {
        self.health.log_once(level, message);
    }

    fn rejected(&mut self, error: String) {
        self.health.rejected(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn a_panicking_body_is_restarted_with_a_growing_backoff_and_told() {
        let runs = RefCell::new(0);
        let told = RefCell::new(Vec::new());
        let restarts = RefCell::new(0);
        // Silence the default hook's message for the panics this test causes.
        let hook = panic::take_hook();
        panic::set_hook(Box::new(|_| {}));
        supervise(
            || {
                *runs.borrow_mut() += 1;
                if *runs.borrow() <= 3 {
                    panic!("run {}", runs.borrow());
                }
            },
            |message, backoff| told.borrow_mut().push((message.to_string(), backoff)),
            || *restarts.borrow_mut() += 1,
        );
        panic::set_hook(hook);
        assert_eq!(*runs.borrow(), 4);
        assert_eq!(*restarts.borrow(), 3);
        assert_eq!(
            told.into_inner(),
            vec![
                ("run 1".to_string(), FIRST_BACKOFF),
                ("run 2".to_string(), FIRST_BACKOFF * 2),
                ("run 3".to_string(), FIRST_BACKOFF * 4),
            ]
        );
    }
}
