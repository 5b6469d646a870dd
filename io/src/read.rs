//! Reading a key from Redis: a string in the whitelist format, or a SET of entries. A missing key
//! is an empty list (the operator rolled back); any other type is an error, and so is a value over
//! its [`Limit`] (`max_bytes` for a list, far less for a rule set): what is read from Redis, and
//! so a worker's memory, is bounded.
//!
//! A SET is read with SSCAN, and each member's length is checked before its bytes are read, so an
//! oversized SET (or one huge member) is refused after reading at most `max_bytes` of members.
//! SSCAN is not a snapshot: members present for the whole scan are always returned, members
//! added or removed meanwhile may or may not be; the PUBLISH or poll after a change reads again.
//! The scan is pipelined: the next batch is asked for before this one is parsed, so Redis produces
//! it meanwhile (a 1M-member SET: ~0.9 s instead of ~1.2 s here), and members are never all held
//! at once. What the bytes become, and the version that tells a changed value, is gray-core's
//! ([`gray_core::value`]).

use std::fmt;

use gray_core::value::{Fetched, KeyKind, ListBuilder, Members};

use crate::connection::{self, Connection, Reply};

/// SSCAN batch size: big enough that a 1M-member SET is ~100 round trips.
const SCAN_COUNT: usize = 10_000;
/// SSCAN rounds allowed beyond those a SET's size needs: Redis visits at most ten buckets per
/// member asked for, so even a sparse table (a SET that shrank) ends well within this.
const SPARE_ROUNDS: usize = 1024;

#[derive(Debug)]
pub enum FetchError {
    /// The key holds a type we cannot read a list from; the connection itself is fine.
    WrongType(String),
    /// The value is larger than `max_bytes`; the connection may be out of step
    /// ([`Connection::in_step`]).
    TooLarge(TooLarge),
    Redis(connection::Error),
}

/// The most a key's value may hold, and the name an error gives that limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub bytes: usize,
    pub name: &'static str,
}

impl Limit {
    /// A list's (the whitelist, an `ip_key` or `in_key`): the `max_bytes` option.
    pub fn list(max_bytes: usize) -> Limit {
        Limit {
            bytes: max_bytes,
            name: "max_bytes",
        }
    }

    /// A rule set's: its own limit, far below a list's (or `max_bytes`, where that is lower).
    pub fn rule_set(max_bytes: usize) -> Limit {
        if max_bytes < gray_core::rules::MAX_BYTES {
            return Limit::list(max_bytes);
        }
        Limit {
            bytes: gray_core::rules::MAX_BYTES,
            name: "the rule set limit",
        }
    }
}

/// A value over the limit: `bytes` is its size, or for a SET the members' bytes up to and
/// including the member that crossed it (whose bytes are never read).
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub kind: KeyKind,
    pub bytes: usize,
    pub limit: Limit,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Limit { bytes: limit, name } = self.limit;
        match self.kind {
            KeyKind::Set => write!(
                f,
                "set members exceed {name} ({limit} bytes): refused at {} bytes, the rest left unread",
                self.bytes
            ),
            _ => write!(
                f,
                "value is {} bytes, over {name} ({limit} bytes)",
                self.bytes
            ),
        }
    }
}

/// Counts the bytes read against the limit.
struct Budget {
    kind: KeyKind,
    used: usize,
    limit: Limit,
}

impl Budget {
    fn new(kind: KeyKind, limit: Limit) -> Self {
        Budget {
            kind,
            used: 0,
            limit,
        }
    }

