//! The dashboard `gray.dashboard()` serves: one self-contained page (page.html: inline CSS and
//! script, nothing fetched from elsewhere, for gateways that are offline) and the JSON it polls
//! every 2 s from the same URL: this nginx's scrape (`metrics("json")`: every series' counters,
//! the guards, every worker's state, the rollout plans with their last checks) and the rule sets
//! the answering worker routes by, each rule with where it sends. Rates, shares and percentiles
//! over time are the page's to work out from the counters: nothing is kept on the server.

use gray_core::clock::unix_now;
use gray_core::snapshot::Snapshot;
use serde::Serialize;

use crate::metrics;

pub const PAGE: &str = include_str!("page.html");
pub const PAGE_CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// A rule set as the page lists it.
#[derive(Serialize)]
struct RuleSetView<'a> {
    key: &'a str,
    enabled: bool,
    default: &'a str,
    rules: Vec<RuleView<'a>>,
}

#[derive(Serialize)]
struct RuleView<'a> {
    name: &'a str,
    to: &'a str,
    /// Its percentage now, for a rule that has one.
    percent: Option<f64>,
    guarded: bool,
}

/// What the page polls: `{"now": .., "rule_sets": [..], "scrape": {..}}`.
pub fn json(snapshot: &Snapshot) -> String {
    let now = unix_now();
    let rule_sets: Vec<RuleSetView> = snapshot
        .rule_sets
        .iter()
        .flatten()
        .map(|active| {
            let set = &active.compiled.rules;
            RuleSetView {
                key: &active.compiled.key,
                enabled: set.enabled,
                default: snapshot.target_name(set.default),
                rules: set
                    .rules
                    .iter()
                    .map(|rule| RuleView {
                        name: &rule.name,
                        to: snapshot.target_name(rule.to),
                        percent: rule
                            .percent
                            .as_ref()
                            .map(|p| f64::from(p.amount.at(now)) / 100.0),
                        guarded: rule.guard.is_some(),
                    })
                    .collect(),
            }
        })
        .collect();
    let scrape = metrics::json(crate::guard::states(snapshot));
    format!(
        r#"{{"now":{now},"rule_sets":{},"scrape":{scrape}}}"#,
        serde_json::to_string(&rule_sets).expect("rule sets are plain data")
    )
}
