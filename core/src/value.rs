//! A key's value as gray reads it, without the reading: its kind, its size, its version (equal
//! values, equal versions: an unchanged list is not parsed again), and what its bytes are built
//! into (a whitelist, a set of ids, or the text itself, a rule set's JSON). The reading, over
//! Redis, is gray-io's; grayctl computes versions the same way, from the same code.

use std::hash::{DefaultHasher, Hash, Hasher};

use xxhash_rust::xxh3::xxh3_64;

use crate::flat::{FlatError, FlatReader};
use crate::idset::{IdSet, IdSetBuilder};
use crate::manifest::ItemForm;
use crate::whitelist::{Whitelist, WhitelistBuilder};

/// How the Redis key looked when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Missing,
    String,
    Set,
}

impl KeyKind {
    /// The kind [`KeyKind::as_str`] names.
    pub fn from_name(name: &str) -> Option<KeyKind> {
        [KeyKind::Missing, KeyKind::String, KeyKind::Set]
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Missing => "missing",
            KeyKind::String => "string",
            KeyKind::Set => "set",
        }
    }
}

/// What a key's values are parsed into: a whitelist, a set of ids, or the text itself (a rule
/// set). A SET's members are added as they arrive, a string's value once.
pub trait ListBuilder: Default {
    type List;
    fn add(&mut self, value: &[u8]);
    fn finish(self) -> Self::List;
    /// How the host's store holds this builder's lists.
    const STORED_AS: ItemForm = ItemForm::Text;
    /// A builder whose list is the one laid out flat in `reader` (the host's shared copy of a
    /// list stored as other than text).
    fn read_built(reader: &mut FlatReader) -> Result<Self, FlatError> {
        let _ = reader;
        Err(FlatError::Invalid {
            what: "a list the store holds as text",
        })
    }
    /// A builder whose list is `list`, built already (a whitelist moved forward by deltas):
    /// `None` for a builder of anything else.
    fn built(list: Whitelist) -> Option<Self> {
        drop(list);
        None
    }
    /// For a builder of a whitelist: hands its entries to `keep` (a SET kept as of a change,
    /// which deltas move forward) and becomes the builder of the list `keep` returns, built
    /// already; says whether it did.
    fn keep_whitelist(&mut self, keep: &mut dyn FnMut(WhitelistBuilder) -> Whitelist) -> bool {
        let _ = keep;
        false
    }
}

impl ListBuilder for WhitelistBuilder {
    type List = Whitelist;
    fn add(&mut self, value: &[u8]) {
        WhitelistBuilder::add(self, value);
    }
    fn finish(self) -> Whitelist {
        WhitelistBuilder::finish(self)
    }
    const STORED_AS: ItemForm = ItemForm::Whitelist;
    fn read_built(reader: &mut FlatReader) -> Result<Self, FlatError> {
        Ok(WhitelistBuilder::built(Whitelist::read_flat(reader)?))
    }
    fn built(list: Whitelist) -> Option<Self> {
        Some(WhitelistBuilder::built(list))
    }
    fn keep_whitelist(&mut self, keep: &mut dyn FnMut(WhitelistBuilder) -> Whitelist) -> bool {
        // A list that came built has no entries to keep.
        if self.is_built() {
            return false;
        }
        let entries = std::mem::take(self);
        *self = WhitelistBuilder::built(keep(entries));
        true
    }
}

impl ListBuilder for IdSetBuilder {
    type List = IdSet;
    fn add(&mut self, value: &[u8]) {
        IdSetBuilder::add(self, value);
    }
    fn finish(self) -> IdSet {
        IdSetBuilder::finish(self)
    }
    const STORED_AS: ItemForm = ItemForm::Ids;
    fn read_built(reader: &mut FlatReader) -> Result<Self, FlatError> {
        Ok(IdSetBuilder::built(IdSet::read_flat(reader)?))
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
    /// A SET's number of members (SCARD); 0 otherwise.
    pub members: u64,
    entries: Entries<B>,
}

#[derive(Debug)]
enum Entries<B> {
    /// A string (empty for a missing key), parsed only if its version is new.
    Text(Vec<u8>),
    /// A SET's members, parsed as they arrived.
    Parsed(Box<B>),
}

impl<B: ListBuilder> Fetched<B> {
    /// A string value (`KeyKind::String`), or a missing key's (`KeyKind::Missing`, empty).
    pub fn text(kind: KeyKind, value: Vec<u8>) -> Self {
        let mut version = Version::new(kind);
        version.add(&value);
        Fetched {
            kind,
            bytes: value.len(),
            version: version.finish(),
            members: 0,
            entries: Entries::Text(value),
        }
    }

