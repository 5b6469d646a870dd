//! grayctl's Redis: reading a key as it is, and the one write path every change goes through.
//!
//! A change is optimistic: WATCH the key, read it, decide, then MULTI / the writes / the history
//! entry / PUBLISH / EXEC. Redis applies the transaction whole (no reader sees half a list), and
//! refuses it when anyone wrote the key after the WATCH: two operators at once never lose one's
//! change silently; the second is told to retry.

use gray_core::config::Config;
use gray_core::fleet::Report;
use gray_core::keys;
use gray_core::snapshot::Snapshot;
use gray_core::value::{Fetched, KeyKind, ListBuilder};
use gray_io::connection::{Connection, Reply};
use gray_io::endpoint::Endpoint;
use gray_io::host::hostname;
use gray_io::load::{self, LoadError};
use gray_io::read::{fetch, FetchError, Limit};

use crate::failure::{refused, Failure};
use crate::history::{self, Record};
use crate::value::KeyValue;
use crate::whitelist_edit::Change;

/// What grayctl reads at most from one key: far above what a gateway accepts (`max_bytes`), so
/// a value too large for the gateways can still be seen and fixed.
const READ_MAX: usize = 1 << 30;

/// Test hook (debug builds only): milliseconds to wait between reading a key and writing it, so
/// a test can make two writers overlap.
#[cfg(debug_assertions)]
const PAUSE_ENV: &str = "GRAYCTL_PAUSE_BEFORE_WRITE";

/// The values of a key as they are: the string once, or each SET member.
#[derive(Default)]
struct Raw(Vec<Vec<u8>>);

impl ListBuilder for Raw {
    type List = Vec<Vec<u8>>;
    fn add(&mut self, value: &[u8]) {
        self.0.push(value.to_vec());
    }
    fn finish(self) -> Vec<Vec<u8>> {
        self.0
    }
}

/// The gateways' reports by hash field, each parsed or why not.
pub type Reports = Vec<(String, Result<Report, String>)>;

/// Reads a key for its version only.
#[derive(Default)]
struct Discard;

impl ListBuilder for Discard {
    type List = ();
    fn add(&mut self, _: &[u8]) {}
    fn finish(self) {}
}

pub struct Store {
    con: Connection,
    pub config: Config,
}

/// What a change writes, and how it is recorded.
pub struct Write {
    pub key: String,
    pub change: Change,
    pub record: Record,
}

impl Store {
    /// Connects to the master: the `redis` URL's, or the one the sentinels name (grayctl writes).
    pub fn open(config: Config, endpoint: &Endpoint) -> Result<Store, Failure> {
        let (con, _) = endpoint.master().connect().map_err(|e| {
            let message = match &config.sentinels {
                Some(_) => e.message,
                None if e.refused => format!(
                    "redis at {} refused the connection: {}",
                    config.redis_display, e.message
                ),
                None => format!("cannot connect to {}: {}", config.redis_display, e.message),
            };
            if e.refused {
                refused(message)
            } else {
                Failure::Unreachable(message)
            }
        })?;
        Ok(Store { con, config })
    }

    /// `key` read as a gateway reads it (a string, or a SET by SSCAN), up to `READ_MAX`.
    fn fetch<B: ListBuilder>(&mut self, key: &str) -> Result<Fetched<B>, Failure> {
        fetch::<B>(&mut self.con, key, Limit::list(READ_MAX)).map_err(|e| match e {
            FetchError::Redis(e) => Failure::from(e),
            other => refused(format!("key {key}: {other}")),
        })
    }

    pub fn read(&mut self, key: &str) -> Result<KeyValue, Failure> {
        let fetched = self.fetch::<Raw>(key)?;
        let kind = fetched.kind;
        let mut values = fetched.into_list();
        Ok(match kind {
            KeyKind::Missing => KeyValue::Missing,
            KeyKind::String => KeyValue::String(values.pop().unwrap_or_default()),
            KeyKind::Set => KeyValue::Set(values),
        })
    }

