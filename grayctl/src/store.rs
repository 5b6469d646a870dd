//! grayctl's Redis: reading a key as it is, and the one write path every change goes through.
//!
//! A change is optimistic: WATCH the key, read it, decide, then MULTI / the writes / the history
//! entry / PUBLISH / EXEC. Redis applies the transaction whole (no reader sees half a list), and
//! refuses it when anyone wrote the key after the WATCH: two operators at once never lose one's
//! change silently; the second is told to retry.

use std::time::{Duration, SystemTime};

use gray_core::config::Config;
use gray_core::connection::{Connection, Reply};
use gray_core::load::{self, LoadError};
use gray_core::snapshot::{KeyKind, Snapshot};
use gray_core::source::{fetch, FetchError, ListBuilder};

use crate::failure::{refused, Failure};
use crate::history::{self, Record};
use crate::value::KeyValue;
use crate::whitelist_edit::Change;

/// What grayctl reads at most from one key: far above what a gateway accepts (`max_bytes`), so
/// a value too large for the gateways can still be seen and fixed.
const READ_MAX: usize = 1 << 30;

/// Test hook: milliseconds to wait between reading a key and writing it, so a test can make
/// two writers overlap.
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
    pub fn open(config: Config) -> Result<Store, Failure> {
        let con = Connection::open(&config.redis, config.timeout).map_err(|e| {
            Failure::Unreachable(format!("cannot connect to {}: {e}", config.redis_display))
        })?;
        Ok(Store { con, config })
    }

    pub fn read(&mut self, key: &str) -> Result<KeyValue, Failure> {
        let fetched = fetch::<Raw>(&mut self.con, key, READ_MAX).map_err(|e| match e {
            FetchError::Redis(e) => Failure::from(e),
            other => refused(format!("key {key}: {other}")),
        })?;
        let kind = fetched.kind;
        let mut values = fetched.into_list();
        Ok(match kind {
            KeyKind::Missing => KeyValue::Missing,
            KeyKind::String => KeyValue::String(values.pop().unwrap_or_default()),
            KeyKind::Set => KeyValue::Set(values),
        })
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
        self.command(redis::cmd("WATCH").arg(key))?;
        let current = self.read(key)?;
        let write = match decide(&current) {
            Ok(Some(write)) => write,
            other => {
                self.command(&redis::cmd("UNWATCH"))?;
                return other.map(|_| (current, false));
            }
        };
        if let Some(ms) = std::env::var(PAUSE_ENV).ok().and_then(|v| v.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
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
        let history_key = self.config.history_key();
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
        match self.command(&redis::cmd("EXEC"))? {
            Reply::Array(Some(_)) => Ok((current, true)),
            Reply::Array(None) => Err(refused(format!(
                "key {key} changed under you (another writer); nothing written, run the command again"
            ))),
            other => Err(refused(format!("unexpected reply to EXEC: {other:?}"))),
        }
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
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}

pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
