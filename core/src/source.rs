//! Reading the whitelist key from Redis: a string in the whitelist format, or a SET of entries.
//! A missing key is an empty list (the operator rolled back); any other type is an error, and so
//! is a value over `max_bytes`: what is read from Redis, and so a worker's memory, is bounded.
//!
//! A SET is read with SSCAN, and each member's length is checked before its bytes are read, so an
//! oversized SET (or one huge member) is refused after reading at most `max_bytes` of members.
//! SSCAN is not a snapshot: members present for the whole scan are always returned, members
//! added or removed meanwhile may or may not be; the PUBLISH or poll after a change reads again.
//! The scan is pipelined: the next batch is asked for before this one is parsed, so Redis produces
//! it meanwhile (a 1M-member SET: ~0.9 s instead of ~1.2 s here), and members are never all held
//! at once. A string is parsed only when its version is new.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::connection::{self, Connection, Reply};
use crate::idset::IdSet;
use crate::snapshot::KeyKind;
use crate::whitelist::{Whitelist, WhitelistBuilder};

/// What a key's values are parsed into: a whitelist, a set of ids, or the text itself (a rule
/// set). A SET's members are added as they arrive, a string's value once.
pub trait ListBuilder: Default {
    type List;
    fn add(&mut self, value: &[u8]);
    fn finish(self) -> Self::List;
}

impl ListBuilder for WhitelistBuilder {
    type List = Whitelist;
    fn add(&mut self, value: &[u8]) {
        WhitelistBuilder::add(self, value);
    }
    fn finish(self) -> Whitelist {
        WhitelistBuilder::finish(self)
    }
}

impl ListBuilder for IdSet {
    type List = IdSet;
    fn add(&mut self, value: &[u8]) {
        IdSet::add(self, value);
    }
    fn finish(self) -> IdSet {
        self
    }
}

/// A string value as it is (a rule set's JSON); members of a SET are joined by newlines.
#[derive(Default)]
pub struct Text(pub Vec<u8>);

impl ListBuilder for Text {
    type List = Vec<u8>;
    fn add(&mut self, value: &[u8]) {
        if !self.0.is_empty() {
            self.0.push(b'\n');
        }
        self.0.extend_from_slice(value);
    }
    fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// The key as read: enough to tell whether it changed, and its entries.
#[derive(Debug)]
pub struct Fetched<B: ListBuilder = WhitelistBuilder> {
    pub kind: KeyKind,
    /// The size of the list text: the string's length, or the sum of the members' lengths.
    pub bytes: usize,
    /// A hash of the kind and the value: equal values give equal versions, so an unchanged list
    /// is not parsed again.
    pub version: u64,
    entries: Entries<B>,
}

#[derive(Debug)]
enum Entries<B> {
    /// A string (empty for a missing key), parsed only if its version is new.
    Text(Vec<u8>),
    /// A SET's members, parsed batch by batch as they arrived.
    Parsed(Box<B>),
}

impl<B: ListBuilder> Fetched<B> {
    fn text(kind: KeyKind, value: Vec<u8>) -> Self {
        let mut version = Version::new(kind);
        version.add(&value);
        Fetched {
            kind,
            bytes: value.len(),
            version: version.finish(),
            entries: Entries::Text(value),
        }
    }

    /// The whitelist, parsed (a string) and indexed.
    pub fn into_list(self) -> B::List {
        let builder = match self.entries {
            Entries::Text(value) => {
                let mut builder = B::default();
                builder.add(&value);
                // A large value is freed before the index is built: one less copy at the peak.
                drop(value);
                builder
            }
            Entries::Parsed(builder) => *builder,
        };
        builder.finish()
    }
}

/// The version of a value being read.
struct Version(DefaultHasher);

impl Version {
    fn new(kind: KeyKind) -> Self {
        let mut hasher = DefaultHasher::new();
        kind.as_str().hash(&mut hasher);
        Version(hasher)
    }

