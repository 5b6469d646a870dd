//! A set of IPv4 and IPv6 addresses built from hosts and CIDRs, with lookups that stay fast at
//! millions of entries: overlapping networks are merged into disjoint ranges kept sorted, each
//! range's first and last address side by side, and a bucket index spread over the span the
//! ranges' starts cover narrows each search to a range or two: a lookup reads one bucket and one
//! cache line of ranges, whatever the family and however the list clusters.
//!
//! Immutable once built; building is done off the request path.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::flat::{FlatError, FlatReader, FlatWriter};

mod table;

use table::{flat_len, Net, RangeTable, Shape};

/// An inclusive range of addresses that matched, for explaining a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchedRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl fmt::Display for MatchedRange {
    /// A host prints as itself, an exact network as CIDR, anything else as `first-last`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (first, last, bits) = match (self.first, self.last) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return write!(f, "{}-{}", self.first, self.last),
        };
        if first == last {
            return write!(f, "{}", self.first);
        }
        let span = last - first;
        let is_network = span
            .checked_add(1)
            .is_none_or(|size| size.is_power_of_two())
            && first & span == 0;
        if is_network {
            let prefix = bits - (span.count_ones());
            write!(f, "{}/{}", self.first, prefix)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Hosts and networks of both families. IPv4-mapped IPv6 addresses are stored and looked up as
/// IPv4, so `::ffff:10.0.0.1` and `10.0.0.1` are the same client.
#[derive(Debug, Clone, Default)]
pub struct IpSet {
    v4: RangeTable<u32>,
    v6: RangeTable<u128>,
}

impl IpSet {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut builder = IpSetBuilder::default();
        for net in nets {
            builder.insert(net);
        }
        builder.build()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.len() == 0 && self.v6.len() == 0
    }

    #[inline]
    pub fn contains(&self, addr: IpAddr) -> bool {
        match canonical_addr(addr) {
            IpAddr::V4(a) => self.v4.find(u32::from(a)).is_some(),
            IpAddr::V6(a) => self.v6.find(u128::from(a)).is_some(),
        }
    }

    /// The stored range that holds `addr`.
    pub fn matching_range(&self, addr: IpAddr) -> Option<MatchedRange> {
        match canonical_addr(addr) {
            IpAddr::V4(a) => self.v4.find(u32::from(a)).map(|i| MatchedRange {
                first: Ipv4Addr::from(self.v4.ranges[i][0]).into(),
                last: Ipv4Addr::from(self.v4.ranges[i][1]).into(),
            }),
            IpAddr::V6(a) => self.v6.find(u128::from(a)).map(|i| MatchedRange {
                first: Ipv6Addr::from(self.v6.ranges[i][0]).into(),
                last: Ipv6Addr::from(self.v6.ranges[i][1]).into(),
            }),
        }
    }

    /// Memory held by the lookup tables, for status and the memory budget.
    pub fn heap_bytes(&self) -> usize {
        self.v4.heap_bytes() + self.v6.heap_bytes()
    }

    /// The bytes [`IpSet::write_flat`] lays out.
    pub fn flat_len(&self) -> usize {
        self.v4.flat_len() + self.v6.flat_len()
    }

    /// Lays the set out as flat records (see [`crate::flat`]).
    pub fn write_flat(&self, writer: &mut FlatWriter) {
        self.v4.write_flat(writer, 0);
        self.v6.write_flat(writer, 0x10);
    }

    /// The set [`IpSet::write_flat`] laid out, read in place; an error for bytes that are not
    /// one, whatever they hold.
    pub fn read_flat(reader: &mut FlatReader) -> Result<IpSet, FlatError> {
        Ok(IpSet {
            v4: RangeTable::read_flat(reader, 0)?,
            v6: RangeTable::read_flat(reader, 0x10)?,
        })
    }
}

/// An [`IpSet`] being filled: each network kept as its start and prefix length, nothing else.
#[derive(Debug, Clone, Default)]
pub struct IpSetBuilder {
    v4: Vec<Net<u32>>,
    v6: Vec<Net<u128>>,
    /// How many leading ranges of each family the last sort left in order: a change's sort
    /// merges in what follows without a pass over a million ranges to find it.
    sorted: (usize, usize),
}

