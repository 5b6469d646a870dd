//! The decision: where a request goes, by the snapshot in force. [`Snapshot::route`] is the request
//! path (a code, no allocation: the FFI functions answer it), [`Snapshot::decide`] the same
//! decision with its [`Reason`] (decide, explain, grayctl explain), and [`Details`] that reason as
//! the fields explain() and `grayctl explain --json` show. Both derive the client and look the
//! whitelist up the same way ([`Snapshot::client`], [`Snapshot::listed`]). A rule set, where one
//! is loaded, decides; without one the whitelist key decides between the first two targets, as
//! gray always did.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::client_ip::{binary_addr, client_ip, parse_addr, Source};
use crate::clock::unix_now;
pub use crate::explanation::Explanation;
use crate::ipset::MatchedRange;
use crate::plan::Fetched;
use crate::rules::{self, Anonymous, Lane, MintedId, Outcome};
use crate::snapshot::{ActiveRuleSet, KeyKind, Snapshot};

/// Where the whitelist sends a request, as an index into the target table (whose first two
/// entries are always `prod` and `gray`; a rule set's targets are indexes into the same table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Target {
    Prod = 0,
    Gray = 1,
}

/// The codes the request path's FFI functions return, the protocol between Rust and the Lua glue:
/// a decision (>= 0: the target in the low [`code::TARGET_BITS`], the metrics series above them),
/// or a request for more input (< 0), which the glue fetches and asks again with, each at most
/// once per request. Defined here only; the glue receives them from the binding.
pub mod code {
    /// The peer is a trusted proxy: the decision needs its forwarding headers.
    pub const NEED_FORWARDED: i32 = -1;
    /// The client address has to be read through `$binary_remote_addr` (see `nginx_request`).
    pub const NEED_ADDRESS: i32 = -2;
    /// The rule set reads request inputs: fetch those of plan `INPUTS_BASE - code` and ask again.
    pub const INPUTS_BASE: i32 = -16;
    /// A decision (a code >= 0) carries its target in these low bits and, above them, the
    /// metrics series it is counted in, so the log phase can count the response in the same one.
    pub const TARGET_BITS: u32 = 8;
    /// The target table holds at most this many locations.
    pub const MAX_TARGETS: usize = 1 << TARGET_BITS;
    pub const TARGET_MASK: i32 = (1 << TARGET_BITS) - 1;

    pub fn need_inputs(plan: u32) -> i32 {
        INPUTS_BASE.saturating_sub(i32::try_from(plan).unwrap_or(i32::MAX))
    }

    /// The code for a decision to `target`, counted in `series` (below 2^23).
    #[inline]
    pub fn routed(target: usize, series: u32) -> i32 {
        ((series << TARGET_BITS) as i32) | (target as i32 & TARGET_MASK)
    }

    /// The series a decision code is counted in.
    #[inline]
    pub fn series(code: i32) -> u32 {
        (code as u32) >> TARGET_BITS
    }
}
use code::NEED_FORWARDED;

/// `X-Forwarded-For` and `X-Real-IP`, each `None` when absent.
pub type ForwardingHeaders<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// What a request brings beyond its peer address.
#[derive(Clone, Copy, Default)]
pub struct Extra<'a> {
    /// `X-Forwarded-For` and `X-Real-IP`, once fetched for a trusted peer.
    pub forwarded: Option<ForwardingHeaders<'a>>,
    /// The plan's inputs, once fetched.
    pub inputs: Option<Gathered<'a>>,
    /// Mints an anonymous id where the rule set needs one the request lacks.
    pub mint: Option<&'a dyn Fn() -> MintedId>,
}

/// What a decision sends on besides its target, borrowed from the snapshot: the binding copies it
/// out before it lets the snapshot go. Empty for a rule set with no lane and no anonymous ids.
#[derive(Default)]
pub struct Carry<'s> {
    /// The lane and the decision's label, to set on the request; `None` without a lane, or for
    /// an upstream gray's lane, which goes on as it came.
    pub lane: Option<(&'s Lane, &'s str)>,
    /// The request has no lane header, as a read of its whole header list shows: the label is
    /// added, with no client's value to replace (a replacement scans the request's headers,
    /// ~70 instructions of the ~1,450 that stamping costs).
    pub lane_header_absent: bool,
    /// The anonymous id minted to decide, and the cookie that hands it to the client.
    pub minted: Option<(&'s Anonymous, MintedId)>,
    /// The deciding rule's name.
    pub rule: Option<&'s str>,
}

