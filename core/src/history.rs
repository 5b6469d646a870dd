//! The history of changes grayctl and the rollout drivers made: one JSON entry per change, newest first, in a capped
//! Redis list (`<key>:history`), written in the same transaction as the change. Each entry keeps
//! the value the key had before, so `rollback N` can put it back.

use serde::{Deserialize, Serialize};

use crate::stored::KeyValue;

/// The history keeps this many changes.
pub const MAX_ENTRIES: usize = 100;
/// A previous value larger than this is not kept (a 26 MB list 100 times over would be 2.6 GB of
/// Redis memory); its entry says so, and it cannot be rolled back to.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// What a key holds, so a rollback validates the value it restores the way the gateways would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    Whitelist,
    RuleSet,
}

impl Subject {
    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Whitelist => "whitelist",
            Subject::RuleSet => "rule set",
        }
    }
}

/// Who changed what, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unix seconds.
    pub time: u64,
    /// `$USER@host`.
    pub who: String,
    /// The command as typed, e.g. `add 10.0.0.1`.
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub key: String,
    pub subject: Subject,
}

/// A history entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub record: Record,
    /// The value before the change; `None` when it was over [`MAX_VALUE_BYTES`] or not read.
    pub previous: Option<KeyValue>,
    /// The size of the previous value's text (0 when it was not read).
    pub previous_bytes: usize,
    /// A SET too large to be kept, changed by its members without reading it: its number of
    /// members before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_members: Option<u64>,
}

/// What a change replaced, as its entry keeps it.
#[derive(Debug, Clone, Copy)]
pub enum Previous<'a> {
    /// The value, read.
    Read(&'a KeyValue),
    /// A SET of this many members (over what would be kept), changed without reading it.
    UnreadSet(u64),
}

pub fn entry_json(record: &Record, previous: Previous) -> String {
    let entry = match previous {
        Previous::Read(value) => {
            let bytes = value.bytes();
            Entry {
                record: record.clone(),
                previous: (bytes <= MAX_VALUE_BYTES).then(|| value.clone()),
                previous_bytes: bytes,
                previous_members: None,
            }
        }
        Previous::UnreadSet(members) => Entry {
            record: record.clone(),
            previous: None,
            previous_bytes: 0,
            previous_members: Some(members),
        },
    };
    serde_json::to_string(&entry).expect("an entry is plain data")
}

impl Entry {
    /// Why its previous value cannot be restored, when it cannot.
    pub fn not_kept(&self) -> Option<String> {
        if self.previous.is_some() {
            return None;
        }
        Some(match self.previous_members {
            Some(members) => {
                format!("a SET of {members} members, changed by its members without reading it")
            }
            None => format!("{} bytes, over {MAX_VALUE_BYTES}", self.previous_bytes),
        })
    }
}

/// Entry `n` (1 = the newest) of `entries` (newest first, as stored).
pub fn nth(entries: &[Vec<u8>], n: usize) -> Result<Entry, String> {
    let raw = n
        .checked_sub(1)
        .and_then(|i| entries.get(i))
        .ok_or_else(|| {
            format!(
                "no history entry {n}: the history holds {} (1 is the latest change)",
                entries.len()
            )
        })?;
    parse(raw).map_err(|e| format!("history entry {n} is not readable: {e}"))
}

pub fn parse(raw: &[u8]) -> Result<Entry, serde_json::Error> {
    serde_json::from_slice(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time: 1_764_680_000,
            who: "ops@gw1".into(),
            command: "add 10.0.0.1".into(),
            message: Some("ticket 42".into()),
            key: "gray".into(),
            subject: Subject::Whitelist,
        }
    }

    #[test]
    fn an_entry_keeps_the_previous_value_unless_it_is_too_large() {
        let previous = KeyValue::String(b"1.1.1.1".to_vec());
        let entry = parse(entry_json(&record(), Previous::Read(&previous)).as_bytes()).unwrap();
        assert_eq!(entry.record, record());
        assert_eq!(entry.previous, Some(previous));
        let big = KeyValue::String(vec![b'1'; MAX_VALUE_BYTES + 1]);
        let entry = parse(entry_json(&record(), Previous::Read(&big)).as_bytes()).unwrap();
        assert_eq!(
            (entry.previous, entry.previous_bytes),
            (None, MAX_VALUE_BYTES + 1)
        );
    }

    #[test]
    fn entries_are_numbered_from_the_latest() {
        let entries: Vec<Vec<u8>> = ["a", "b"]
            .iter()
            .map(|cmd| {
                let mut r = record();
                r.command = cmd.to_string();
                entry_json(&r, Previous::Read(&KeyValue::Missing)).into_bytes()
            })
            .collect();
        assert_eq!(nth(&entries, 1).unwrap().record.command, "a");
        assert_eq!(nth(&entries, 2).unwrap().record.command, "b");
        let err = nth(&entries, 3).unwrap_err();
        assert_eq!(
            err,
            "no history entry 3: the history holds 2 (1 is the latest change)"
        );
        assert!(nth(&entries, 0).is_err());
    }
}
