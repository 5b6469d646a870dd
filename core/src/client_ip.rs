//! Which address a request is decided for. By default the peer (`$remote_addr`, so nginx's realip
//! module keeps working); with trusted proxies configured, a trusted peer's `X-Forwarded-For`
//! (walked right to left past trusted hops) or `X-Real-IP`. Headers from any other peer are never
//! read: anyone can write them.

use std::net::{IpAddr, SocketAddr};

use crate::ipset::{canonical_addr, IpSet};

/// Parses an address as nginx prints `$remote_addr` (and as proxies write headers): surrounding
/// blanks ignored, IPv4-mapped IPv6 folded to IPv4.
#[inline]
pub fn parse_addr(bytes: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(bytes.trim_ascii()).ok()?;
    text.parse::<IpAddr>().ok().map(canonical_addr)
}

/// Decodes `$binary_remote_addr`: 4 bytes for IPv4, 16 for IPv6 (anything else, e.g. the empty
/// value of a unix-socket peer, is not an IP client). The request path reads this form because it
/// needs no text parsing.
#[inline]
pub fn binary_addr(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes)
        .ok()
        .map(|v6| canonical_addr(IpAddr::from(v6)))
}

/// One forwarded hop: an address, optionally with a port (`1.2.3.4:80`, `[::1]:80`, `[::1]`),
/// which some proxies add.
pub fn parse_hop(bytes: &[u8]) -> Option<IpAddr> {
    if let Some(addr) = parse_addr(bytes) {
        return Some(addr);
    }
    let text = std::str::from_utf8(bytes.trim_ascii()).ok()?;
    if let Ok(sock) = text.parse::<SocketAddr>() {
        return Some(canonical_addr(sock.ip()));
    }
    let bracketed = text.strip_prefix('[')?.strip_suffix(']')?;
    parse_addr(bracketed.as_bytes())
}

/// Where the decided address came from, for explaining a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Peer,
    ForwardedFor,
    RealIp,
    /// The peer is trusted but its header could not be parsed; like nginx's realip module, the
    /// peer address is kept.
    PeerBadHeader,
}

/// Which forwarding header a trusted proxy's client is read from (the `real_ip_header` option,
/// as nginx's realip module has one). A client can write either header itself: behind a proxy
/// that sets X-Real-IP and passes the client's own X-Forwarded-For through, the default would
/// let the client choose its address; name the header that proxy sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RealIpHeader {
    /// `X-Forwarded-For`, else `X-Real-IP` when there is none (the default).
    #[default]
    Either,
    /// `X-Forwarded-For` only.
    ForwardedFor,
    /// `X-Real-IP` only.
    RealIp,
}

impl RealIpHeader {
    /// Of the two headers a request brings, the ones to read.
    #[inline]
    pub fn pick<'a>(
        self,
        forwarded_for: Option<&'a [u8]>,
        real_ip: Option<&'a [u8]>,
    ) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
        match self {
            RealIpHeader::Either => (forwarded_for, real_ip),
            RealIpHeader::ForwardedFor => (forwarded_for, None),
            RealIpHeader::RealIp => (None, real_ip),
        }
    }
}

