//! Any peer and forwarding headers (input: `peer\ntrusted\nx-forwarded-for\nx-real-ip`): never a
//! panic; an untrusted peer is always decided by its own address; a trusted peer by its own
//! address or by one hop of the header the decision names, and never by a trusted hop while an
//! untrusted one stands to its right.
#![no_main]

use gray_core::client_ip::{client_ip, parse_addr, parse_hop, Source};
use gray_core::ipset::IpSet;
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let Some(peer) = parts.next().and_then(parse_addr) else {
        return;
    };
    let trust_peer = parts.next() == Some(b"1");
    let forwarded_for = parts.next();
    let real_ip = parts.next();
    let mut proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
    if trust_peer {
        proxies.push(IpNet::from(peer));
    }
    let trusted = IpSet::new(proxies);

    let (client, source) = client_ip(peer, forwarded_for, real_ip, &trusted);
    if !trusted.contains(peer) {
        assert_eq!((client, source), (peer, Source::Peer));
        return;
    }
    match source {
        Source::Peer | Source::PeerBadHeader => assert_eq!(client, peer),
        Source::RealIp => assert_eq!(real_ip.and_then(parse_hop), Some(client)),
        Source::ForwardedFor => {
            let hops: Vec<_> = forwarded_for.unwrap().split(|&b| b == b',').map(parse_hop).collect();
            let at = hops.iter().rposition(|h| *h == Some(client)).expect("client is a hop");
            assert!(hops[at + 1..].iter().flatten().all(|h| trusted.contains(*h)));
        }
    }
});