    /// The kind and version of `key`'s value, as a gateway computes them, reading it whole.
    pub fn version(&mut self, key: &str) -> Result<(KeyKind, u64), Failure> {
        let fetched = self.fetch::<Discard>(key)?;
        Ok((fetched.kind, fetched.version))
    }

    /// The fields and values of the hash `key` (none when it is missing).
    fn hash(&mut self, key: &str) -> Result<Vec<(String, String)>, Failure> {
        let Reply::Array(Some(items)) = self.command(redis::cmd("HGETALL").arg(key))? else {
            return Err(refused(format!("unexpected reply to HGETALL {key}")));
        };
        let text = |r: &Reply| match r {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        Ok(items
            .chunks(2)
            .map(|pair| (text(&pair[0]), pair.get(1).map(text).unwrap_or_default()))
            .collect())
    }

    /// The gateways' reports, by hash field; `Err` for a field that does not parse.
    pub fn reports(&mut self) -> Result<Reports, Failure> {
        let key = self.config.gateways_key();
        Ok(self
            .hash(&key)?
            .into_iter()
            .map(|(field, json)| {
                let report = serde_json::from_str(&json).map_err(|e| e.to_string());
                (field, report)
            })
            .collect())
    }

    /// The guard hash of rule set key `rules_key`: the trips gateways recorded, and the resets.
    pub fn guard(&mut self, rules_key: &str) -> Result<Vec<(String, String)>, Failure> {
        self.hash(&keys::guard(rules_key))
    }

    /// Resets rule `rule`'s guard in rule set key `rules_key` at `at_ms` (Unix milliseconds):
    /// the reset field, the trip records `trips` removed and the change announced, in one
    /// transaction.
    pub fn reset_guard(
        &mut self,
        rules_key: &str,
        rule: &str,
        trips: &[String],
        at_ms: u64,
    ) -> Result<(), Failure> {
        let key = keys::guard(rules_key);
        self.command(&redis::cmd("MULTI"))?;
        self.command(
            redis::cmd("HSET")
                .arg(&key)
                .arg(gray_core::guard::reset_field(rule))
                .arg(at_ms),
        )?;
        if !trips.is_empty() {
            self.command(redis::cmd("HDEL").arg(&key).arg(trips))?;
        }
        if let Some(channel) = &self.config.channel {
            self.command(redis::cmd("PUBLISH").arg(channel).arg(&key))?;
        }
        match self.con.query(&redis::cmd("EXEC"), READ_MAX)? {
            Reply::Array(Some(_)) => Ok(()),
            other => Err(refused(format!("unexpected reply to EXEC: {other:?}"))),
        }
    }

    /// Removes reports from the gateways hash.
    pub fn forget(&mut self, fields: &[String]) -> Result<(), Failure> {
        if !fields.is_empty() {
            let key = self.config.gateways_key();
            self.command(redis::cmd("HDEL").arg(&key).arg(fields))?;
        }
        Ok(())
    }

    /// What a gateway would load for rule set `set`, decided offline.
    pub fn snapshot(&mut self, set: Option<&str>) -> Result<Snapshot, LoadError> {
        load::load(&mut self.con, &self.config, set)
    }

    fn command(&mut self, cmd: &redis::Cmd) -> Result<Reply, Failure> {
        Ok(self.con.query(cmd, READ_MAX)?)
    }

    /// Reads `key` under WATCH and applies what `decide` makes of its value, atomically. `None`
    /// from `decide` writes nothing. Returns the value that was there and whether it was written.
    pub fn update(
        &mut self,
        key: &str,
        decide: impl FnOnce(&KeyValue) -> Result<Option<Write>, Failure>,
    ) -> Result<(KeyValue, bool), Failure> {
        let history_key = self.config.history_key();
        // The history is written in the same transaction: a change anyone records meanwhile
        // conflicts too, and a history key of another type would fail the transaction halfway.
        self.command(redis::cmd("WATCH").arg(key).arg(&history_key))?;
        match self.command(redis::cmd("TYPE").arg(&history_key))? {
            Reply::Status(t) if t == "none" || t == "list" => {}
            other => {
                self.command(&redis::cmd("UNWATCH"))?;
                return Err(refused(format!(
                    "history key {history_key} is not a list ({other:?}); nothing written (rename or delete it)"
                )));
            }
        }
        let current = self.read(key)?;
        let write = match decide(&current) {
            Ok(Some(write)) => write,
            other => {
                self.command(&redis::cmd("UNWATCH"))?;
                return other.map(|_| (current, false));
            }
        };
        #[cfg(debug_assertions)]
        if let Some(ms) = std::env::var(PAUSE_ENV).ok().and_then(|v| v.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        self.command(&redis::cmd("MULTI"))?;
        let mut queued = Vec::new();
        match &write.change {
            Change::Replace(KeyValue::String(text)) => {
                queued.push(redis::cmd("SET").arg(&write.key).arg(text).clone())
            }
            Change::Replace(value) => {
                queued.push(redis::cmd("DEL").arg(&write.key).clone());
                if let KeyValue::Set(members) = value {
                    if !members.is_empty() {
                        queued.push(redis::cmd("SADD").arg(&write.key).arg(members).clone());
                    }
                }
            }
            Change::Members { add, remove } => {
                if !remove.is_empty() {
                    queued.push(redis::cmd("SREM").arg(&write.key).arg(remove).clone());
                }
                if !add.is_empty() {
                    queued.push(redis::cmd("SADD").arg(&write.key).arg(add).clone());
                }
            }
        }
        let entry = history::entry_json(&write.record, &current);
        queued.push(redis::cmd("LPUSH").arg(&history_key).arg(entry).clone());
        queued.push(
            redis::cmd("LTRIM")
                .arg(&history_key)
                .arg(0)
                .arg(history::MAX_ENTRIES - 1)
                .clone(),
        );
        if let Some(channel) = &self.config.channel {
            queued.push(redis::cmd("PUBLISH").arg(channel).arg(&write.key).clone());
        }
        for cmd in &queued {
            self.command(cmd)?;
        }
        let executed = self.con.query(&redis::cmd("EXEC"), READ_MAX).map_err(|e| {
            // Redis may have applied the transaction before the reply was lost or read.
            Failure::Unreachable(format!(
                "{e} while waiting for the write of {key}: it may or may not be written; `grayctl history` tells"
            ))
        })?;
        match executed {
            Reply::Array(Some(_)) => Ok((current, true)),
            Reply::Array(None) => Err(refused(format!(
                "key {key} changed under you (another writer); nothing written, run the command again"
            ))),
            other => Err(refused(format!("unexpected reply to EXEC: {other:?}"))),
        }
    }

    /// Watches the history: a change anyone records from now on aborts this connection's next
    /// transaction (`rollback` reads an entry and writes what it holds).
    pub fn watch_history(&mut self) -> Result<(), Failure> {
        let key = self.config.history_key();
        self.command(redis::cmd("WATCH").arg(&key))?;
        Ok(())
    }

    /// The history, newest first.
    pub fn history(&mut self) -> Result<Vec<Vec<u8>>, Failure> {
        let key = self.config.history_key();
        match self.command(redis::cmd("LRANGE").arg(&key).arg(0).arg(-1))? {
            Reply::Array(Some(items)) => Ok(items
                .into_iter()
                .filter_map(|item| match item {
                    Reply::Bulk(Some(bytes)) => Some(bytes),
                    _ => None,
                })
                .collect()),
            other => Err(refused(format!(
                "unexpected reply to LRANGE {key}: {other:?}"
            ))),
        }
    }
}

/// `$USER@host`, for the history.
pub fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", hostname())
}
