//! Any bytes as a whitelist value: never a panic; every token is either an entry or a rejection;
//! every accepted entry is matched by the built set, both ends of it (except, for an IPv6 network
//! spanning the IPv4-mapped range, its mapped addresses: those are IPv4 clients).
#![no_main]

use std::net::IpAddr;

use gray_core::ipset::canonical_net;
use gray_core::whitelist::{parse_entry, tokens, Whitelist};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &[u8]| {
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
});

fn is_mapped_in_ipv6_net(net: IpNet, addr: IpAddr) -> bool {
    let mapped = matches!(addr, IpAddr::V6(a) if a.to_ipv4_mapped().is_some());
    mapped && matches!(canonical_net(net), IpNet::V6(_))
}

