//! The background refresher: one thread per worker process that keeps the snapshot in step with
//! Redis. It polls every `refresh`, reloads at once on a message on `channel`, reconnects with
//! backoff, and keeps the last good list through any failure. It never touches the Lua state
//! (it talks to the worker only through [`Shared`]) and never blocks a request.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::log::{Level, Throttle};
use crate::metrics::{self, KeyLoaded, Labels, WorkerState};
use crate::os;
use crate::region::RegisterError;
use crate::state::Shared;
use gray_core::clock::unix_seconds;
use gray_core::config::Config;
use gray_core::connection::{self, Connection, Reply};
use gray_core::fleet;
use gray_core::guard;
use gray_core::idset::{IdSet, MAX_ID_LEN};
use gray_core::load;
use gray_core::plan::Plan;
use gray_core::rules::{KeyRef, KeyUse};
use gray_core::sentinel::Role;
use gray_core::snapshot::{
    ActiveRuleSet, CompiledRuleSet, KeyKind, LoadedIds, LoadedKey, LoadedList, RuleSetSeries,
    Snapshot,
};
use gray_core::source::{self, fetch, FetchError, Fetched, ListBuilder, Text};
use gray_core::whitelist::{Whitelist, WhitelistBuilder};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before a refresher that panicked is started again.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);
/// A read at least this large is followed by a new connection, so the memory it took goes back
/// before the parse needs memory of its own.
const LARGE_READ: usize = 1 << 20;
/// The same Redis error is logged at most this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// Messages arriving within this long of the first one are folded into one reload: a fixed
/// deadline, so a publisher that never pauses still gets its changes loaded.
const MESSAGE_COALESCE: Duration = Duration::from_millis(2);
/// The largest pub/sub message read; a bigger one loses the subscription (it is never ours).
const MAX_MESSAGE: usize = 64 * 1024;
/// Where Redis pushes the names of tracked keys that were written.
const INVALIDATE_CHANNEL: &str = "__redis__:invalidate";
/// Polling without tracking, a key whose value is at least this large is probed (its type and
/// size) before it is read, and read only when those moved or `resync` has passed since its last
/// read; a smaller one is read whole every poll, which costs less than a miss.
const PROBE_FROM: usize = 64 * 1024;

/// Fault injection for tests, set in the worker's environment (nginx's `env` directive):
/// `refresher-panic` makes the first session of each process panic (the supervisor's tests),
/// `address-layout` makes the request's layout fail its proof (nginx_request).
pub const FAULT_ENV: &str = "GRAY_FAULT";
static FAULT_INJECTED: AtomicBool = AtomicBool::new(false);

