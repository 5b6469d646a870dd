//! The immutable value every request is decided against, and the decision itself. A worker holds
//! one snapshot at a time; the refresher builds the next one and swaps it in whole, so a request
//! never sees half a list. Later rule sets grow here; the request path only calls [`Snapshot::decide`].

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::client_ip::{binary_addr, client_ip, parse_addr, Source};
use crate::ipset::{IpSet, MatchedRange};
use crate::whitelist::Whitelist;

/// Where a request goes, as an index into the targets `[prod, gray]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Target {
    Prod = 0,
    Gray = 1,
}

/// The codes the request path's FFI functions return: a [`Target`] (>= 0), or one of the
/// requests for more input below. Defined here only; the Lua glue receives them from the binding.
pub mod code {
    /// The peer is a trusted proxy: the decision needs its forwarding headers.
    pub const NEED_FORWARDED: i32 = -1;
    /// The client address has to be read through `$binary_remote_addr` (see `nginx_request`).
    pub const NEED_ADDRESS: i32 = -2;
}
use code::NEED_FORWARDED;

/// How the Redis key looked when the list was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Missing,
    String,
    Set,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Missing => "missing",
            KeyKind::String => "string",
            KeyKind::Set => "set",
        }
    }
}

/// A loaded whitelist and where it came from.
#[derive(Debug)]
pub struct LoadedList {
    pub list: Whitelist,
    pub kind: KeyKind,
    /// A hash of the raw value: equal values are not parsed again.
    pub version: u64,
    pub loaded_at: SystemTime,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    pub trusted_proxies: Arc<IpSet>,
    /// `None` until the first successful load.
    pub loaded: Option<LoadedList>,
}

/// Why a request went where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    NoListLoaded,
    BadPeerAddress(String),
    Listed {
        client: IpAddr,
        source: Source,
        range: MatchedRange,
    },
    NotListed {
        client: IpAddr,
        source: Source,
        entries: usize,
        kind: KeyKind,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoListLoaded => f.write_str("no whitelist loaded yet"),
            Reason::BadPeerAddress(text) => {
                write!(f, "client address \"{text}\" is not an IP address")
            }
            Reason::Listed {
                client,
                source,
                range,
            } => {
                write!(
                    f,
                    "client {client}{} matched whitelist entry {range}",
                    source_note(*source)
                )
            }
            Reason::NotListed {
                client,
                source,
                entries,
                kind,
            } => {
                write!(
                    f,
                    "client {client}{} is not in the whitelist",
                    source_note(*source)
                )?;
                if *kind == KeyKind::Missing {
                    f.write_str(" (the key is missing: empty list)")
                } else {
                    write!(f, " ({entries} entries)")
                }
            }
        }
    }
}

fn source_note(source: Source) -> &'static str {
    match source {
        Source::Peer => "",
        Source::ForwardedFor => " (from X-Forwarded-For)",
        Source::RealIp => " (from X-Real-IP)",
        Source::PeerBadHeader => " (forwarding header unusable, peer address used)",
    }
}

impl Snapshot {
    /// The request path: a target for the peer (`$binary_remote_addr`) alone, or
    /// [`NEED_FORWARDED`].
    #[inline]
    pub fn route_peer(&self, peer: &[u8]) -> i32 {
        let Some(peer) = binary_addr(peer) else {
            return Target::Prod as i32;
        };
        if !self.trusted_proxies.is_empty() && self.trusted_proxies.contains(peer) {
            return NEED_FORWARDED;
        }
        self.target_for(peer) as i32
    }

    /// The request path for a trusted peer (`$binary_remote_addr`), with its forwarding headers.
    pub fn route_forwarded(
        &self,
        peer: &[u8],
        forwarded_for: Option<&[u8]>,
        real_ip: Option<&[u8]>,
    ) -> i32 {
        let Some(peer) = binary_addr(peer) else {
            return Target::Prod as i32;
        };
        let (client, _) = client_ip(peer, forwarded_for, real_ip, &self.trusted_proxies);
        self.target_for(client) as i32
    }

