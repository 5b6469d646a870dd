//! The whitelist format: entries separated by commas, semicolons, whitespace or newlines; each an
//! IPv4 or IPv6 address or a CIDR of either. One bad entry is rejected and reported; it never
//! costs the rest of the list.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::flat::{record_len, Aligned, Backing, FlatError, FlatReader, FlatWriter, Stage};
use crate::ipset::{IpSet, IpSetBuilder};

/// How many rejected entries are kept verbatim for the log and `status()`; the rest are counted.
pub const REJECTED_SAMPLES: usize = 10;
/// Rejected entries are quoted up to this many bytes.
const QUOTE_MAX: usize = 64;

/// The record of a whitelist's figures in the flat layout (see [`Whitelist::write_flat`]).
const TAG_FIGURES: u64 = 0x574c_0001;

/// Why an entry was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryError {
    NotAnAddress,
    BadPrefixLength,
    NotUtf8,
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryError::NotAnAddress => "not an IPv4/IPv6 address or CIDR",
            EntryError::BadPrefixLength => "bad prefix length",
            EntryError::NotUtf8 => "not text",
        })
    }
}

/// A rejected entry, quoted safely for a log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub entry: String,
    pub error: EntryError,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\" ({})", self.entry, self.error)
    }
}

/// A CIDR written with host bits set (`10.1.2.3/8`): accepted as its network, like nginx's
/// `allow`, and reported so the operator can fix the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncated {
    pub entry: String,
    pub network: IpNet,
}

/// A parsed whitelist and what parsing it found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Whitelist {
    /// Laid out on its own in the flat layout, after the figures.
    #[serde(skip)]
    pub set: IpSet,
    pub entries_v4: usize,
    pub entries_v6: usize,
    pub rejected_count: usize,
    /// The first [`REJECTED_SAMPLES`] rejected entries.
    pub rejected: Vec<Rejected>,
    pub truncated_count: usize,
    pub truncated: Vec<Truncated>,
    /// The memory a kept builder laid the list out in ([`WhitelistBuilder::list`]), which it is
    /// read from.
    #[serde(skip)]
    laid_out_in: Option<LaidOut>,
}

/// The memory a list was laid out in.
#[derive(Clone)]
struct LaidOut(Arc<dyn Backing>);

impl fmt::Debug for LaidOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LaidOut({} bytes)", self.0.bytes().len())
    }
}

impl Whitelist {
    /// Parses every value (the string value of the key, or each member of a SET).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut builder = WhitelistBuilder::default();
        for value in values {
            builder.add(value);
        }
        builder.finish()
    }

    pub fn entries(&self) -> usize {
        self.entries_v4.saturating_add(self.entries_v6)
    }

    /// Lays the list out as flat records: its figures (counts, the rejected and truncated
    /// entries kept), then its set.
    pub fn write_flat(&self, writer: &mut FlatWriter) {
        writer.slice(TAG_FIGURES, &self.figures());
        self.set.write_flat(writer);
    }

    /// The bytes [`Whitelist::write_flat`] would lay out, where a kept builder laid them out
    /// already ([`WhitelistBuilder::list`]): the store lists its own block as it is.
    pub fn laid_out(&self) -> Option<&[u8]> {
        self.laid_out_in.as_ref().map(|memory| memory.0.bytes())
    }

    /// The bytes [`Whitelist::write_flat`] lays out.
    pub fn flat_len(&self) -> usize {
        record_len(self.figures().len()) + self.set.flat_len()
    }

    /// Its counts and the rejected and truncated entries kept, as JSON (the set is skipped).
    fn figures(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a whitelist's figures are plain data")
    }

    /// The list [`Whitelist::write_flat`] laid out, its set read in place.
    pub fn read_flat(reader: &mut FlatReader) -> Result<Whitelist, FlatError> {
        let figures = reader.slab::<u8>(TAG_FIGURES)?;
        let list: Whitelist = serde_json::from_slice(&figures).map_err(|_| FlatError::Invalid {
            what: "a whitelist's figures that are not its JSON",
        })?;
        Ok(Whitelist {
            set: IpSet::read_flat(reader)?,
            ..list
        })
    }
}

/// A whitelist parsed a value at a time (a SET arrives in batches), indexed once at the end.
/// Kept instead (a SET's, by the gateway that reads it), it also takes values out again and
/// builds the list as it stands ([`crate::delta`]).
#[derive(Debug, Clone, Default)]
pub struct WhitelistBuilder {
    list: Whitelist,
    set: IpSetBuilder,
    /// The list came built: `finish` hands it back as it is.
    built: bool,
}

