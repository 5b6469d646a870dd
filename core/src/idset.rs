//! Sets of user ids (a rule's `in` list, or an `in_key` read from Redis: a SET, or a string of ids
//! in the whitelist's separator style). Ids are compared byte for byte; a lookup is one hash.
//!
//! An [`IdSetBuilder`] gathers the ids back to back in one buffer, deduplicated by a table of
//! where each starts (a million ids load without a million allocations), and lays them out flat
//! ([`crate::flat`]): the ids, then an open-addressing table of slots, each an id's offset, length
//! and 16 bits of its hash. The [`IdSet`] reads that layout in place, from private memory or from
//! the host's store, where one copy serves every worker.

use std::hash::BuildHasher;
use std::sync::Arc;

use foldhash::fast::FixedState;
use hashbrown::hash_table::{Entry, HashTable};

use crate::flat::{record_len, Aligned, FlatError, FlatReader, FlatWriter, Slab};
use crate::whitelist::tokens;

/// Longer ids are rejected (and counted): no user id is this long, a stray blob is.
pub const MAX_ID_LEN: usize = 256;

/// A value longer than this is counted before it is added, to size the table once.
const RESERVE_ABOVE: usize = 64 * 1024;

const TAG_COUNTS: u64 = 0x4944_0001;
const TAG_IDS: u64 = 0x4944_0002;
const TAG_SLOTS: u64 = 0x4944_0003;

/// A slot no id holds. A real slot's length is at most [`MAX_ID_LEN`], never all ones.
const EMPTY: u64 = u64::MAX;

/// Fixed seeds: a set is built once per load and never fed by clients, so a keyed hash buys
/// nothing here, and the slots the holder lays out must be where every worker looks.
fn hash(id: &[u8]) -> u64 {
    FixedState::default().hash_one(id)
}

/// An id's slot: its offset in the ids, its length, the top 16 bits of its hash.
fn slot(start: usize, len: usize, hash: u64) -> u64 {
    ((start as u64) << 32) | ((len as u64) << 16) | (hash >> 48)
}

/// Where one id lies in the builder's buffer.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

/// A set of ids being read.
#[derive(Debug, Default)]
pub struct IdSetBuilder {
    bytes: Vec<u8>,
    spans: HashTable<Span>,
    rejected_count: usize,
    /// A set built already (the host's shared copy), which [`IdSetBuilder::finish`] gives back.
    built: Option<IdSet>,
}

impl IdSetBuilder {
    /// A builder whose set is `set`, built already.
    pub fn built(set: IdSet) -> IdSetBuilder {
        IdSetBuilder {
            built: Some(set),
            ..IdSetBuilder::default()
        }
    }

    /// Adds the ids of one value: a string's, or a SET member's.
    pub fn add(&mut self, value: &[u8]) {
        debug_assert!(self.built.is_none(), "ids added to a set built already");
        // A string of a million ids would otherwise move the table ~20 times as it grows.
        if value.len() > RESERVE_ABOVE {
            let bytes = &self.bytes;
            self.spans
                .reserve(tokens(value).count(), |s| hash(span(bytes, *s)));
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
        let bytes = &self.bytes;
        let entry = self.spans.entry(
            hash(id),
            |s| span(bytes, *s) == id,
            |s| hash(span(bytes, *s)),
        );
        if let Entry::Vacant(vacant) = entry {
            vacant.insert(Span {
                start,
                len: id.len() as u32,
            });
            self.bytes.extend_from_slice(id);
        }
    }

    /// The set, laid out flat in private memory (or the one built already).
    pub fn finish(self) -> IdSet {
        if let Some(set) = self.built {
            return set;
        }
        // Twice as many slots as ids, or more: a lookup probes ~1.5 slots for an id it holds.
        let slots = (2 * self.spans.len()).next_power_of_two();
        let len = record_len(16) + record_len(self.bytes.len()) + record_len(8 * slots);
        let flat = Aligned::lay_out(len, |writer| {
            writer.slice(
                TAG_COUNTS,
                &[self.spans.len() as u64, self.rejected_count as u64],
            );
            writer.slice(TAG_IDS, &self.bytes);
            let table = writer.record::<u64>(TAG_SLOTS, slots);
            table.fill(EMPTY);
            let mask = slots - 1;
            for s in self.spans.iter() {
                let hash = hash(span(&self.bytes, *s));
                let mut at = hash as usize & mask;
                while table[at] != EMPTY {
                    at = (at + 1) & mask;
                }
                table[at] = slot(s.start as usize, s.len as usize, hash);
            }
        });
        IdSet::read_flat(&mut FlatReader::new(Arc::new(flat)))
            .expect("a set laid out here reads back")
    }
}

fn span(bytes: &[u8], s: Span) -> &[u8] {
    &bytes[s.start as usize..][..s.len as usize]
}

/// A set of ids, laid out flat.
#[derive(Debug, Clone, Default)]
pub struct IdSet {
    ids: Slab<u8>,
    /// A power of two of slots (none in an empty default set), at least one of them empty
    /// when laid out here.
    slots: Slab<u64>,
    len: usize,
    /// Ids rejected: too long, or past the 4 GiB the slots address.
    pub rejected_count: usize,
}

impl IdSet {
    /// The ids of `values` (each split like a whitelist string).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut builder = IdSetBuilder::default();
        for value in values {
            builder.add(value);
        }
        builder.finish()
    }