    #[inline]
    fn target_for(&self, client: IpAddr) -> Target {
        match &self.loaded {
            Some(loaded) if loaded.list.set.contains(client) => Target::Gray,
            _ => Target::Prod,
        }
    }

    /// The same decision as the request path, with its reason; `peer` is `$remote_addr` (text).
    pub fn decide(
        &self,
        peer: &[u8],
        forwarded_for: Option<&[u8]>,
        real_ip: Option<&[u8]>,
    ) -> (Target, Reason) {
        let Some(peer_addr) = parse_addr(peer) else {
            return (
                Target::Prod,
                Reason::BadPeerAddress(peer.escape_ascii().to_string()),
            );
        };
        let (client, source) = client_ip(peer_addr, forwarded_for, real_ip, &self.trusted_proxies);
        let Some(loaded) = &self.loaded else {
            return (Target::Prod, Reason::NoListLoaded);
        };
        match loaded.list.set.matching_range(client) {
            Some(range) => (
                Target::Gray,
                Reason::Listed {
                    client,
                    source,
                    range,
                },
            ),
            None => (
                Target::Prod,
                Reason::NotListed {
                    client,
                    source,
                    entries: loaded.list.entries(),
                    kind: loaded.kind,
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whitelist::parse_entry;

    fn snapshot(list: &str, trusted: &[&str]) -> Snapshot {
        Snapshot {
            trusted_proxies: Arc::new(IpSet::new(
                trusted.iter().map(|t| parse_entry(t.as_bytes()).unwrap().0),
            )),
            loaded: Some(LoadedList {
                list: Whitelist::parse([list.as_bytes()]),
                kind: KeyKind::String,
                version: 1,
                loaded_at: SystemTime::now(),
            }),
        }
    }

    #[test]
    fn whitelisted_client_goes_to_gray_everyone_else_to_prod() {
        let s = snapshot("127.0.0.10", &[]);
        assert_eq!(s.route_peer(&[127, 0, 0, 10]), Target::Gray as i32);
        assert_eq!(s.route_peer(&[127, 0, 0, 1]), Target::Prod as i32);
        let (target, reason) = s.decide(b"127.0.0.10", None, None);
        assert_eq!(target, Target::Gray);
        assert_eq!(
            reason.to_string(),
            "client 127.0.0.10 matched whitelist entry 127.0.0.10"
        );
        assert_eq!(
            s.decide(b"127.0.0.1", None, None).1.to_string(),
            "client 127.0.0.1 is not in the whitelist (1 entries)"
        );
    }

    #[test]
    fn nothing_loaded_goes_to_prod() {
        let s = Snapshot::default();
        assert_eq!(s.route_peer(b"127.0.0.1"), Target::Prod as i32);
        assert_eq!(
            s.decide(b"127.0.0.1", None, None),
            (Target::Prod, Reason::NoListLoaded)
        );
    }

    #[test]
    fn unparsable_peer_goes_to_prod() {
        let s = snapshot("0.0.0.0/0", &[]);
        assert_eq!(s.route_peer(b""), Target::Prod as i32);
        assert_eq!(s.decide(b"unix:", None, None).0, Target::Prod);
    }

    #[test]
    fn trusted_peer_needs_its_headers() {
        let s = snapshot("2.2.2.2", &["127.0.0.1"]);
        let (trusted, untrusted) = ([127, 0, 0, 1], [127, 0, 0, 2]);
        assert_eq!(s.route_peer(&trusted), NEED_FORWARDED);
        let gray = Target::Gray as i32;
        assert_eq!(s.route_forwarded(&trusted, Some(b"2.2.2.2"), None), gray);
        assert_eq!(s.route_forwarded(&trusted, None, None), Target::Prod as i32);
        // An untrusted peer claiming a whitelisted address is decided by its own address.
        assert_eq!(s.route_peer(&untrusted), Target::Prod as i32);
        assert_eq!(
            s.decide(b"127.0.0.1", Some(b"2.2.2.2"), None).1.to_string(),
            "client 2.2.2.2 (from X-Forwarded-For) matched whitelist entry 2.2.2.2"
        );
    }
}