/// The client address for a request from `peer`.
pub fn client_ip(
    peer: IpAddr,
    forwarded_for: Option<&[u8]>,
    real_ip: Option<&[u8]>,
    trusted: &IpSet,
) -> (IpAddr, Source) {
    if trusted.is_empty() || !trusted.contains(peer) {
        return (peer, Source::Peer);
    }
    if let Some(header) = forwarded_for.filter(|h| !h.trim_ascii().is_empty()) {
        let mut leftmost = None;
        for hop in header.rsplit(|&b| b == b',') {
            if hop.trim_ascii().is_empty() {
                continue;
            }
            let Some(addr) = parse_hop(hop) else {
                return (peer, Source::PeerBadHeader);
            };
            if !trusted.contains(addr) {
                return (addr, Source::ForwardedFor);
            }
            leftmost = Some(addr);
        }
        // Every hop is a trusted proxy: the leftmost is as close to the client as we can see.
        return match leftmost {
            Some(addr) => (addr, Source::ForwardedFor),
            None => (peer, Source::PeerBadHeader),
        };
    }
    if let Some(header) = real_ip {
        return match parse_hop(header) {
            Some(addr) => (addr, Source::RealIp),
            None => (peer, Source::PeerBadHeader),
        };
    }
    (peer, Source::Peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    fn trusted(nets: &[&str]) -> IpSet {
        IpSet::new(nets.iter().map(|n| n.parse::<IpNet>().unwrap()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_remote_addr_forms() {
        assert_eq!(parse_addr(b"127.0.0.1"), Some(ip("127.0.0.1")));
        assert_eq!(parse_addr(b"::ffff:127.0.0.1"), Some(ip("127.0.0.1")));
        assert_eq!(parse_addr(b" ::1 "), Some(ip("::1")));
        assert_eq!(parse_addr(b"unix:"), None);
        assert_eq!(parse_addr(b""), None);
    }

    #[test]
    fn decodes_binary_remote_addr() {
        assert_eq!(binary_addr(&[127, 0, 0, 1]), Some(ip("127.0.0.1")));
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(binary_addr(&mapped), Some(ip("10.1.2.3")));
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(binary_addr(&v6), Some(ip("::1")));
        assert_eq!(binary_addr(b""), None);
        assert_eq!(binary_addr(b"127.0.0.1"), None);
    }

    #[test]
    fn derivation_table() {
        let proxies = trusted(&["10.0.0.0/8", "::1/128"]);
        let none = IpSet::default();
        use Source::*;
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, Option<&str>, Option<&str>, &IpSet, (&str, Source))] = &[
            // No trusted proxies: headers are never read.
            (
                "1.1.1.1",
                Some("2.2.2.2"),
                Some("3.3.3.3"),
                &none,
                ("1.1.1.1", Peer),
            ),
            // Untrusted peer: its headers are ignored.
            (
                "1.1.1.1",
                Some("127.0.0.1"),
                Some("127.0.0.1"),
                &proxies,
                ("1.1.1.1", Peer),
            ),
            // Trusted peer, one hop.
            (
                "10.0.0.1",
                Some("2.2.2.2"),
                None,
                &proxies,
                ("2.2.2.2", ForwardedFor),
            ),
            // Right to left, skipping trusted hops; the spoofed leftmost entry is not reached.
            (
                "10.0.0.1",
                Some("6.6.6.6, 2.2.2.2, 10.0.0.9"),
                None,
                &proxies,
                ("2.2.2.2", ForwardedFor),
            ),
            // All hops trusted: the leftmost.
            (
                "10.0.0.1",
                Some("10.0.0.7,10.0.0.8"),
                None,
                &proxies,
                ("10.0.0.7", ForwardedFor),
            ),
            // Ports and brackets from proxies that add them.
            (
                "10.0.0.1",
                Some("[2001:db8::1]:443"),
                None,
                &proxies,
                ("2001:db8::1", ForwardedFor),
            ),
            (
                "10.0.0.1",
                Some("2.2.2.2:5555"),
                None,
                &proxies,
                ("2.2.2.2", ForwardedFor),
            ),
            (
                "10.0.0.1",
                Some("[2001:db8::2]"),
                None,
                &proxies,
                ("2001:db8::2", ForwardedFor),
            ),
            // Garbage in the part we must walk: keep the peer, as nginx's realip does.
            (
                "10.0.0.1",
                Some("2.2.2.2, junk"),
                None,
                &proxies,
                ("10.0.0.1", PeerBadHeader),
            ),
            (
                "10.0.0.1",
                Some(" , ,"),
                None,
                &proxies,
                ("10.0.0.1", PeerBadHeader),
            ),
            // Garbage left of the first untrusted hop is never looked at.
            (
                "10.0.0.1",
                Some("junk, 2.2.2.2"),
                None,
                &proxies,
                ("2.2.2.2", ForwardedFor),
            ),
            // X-Real-IP only when there is no X-Forwarded-For.
            (
                "10.0.0.1",
                None,
                Some("3.3.3.3"),
                &proxies,
                ("3.3.3.3", RealIp),
            ),
            (
                "10.0.0.1",
                Some("2.2.2.2"),
                Some("3.3.3.3"),
                &proxies,
                ("2.2.2.2", ForwardedFor),
            ),
            (
                "10.0.0.1",
                None,
                Some("nope"),
                &proxies,
                ("10.0.0.1", PeerBadHeader),
            ),
            ("10.0.0.1", None, None, &proxies, ("10.0.0.1", Peer)),
            (
                "::1",
                Some("::ffff:2.2.2.2"),
                None,
                &proxies,
                ("2.2.2.2", ForwardedFor),
            ),
        ];
        for (peer, xff, xri, trusted, (want, source)) in cases {
            let got = client_ip(
                ip(peer),
                xff.map(str::as_bytes),
                xri.map(str::as_bytes),
                trusted,
            );
            assert_eq!(
                got,
                (ip(want), *source),
                "peer={peer} xff={xff:?} xri={xri:?}"
            );
        }
    }

    #[test]
    fn many_hops_are_walked_without_trouble() {
        let proxies = trusted(&["10.0.0.0/8"]);
        let header = "10.0.0.5,".repeat(2000) + "10.0.0.6";
        let got = client_ip(ip("10.0.0.1"), Some(header.as_bytes()), None, &proxies);
        assert_eq!(got, (ip("10.0.0.5"), Source::ForwardedFor));
    }
}