/// What the request path fetched, and for which plan.
#[derive(Clone, Copy)]
pub struct Gathered<'a> {
    pub plan: u32,
    pub fetched: &'a dyn Fetched<'a>,
}

impl Snapshot {
    /// The request path, for rule set `set` and the peer `$binary_remote_addr`: a decision
    /// (`code::routed`), or a `code::NEED_*` saying what to fetch and ask again with.
    /// What the decision sends on besides its target goes to `carry`.
    #[inline(always)]
    pub fn route<'s>(
        &'s self,
        set: usize,
        peer: &[u8],
        extra: &Extra<'_>,
        carry: &mut Carry<'s>,
    ) -> i32 {
        let active = self.active(set);
        let Some(peer) = binary_addr(peer) else {
            return match active {
                Some(active) => self.evaluate(active, None, extra, carry),
                None => self.whitelist_decision(Target::Prod),
            };
        };
        let client = if self.trusts(peer) {
            let Some(forwarded) = extra.forwarded else {
                return NEED_FORWARDED;
            };
            self.client(peer, forwarded).0
        } else {
            peer
        };
        match active {
            Some(active) => self.evaluate(active, Some(client), extra, carry),
            None => {
                let listed = self.is_listed(client);
                self.whitelist_decision(if listed { Target::Gray } else { Target::Prod })
            }
        }
    }

    /// Whether the peer is a trusted proxy, whose forwarding headers name the client.
    #[inline]
    fn trusts(&self, peer: IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && self.trusted_proxies.contains(peer)
    }

    /// The client: the peer, or the client a trusted peer's forwarding headers name.
    #[inline]
    fn client(
        &self,
        peer: IpAddr,
        (forwarded_for, real_ip): ForwardingHeaders<'_>,
    ) -> (IpAddr, Source) {
        let (forwarded_for, real_ip) = self.real_ip_header.pick(forwarded_for, real_ip);
        client_ip(peer, forwarded_for, real_ip, &self.trusted_proxies)
    }

    /// Whether a list is loaded and holds `client`. The request path asks this, not
    /// [`Snapshot::listed`]: the entry itself is only for explain, and finding it costs more.
    #[inline]
    fn is_listed(&self, client: IpAddr) -> bool {
        self.loaded
            .as_ref()
            .is_some_and(|loaded| loaded.list.set.contains(client))
    }

    /// The whitelist entry that holds `client`, if a list is loaded and one does.
    #[inline]
    fn listed(&self, client: IpAddr) -> Option<MatchedRange> {
        self.loaded.as_ref()?.list.set.matching_range(client)
    }

    #[inline]
    fn whitelist_decision(&self, target: Target) -> i32 {
        code::routed(target as usize, self.whitelist_series[target as usize])
    }

    #[inline(never)]
    fn evaluate<'s>(
        &'s self,
        active: &'s ActiveRuleSet,
        client: Option<IpAddr>,
        extra: &Extra<'_>,
        carry: &mut Carry<'s>,
    ) -> i32 {
        let compiled = &active.compiled;
        let wanted = compiled.rules.inputs.len();
        // Few rule sets read more than a handful of inputs; those pay for an allocation.
        let mut few = [None; 8];
        let mut many = Vec::new();
        let inputs: &mut [Option<&[u8]>] = if wanted <= few.len() {
            &mut few[..wanted]
        } else {
            many.resize(wanted, None);
            &mut many
        };
        if wanted > 0 {
            match extra.inputs {
                Some(gathered) if gathered.plan == compiled.plan.id => {
                    compiled.plan.gather(gathered.fetched, inputs)
                }
                _ => return code::need_inputs(compiled.plan.id),
            }
        }
        let request = rules::Request {
            client,
            inputs,
            now: if compiled.rules.has_ramps {
                unix_now()
            } else {
                0.0
            },
            mint: extra.mint,
        };
        let decision = compiled.rules.evaluate(&request, active, &mut ());
        carry_out(&compiled.rules, &decision, carry);
        if let (Some((lane, _)), Some(gathered)) = (carry.lane, extra.inputs) {
            carry.lane_header_absent =
                gathered.fetched.every_header() && lane.absent_from(request.inputs);
        }
        code::routed(decision.target, active.series.of(&decision))
    }

    /// The same decision as the request path, with its reason; `peer` is `$remote_addr` (text),
    /// `inputs` the values of the rule set's variables (all fetched); `mint` mints an anonymous id
    /// as the request path would.
    pub fn decide(
        &self,
        set: usize,
        peer: &[u8],
        forwarded: ForwardingHeaders<'_>,
        inputs: &[Option<&[u8]>],
        now: f64,
        mint: &dyn Fn() -> MintedId,
    ) -> (usize, Reason) {
        let Some(peer_addr) = parse_addr(peer) else {
            return (
                Target::Prod as usize,
                Reason::BadPeerAddress(peer.escape_ascii().to_string()),
            );
        };
        let (client, source) = self.client(peer_addr, forwarded);
        if let Some(active) = self.active(set) {
            let compiled = &active.compiled;
            let mut explanation = Explanation::default();
            let request = rules::Request {
                client: Some(client),
                inputs: &inputs[..inputs.len().min(compiled.rules.inputs.len())],
                now,
                mint: Some(mint),
            };
            let decision = compiled.rules.evaluate(&request, active, &mut explanation);
            let mut carry = Carry::default();
            carry_out(&compiled.rules, &decision, &mut carry);
            explanation.carried(&compiled.rules, &decision, &carry, now, |t| {
                self.target_name(t)
            });
            let rule = match decision.outcome {
                Outcome::Rule(i) => Some(compiled.rules.rules[i].name.clone()),
                _ => None,
            };
            return (
                decision.target,
                Reason::RuleSet {
                    key: compiled.key.clone(),
                    client,
                    source,
                    outcome: decision.outcome,
                    rule,
                    explanation: Box::new(explanation),
                },
            );
        }
        let Some(loaded) = &self.loaded else {
            return (Target::Prod as usize, Reason::NoListLoaded);
        };
        match self.listed(client) {
            Some(range) => (
                Target::Gray as usize,
                Reason::Listed {
                    client,
                    source,
                    range,
                },
            ),
            None => (
                Target::Prod as usize,
                Reason::NotListed {
                    client,
                    source,
                    entries: loaded.list.entries(),
                    kind: loaded.kind,
                },
            ),
        }
    }

    /// [`Snapshot::decide`]'s answer as the fields an explanation shows.
    pub fn explain(&self, target: usize, reason: &Reason) -> Details {
        Details::new(self.target_name(target), reason)
    }
}

