//! grayctl's Redis: reading a key as it is, and the one write path every change goes through.
//!
//! A change is optimistic: WATCH the key, read it, decide, then MULTI / the writes / the history
//! entry / PUBLISH / EXEC. Redis applies the transaction whole (no reader sees half a list), and
//! refuses it when anyone wrote the key after the WATCH: two operators at once never lose one's
//! change silently; the second is told to retry.

use gray_core::config::Config;
use gray_core::fleet::Report;
use gray_core::history::{self, Previous};
use gray_core::keys;
use gray_core::snapshot::Snapshot;
use gray_core::stored::KeyValue;
use gray_core::value::{Fetched, KeyKind, ListBuilder};
pub use gray_io::change::Write;
use gray_io::change::{self, ChangeError};
use gray_io::connection::{Connection, Reply};
use gray_io::endpoint::Endpoint;
use gray_io::host::hostname;
use gray_io::load::{self, LoadError};
use gray_io::read::{fetch, FetchError, Limit};
use gray_io::rollout::{self, Moving};

use crate::failure::{refused, Failure};

/// What grayctl reads at most from one key: far above what a gateway accepts (`max_bytes`), so
/// a value too large for the gateways can still be seen and fixed.
const READ_MAX: usize = 1 << 30;

/// Test hook (debug builds only): milliseconds to wait between reading a key and writing it, so
/// a test can make two writers overlap.
#[cfg(debug_assertions)]
const PAUSE_ENV: &str = "GRAYCTL_PAUSE_BEFORE_WRITE";

/// A SET with more members than this is changed by its members without being read: each of them
/// at least as long as the shortest IPv4 address (`1.1.1.1`), its value is over what the
/// history keeps, so nothing is lost by not reading it.
const LARGE_SET_MEMBERS: u64 = (history::MAX_VALUE_BYTES / 7) as u64;

/// What a change saw of the key before it.
pub enum Seen {
    /// Its value.
    Whole(KeyValue),
    /// A large SET: its number of members, and those of the candidates it holds.
    LargeSet { members: u64, found: KeyValue },
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
        change::read(&mut self.con, key, READ_MAX).map_err(|e| fail(key, e))
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
        match self.update_among(key, None, decide)? {
            (Seen::Whole(value), written) => Ok((value, written)),
            (Seen::LargeSet { found, .. }, written) => Ok((found, written)),
        }
    }

    /// [`Store::update`] for a change that depends only on which of `candidates` the key holds:
    /// a large SET is not read, `decide` sees those of them it holds.
    pub fn update_among(
        &mut self,
        key: &str,
        candidates: Option<&[Vec<u8>]>,
        decide: impl FnOnce(&KeyValue) -> Result<Option<Write>, Failure>,
    ) -> Result<(Seen, bool), Failure> {
        let history_key = self.config.history_key();
        // A rule set's plan is watched too: a plan started after the edit was allowed makes
        // the edit conflict.
        let plan_key = keys::rollout(key);
        let mut watched = change::watch(&mut self.con, &history_key, &[key, &plan_key])
            .map_err(|e| fail(key, e))?;
        let large = match candidates {
            Some(candidates) => match watched.probe(key).map_err(|e| fail(key, e))? {
                (KeyKind::Set, members) if members > LARGE_SET_MEMBERS => Some((
                    members,
                    watched
                        .members_among(key, candidates)
                        .map_err(|e| fail(key, e))?,
                )),
                _ => None,
            },
            None => None,
        };
        let seen = match large {
            Some((members, found)) => Seen::LargeSet {
                members,
                found: KeyValue::Set(found),
            },
            None => Seen::Whole(watched.read(key, READ_MAX).map_err(|e| fail(key, e))?),
        };
        let (current, previous) = match &seen {
            Seen::Whole(value) => (value, Previous::Read(value)),
            Seen::LargeSet { members, found } => (found, Previous::UnreadSet(*members)),
        };
        let write = match decide(current) {
            Ok(Some(write)) => write,
            other => {
                watched.give_up().map_err(|e| fail(key, e))?;
                return other.map(|_| (seen, false));
            }
        };
        #[cfg(debug_assertions)]
        if let Some(ms) = std::env::var(PAUSE_ENV).ok().and_then(|v| v.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        watched
            .commit(
                Some((&write, previous)),
                &[],
                self.config.channel.as_deref(),
            )
            .map_err(|e| fail(key, e))?;
        Ok((seen, true))
    }

    /// A SET's number of members.
    pub fn members(&mut self, key: &str) -> Result<u64, Failure> {
        match self.command(redis::cmd("SCARD").arg(key))? {
            Reply::Int(n) => Ok(u64::try_from(n).unwrap_or(0)),
            other => Err(refused(format!(
                "unexpected reply to SCARD {key}: {other:?}"
            ))),
        }
    }

    /// Rule set `key` and its rollout plan, read under WATCH.
    pub fn begin_plan(&mut self, history_key: &str, key: &str) -> Result<Moving<'_>, Failure> {
        rollout::begin(&mut self.con, history_key, key).map_err(|e| fail(key, e))
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

/// A change's failure as grayctl reports it, for key `key`.
pub fn fail(key: &str, e: ChangeError) -> Failure {
    match e {
        ChangeError::Redis(e) => Failure::from(e),
        ChangeError::Refused(why) => refused(why),
        ChangeError::Conflict => refused(format!(
            "key {key} changed under you (another writer); nothing written, run the command again"
        )),
        // Redis may have applied the transaction before the reply was lost or read.
        ChangeError::Unknown(e) => Failure::Unreachable(format!(
            "{e} while waiting for the write of {key}: it may or may not be written; `grayctl history` tells"
        )),
    }
}

/// `$USER@host`, for the history.
pub fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", hostname())
}
