//! The background refresher: one thread per worker process that keeps the snapshot in step with
//! Redis. It polls every `refresh`, reloads at once on a message on `channel`, reconnects with
//! backoff, and keeps the last good list through any failure. It never touches the Lua state
//! (it talks to the worker only through [`Shared`]) and never blocks a request.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::config::Config;
use crate::log::{Level, Throttle};
use crate::os;
use crate::snapshot::{KeyKind, LoadedList, Snapshot};
use crate::source::{fetch, FetchError, Fetched};
use crate::state::Shared;
use crate::whitelist::Whitelist;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// A read at least this large is followed by a new connection: redis-rs keeps a read buffer as
/// large as the largest reply for the life of a connection, which would pin a copy of a big list.
const LARGE_READ: usize = 1 << 20;
/// The same Redis error is logged at most this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// After a message, further messages arriving this close together are folded into one reload.
const MESSAGE_COALESCE: Duration = Duration::from_millis(2);

/// Starts the refresher. The receiver gets one message when the first load attempt has finished,
/// successful or not, so the worker can load before it serves.
pub fn spawn(config: Arc<Config>, shared: &'static Shared) -> std::io::Result<mpsc::Receiver<()>> {
    os::map_large_allocations();
    let (first_load_done, first_load) = mpsc::channel();
    let client = redis::Client::open(config.redis.clone()).map_err(std::io::Error::other)?;
    let refresher = Refresher {
        config,
        shared,
        client,
        throttle: Throttle::new(ERROR_LOG_INTERVAL),
        failures_in_a_row: 0,
        first_load_done: Some(first_load_done),
        warned: HashSet::new(),
    };
    thread::Builder::new()
        .name("gray-refresher".into())
        .spawn(move || refresher.run())?;
    Ok(first_load)
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
    client: redis::Client,
    throttle: Throttle,
    failures_in_a_row: u64,
    first_load_done: Option<mpsc::Sender<()>>,
    warned: HashSet<String>,
}

impl Refresher {
    fn run(mut self) {
        os::lower_thread_priority();
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
        let mut con = Some(self.connect().map_err(|e| self.connect_error(&e))?);
        let mut sub_con = match self.config.channel.clone() {
            Some(channel) => self.subscribe(&channel)?,
            None => None,
        };
        let mut pubsub = sub_con.as_mut().map(|c| c.as_pubsub());
        self.shared
            .update_status(|s| s.subscribed = pubsub.is_some());
        loop {
            let polled = self.poll(&mut con)?;
            // The read's temporaries, the parse's and any replaced list are freed by now (and,
            // after a large read, the connection's buffer): give them back in one go.
            if polled.bytes >= LARGE_READ || polled.replaced {
                os::release_freed_memory();
            }
            self.wait(pubsub.as_mut())?;
        }
    }

    fn connect_error(&self, e: &redis::RedisError) -> String {
        format!("failed to connect to redis: {}", self.describe(e))
    }

    /// A connection subscribed to `channel`, or `None` when Redis refuses the subscription (an
    /// ACL without pub/sub, say): polling alone still works.
    fn subscribe(&mut self, channel: &str) -> Result<Option<redis::Connection>, String> {
        let mut con = self.connect().map_err(|e| self.connect_error(&e))?;
        // A plain query: redis 1.8's PubSub::subscribe takes an error reply for success.
        match redis::cmd("SUBSCRIBE")
            .arg(channel)
            .query::<redis::Value>(&mut con)
        {
            Ok(_) => Ok(Some(con)),
            Err(e) if e.is_io_error() => Err(format!(
                "failed to subscribe to {channel}: {}",
                self.describe(&e)
            )),
            Err(e) => {
                self.warn_once(format!(
                    "cannot subscribe to {channel} ({e}); changes are seen by polling every {:.1}s",
                    self.config.refresh.as_secs_f64()
                ));
                Ok(None)
            }
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let timeout = self.config.timeout;
        let con = self.client.get_connection_with_timeout(timeout)?;
        // A Redis stopped with SIGSTOP would otherwise hold this thread forever.
        con.set_read_timeout(Some(timeout))?;
        con.set_write_timeout(Some(timeout))?;
        Ok(con)
    }

    /// A hung Redis shows up as EAGAIN ("Resource temporarily unavailable"); say what it means.
    fn describe(&self, e: &redis::RedisError) -> String {
        if is_timeout(e) {
            format!(
                "timed out after {:.1}s ({e})",
                self.config.timeout.as_secs_f64()
            )
        } else {
            e.to_string()
        }
    }

    /// Waits until the next poll is due, or less when a message arrives on the channel.
    fn wait(&self, pubsub: Option<&mut redis::PubSub<'_>>) -> Result<(), String> {
        let Some(pubsub) = pubsub else {
            thread::sleep(self.config.refresh);
            return Ok(());
        };
        let lost = |e: redis::RedisError| format!("lost the subscription: {}", self.describe(&e));
        pubsub
            .set_read_timeout(Some(self.config.refresh))
            .map_err(lost)?;
        match pubsub.get_message() {
            Ok(_) => {
                pubsub
                    .set_read_timeout(Some(MESSAGE_COALESCE))
                    .map_err(lost)?;
                loop {
                    match pubsub.get_message() {
                        Ok(_) => continue,
                        Err(e) if e.is_timeout() => return Ok(()),
                        Err(e) => return Err(lost(e)),
                    }
                }
            }
            Err(e) if e.is_timeout() => Ok(()),
            Err(e) => Err(lost(e)),
        }
    }

    /// Reads the key and installs what changed. Connects first if `con` is `None`, and leaves it
    /// `None` after a large read: redis-rs keeps its largest reply's buffer for a connection's life,
    /// so it goes before the parse needs memory of its own.
    fn poll(&mut self, con: &mut Option<redis::Connection>) -> Result<Polled, String> {
        let command = match con.as_mut() {
            Some(command) => command,
            None => con.insert(self.connect().map_err(|e| self.connect_error(&e))?),
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
                // The connection is fine; keep it and the last good list.
                let error = format!("ignoring key {key}: {refused}");
                self.record_failure(&error, true);
                Ok(Polled::default())
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

/// A timeout, also where the connection handshake wraps the I/O error.
fn is_timeout(e: &redis::RedisError) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) {
                return true;
            }
        }
        if error
            .downcast_ref::<redis::RedisError>()
            .is_some_and(|e| e.is_timeout())
        {
            return true;
        }
        source = error.source();
    }
    false
}
