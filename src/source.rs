//! Reading the whitelist key from Redis: a string in the whitelist format, or a SET of entries.
//! A missing key is an empty list (the operator rolled back); any other type is an error, and so
//! is a value over `max_bytes`: what is read from Redis, and so a worker's memory, is bounded.
//!
//! A SET is read with SSCAN, so an oversized one is refused after reading at most `max_bytes`.
//! SSCAN is not a snapshot: members present for the whole scan are always returned, members
//! added or removed meanwhile may or may not be; the PUBLISH or poll after a change reads again.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::snapshot::KeyKind;

/// The raw value of the key.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    Missing,
    String(Vec<u8>),
    Set(Vec<Vec<u8>>),
}

/// SSCAN batch size: big enough that a 1M-member SET is ~100 round trips.
const SCAN_COUNT: usize = 10_000;

#[derive(Debug)]
pub enum FetchError {
    /// The key holds a type we cannot read a list from; the connection itself is fine.
    WrongType(String),
    /// The value is larger than `max_bytes`; the connection itself is fine.
    TooLarge(TooLarge),
    Redis(redis::RedisError),
}

/// A value over the cap: `bytes` is its size, or for a SET how much was read before giving up.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub kind: KeyKind,
    pub bytes: usize,
    pub limit: usize,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            KeyKind::Set => write!(
                f,
                "set members exceed max_bytes ({} bytes): stopped reading after {} bytes",
                self.limit, self.bytes
            ),
            _ => write!(
                f,
                "value is {} bytes, over max_bytes ({} bytes)",
                self.bytes, self.limit
            ),
        }
    }
}

/// Counts the bytes read against `max_bytes`.
struct Budget {
    kind: KeyKind,
    used: usize,
    limit: usize,
}

impl Budget {
    fn new(kind: KeyKind, limit: usize) -> Self {
        Budget {
            kind,
            used: 0,
            limit,
        }
    }

    fn take(&mut self, bytes: usize) -> Result<(), TooLarge> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.limit {
            return Err(TooLarge {
                kind: self.kind,
                bytes: self.used,
                limit: self.limit,
            });
        }
        Ok(())
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::WrongType(kind) => {
                write!(f, "key holds a {kind}, expected a string or a set")
            }
            FetchError::TooLarge(too_large) => write!(f, "{too_large}"),
            FetchError::Redis(e) => write!(f, "{e}"),
        }
    }
}

impl From<redis::RedisError> for FetchError {
    fn from(e: redis::RedisError) -> Self {
        FetchError::Redis(e)
    }
}

impl From<TooLarge> for FetchError {
    fn from(e: TooLarge) -> Self {
        FetchError::TooLarge(e)
    }
}

pub fn fetch(
    con: &mut redis::Connection,
    key: &str,
    max_bytes: usize,
) -> Result<Fetched, FetchError> {
    let kind: String = redis::cmd("TYPE").arg(key).query(con)?;
    match kind.as_str() {
        "none" => Ok(Fetched::Missing),
        "string" => fetch_string(con, key, max_bytes),
        "set" => fetch_set(con, key, max_bytes),
        other => Err(FetchError::WrongType(other.to_string())),
    }
}

/// STRLEN refuses an oversized value without reading it; GETRANGE bounds the read even if the
/// value grew in between.
fn fetch_string(
    con: &mut redis::Connection,
    key: &str,
    max_bytes: usize,
) -> Result<Fetched, FetchError> {
    let len: usize = redis::cmd("STRLEN").arg(key).query(con)?;
    Budget::new(KeyKind::String, max_bytes).take(len)?;
    let value: Vec<u8> = redis::cmd("GETRANGE")
        .arg(key)
        .arg(0)
        .arg(max_bytes)
        .query(con)?;
    // It may have grown since STRLEN.
    Budget::new(KeyKind::String, max_bytes).take(value.len())?;
    Ok(Fetched::String(value))
}

fn fetch_set(
    con: &mut redis::Connection,
    key: &str,
    max_bytes: usize,
) -> Result<Fetched, FetchError> {
    let mut budget = Budget::new(KeyKind::Set, max_bytes);
    let mut members = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SSCAN")
            .arg(key)
            .arg(cursor)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query(con)?;
        for member in batch {
            budget.take(member.len())?;
            members.push(member);
        }
        if next == 0 {
            return Ok(Fetched::Set(members));
        }
        cursor = next;
    }
}

impl Fetched {
    pub fn kind(&self) -> KeyKind {
        match self {
            Fetched::Missing => KeyKind::Missing,
            Fetched::String(_) => KeyKind::String,
            Fetched::Set(_) => KeyKind::Set,
        }
    }

    /// The size of the list text: the string's length, or the sum of the members' lengths.
    pub fn bytes(&self) -> usize {
        match self {
            Fetched::Missing => 0,
            Fetched::String(value) => value.len(),
            Fetched::Set(members) => members.iter().map(Vec::len).sum(),
        }
    }

    /// The values to parse: the string, or each member.
    pub fn values(&self) -> Vec<&[u8]> {
        match self {
            Fetched::Missing => Vec::new(),
            Fetched::String(value) => vec![value.as_slice()],
            Fetched::Set(members) => members.iter().map(Vec::as_slice).collect(),
        }
    }

    /// Equal values give equal versions, so an unchanged list is not parsed again.
    pub fn version(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }
}

impl Hash for Fetched {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind().as_str().hash(state);
        for value in self.values() {
            value.hash(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_exactly_the_limit() {
        let mut budget = Budget::new(KeyKind::Set, 10);
        assert!(budget.take(4).is_ok());
        assert!(budget.take(6).is_ok());
        let err = budget.take(1).unwrap_err();
        assert_eq!(
            err,
            TooLarge {
                kind: KeyKind::Set,
                bytes: 11,
                limit: 10
            }
        );
        assert_eq!(
            err.to_string(),
            "set members exceed max_bytes (10 bytes): stopped reading after 11 bytes"
        );
        assert_eq!(
            Budget::new(KeyKind::String, 10)
                .take(52_428_800)
                .unwrap_err()
                .to_string(),
            "value is 52428800 bytes, over max_bytes (10 bytes)"
        );
    }

    #[test]
    fn versions_tell_values_and_kinds_apart() {
        let a = Fetched::String(b"1.1.1.1".to_vec());
        assert_eq!(a.version(), Fetched::String(b"1.1.1.1".to_vec()).version());
        assert_ne!(a.version(), Fetched::String(b"1.1.1.2".to_vec()).version());
        assert_ne!(
            a.version(),
            Fetched::Set(vec![b"1.1.1.1".to_vec()]).version()
        );
        assert_ne!(
            Fetched::Missing.version(),
            Fetched::String(Vec::new()).version()
        );
    }
}
