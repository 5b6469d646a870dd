//! The rule set's JSON (format 1, the contract with operators and tools) decoded, validated and
//! compiled, whole or not at all: an unknown field, a bad value or an unknown target rejects the
//! rule set, and the error names the rule and the field, so the previous good one stays in force.

use std::collections::HashSet;
use std::fmt;

use regex_automata::meta::Regex;
use regex_automata::util::syntax;
use serde::de::{Deserializer, Error as _, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::anonymous::{self, AnonymousSpec};
use super::lane::{self, LaneSpec};
use super::{
    Amount, IdCondition, IdMatcher, KeyRef, KeySource, KeyUse, Override, Percent, Rule, RuleSet,
    Source, MAX_BYTES, MAX_INPUTS, MAX_RULES,
};
use crate::bucket;
use crate::guard::{Guard, DEFAULT_MIN_REQUESTS, DEFAULT_WINDOW, MAX_WINDOW};
use crate::idset::IdSet;
use crate::ipset::IpSet;
use crate::whitelist::parse_entry;

/// The one format this build reads.
pub const FORMAT: u64 = 1;
/// A regex's pattern is at most this long: parsing costs memory in proportion to it.
const REGEX_PATTERN_MAX: usize = 4096;
/// A regex compiles to at most this much memory (the regex engine matches in linear time).
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Each regex's lazy DFA caches at most this much as it matches.
const REGEX_CACHE: usize = 64 << 10;
/// A rule set's regexes together, compiled and with their caches full, take at most this much.
const REGEX_BUDGET: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSetError(pub String);

impl fmt::Display for RuleSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RuleSetError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSetSpec {
    format: Value,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    default: Option<String>,
    #[serde(default, rename = "override")]
    override_: Option<OverrideSpec>,
    #[serde(default)]
    lane: Option<LaneSpec>,
    #[serde(default)]
    anonymous: Option<AnonymousSpec>,
    #[serde(deserialize_with = "at_most_max_rules")]
    rules: Vec<Value>,
}

/// The rules, decoded one by one and refused at the first past [`MAX_RULES`]: a rule set of
/// half a million elements costs what 1,001 do.
fn at_most_max_rules<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    struct Rules;
    impl<'de> Visitor<'de> for Rules {
        type Value = Vec<Value>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of rules")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
            let mut rules = Vec::new();
            while let Some(rule) = seq.next_element::<Value>()? {
                if rules.len() == MAX_RULES {
                    return Err(A::Error::custom(format!("more than {MAX_RULES} rules")));
                }
                rules.push(rule);
            }
            Ok(rules)
        }
    }
    d.deserialize_seq(Rules)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideSpec {
    header: String,
    #[serde(default)]
    from: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    to: String,
    ip: Option<Vec<String>>,
    ip_key: Option<String>,
    id: Option<String>,
    #[serde(rename = "in")]
    in_: Option<Vec<String>>,
    in_key: Option<String>,
    suffix: Option<Vec<String>>,
    prefix: Option<Vec<String>>,
    range: Option<Vec<(i64, i64)>>,
    regex: Option<String>,
    percent: Option<Value>,
    by: Option<Vec<String>>,
    seed: Option<String>,
    guard: Option<GuardSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardSpec {
    max_error_rate: f64,
    min_requests: Option<u64>,
    window: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RampSpec {
    from: f64,
    to: f64,
    start: String,
    end: String,
}

/// Decodes and compiles a rule set. `targets` is the target table (the named locations this
/// nginx has); its first entry is the default when the rule set names none.
pub fn compile(json: &[u8], targets: &[String]) -> Result<RuleSet, RuleSetError> {
    if json.len() > MAX_BYTES {
        return Err(RuleSetError(format!(
            "the rule set is {} bytes, at most {MAX_BYTES}",
            json.len()
        )));
    }
    let spec: RuleSetSpec =
        serde_json::from_slice(json).map_err(|e| RuleSetError(format!("not a rule set: {e}")))?;
    if spec.format.as_u64() != Some(FORMAT) {
        return Err(RuleSetError(format!(
            "format is {}, this gray reads format {FORMAT}",
            spec.format
        )));
    }
    let mut compiler = Compiler {
        targets,
        default: 0,
        inputs: Vec::new(),
        keys: Vec::new(),
        regex_memory: 0,
    };
    let default = match &spec.default {
        Some(name) => compiler.target(name, "default")?,
        None => 0,
    };
    compiler.default = default;
    let override_ = spec.override_.map(|o| compiler.override_(o)).transpose()?;
    let lane = spec
        .lane
        .map(|l| lane::compile(l, targets, |s| compiler.input(s), networks))
        .transpose()?;
    let mut anonymous = spec.anonymous.map(anonymous::compile).transpose()?;
    let mut names = HashSet::new();
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (i, value) in spec.rules.into_iter().enumerate() {
        let label = rule_label(i, &value);
        let rule: RuleSpec =
            serde_json::from_value(value).map_err(|e| RuleSetError(format!("{label}: {e}")))?;
        if !names.insert(rule.name.clone()) {
            return Err(RuleSetError(format!("{label}: duplicate rule name")));
        }
        rules.push(
            compiler
                .rule(rule)
                .map_err(|e| RuleSetError(format!("{label}: {e}")))?,
        );
    }
    if compiler.inputs.len() > MAX_INPUTS {
        return Err(RuleSetError(format!(
            "the rules read {} inputs (headers, cookies, args, variables), at most {MAX_INPUTS}",
            compiler.inputs.len()
        )));
    }
    if let Some(anonymous) = &mut anonymous {
        anonymous.input = compiler.inputs.iter().position(|s| *s == anonymous.source);
    }
    let has_ramps = rules.iter().any(|r: &Rule| {
        r.percent
            .as_ref()
            .is_some_and(|p| matches!(p.amount, Amount::Ramp { .. }))
    });
    Ok(RuleSet {
        has_ramps,
        enabled: spec.enabled.unwrap_or(true),
        default,
        override_,
        lane,
        anonymous,
        rules,
        inputs: compiler.inputs,
        keys: compiler.keys,
    })
}

/// `rules[3] "beta"`, or `rules[3]` when the rule has no usable name.
fn rule_label(index: usize, value: &Value) -> String {
    match value.get("name").and_then(Value::as_str) {
        Some(name) => format!("rules[{}] \"{}\"", index + 1, name.escape_debug()),
        None => format!("rules[{}]", index + 1),
    }
}

struct Compiler<'a> {
    targets: &'a [String],
    /// The rule set's default target.
    default: usize,
    inputs: Vec<Source>,
    keys: Vec<KeyRef>,
    /// What the regexes compiled so far take, their caches counted full.
    regex_memory: usize,
}

impl Compiler<'_> {
    /// A rule's regex, within what is left of the rule set's regex budget.
    fn regex(&mut self, pattern: &str) -> Result<Regex, String> {
        if pattern.len() > REGEX_PATTERN_MAX {
            return Err(format!(
                "a pattern of {} bytes, at most {REGEX_PATTERN_MAX}",
                pattern.len()
            ));
        }
        let over_budget = || {
            format!(
                "the rule set's regexes would take more than {REGEX_BUDGET} bytes compiled; use fewer or simpler ones"
            )
        };
        let left = REGEX_BUDGET
            .checked_sub(self.regex_memory + REGEX_CACHE)
            .ok_or_else(over_budget)?;
        let regex = Regex::builder()
            .syntax(syntax::Config::new().utf8(false))
            .configure(
                Regex::config()
                    .nfa_size_limit(Some(REGEX_SIZE_LIMIT.min(left)))
                    .hybrid_cache_capacity(REGEX_CACHE),
            )
            .build(pattern)
            .map_err(|e| match (e.syntax_error(), e.size_limit()) {
                (Some(syntax), _) => format!("regex parse error: {syntax}"),
                (None, Some(limit)) if limit < REGEX_SIZE_LIMIT => over_budget(),
                (None, Some(limit)) => format!("compiles to more than {limit} bytes"),
                (None, None) => e.to_string(),
            })?;
        self.regex_memory += regex.memory_usage() + REGEX_CACHE;
        if self.regex_memory > REGEX_BUDGET {
            return Err(over_budget());
        }
        Ok(regex)
    }

    fn target(&self, name: &str, field: &str) -> Result<usize, RuleSetError> {
        self.targets.iter().position(|t| t == name).ok_or_else(|| {
            RuleSetError(format!(
                "{field}: unknown target \"{name}\" (this nginx has {})",
                self.targets.join(", ")
            ))
        })
    }

    fn input(&mut self, source: Source) -> usize {
        match self.inputs.iter().position(|s| *s == source) {
            Some(i) => i,
            None => {
                self.inputs.push(source);
                self.inputs.len() - 1
            }
        }
    }

    fn key(&mut self, name: &str, use_: KeyUse, field: &str) -> Result<usize, RuleSetError> {
        if name.is_empty() {
            return Err(RuleSetError(format!("{field}: empty key name")));
        }
        let key = KeyRef {
            name: name.to_string(),
            use_,
        };
        Ok(match self.keys.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                self.keys.push(key);
                self.keys.len() - 1
            }
        })
    }

    fn override_(&mut self, spec: OverrideSpec) -> Result<Override, RuleSetError> {
        let header = Source::parse(&format!("header:{}", spec.header))
            .map_err(|e| RuleSetError(format!("override.header: {e}")))?;
        Ok(Override {
            header: spec.header,
            input: self.input(header),
            from: networks(&spec.from, "override.from")?,
            targets: self.targets.to_vec(),
        })
    }

    fn rule(&mut self, spec: RuleSpec) -> Result<Rule, RuleSetError> {
        let err = |field: &str, message: String| RuleSetError(format!("{field}: {message}"));
        let to = self.target(&spec.to, "to")?;
        let ip = spec
            .ip
            .as_deref()
            .map(|ip| networks(ip, "ip"))
            .transpose()?;
        let ip_key = spec
            .ip_key
            .as_deref()
            .map(|k| self.key(k, KeyUse::Whitelist, "ip_key"))
            .transpose()?;
        let mut matchers = Vec::new();
        if let Some(ids) = &spec.in_ {
            matchers.push(IdMatcher::In(IdSet::parse(
                ids.iter().map(|s| s.as_bytes()),
            )));
        }
        if let Some(key) = &spec.in_key {
            matchers.push(IdMatcher::InKey(self.key(key, KeyUse::Ids, "in_key")?));
        }
        if let Some(suffixes) = &spec.suffix {
            matchers.push(IdMatcher::Suffix(non_empty_values(suffixes, "suffix")?));
        }
        if let Some(prefixes) = &spec.prefix {
            matchers.push(IdMatcher::Prefix(non_empty_values(prefixes, "prefix")?));
        }
        if let Some(ranges) = &spec.range {
            if ranges.is_empty() {
                return Err(err("range", "no ranges".into()));
            }
            if let Some((lo, hi)) = ranges.iter().find(|(lo, hi)| lo > hi) {
                return Err(err("range", format!("[{lo}, {hi}] ends before it starts")));
            }
            matchers.push(IdMatcher::Range(ranges.clone()));
        }
        if let Some(pattern) = &spec.regex {
            let regex = self.regex(pattern).map_err(|e| err("regex", e))?;
            matchers.push(IdMatcher::Regex(pattern.clone(), regex));
        }
        let id = match (&spec.id, matchers.is_empty()) {
            (Some(source), false) => {
                let source = Source::parse(source).map_err(|e| err("id", e))?;
                Some(IdCondition {
                    input: self.input(source),
                    matchers,
                })
            }
            (Some(_), true) => {
                return Err(err(
                    "id",
                    "needs in, in_key, suffix, prefix, range or regex to match it by".into(),
                ))
            }
            (None, false) => {
                return Err(err(
                    "id",
                    "missing: in, in_key, suffix, prefix, range and regex match an id".into(),
                ))
            }
            (None, true) => None,
        };
        let percent = match spec.percent {
            Some(value) => Some(self.percent(&value, spec.by.as_deref(), spec.seed, &spec.name)?),
            None => {
                if spec.by.is_some() {
                    return Err(err("by", "only means something with percent".into()));
                }
                if spec.seed.is_some() {
                    return Err(err("seed", "only means something with percent".into()));
                }
                None
            }
        };
        let guard = spec.guard.map(|g| guard(g, to, self.default)).transpose()?;
        Ok(Rule {
            name: spec.name,
            to,
            ip,
            ip_key,
            id,
            percent,
            guard,
        })
    }

    fn percent(
        &mut self,
        value: &Value,
        by: Option<&[String]>,
        seed: Option<String>,
        name: &str,
    ) -> Result<Percent, RuleSetError> {
        let amount = match value {
            Value::Number(n) => Amount::Fixed(hundredths(n.as_f64(), "percent")?),
            Value::Object(_) => {
                let ramp: RampSpec = serde_json::from_value(value.clone())
                    .map_err(|e| RuleSetError(format!("percent: {e}")))?;
                let from = hundredths(Some(ramp.from), "percent.from")?;
                let to = hundredths(Some(ramp.to), "percent.to")?;
                let start = instant(&ramp.start, "percent.start")?;
                let end = instant(&ramp.end, "percent.end")?;
                if to < from {
                    return Err(RuleSetError(
                        "percent: a ramp only goes up (to < from); lower it in a step of its own"
                            .into(),
                    ));
                }
                if end <= start {
                    return Err(RuleSetError("percent: end is not after start".into()));
                }
                Amount::Ramp {
                    from,
                    to,
                    start,
                    end,
                }
            }
            other => {
                return Err(RuleSetError(format!(
                    "percent: {other} is neither a number nor a ramp object"
                )))
            }
        };
        let by = match by {
            None => vec![KeySource::Ip],
            Some([]) => return Err(RuleSetError("by: empty".into())),
            Some(sources) => sources
                .iter()
                .map(|text| match text.as_str() {
                    "ip" => Ok(KeySource::Ip),
                    text => Source::parse(text)
                        .map(|s| KeySource::Input(self.input(s)))
                        .map_err(|e| RuleSetError(format!("by: {e}"))),
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Percent {
            amount,
            by,
            seed: seed.unwrap_or_else(|| name.to_string()),
        })
    }
}

/// A rule's guard, for a rule that sends to `to` in a rule set whose default is `default`.
fn guard(spec: GuardSpec, to: usize, default: usize) -> Result<Guard, RuleSetError> {
    let err = |message: String| RuleSetError(format!("guard.{message}"));
    if !(0.0..=100.0).contains(&spec.max_error_rate) {
        return Err(err(format!(
            "max_error_rate: {} is not a number of percentage points from 0 to 100",
            spec.max_error_rate
        )));
    }
    let min_requests = spec.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
    if min_requests == 0 {
        return Err(err("min_requests: must be at least 1".into()));
    }
    let window = spec.window.unwrap_or(u64::from(DEFAULT_WINDOW));
    if !(1..=u64::from(MAX_WINDOW)).contains(&window) {
        return Err(err(format!(
            "window: {window} is not a number of seconds from 1 to {MAX_WINDOW}"
        )));
    }
    if to == default {
        return Err(RuleSetError(
            "guard: the rule sends to the default target, whose 5xx share the guard compares it with"
                .into(),
        ));
    }
    Ok(Guard {
        max_error_rate: spec.max_error_rate,
        min_requests,
        window: window as u32,
    })
}

/// A percentage as hundredths: 0 to 100 in steps of 0.01.
fn hundredths(value: Option<f64>, field: &str) -> Result<u32, RuleSetError> {
    let bad = || {
        RuleSetError(format!(
            "{field}: must be a number from 0 to 100 in steps of 0.01"
        ))
    };
    let value = value.ok_or_else(bad)?;
    if !(0.0..=100.0).contains(&value) {
        return Err(bad());
    }
    let scaled = value * 100.0;
    if (scaled - scaled.round()).abs() > 1e-6 {
        return Err(bad());
    }
    Ok((scaled.round() as u32).min(bucket::ALL))
}

/// An RFC 3339 time (`2026-12-02T10:00:00Z`) as Unix seconds.
fn instant(text: &str, field: &str) -> Result<f64, RuleSetError> {
    let time = humantime::parse_rfc3339(text).map_err(|e| {
        RuleSetError(format!(
            "{field}: \"{text}\" is not an RFC 3339 time such as 2026-12-02T10:00:00Z ({e})"
        ))
    })?;
    Ok(time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| RuleSetError(format!("{field}: before 1970")))?
        .as_secs_f64())
}

fn networks(entries: &[String], field: &str) -> Result<IpSet, RuleSetError> {
    let mut nets = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let (net, _) = parse_entry(entry.as_bytes()).map_err(|e| {
            RuleSetError(format!(
                "{field}[{}]: \"{}\" ({e})",
                i + 1,
                entry.escape_debug()
            ))
        })?;
        nets.push(net);
    }
    Ok(IpSet::new(nets))
}

fn non_empty_values(values: &[String], field: &str) -> Result<Vec<Vec<u8>>, RuleSetError> {
    if values.is_empty() || values.iter().any(String::is_empty) {
        return Err(RuleSetError(format!("{field}: needs non-empty values")));
    }
    Ok(values.iter().map(|v| v.as_bytes().to_vec()).collect())
}