    /// A value read before, by another process or as a delta moved it: its kind, version,
    /// size and members, and the builder that holds it.
    pub fn stored(kind: KeyKind, version: u64, bytes: usize, members: u64, builder: B) -> Self {
        Fetched {
            kind,
            bytes,
            version,
            members,
            entries: Entries::Parsed(Box::new(builder)),
        }
    }

    /// See [`ListBuilder::keep_whitelist`]: for the members of a SET read as a whitelist.
    pub fn keep_whitelist(&mut self, keep: &mut dyn FnMut(WhitelistBuilder) -> Whitelist) -> bool {
        match &mut self.entries {
            Entries::Parsed(builder) => builder.keep_whitelist(keep),
            Entries::Text(_) => false,
        }
    }

    /// The list, parsed (a string) and indexed.
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

/// A SET's members as they arrive, each hashed into the version and parsed at once, so they
/// are never all held as text.
pub struct Members<B> {
    version: SetVersion,
    builder: B,
    bytes: usize,
    count: u64,
}

impl<B: ListBuilder> Default for Members<B> {
    fn default() -> Self {
        Members {
            version: SetVersion::default(),
            builder: B::default(),
            bytes: 0,
            count: 0,
        }
    }
}

impl<B: ListBuilder> Members<B> {
    pub fn add(&mut self, member: &[u8]) {
        self.bytes += member.len();
        self.count += 1;
        self.version.add(member);
        self.builder.add(member);
    }

    pub fn finish(self) -> Fetched<B> {
        Fetched {
            kind: KeyKind::Set,
            bytes: self.bytes,
            version: self.version.get(),
            members: self.count,
            entries: Entries::Parsed(Box::new(self.builder)),
        }
    }
}

/// The version of a string being read.
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

/// A SET's version: the sum of its members' hashes (xxh3, stable across builds), so it does not
/// depend on the order SSCAN returns them in, and a delta moves it by what it adds and removes:
/// a gateway that applies one serves the version a whole read would give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetVersion(u64);

impl Default for SetVersion {
    fn default() -> Self {
        SetVersion(xxh3_64(KeyKind::Set.as_str().as_bytes()))
    }
}

impl SetVersion {
    /// The version a set of version `version` has.
    pub fn from(version: u64) -> SetVersion {
        SetVersion(version)
    }

    pub fn add(&mut self, member: &[u8]) {
        self.0 = self.0.wrapping_add(xxh3_64(member));
    }

    pub fn remove(&mut self, member: &[u8]) {
        self.0 = self.0.wrapping_sub(xxh3_64(member));
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(batches: &[&[&str]]) -> Fetched {
        let mut members = Members::<WhitelistBuilder>::default();
        for member in batches.iter().flat_map(|batch| batch.iter()) {
            members.add(member.as_bytes());
        }
        members.finish()
    }

    fn string(value: &str) -> Fetched {
        Fetched::text(KeyKind::String, value.as_bytes().to_vec())
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
        // In any order: SSCAN's changes with the table's.
        assert_eq!(
            set(&[&["::1", "1.1.1.1"]]).version,
            set(&[&["1.1.1.1", "::1"]]).version
        );
        assert_ne!(set(&[&[]]).version, set(&[&[""]]).version);
    }

    #[test]
    fn a_set_version_moves_by_what_is_added_and_removed() {
        let mut version = SetVersion::from(set(&[&["1.1.1.1", "2.2.2.2"]]).version);
        version.remove(b"1.1.1.1");
        version.add(b"3.3.3.3");
        assert_eq!(version.get(), set(&[&["3.3.3.3", "2.2.2.2"]]).version);
    }

    #[test]
    fn set_batches_add_up_to_one_list() {
        let fetched = set(&[&["1.1.1.1", "bad"], &[], &["2001:db8::/32 10.0.0.0/8"]]);
        assert_eq!(fetched.bytes, 7 + 3 + 24);
        assert_eq!(fetched.members, 3);
        let list = fetched.into_list();
        assert_eq!((list.entries_v4, list.entries_v6), (2, 1));
        assert_eq!(list.rejected_count, 1);
        assert!(list.set.contains("10.1.2.3".parse().unwrap()));
    }
}
