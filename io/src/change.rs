//! The one way gray's data is changed, by grayctl's commands and by a gateway driving a rollout:
//! optimistic. WATCH the keys the change depends on (and the history), read them, decide, then
//! MULTI / the writes / the history entry / PUBLISH / EXEC. Redis applies the transaction whole
//! (no reader sees half a list), and refuses it when anyone wrote a watched key after the WATCH:
//! two writers at once never lose one's change silently; the second is told, and retries or says
//! so. The key's record of changes ([`gray_core::delta`]) is written in the same transaction:
//! its next change number, and for a SET the delta.

use std::fmt;

use gray_core::delta::{self, Delta};
use gray_core::history::{self, Previous, Record};
use gray_core::keys;
use gray_core::stored::{Change, KeyValue};
use gray_core::value::{KeyKind, ListBuilder};

use crate::connection::{self, Connection, Reply};
use crate::read::{fetch, FetchError, Limit};

/// What a transaction writes beyond its plain SETs: a key's new value, recorded in the history.
pub struct Write {
    pub key: String,
    pub change: Change,
    pub record: Record,
}

#[derive(Debug)]
pub enum ChangeError {
    /// The connection failed, or Redis answered a command with an error.
    Redis(connection::Error),
    /// What Redis holds cannot be changed this way (a history key of another type, a value
    /// that cannot be read); nothing written.
    Refused(String),
    /// A watched key changed after it was read; nothing written.
    Conflict,
    /// The connection failed while Redis ran the transaction: it may or may not be applied.
    Unknown(connection::Error),
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::Redis(e) => write!(f, "{e}"),
            ChangeError::Refused(why) => f.write_str(why),
            ChangeError::Conflict => f.write_str("a watched key changed meanwhile"),
            ChangeError::Unknown(e) => write!(f, "{e} while waiting for the transaction"),
        }
    }
}

impl From<connection::Error> for ChangeError {
    fn from(e: connection::Error) -> Self {
        ChangeError::Redis(e)
    }
}

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

/// `key`'s value as it is (a string, or a SET by SSCAN), up to `max` bytes.
pub fn read(con: &mut Connection, key: &str, max: usize) -> Result<KeyValue, ChangeError> {
    let fetched = fetch::<Raw>(con, key, Limit::list(max)).map_err(|e| match e {
        FetchError::Redis(e) => ChangeError::Redis(e),
        other => ChangeError::Refused(format!("key {key}: {other}")),
    })?;
    let kind = fetched.kind;
    let mut values = fetched.into_list();
    Ok(match kind {
        KeyKind::Missing => KeyValue::Missing,
        KeyKind::String => KeyValue::String(values.pop().unwrap_or_default()),
        KeyKind::Set => KeyValue::Set(values),
    })
}

/// Keys watched on a connection, until [`Watched::commit`] or [`Watched::give_up`]; dropped
/// otherwise (an error on the way), it unwatches them, so that the connection's next
/// transaction is not refused for this one's keys.
pub struct Watched<'c> {
    con: &'c mut Connection,
    history_key: String,
    open: bool,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        if self.open {
            // A connection that failed fails this too, and is made again by its owner.
            let _ = self.con.query(&redis::cmd("UNWATCH"), 0);
        }
    }
}

/// Watches `keys` and the history `history_key`: a write by anyone to any of them from now on
/// makes the commit a [`ChangeError::Conflict`]. The history is watched because it is written in
/// the same transaction: a history key of another type would fail the transaction halfway, so
/// it is refused here.
pub fn watch<'c>(
    con: &'c mut Connection,
    history_key: &str,
    keys: &[&str],
) -> Result<Watched<'c>, ChangeError> {
    con.query(redis::cmd("WATCH").arg(keys).arg(history_key), 0)?;
    let watched = Watched {
        con,
        history_key: history_key.to_string(),
        open: true,
    };
    match watched.con.query(redis::cmd("TYPE").arg(history_key), 0)? {
        Reply::Status(t) if t == "none" || t == "list" => Ok(watched),
        other => {
            watched.give_up()?;
            Err(ChangeError::Refused(format!(
                "history key {history_key} is not a list ({other:?}); nothing written (rename or delete it)"
            )))
        }
    }
}

