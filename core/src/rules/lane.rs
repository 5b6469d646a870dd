//! Lanes: the decision carried on to the services behind as a request header (and, optionally, a
//! member of the W3C `baggage` header), and a lane decided upstream by another gray honoured from
//! the addresses allowed to decide it. Labels are tokens, so they go into a header or a baggage
//! value as they are, with no escaping.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::schema::RuleSetError;
use super::{LaneSeen, Request, Source, Trace};
use crate::ipset::IpSet;

/// A label is at most this long.
pub const MAX_LABEL: usize = 64;
/// A baggage header is at most this long (the W3C limit): members past it are dropped.
pub const MAX_BAGGAGE: usize = 8192;
/// Nor more members than this (the W3C limit).
const MAX_BAGGAGE_MEMBERS: usize = 64;
/// Headers a lane may not be carried in: nginx or the proxy give them their own meaning.
const RESERVED_HEADERS: [&str; 8] = [
    "host",
    "cookie",
    "connection",
    "content-length",
    "content-type",
    "transfer-encoding",
    "upgrade",
    "baggage",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LaneSpec {
    header: String,
    #[serde(default)]
    from: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    baggage: Option<String>,
}

#[derive(Debug)]
pub struct Lane {
    /// The header's name as written: sent on to the services behind under this name.
    pub header: String,
    /// The header's index in `RuleSet::inputs`: an upstream gray's lane comes in it.
    pub input: usize,
    /// Who may send a lane decided upstream; empty: nobody.
    pub from: IpSet,
    /// Each target's label, by target index.
    pub labels: Vec<String>,
    /// The baggage member that also carries the label.
    pub baggage: Option<String>,
}

impl Lane {
    /// Whether a request whose inputs are `inputs` has no lane header (not one sent empty).
    pub fn absent_from(&self, inputs: &[Option<&[u8]>]) -> bool {
        matches!(inputs.get(self.input), Some(None))
    }

    /// The target whose label is `label`.
    pub fn target_of(&self, label: &[u8]) -> Option<usize> {
        self.labels.iter().position(|l| l.as_bytes() == label)
    }

    /// The target of an upstream gray's lane in `request`, when its client may send one; a
    /// label this nginx does not have goes to `default`.
    pub(super) fn inbound<T: Trace>(
        &self,
        request: &Request<'_>,
        default: usize,
        trace: &mut T,
    ) -> Option<usize> {
        let value = request.inputs.get(self.input).copied().flatten()?;
        if value.is_empty() {
            return None;
        }
        let seen = |target, why| LaneSeen {
            header: &self.header,
            value,
            target,
            why,
        };
        if !request.client.is_some_and(|c| self.from.contains(c)) {
            trace.lane_seen(seen(None, "the client is not in lane.from: replaced"));
            return None;
        }
        let target = match self.target_of(value) {
            Some(target) => {
                trace.lane_seen(seen(Some(target), "from an address in lane.from"));
                target
            }
            None => {
                trace.lane_seen(seen(
                    Some(default),
                    "a label this nginx does not have: the default, the header kept",
                ));
                default
            }
        };
        Some(target)
    }
}

/// Compiles `lane`, for the target table `targets`; `input` gives a source's input index and
/// `networks` compiles an address list, as for every other field.
pub(super) fn compile(
    spec: LaneSpec,
    targets: &[String],
    input: impl FnOnce(Source) -> usize,
    networks: impl FnOnce(&[String], &str) -> Result<IpSet, RuleSetError>,
) -> Result<Lane, RuleSetError> {
    let err = |message: String| RuleSetError(format!("lane.{message}"));
    let header = Source::parse(&format!("header:{}", spec.header)).map_err(err)?;
    let lower = spec.header.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err(err(format!(
            "header: \"{}\" has a meaning of its own; name a header of yours, such as X-Gray-Lane",
            spec.header
        )));
    }
    for target in spec.labels.keys() {
        if !targets.contains(target) {
            return Err(err(format!(
                "labels: unknown target \"{}\" (this nginx has {})",
                target.escape_debug(),
                targets.join(", ")
            )));
        }
    }
    let mut labels = Vec::with_capacity(targets.len());
    let mut owners: HashMap<&str, &str> = HashMap::new();
    for target in targets {
        let (label, field) = match spec.labels.get(target) {
            Some(label) => (label.as_str(), format!("labels.{target}")),
            None => (
                target.strip_prefix('@').unwrap_or(target),
                format!("labels: the target {target}'s default label"),
            ),
        };
        if !is_label(label) {
            return Err(err(format!(
                "{field}: \"{}\" is not a label (1 to {MAX_LABEL} of A-Z a-z 0-9 . _ ~ -)",
                label.escape_debug()
            )));
        }
        if let Some(other) = owners.insert(label, target) {
            return Err(err(format!(
                "labels: {other} and {target} both have the label \"{label}\"; a label names one target"
            )));
        }
        labels.push(label.to_string());
    }
    if let Some(member) = &spec.baggage {
        if member.is_empty() || member.len() > MAX_LABEL || !member.bytes().all(is_tchar) {
            return Err(err(format!(
                "baggage: \"{}\" is not a baggage member name (1 to {MAX_LABEL} token characters)",
                member.escape_debug()
            )));
        }
    }
    Ok(Lane {
        from: networks(&spec.from, "lane.from")?,
        input: input(header),
        header: spec.header,
        labels,
        baggage: spec.baggage,
    })
}

fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// A `tchar` of RFC 9110: what a baggage key is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The `baggage` header to send on: the members of the incoming `baggage` headers (`incoming`,
/// each one header's value, in order) but `member`, then `member=label`, written to `out`; its
/// length. Members past the W3C limits (64 members, [`MAX_BAGGAGE`] bytes) are dropped, never
/// `member` itself; `out` holds at least [`MAX_BAGGAGE`] bytes.
pub fn baggage<'a>(
    incoming: impl IntoIterator<Item = &'a [u8]>,
    member: &str,
    label: &str,
    out: &mut [u8],
) -> usize {
    let own = member.len() + 1 + label.len();
    let room = out.len().min(MAX_BAGGAGE) - own;
    let mut len = 0;
    let mut kept = 0;
    for value in incoming {
        for item in value.split(|&b| b == b',') {
            let item = item.trim_ascii();
            let key = item.split(|&b| b == b'=').next().unwrap_or_default();
            if item.is_empty() || key.trim_ascii() == member.as_bytes() {
                continue;
            }
            if kept == MAX_BAGGAGE_MEMBERS - 1 || len + item.len() + 1 > room {
                continue;
            }
            out[len..len + item.len()].copy_from_slice(item);
            out[len + item.len()] = b',';
            len += item.len() + 1;
            kept += 1;
        }
    }
    for part in [member.as_bytes(), b"=", label.as_bytes()] {
        out[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(incoming: &[&str], member: &str, label: &str) -> String {
        let mut out = [0u8; MAX_BAGGAGE];
        let len = baggage(
            incoming.iter().map(|s| s.as_bytes()),
            member,
            label,
            &mut out,
        );
        String::from_utf8(out[..len].to_vec()).unwrap()
    }

    #[test]
    fn baggage_keeps_other_members_and_replaces_its_own() {
        assert_eq!(stamped(&[], "gray-lane", "gray"), "gray-lane=gray");
        assert_eq!(
            stamped(
                &["userId=alice, gray-lane=stable;p=1 ,", "serverNode=DF%2028"],
                "gray-lane",
                "gray"
            ),
            "userId=alice,serverNode=DF%2028,gray-lane=gray"
        );
        assert_eq!(
            stamped(&["gray-lane=a,gray-lane = b"], "gray-lane", "stable"),
            "gray-lane=stable"
        );
        assert_eq!(
            stamped(&["gray-lanex=1"], "gray-lane", "gray"),
            "gray-lanex=1,gray-lane=gray"
        );
    }

    #[test]
    fn baggage_past_the_limits_drops_other_members_never_its_own() {
        let big = format!("a={}", "x".repeat(MAX_BAGGAGE - 4));
        let out = stamped(&[&big, "b=1"], "gray-lane", "gray");
        assert_eq!(out, "b=1,gray-lane=gray");
        let many: Vec<String> = (0..100).map(|i| format!("m{i}=1")).collect();
        let out = stamped(&[&many.join(",")], "gray-lane", "gray");
        assert_eq!(out.split(',').count(), MAX_BAGGAGE_MEMBERS);
        assert!(out.ends_with(",gray-lane=gray"));
    }
}
