//! Reading the whitelist key from Redis: a string in the whitelist format, or a SET of entries.
//! A missing key is an empty list (the operator rolled back); any other type is an error.

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

#[derive(Debug)]
pub enum FetchError {
    /// The key holds a type we cannot read a list from; the connection itself is fine.
    WrongType(String),
    Redis(redis::RedisError),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::WrongType(kind) => {
                write!(f, "key holds a {kind}, expected a string or a set")
            }
            FetchError::Redis(e) => write!(f, "{e}"),
        }
    }
}

impl From<redis::RedisError> for FetchError {
    fn from(e: redis::RedisError) -> Self {
        FetchError::Redis(e)
    }
}

pub fn fetch(con: &mut redis::Connection, key: &str) -> Result<Fetched, FetchError> {
    let kind: String = redis::cmd("TYPE").arg(key).query(con)?;
    Ok(match kind.as_str() {
        "none" => Fetched::Missing,
        "string" => match redis::cmd("GET").arg(key).query::<Option<Vec<u8>>>(con)? {
            Some(value) => Fetched::String(value),
            None => Fetched::Missing,
        },
        "set" => Fetched::Set(redis::cmd("SMEMBERS").arg(key).query(con)?),
        other => return Err(FetchError::WrongType(other.to_string())),
    })
}

impl Fetched {
    pub fn kind(&self) -> KeyKind {
        match self {
            Fetched::Missing => KeyKind::Missing,
            Fetched::String(_) => KeyKind::String,
            Fetched::Set(_) => KeyKind::Set,
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
