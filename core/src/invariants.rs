//! What the fuzz targets check of any input, as plain functions: `make fuzz` runs them under
//! libFuzzer (fuzz/fuzz_targets), and `make test` replays the committed corpora through them, so a
//! finding once fixed stays a test. Each panics (an assertion) where gray's parsers break a
//! promise; none may panic for any other reason.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use std::sync::Arc;

use crate::client_ip::{client_ip as derive, parse_addr, parse_hop, Source};
use crate::delta::{Delta, SetAtChange};
use crate::flat::{Aligned, FlatReader};
use crate::idset::{IdSet, MAX_ID_LEN};
use crate::ipset::{canonical_addr, canonical_net, IpSet};
use crate::manifest::{Item, ItemForm, Manifest};
use crate::rules::{lane, schema, KeyData, MintedId, Request};
use crate::value::Members;
use crate::whitelist::{parse_entry, tokens, Whitelist, WhitelistBuilder};

/// Any bytes as a whitelist value: every token is either an entry or a rejection; every accepted
/// entry is matched by the built set, both ends of it (except, for an IPv6 network spanning the
/// IPv4-mapped range, its mapped addresses: those are IPv4 clients).
pub fn whitelist(value: &[u8]) {
    let list = Whitelist::parse([value]);
    assert_eq!(list.entries() + list.rejected_count, tokens(value).count());
    assert!(list.rejected.len() <= list.rejected_count);
    for token in tokens(value) {
        if let Ok((net, _)) = parse_entry(token) {
            for end in [net.network(), net.broadcast()] {
                if is_mapped_in_ipv6_net(net, end) {
                    continue;
                }
                assert!(list.set.contains(end), "{net}: {end}");
            }
        }
    }
}

/// Any bytes as a flat set, as a worker finds them in shared memory: refused, or read as a set
/// whose every answer names a range that holds the address asked; and the same bytes as a
/// whitelist, laid out flat and read back, answer exactly as the built set.
pub fn flat_ipset(data: &[u8]) {
    let mut reader = FlatReader::new(Arc::new(Aligned::copy(data)));
    if let Ok(set) = IpSet::read_flat(&mut reader) {
        for addr in probes(data) {
            if let Some(range) = set.matching_range(addr) {
                // A mapped IPv6 client is the IPv4 client it maps.
                let client = canonical_addr(addr);
                assert!(
                    range.first <= client && client <= range.last,
                    "{addr} in {range}"
                );
            }
        }
    }
    let built = Whitelist::parse([data]).set;
    let flat = Aligned::lay_out(built.flat_len(), |writer| built.write_flat(writer));
    let mut reader = FlatReader::new(Arc::new(flat));
    let read = IpSet::read_flat(&mut reader).expect("a laid out set reads back");
    assert!(reader.done());
    for token in tokens(data) {
        if let Ok((net, _)) = parse_entry(token) {
            for addr in [net.network(), net.broadcast()] {
                assert_eq!(
                    read.matching_range(addr),
                    built.matching_range(addr),
                    "{addr}"
                );
            }
        }
    }
    for addr in probes(data) {
        assert_eq!(
            read.matching_range(addr),
            built.matching_range(addr),
            "{addr}"
        );
    }
}

/// Any bytes as a flat set of ids, as a worker finds them in shared memory: refused, or read as
/// a set whose lookups and listing end, whatever its slots say; and the same bytes as a value of
/// ids, laid out flat and read back, hold exactly the ids of the value.
pub fn flat_idset(data: &[u8]) {
    let mut reader = FlatReader::new(Arc::new(Aligned::copy(data)));
    if let Ok(set) = IdSet::read_flat(&mut reader) {
        for id in tokens(data).take(16) {
            let _ = set.contains(id);
        }
        assert!(set.ids().count() <= data.len() / 8);
    }
    let built = IdSet::parse([data]);
    let flat = Aligned::lay_out(built.flat_len(), |writer| built.write_flat(writer));
    let mut reader = FlatReader::new(Arc::new(flat));
    let read = IdSet::read_flat(&mut reader).expect("a laid out set reads back");
    assert!(reader.done());
    assert_eq!(
        (read.len(), read.rejected_count),
        (built.len(), built.rejected_count)
    );
    for id in tokens(data) {
        assert_eq!(read.contains(id), id.len() <= MAX_ID_LEN, "{id:?}");
    }
    assert_eq!(read.ids().count(), read.len());
    assert!(read.ids().all(|id| read.contains(id)));
}