/// What `decision` by `rules` sends on besides its target.
#[inline]
fn carry_out<'s>(rules: &'s rules::RuleSet, decision: &rules::Decision, carry: &mut Carry<'s>) {
    if let Some(lane) = &rules.lane {
        if decision.outcome != Outcome::Lane {
            carry.lane = lane
                .labels
                .get(decision.target)
                .map(|label| (lane, label.as_str()));
        }
    }
    if let (Some(anonymous), Some(id)) = (&rules.anonymous, decision.minted) {
        carry.minted = Some((anonymous, id));
    }
    if let Outcome::Rule(i) = decision.outcome {
        carry.rule = Some(&rules.rules[i].name);
    }
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
    RuleSet {
        key: String,
        client: IpAddr,
        source: Source,
        outcome: Outcome,
        rule: Option<String>,
        explanation: Box<Explanation>,
    },
}

impl Reason {
    /// How the request was decided, as explanations name it: a rule set's outcome, `whitelist`,
    /// or `bad_address` for a peer that is no IP address.
    pub fn outcome(&self) -> &'static str {
        match self {
            Reason::RuleSet { outcome, .. } => outcome.as_str(),
            Reason::NoListLoaded | Reason::Listed { .. } | Reason::NotListed { .. } => "whitelist",
            Reason::BadPeerAddress(_) => "bad_address",
        }
    }
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
            Reason::RuleSet {
                key,
                client,
                source,
                outcome,
                rule,
                explanation,
            } => {
                write!(
                    f,
                    "rule set {key}, client {client}{}: ",
                    source_note(*source)
                )?;
                match outcome {
                    Outcome::Disabled => f.write_str("disabled (enabled: false), the default")?,
                    Outcome::Override | Outcome::Lane => {}
                    Outcome::Rule(i) => write!(
                        f,
                        "rule {} \"{}\": {}",
                        i + 1,
                        rule.as_deref().unwrap_or(""),
                        if explanation.matched.is_empty() {
                            "no conditions".to_string()
                        } else {
                            explanation.matched.join(", ")
                        }
                    )?,
                    Outcome::Default => f.write_str("no rule matched, the default")?,
                }
                let mut first = matches!(outcome, Outcome::Override | Outcome::Lane);
                for note in [
                    &explanation.override_,
                    &explanation.lane_seen,
                    &explanation.anonymous,
                ]
                .into_iter()
                .flatten()
                {
                    if !first {
                        f.write_str("; ")?;
                    }
                    first = false;
                    f.write_str(note)?;
                }
                Ok(())
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

/// A decision and its reason as an explanation shows them, field by field: the table
/// `gray.explain()` returns and the JSON of `grayctl explain --json`, one definition for both.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Details {
    /// The named location.
    pub target: String,
    /// How it was decided ([`Reason::outcome`]).
    pub outcome: &'static str,
    /// The rule set's key, when one decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_set: Option<String>,
    /// The deciding rule's name, and its number (from 1).
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_number: Option<usize>,
    /// The client address the decision used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Why the deciding rule's conditions held, one phrase each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<Vec<String>>,
    /// The override header and what came of it.
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_: Option<String>,
    /// The lane header as the request carries it on (`X-Gray-Lane: gray`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    /// The anonymous id the decision minted, and what new ids get.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<String>,
    /// The last percentage bucket computed, and its threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u64>,
    /// The whole reason, as one line.
    pub reason: String,
}