impl WhitelistBuilder {
    /// A builder that hands back `list`, built already.
    pub fn built(list: Whitelist) -> WhitelistBuilder {
        WhitelistBuilder {
            list,
            set: IpSetBuilder::default(),
            built: true,
        }
    }

    /// Whether the list came built ([`WhitelistBuilder::built`]): no entries to keep.
    pub fn is_built(&self) -> bool {
        self.built
    }

    /// Parses one value: the key's string, or a member of a SET.
    pub fn add(&mut self, value: &[u8]) {
        let list = &mut self.list;
        for token in tokens(value) {
            match parse_entry(token) {
                Ok((net, had_host_bits)) => {
                    let net = self.set.insert(net);
                    match net {
                        IpNet::V4(_) => list.entries_v4 += 1,
                        IpNet::V6(_) => list.entries_v6 += 1,
                    }
                    if had_host_bits {
                        list.truncated_count += 1;
                        if list.truncated.len() < REJECTED_SAMPLES {
                            list.truncated.push(Truncated {
                                entry: quote(token),
                                network: net,
                            });
                        }
                    }
                }
                Err(error) => {
                    list.rejected_count += 1;
                    if list.rejected.len() < REJECTED_SAMPLES {
                        list.rejected.push(Rejected {
                            entry: quote(token),
                            error,
                        });
                    }
                }
            }
        }
    }

    /// Takes out what [`WhitelistBuilder::add`] of each of `values` put in: their entries, and
    /// their rejected and truncated ones from the figures. An error, and the builder unusable
    /// (read the list again), when one was not in.
    pub fn remove(&mut self, values: &[&[u8]]) -> Result<(), String> {
        let list = &mut self.list;
        let mut nets = Vec::new();
        let not_in = |token: &[u8]| format!("\"{}\" is not in the list", quote(token));
        for token in values.iter().flat_map(|value| tokens(value)) {
            match parse_entry(token) {
                Ok((net, had_host_bits)) => {
                    let count = match crate::ipset::canonical_net(net) {
                        IpNet::V4(_) => &mut list.entries_v4,
                        IpNet::V6(_) => &mut list.entries_v6,
                    };
                    *count = count.checked_sub(1).ok_or_else(|| not_in(token))?;
                    nets.push(net);
                    if had_host_bits {
                        list.truncated_count = list
                            .truncated_count
                            .checked_sub(1)
                            .ok_or_else(|| not_in(token))?;
                        let entry = quote(token);
                        if let Some(i) = list.truncated.iter().position(|t| t.entry == entry) {
                            list.truncated.remove(i);
                        }
                    }
                }
                Err(_) => {
                    list.rejected_count = list
                        .rejected_count
                        .checked_sub(1)
                        .ok_or_else(|| not_in(token))?;
                    let entry = quote(token);
                    if let Some(i) = list.rejected.iter().position(|r| r.entry == entry) {
                        list.rejected.remove(i);
                    }
                }
            }
        }
        if !self.set.remove(&nets) {
            return Err("an entry removed is not in the list".into());
        }
        Ok(())
    }

    /// Sorts the entries added so far: a kept builder sorts after each change, in linear time
    /// (see [`IpSetBuilder::sort`]), so that building its list does not sort a million entries.
    pub fn sort(&mut self) {
        self.set.sort();
    }

    /// The list as it stands, the builder kept for more changes and sorted
    /// ([`WhitelistBuilder::sort`]): laid out flat in one pass over its ranges and read in place,
    /// the form the host's store lists as it is. Laid out in `stage` when there is one with room
    /// (the session's holder lays it straight into the store), else in `layout`'s memory when
    /// nothing else reads the list laid out there any more; `layout` then holds the new one.
    pub fn list(&self, layout: &mut Option<Arc<Aligned>>, stage: Option<&dyn Stage>) -> Whitelist {
        let figures = self.list.figures();
        let set = self.set.sorted_layout();
        let len = record_len(figures.len()) + set.flat_len();
        let mut write = |writer: &mut FlatWriter| {
            writer.slice(TAG_FIGURES, &figures);
            set.write_flat(writer);
        };
        let flat = match stage.and_then(|stage| stage.lay_out(len, &mut write)) {
            Some(staged) => {
                *layout = None;
                staged
            }
            None => {
                match layout.as_mut().and_then(Arc::get_mut) {
                    Some(reused) => reused.lay_out_again(len, write),
                    None => *layout = Some(Arc::new(Aligned::lay_out(len, write))),
                }
                layout.clone().expect("laid out just now")
            }
        };
        let read = Whitelist::read_flat(&mut FlatReader::new(flat.clone()))
            .expect("a list laid out here reads back");
        Whitelist {
            laid_out_in: Some(LaidOut(flat)),
            ..read
        }
    }