/// Any bytes as the host store's manifest, as a worker finds them in shared memory: refused, or a
/// manifest that writes back to the same bytes' meaning; and a manifest laid out from them, torn
/// or changed at any byte, is refused rather than read as another.
pub fn manifest(data: &[u8]) {
    let generation = data.first().map_or(0, |&b| u64::from(b));
    if let Ok(read) = Manifest::decode(data, generation) {
        assert_eq!(
            Manifest::decode(&read.encode(), generation).as_ref(),
            Ok(&read)
        );
    }
    let laid_out = Manifest {
        generation,
        items: data
            .chunks(16)
            .map(|chunk| Item {
                key: String::from_utf8_lossy(chunk).into_owned(),
                kind: "set".into(),
                version: chunk.iter().map(|&b| u64::from(b)).sum(),
                bytes: chunk.len(),
                form: if chunk.len() % 2 == 0 {
                    ItemForm::Text
                } else {
                    ItemForm::Whitelist
                },
                first: chunk.len(),
                chunks: 1,
                block: u64::from(chunk[0]),
                len: chunk.len(),
                checksum: 0,
            })
            .collect(),
    };
    let bytes = laid_out.encode();
    assert_eq!(Manifest::decode(&bytes, generation).as_ref(), Ok(&laid_out));
    let at = data.iter().map(|&b| usize::from(b)).sum::<usize>() % bytes.len();
    let mut changed = bytes.clone();
    changed[at] ^= 0x20;
    assert!(
        Manifest::decode(&changed, generation).is_err(),
        "byte {at} changed"
    );
    assert!(
        Manifest::decode(&bytes[..at], generation).is_err(),
        "torn at {at}"
    );
}

/// Any bytes as a SET read whole (the lines of the first half) and a change of it (members of
/// the second half added, every third member read removed): the deltas give the list, version,
/// size and members a whole read of the SET after the change gives.
pub fn set_delta(data: &[u8]) {
    let (before, after) = data.split_at(data.len() / 2);
    let unique = |part: &[u8]| {
        let mut seen = std::collections::HashSet::new();
        part.split(|&b| b == b'\n')
            .filter_map(|m| std::str::from_utf8(m).ok())
            .filter(|m| seen.insert(m.to_string()))
            .map(str::to_string)
            .collect::<Vec<String>>()
    };
    let read = |members: &[String]| {
        let mut read = Members::<WhitelistBuilder>::default();
        for member in members {
            read.add(member.as_bytes());
        }
        read.finish()
    };
    let members = unique(before);
    let remove: Vec<String> = members.iter().step_by(3).cloned().collect();
    let add: Vec<String> = unique(after)
        .into_iter()
        .filter(|m| !members.contains(m))
        .collect();
    let mut now: Vec<String> = members
        .iter()
        .filter(|m| !remove.contains(m))
        .cloned()
        .collect();
    now.extend(add.iter().cloned());
    let mut whole_before = read(&members);
    let mut at = SetAtChange::read(1, &mut whole_before, None).expect("a SET read whole");
    let card = now.len() as u64;
    at.apply(&Delta { add, remove, card })
        .expect("a delta of members there and not there applies");
    let whole = read(&now);
    assert_eq!(
        (at.version(), at.members(), at.bytes()),
        (whole.version, whole.members, whole.bytes)
    );
    let (list, expected) = (at.list(None), whole.into_list());
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
    for addr in probes(data) {
        assert_eq!(
            list.set.matching_range(addr),
            expected.set.matching_range(addr),
            "{addr}"
        );
    }
}

/// Addresses of both families taken from `data`'s bytes.
fn probes(data: &[u8]) -> impl Iterator<Item = IpAddr> + '_ {
    data.chunks(16).flat_map(|chunk| {
        let mut wide = [0u8; 16];
        wide[..chunk.len()].copy_from_slice(chunk);
        let v6 = Ipv6Addr::from(wide);
        let v4 = Ipv4Addr::new(wide[0], wide[1], wide[2], wide[3]);
        [IpAddr::V6(v6), IpAddr::V4(v4)]
    })
}

fn is_mapped_in_ipv6_net(net: IpNet, addr: IpAddr) -> bool {
    let mapped = matches!(addr, IpAddr::V6(a) if a.to_ipv4_mapped().is_some());
    mapped && matches!(canonical_net(net), IpNet::V6(_))
}

