//! The series: a name made of the labels of one way to decide (rule set, outcome, rule, target),
//! registered in the region so an index means the same series in every worker and across
//! reloads; the series of a rule set's and the whitelist's decisions.

use serde::Serialize;

use super::REGION;
use crate::region::RegisterError;
use gray_core::snapshot::{CompiledRuleSet, RuleSetSeries};

/// How a request was decided, as the `outcome` label says it.
pub mod outcome {
    pub const RULE: &str = "rule";
    pub const DEFAULT: &str = "default";
    pub const DISABLED: &str = "disabled";
    pub const OVERRIDE: &str = "override";
    pub const LANE: &str = "lane";
    pub const LISTED: &str = "listed";
    pub const UNLISTED: &str = "unlisted";
}

/// A series' labels: the rule set's key (the whitelist's key for the whitelist), how the request
/// was decided, the rule's name (for a rule) and the target location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Labels {
    pub rule_set: String,
    pub outcome: String,
    pub rule: String,
    pub target: String,
}

/// Separates the labels in a series name; it cannot occur in a key, a rule name or a location
/// that anyone would write, and a label holding it only names a different series.
const SEPARATOR: char = '\u{1f}';

impl Labels {
    pub fn new(rule_set: &str, outcome: &str, rule: &str, target: &str) -> Labels {
        Labels {
            rule_set: rule_set.into(),
            outcome: outcome.into(),
            rule: rule.into(),
            target: target.into(),
        }
    }

    fn name(&self) -> String {
        [&self.rule_set, &self.outcome, &self.rule, &self.target]
            .map(String::as_str)
            .join(&SEPARATOR.to_string())
    }

    pub(super) fn from_name(name: &[u8]) -> Option<Labels> {
        let text = std::str::from_utf8(name).ok()?;
        let mut parts = text.split(SEPARATOR);
        let labels = Labels::new(parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        parts.next().is_none().then_some(labels)
    }

    /// The labels as a scrape shows them: name and value, in order.
    pub(super) fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            ("rule_set", &self.rule_set),
            ("outcome", &self.outcome),
            ("rule", &self.rule),
            ("target", &self.target),
        ]
    }
}

/// The series of each way rule set `compiled` can decide, through `series` (labels to index).
pub fn rule_set_series(
    compiled: &CompiledRuleSet,
    targets: &[String],
    mut series: impl FnMut(&Labels) -> u32,
) -> RuleSetSeries {
    let rules = &compiled.rules;
    let target = |index: usize| targets.get(index).map_or("", String::as_str);
    let key = compiled.key.as_str();
    RuleSetSeries {
        rules: rules
            .rules
            .iter()
            .map(|rule| {
                series(&Labels::new(
                    key,
                    outcome::RULE,
                    &rule.name,
                    target(rule.to),
                ))
            })
            .collect(),
        default: series(&Labels::new(
            key,
            outcome::DEFAULT,
            "",
            target(rules.default),
        )),
        disabled: series(&Labels::new(
            key,
            outcome::DISABLED,
            "",
            target(rules.default),
        )),
        override_: match &rules.override_ {
            Some(_) => (0..targets.len())
                .map(|t| series(&Labels::new(key, outcome::OVERRIDE, "", target(t))))
                .collect(),
            None => Vec::new(),
        },
        lane: match &rules.lane {
            Some(_) => (0..targets.len())
                .map(|t| series(&Labels::new(key, outcome::LANE, "", target(t))))
                .collect(),
            None => Vec::new(),
        },
    }
}

/// The whitelist's series, by target: unlisted (production), listed (gray).
pub fn whitelist_series(
    key: &str,
    targets: &[String],
    mut series: impl FnMut(&Labels) -> u32,
) -> [u32; 2] {
    [
        series(&Labels::new(key, outcome::UNLISTED, "", &targets[0])),
        series(&Labels::new(key, outcome::LISTED, "", &targets[1])),
    ]
}

/// The series of `labels`, registered if new; 0 (nothing counted) without a shared region, or
/// with the reason it could not be registered.
pub fn register(labels: &Labels) -> Result<u32, RegisterError> {
    match REGION.get() {
        Some(region) => region.series(labels.name().as_bytes()),
        None => Ok(0),
    }
}

/// Lets go of every series but `in_use` (this process's loaded rule sets and whitelist): a
/// series no live process holds can be given to a new name.
pub fn keep_only(in_use: &[u32]) -> Result<(), RegisterError> {
    match REGION.get() {
        Some(region) => region.keep_only(in_use),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_through_a_series_name() {
        let labels = Labels::new("gray:rules", outcome::RULE, "beta \"users\"", "@canary");
        assert_eq!(Labels::from_name(labels.name().as_bytes()), Some(labels));
        assert_eq!(Labels::from_name(b"too\x1ffew"), None);
    }
}