impl Details {
    pub fn new(target: &str, reason: &Reason) -> Details {
        let mut details = Details {
            target: target.to_string(),
            outcome: reason.outcome(),
            rule_set: None,
            rule: None,
            rule_number: None,
            client: None,
            matched: None,
            override_: None,
            lane: None,
            anonymous: None,
            bucket: None,
            threshold: None,
            reason: reason.to_string(),
        };
        if let Reason::RuleSet {
            key,
            client,
            outcome,
            rule,
            explanation,
            ..
        } = reason
        {
            details.rule_set = Some(key.clone());
            details.rule = rule.clone();
            details.rule_number = match outcome {
                Outcome::Rule(i) => Some(i + 1),
                _ => None,
            };
            details.client = Some(client.to_string());
            details.matched = Some(explanation.matched.clone());
            details.override_ = explanation.override_.clone();
            details.lane = explanation.lane.clone();
            details.anonymous = explanation.anonymous.clone();
            if let Some((bucket, threshold, _)) = explanation.bucket {
                details.bucket = Some(bucket);
                details.threshold = Some(threshold);
            }
        }
        details
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::ipset::IpSet;
    use crate::snapshot::LoadedList;
    use crate::whitelist::{parse_entry, Whitelist};

    fn route(s: &Snapshot, peer: &[u8]) -> i32 {
        s.route(0, peer, &Extra::default(), &mut Carry::default())
    }

    fn test_mint() -> MintedId {
        MintedId::from_bits(1)
    }

    fn snapshot(list: &str, trusted: &[&str]) -> Snapshot {
        Snapshot {
            trusted_proxies: Arc::new(IpSet::new(
                trusted.iter().map(|t| parse_entry(t.as_bytes()).unwrap().0),
            )),
            real_ip_header: Default::default(),
            targets: vec!["@prod1".to_string(), "@prod2-grey".to_string()].into(),
            loaded: Some(Arc::new(LoadedList {
                list: Whitelist::parse([list.as_bytes()]),
                kind: KeyKind::String,
                version: 1,
                loaded_at: SystemTime::now(),
            })),
            rule_sets: Vec::new(),
            whitelist_series: [0; 2],
        }
    }

    #[test]
    fn a_decision_carries_the_series_it_is_counted_in() {
        let s = Snapshot {
            whitelist_series: [5, 9],
            ..snapshot("127.0.0.10", &[])
        };
        let listed = route(&s, &[127, 0, 0, 10]);
        assert_eq!((listed & code::TARGET_MASK, code::series(listed)), (1, 9));
        let unlisted = route(&s, &[127, 0, 0, 1]);
        assert_eq!(
            (unlisted & code::TARGET_MASK, code::series(unlisted)),
            (0, 5)
        );
        let last = code::routed(code::MAX_TARGETS - 1, (1 << 23) - 1);
        assert!(last >= 0);
        assert_eq!((last & code::TARGET_MASK) as usize, code::MAX_TARGETS - 1);
        assert_eq!(code::series(last), (1 << 23) - 1);
    }

    #[test]
    fn whitelisted_client_goes_to_gray_everyone_else_to_prod() {
        let s = snapshot("127.0.0.10", &[]);
        assert_eq!(route(&s, &[127, 0, 0, 10]), Target::Gray as i32);
        assert_eq!(route(&s, &[127, 0, 0, 1]), Target::Prod as i32);
        let (target, reason) = s.decide(0, b"127.0.0.10", (None, None), &[], 0.0, &test_mint);
        assert_eq!(target, Target::Gray as usize);
        assert_eq!(
            reason.to_string(),
            "client 127.0.0.10 matched whitelist entry 127.0.0.10"
        );
        assert_eq!(
            s.decide(0, b"127.0.0.1", (None, None), &[], 0.0, &test_mint)
                .1
                .to_string(),
            "client 127.0.0.1 is not in the whitelist (1 entries)"
        );
    }

    #[test]
    fn nothing_loaded_goes_to_prod() {
        let s = Snapshot::default();
        assert_eq!(route(&s, b"127.0.0.1"), Target::Prod as i32);
        assert_eq!(
            s.decide(0, b"127.0.0.1", (None, None), &[], 0.0, &test_mint),
            (Target::Prod as usize, Reason::NoListLoaded)
        );
    }

    #[test]
    fn unparsable_peer_goes_to_prod() {
        let s = snapshot("0.0.0.0/0", &[]);
        assert_eq!(route(&s, b""), Target::Prod as i32);
        assert_eq!(
            s.decide(0, b"unix:", (None, None), &[], 0.0, &test_mint).0,
            Target::Prod as usize
        );
    }

    #[test]
    fn trusted_peer_needs_its_headers() {
        let s = snapshot("2.2.2.2", &["127.0.0.1"]);
        let (trusted, untrusted) = ([127, 0, 0, 1], [127, 0, 0, 2]);
        assert_eq!(route(&s, &trusted), NEED_FORWARDED);
        let gray = Target::Gray as i32;
        let forwarded = |xff: Option<&'static [u8]>| Extra {
            forwarded: Some((xff, None)),
            ..Extra::default()
        };
        let mut carry = Carry::default();
        assert_eq!(
            s.route(0, &trusted, &forwarded(Some(b"2.2.2.2")), &mut carry),
            gray
        );
        assert_eq!(
            s.route(0, &trusted, &forwarded(None), &mut carry),
            Target::Prod as i32
        );
        // An untrusted peer claiming a whitelisted address is decided by its own address.
        assert_eq!(route(&s, &untrusted), Target::Prod as i32);
        assert_eq!(
            s.decide(
                0,
                b"127.0.0.1",
                (Some(b"2.2.2.2"), None),
                &[],
                0.0,
                &test_mint
            )
            .1
            .to_string(),
            "client 2.2.2.2 (from X-Forwarded-For) matched whitelist entry 2.2.2.2"
        );
    }