/// Any peer and forwarding headers (`peer\ntrusted\nx-forwarded-for\nx-real-ip`): an untrusted
/// peer is always decided by its own address; a trusted peer by its own address or by one hop of
/// the header the decision names, and never by a trusted hop while an untrusted one stands to its
/// right.
pub fn client_ip(data: &[u8]) {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let Some(peer) = parts.next().and_then(parse_addr) else {
        return;
    };
    let trust_peer = parts.next() == Some(b"1");
    let forwarded_for = parts.next();
    let real_ip = parts.next();
    let mut proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("a CIDR")];
    if trust_peer {
        proxies.push(IpNet::from(peer));
    }
    let trusted = IpSet::new(proxies);

    let (client, source) = derive(peer, forwarded_for, real_ip, &trusted);
    if !trusted.contains(peer) {
        assert_eq!((client, source), (peer, Source::Peer));
        return;
    }
    match source {
        Source::Peer | Source::PeerBadHeader => assert_eq!(client, peer),
        Source::RealIp => assert_eq!(real_ip.and_then(parse_hop), Some(client)),
        Source::ForwardedFor => {
            let hops: Vec<_> = forwarded_for
                .unwrap_or_default()
                .split(|&b| b == b',')
                .map(parse_hop)
                .collect();
            let at = hops
                .iter()
                .rposition(|h| *h == Some(client))
                .expect("the client is a hop");
            assert!(hops[at + 1..]
                .iter()
                .flatten()
                .all(|h| trusted.contains(*h)));
        }
    }
}

/// Any bytes as a rule set: a rule set the decoder accepts evaluates for requests built from the
/// same bytes, always to a target of the table.
pub fn rule_set(data: &[u8]) {
    let targets: Vec<String> = ["@prod1", "@prod2-grey", "@canary-b"]
        .map(String::from)
        .to_vec();
    let Ok(rules) = schema::compile(data, &targets) else {
        return;
    };
    let keys: Vec<Option<KeyData>> = rules.keys.iter().map(|_| None).collect();
    // Inputs: slices of the data itself, some absent, some empty.
    let inputs: Vec<Option<&[u8]>> = (0..rules.inputs.len())
        .map(|i| match i % 3 {
            0 => None,
            1 => Some(&data[..data.len().min(i * 7)]),
            _ => Some(&data[data.len() / (i + 1)..]),
        })
        .collect();
    let clients = [
        None,
        Some(IpAddr::V4(Ipv4Addr::new(10, 20, 1, 1))),
        Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    let mint = || MintedId::from_bits(7);
    for client in clients {
        for now in [0.0, 1.8e9, f64::MAX] {
            let request = Request {
                client,
                inputs: &inputs,
                now,
                mint: Some(&mint),
            };
            let decision = rules.evaluate(&request, &keys[..], &mut ());
            assert!(decision.target < targets.len());
            assert!(
                decision.minted.is_none()
                    || rules.anonymous.as_ref().is_some_and(|a| a.input.is_some())
            );
        }
    }
    // The baggage sent on, whatever came in: within the W3C size, ending with the lane's member.
    if let Some(lane) = &rules.lane {
        if let Some(member) = &lane.baggage {
            let mut out = vec![0u8; lane::MAX_BAGGAGE];
            for label in &lane.labels {
                let len = lane::baggage([data, &data[data.len() / 2..]], member, label, &mut out);
                assert!(len <= lane::MAX_BAGGAGE);
                assert!(out[..len].ends_with(format!("{member}={label}").as_bytes()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// A fuzz target's checks.
    type Check = fn(&[u8]);

    /// Every file of the committed seed corpora (and the example rule sets `make fuzz` seeds the
    /// rule set target with), through its target's checks.
    #[test]
    fn the_committed_fuzz_corpora_hold() {
        let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let targets: [(&str, Check); 12] = [
            ("fuzz/corpus/whitelist", super::whitelist),
            ("fuzz/corpus/whitelist", super::flat_ipset),
            ("fuzz/corpus/flat_ipset", super::flat_ipset),
            ("fuzz/corpus/whitelist", super::flat_idset),
            ("fuzz/corpus/flat_idset", super::flat_idset),
            ("fuzz/corpus/client_ip", super::client_ip),
            ("fuzz/corpus/rule_set", super::rule_set),
            ("nginx-conf/rules", super::rule_set),
            ("fuzz/corpus/manifest", super::manifest),
            ("fuzz/corpus/whitelist", super::manifest),
            ("fuzz/corpus/set_delta", super::set_delta),
            ("fuzz/corpus/whitelist", super::set_delta),
        ];
        for (dir, check) in targets {
            let mut replayed = 0;
            for entry in std::fs::read_dir(top.join(dir)).expect(dir) {
                let path = entry.expect(dir).path();
                check(&std::fs::read(&path).expect("a corpus file"));
                replayed += 1;
            }
            assert!(replayed > 0, "{dir} holds no input");
        }
    }
}
