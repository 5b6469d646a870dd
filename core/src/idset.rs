//! Sets of user ids (a rule's `in` list, or an `in_key` read from Redis: a SET, or a string of ids
//! in the whitelist's separator style). Ids are compared byte for byte; a lookup is one hash.
//!
//! The ids lie back to back in one buffer and the table holds where each starts: a million ids
//! load without a million allocations, and take a third of the memory of one box each.

use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use hashbrown::hash_table::{Entry, HashTable};

use crate::whitelist::tokens;

/// Longer ids are rejected (and counted): no user id is this long, a stray blob is.
pub const MAX_ID_LEN: usize = 256;

/// A value longer than this is counted before it is added, to size the table once.
const RESERVE_ABOVE: usize = 64 * 1024;

/// Where one id lies in `IdSet::bytes`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

#[derive(Debug, Default)]
pub struct IdSet {
    bytes: Vec<u8>,
    spans: HashTable<Span>,
    /// Fixed seeds: the set is built once per load and never fed by clients, so a keyed hash
    /// buys nothing here and fixed ones keep lookups reproducible.
    hasher: FixedState,
    /// Ids rejected: too long, or past the 4 GiB the spans address.
    pub rejected_count: usize,
}

impl IdSet {
    pub fn contains(&self, id: &[u8]) -> bool {
        let bytes = &self.bytes;
        self.spans
            .find(self.hasher.hash_one(id), |s| span(bytes, *s) == id)
            .is_some()
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Every id, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|s| span(&self.bytes, *s))
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The ids of `values` (each split like a whitelist string).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut set = IdSet::default();
        for value in values {
            set.add(value);
        }
        set
    }

    /// Adds the ids of one value: a string's, or a SET member's.
    pub fn add(&mut self, value: &[u8]) {
        // A string of a million ids would otherwise move the table ~20 times as it grows.
        if value.len() > RESERVE_ABOVE {
            let (bytes, hasher) = (&self.bytes, &self.hasher);
            self.spans
                .reserve(tokens(value).count(), |s| hasher.hash_one(span(bytes, *s)));
            self.bytes.reserve(value.len());
        }
        for id in tokens(value) {
            self.insert(id);
        }
    }

    fn insert(&mut self, id: &[u8]) {
        if id.len() > MAX_ID_LEN || self.bytes.len() + id.len() > u32::MAX as usize {
            self.rejected_count += 1;
            return;
        }
        let start = self.bytes.len() as u32;
        let (bytes, hasher) = (&self.bytes, &self.hasher);
        let entry = self.spans.entry(
            hasher.hash_one(id),
            |s| span(bytes, *s) == id,
            |s| hasher.hash_one(span(bytes, *s)),
        );
        if let Entry::Vacant(vacant) = entry {
            vacant.insert(Span {
                start,
                len: id.len() as u32,
            });
            self.bytes.extend_from_slice(id);
        }
    }
}

fn span(bytes: &[u8], s: Span) -> &[u8] {
    &bytes[s.start as usize..][..s.len as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_exact_byte_strings() {
        let set = IdSet::parse([&b"u1001, u1002;u1003\n"[..], b"U1004"]);
        assert_eq!(set.len(), 4);
        assert!(set.contains(b"u1002"));
        assert!(!set.contains(b"u100"));
        assert!(!set.contains(b"u1004"));
        assert!(set.contains(b"U1004"));
    }

    #[test]
    fn every_id_comes_back_once() {
        let set = IdSet::parse([&b"b a c a"[..]]);
        let mut ids: Vec<&[u8]> = set.ids().collect();
        ids.sort();
        assert_eq!(ids, [&b"a"[..], b"b", b"c"]);
    }

    #[test]
    fn an_overlong_id_is_counted_not_kept() {
        let long = vec![b'x'; MAX_ID_LEN + 1];
        let set = IdSet::parse([&long[..], b"ok"]);
        assert_eq!((set.len(), set.rejected_count), (1, 1));
    }

    #[test]
    fn a_repeated_id_is_kept_once_and_every_id_survives_growth() {
        let ids: Vec<String> = (0..50_000).map(|i| format!("user-{i}")).collect();
        let mut set = IdSet::parse(ids.iter().map(|id| id.as_bytes()));
        set.add(b"user-7 user-7");
        assert_eq!(set.len(), ids.len());
        assert!(ids.iter().all(|id| set.contains(id.as_bytes())));
        assert!(!set.contains(b"user-50000") && !set.contains(b""));
    }
}
