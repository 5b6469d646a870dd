//! Rule sets: an ordered list of rules, each sending the requests whose conditions all hold to a
//! target; the first that matches decides, no match goes to the default. A rule set is decoded
//! and validated whole ([`schema`]) into the compiled form here, which evaluates in memory with
//! no I/O. The evaluator is pure: the module, and any tool, decide the same way from the same
//! inputs. [`Trace`] lets an explanation watch an evaluation without costing the request path.

pub mod anonymous;
pub mod edit;
pub mod lane;
pub mod schema;
pub mod source;

use std::net::IpAddr;

use crate::bucket;
use crate::guard::Guard;
use crate::idset::IdSet;
use crate::ipset::{IpSet, MatchedRange};
use crate::whitelist::Whitelist;

pub use anonymous::{Anonymous, MintedId};
pub use lane::Lane;
pub use source::Source;

/// At most this many rules in a rule set.
pub const MAX_RULES: usize = 1000;
/// A rule set's JSON is at most this long: far below a list's `max_bytes`, so what a rule set
/// costs to read, parse and compile stays small whatever its key holds (big id lists belong in
/// an `in_key`).
pub const MAX_BYTES: usize = 1 << 20;
/// At most this many distinct inputs (headers, cookies, ...) in a rule set: the request path
/// holds them in a fixed array.
pub const MAX_INPUTS: usize = 64;

