//! A key's value as grayctl and a driving gateway read and write it: missing, a string, or a
//! SET's members, each kept byte for byte so that what is written back (or recorded in the
//! history) is what was there; and a [`Change`] to one.

use crate::value::KeyKind;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum KeyValue {
    Missing,
    String(#[serde(with = "text")] Vec<u8>),
    Set(#[serde(with = "members")] Vec<Vec<u8>>),
}

impl KeyValue {
    /// The values the whitelist parser sees: the string, or each member.
    pub fn values(&self) -> Vec<&[u8]> {
        match self {
            KeyValue::Missing => Vec::new(),
            KeyValue::String(value) => vec![value],
            KeyValue::Set(members) => members.iter().map(Vec::as_slice).collect(),
        }
    }

    pub fn key_kind(&self) -> KeyKind {
        match self {
            KeyValue::Missing => KeyKind::Missing,
            KeyValue::String(_) => KeyKind::String,
            KeyValue::Set(_) => KeyKind::Set,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.key_kind().as_str()
    }

    /// Equal as Redis values: a SET's members in any order.
    pub fn same_as(&self, other: &KeyValue) -> bool {
        match (self, other) {
            (KeyValue::Set(a), KeyValue::Set(b)) => {
                let mut a: Vec<&Vec<u8>> = a.iter().collect();
                let mut b: Vec<&Vec<u8>> = b.iter().collect();
                a.sort();
                a.dedup();
                b.sort();
                b.dedup();
                a == b
            }
            _ => self == other,
        }
    }

    /// The size of the text: the string's length or the sum of the members'.
    pub fn bytes(&self) -> usize {
        self.values().iter().map(|v| v.len()).sum()
    }
}

/// What a write changes in a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Write the whole value.
    Replace(KeyValue),
    /// Change a SET's members.
    Members {
        add: Vec<Vec<u8>>,
        remove: Vec<Vec<u8>>,
    },
}

/// Values are text in JSON (the history's format); bytes that are not UTF-8 are written lossily,
/// and such a value is not one grayctl would write back (the parser refuses it).
mod text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        String::deserialize(d).map(String::into_bytes)
    }
}

mod members {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(members: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let texts: Vec<_> = members.iter().map(|m| String::from_utf8_lossy(m)).collect();
        texts.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d).map(|v| v.into_iter().map(String::into_bytes).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_json() {
        for value in [
            KeyValue::Missing,
            KeyValue::String(b"1.1.1.1,2.2.2.2".to_vec()),
            KeyValue::Set(vec![b"1.1.1.1".to_vec(), b"::1".to_vec()]),
        ] {
            let json = serde_json::to_string(&value).unwrap();
            assert_eq!(
                serde_json::from_str::<KeyValue>(&json).unwrap(),
                value,
                "{json}"
            );
        }
        assert_eq!(
            serde_json::to_string(&KeyValue::String(b"1.1.1.1".to_vec())).unwrap(),
            r#"{"type":"string","value":"1.1.1.1"}"#
        );
    }
}