    #[test]
    fn the_real_ip_header_option_names_the_header_believed() {
        use crate::client_ip::RealIpHeader;
        let both = (Some(&b"2.2.2.2"[..]), Some(&b"3.3.3.3"[..]));
        let decided = |header| {
            let s = Snapshot {
                real_ip_header: header,
                ..snapshot("3.3.3.3", &["127.0.0.1"])
            };
            s.decide(0, b"127.0.0.1", both, &[], 0.0, &test_mint)
                .1
                .to_string()
        };
        assert_eq!(
            decided(RealIpHeader::Either),
            "client 2.2.2.2 (from X-Forwarded-For) is not in the whitelist (1 entries)"
        );
        assert_eq!(
            decided(RealIpHeader::RealIp),
            "client 3.3.3.3 (from X-Real-IP) matched whitelist entry 3.3.3.3"
        );
        assert_eq!(
            decided(RealIpHeader::ForwardedFor),
            "client 2.2.2.2 (from X-Forwarded-For) is not in the whitelist (1 entries)"
        );
        let s = Snapshot {
            real_ip_header: RealIpHeader::ForwardedFor,
            ..snapshot("3.3.3.3", &["127.0.0.1"])
        };
        assert_eq!(
            s.decide(
                0,
                b"127.0.0.1",
                (None, Some(b"3.3.3.3")),
                &[],
                0.0,
                &test_mint
            )
            .1
            .to_string(),
            "client 127.0.0.1 is not in the whitelist (1 entries)"
        );
    }

    #[test]
    fn details_name_the_target_and_how_it_was_decided() {
        let s = snapshot("2.2.2.2", &[]);
        let (target, reason) = s.decide(0, b"2.2.2.2", (None, None), &[], 0.0, &test_mint);
        let details = s.explain(target, &reason);
        assert_eq!(
            serde_json::to_value(&details).unwrap(),
            serde_json::json!({
                "target": "@prod2-grey",
                "outcome": "whitelist",
                "rule": null,
                "reason": "client 2.2.2.2 matched whitelist entry 2.2.2.2",
            })
        );
    }
}