    fn take(&mut self, bytes: usize) -> Result<(), TooLarge> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.limit.bytes {
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

impl From<connection::Error> for FetchError {
    fn from(e: connection::Error) -> Self {
        FetchError::Redis(e)
    }
}

impl From<TooLarge> for FetchError {
    fn from(e: TooLarge) -> Self {
        FetchError::TooLarge(e)
    }
}

fn unexpected(what: &str, reply: &Reply) -> FetchError {
    FetchError::Redis(connection::Error::Protocol(format!(
        "expected {what}, got {reply:?}"
    )))
}

pub fn fetch<B: ListBuilder>(
    con: &mut Connection,
    key: &str,
    limit: Limit,
) -> Result<Fetched<B>, FetchError> {
    let kind = match con.query(redis::cmd("TYPE").arg(key), 0)? {
        Reply::Status(kind) => kind,
        other => return Err(unexpected("a type", &other)),
    };
    match kind.as_str() {
        "none" => Ok(Fetched::text(KeyKind::Missing, Vec::new())),
        "string" => fetch_string(con, key, limit),
        "set" => fetch_set(con, key, limit),
        other => Err(FetchError::WrongType(other.to_string())),
    }
}

/// A key's kind and size without its value: a string's length, a SET's number of members (0
/// for a missing key). Two values of one kind and size may differ: this tells a changed value
/// from an unchanged one only when the size moved.
pub fn probe(con: &mut Connection, key: &str) -> Result<(KeyKind, u64), FetchError> {
    let kind = match con.query(redis::cmd("TYPE").arg(key), 0)? {
        Reply::Status(kind) => kind,
        other => return Err(unexpected("a type", &other)),
    };
    let (kind, size) = match kind.as_str() {
        "none" => return Ok((KeyKind::Missing, 0)),
        "string" => (KeyKind::String, "STRLEN"),
        "set" => (KeyKind::Set, "SCARD"),
        other => return Err(FetchError::WrongType(other.to_string())),
    };
    match con.query(redis::cmd(size).arg(key), 0)? {
        Reply::Int(n) => Ok((kind, u64::try_from(n).unwrap_or(0))),
        other => Err(unexpected("a size", &other)),
    }
}

/// STRLEN refuses an oversized value without reading it; GETRANGE bounds the read even if the
/// value grew in between, and the reply is refused by its length before it is read.
fn fetch_string<B: ListBuilder>(
    con: &mut Connection,
    key: &str,
    limit: Limit,
) -> Result<Fetched<B>, FetchError> {
    let max_bytes = limit.bytes;
    let len = match con.query(redis::cmd("STRLEN").arg(key), 0)? {
        Reply::Int(len) => usize::try_from(len).unwrap_or(0),
        other => return Err(unexpected("a length", &other)),
    };
    Budget::new(KeyKind::String, limit).take(len)?;
    let value = match con.query(
        redis::cmd("GETRANGE").arg(key).arg(0).arg(max_bytes),
        max_bytes,
    ) {
        Ok(Reply::Bulk(value)) => value.unwrap_or_default(),
        Ok(other) => return Err(unexpected("a string", &other)),
        Err(connection::Error::TooLong(len)) => {
            return Err(Budget::new(KeyKind::String, limit)
                .take(len)
                .unwrap_err()
                .into())
        }
        Err(e) => return Err(e.into()),
    };
    // It may have been cut at max_bytes + 1 bytes, if it grew since STRLEN.
    Budget::new(KeyKind::String, limit).take(value.len())?;
    Ok(Fetched::text(KeyKind::String, value))
}

/// How far a scan of a SET of `size` members (SCARD; `None` where it was refused) may go before
/// it is a server that is not Redis: (rounds, members). Members present during the whole scan
/// come once, those added or rehashed meanwhile may come twice.
fn scan_bounds(size: Option<usize>, max_bytes: usize) -> (usize, usize) {
    match size {
        Some(size) => (
            SPARE_ROUNDS + size.saturating_mul(16) / SCAN_COUNT,
            size.saturating_mul(2).saturating_add(2 * SCAN_COUNT),
        ),
        // Each member but the one empty string takes a byte of the budget.
        None => (
            SPARE_ROUNDS + max_bytes / SCAN_COUNT,
            max_bytes.saturating_add(2 * SCAN_COUNT),
        ),
    }
}

fn fetch_set<B: ListBuilder>(
    con: &mut Connection,
    key: &str,
    limit: Limit,
) -> Result<Fetched<B>, FetchError> {
    let size = match con.query(redis::cmd("SCARD").arg(key), 0) {
        Ok(Reply::Int(n)) => Some(usize::try_from(n).unwrap_or(0)),
        Ok(other) => return Err(unexpected("a size", &other)),
        // An ACL without SCARD: bounded by max_bytes instead.
        Err(connection::Error::Server(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let (max_rounds, max_members) = scan_bounds(size, limit.bytes);
    let sscan = |cursor: u64| {
        let mut cmd = redis::cmd("SSCAN");
        cmd.arg(key).arg(cursor).arg("COUNT").arg(SCAN_COUNT);
        cmd
    };
    let mut budget = Budget::new(KeyKind::Set, limit);
    let mut members = Members::<B>::default();
    let mut read = 0usize;
    con.send(&sscan(0))?;
    for _ in 0..max_rounds {
        let next = con.read_scan_cursor()?;
        if next != 0 {
            con.send(&sscan(next))?;
        }
        // Each member is counted before it is read: a refused SET leaves the rest unread, and
        // the connection out of step (its owner drops it).
        con.read_scan_members(
            |len| budget.take(len),
            |member| {
                read += 1;
                members.add(member)
            },
        )??;
        if next == 0 {
            return Ok(members.finish());
        }
        if read > max_members {
            break;
        }
    }
    con.abandon();
    Err(FetchError::Redis(connection::Error::Protocol(format!(
        "a SSCAN of key {key} that ends, not one past {max_rounds} rounds and {read} members ({})",
        size.map_or("SCARD refused".to_string(), |n| format!("SCARD said {n}"))
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gray_core::whitelist::WhitelistBuilder;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    #[test]
    fn a_scan_whose_cursor_never_returns_to_zero_is_cut_by_the_size_scard_gave() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut requests = theirs.try_clone().unwrap();
        std::thread::spawn(move || std::io::copy(&mut requests, &mut std::io::sink()));
        // TYPE, SCARD, then every SSCAN answered with cursor 7 and no member, for ever: no
        // budget is spent, only rounds.
        std::thread::spawn(move || {
            if theirs.write_all(b"+set\r\n:5\r\n").is_ok() {
                while theirs.write_all(b"*2\r\n$1\r\n7\r\n*0\r\n").is_ok() {}
            }
        });
        let mut con = Connection::over_unix(ours, 64 * 1024, Duration::from_secs(1));
        let started = Instant::now();
        match fetch::<WhitelistBuilder>(&mut con, "gray", Limit::list(1 << 20)) {
            Err(FetchError::Redis(connection::Error::Protocol(why))) => {
                assert!(why.contains("that ends"), "{why}");
                assert!(why.contains("SCARD said 5"), "{why}");
            }
            other => panic!("{:?}", other.map(|f| f.bytes)),
        }
        assert!(!con.in_step());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            scan_bounds(Some(1_000_000), 1),
            (SPARE_ROUNDS + 1600, 2_020_000)
        );
    }

    #[test]
    fn the_budget_allows_exactly_the_limit() {
        let mut budget = Budget::new(KeyKind::Set, Limit::list(10));
        assert!(budget.take(4).is_ok());
        assert!(budget.take(6).is_ok());
        let err = budget.take(1).unwrap_err();
        assert_eq!(
            err,
            TooLarge {
                kind: KeyKind::Set,
                bytes: 11,
                limit: Limit::list(10)
            }
        );
        assert_eq!(
            err.to_string(),
            "set members exceed max_bytes (10 bytes): refused at 11 bytes, the rest left unread"
        );
        assert_eq!(
            Budget::new(KeyKind::String, Limit::list(10))
                .take(52_428_800)
                .unwrap_err()
                .to_string(),
            "value is 52428800 bytes, over max_bytes (10 bytes)"
        );
    }
}