    /// Builds the lookup tables from everything added.
    pub fn finish(self) -> Whitelist {
        if self.built {
            return self.list;
        }
        Whitelist {
            set: self.set.build(),
            ..self.list
        }
    }
}

/// Whether `b` separates entries.
pub fn is_separator(b: u8) -> bool {
    matches!(b, b',' | b';' | b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The non-empty entries of one value.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| is_separator(b))
        .filter(|token| !token.is_empty())
}

/// One entry: a host (`1.2.3.4`, `::1`) or a CIDR (`10.0.0.0/8`). The bool says the CIDR had host
/// bits set and was truncated to its network.
pub fn parse_entry(token: &[u8]) -> Result<(IpNet, bool), EntryError> {
    let text = std::str::from_utf8(token).map_err(|_| EntryError::NotUtf8)?;
    match text.split_once('/') {
        None => text
            .parse::<IpAddr>()
            .map(|addr| (IpNet::from(addr), false))
            .map_err(|_| EntryError::NotAnAddress),
        Some((addr, prefix)) => {
            let addr: IpAddr = addr.parse().map_err(|_| EntryError::NotAnAddress)?;
            // u8::parse accepts a leading '+'; a prefix is plain digits only.
            if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                return Err(EntryError::BadPrefixLength);
            }
            let prefix: u8 = prefix.parse().map_err(|_| EntryError::BadPrefixLength)?;
            let net = IpNet::new(addr, prefix).map_err(|_| EntryError::BadPrefixLength)?;
            let network = net.trunc();
            Ok((network, network != net))
        }
    }
}

