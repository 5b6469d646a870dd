//! The background refresher: one thread per worker process that keeps the snapshot in step with
//! Redis. It polls every `refresh`, reloads at once on a message on `channel`, reconnects with
//! backoff, and keeps the last good list through any failure. It never touches the Lua state
//! (it talks to the worker only through [`Shared`]) and never blocks a request.

use std::collections::HashSet;
use std::convert::Infallible;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::config::Config;
use crate::connection::{self, Connection, Reply};
use crate::log::{Level, Throttle};
use crate::os;
use crate::snapshot::{KeyKind, LoadedList, Snapshot};
use crate::source::{fetch, FetchError, Fetched};
use crate::state::Shared;
use crate::whitelist::Whitelist;

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

/// Fault injection for the tests of the supervisor: with `GRAY_FAULT=refresher-panic` in the
/// worker's environment (nginx's `env` directive), the first session of each process panics.
const FAULT_ENV: &str = "GRAY_FAULT";
static FAULT_INJECTED: AtomicBool = AtomicBool::new(false);

/// Starts the refresher. The receiver gets one message when the first load attempt has finished,
/// successful or not, so the worker can load before it serves.
pub fn spawn(config: Arc<Config>, shared: &'static Shared) -> std::io::Result<mpsc::Receiver<()>> {
    os::map_large_allocations();
    let (first_load_done, first_load) = mpsc::channel();
    let mut refresher = Refresher {
        config,
        shared,
        throttle: Throttle::new(ERROR_LOG_INTERVAL),
        failures_in_a_row: 0,
        first_load_done: Some(first_load_done),
        warned: HashSet::new(),
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

/// What one poll did, for the memory housekeeping after it.
#[derive(Default)]
struct Polled {
    /// Bytes of list read from Redis.
    bytes: usize,
    /// A new list replaced the previous one.
    replaced: bool,
}

struct Refresher {
    config: Arc<Config>,
    shared: &'static Shared,
    throttle: Throttle,
    failures_in_a_row: u64,
    first_load_done: Option<mpsc::Sender<()>>,
    warned: HashSet<String>,
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
            thread::sleep(backoff);
            // Never wait longer than a poll would: Redis coming back is seen within `refresh`.
            backoff = (backoff * 2).min(self.config.refresh);
        }
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
        let mut subscription = match self.config.channel.clone() {
            Some(channel) => self.subscribe(&channel)?,
            None => None,
        };
        self.shared
            .update_status(|s| s.subscribed = subscription.is_some());
        loop {
            let polled = self.poll(&mut con)?;
            // The read's temporaries, the parse's and any replaced list are freed by now (and,
            // after a large read, the connection's buffer): give them back in one go.
            if polled.bytes >= LARGE_READ || polled.replaced {
                os::release_freed_memory();
            }
            self.wait(subscription.as_mut())?;
        }
    }

    fn connect(&self) -> Result<Connection, String> {
        Connection::open(&self.config.redis, self.config.timeout)
            .map_err(|e| format!("failed to connect to redis: {}", self.describe(&e)))
    }

    /// A connection subscribed to `channel`, or `None` when Redis refuses the subscription (an
    /// ACL without pub/sub, say): polling alone still works.
    fn subscribe(&mut self, channel: &str) -> Result<Option<Connection>, String> {
        let mut con = self.connect()?;
        match con.query(redis::cmd("SUBSCRIBE").arg(channel), MAX_MESSAGE) {
            Ok(Reply::Array(Some(confirmation)))
                if confirmation.first() == Some(&Reply::Bulk(Some(b"subscribe".to_vec()))) =>
            {
                Ok(Some(con))
            }
            Ok(other) => Err(format!(
                "failed to subscribe to {channel}: unexpected reply {other:?}"
            )),
            Err(connection::Error::Server(refusal)) => {
                self.warn_once(format!(
                    "cannot subscribe to {channel} ({refusal}); changes are seen by polling every {:.1}s",
                    self.config.refresh.as_secs_f64()
                ));
                Ok(None)
            }
            Err(e) => Err(format!(
                "failed to subscribe to {channel}: {}",
                self.describe(&e)
            )),
        }
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

    /// Waits until the next poll is due, or less when a message arrives on the channel; the
    /// messages that follow the first within `MESSAGE_COALESCE` are read with it.
    fn wait(&self, subscription: Option<&mut Connection>) -> Result<(), String> {
        let Some(con) = subscription else {
            thread::sleep(self.config.refresh);
            return Ok(());
        };
        let lost = |e: connection::Error| format!("lost the subscription: {}", self.describe(&e));
        if con
            .read_within(self.config.refresh, MAX_MESSAGE)
            .map_err(lost)?
            .is_none()
        {
            return Ok(());
        }
        let deadline = Instant::now() + MESSAGE_COALESCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || con.read_within(left, MAX_MESSAGE).map_err(lost)?.is_none() {
                return Ok(());
            }
        }
    }

    /// Reads the key and installs what changed. Connects first if `con` is `None`, and leaves it
    /// `None` after a large read (its memory goes back before the parse) and after a refusal that
    /// left a reply half-read.
    fn poll(&mut self, con: &mut Option<Connection>) -> Result<Polled, String> {
        let command = match con.as_mut() {
            Some(command) => command,
            None => con.insert(self.connect()?),
        };
        let key = &self.config.key;
        let started = Instant::now();
        match fetch(command, key, self.config.max_bytes) {
            Ok(fetched) => {
                let bytes = fetched.bytes;
                if bytes >= LARGE_READ {
                    *con = None;
                }
                let replaced = self.install(fetched, started.elapsed());
                self.record_success();
                Ok(Polled { bytes, replaced })
            }
            Err(refused @ (FetchError::WrongType(_) | FetchError::TooLarge(_))) => {
                if !command.in_step() {
                    *con = None;
                }
                let error = format!("ignoring key {key}: {refused}");
                self.record_failure(&error, true);
                // What was read before the refusal is freed: give it back.
                Ok(Polled {
                    bytes: LARGE_READ,
                    replaced: false,
                })
            }
            Err(FetchError::Redis(e)) => {
                Err(format!("failed to read key {key}: {}", self.describe(&e)))
            }
        }
    }

    /// Parses and swaps in a new list unless the value is unchanged; says whether it did.
    fn install(&mut self, fetched: Fetched, read_took: Duration) -> bool {
        let (kind, version) = (fetched.kind, fetched.version);
        let current = self.shared.current();
        if current
            .loaded
            .as_ref()
            .is_some_and(|l| l.version == version)
        {
            return false;
        }
        let started = Instant::now();
        let list = fetched.into_list();
        self.report_parse(&list, kind, version, read_took, started.elapsed());
        self.shared.snapshot.store(Arc::new(Snapshot {
            trusted_proxies: current.trusted_proxies.clone(),
            loaded: Some(LoadedList {
                list,
                kind,
                version,
                loaded_at: SystemTime::now(),
            }),
        }));
        true
    }

    fn report_parse(
        &self,
        list: &Whitelist,
        kind: KeyKind,
        version: u64,
        read_took: Duration,
        parse_took: Duration,
    ) {
        let key = &self.config.key;
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
            s.failures += 1;
            s.last_error = Some(error.to_string());
            s.last_error_at = Some(SystemTime::now());
        });
        self.signal_first_load();
    }

    fn signal_first_load(&mut self) {
        if let Some(done) = self.first_load_done.take() {
            let _ = done.send(());
        }
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
