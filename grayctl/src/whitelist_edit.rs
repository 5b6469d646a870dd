//! Editing a whitelist the way an operator would by hand, with the module's parser as the judge:
//! the entries given are validated first (one bad entry refuses the whole command), and the key
//! keeps its type and format: a string stays a string joined by its own separator, a SET stays a
//! SET and changes by SADD/SREM of the members concerned.

use std::collections::HashSet;
use std::fmt::Write as _;

use gray_core::stored::{Change, KeyValue};
use gray_core::whitelist::{is_separator, parse_entry, tokens};
use ipnet::IpNet;

use crate::failure::{refused, Failure};

/// An entry an operator gave, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What is written: the entry as given, or its network when it had host bits set.
    pub text: String,
    pub net: IpNet,
}

/// Validates every entry in `inputs` (each may hold several, separated as in the list itself);
/// the error lists each bad one with its reason. `notes` tells of entries written differently.
pub fn parse_entries<'a>(
    inputs: impl IntoIterator<Item = &'a str>,
    notes: &mut Vec<String>,
) -> Result<Vec<Entry>, Failure> {
    let mut entries = Vec::new();
    let mut bad = String::new();
    for input in inputs {
        for token in tokens(input.as_bytes()) {
            let text = String::from_utf8_lossy(token);
            match parse_entry(token) {
                Ok((net, false)) => entries.push(Entry {
                    text: text.into_owned(),
                    net,
                }),
                Ok((net, true)) => {
                    notes.push(format!("{text} has host bits set: writing {net}"));
                    entries.push(Entry {
                        text: net.to_string(),
                        net,
                    });
                }
                Err(e) => {
                    let _ = write!(bad, "\n  \"{}\": {e}", text.escape_default());
                }
            }
        }
    }
    if !bad.is_empty() {
        return Err(refused(format!("refused, nothing written:{bad}")));
    }
    Ok(entries)
}

/// The members that may spell `entries` in a SET, each once: the entry as given, its network,
/// and a host's bare address (`10.0.0.1` for `10.0.0.1/32`).
pub fn spellings(entries: &[Entry]) -> Vec<Vec<u8>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for entry in entries {
        let host = (entry.net.prefix_len() == entry.net.max_prefix_len())
            .then(|| entry.net.addr().to_string());
        for spelling in [Some(entry.text.clone()), Some(entry.net.to_string()), host]
            .into_iter()
            .flatten()
        {
            if seen.insert(spelling.clone()) {
                out.push(spelling.into_bytes());
            }
        }
    }
    out
}

/// The entries of an import file: one or more a line; blank lines and `#` comments skipped.
pub fn import_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|line| line.split_once('#').map_or(line, |(before, _)| before))
        .filter(|line| !line.trim().is_empty())
}

/// A change and what the operator is told about it.
#[derive(Debug, PartialEq, Eq)]
pub struct Edit {
    /// `None` when there is nothing to change.
    pub change: Option<Change>,
    pub notes: Vec<String>,
}

fn parsed(token: &[u8]) -> Option<IpNet> {
    parse_entry(token).ok().map(|(net, _)| net)
}

/// The separator a string list uses between its first two entries; with fewer, a newline for a
/// value that ends in one (a file's), else a comma.
fn separator(value: &[u8]) -> String {
    let single = if value.ends_with(b"\n") { "\n" } else { "," };
    let trimmed = value.trim_ascii();
    let Some(gap) = trimmed.iter().position(|&b| is_separator(b)) else {
        return single.into();
    };
    let run: Vec<u8> = trimmed[gap..]
        .iter()
        .take_while(|&&b| is_separator(b))
        .copied()
        .collect();
    String::from_utf8(run).unwrap_or_else(|_| single.into())
}

/// A string list rewritten with `entries`, in its own separator, keeping a final newline.
fn render(original: &[u8], entries: &[Vec<u8>]) -> Vec<u8> {
    let sep = separator(original);
    let mut out = entries.join(sep.as_bytes());
    if original.ends_with(b"\n") && !out.is_empty() {
        out.push(b'\n');
    }
    out
}

fn string_tokens(value: &[u8]) -> Vec<Vec<u8>> {
    tokens(value).map(<[u8]>::to_vec).collect()
}

/// The networks the list holds now, each once.
fn networks(current: &KeyValue) -> HashSet<IpNet> {
    current
        .values()
        .iter()
        .flat_map(|v| tokens(v))
        .filter_map(parsed)
        .collect()
}