impl IpSetBuilder {
    /// Adds `net` as its canonical form ([`canonical_net`]), which it returns.
    pub fn insert(&mut self, net: IpNet) -> IpNet {
        let net = canonical_net(net);
        match net {
            IpNet::V4(n) => self.v4.push(net4(n)),
            IpNet::V6(n) => self.v6.push(net6(n)),
        }
        net
    }

    pub fn build(mut self) -> IpSet {
        self.sort();
        IpSet {
            v4: RangeTable::build_sorted(&self.v4),
            v6: RangeTable::build_sorted(&self.v6),
        }
    }

    /// The set of the ranges added so far, sorted ([`IpSetBuilder::sort`]), measured to be laid
    /// out flat as [`IpSet::write_flat`] would once built: a large list changed by a few entries
    /// goes into flat memory in one pass, with no table of its size built on the way.
    pub fn sorted_layout(&self) -> SortedLayout<'_> {
        debug_assert!(self.v4.is_sorted() && self.v6.is_sorted());
        SortedLayout {
            v4: (&self.v4, Shape::of(&self.v4)),
            v6: (&self.v6, Shape::of(&self.v6)),
        }
    }

    /// Sorts the ranges: kept sorted, ranges added since sort as a run of their own, in linear
    /// time, and the table built from them does not sort again.
    pub fn sort(&mut self) {
        sort_kept(&mut self.v4, &mut self.sorted.0);
        sort_kept(&mut self.v6, &mut self.sorted.1);
    }

    /// Takes one instance of each of `nets` out, in one pass over the ranges (which it leaves
    /// sorted); false, and nothing taken, when one is not there.
    pub fn remove(&mut self, nets: &[IpNet]) -> bool {
        if nets.is_empty() {
            return true;
        }
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            match canonical_net(*net) {
                IpNet::V4(n) => v4.push(net4(n)),
                IpNet::V6(n) => v6.push(net6(n)),
            }
        }
        self.sort();
        v4.sort_unstable();
        v6.sort_unstable();
        if !holds_all(&self.v4, &v4) || !holds_all(&self.v6, &v6) {
            return false;
        }
        take_out(&mut self.v4, v4);
        take_out(&mut self.v6, v6);
        self.sorted = (self.v4.len(), self.v6.len());
        true
    }
}

fn net4(n: ipnet::Ipv4Net) -> Net<u32> {
    Net::new(n.network().into(), n.prefix_len())
}

fn net6(n: ipnet::Ipv6Net) -> Net<u128> {
    Net::new(n.network().into(), n.prefix_len())
}

/// A builder's sorted networks and the shape of the table they make, to be laid out flat.
pub struct SortedLayout<'a> {
    v4: (&'a [Net<u32>], Shape<u32>),
    v6: (&'a [Net<u128>], Shape<u128>),
}

impl SortedLayout<'_> {
    /// The bytes [`SortedLayout::write_flat`] lays out.
    pub fn flat_len(&self) -> usize {
        flat_len::<u32>(self.v4.1.ranges, self.v4.1.buckets)
            + flat_len::<u128>(self.v6.1.ranges, self.v6.1.buckets)
    }

    pub fn write_flat(&self, writer: &mut FlatWriter) {
        RangeTable::write_flat_sorted(self.v4.0, &self.v4.1, writer, 0);
        RangeTable::write_flat_sorted(self.v6.0, &self.v6.1, writer, 0x10);
    }
}

