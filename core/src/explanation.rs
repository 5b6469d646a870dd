//! What an evaluation saw, for explanations: the [`Trace`] that `decide` and `explain` watch a
//! rule set's evaluation with, and the notes it keeps (why the deciding rule held, a bucket, the
//! override and lane headers, a minted id's odds).

use crate::decision::Carry;
use crate::rules::{self, LaneSeen, Matched, OverrideSeen, Trace};

/// What an evaluation saw, for `decide`/`explain`: why the deciding rule held, the bucket of a
/// percentage, and the override header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Explanation {
    /// Why the deciding rule's conditions held, one phrase each.
    pub matched: Vec<String>,
    /// The last percentage bucket computed, its threshold and the share in hundredths.
    pub bucket: Option<(u32, u64, Option<u32>)>,
    pub override_: Option<String>,
    /// An inbound lane header and what came of it.
    pub lane_seen: Option<String>,
    /// The lane header as the request carries it on.
    pub lane: Option<String>,
    /// The anonymous id minted, and the share of new ids the minting rule takes.
    pub anonymous: Option<String>,
    current_rule: Option<usize>,
    minted_by: Option<usize>,
}

impl Explanation {
    /// Notes what the decision sends on: the lane header, and a minted id's odds.
    pub(crate) fn carried<'s>(
        &mut self,
        rules: &rules::RuleSet,
        decision: &rules::Decision,
        carry: &Carry<'_>,
        now: f64,
        target_name: impl Fn(usize) -> &'s str,
    ) {
        if let Some(lane) = &rules.lane {
            self.lane = Some(match carry.lane {
                Some((_, label)) => format!("{}: {label}", lane.header),
                None => format!("{}: as it came", lane.header),
            });
        }
        if let (Some(index), Some(_)) = (self.minted_by, decision.minted) {
            let rule = &rules.rules[index];
            self.anonymous = Some(match &rule.percent {
                Some(percent) => format!(
                    "a new id would be minted; {}% of new ids go to {}",
                    f64::from(percent.amount.at(now)) / 100.0,
                    target_name(rule.to)
                ),
                None => format!(
                    "a new id would be minted for rule {} \"{}\"",
                    index + 1,
                    rule.name
                ),
            });
        }
    }
}

impl Trace for Explanation {
    fn matched(&mut self, rule: usize, why: Matched<'_>) {
        if self.current_rule != Some(rule) {
            self.current_rule = Some(rule);
            self.matched.clear();
        }
        self.matched.push(match why {
            Matched::Ip { client, range, key } => match key {
                Some(key) => format!("client {client} matched entry {range} of key {key}"),
                None => format!("client {client} matched {range}"),
            },
            Matched::Id { source, id, how } => {
                format!("{source} \"{}\" {how}", id.escape_ascii())
            }
            Matched::Percent {
                source,
                key,
                bucket,
                threshold,
                hundredths,
            } => {
                self.bucket = Some((bucket, threshold, Some(hundredths)));
                format!(
                    "bucket {bucket} of {} \"{}\" < threshold {threshold} ({}%)",
                    source.map_or("ip".to_string(), |s| s.to_string()),
                    key.escape_ascii(),
                    f64::from(hundredths) / 100.0
                )
            }
        });
    }

    fn missed(&mut self, rule: usize, _why: &'static str) {
        if self.current_rule == Some(rule) {
            self.matched.clear();
        }
        self.current_rule = None;
    }

    fn bucket_out(&mut self, rule: usize, bucket: u32, threshold: u64) {
        self.bucket = Some((bucket, threshold, None));
        self.missed(rule, "out of the percentage");
    }

    fn lane_seen(&mut self, seen: LaneSeen<'_>) {
        self.lane_seen = Some(format!(
            "lane {}: {} {} ({})",
            seen.header,
            seen.value.escape_ascii(),
            if seen.target.is_some() {
                "honoured"
            } else {
                "ignored"
            },
            seen.why
        ));
    }

    fn minted(&mut self, rule: usize) {
        self.minted_by = Some(rule);
    }

    fn override_seen(&mut self, seen: OverrideSeen<'_>) {
        self.override_ = Some(format!(
            "override {}: {} {} ({})",
            seen.header,
            seen.value.escape_ascii(),
            if seen.honoured { "honoured" } else { "ignored" },
            seen.why
        ));
    }
}
