//! What grayctl records beside a key it changes, in the same transaction as the change: the
//! hash `<key>:changes` ([`crate::keys::changes`]) holds the key's change number (`ver`, one more
//! for every change grayctl makes) and, for a SET, the last [`KEPT`] changes' deltas (`d:<ver>`:
//! the members added and removed, and the SET's size after). A gateway that read the SET at
//! change `n` applies `d:<n+1>`... instead of reading the SET again; anything else (a change
//! without its delta, a size that does not add up, a write no delta describes) means a whole
//! read: correctness never depends on the deltas.
//!
//! A string's delta would be the string itself, so a rule set's or a string list's change
//! records its number only: the gateways read such a value whole, as before.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::flat::{Aligned, Stage};
use crate::value::{Fetched, KeyKind, ListBuilder, SetVersion};
use crate::whitelist::{Whitelist, WhitelistBuilder};

/// The field holding the number of the latest change.
pub const VERSION_FIELD: &str = "ver";
/// The deltas kept: a gateway more changes behind reads the key whole (it applies at most this
/// many at once).
pub const KEPT: u64 = 64;
/// A delta larger than this (an import that replaced most of a list) is not recorded: its
/// change number alone tells the gateways to read the key whole.
pub const MAX_BYTES: usize = 64 * 1024;

/// The field of change `version`'s delta.
pub fn field(version: u64) -> String {
    format!("d:{version}")
}

/// One change of a SET: members added (none of them there before) and removed (each there
/// before), and its number of members after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    pub add: Vec<String>,
    pub remove: Vec<String>,
    pub card: u64,
}

impl Delta {
    /// The delta as recorded; `None` when it is over [`MAX_BYTES`] or a member is not UTF-8
    /// (no member grayctl writes is), and only its change number is recorded.
    pub fn record(add: &[Vec<u8>], remove: &[Vec<u8>], card: u64) -> Option<String> {
        let text = |members: &[Vec<u8>]| {
            members
                .iter()
                .map(|m| String::from_utf8(m.clone()).ok())
                .collect::<Option<Vec<String>>>()
        };
        let delta = Delta {
            add: text(add)?,
            remove: text(remove)?,
            card,
        };
        let json = serde_json::to_string(&delta).expect("a delta is plain data");
        (json.len() <= MAX_BYTES).then_some(json)
    }

    pub fn parse(bytes: &[u8]) -> Result<Delta, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a delta: {e}"))
    }
}

/// A SET's whitelist as of change `change`, read whole by the gateway that holds it and moved
/// forward by deltas: its entries as parsed (not merged, so one can be taken out again), its
/// version, size and number of members.
pub struct SetAtChange {
    pub change: u64,
    builder: WhitelistBuilder,
    version: SetVersion,
    members: u64,
    bytes: usize,
    /// The last list laid out, for the next to reuse its memory.
    layout: Option<Arc<Aligned>>,
}

impl SetAtChange {
    /// SET `fetched`, read whole at change `change`, kept: its entries are taken out of
    /// `fetched` (sorted once, not copied), which carries instead the list laid out from them as
    /// a delta's is ([`SetAtChange::list`], in `stage` where there is one with room). `None`,
    /// and `fetched` as it was, for a value that is not a SET of a whitelist.
    pub fn read<B: ListBuilder>(
        change: u64,
        fetched: &mut Fetched<B>,
        stage: Option<&dyn Stage>,
    ) -> Option<SetAtChange> {
        Self::keep(change, fetched, Some(stage))
    }

    /// As [`SetAtChange::read`], for a SET whose version is loaded already: its entries are kept
    /// and nothing is laid out; `fetched` is left without them, not to be parsed.
    pub fn take<B: ListBuilder>(change: u64, fetched: &mut Fetched<B>) -> Option<SetAtChange> {
        Self::keep(change, fetched, None)
    }

    fn keep<B: ListBuilder>(
        change: u64,
        fetched: &mut Fetched<B>,
        lay_out: Option<Option<&dyn Stage>>,
    ) -> Option<SetAtChange> {
        if fetched.kind != KeyKind::Set {
            return None;
        }
        let (version, members, bytes) = (fetched.version, fetched.members, fetched.bytes);
        let mut kept = None;
        fetched.keep_whitelist(&mut |mut builder| {
            builder.sort();
            let mut at = SetAtChange {
                change,
                builder,
                version: SetVersion::from(version),
                members,
                bytes,
                layout: None,
            };
            let list = lay_out.map_or_else(Whitelist::default, |stage| at.list(stage));
            kept = Some(at);
            list
        });
        kept
    }