/// Adds `entries` not yet in the list (an entry is there when an entry of the same network is).
pub fn add(current: &KeyValue, entries: &[Entry]) -> Edit {
    let mut present = networks(current);
    let mut notes = Vec::new();
    let mut new: Vec<&Entry> = Vec::new();
    for entry in entries {
        if !present.insert(entry.net) {
            notes.push(format!("{} is already in the list", entry.text));
        } else {
            new.push(entry);
        }
    }
    if new.is_empty() {
        return Edit {
            change: None,
            notes,
        };
    }
    let new_texts: Vec<Vec<u8>> = new.iter().map(|e| e.text.clone().into_bytes()).collect();
    let change = match current {
        KeyValue::Set(_) => Change::Members {
            add: new_texts,
            remove: Vec::new(),
        },
        KeyValue::Missing => Change::Replace(KeyValue::String(new_texts.join(&b","[..]))),
        KeyValue::String(value) => {
            let mut all = string_tokens(value);
            all.extend(new_texts);
            Change::Replace(KeyValue::String(render(value, &all)))
        }
    };
    Edit {
        change: Some(change),
        notes,
    }
}

/// Removes every entry of the same network as one of `entries`.
pub fn remove(current: &KeyValue, entries: &[Entry]) -> Edit {
    let removed: HashSet<IpNet> = entries.iter().map(|e| e.net).collect();
    let wanted = |token: &[u8]| parsed(token).is_some_and(|n| removed.contains(&n));
    let present = networks(current);
    let notes = entries
        .iter()
        .filter(|entry| !present.contains(&entry.net))
        .map(|entry| format!("{} is not in the list", entry.text))
        .collect();
    let change = match current {
        KeyValue::Missing => None,
        KeyValue::String(value) => {
            let all = string_tokens(value);
            let kept: Vec<Vec<u8>> = all.iter().filter(|t| !wanted(t)).cloned().collect();
            (kept.len() != all.len())
                .then(|| Change::Replace(KeyValue::String(render(value, &kept))))
        }
        KeyValue::Set(members) => {
            let (mut add, mut remove) = (Vec::new(), Vec::new());
            for member in members {
                let all = string_tokens(member);
                let kept: Vec<Vec<u8>> = all.iter().filter(|t| !wanted(t)).cloned().collect();
                if kept.len() != all.len() {
                    remove.push(member.clone());
                    // A member holding several entries keeps the others.
                    if !kept.is_empty() {
                        add.push(render(member, &kept));
                    }
                }
            }
            (!remove.is_empty()).then_some(Change::Members { add, remove })
        }
    };
    Edit { change, notes }
}

/// Replaces the whole list with `entries` (`grayctl import`), in the key's type and format.
pub fn replace(current: &KeyValue, entries: &[Entry]) -> Edit {
    // One entry per network, as `add` counts them: the first spelling stays.
    let mut nets = HashSet::new();
    let mut texts: Vec<Vec<u8>> = Vec::new();
    for entry in entries {
        if nets.insert(entry.net) {
            texts.push(entry.text.clone().into_bytes());
        }
    }
    let new = match current {
        KeyValue::Set(members) => return members_to(members, &texts),
        KeyValue::Missing => KeyValue::String(texts.join(&b","[..])),
        KeyValue::String(value) => KeyValue::String(render(value, &texts)),
    };
    Edit {
        change: (!new.same_as(current)).then_some(Change::Replace(new)),
        notes: Vec::new(),
    }
}