impl Watched<'_> {
    /// The commands that record `write` beside its key: the next change number, and for a SET
    /// changed by its members the delta (the members are known to be new and present, so the
    /// SET's size after is its size now, read under the watch, moved by them), and the delta
    /// that falls out of the kept ones.
    fn record_change(&mut self, write: &Write) -> Result<Vec<redis::Cmd>, ChangeError> {
        let changes = keys::changes(&write.key);
        let latest = match self.con.query(
            redis::cmd("HGET").arg(&changes).arg(delta::VERSION_FIELD),
            64,
        )? {
            Reply::Bulk(Some(text)) => std::str::from_utf8(&text)
                .ok()
                .and_then(|t| t.parse::<u64>().ok()),
            _ => None,
        };
        let next = latest.unwrap_or(0) + 1;
        let mut record = redis::cmd("HSET");
        record.arg(&changes).arg(delta::VERSION_FIELD).arg(next);
        if let Change::Members { add, remove } = &write.change {
            let size = match self.con.query(redis::cmd("SCARD").arg(&write.key), 0)? {
                Reply::Int(n) => u64::try_from(n).unwrap_or(0),
                other => {
                    return Err(ChangeError::Refused(format!(
                        "unexpected reply to SCARD {}: {other:?}",
                        write.key
                    )))
                }
            };
            let card = (size + add.len() as u64).saturating_sub(remove.len() as u64);
            if let Some(json) = Delta::record(add, remove, card) {
                record.arg(delta::field(next)).arg(json);
            }
        }
        let mut commands = vec![record];
        if next > delta::KEPT {
            commands.push(
                redis::cmd("HDEL")
                    .arg(&changes)
                    .arg(delta::field(next - delta::KEPT))
                    .clone(),
            );
        }
        Ok(commands)
    }

    /// `key`'s value now, up to `max` bytes.
    pub fn read(&mut self, key: &str, max: usize) -> Result<KeyValue, ChangeError> {
        read(self.con, key, max)
    }

    /// `key`'s kind and size ([`crate::read::probe`]).
    pub fn probe(&mut self, key: &str) -> Result<(KeyKind, u64), ChangeError> {
        crate::read::probe(self.con, key).map_err(|e| match e {
            FetchError::Redis(e) => ChangeError::Redis(e),
            other => ChangeError::Refused(format!("key {key}: {other}")),
        })
    }

    /// Which of `candidates` are members of SET `key` (SMISMEMBER), without reading the rest.
    pub fn members_among(
        &mut self,
        key: &str,
        candidates: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, ChangeError> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        match self
            .con
            .query(redis::cmd("SMISMEMBER").arg(key).arg(candidates), 0)?
        {
            Reply::Array(Some(flags)) if flags.len() == candidates.len() => Ok(candidates
                .iter()
                .zip(flags)
                .filter(|(_, flag)| *flag == Reply::Int(1))
                .map(|(candidate, _)| candidate.clone())
                .collect()),
            other => Err(ChangeError::Refused(format!(
                "unexpected reply to SMISMEMBER {key}: {other:?}"
            ))),
        }
    }

    /// Writes nothing.
    pub fn give_up(mut self) -> Result<(), ChangeError> {
        self.open = false;
        self.con.query(&redis::cmd("UNWATCH"), 0)?;
        Ok(())
    }

    /// Applies `write` (recorded in the history with `previous`, the value it replaces) and
    /// `sets` (plain SETs, unrecorded) in one transaction, and announces each key written on
    /// `channel`.
    pub fn commit(
        mut self,
        write: Option<(&Write, Previous)>,
        sets: &[(&str, &str)],
        channel: Option<&str>,
    ) -> Result<(), ChangeError> {
        let mut queued = Vec::new();
        let mut written = Vec::new();
        if let Some((write, previous)) = write {
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
            queued.extend(self.record_change(write)?);
            let entry = history::entry_json(&write.record, previous);
            queued.push(
                redis::cmd("LPUSH")
                    .arg(&self.history_key)
                    .arg(entry)
                    .clone(),
            );
            queued.push(
                redis::cmd("LTRIM")
                    .arg(&self.history_key)
                    .arg(0)
                    .arg(history::MAX_ENTRIES - 1)
                    .clone(),
            );
            written.push(write.key.as_str());
        }
        for (key, value) in sets {
            queued.push(redis::cmd("SET").arg(key).arg(value).clone());
            written.push(key);
        }
        if let Some(channel) = channel {
            for key in written {
                queued.push(redis::cmd("PUBLISH").arg(channel).arg(key).clone());
            }
        }
        // From MULTI on, the transaction ends the watch whatever happens: EXEC, or DISCARD when
        // Redis refused a command as it was queued (a replica's READONLY, OOM), so the
        // connection is not left inside it.
        self.open = false;
        let queued_all = self.con.query(&redis::cmd("MULTI"), 0).and_then(|_| {
            queued
                .iter()
                .try_for_each(|cmd| self.con.query(cmd, 0).map(|_| ()))
        });
        if let Err(e) = queued_all {
            let _ = self.con.query(&redis::cmd("DISCARD"), 0);
            let _ = self.con.query(&redis::cmd("UNWATCH"), 0);
            return Err(e.into());
        }
        // Redis may have applied the transaction before the reply was lost or read.
        match self
            .con
            .query(&redis::cmd("EXEC"), 0)
            .map_err(ChangeError::Unknown)?
        {
            Reply::Array(Some(_)) => Ok(()),
            Reply::Array(None) => Err(ChangeError::Conflict),
            other => Err(ChangeError::Refused(format!(
                "unexpected reply to EXEC: {other:?}"
            ))),
        }
    }
}