/// Starts the refresher. The receiver gets one message when the first load attempt has finished,
/// successful or not, so the worker can load before it serves.
pub fn spawn(config: Arc<Config>, shared: &'static Shared) -> std::io::Result<mpsc::Receiver<()>> {
    os::map_large_allocations();
    let (first_load_done, first_load) = mpsc::channel();
    let rule_sets = std::iter::once(None)
        .chain(config.rule_sets.iter().map(|name| Some(name.as_str())))
        .map(|name| config.rule_set_key(name))
        .map(|key| RuleSetSlot {
            key,
            compiled: None,
            seen: None,
            series: RuleSetSeries::default(),
        })
        .collect();
    let mut refresher = Refresher {
        rule_sets,
        whitelist: None,
        keys: HashMap::new(),
        config,
        shared,
        throttle: Throttle::new(ERROR_LOG_INTERVAL),
        failures_in_a_row: 0,
        first_load_done: Some(first_load_done),
        warned: HashSet::new(),
        reported_at: None,
        published_at: SystemTime::now(),
        armed: Vec::new(),
        whitelist_series: None,
        reading: Reading::All,
        last_reads: HashMap::new(),
        resync: Duration::ZERO,
        sentinel: None,
        switches: None,
        switches_tried: false,
        registry_busy: false,
        tracking: false,
        unpublished: false,
    };
    shared.update_status(|s| s.running = true);
    let spawned = thread::Builder::new()
        .name("gray-refresher".into())
        .spawn(move || {
            os::lower_thread_priority();
            supervise(
                || match refresher.run() {},
                |message, backoff| {
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

/// Why a wait ended.
enum Woke {
    /// A change to gray's keys was announced: these, or all of them.
    Change(Reading),
    /// `refresh` passed.
    Tick,
}

/// Which keys a poll reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reading {
    /// Every key, whole: a new session, a resync, a flush, a message on the channel.
    All,
    /// The keys Redis said were written (tracking), and any not loaded yet.
    Keys(HashSet<Vec<u8>>),
    /// Every key, polling without tracking: a large value is probed first (`PROBE_FROM`).
    Poll,
}

impl Reading {
    fn merge(self, other: Reading) -> Reading {
        match (self, other) {
            (Reading::Keys(mut a), Reading::Keys(b)) => {
                a.extend(b);
                Reading::Keys(a)
            }
            (Reading::All, _) | (_, Reading::All) => Reading::All,
            _ => Reading::Poll,
        }
    }
}

/// One key as read: its value and how long the read took, refused (and recorded), or left
/// unread because it has not changed.
enum Read<B: ListBuilder> {
    Value(Fetched<B>, Duration),
    Refused,
    Unchanged,
}

/// A key's last read, for the polls that follow: its size, and its kind and size as probed
/// before it was read (`None` when it was not).
struct LastRead {
    bytes: usize,
    probed: Option<(KeyKind, u64)>,
    at: Instant,
}

/// A rule set's key and what was loaded from it.
struct RuleSetSlot {
    key: String,
    compiled: Option<Arc<CompiledRuleSet>>,
    /// The version last read, good or bad: an unchanged bad value is not logged again.
    seen: Option<u64>,
    /// Where the compiled rule set's decisions are counted.
    series: RuleSetSeries,
}

/// Plan numbers, unique per compiled rule set in this process.
static NEXT_PLAN: AtomicU32 = AtomicU32::new(1);

/// What one poll did, for the memory housekeeping after it.
#[derive(Default)]
struct Polled {
    /// Bytes of list read from Redis.
    bytes: usize,
    /// A new list replaced the previous one.
    replaced: bool,
}

struct Refresher {
    /// The default rule set, then the named ones.
    rule_sets: Vec<RuleSetSlot>,
    whitelist: Option<Arc<LoadedList>>,
    /// The keys rule sets reference, other than the whitelist key.
    keys: HashMap<KeyRef, LoadedKey>,
    config: Arc<Config>,
    shared: &'static Shared,
    throttle: Throttle,
    failures_in_a_row: u64,
    first_load_done: Option<mpsc::Sender<()>>,
    warned: HashSet<String>,
    /// When this worker last reported what it serves (`report`).
    reported_at: Option<Instant>,
    /// When the snapshot in force was swapped in.
    published_at: SystemTime,
    /// The key prefixes Redis tracks for this refresher now.
    armed: Vec<String>,
    /// Where the whitelist's decisions are counted, once registered.
    whitelist_series: Option<[u32; 2]>,
    /// Which keys the poll under way reads.
    reading: Reading,
    /// Each key's last read in this session.
    last_reads: HashMap<String, LastRead>,
    /// This session's `resync` (jittered), set as it starts.
    resync: Duration,
    /// A sentinel asked every `refresh` which node is the master (`sentinels`, master role).
    sentinel: Option<Connection>,
    /// Between failed attempts: a sentinel's `+switch-master` announcements (`sentinels`).
    switches: Option<Connection>,
    /// A subscription to them was tried in this outage.
    switches_tried: bool,
    /// The series registry stayed locked during this poll: register nothing more until the next.
    registry_busy: bool,
    /// Tracking is in force in this session.
    tracking: bool,
    /// Something was loaded that no published snapshot holds yet (a poll failed before it
    /// published).
    unpublished: bool,
}

impl Refresher {
    fn run(&mut self) -> Infallible {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let Err(error) = self.session();
            if self.failures_in_a_row == 0 {
                backoff = FIRST_BACKOFF;
            }
            self.record_failure(&error, false);
            self.pause(backoff);
            // Never wait longer than a poll would: Redis coming back is seen within `refresh`.
            backoff = (backoff * 2).min(self.config.refresh);
        }
    }

    /// Waits `backoff` before the next attempt. With sentinels, less if a failover ends in the
    /// meantime: a sentinel announces the new master (`+switch-master`) and the next attempt
    /// follows at once, rather than up to `refresh` later.
    fn pause(&mut self, backoff: Duration) {
        let deadline = Instant::now() + backoff;
        if let (Some(sentinels), None, false) =
            (&self.config.sentinels, &self.switches, self.switches_tried)
        {
            // Once an outage, within the backoff: sentinels slow to answer, or gone, only
            // mean no early wake-up.
            self.switches_tried = true;
            self.switches = sentinels
                .switches(self.config.tls.as_ref(), self.config.timeout, deadline)
                .ok();
        }
        if let (Some(sentinels), Some(con)) = (&self.config.sentinels, &mut self.switches) {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                match con.read_within(left, MAX_MESSAGE) {
                    Ok(Some(message)) if sentinels.switched(&message) => return,
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(_) => {
                        self.switches = None;
                        break;
                    }
                }
            }
        }
        thread::sleep(deadline.saturating_duration_since(Instant::now()));
    }

    /// One connection's life: subscribe, load, then wait for a message or the next poll, until
    /// something fails.
    fn session(&mut self) -> Result<Infallible, String> {
        if std::env::var(FAULT_ENV).is_ok_and(|f| f == "refresher-panic")
            && !FAULT_INJECTED.swap(true, Ordering::SeqCst)
        {
            panic!("fault injected by {FAULT_ENV}=refresher-panic");
        }
        let mut con = Some(self.connect()?);
        // Announcements are for the time between attempts; none pile up while connected.
        self.switches = None;
        self.switches_tried = false;
        let mut subscription = self.subscribe()?;
        self.resync = self.resync_interval();
        self.last_reads.clear();
        let mut resynced_at = Instant::now();
        let mut due = Some(Reading::All);
        loop {
            let mut changed = false;
            if let Some(reading) = due.take() {
                if reading == Reading::All {
                    resynced_at = Instant::now();
                }
                let polled = self.poll(&mut con, reading)?;
                changed = polled.replaced;
                // The read's temporaries, the parse's and any replaced list are freed by now
                // (and, after a large read, the connection's buffer): give them back in one go.
                if polled.bytes >= LARGE_READ || polled.replaced {
                    os::release_freed_memory();
                }
                // A rule set now references a key outside the tracked prefixes: track it too,
                // then read again what may have changed while no one was tracking it.
                if self.tracking && self.wanted_prefixes() != self.armed {
                    subscription = self.subscribe()?;
                    due = Some(Reading::All);
                    continue;
                }
            }
            self.report(&mut con, changed)?;
            self.record_trips(&mut con)?;
            let woke = self.wait(subscription.as_mut())?;
            if matches!(woke, Woke::Tick) {
                self.check_failover()?;
            }
            due = match (woke, subscription.as_mut()) {
                (Woke::Change(reading), _) => Some(reading),
                // Redis pushes every change to gray's keys: each `refresh` only proves the
                // subscriber is alive, and the keys are read again whole every `resync`.
                (Woke::Tick, Some(subscriber)) if self.tracking => {
                    let pushed = self.check_alive(subscriber)?;
                    if resynced_at.elapsed() >= self.resync {
                        Some(Reading::All)
                    } else {
                        pushed
                    }
                }
                (Woke::Tick, _) => Some(Reading::Poll),
            };
        }
    }

    /// `resync` give or take a tenth, different in each worker, so that N workers do not read a
    /// big list at the same moment.
    fn resync_interval(&self) -> Duration {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let spread =
            (u64::from(std::process::id()).wrapping_mul(2_654_435_761) ^ u64::from(nanos)) % 2001;
        self.config.resync.mul_f64(0.9 + spread as f64 / 10_000.0)
    }

    /// PINGs the subscriber and waits `timeout` for the answer: an error when none comes (the
    /// session then reconnects, subscribes, re-arms tracking and reloads). Returns the changes to
    /// gray's keys that arrived meanwhile.
    fn check_alive(&mut self, subscriber: &mut Connection) -> Result<Option<Reading>, String> {
        let timeout = self.config.timeout;
        let lost = |this: &Self, e: connection::Error| {
            format!("lost the subscription: {}", this.describe(&e))
        };
        subscriber
            .send(&redis::cmd("PING"))
            .map_err(|e| lost(self, e))?;
        let deadline = Instant::now() + timeout;
        let mut changed: Option<Reading> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match subscriber
                .read_within(left, MAX_MESSAGE)
                .map_err(|e| lost(self, e))?
            {
                None => {
                    return Err(format!(
                        "lost the subscription: no answer to PING, timed out after {:.1}s",
                        timeout.as_secs_f64()
                    ))
                }
                Some(reply) if is_pong(&reply) => {
                    self.record_success();
                    return Ok(changed);
                }
                Some(reply) => changed = self.with_message(changed, &reply),
            }
        }
    }

    /// The command connection, connected now if it is not.
    fn command<'c>(&self, con: &'c mut Option<Connection>) -> Result<&'c mut Connection, String> {
        match con {
            Some(command) => Ok(command),
            None => Ok(con.insert(self.connect()?)),
        }
    }

    /// With sentinels, asks one every `refresh` which node is the master: an error (the session
    /// ends, and the next one connects to the new master) once it is not the node in use. A
    /// failover shows here before Sentinel reconfigures the old master, which it does only on
    /// its next look at it (up to 10 s), killing gray's connections there.
    fn check_failover(&mut self) -> Result<(), String> {
        let Some(sentinels) = self
            .config
            .sentinels
            .as_ref()
            .filter(|s| s.role == Role::Master)
        else {
            return Ok(());
        };
        let asked = match self.sentinel.as_mut() {
            Some(sentinel) => sentinels.master(sentinel).map_err(|e| e.to_string()),
            None => sentinels
                .watch(self.config.tls.as_ref(), self.config.timeout)
                .map(|(sentinel, master)| {
                    self.sentinel = Some(sentinel);
                    master
                })
                .map_err(|e| e.to_string()),
        };
        let master = match asked {
            Ok(master) => master,
            Err(e) => {
                // Nothing to compare with now; the data connections still tell a failure.
                self.sentinel = None;
                self.warn_once(format!("no sentinel to watch for a failover: {e}"));
                return Ok(());
            }
        };
        let node = self.shared.status().node;
        if node.as_deref().is_some_and(|node| node != master) {
            return Err(format!(
                "the sentinels name {master} the master of \"{}\" now, not {}",
                sentinels.master,
                node.unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// A new connection to the Redis to read: the `redis` URL's, or the node the sentinels name.
    fn connect(&self) -> Result<Connection, String> {
        let Some(sentinels) = &self.config.sentinels else {
            return Connection::open(
                &self.config.redis,
                self.config.tls.as_ref(),
                self.config.timeout,
            )
            .map_err(|e| format!("failed to connect to redis: {}", self.describe(&e)));
        };
        let (con, node) = sentinels
            .connect(
                &self.config.redis,
                self.config.tls.as_ref(),
                self.config.timeout,
            )
            .map_err(|e| format!("failed to connect to redis: {e}"))?;
        self.shared.update_status(|s| s.node = Some(node));
        Ok(con)
    }

    /// The connection changes arrive on: subscribed to `channel`, and tracking gray's keys
    /// (Redis pushes the name of each key written under their prefixes, by anyone, to this very
    /// connection). `None` when there is neither, or Redis refuses the subscription (an ACL
    /// without pub/sub, say): polling alone still works. Sets whether tracking is in force.
    fn subscribe(&mut self) -> Result<Option<Connection>, String> {
        let mut con = self.connect()?;
        let tracking = self.config.tracking && self.track(&mut con)?;
        let mut channels: Vec<String> = self.config.channel.iter().cloned().collect();
        if tracking {
            channels.push(INVALIDATE_CHANNEL.to_string());
        }
        let subscribed = !channels.is_empty() && self.subscribe_to(&mut con, &channels)?;
        let channel = self.config.channel.is_some();
        self.shared.update_status(|s| {
            s.subscribed = subscribed && channel;
            s.tracking = subscribed && tracking;
        });
        self.tracking = subscribed && tracking;
        Ok(subscribed.then_some(con))
    }

    /// Arms client-side caching in broadcast mode on `con`, redirected to itself; false, with one
    /// warning, where Redis refuses (before 6.0, or an ACL without `client|id`/`client|tracking`).
    fn track(&mut self, con: &mut Connection) -> Result<bool, String> {
        let refused = |this: &mut Self, why: String| {
            this.warn_once(format!(
                "cannot track changes to gray's keys ({why}); a write without a PUBLISH is seen by polling every {:.1}s",
                this.config.refresh.as_secs_f64()
            ));
            Ok(false)
        };
        let id = match con.query(redis::cmd("CLIENT").arg("ID"), 0) {
            Ok(Reply::Int(id)) => id,
            Ok(other) => return Err(format!("unexpected reply to CLIENT ID: {other:?}")),
            Err(connection::Error::Server(why)) => return refused(self, why),
            Err(e) => {
                return Err(format!(
                    "failed to track gray's keys: {}",
                    self.describe(&e)
                ))
            }
        };
        let mut arm = redis::cmd("CLIENT");
        arm.arg("TRACKING").arg("ON").arg("BCAST");
        let prefixes = self.wanted_prefixes();
        for prefix in &prefixes {
            arm.arg("PREFIX").arg(prefix);
        }
        arm.arg("REDIRECT").arg(id);
        match con.query(&arm, 0) {
            Ok(_) => {
                self.armed = prefixes;
                Ok(true)
            }
            Err(connection::Error::Server(why)) => refused(self, why),
            Err(e) => Err(format!(
                "failed to track gray's keys: {}",
                self.describe(&e)
            )),
        }
    }

    /// Subscribes `con` to `channels`; false, with one warning, where Redis refuses.
    fn subscribe_to(&mut self, con: &mut Connection, channels: &[String]) -> Result<bool, String> {
        let names = channels.join(", ");
        match con.subscribe(channels) {
            Ok(()) => Ok(true),
            Err(connection::Error::Server(refusal)) => {
                self.warn_once(format!(
                    "cannot subscribe to {names} ({refusal}); changes are seen by polling every {:.1}s",
                    self.config.refresh.as_secs_f64()
                ));
                Ok(false)
            }
            Err(e) => Err(format!(
                "failed to subscribe to {names}: {}",
                self.describe(&e)
            )),
        }
    }

    /// The prefixes that cover every key gray reads: the whitelist key, the rule set keys and
    /// the keys the loaded rule sets reference.
    fn wanted_prefixes(&self) -> Vec<String> {
        let mut keys: Vec<&str> = vec![&self.config.key, &self.config.rules_key];
        for compiled in self.rule_sets.iter().filter_map(|s| s.compiled.as_ref()) {
            keys.extend(compiled.rules.keys.iter().map(|k| k.name.as_str()));
        }
        tracking_prefixes(&keys)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Whether the refresher reads `key`: the whitelist, a rule set, a rule set's guard hash,
    /// or a key a rule references.
    fn reads_key(&self, key: &[u8]) -> bool {
        key == self.config.key.as_bytes()
            || self.rule_sets.iter().any(|s| {
                s.key.as_bytes() == key
                    || (key.ends_with(guard::GUARD_KEY_SUFFIX.as_bytes())
                        && guard::guard_key(&s.key).as_bytes() == key)
            })
            || self.keys.keys().any(|k| k.name.as_bytes() == key)
    }

    /// A hung Redis shows up as EAGAIN ("Resource temporarily unavailable"); say what it means.
    fn describe(&self, e: &connection::Error) -> String {
        if e.is_timeout() {
            format!(
                "timed out after {:.1}s ({e})",
                self.config.timeout.as_secs_f64()
            )
        } else {
            e.to_string()
        }
    }

    /// Waits until the next poll is due, or less when a message on the channel or an
    /// invalidation of a key gray reads arrives (other keys under the tracked prefixes, such as
    /// grayctl's history, are let pass); the messages that follow within `MESSAGE_COALESCE` are
    /// read with it.
    fn wait(&self, subscription: Option<&mut Connection>) -> Result<Woke, String> {
        let Some(con) = subscription else {
            thread::sleep(self.config.refresh);
            return Ok(Woke::Tick);
        };
        let lost = |e: connection::Error| format!("lost the subscription: {}", self.describe(&e));
        // Until the next poll; once a change arrives, only a little longer, for the messages
        // that come with it.
        let mut until = Instant::now() + self.config.refresh;
        let mut pending = None;
        loop {
            // A zero read timeout is refused by the socket: the wait is over anyway.
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(message) = con.read_within(left, MAX_MESSAGE).map_err(lost)? else {
                break;
            };
            let first = pending.is_none();
            pending = self.with_message(pending, &message);
            if first && pending.is_some() {
                until = Instant::now() + MESSAGE_COALESCE;
            }
        }
        Ok(pending.map_or(Woke::Tick, Woke::Change))
    }

    /// The keys to read again, `pending` and what `message` asks for.
    fn with_message(&self, pending: Option<Reading>, message: &Reply) -> Option<Reading> {
        match (pending, wants_reload(message, |key| self.reads_key(key))) {
            (Some(pending), Some(more)) => Some(pending.merge(more)),
            (pending, more) => pending.or(more),
        }
    }

    /// Reads every key (the whitelist, each rule set and the keys its rules reference) and swaps
    /// in a new snapshot if anything changed. Connects first if `con` is `None`, and leaves it
    /// `None` after a large read (its memory goes back before the parse) and after a refusal that
    /// left a reply half-read.
    fn poll(&mut self, con: &mut Option<Connection>, reading: Reading) -> Result<Polled, String> {
        self.reading = reading;
        self.registry_busy = false;
        let mut polled = Polled::default();
        let read = self.read_keys(con, &mut polled);
        // What was loaded before a failure is published all the same, now or after the next
        // poll, which may find nothing new to read.
        self.unpublished |= polled.replaced;
        let refused = read?;
        if self.unpublished || self.shared.current().rule_sets.len() != self.rule_sets.len() {
            self.publish();
        }
        if !refused {
            self.record_success();
        }
        self.signal_first_load();
        Ok(polled)
    }

    /// Reads the keys of this poll into the refresher's state; says whether one was refused.
    fn read_keys(
        &mut self,
        con: &mut Option<Connection>,
        polled: &mut Polled,
    ) -> Result<bool, String> {
        let mut refused = false;
        let key = self.config.key.clone();
        match self.read::<WhitelistBuilder>(con, &key, polled)? {
            Read::Value(fetched, took) => {
                if self
                    .whitelist
                    .as_ref()
                    .is_none_or(|l| l.version != fetched.version)
                {
                    self.whitelist = Some(self.parse_list(&key, fetched, took));
                    polled.replaced = true;
                }
            }
            Read::Refused => refused = true,
            Read::Unchanged => {}
        }
        for set in 0..self.rule_sets.len() {
            refused |= self.poll_rule_set(con, set, polled)?;
        }
        refused |= self.poll_referenced_keys(con, polled)?;
        self.poll_guard_resets(con, polled)?;
        Ok(refused)
    }

    /// One key read, with the connection kept in order: a refusal (wrong type, too large) is
    /// recorded here and keeps the key's last good value; a Redis error ends the session.
    fn read<B: ListBuilder>(
        &mut self,
        con: &mut Option<Connection>,
        key: &str,
        polled: &mut Polled,
    ) -> Result<Read<B>, String> {
        let last = self.last_reads.get(key);
        if let Reading::Keys(written) = &self.reading {
            if last.is_some() && !written.contains(key.as_bytes()) {
                return Ok(Read::Unchanged);
            }
        }
        // Without tracking, a large value (or one not read yet) is probed before every read, so
        // that the next poll can tell it unchanged.
        let probing = !self.tracking && last.is_none_or(|l| l.bytes >= PROBE_FROM);
        let command = self.command(con)?;
        let started = Instant::now();
        let probed = if probing {
            match source::probe(command, key) {
                Ok(probed) => Some(probed),
                Err(refused @ FetchError::WrongType(_)) => {
                    self.record_failure(&format!("ignoring key {key}: {refused}"), true);
                    return Ok(Read::Refused);
                }
                Err(FetchError::Redis(connection::Error::Server(refusal))) => {
                    self.warn_once(format!(
                        "cannot probe key {key} ({refusal}); it is read whole every poll (grant +strlen +scard)"
                    ));
                    None
                }
                Err(e) => return Err(self.read_failed(key, e)),
            }
        } else {
            None
        };
        if let (Reading::Poll, Some(probed), Some(last)) =
            (&self.reading, probed, self.last_reads.get(key))
        {
            if last.probed == Some(probed) && last.at.elapsed() < self.resync {
                return Ok(Read::Unchanged);
            }
        }
        let command = con.as_mut().expect("connected above");
        match fetch::<B>(command, key, self.config.max_bytes) {
            Ok(fetched) => {
                polled.bytes += fetched.bytes;
                if fetched.bytes >= LARGE_READ {
                    *con = None;
                }
                self.last_reads.insert(
                    key.to_string(),
                    LastRead {
                        bytes: fetched.bytes,
                        probed,
                        at: Instant::now(),
                    },
                );
                Ok(Read::Value(fetched, started.elapsed()))
            }
            Err(refused @ (FetchError::WrongType(_) | FetchError::TooLarge(_))) => {
                if !command.in_step() {
                    *con = None;
                }
                self.record_failure(&format!("ignoring key {key}: {refused}"), true);
                // What was read before the refusal is freed: give it back.
                polled.bytes += LARGE_READ;
                Ok(Read::Refused)
            }
            Err(e) => Err(self.read_failed(key, e)),
        }
    }

    fn read_failed(&self, key: &str, e: FetchError) -> String {
        match e {
            FetchError::Redis(e) => format!("failed to read key {key}: {}", self.describe(&e)),
            other => format!("failed to read key {key}: {other}"),
        }
    }

    fn parse_list(&self, key: &str, fetched: Fetched, read_took: Duration) -> Arc<LoadedList> {
        let (kind, version) = (fetched.kind, fetched.version);
        let started = Instant::now();
        let list = fetched.into_list();
        self.report_parse(key, &list, kind, version, read_took, started.elapsed());
        Arc::new(LoadedList {
            list,
            kind,
            version,
            loaded_at: SystemTime::now(),
        })
    }

    /// Reads rule set `set`; a new good one replaces the old, a bad one is logged once and
    /// changes nothing, a missing key leaves the whitelist to decide. Says whether it refused.
    fn poll_rule_set(
        &mut self,
        con: &mut Option<Connection>,
        set: usize,
        polled: &mut Polled,
    ) -> Result<bool, String> {
        let key = self.rule_sets[set].key.clone();
        let fetched = match self.read::<Text>(con, &key, polled)? {
            Read::Value(fetched, _) => fetched,
            Read::Refused => return Ok(true),
            Read::Unchanged => return Ok(false),
        };
        let slot = &mut self.rule_sets[set];
        if slot.seen == Some(fetched.version) {
            return Ok(false);
        }
        slot.seen = Some(fetched.version);
        let (kind, version) = (fetched.kind, fetched.version);
        let outcome = load::compile_rule_set(kind, &fetched.into_list(), &self.config);
        match outcome {
            Ok(None) => {
                if slot.compiled.take().is_some() {
                    self.shared.log(
                        Level::Notice,
                        format!("rule set key {key} is gone: the whitelist key decides again"),
                    );
                }
                polled.replaced = true;
                Ok(false)
            }
            Ok(Some(rules)) => {
                self.shared.log(
                    Level::Notice,
                    format!(
                        "loaded rule set from key {key}: {} rules, {}, reading {}; version {version:016x}",
                        rules.rules.len(),
                        if rules.enabled { "enabled" } else { "disabled (everyone to the default)" },
                        if rules.inputs.is_empty() {
                            "the client address only".to_string()
                        } else {
                            rules.inputs.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
                        }
                    ),
                );
                let plan = Plan::new(NEXT_PLAN.fetch_add(1, Ordering::Relaxed), &rules.inputs);
                let compiled = Arc::new(CompiledRuleSet {
                    key: key.clone(),
                    rules,
                    version,
                    loaded_at: SystemTime::now(),
                    plan,
                });
                let targets = self.config.targets.clone();
                let series =
                    metrics::rule_set_series(&compiled, &targets, |labels| self.series(labels));
                for (rule, &s) in compiled.rules.rules.iter().zip(&series.rules) {
                    if rule.guard.is_some() && s == 0 {
                        self.warn_once(format!(
                            "the guard of rule set {key} rule \"{}\" is off: its requests are not counted",
                            rule.name
                        ));
                    }
                }
                crate::guard::forget_other_versions(&compiled, &series);
                let slot = &mut self.rule_sets[set];
                slot.compiled = Some(compiled);
                slot.series = series;
                polled.replaced = true;
                Ok(false)
            }
            Err(e) => {
                let keeping = if slot.compiled.is_some() {
                    "keeping the previous rule set"
                } else {
                    "no rule set loaded, the whitelist key decides"
                };
                let error = format!("rejected rule set in key {key}: {e}");
                self.shared.log(Level::Err, format!("{error}; {keeping}"));
                self.shared.update_status(|s| {
                    s.last_error = Some(error);
                    s.last_error_at = Some(SystemTime::now());
                });
                // Redis answered; what it holds is wrong, and the log says so.
                Ok(false)
            }
        }
    }

    /// Reads the keys the loaded rule sets reference (`ip_key`, `in_key`) and forgets the others.
    fn poll_referenced_keys(
        &mut self,
        con: &mut Option<Connection>,
        polled: &mut Polled,
    ) -> Result<bool, String> {
        let mut wanted: Vec<KeyRef> = Vec::new();
        for compiled in self.rule_sets.iter().filter_map(|s| s.compiled.as_ref()) {
            for key in &compiled.rules.keys {
                if !wanted.contains(key) {
                    wanted.push(key.clone());
                }
            }
        }
        let before = self.keys.len();
        let last_reads = &mut self.last_reads;
        self.keys.retain(|key, _| {
            let kept = wanted.contains(key);
            if !kept {
                // Referenced again later, it is read again, whatever a write names.
                last_reads.remove(&key.name);
            }
            kept
        });
        polled.replaced |= self.keys.len() != before;
        let mut refused = false;
        for key in wanted {
            // The whitelist key is read once, above.
            if key.use_ == KeyUse::Whitelist && key.name == self.config.key {
                continue;
            }
            let current = self.keys.get(&key).map(|k| match k {
                LoadedKey::Whitelist(list) => list.version,
                LoadedKey::Ids(ids) => ids.version,
            });
            let loaded = match key.use_ {
                KeyUse::Whitelist => match self.read::<WhitelistBuilder>(con, &key.name, polled)? {
                    Read::Value(f, took) if current != Some(f.version) => {
                        Some(LoadedKey::Whitelist(self.parse_list(&key.name, f, took)))
                    }
                    Read::Value(..) | Read::Unchanged => None,
                    Read::Refused => {
                        refused = true;
                        None
                    }
                },
                KeyUse::Ids => match self.read::<IdSet>(con, &key.name, polled)? {
                    Read::Value(f, took) if current != Some(f.version) => {
                        let (kind, version) = (f.kind, f.version);
                        let started = Instant::now();
                        let ids = f.into_list();
                        self.shared.log(
                            Level::Notice,
                            format!(
                                "loaded ids from {} key {}: {} ids, {} rejected (over {MAX_ID_LEN} bytes), version {version:016x}, read in {:.1} ms, parsed in {:.1} ms",
                                kind.as_str(),
                                key.name,
                                ids.len(),
                                ids.rejected_count,
                                took.as_secs_f64() * 1000.0,
                                started.elapsed().as_secs_f64() * 1000.0
                            ),
                        );
                        Some(LoadedKey::Ids(Arc::new(LoadedIds { ids, kind, version })))
                    }
                    Read::Value(..) | Read::Unchanged => None,
                    Read::Refused => {
                        refused = true;
                        None
                    }
                },
            };
            if let Some(loaded) = loaded {
                self.keys.insert(key, loaded);
                polled.replaced = true;
            }
        }
        Ok(refused)
    }

    /// Reads the guard hash of each loaded rule set with guards, and clears the trips an
    /// operator reset since they tripped (the other workers see it in the region).
    fn poll_guard_resets(
        &mut self,
        con: &mut Option<Connection>,
        polled: &mut Polled,
    ) -> Result<(), String> {
        for set in 0..self.rule_sets.len() {
            let slot = &self.rule_sets[set];
            let Some(compiled) = slot.compiled.clone() else {
                continue;
            };
            if compiled.rules.rules.iter().all(|r| r.guard.is_none()) {
                continue;
            }
            let hash = guard::guard_key(&slot.key);
            let command = self.command(con)?;
            let fields = match command.query(redis::cmd("HGETALL").arg(&hash), MAX_MESSAGE) {
                Ok(Reply::Array(Some(fields))) => fields,
                Ok(_) => continue,
                Err(connection::Error::Server(refusal)) => {
                    self.warn_once(format!(
                        "cannot read {hash} ({refusal}); guards cannot be reset from grayctl"
                    ));
                    continue;
                }
                Err(e) => return Err(format!("failed to read {hash}: {}", self.describe(&e))),
            };
            let mut resets = HashMap::new();
            for pair in fields.chunks(2) {
                if let [Reply::Bulk(Some(field)), Reply::Bulk(Some(value))] = pair {
                    let at = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                    if let (Some(rule), Some(at)) = (guard::reset_rule(field), at) {
                        resets.insert(rule.to_string(), at);
                    }
                }
            }
            let cleared = crate::guard::reset(&compiled, &self.rule_sets[set].series, &resets);
            for rule in &cleared {
                self.shared.log(
                    Level::Notice,
                    format!(
                        "guard of rule set {} rule \"{rule}\" reset: the rule matches again",
                        compiled.key
                    ),
                );
            }
            polled.replaced |= !cleared.is_empty();
        }
        Ok(())
    }

    /// Writes the guard trips this worker made to their rule sets' guard hashes. A refusal (no
    /// write permission there) is warned about once: the trip itself holds all the same. A trip
    /// not written for a lost connection waits for the next session.
    fn record_trips(&mut self, con: &mut Option<Connection>) -> Result<(), String> {
        let mut trips = self.shared.take_trips().into_iter();
        while let Some(trip) = trips.next() {
            let unwritten = |trip, rest: std::vec::IntoIter<_>| {
                std::iter::once(trip)
                    .chain(rest)
                    .for_each(|t| self.shared.queue_trip(t))
            };
            let command = match self.command(con) {
                Ok(command) => command,
                Err(e) => {
                    unwritten(trip, trips);
                    return Err(e);
                }
            };
            let json = serde_json::to_string(&trip.record).expect("a trip record is plain data");
            match command.query(redis::cmd("HSET").arg(&trip.key).arg(&trip.field).arg(json), 0) {
                Ok(_) => {}
                Err(connection::Error::Server(refusal)) => self.warn_once(format!(
                    "cannot record guard trips in {} ({refusal}); grayctl guard show will not list them",
                    trip.key
                )),
                Err(e) => {
                    let error = format!(
                        "failed to record a guard trip in {}: {}",
                        trip.key,
                        self.describe(&e)
                    );
                    unwritten(trip, trips);
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Writes what this worker serves to the gateways hash, after a change and at least every
    /// `report` (or `refresh`, if longer: reports ride on polls). A refusal (an ACL without
    /// HSET on that key) is warned about once and changes nothing else.
    fn report(&mut self, con: &mut Option<Connection>, changed: bool) -> Result<(), String> {
        let Some(every) = self.config.report else {
            return Ok(());
        };
        let every = every.max(self.config.refresh);
        if !changed && self.reported_at.is_some_and(|at| at.elapsed() < every) {
            return Ok(());
        }
        let keys = self
            .loaded_keys()
            .into_iter()
            .map(|k| fleet::KeyState {
                key: k.key,
                version: k.version,
            })
            .collect();
        let report = fleet::Report {
            host: fleet::hostname(),
            pid: std::process::id(),
            gray: env!("CARGO_PKG_VERSION").to_string(),
            keys,
            loaded_at: unix_seconds(self.published_at),
            reported_at: unix_seconds(SystemTime::now()),
            every: every.as_secs_f64(),
        };
        let hash = self.config.gateways_key();
        let ttl = (every.as_secs_f64() * fleet::MISSED_BEATS * 2.0).ceil() as u64;
        let command = self.command(con)?;
        let written = command
            .query(
                redis::cmd("HSET")
                    .arg(&hash)
                    .arg(report.field())
                    .arg(report.to_json()),
                0,
            )
            .and_then(|_| command.query(redis::cmd("EXPIRE").arg(&hash).arg(ttl.max(1)), 0));
        self.reported_at = Some(Instant::now());
        match written {
            Ok(_) => Ok(()),
            Err(connection::Error::Server(refusal)) => {
                self.warn_once(format!("cannot report to {hash} ({refusal}); grayctl status will not list this gateway"));
                Ok(())
            }
            Err(e) => Err(format!("failed to report to {hash}: {}", self.describe(&e))),
        }
    }

    /// Swaps in a snapshot of what is loaded now.
    fn publish(&mut self) {
        self.unpublished = false;
        self.published_at = SystemTime::now();
        let current = self.shared.current();
        let whitelist = self.whitelist.clone();
        let rule_sets = self
            .rule_sets
            .iter()
            .map(|slot| {
                let compiled = slot.compiled.clone()?;
                let keys = compiled
                    .rules
                    .keys
                    .iter()
                    .map(|key| {
                        if key.use_ == KeyUse::Whitelist && key.name == self.config.key {
                            return whitelist.clone().map(LoadedKey::Whitelist);
                        }
                        self.keys.get(key).cloned()
                    })
                    .collect();
                Some(ActiveRuleSet {
                    tripped: crate::guard::tripped_rules(&compiled, &slot.series),
                    compiled,
                    keys,
                    series: slot.series.clone(),
                })
            })
            .collect();
        let whitelist_series = match self.whitelist_series {
            Some(series) => series,
            None => {
                let (key, targets) = (self.config.key.clone(), self.config.targets.clone());
                let series = metrics::whitelist_series(&key, &targets, |l| self.series(l));
                // Registered for good once both are; tried again at the next publish otherwise.
                if !series.contains(&0) || !metrics::shared() {
                    self.whitelist_series = Some(series);
                }
                series
            }
        };
        self.shared.snapshot.store(Arc::new(Snapshot {
            trusted_proxies: current.trusted_proxies.clone(),
            loaded: whitelist,
            rule_sets,
            whitelist_series,
        }));
        self.publish_state();
    }

    /// The metrics series of `labels`; 0 (not counted, said once) where it cannot have one.
    fn series(&mut self, labels: &Labels) -> u32 {
        if self.registry_busy {
            return 0;
        }
        metrics::register(labels).unwrap_or_else(|e| {
            // A registry held by a stuck process: not once per rule of this poll.
            self.registry_busy = matches!(e, RegisterError::Busy);
            let rule = if labels.rule.is_empty() {
                String::new()
            } else {
                format!(" \"{}\"", labels.rule)
            };
            self.warn_once(format!(
                "not counting the requests key {} sends to {} ({}{rule}): {e}",
                labels.rule_set, labels.target, labels.outcome
            ));
            0
        })
    }

    /// Every key this worker has loaded: the whitelist, each rule set slot (loaded or not), and
    /// the keys the rule sets reference. What scrapes and the gateways hash show.
    fn loaded_keys(&self) -> Vec<KeyLoaded> {
        let whitelist = self.whitelist.as_ref();
        let mut keys = vec![KeyLoaded {
            key: self.config.key.clone(),
            kind: "whitelist".into(),
            version: whitelist.map(|l| fleet::version_text(l.version)),
            entries: whitelist.map_or(0, |l| l.list.entries() as u64),
            loaded_at: whitelist.map(|l| unix_seconds(l.loaded_at)),
        }];
        for slot in &self.rule_sets {
            let compiled = slot.compiled.as_ref();
            keys.push(KeyLoaded {
                key: slot.key.clone(),
                kind: "rule_set".into(),
                version: compiled.map(|c| fleet::version_text(c.version)),
                entries: compiled.map_or(0, |c| c.rules.rules.len() as u64),
                loaded_at: compiled.map(|c| unix_seconds(c.loaded_at)),
            });
        }
        for (key, loaded) in &self.keys {
            let (kind, version, entries, loaded_at) = match loaded {
                LoadedKey::Whitelist(l) => (
                    "whitelist",
                    l.version,
                    l.list.entries() as u64,
                    Some(unix_seconds(l.loaded_at)),
                ),
                LoadedKey::Ids(ids) => ("ids", ids.version, ids.ids.len() as u64, None),
            };
            keys.push(KeyLoaded {
                key: key.name.clone(),
                kind: kind.into(),
                version: Some(fleet::version_text(version)),
                entries,
                loaded_at,
            });
        }
        keys
    }

    /// Publishes what this worker serves and how its link to Redis is, for scrapes.
    fn publish_state(&self) {
        let status = self.shared.status();
        metrics::publish_state(&WorkerState {
            worker: metrics::worker(),
            pid: std::process::id(),
            running: status.running,
            connected: status.connected,
            subscribed: status.subscribed,
            tracking: status.tracking,
            failures: status.failures,
            last_ok_at: status.last_ok_at.map(unix_seconds),
            last_error: status.last_error,
            last_error_at: status.last_error_at.map(unix_seconds),
            keys: self.loaded_keys(),
        });
    }

    fn report_parse(
        &self,
        key: &str,
        list: &Whitelist,
        kind: KeyKind,
        version: u64,
        read_took: Duration,
        parse_took: Duration,
    ) {
        let shared = self.shared;
        // A SET's members are parsed as its batches arrive; what is left after reading is indexing.
        let (read, parse) = match kind {
            KeyKind::Set => ("read and parsed", "indexed"),
            _ => ("read", "parsed"),
        };
        shared.log(
            Level::Notice,
            format!(
                "loaded whitelist from {} key {key}: {} entries ({} IPv4, {} IPv6), {} rejected, version {version:016x}, {read} in {:.1} ms, {parse} in {:.1} ms",
                kind.as_str(),
                list.entries(),
                list.entries_v4,
                list.entries_v6,
                list.rejected_count,
                read_took.as_secs_f64() * 1000.0,
                parse_took.as_secs_f64() * 1000.0
            ),
        );
        for rejected in &list.rejected {
            shared.log(
                Level::Warn,
                format!("rejected whitelist entry {rejected} in key {key}"),
            );
        }
        if list.rejected_count > list.rejected.len() {
            shared.log(
                Level::Warn,
                format!(
                    "... and {} more rejected entries in key {key}",
                    list.rejected_count - list.rejected.len()
                ),
            );
        }
        for t in &list.truncated {
            shared.log(
                Level::Warn,
                format!(
                    "whitelist entry \"{}\" has host bits set; using {}",
                    t.entry, t.network
                ),
            );
        }
    }

    /// A condition that repeats on every reconnect but is not a failure.
    fn warn_once(&mut self, message: String) {
        if self.warned.insert(message.clone()) {
            self.shared.log(Level::Warn, message);
        }
    }

    fn record_success(&mut self) {
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
        self.publish_state();
        self.signal_first_load();
    }

    fn record_failure(&mut self, error: &str, still_connected: bool) {
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
        self.publish_state();
        self.signal_first_load();
    }

    fn signal_first_load(&mut self) {
        if let Some(done) = self.first_load_done.take() {
            let _ = done.send(());
        }
    }
}

/// The prefixes to track for these keys: each key once, none inside another's prefix (Redis
/// refuses overlapping prefixes).
fn tracking_prefixes<'a>(keys: &[&'a str]) -> Vec<&'a str> {
    let mut prefixes: Vec<&str> = Vec::new();
    for key in keys {
        if prefixes.iter().any(|p| key.starts_with(p)) {
            continue;
        }
        prefixes.retain(|p| !p.starts_with(key));
        prefixes.push(key);
    }
    prefixes
}

/// A subscribed connection's answer to PING.
fn is_pong(reply: &Reply) -> bool {
    matches!(reply, Reply::Array(Some(parts))
        if parts.first() == Some(&Reply::Bulk(Some(b"pong".to_vec()))))
}

/// What a message on the subscription asks to read again: the key a message on gray's channel
/// names (grayctl names the key it wrote), or everything for any other payload on the channel
/// and for an invalidation naming no key (a flush, a replica's resync); the keys gray reads that
/// an invalidation names; nothing for other messages.
fn wants_reload(message: &Reply, reads_key: impl Fn(&[u8]) -> bool) -> Option<Reading> {
    let Reply::Array(Some(parts)) = message else {
        return None;
    };
    match parts.as_slice() {
        [Reply::Bulk(Some(kind)), Reply::Bulk(Some(channel)), payload] if kind == b"message" => {
            if channel != INVALIDATE_CHANNEL.as_bytes() {
                return Some(match payload {
                    Reply::Bulk(Some(key)) if reads_key(key) => {
                        Reading::Keys(HashSet::from([key.clone()]))
                    }
                    _ => Reading::All,
                });
            }
            match payload {
                Reply::Array(Some(keys)) => {
                    let written: HashSet<Vec<u8>> = keys
                        .iter()
                        .filter_map(|k| match k {
                            Reply::Bulk(Some(k)) if reads_key(k) => Some(k.clone()),
                            _ => None,
                        })
                        .collect();
                    (!written.is_empty()).then_some(Reading::Keys(written))
                }
                _ => Some(Reading::All),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn a_subscribed_ping_is_answered_by_pong() {
        let bulk = |b: &str| Reply::Bulk(Some(b.as_bytes().to_vec()));
        assert!(is_pong(&Reply::Array(Some(vec![bulk("pong"), bulk("")]))));
        assert!(!is_pong(&Reply::Array(Some(vec![
            bulk("message"),
            bulk("gray:changed"),
            bulk("1")
        ]))));
        assert!(!is_pong(&Reply::Status("PONG".into())));
    }

    #[test]
    fn tracked_prefixes_never_overlap() {
        assert_eq!(tracking_prefixes(&["gray", "gray:rules"]), ["gray"]);
        assert_eq!(tracking_prefixes(&["gray:rules", "gray"]), ["gray"]);
        assert_eq!(tracking_prefixes(&["gray", "rules"]), ["gray", "rules"]);
        assert_eq!(tracking_prefixes(&["gray", "gray"]), ["gray"]);
    }

    #[test]
    fn only_changes_to_keys_gray_reads_reload() {
        let bulk = |b: &str| Reply::Bulk(Some(b.as_bytes().to_vec()));
        let message = |channel: &str, payload: Reply| {
            Reply::Array(Some(vec![bulk("message"), bulk(channel), payload]))
        };
        let reads = |k: &[u8]| k == b"gray" || k == b"gray:rules";
        let keys = |names: &[&str]| Reply::Array(Some(names.iter().map(|n| bulk(n)).collect()));
        let written = |names: &[&str]| {
            Some(Reading::Keys(
                names.iter().map(|n| n.as_bytes().to_vec()).collect(),
            ))
        };
        assert_eq!(
            wants_reload(&message("gray:changed", bulk("anything")), reads),
            Some(Reading::All)
        );
        assert_eq!(
            wants_reload(&message("gray:changed", bulk("gray:rules")), reads),
            written(&["gray:rules"])
        );
        assert_eq!(
            wants_reload(
                &message(INVALIDATE_CHANNEL, keys(&["gray:rules", "gray:history"])),
                reads
            ),
            written(&["gray:rules"])
        );
        assert_eq!(
            wants_reload(
                &message(INVALIDATE_CHANNEL, keys(&["gray:history", "gray:gateways"])),
                reads
            ),
            None
        );
        assert_eq!(
            wants_reload(&message(INVALIDATE_CHANNEL, Reply::Bulk(None)), reads),
            Some(Reading::All)
        );
        assert_eq!(
            wants_reload(&message(INVALIDATE_CHANNEL, Reply::Array(None)), reads),
            Some(Reading::All)
        );
        assert_eq!(
            wants_reload(&Reply::Array(Some(vec![bulk("pong"), bulk("")])), reads),
            None
        );
    }

    #[test]
    fn readings_merge_into_the_wider() {
        let keys = |k: &[&str]| Reading::Keys(k.iter().map(|k| k.as_bytes().to_vec()).collect());
        assert_eq!(keys(&["a"]).merge(keys(&["b"])), keys(&["a", "b"]));
        assert_eq!(keys(&["a"]).merge(Reading::All), Reading::All);
        assert_eq!(Reading::Poll.merge(keys(&["a"])), Reading::Poll);
        assert_eq!(Reading::Poll.merge(Reading::All), Reading::All);
    }

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