/// Printable, bounded form of untrusted bytes.
fn quote(token: &[u8]) -> String {
    let shown = &token[..token.len().min(QUOTE_MAX)];
    let mut quoted = shown.escape_ascii().to_string();
    if token.len() > QUOTE_MAX {
        quoted.push_str("...");
    }
    quoted
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::flat::Aligned;

    #[test]
    fn a_flat_list_keeps_its_figures_and_answers_as_parsed() {
        let parsed = parse("10.0.0.1 nope 10.1.2.3/8 2001:db8::/32");
        let flat = Aligned::lay_out(parsed.flat_len(), |writer| parsed.write_flat(writer));
        let mut reader = FlatReader::new(Arc::new(flat));
        let read = Whitelist::read_flat(&mut reader).unwrap();
        assert!(reader.done());
        assert_eq!((read.entries_v4, read.entries_v6), (2, 1));
        assert_eq!(
            (read.rejected, read.truncated),
            (parsed.rejected, parsed.truncated)
        );
        for addr in ["10.9.9.9", "2001:db8::7", "11.0.0.0"] {
            let addr = addr.parse().unwrap();
            assert_eq!(read.set.contains(addr), parsed.set.contains(addr));
        }
    }

    fn parse(s: &str) -> Whitelist {
        Whitelist::parse([s.as_bytes()])
    }

    #[test]
    fn entry_table() {
        use EntryError::*;
        type Case = (&'static str, Result<(&'static str, bool), EntryError>);
        let cases: &[Case] = &[
            ("192.168.2.165", Ok(("192.168.2.165/32", false))),
            ("10.0.0.0/8", Ok(("10.0.0.0/8", false))),
            ("10.1.2.3/8", Ok(("10.0.0.0/8", true))),
            ("0.0.0.0/0", Ok(("0.0.0.0/0", false))),
            ("::1", Ok(("::1/128", false))),
            ("2001:db8::/32", Ok(("2001:db8::/32", false))),
            ("2001:db8::1/32", Ok(("2001:db8::/32", true))),
            ("::ffff:1.2.3.4", Ok(("::ffff:1.2.3.4/128", false))),
            ("10.0.0.0/33", Err(BadPrefixLength)),
            ("10.0.0.0/", Err(BadPrefixLength)),
            ("10.0.0.0/+8", Err(BadPrefixLength)),
            ("10.0.0.0/8/8", Err(BadPrefixLength)),
            ("::/129", Err(BadPrefixLength)),
            ("/8", Err(NotAnAddress)),
            ("010.1.1.1", Err(NotAnAddress)),
            ("1.2.3", Err(NotAnAddress)),
            ("1.2.3.256", Err(NotAnAddress)),
            ("1.2.3.4:80", Err(NotAnAddress)),
            ("[::1]", Err(NotAnAddress)),
            ("fe80::1%eth0", Err(NotAnAddress)),
            ("localhost", Err(NotAnAddress)),
            ("127.0.0.%d", Err(NotAnAddress)),
        ];
        for (input, expected) in cases {
            let got =
                parse_entry(input.as_bytes()).map(|(net, truncated)| (net.to_string(), truncated));
            let expected = expected.clone().map(|(net, t)| (net.to_string(), t));
            assert_eq!(got, expected, "{input}");
        }
        assert_eq!(parse_entry(b"\xff\xfe"), Err(NotUtf8));
    }

    #[test]
    fn every_separator_splits() {
        let list = parse("1.1.1.1,2.2.2.2;3.3.3.3 4.4.4.4\t5.5.5.5\n6.6.6.6\r\n7.7.7.7 ,; 8.8.8.8");
        assert_eq!(list.entries(), 8);
        assert_eq!(list.rejected_count, 0);
    }

    #[test]
    fn bad_entries_are_skipped_and_counted_and_the_rest_loads() {
        let list = parse("127.0.0.1, bogus, 10.0.0.0/99, ::1, \u{1}x");
        assert_eq!(list.entries_v4, 1);
        assert_eq!(list.entries_v6, 1);
        assert_eq!(list.rejected_count, 3);
        assert_eq!(
            list.rejected[0].to_string(),
            "\"bogus\" (not an IPv4/IPv6 address or CIDR)"
        );
        assert_eq!(
            list.rejected[1].to_string(),
            "\"10.0.0.0/99\" (bad prefix length)"
        );
        assert_eq!(list.rejected[2].entry, "\\x01x");
        assert!(list.set.contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn rejected_samples_are_bounded_but_all_counted() {
        let value = "x ".repeat(1000) + "1.2.3.4";
        let list = parse(&value);
        assert_eq!(list.rejected_count, 1000);
        assert_eq!(list.rejected.len(), REJECTED_SAMPLES);
        assert_eq!(list.entries(), 1);
    }

    #[test]
    fn long_garbage_is_quoted_shortly() {
        let value = "a".repeat(1000);
        let list = parse(&value);
        assert_eq!(list.rejected[0].entry.len(), QUOTE_MAX + 3);
    }

    #[test]
    fn host_bits_are_truncated_and_reported() {
        let list = parse("10.1.2.3/8");
        assert_eq!(list.truncated_count, 1);
        assert_eq!(list.truncated[0].network.to_string(), "10.0.0.0/8");
        assert!(list.set.contains("10.200.0.1".parse().unwrap()));
    }

    #[test]
    fn empty_and_separator_only_values_are_empty_lists() {
        for value in ["", " ", ",,;\n"] {
            let list = parse(value);
            assert_eq!((list.entries(), list.rejected_count), (0, 0), "{value:?}");
            assert!(list.set.is_empty());
        }
    }

    /// Found by fuzzing: `::/80` spans the IPv4-mapped range. Mapped addresses are IPv4 clients,
    /// and an IPv6 network never matches IPv4 clients (`::/0` means every IPv6 client, not
    /// everyone); only mapped entries of /96 or longer are IPv4 entries.
    #[test]
    fn ipv6_networks_spanning_the_mapped_range_do_not_match_ipv4_clients() {
        let list = parse("::/80 ::/0");
        assert!(list.set.contains("::".parse().unwrap()));
        assert!(list.set.contains("2001:db8::1".parse().unwrap()));
        assert!(!list.set.contains("::ffff:255.255.255.255".parse().unwrap()));
        assert!(!list.set.contains("10.1.2.3".parse().unwrap()));
        let mapped = parse("::ffff:0:0/96");
        assert!(mapped.set.contains("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn set_members_each_parse() {
        let list = Whitelist::parse([&b"127.0.0.1"[..], b"::1", b"10.0.0.0/8 11.0.0.1"]);
        assert_eq!(list.entries(), 4);
    }
}