#[derive(Debug)]
pub struct RuleSet {
    pub enabled: bool,
    /// Index into the target table.
    pub default: usize,
    pub override_: Option<Override>,
    /// The decision carried on to the services behind, and honoured from an upstream gray.
    pub lane: Option<Lane>,
    /// The cookie minted for anonymous users.
    pub anonymous: Option<Anonymous>,
    pub rules: Vec<Rule>,
    /// What the rules read, each once: `Request::inputs` holds their values in this order.
    pub inputs: Vec<Source>,
    /// The Redis keys the rules reference: `Keys` holds their data in this order.
    pub keys: Vec<KeyRef>,
    /// A rule's percentage is a ramp: evaluation needs the time.
    pub has_ramps: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUse {
    /// `ip_key`: a whitelist.
    Whitelist,
    /// `in_key`: a set of ids.
    Ids,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyRef {
    pub name: String,
    pub use_: KeyUse,
}

#[derive(Debug)]
pub struct Override {
    pub header: String,
    /// The header's index in `RuleSet::inputs`.
    pub input: usize,
    /// Who may send `always` or a target name; `never` is honoured from anyone.
    pub from: IpSet,
    /// The target table, so a target name in the header can be found.
    pub targets: Vec<String>,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub to: usize,
    pub ip: Option<IpSet>,
    /// Index into `RuleSet::keys`.
    pub ip_key: Option<usize>,
    pub id: Option<IdCondition>,
    pub percent: Option<Percent>,
    /// Stops the rule when its target errs more than the default's (the module keeps watch).
    pub guard: Option<Guard>,
}

#[derive(Debug)]
pub struct IdCondition {
    pub input: usize,
    /// All must hold.
    pub matchers: Vec<IdMatcher>,
}

#[derive(Debug)]
pub enum IdMatcher {
    In(IdSet),
    /// Index into `RuleSet::keys`.
    InKey(usize),
    Suffix(Vec<Vec<u8>>),
    Prefix(Vec<Vec<u8>>),
    /// Inclusive; an id that is not an integer matches none.
    Range(Vec<(i64, i64)>),
    /// The pattern as written, and compiled.
    Regex(String, regex_automata::meta::Regex),
}

#[derive(Debug)]
pub struct Percent {
    pub amount: Amount,
    /// Tried in order; the first present is the key.
    pub by: Vec<KeySource>,
    pub seed: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// Hundredths of a percent, 0..=10000.
    Fixed(u32),
    /// Linear from `from` to `to` (hundredths) between `start` and `end` (Unix seconds).
    Ramp {
        from: u32,
        to: u32,
        start: f64,
        end: f64,
    },
}

impl Amount {
    /// Hundredths of a percent at `now`; a ramp only grows, in whole hundredths.
    pub fn at(&self, now: f64) -> u32 {
        match *self {
            Amount::Fixed(hundredths) => hundredths,
            Amount::Ramp {
                from,
                to,
                start,
                end,
            } => {
                if now <= start {
                    from
                } else if now >= end {
                    to
                } else {
                    let done = (now - start) / (end - start);
                    from + (f64::from(to - from) * done).floor() as u32
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Input(usize),
    /// The client address gray derived, as text.
    Ip,
}

/// What one request offers the rules.
pub struct Request<'a> {
    /// The client address (after trusted proxies); `None` when the peer is not an IP.
    pub client: Option<IpAddr>,
    /// The values of `RuleSet::inputs`, `None` when absent.
    pub inputs: &'a [Option<&'a [u8]>],
    /// Unix seconds, for ramps.
    pub now: f64,
    /// Mints an anonymous id where a rule needs one the request lacks; `None`: none is minted.
    pub mint: Option<&'a dyn Fn() -> MintedId>,
}

/// The loaded data of `RuleSet::keys`, in order; `None` while a key is not loaded (or missing).
#[derive(Clone, Copy)]
pub enum KeyData<'a> {
    Whitelist(&'a Whitelist),
    Ids(&'a IdSet),
}

pub trait Keys {
    fn get(&self, index: usize) -> Option<KeyData<'_>>;

    /// Rule `rule`'s guard has tripped: the rule does not match.
    fn tripped(&self, _rule: usize) -> bool {
        false
    }
}

impl Keys for [Option<KeyData<'_>>] {
    fn get(&self, index: usize) -> Option<KeyData<'_>> {
        <[_]>::get(self, index).copied().flatten()
    }
}

/// How a rule set decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `enabled: false`: everyone to the default.
    Disabled,
    /// The override header decided.
    Override,
    /// An upstream gray's lane, from an address in `lane.from`, decided.
    Lane,
    /// This rule matched.
    Rule(usize),
    /// No rule matched.
    Default,
}

impl Outcome {
    /// The outcome's name in explanations (`explain()`, `grayctl explain --json`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Disabled => "disabled",
            Outcome::Override => "override",
            Outcome::Lane => "lane",
            Outcome::Rule(_) => "rule",
            Outcome::Default => "default",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub target: usize,
    pub outcome: Outcome,
    /// The anonymous id minted to decide, which the response hands to the client.
    pub minted: Option<MintedId>,
}

/// Why a condition held, for explanations.
#[derive(Debug, Clone, PartialEq)]
pub enum Matched<'a> {
    Ip {
        client: IpAddr,
        range: MatchedRange,
        key: Option<&'a str>,
    },
    Id {
        source: &'a Source,
        id: &'a [u8],
        how: &'static str,
    },
    Percent {
        source: Option<&'a Source>,
        key: &'a [u8],
        bucket: u32,
        threshold: u64,
        hundredths: u32,
    },
}

/// What an override header asked for and what came of it.
#[derive(Debug, Clone, PartialEq)]
pub struct OverrideSeen<'a> {
    pub header: &'a str,
    pub value: &'a [u8],
    pub honoured: bool,
    pub why: &'static str,
}

/// What an inbound lane header asked for and what came of it.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneSeen<'a> {
    pub header: &'a str,
    pub value: &'a [u8],
    /// The target it sends to; `None` when ignored.
    pub target: Option<usize>,
    pub why: &'static str,
}

