//! Sets of user ids (a rule's `in` list, or an `in_key` read from Redis: a SET, or a string of ids
//! in the whitelist's separator style). Ids are compared byte for byte; a lookup is one hash.

use std::collections::HashSet;

use foldhash::fast::FixedState;

use crate::whitelist::tokens;

/// Longer ids are rejected (and counted): no user id is this long, a stray blob is.
pub const MAX_ID_LEN: usize = 256;

/// Fixed seeds: the set is built once per load and never fed by clients, so a keyed hash buys
/// nothing here and fixed ones keep lookups reproducible.
type Hasher = FixedState;

#[derive(Debug, Default)]
pub struct IdSet {
    ids: HashSet<Box<[u8]>, Hasher>,
    /// Ids rejected as too long.
    pub rejected_count: usize,
}

impl IdSet {
    pub fn contains(&self, id: &[u8]) -> bool {
        self.ids.contains(id)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
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
        for id in tokens(value) {
            if id.len() > MAX_ID_LEN {
                self.rejected_count += 1;
            } else if !self.ids.contains(id) {
                self.ids.insert(id.into());
            }
        }
    }
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
    fn an_overlong_id_is_counted_not_kept() {
        let long = vec![b'x'; MAX_ID_LEN + 1];
        let set = IdSet::parse([&long[..], b"ok"]);
        assert_eq!((set.len(), set.rejected_count), (1, 1));
    }
}