/// Sorts `ranges`, the first `sorted` of which are in order: the ranges added since are sorted
/// on their own and merged in from the back, in place, so that a change of a few entries to a
/// large list costs a move of the ranges after them, not a sort of a million; `sorted` then
/// counts them all.
fn sort_kept<T: Ord + Copy>(ranges: &mut Vec<T>, sorted: &mut usize) {
    let kept = (*sorted).min(ranges.len());
    *sorted = ranges.len();
    if kept == ranges.len() {
        return;
    }
    if kept == 0 {
        ranges.sort_unstable();
        return;
    }
    let mut added = ranges.split_off(kept);
    added.sort_unstable();
    let (mut kept, mut left) = (ranges.len(), added.len());
    ranges.resize(kept + left, added[0]);
    for at in (0..ranges.len()).rev() {
        if left == 0 {
            break;
        }
        if kept > 0 && ranges[kept - 1] > added[left - 1] {
            ranges[at] = ranges[kept - 1];
            kept -= 1;
        } else {
            ranges[at] = added[left - 1];
            left -= 1;
        }
    }
}

/// Whether sorted `ranges` hold every one of sorted `gone`, as many times as it is there.
fn holds_all<T: Ord + Copy>(ranges: &[T], gone: &[T]) -> bool {
    gone.chunk_by(|a, b| a == b).all(|same| {
        let at = ranges.partition_point(|r| *r < same[0]);
        ranges[at..].iter().take_while(|r| **r == same[0]).count() >= same.len()
    })
}

/// Takes one instance of each of sorted `gone` out of sorted `ranges`, in place.
fn take_out<T: Ord + Copy>(ranges: &mut Vec<T>, gone: Vec<T>) {
    if gone.is_empty() {
        return;
    }
    let mut gone = gone.into_iter().peekable();
    ranges.retain(|range| {
        if gone.peek() == Some(range) {
            gone.next();
            false
        } else {
            true
        }
    });
}

/// `::ffff:a.b.c.d` becomes `a.b.c.d`; everything else is unchanged.
#[inline]
pub fn canonical_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => addr,
        },
        v4 => v4,
    }
}