/// Watches an evaluation; the request path uses `()`, which watches nothing.
pub trait Trace {
    fn matched(&mut self, _rule: usize, _why: Matched<'_>) {}
    fn missed(&mut self, _rule: usize, _why: &'static str) {}
    fn override_seen(&mut self, _seen: OverrideSeen<'_>) {}
    fn lane_seen(&mut self, _seen: LaneSeen<'_>) {}
    /// Rule `rule` needed the anonymous id the request lacked: one was minted.
    fn minted(&mut self, _rule: usize) {}
    /// A percentage rule that did not take this key in.
    fn bucket_out(&mut self, _rule: usize, _bucket: u32, _threshold: u64) {}
}

impl Trace for () {}

impl RuleSet {
    /// The decision for `request`, its keys' data in `keys`.
    pub fn evaluate<K: Keys + ?Sized, T: Trace>(
        &self,
        request: &Request<'_>,
        keys: &K,
        trace: &mut T,
    ) -> Decision {
        let decided = |target, outcome| Decision {
            target,
            outcome,
            minted: None,
        };
        if !self.enabled {
            return decided(self.default, Outcome::Disabled);
        }
        if let Some(target) = self.override_target(request, trace) {
            return decided(target, Outcome::Override);
        }
        if let Some(target) = self
            .lane
            .as_ref()
            .and_then(|lane| lane.inbound(request, self.default, trace))
        {
            return decided(target, Outcome::Lane);
        }
        let mut minted = None;
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.guard.is_some() && keys.tripped(index) {
                trace.missed(index, "its guard has tripped");
                continue;
            }
            if self.rule_holds(index, rule, request, keys, trace, &mut minted) {
                return Decision {
                    minted,
                    ..decided(rule.to, Outcome::Rule(index))
                };
            }
        }
        Decision {
            minted,
            ..decided(self.default, Outcome::Default)
        }
    }

    /// Input `index` of `request`; the anonymous id, minted into `minted` once per request, where
    /// the request has none and a rule reads it.
    #[inline]
    fn input<'v, T: Trace>(
        &self,
        request: &'v Request<'_>,
        index: usize,
        rule: usize,
        minted: &'v mut Option<MintedId>,
        trace: &mut T,
    ) -> Option<&'v [u8]> {
        if let Some(value) = request.inputs.get(index).copied().flatten() {
            if !value.is_empty() {
                return Some(value);
            }
        }
        let anonymous = self.anonymous.as_ref()?;
        if anonymous.input != Some(index) {
            return None;
        }
        if minted.is_none() {
            *minted = Some(request.mint?());
            trace.minted(rule);
        }
        minted.as_ref().map(MintedId::as_bytes)
    }

    /// The target `always` sends to: the first rule's target that is not the default.
    pub fn always_target(&self) -> usize {
        self.rules
            .iter()
            .map(|r| r.to)
            .find(|&to| to != self.default)
            .unwrap_or(self.default)
    }

    fn override_target<T: Trace>(&self, request: &Request<'_>, trace: &mut T) -> Option<usize> {
        let over = self.override_.as_ref()?;
        let value = request.inputs.get(over.input).copied().flatten()?;
        if value.is_empty() {
            return None;
        }
        let seen = |honoured, why| OverrideSeen {
            header: &over.header,
            value,
            honoured,
            why,
        };
        if value.eq_ignore_ascii_case(b"never") {
            trace.override_seen(seen(true, "never is honoured from anyone"));
            return Some(self.default);
        }
        let asked = if value.eq_ignore_ascii_case(b"always") {
            Some(self.always_target())
        } else {
            over.targets.iter().position(|t| t.as_bytes() == value)
        };
        let allowed = request.client.is_some_and(|c| over.from.contains(c));
        match asked {
            Some(target) if allowed => {
                trace.override_seen(seen(true, "from an address in override.from"));
                Some(target)
            }
            Some(_) => {
                trace.override_seen(seen(false, "the client is not in override.from"));
                None
            }
            None => {
                trace.override_seen(seen(
                    false,
                    "not always, never or a target of this rule set",
                ));
                None
            }
        }
    }

    /// The first key source of `percent` present in `request` (the anonymous id counts as
    /// present: it is minted), with its bytes.
    fn percent_key<'v, T: Trace>(
        &'v self,
        percent: &Percent,
        request: &'v Request<'_>,
        rule: usize,
        minted: &'v mut Option<MintedId>,
        ip_text: &'v mut [u8; 64],
        trace: &mut T,
    ) -> Option<(Option<&'v Source>, &'v [u8])> {
        for by in &percent.by {
            match *by {
                KeySource::Input(i) => {
                    let present = request
                        .inputs
                        .get(i)
                        .copied()
                        .flatten()
                        .is_some_and(|v| !v.is_empty());
                    let mintable = self.anonymous.as_ref().is_some_and(|a| a.input == Some(i))
                        && (minted.is_some() || request.mint.is_some());
                    if present || mintable {
                        let value = self.input(request, i, rule, minted, trace)?;
                        return Some((Some(&self.inputs[i]), value));
                    }
                }
                KeySource::Ip => {
                    if let Some(client) = request.client {
                        use std::io::Write;
                        let mut cursor = std::io::Cursor::new(&mut ip_text[..]);
                        let _ = write!(cursor, "{client}");
                        let len = cursor.position() as usize;
                        return Some((None, &ip_text[..len]));
                    }
                }
            }
        }
        None
    }

