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

/// Below this many ranges a plain binary search beats the bucket index (and saves its memory).
const BUCKET_INDEX_MIN_RANGES: usize = 1024;
/// Ranges per bucket, on average, when the starts spread evenly.
const RANGES_PER_BUCKET: usize = 2;

/// An address key of one family: an unsigned integer.
trait Key: Copy + Ord + Default {
    /// `self - base`, shifted right by `shift`, as a bucket number (saturated).
    fn bucket(self, base: Self, shift: u32) -> usize;
    /// The bits `self - base` needs.
    fn span_bits(self, base: Self) -> u32;
}

impl Key for u32 {
    #[inline]
    fn bucket(self, base: u32, shift: u32) -> usize {
        ((self - base) >> shift) as usize
    }
    fn span_bits(self, base: u32) -> u32 {
        32 - (self - base).leading_zeros()
    }
}

impl Key for u128 {
    #[inline]
    fn bucket(self, base: u128, shift: u32) -> usize {
        usize::try_from((self - base) >> shift).unwrap_or(usize::MAX)
    }
    fn span_bits(self, base: u128) -> u32 {
        128 - (self - base).leading_zeros()
    }
}

/// Disjoint inclusive ranges `ranges[i][0]..=ranges[i][1]`, sorted by start.
#[derive(Debug, Clone, Default)]
struct RangeTable<T> {
    ranges: Vec<[T; 2]>,
    /// `buckets[b]` is the index of the first range whose start lies in bucket `b` or later
    /// (bucket: `(start - base) >> shift`), one more entry than there are buckets; empty when the
    /// table is small.
    buckets: Vec<u32>,
    /// The first range's start.
    base: T,
    shift: u32,
}

impl<T: Key> RangeTable<T> {
    fn build(mut ranges: Vec<(T, T)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<[T; 2]> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                // Only overlapping ranges merge, so an entry that overlaps nothing stays itself and
                // `decide()` can name it.
                Some([_, last_end]) if start <= *last_end => {
                    if end > *last_end {
                        *last_end = end;
                    }
                }
                _ => merged.push([start, end]),
            }
        }
        merged.shrink_to_fit();
        let mut table = RangeTable {
            base: merged.first().map_or_else(T::default, |r| r[0]),
            ranges: merged,
            buckets: Vec::new(),
            shift: 0,
        };
        if table.ranges.len() >= BUCKET_INDEX_MIN_RANGES {
            table.index();
        }
        table
    }

    /// Builds the bucket index: a power of two of buckets, spread over the span from the first
    /// start to the last, so that every start's bucket is below their count.
    fn index(&mut self) {
        let count = (self.ranges.len() / RANGES_PER_BUCKET).next_power_of_two();
        let last_start = self.ranges[self.ranges.len() - 1][0];
        self.shift = last_start
            .span_bits(self.base)
            .saturating_sub(count.trailing_zeros());
        let mut buckets = Vec::with_capacity(count + 1);
        let mut i = 0usize;
        for bucket in 0..=count {
            while i < self.ranges.len() && self.ranges[i][0].bucket(self.base, self.shift) < bucket
            {
                i += 1;
            }
            buckets.push(i as u32);
        }
        self.buckets = buckets;
    }

    /// The range holding `key`, as its index.
    #[inline]
    fn find(&self, key: T) -> Option<usize> {
        if key < self.base {
            return None;
        }
        let (lo, hi) = if self.buckets.is_empty() {
            (0, self.ranges.len())
        } else {
            // A key past the last bucket is past every start: the last bucket holds its candidate.
            let bucket = key.bucket(self.base, self.shift).min(self.buckets.len() - 2);
            (
                self.buckets[bucket] as usize,
                self.buckets[bucket + 1] as usize,
            )
        };
        // Ranges left of `lo` all start in earlier buckets, so when no range of this bucket starts
        // at or before `key`, the candidate is the last range of an earlier bucket.
        let after = lo + self.ranges[lo..hi].partition_point(|r| r[0] <= key);
        let candidate = after.checked_sub(1)?;
        (self.ranges[candidate][1] >= key).then_some(candidate)
    }

    fn len(&self) -> usize {
        self.ranges.len()
    }

    fn heap_bytes(&self) -> usize {
        self.ranges.capacity() * std::mem::size_of::<[T; 2]>()
            + self.buckets.capacity() * std::mem::size_of::<u32>()
    }
}

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
}

/// An [`IpSet`] being filled: each network kept as the range of its family, nothing else.
#[derive(Debug, Default)]
pub struct IpSetBuilder {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpSetBuilder {
    /// Adds `net` as its canonical form ([`canonical_net`]), which it returns.
    pub fn insert(&mut self, net: IpNet) -> IpNet {
        let net = canonical_net(net);
        match net {
            IpNet::V4(n) => self
                .v4
                .push((u32::from(n.network()), u32::from(n.broadcast()))),
            IpNet::V6(n) => self
                .v6
                .push((u128::from(n.network()), u128::from(n.broadcast()))),
        }
        net
    }

    pub fn build(self) -> IpSet {
        IpSet {
            v4: RangeTable::build(self.v4),
            v6: RangeTable::build(self.v6),
        }
    }
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
    use super::*;

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