/// An IPv4-mapped network (`::ffff:10.0.0.0/104`) becomes its IPv4 network (`10.0.0.0/8`).
/// A mapped prefix shorter than /96 spans more than the mapped space and stays IPv6.
pub fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net {
        if n.prefix_len() >= 96 {
            if let Some(v4) = n.network().to_ipv4_mapped() {
                if let Ok(mapped) = ipnet::Ipv4Net::new(v4, n.prefix_len() - 96) {
                    return IpNet::V4(mapped);
                }
            }
        }
    }
    net
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::flat::{Aligned, Backing};

    fn set(entries: &[&str]) -> IpSet {
        IpSet::new(entries.iter().map(|e| {
            e.parse::<IpNet>()
                .unwrap_or_else(|_| IpNet::from(e.parse::<IpAddr>().unwrap()))
        }))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn exact_membership_not_prefix_or_substring() {
        let s = set(&["127.0.0.10", "10.141.1.1"]);
        assert!(s.contains(ip("127.0.0.10")));
        assert!(!s.contains(ip("127.0.0.1")));
        assert!(!s.contains(ip("10.1.1.1")));
        assert!(!s.contains(ip("127.0.0.100")));
    }

    #[test]
    fn cidrs_of_both_families() {
        let s = set(&["10.0.0.0/8", "2001:db8::/32", "192.168.1.0/24"]);
        for yes in [
            "10.0.0.0",
            "10.255.255.255",
            "192.168.1.77",
            "2001:db8::1",
            "2001:db8:ffff::",
        ] {
            assert!(s.contains(ip(yes)), "{yes}");
        }
        for no in [
            "11.0.0.0",
            "9.255.255.255",
            "192.168.2.1",
            "2001:db9::",
            "::1",
        ] {
            assert!(!s.contains(ip(no)), "{no}");
        }
    }

    #[test]
    fn mapped_ipv6_clients_match_ipv4_entries_and_back() {
        let s = set(&["192.168.2.165", "::ffff:10.0.0.0/104"]);
        assert!(s.contains(ip("::ffff:192.168.2.165")));
        assert!(s.contains(ip("10.9.8.7")));
        assert!(s.contains(ip("::ffff:10.9.8.7")));
    }

    #[test]
    fn nested_and_overlapping_networks_merge() {
        let s = set(&["10.1.0.0/16", "10.0.0.0/8", "10.1.2.3", "10.200.0.0/16"]);
        assert!(s.contains(ip("10.2.0.0")));
        assert!(s.contains(ip("10.1.2.3")));
        assert_eq!(s.v4.len(), 1);
        assert_eq!(
            s.matching_range(ip("10.5.5.5")).unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn adjacent_entries_stay_apart_so_reasons_name_them() {
        let s = set(&["127.0.0.1", "127.0.0.2"]);
        assert_eq!(
            s.matching_range(ip("127.0.0.2")).unwrap().to_string(),
            "127.0.0.2"
        );
    }

    #[test]
    fn range_display() {
        let r = |a: &str, b: &str| {
            MatchedRange {
                first: ip(a),
                last: ip(b),
            }
            .to_string()
        };
        assert_eq!(r("0.0.0.0", "255.255.255.255"), "0.0.0.0/0");
        assert_eq!(r("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), "::/0");
        assert_eq!(r("10.0.0.0", "10.0.0.255"), "10.0.0.0/24");
        assert_eq!(r("10.0.0.1", "10.0.0.4"), "10.0.0.1-10.0.0.4");
        assert_eq!(r("10.0.0.2", "10.0.0.5"), "10.0.0.2-10.0.0.5");
    }

    /// Large tables use the bucket index; check it against a plain scan, including ranges that
    /// start in one bucket and end in a later one.
    #[test]
    fn bucket_index_agrees_with_linear_scan() {
        let mut nets = Vec::new();
        let mut x: u32 = 12345;
        for i in 0..5000u32 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let prefix = [32, 32, 24, 16, 12][(i % 5) as usize];
            nets.push(IpNet::V4(
                ipnet::Ipv4Net::new(Ipv4Addr::from(x), prefix)
                    .unwrap()
                    .trunc(),
            ));
        }
        let s = IpSet::new(nets.clone());
        assert!(!s.v4.buckets.is_empty());
        let mut probe: u32 = 99;
        for _ in 0..4000 {
            probe = probe.wrapping_mul(22_695_477).wrapping_add(1);
            let addr = IpAddr::V4(Ipv4Addr::from(probe));
            let expected = nets.iter().any(|n| n.contains(&addr));
            assert_eq!(s.contains(addr), expected, "{addr}");
        }
        for n in &nets {
            assert!(s.contains(n.network()) && s.contains(n.broadcast()), "{n}");
        }
    }

    fn random_nets(count: u32) -> Vec<IpNet> {
        let mut x: u128 = 5;
        (0..count)
            .map(|i| {
                x = x.wrapping_mul(0x2d99_787926d4_6932a4c1).wrapping_add(1);
                if i % 2 == 0 {
                    let prefix = [32, 32, 24, 16][(i % 4) as usize];
                    IpNet::V4(
                        ipnet::Ipv4Net::new(Ipv4Addr::from((x >> 96) as u32), prefix)
                            .unwrap()
                            .trunc(),
                    )
                } else {
                    let prefix = [128, 128, 64, 48][(i % 4) as usize];
                    IpNet::V6(
                        ipnet::Ipv6Net::new(Ipv6Addr::from(x), prefix)
                            .unwrap()
                            .trunc(),
                    )
                }
            })
            .collect()
    }

    fn flat(set: &IpSet) -> Vec<u8> {
        Aligned::lay_out(set.flat_len(), |writer| set.write_flat(writer))
            .bytes()
            .to_vec()
    }

    fn read(bytes: &[u8]) -> Result<IpSet, FlatError> {
        let mut reader = FlatReader::new(Arc::new(Aligned::copy(bytes)));
        let set = IpSet::read_flat(&mut reader)?;
        assert!(reader.done());
        Ok(set)
    }

    #[test]
    fn a_flat_set_read_in_place_answers_as_the_built_one() {
        for count in [0, 3, 5000] {
            let nets = random_nets(count);
            let built = IpSet::new(nets.clone());
            let shared = read(&flat(&built)).unwrap();
            assert_eq!(shared.heap_bytes(), built.heap_bytes());
            let mut probe: u128 = 17;
            for _ in 0..2000 {
                probe = probe.wrapping_mul(0x5851_f42d_4c95_7f2d).wrapping_add(3);
                for addr in [
                    IpAddr::V6(Ipv6Addr::from(probe)),
                    IpAddr::V4(Ipv4Addr::from((probe >> 64) as u32)),
                ] {
                    assert_eq!(
                        shared.matching_range(addr),
                        built.matching_range(addr),
                        "{addr}"
                    );
                }
            }
            for n in &nets {
                assert!(
                    shared.contains(n.network()) && shared.contains(n.broadcast()),
                    "{n}"
                );
            }
        }
    }

    #[test]
    fn a_flat_set_whose_index_points_past_its_ranges_is_refused() {
        let bytes = flat(&IpSet::new(random_nets(5000)));
        let v4 = IpSet::new(random_nets(5000)).v4;
        let ranges_at = 16 * 4 + 16;
        let buckets_at = ranges_at + v4.ranges.bytes() + 16;
        let word = |bytes: &mut Vec<u8>, at: usize, value: u32| {
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes())
        };
        let invalid = |what| Err(FlatError::Invalid { what });
        let mut backwards = bytes.clone();
        word(&mut backwards, buckets_at + 4 * 7, v4.buckets[8] + 1);
        assert_eq!(
            read(&backwards).map(|_| ()),
            invalid("a bucket index that points past its ranges")
        );
        let mut past = bytes.clone();
        let last = buckets_at + 4 * (v4.buckets.len() - 1);
        word(&mut past, last, v4.ranges.len() as u32 + 1);
        assert_eq!(
            read(&past).map(|_| ()),
            invalid("a bucket index that points past its ranges")
        );
        let mut shift = bytes.clone();
        word(&mut shift, 16 * 3, 32);
        assert_eq!(
            read(&shift).map(|_| ()),
            invalid("a shift as wide as the family")
        );
        for cut in [0, 17, bytes.len() / 2, bytes.len() - 16] {
            assert!(read(&bytes[..cut]).is_err(), "{cut}");
        }
    }

    /// Ranges out of order or reversed (bytes the checksum would have refused) are read, and a
    /// lookup still names only a range that holds the address.
    #[test]
    fn a_flat_set_with_ranges_out_of_order_answers_only_with_ranges_that_hold_the_address() {
        let set = IpSet::new(random_nets(5000));
        let v4 = &set.v4;
        let ranges_at = 16 * 4 + 16;
        let mut bytes = flat(&set);
        let word = |bytes: &mut Vec<u8>, at: usize, value: u32| {
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes())
        };
        word(&mut bytes, ranges_at + 8, v4.ranges[0][0]);
        word(&mut bytes, ranges_at + 12, v4.ranges[0][1]);
        word(&mut bytes, ranges_at + 20, v4.ranges[3][0] - 1);
        let read = read(&bytes).unwrap();
        for r in v4.ranges.iter().take(50) {
            for key in [r[0], r[1], r[0].wrapping_sub(1), r[1].wrapping_add(1)] {
                let addr = IpAddr::V4(Ipv4Addr::from(key));
                if let Some(range) = read.matching_range(addr) {
                    assert!(
                        range.first <= addr && addr <= range.last,
                        "{addr} in {range}"
                    );
                }
            }
        }
    }

    #[test]
    fn ranges_added_to_a_sorted_builder_merge_in_and_a_removal_takes_one_instance_or_none() {
        let net = |e: &str| IpNet::from(e.parse::<IpAddr>().unwrap());
        let mut builder = IpSetBuilder::default();
        for e in ["10.0.0.5", "10.0.0.1", "10.0.0.9", "10.0.0.1", "::2"] {
            builder.insert(net(e));
        }
        builder.sort();
        for e in ["10.0.0.3", "10.0.0.0", "10.0.0.7", "10.0.0.1", "::1"] {
            builder.insert(net(e));
        }
        builder.sort();
        let v4 = |b: &IpSetBuilder| {
            b.v4.iter()
                .map(|net| net.start() & 0xff)
                .collect::<Vec<_>>()
        };
        assert_eq!(v4(&builder), [0, 1, 1, 1, 3, 5, 7, 9]);
        assert!(builder.v6.is_sorted() && builder.v6.len() == 2);
        assert!(!builder.remove(&[net("10.0.0.2")]), "not there");
        assert!(
            !builder.remove(&[net("10.0.0.9"), net("10.0.0.9"), net("::1")]),
            "one 9 only"
        );
        assert_eq!(v4(&builder), [0, 1, 1, 1, 3, 5, 7, 9], "nothing taken");
        assert_eq!(builder.v6.len(), 2);
        assert!(builder.remove(&[net("10.0.0.1"), net("::1"), net("10.0.0.1")]));
        assert_eq!(v4(&builder), [0, 1, 3, 5, 7, 9]);
        assert_eq!(builder.v6.len(), 1);
        let layout = builder.sorted_layout();
        let flat = Aligned::lay_out(layout.flat_len(), |writer| layout.write_flat(writer));
        let read = IpSet::read_flat(&mut FlatReader::new(Arc::new(flat))).unwrap();
        assert!(read.contains(ip("10.0.0.1")) && !read.contains(ip("10.0.0.2")));
        assert!(read.contains(ip("::2")) && !read.contains(ip("::1")));
    }

    #[test]
    fn a_kept_network_is_packed_and_ordered_as_its_range() {
        assert_eq!(std::mem::size_of::<Net<u32>>(), 5);
        assert_eq!(std::mem::size_of::<Net<u128>>(), 17);
        let mut nets: Vec<Net<u32>> = (0..500u32)
            .map(|i| {
                let prefix = [32, 24, 30, 0, 16][(i % 5) as usize];
                let start =
                    i.wrapping_mul(0x9e37_79b9) & !u32::MAX.checked_shr(prefix).unwrap_or(0);
                Net::new(start, prefix as u8)
            })
            .collect();
        nets.sort_unstable();
        let ranges: Vec<(u32, u32)> = nets.iter().map(|net| net.range()).collect();
        assert!(ranges.is_sorted());
        assert_eq!(Net::new(10u32 << 24, 8).range(), (10 << 24, (11 << 24) - 1));
        assert_eq!(Net::new(0u128, 0).range(), (0, u128::MAX));
    }

    /// IPv6 lists cluster in a few prefixes (2000::/3 here, one /32 below): the index spreads
    /// over the span the starts cover, so it still narrows the search, and keys below the first
    /// start or past the last are answered right.
    #[test]
    fn the_index_spreads_over_the_span_of_a_clustered_ipv6_list() {
        for top in [0x2000u128 << 112, 0x2001_0db8u128 << 96] {
            let mut nets = Vec::new();
            let mut x: u128 = 7;
            for i in 0..3000u32 {
                x = x.wrapping_mul(0x2d99_787926d4_6932a4c1).wrapping_add(1);
                let addr = top | (x >> if top >> 96 == 0x2001_0db8 { 32 } else { 3 });
                let prefix = [128, 128, 64, 48][(i % 4) as usize];
                nets.push(IpNet::V6(
                    ipnet::Ipv6Net::new(Ipv6Addr::from(addr), prefix)
                        .unwrap()
                        .trunc(),
                ));
            }
            let s = IpSet::new(nets.clone());
            assert!(!s.v6.buckets.is_empty());
            assert!(s.v6.shift > 0);
            let mut probe: u128 = 99;
            for _ in 0..4000 {
                probe = probe.wrapping_mul(0x5851_f42d_4c95_7f2d).wrapping_add(3);
                for addr in [top | (probe >> 3), top | (probe >> 32), probe] {
                    let addr = IpAddr::V6(Ipv6Addr::from(addr));
                    let expected = nets.iter().any(|n| n.contains(&addr));
                    assert_eq!(s.contains(addr), expected, "{addr}");
                }
            }
            for n in &nets {
                assert!(s.contains(n.network()) && s.contains(n.broadcast()), "{n}");
            }
            assert!(!s.contains(ip("::")) && !s.contains(ip("ffff::")));
        }
    }
}