    fn rule_holds<K: Keys + ?Sized, T: Trace>(
        &self,
        index: usize,
        rule: &Rule,
        request: &Request<'_>,
        keys: &K,
        trace: &mut T,
        minted: &mut Option<MintedId>,
    ) -> bool {
        if let Some(ip) = &rule.ip {
            match request
                .client
                .and_then(|c| ip.matching_range(c).map(|r| (c, r)))
            {
                Some((client, range)) => trace.matched(
                    index,
                    Matched::Ip {
                        client,
                        range,
                        key: None,
                    },
                ),
                None => {
                    trace.missed(index, "the client is not in ip");
                    return false;
                }
            }
        }
        if let Some(key) = rule.ip_key {
            let list = match keys.get(key) {
                Some(KeyData::Whitelist(list)) => Some(list),
                _ => None,
            };
            let found = list.and_then(|l| {
                let client = request.client?;
                l.set.matching_range(client).map(|r| (client, r))
            });
            match found {
                Some((client, range)) => trace.matched(
                    index,
                    Matched::Ip {
                        client,
                        range,
                        key: Some(&self.keys[key].name),
                    },
                ),
                None => {
                    trace.missed(index, "the client is not in ip_key");
                    return false;
                }
            }
        }
        if let Some(id) = &rule.id {
            let Some(value) = self.input(request, id.input, index, minted, trace) else {
                trace.missed(index, "no id");
                return false;
            };
            for matcher in &id.matchers {
                let how = match matcher {
                    IdMatcher::In(set) => set.contains(value).then_some("in the list"),
                    IdMatcher::InKey(key) => match keys.get(*key) {
                        Some(KeyData::Ids(set)) => set.contains(value).then_some("in in_key"),
                        _ => None,
                    },
                    IdMatcher::Suffix(suffixes) => suffixes
                        .iter()
                        .any(|s| value.ends_with(s))
                        .then_some("has a listed suffix"),
                    IdMatcher::Prefix(prefixes) => prefixes
                        .iter()
                        .any(|p| value.starts_with(p))
                        .then_some("has a listed prefix"),
                    IdMatcher::Range(ranges) => parse_integer(value)
                        .filter(|n| ranges.iter().any(|(lo, hi)| lo <= n && n <= hi))
                        .map(|_| "in a listed range"),
                    IdMatcher::Regex(_, regex) => {
                        regex.is_match(value).then_some("matches the regex")
                    }
                };
                match how {
                    Some(how) => trace.matched(
                        index,
                        Matched::Id {
                            source: &self.inputs[id.input],
                            id: value,
                            how,
                        },
                    ),
                    None => {
                        trace.missed(index, "the id does not match");
                        return false;
                    }
                }
            }
        }
        if let Some(percent) = &rule.percent {
            let hundredths = percent.amount.at(request.now);
            let threshold = bucket::threshold(hundredths);
            let mut ip_text = [0u8; 64];
            let Some((source, key)) =
                self.percent_key(percent, request, index, minted, &mut ip_text, trace)
            else {
                trace.missed(index, "no key for the percentage");
                return false;
            };
            let b = bucket::bucket(&percent.seed, key);
            if !bucket::is_in(b, threshold) {
                trace.bucket_out(index, b, threshold);
                return false;
            }
            trace.matched(
                index,
                Matched::Percent {
                    source,
                    key,
                    bucket: b,
                    threshold,
                    hundredths,
                },
            );
        }
        true
    }
}

fn parse_integer(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