    fn add(&mut self, value: &[u8]) {
        value.hash(&mut self.0);
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// SSCAN batch size: big enough that a 1M-member SET is ~100 round trips.
const SCAN_COUNT: usize = 10_000;

#[derive(Debug)]
pub enum FetchError {
    /// The key holds a type we cannot read a list from; the connection itself is fine.
    WrongType(String),
    /// The value is larger than `max_bytes`; the connection may be out of step
    /// ([`Connection::in_step`]).
    TooLarge(TooLarge),
    Redis(connection::Error),
}

/// A value over the cap: `bytes` is its size, or for a SET the members' bytes up to and including
/// the member that crossed the cap (whose bytes are never read).
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
                "set members exceed max_bytes ({} bytes): refused at {} bytes, the rest left unread",
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
    max_bytes: usize,
) -> Result<Fetched<B>, FetchError> {
    let kind = match con.query(redis::cmd("TYPE").arg(key), 0)? {
        Reply::Status(kind) => kind,
        other => return Err(unexpected("a type", &other)),
    };
    match kind.as_str() {
        "none" => Ok(Fetched::text(KeyKind::Missing, Vec::new())),
        "string" => fetch_string(con, key, max_bytes),
        "set" => fetch_set(con, key, max_bytes),
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
    max_bytes: usize,
) -> Result<Fetched<B>, FetchError> {
    let len = match con.query(redis::cmd("STRLEN").arg(key), 0)? {
        Reply::Int(len) => usize::try_from(len).unwrap_or(0),
        other => return Err(unexpected("a length", &other)),
    };
    Budget::new(KeyKind::String, max_bytes).take(len)?;
    let value = match con.query(
        redis::cmd("GETRANGE").arg(key).arg(0).arg(max_bytes),
        max_bytes,
    ) {
        Ok(Reply::Bulk(value)) => value.unwrap_or_default(),
        Ok(other) => return Err(unexpected("a string", &other)),
        Err(connection::Error::TooLong(len)) => {
            return Err(Budget::new(KeyKind::String, max_bytes)
                .take(len)
                .unwrap_err()
                .into())
        }
        Err(e) => return Err(e.into()),
    };
    // It may have been cut at max_bytes + 1 bytes, if it grew since STRLEN.
    Budget::new(KeyKind::String, max_bytes).take(value.len())?;
    Ok(Fetched::text(KeyKind::String, value))
}

fn fetch_set<B: ListBuilder>(
    con: &mut Connection,
    key: &str,
    max_bytes: usize,
) -> Result<Fetched<B>, FetchError> {
    let sscan = |cursor: u64| {
        let mut cmd = redis::cmd("SSCAN");
        cmd.arg(key).arg(cursor).arg("COUNT").arg(SCAN_COUNT);
        cmd
    };
    let mut set = SetReader::new(max_bytes);
    con.send(&sscan(0))?;
    loop {
        let next = con.read_scan_cursor()?;
        if next != 0 {
            con.send(&sscan(next))?;
        }
        // Each member is counted before it is read: a refused SET leaves the rest unread, and
        // the connection out of step (its owner drops it).
        let SetReader { budget, members } = &mut set;
        con.read_scan_members(|len| budget.take(len), |member| members.add(member))??;
        if next == 0 {
            return Ok(set.finish());
        }
    }
}

/// A SET as its SSCAN members arrive: counted against `max_bytes`, hashed and parsed.
struct SetReader<B> {
    budget: Budget,
    members: Members<B>,
}

/// The members read so far: their version and their list.
struct Members<B> {
    version: Version,
    builder: B,
}

impl<B: ListBuilder> Members<B> {
    fn add(&mut self, member: &[u8]) {
        self.version.add(member);
        self.builder.add(member);
    }
}

impl<B: ListBuilder> SetReader<B> {
    fn new(max_bytes: usize) -> Self {
        SetReader {
            budget: Budget::new(KeyKind::Set, max_bytes),
            members: Members {
                version: Version::new(KeyKind::Set),
                builder: B::default(),
            },
        }
    }

    fn finish(self) -> Fetched<B> {
        Fetched {
            kind: KeyKind::Set,
            bytes: self.budget.used,
            version: self.members.version.finish(),
            entries: Entries::Parsed(Box::new(self.members.builder)),
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
            "set members exceed max_bytes (10 bytes): refused at 11 bytes, the rest left unread"
        );
        assert_eq!(
            Budget::new(KeyKind::String, 10)
                .take(52_428_800)
                .unwrap_err()
                .to_string(),
            "value is 52428800 bytes, over max_bytes (10 bytes)"
        );
    }

    fn set(batches: &[&[&str]]) -> Fetched {
        let mut set = SetReader::<WhitelistBuilder>::new(usize::MAX);
        for member in batches.iter().flat_map(|batch| batch.iter()) {
            set.budget.take(member.len()).unwrap();
            set.members.add(member.as_bytes());
        }
        set.finish()
    }

    fn string(value: &str) -> Fetched {
        Fetched::<WhitelistBuilder>::text(KeyKind::String, value.as_bytes().to_vec())
    }

    #[test]
    fn versions_tell_values_and_kinds_apart() {
        let a = string("1.1.1.1");
        assert_eq!(a.version, string("1.1.1.1").version);
        assert_ne!(a.version, string("1.1.1.2").version);
        assert_ne!(a.version, set(&[&["1.1.1.1"]]).version);
        assert_ne!(
            Fetched::<WhitelistBuilder>::text(KeyKind::Missing, Vec::new()).version,
            string("").version
        );
        assert_eq!(
            set(&[&["1.1.1.1", "::1"], &["2.2.2.0/24"]]).version,
            set(&[&["1.1.1.1"], &["::1", "2.2.2.0/24"]]).version
        );
    }

    #[test]
    fn set_batches_add_up_to_one_list() {
        let fetched = set(&[&["1.1.1.1", "bad"], &[], &["2001:db8::/32 10.0.0.0/8"]]);
        assert_eq!(fetched.bytes, 7 + 3 + 24);
        let list = fetched.into_list();
        assert_eq!((list.entries_v4, list.entries_v6), (2, 1));
        assert_eq!(list.rejected_count, 1);
        assert!(list.set.contains("10.1.2.3".parse().unwrap()));
    }
}