/// The change of a SET's `members` into `wanted`: the members that differ, a small delta for the
/// gateways rather than a new SET.
fn members_to(members: &[Vec<u8>], wanted: &[Vec<u8>]) -> Edit {
    let had: HashSet<&[u8]> = members.iter().map(Vec::as_slice).collect();
    let kept: HashSet<&[u8]> = wanted.iter().map(Vec::as_slice).collect();
    let add: Vec<Vec<u8>> = wanted
        .iter()
        .filter(|t| !had.contains(t.as_slice()))
        .cloned()
        .collect();
    let remove: Vec<Vec<u8>> = members
        .iter()
        .filter(|m| !kept.contains(m.as_slice()))
        .cloned()
        .collect();
    Edit {
        change: (!add.is_empty() || !remove.is_empty()).then_some(Change::Members { add, remove }),
        notes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[&str]) -> Vec<Entry> {
        parse_entries(list.iter().copied(), &mut Vec::new()).unwrap()
    }

    fn string(s: &str) -> KeyValue {
        KeyValue::String(s.as_bytes().to_vec())
    }

    fn replaced(edit: Edit) -> String {
        match edit.change {
            Some(Change::Replace(KeyValue::String(v))) => String::from_utf8(v).unwrap(),
            other => panic!("not a string replacement: {other:?}"),
        }
    }

    #[test]
    fn a_bad_entry_refuses_them_all_and_names_each() {
        let err = parse_entries(["10.0.0.1", "10.0.0.300", "1.2.3.4/40"], &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"10.0.0.300\": not an IPv4/IPv6 address or CIDR"),
            "{err}"
        );
        assert!(err.contains("\"1.2.3.4/40\": bad prefix length"), "{err}");
        assert!(err.contains("nothing written"), "{err}");
    }

    #[test]
    fn host_bits_are_written_as_the_network_and_told() {
        let mut notes = Vec::new();
        let e = parse_entries(["10.1.2.3/8"], &mut notes).unwrap();
        assert_eq!(e[0].text, "10.0.0.0/8");
        assert_eq!(notes, ["10.1.2.3/8 has host bits set: writing 10.0.0.0/8"]);
    }

    #[test]
    fn a_string_keeps_its_separator_and_final_newline() {
        assert_eq!(
            replaced(add(&string("1.1.1.1"), &entries(&["2.2.2.2"]))),
            "1.1.1.1,2.2.2.2"
        );
        assert_eq!(
            replaced(add(&string("1.1.1.1; 3.3.3.3\n"), &entries(&["2.2.2.2"]))),
            "1.1.1.1; 3.3.3.3; 2.2.2.2\n"
        );
        assert_eq!(
            replaced(add(&string("1.1.1.1\n3.3.3.3\n"), &entries(&["::1"]))),
            "1.1.1.1\n3.3.3.3\n::1\n"
        );
        assert_eq!(
            replaced(add(&KeyValue::Missing, &entries(&["1.1.1.1", "::1"]))),
            "1.1.1.1,::1"
        );
        assert_eq!(
            replaced(remove(
                &string("1.1.1.1 2.2.2.2 3.3.3.3"),
                &entries(&["2.2.2.2"])
            )),
            "1.1.1.1 3.3.3.3"
        );
    }

    #[test]
    fn present_and_absent_entries_change_nothing_and_are_told() {
        let edit = add(&string("10.0.0.0/8,1.1.1.1"), &entries(&["1.1.1.1/32"]));
        assert_eq!(edit.change, None);
        assert_eq!(edit.notes, ["1.1.1.1/32 is already in the list"]);
        let edit = remove(&string("1.1.1.1"), &entries(&["2.2.2.2"]));
        assert_eq!(edit.change, None);
        assert_eq!(edit.notes, ["2.2.2.2 is not in the list"]);
    }

    #[test]
    fn an_entry_is_looked_for_under_each_of_its_spellings() {
        let spelled: Vec<String> = spellings(&entries(&["10.0.0.1", "10.0.0.0/8", "::1/128"]))
            .into_iter()
            .map(|s| String::from_utf8(s).unwrap())
            .collect();
        assert_eq!(
            spelled,
            ["10.0.0.1", "10.0.0.1/32", "10.0.0.0/8", "::1/128", "::1"]
        );
    }

    #[test]
    fn a_set_changes_by_members_and_a_bad_member_stays() {
        let set = KeyValue::Set(vec![
            b"1.1.1.1".to_vec(),
            b"2.2.2.2 3.3.3.3 5.5.5.5".to_vec(),
            b"junk".to_vec(),
        ]);
        assert_eq!(
            add(&set, &entries(&["4.4.4.4"])).change,
            Some(Change::Members {
                add: vec![b"4.4.4.4".to_vec()],
                remove: vec![]
            })
        );
        assert_eq!(
            remove(&set, &entries(&["3.3.3.3", "1.1.1.1"])).change,
            Some(Change::Members {
                add: vec![b"2.2.2.2 5.5.5.5".to_vec()],
                remove: vec![b"1.1.1.1".to_vec(), b"2.2.2.2 3.3.3.3 5.5.5.5".to_vec()]
            })
        );
    }

    #[test]
    fn import_replaces_in_the_keys_format_and_skips_comments() {
        let file = "# testers\n1.1.1.1\n\n2.2.2.2 # alice\n1.1.1.1/32\n";
        let e = entries(&import_lines(file).collect::<Vec<_>>());
        assert_eq!(
            replaced(replace(&string("9.9.9.9\n"), &e)),
            "1.1.1.1\n2.2.2.2\n"
        );
        assert_eq!(
            replace(
                &KeyValue::Set(vec![b"3.3.3.3".to_vec(), b"1.1.1.1".to_vec()]),
                &e
            )
            .change,
            Some(Change::Members {
                add: vec![b"2.2.2.2".to_vec()],
                remove: vec![b"3.3.3.3".to_vec()]
            })
        );
        assert_eq!(replace(&string("1.1.1.1,2.2.2.2"), &e).change, None);
        let same_set = KeyValue::Set(vec![b"2.2.2.2".to_vec(), b"1.1.1.1".to_vec()]);
        assert_eq!(
            replace(&same_set, &e).change,
            None,
            "a SET's order is not a change"
        );
    }
}