    /// Applies `delta`, change `change + 1`. An error, and this unusable (read the SET whole),
    /// when it does not add up: a member removed that is not there, or a number of members other
    /// than the one recorded (a write no delta describes came between).
    pub fn apply(&mut self, delta: &Delta) -> Result<(), String> {
        let removed: Vec<&[u8]> = delta.remove.iter().map(String::as_bytes).collect();
        self.builder.remove(&removed)?;
        for member in &removed {
            self.version.remove(member);
            self.bytes = self.bytes.saturating_sub(member.len());
        }
        for member in &delta.add {
            self.builder.add(member.as_bytes());
            self.version.add(member.as_bytes());
            self.bytes += member.len();
        }
        let members = (self.members + delta.add.len() as u64).checked_sub(removed.len() as u64);
        if members != Some(delta.card) {
            return Err(format!(
                "change {} leaves {} members by the deltas, {} by its record",
                self.change + 1,
                members.map_or("fewer than 0".into(), |n| n.to_string()),
                delta.card
            ));
        }
        self.builder.sort();
        self.members = delta.card;
        self.change += 1;
        Ok(())
    }

    pub fn version(&self) -> u64 {
        self.version.get()
    }

    pub fn members(&self) -> u64 {
        self.members
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The list as it stands, laid out in `stage` where there is one with room. Otherwise its
    /// layout is kept, and the next change is laid out in the same memory once nothing reads
    /// this one, until [`SetAtChange::release_layout`].
    pub fn list(&mut self, stage: Option<&dyn Stage>) -> Whitelist {
        self.builder.list(&mut self.layout, stage)
    }

    /// Lets the kept layout go: changes paused.
    pub fn release_layout(&mut self) {
        self.layout = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Members;

    /// A SET of `members` read whole at change `change`.
    fn read(change: u64, members: &[&str]) -> (SetAtChange, u64) {
        let mut read = Members::<WhitelistBuilder>::default();
        for member in members {
            read.add(member.as_bytes());
        }
        let mut fetched = read.finish();
        (
            SetAtChange::read(change, &mut fetched, None).unwrap(),
            fetched.version,
        )
    }

    fn delta(add: &[&str], remove: &[&str], card: u64) -> Delta {
        let text = |m: &[&str]| m.iter().map(|s| s.to_string()).collect();
        Delta {
            add: text(add),
            remove: text(remove),
            card,
        }
    }

    #[test]
    fn deltas_give_the_list_and_version_a_whole_read_gives() {
        let (mut set, _) = read(
            3,
            &["10.0.0.0/8", "10.1.2.3", "bad", "2001:db8::1", "1.1.1.1/24"],
        );
        set.apply(&delta(&["192.0.2.1", "nope"], &["10.0.0.0/8", "bad"], 5))
            .unwrap();
        set.apply(&delta(&["::2"], &["1.1.1.1/24"], 5)).unwrap();
        let (mut whole, version) =
            read(5, &["10.1.2.3", "2001:db8::1", "192.0.2.1", "nope", "::2"]);
        assert_eq!(set.change, 5);
        assert_eq!(set.version(), version);
        assert_eq!(
            (set.members(), set.bytes()),
            (whole.members(), whole.bytes())
        );
        let (list, expected) = (set.list(None), whole.list(None));
        assert_eq!(
            (
                list.entries_v4,
                list.entries_v6,
                list.rejected_count,
                list.truncated_count
            ),
            (
                expected.entries_v4,
                expected.entries_v6,
                expected.rejected_count,
                expected.truncated_count
            )
        );
        assert_eq!(
            (list.rejected, list.truncated.len()),
            (expected.rejected, 0)
        );
        // The /8 is gone: 10.1.2.3 stays, its neighbour does not.
        assert!(list.set.contains("10.1.2.3".parse().unwrap()));
        assert!(!list.set.contains("10.1.2.4".parse().unwrap()));
        assert!(list.set.contains("192.0.2.1".parse().unwrap()));
        assert!(!list.set.contains("1.1.1.7".parse().unwrap()));
    }

    #[test]
    fn a_delta_that_does_not_add_up_is_refused() {
        let (mut set, _) = read(1, &["10.0.0.1", "10.0.0.2"]);
        let err = set.apply(&delta(&["10.0.0.3"], &[], 4)).unwrap_err();
        assert_eq!(
            err,
            "change 2 leaves 3 members by the deltas, 4 by its record"
        );
        let (mut set, _) = read(1, &["10.0.0.1"]);
        assert!(set.apply(&delta(&[], &["10.0.0.9"], 0)).is_err());
        let (mut set, _) = read(1, &["10.0.0.1"]);
        assert!(set.apply(&delta(&[], &["junk"], 0)).is_err());
    }

    /// A whole read is not atomic with the change number read before it: changes made while
    /// the SET is scanned may show in it in part, each member as of any moment of the scan. The
    /// deltas applied to such a read either give the SET as it ends, or one of them does not add
    /// up and the gateway reads the SET whole again: never a list both stale and trusted.
    #[test]
    fn a_read_overtaken_by_changes_is_either_caught_or_right() {
        use std::collections::BTreeSet;
        let start = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
        // Changes 2 and 3 of a SET read at change 1: 10.0.0.2 goes and comes back, 10.0.0.9
        // comes and goes.
        let changes: [(&[&str], &[&str]); 2] = [
            (&["10.0.0.9", "10.0.0.8"], &["10.0.0.1", "10.0.0.2"]),
            (&["10.0.0.2"], &["10.0.0.9"]),
        ];
        let mut states = vec![BTreeSet::from(start)];
        for (add, remove) in changes {
            let mut next = states.last().unwrap().clone();
            next.retain(|m| !remove.contains(m));
            next.extend(add);
            states.push(next);
        }
        let deltas: Vec<Delta> = changes
            .iter()
            .zip(&states[1..])
            .map(|((add, remove), after)| delta(add, remove, after.len() as u64))
            .collect();
        let (_, final_version) = read(3, &states[2].iter().copied().collect::<Vec<_>>());
        let touched: Vec<&str> = states
            .iter()
            .flatten()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let (mut caught, mut right) = (0, 0);
        // Each member as of change 1, 2 or 3, in every combination.
        for mix in 0..3usize.pow(touched.len() as u32) {
            let seen: Vec<&str> = touched
                .iter()
                .enumerate()
                .filter(|&(i, m)| states[mix / 3usize.pow(i as u32) % 3].contains(m))
                .map(|(_, m)| *m)
                .collect();
            let (mut set, _) = read(1, &seen);
            if deltas.iter().try_for_each(|d| set.apply(d)).is_err() {
                caught += 1;
                continue;
            }
            assert_eq!(
                set.version(),
                final_version,
                "a mixed read {seen:?} trusted"
            );
            assert_eq!(set.members(), states[2].len() as u64);
            right += 1;
        }
        // Reads as of change 1 (members untouched by the changes being alike at any moment).
        assert!(
            right > 0 && caught > right,
            "{right} right, {caught} caught"
        );
    }

    #[test]
    fn a_delta_reads_back_as_recorded() {
        let json = Delta::record(&[b"10.0.0.1".to_vec()], &[b"::1".to_vec()], 7).unwrap();
        assert_eq!(json, r#"{"add":["10.0.0.1"],"remove":["::1"],"card":7}"#);
        assert_eq!(
            Delta::parse(json.as_bytes()).unwrap(),
            Delta {
                add: vec!["10.0.0.1".into()],
                remove: vec!["::1".into()],
                card: 7
            }
        );
        assert_eq!(field(12), "d:12");
    }

    #[test]
    fn a_large_or_binary_delta_is_not_recorded_and_a_bad_one_not_read() {
        let many: Vec<Vec<u8>> = (0..10_000)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256).into_bytes())
            .collect();
        assert_eq!(Delta::record(&many, &[], 1), None);
        assert_eq!(Delta::record(&[vec![0xff]], &[], 1), None);
        assert!(Delta::parse(br#"{"add":[],"remove":[],"card":1,"x":2}"#).is_err());
        assert!(Delta::parse(br#"{"add":[]}"#).is_err());
    }
}