    /// Whether `id` is in the set. Over corrupted bytes, a wrong answer at worst: every slot is
    /// read within the table, every id within the ids, and no more probes than there are slots.
    #[inline]
    pub fn contains(&self, id: &[u8]) -> bool {
        let Some(mask) = self.slots.len().checked_sub(1) else {
            return false;
        };
        let hash = hash(id);
        let wanted = slot(0, id.len(), hash) & 0xffff_ffff;
        let mut at = hash as usize & mask;
        for _ in 0..self.slots.len() {
            let found = self.slots[at];
            if found == EMPTY {
                return false;
            }
            if found & 0xffff_ffff == wanted && self.id(found) == Some(id) {
                return true;
            }
            at = (at + 1) & mask;
        }
        false
    }

    fn id(&self, slot: u64) -> Option<&[u8]> {
        let start = (slot >> 32) as usize;
        let len = (slot >> 16 & 0xffff) as usize;
        self.ids.get(start..start.checked_add(len)?)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every id, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = &[u8]> {
        self.slots
            .iter()
            .filter(|&&s| s != EMPTY)
            .filter_map(|&s| self.id(s))
    }

    /// The bytes [`IdSet::write_flat`] lays out.
    pub fn flat_len(&self) -> usize {
        record_len(16) + record_len(self.ids.len()) + record_len(8 * self.slots.len())
    }

    pub fn write_flat(&self, writer: &mut FlatWriter) {
        writer.slice(TAG_COUNTS, &[self.len as u64, self.rejected_count as u64]);
        writer.slice(TAG_IDS, &self.ids);
        writer.slice(TAG_SLOTS, &self.slots);
    }

    /// A set as [`IdSet::write_flat`] or [`IdSetBuilder::finish`] laid it out, checked for
    /// what keeps a lookup within bounds (a power of two of slots), in constant time: whether the
    /// slots are the ones laid out is the store's checksum's to say.
    pub fn read_flat(reader: &mut FlatReader) -> Result<IdSet, FlatError> {
        let invalid = |what| FlatError::Invalid { what };
        let counts = reader.slab::<u64>(TAG_COUNTS)?;
        let [len, rejected_count] = *counts else {
            return Err(invalid("counts of another size"));
        };
        let ids = reader.slab::<u8>(TAG_IDS)?;
        let slots = reader.slab::<u64>(TAG_SLOTS)?;
        if !(slots.is_empty() || slots.len().is_power_of_two()) {
            return Err(invalid("a table of slots that is not a power of two"));
        }
        let count =
            |n: u64| usize::try_from(n).map_err(|_| invalid("a count past the address space"));
        Ok(IdSet {
            ids,
            slots,
            len: count(len)?,
            rejected_count: count(rejected_count)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flat::Backing;

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
        assert!(set.contains(b"ok") && !set.contains(&long));
    }

    #[test]
    fn an_empty_set_holds_nothing() {
        let set = IdSet::parse([&b" ,; "[..]]);
        assert!(set.is_empty() && !set.contains(b"") && !set.contains(b"u1"));
        assert!(!IdSet::default().contains(b"u1"));
        let default = IdSet::default();
        let flat = Aligned::lay_out(default.flat_len(), |writer| default.write_flat(writer));
        let read = IdSet::read_flat(&mut FlatReader::new(Arc::new(flat))).unwrap();
        assert!(read.is_empty() && !read.contains(b"u1"));
    }

    #[test]
    fn a_repeated_id_is_kept_once_and_every_id_survives_growth() {
        let ids: Vec<String> = (0..50_000).map(|i| format!("user-{i}")).collect();
        let mut builder = IdSetBuilder::default();
        for id in &ids {
            builder.add(id.as_bytes());
        }
        builder.add(b"user-7 user-7");
        let set = builder.finish();
        assert_eq!(set.len(), ids.len());
        assert!(ids.iter().all(|id| set.contains(id.as_bytes())));
        assert!(!set.contains(b"user-50000") && !set.contains(b""));
    }

    #[test]
    fn a_set_written_flat_reads_back_the_same() {
        let set = IdSet::parse([&b"u1 u2 u3"[..], &[b'x'; MAX_ID_LEN + 1][..]]);
        let flat = Aligned::lay_out(set.flat_len(), |writer| set.write_flat(writer));
        let read = IdSet::read_flat(&mut FlatReader::new(Arc::new(flat))).unwrap();
        assert_eq!((read.len(), read.rejected_count), (3, 1));
        assert!(read.contains(b"u2") && !read.contains(b"u4"));
    }

    #[test]
    fn corrupted_slots_answer_wrongly_at_worst() {
        let set = IdSet::parse([&b"u1 u2 u3 u4 u5"[..]]);
        let flat = Aligned::lay_out(set.flat_len(), |writer| set.write_flat(writer));
        let mut bytes = flat.bytes().to_vec();
        // Every slot full and pointing anywhere: no empty one ends a probe.
        let slots_at = bytes.len() - 8 * set.slots.len();
        for (i, b) in bytes[slots_at..].iter_mut().enumerate() {
            *b = (i * 37 % 251) as u8;
        }
        let read = IdSet::read_flat(&mut FlatReader::new(Arc::new(Aligned::copy(&bytes)))).unwrap();
        for id in [&b"u1"[..], b"u9", b""] {
            let _ = read.contains(id);
        }
        assert!(read.ids().count() <= read.slots.len());
    }

    #[test]
    fn a_table_of_slots_not_a_power_of_two_is_refused() {
        let flat = Aligned::lay_out(record_len(16) + record_len(0) + record_len(24), |w| {
            w.slice(TAG_COUNTS, &[0u64, 0]);
            w.slice::<u8>(TAG_IDS, &[]);
            w.slice(TAG_SLOTS, &[EMPTY; 3]);
        });
        assert!(IdSet::read_flat(&mut FlatReader::new(Arc::new(flat))).is_err());
    }
}
