//! Rule set edits (a ramp step, the kill switch: gray-core's `rules::edit`) as grayctl refuses
//! them, and what each compiled rule does, in words.

use gray_core::rules::{edit, Amount, IdMatcher, KeySource, RuleSet};
use serde_json::Value;

use crate::failure::{refused, Failure};

/// Sets rule `name`'s fixed percentage to `percent`; lowering it (which takes users back out of
/// the canary) needs `down`. Returns the old percentage.
pub fn set_percent(doc: &mut Value, name: &str, percent: f64, down: bool) -> Result<f64, Failure> {
    edit::set_percent(doc, name, percent, down).map_err(refused)
}

/// The kill switch: `enabled: false` sends everyone to the default.
pub fn set_enabled(doc: &mut Value, enabled: bool) -> Result<(), Failure> {
    edit::set_enabled(doc, enabled).map_err(refused)
}

fn hundredths(h: u32) -> String {
    format!("{}%", f64::from(h) / 100.0)
}

fn list(items: &[Vec<u8>]) -> String {
    items
        .iter()
        .map(|i| format!("\"{}\"", i.escape_ascii()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line per rule: its number, name, conditions and target; `now` (Unix seconds) gives a
/// ramp's share at this moment.
pub fn describe(rules: &RuleSet, targets: &[String], now: f64) -> Vec<String> {
    let target = |i: usize| targets.get(i).map_or("?", String::as_str);
    let mut lines = vec![format!(
        "{}; default {}{}",
        if rules.enabled {
            "enabled"
        } else {
            "DISABLED: everyone goes to the default"
        },
        target(rules.default),
        match &rules.override_ {
            Some(o) => format!("; override header {}", o.header),
            None => String::new(),
        }
    )];
    if let Some(lane) = &rules.lane {
        let labels: Vec<String> = lane
            .labels
            .iter()
            .enumerate()
            .map(|(t, label)| format!("{} {label}", target(t)))
            .collect();
        lines.push(format!(
            "lane header {}: {}; {}{}",
            lane.header,
            labels.join(", "),
            if lane.from.is_empty() {
                "no upstream lane honoured (from is empty)".to_string()
            } else {
                "an upstream lane honoured from the addresses in from".to_string()
            },
            match &lane.baggage {
                Some(member) => format!("; also baggage member {member}"),
                None => String::new(),
            }
        ));
    }
    if let Some(anonymous) = &rules.anonymous {
        lines.push(match anonymous.input {
            Some(_) => format!(
                "anonymous: {} minted where a rule reads it and the request has none (Max-Age {})",
                anonymous.source, anonymous.max_age
            ),
            None => format!(
                "anonymous: no rule reads {}, so no id is minted",
                anonymous.source
            ),
        });
    }
    for (i, rule) in rules.rules.iter().enumerate() {
        let mut conditions = Vec::new();
        if rule.ip.is_some() {
            conditions.push("client address in its ip list".to_string());
        }
        if let Some(key) = rule.ip_key {
            conditions.push(format!(
                "client address in the whitelist of key {}",
                rules.keys[key].name
            ));
        }
        if let Some(id) = &rule.id {
            let source = &rules.inputs[id.input];
            for matcher in &id.matchers {
                conditions.push(match matcher {
                    IdMatcher::In(ids) => format!("{source} is one of {} ids", ids.len()),
                    IdMatcher::InKey(key) => {
                        format!("{source} is in key {}", rules.keys[*key].name)
                    }
                    IdMatcher::Suffix(s) => format!("{source} ends with {}", list(s)),
                    IdMatcher::Prefix(p) => format!("{source} starts with {}", list(p)),
                    IdMatcher::Range(r) => format!(
                        "{source} is in {}",
                        r.iter()
                            .map(|(a, b)| format!("{a}..={b}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    IdMatcher::Regex(pattern, _) => format!("{source} matches /{pattern}/"),
                });
            }
        }
        if let Some(p) = &rule.percent {
            let by: Vec<String> =
                p.by.iter()
                    .map(|k| match k {
                        KeySource::Input(i) => rules.inputs[*i].to_string(),
                        KeySource::Ip => "ip".into(),
                    })
                    .collect();
            let share = match p.amount {
                Amount::Fixed(h) => hundredths(h),
                Amount::Ramp { from, to, .. } => format!(
                    "{} ramping {} -> {}",
                    hundredths(p.amount.at(now)),
                    hundredths(from),
                    hundredths(to)
                ),
            };
            conditions.push(format!(
                "{share} of {} (seed \"{}\")",
                by.join(" or "),
                p.seed
            ));
        }
        if conditions.is_empty() {
            conditions.push("every request".into());
        }
        lines.push(format!(
            "{}. {}: {} -> {}",
            i + 1,
            rule.name,
            conditions.join(" and "),
            target(rule.to)
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use gray_core::rules::schema;

    const RULES: &str = r#"{"format": 1, "default": "@prod1", "rules": [
        {"name": "ramp", "percent": 5, "by": ["cookie:uid", "ip"], "seed": "r42", "to": "@prod2-grey"},
        {"name": "timed", "percent": {"from": 1, "to": 50, "start": "2026-12-02T10:00:00Z", "end": "2026-12-02T12:00:00Z"}, "to": "@prod2-grey"},
        {"name": "beta", "id": "header:X-User-Id", "in": ["u1", "u2"], "suffix": ["7"], "to": "@prod2-grey"}
    ]}"#;

    fn targets() -> Vec<String> {
        vec!["@prod1".into(), "@prod2-grey".into()]
    }

    #[test]
    fn a_raise_keeps_everything_else_and_a_cut_needs_down() {
        let mut doc: Value = serde_json::from_str(RULES).unwrap();
        assert_eq!(set_percent(&mut doc, "ramp", 10.0, false).unwrap(), 5.0);
        let text = serde_json::to_string(&doc).unwrap();
        assert!(
            text.starts_with(
                r#"{"format":1,"default":"@prod1","rules":[{"name":"ramp","percent":10,"#
            ),
            "{text}"
        );
        let err = set_percent(&mut doc, "ramp", 2.5, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pass --down"), "{err}");
        assert_eq!(set_percent(&mut doc, "ramp", 2.5, true).unwrap(), 10.0);
        assert_eq!(doc["rules"][0]["percent"], 2.5);
    }

    #[test]
    fn percent_refusals_name_the_rule() {
        let mut doc: Value = serde_json::from_str(RULES).unwrap();
        let err = |r: Result<f64, Failure>| r.unwrap_err().to_string();
        assert_eq!(
            err(set_percent(&mut doc, "nope", 1.0, false)),
            "no rule named \"nope\" (rules: ramp, timed, beta)"
        );
        assert_eq!(
            err(set_percent(&mut doc, "beta", 1.0, false)),
            "rule \"beta\" has no percent"
        );
        assert!(err(set_percent(&mut doc, "timed", 60.0, false)).contains("ramps over time"));
        assert!(err(set_percent(&mut doc, "ramp", 101.0, false)).contains("between 0 and 100"));
    }

    #[test]
    fn the_kill_switch_flips_enabled() {
        let mut doc: Value = serde_json::from_str(RULES).unwrap();
        set_enabled(&mut doc, false).unwrap();
        assert_eq!(doc["enabled"], false);
        set_enabled(&mut doc, true).unwrap();
        assert_eq!(doc["enabled"], true);
    }

    #[test]
    fn each_rule_is_described_in_words() {
        let rules = schema::compile(RULES.as_bytes(), &targets()).unwrap();
        // 11:00, half-way through the ramp.
        let lines = describe(&rules, &targets(), 1_796_209_200.0);
        assert_eq!(
            lines,
            [
                "enabled; default @prod1",
                "1. ramp: 5% of cookie:uid or ip (seed \"r42\") -> @prod2-grey",
                "2. timed: 25.5% ramping 1% -> 50% of ip (seed \"timed\") -> @prod2-grey",
                "3. beta: header:X-User-Id is one of 2 ids and header:X-User-Id ends with \"7\" -> @prod2-grey",
            ]
        );
    }
}
