//! A rule's guard: the canary's 5xx share against the default target's, over a window of a
//! gateway's own responses. Pure arithmetic on counts; keeping the windows and acting on a trip is
//! the module's business. Also the Redis side of guards, shared with grayctl: each rule set key
//! has a hash (`keys::guard`) where a gateway records a trip (`trip:<host>:<rule>`, a
//! [`TripRecord`]) and an operator resets one (`reset:<rule>`, the time of the reset): its fields
//! are written and read ([`GuardHash`]) here only.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

const TRIP_FIELD_PREFIX: &str = "trip:";
const RESET_FIELD_PREFIX: &str = "reset:";

/// The field a gateway on `host` records rule `rule`'s trip in.
pub fn trip_field(host: &str, rule: &str) -> String {
    format!("{TRIP_FIELD_PREFIX}{host}:{rule}")
}

/// The field that resets rule `rule`'s guard, holding the reset's time in Unix milliseconds.
pub fn reset_field(rule: &str) -> String {
    format!("{RESET_FIELD_PREFIX}{rule}")
}

/// A rule set's guard hash as read: the trips recorded (by field) and the resets (rule to Unix
/// milliseconds, by rule). Fields that do not parse are left out.
#[derive(Debug, Default, PartialEq)]
pub struct GuardHash {
    pub trips: Vec<(String, TripRecord)>,
    pub resets: BTreeMap<String, u64>,
}

impl GuardHash {
    /// The hash from its fields and values, as HGETALL lists them.
    pub fn parse<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> GuardHash {
        let mut hash = GuardHash::default();
        for (field, value) in pairs {
            let (Ok(field), Ok(value)) = (std::str::from_utf8(field), std::str::from_utf8(value))
            else {
                continue;
            };
            if let Some(rule) = field.strip_prefix(RESET_FIELD_PREFIX) {
                if let Ok(at) = value.parse() {
                    hash.resets.insert(rule.to_string(), at);
                }
            } else if field.starts_with(TRIP_FIELD_PREFIX) {
                if let Ok(record) = serde_json::from_str(value) {
                    hash.trips.push((field.to_string(), record));
                }
            }
        }
        hash
    }
}

/// A trip as a gateway records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TripRecord {
    pub rule: String,
    pub target: String,
    pub host: String,
    pub pid: u32,
    /// Unix seconds.
    pub at: f64,
    /// The rule set's version it tripped under.
    pub version: String,
    pub responses: u64,
    pub errors: u64,
    pub default_responses: u64,
    pub default_errors: u64,
    pub window: u32,
    pub max_error_rate: f64,
}

/// The guard a rule carries (`"guard": {"max_error_rate": 5, "min_requests": 200, "window": 60}`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guard {
    /// Percentage points the rule's target's 5xx share may exceed the default target's by.
    pub max_error_rate: f64,
    /// Responses from the rule's target within the window before the guard judges at all.
    pub min_requests: u64,
    /// Seconds.
    pub window: u32,
}

pub const DEFAULT_MIN_REQUESTS: u64 = 100;
pub const DEFAULT_WINDOW: u32 = 60;
pub const MAX_WINDOW: u32 = 3600;

/// Responses counted within a window, and the 5xx among them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub responses: u64,
    pub errors: u64,
}

impl Counts {
    /// The 5xx share in percent; 0 without responses.
    pub fn error_rate(&self) -> f64 {
        if self.responses == 0 {
            0.0
        } else {
            self.errors as f64 * 100.0 / self.responses as f64
        }
    }
}

/// What tripped a guard: the rule's target's counts and the default target's, over the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trip {
    pub canary: Counts,
    pub baseline: Counts,
    pub window: u32,
    pub max_error_rate: f64,
}

impl TripRecord {
    /// The judgement the record holds.
    pub fn trip(&self) -> Trip {
        Trip {
            canary: Counts {
                responses: self.responses,
                errors: self.errors,
            },
            baseline: Counts {
                responses: self.default_responses,
                errors: self.default_errors,
            },
            window: self.window,
            max_error_rate: self.max_error_rate,
        }
    }
}

impl Guard {
    /// A trip when the rule's target (`canary`) answered at least `min_requests` times and its 5xx
    /// share exceeds the default target's (`baseline`) by more than `max_error_rate` points.
    pub fn check(&self, canary: Counts, baseline: Counts) -> Option<Trip> {
        (canary.responses >= self.min_requests
            && canary.error_rate() - baseline.error_rate() > self.max_error_rate)
            .then_some(Trip {
                canary,
                baseline,
                window: self.window,
                max_error_rate: self.max_error_rate,
            })
    }
}

impl fmt::Display for Trip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "5xx {:.1}% of {} responses in the last {}s against {:.1}% of {} for the default target, over the {} points allowed",
            self.canary.error_rate(),
            self.canary.responses,
            self.window,
            self.baseline.error_rate(),
            self.baseline.responses,
            self.max_error_rate
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUARD: Guard = Guard {
        max_error_rate: 5.0,
        min_requests: 200,
        window: 60,
    };

    fn counts(responses: u64, errors: u64) -> Counts {
        Counts { responses, errors }
    }

    #[test]
    fn trips_when_the_canary_errs_more_than_allowed_over_the_default() {
        let trip = GUARD.check(counts(200, 20), counts(1000, 40)).unwrap();
        assert_eq!(trip.canary.error_rate(), 10.0);
        assert_eq!(
            trip.to_string(),
            "5xx 10.0% of 200 responses in the last 60s against 4.0% of 1000 for the default target, over the 5 points allowed"
        );
    }

    #[test]
    fn holds_within_the_margin_below_min_requests_and_when_both_err_alike() {
        assert_eq!(GUARD.check(counts(200, 18), counts(1000, 40)), None);
        assert_eq!(GUARD.check(counts(199, 199), counts(0, 0)), None);
        assert_eq!(GUARD.check(counts(500, 250), counts(500, 240)), None);
        assert_eq!(GUARD.check(counts(0, 0), counts(0, 0)), None);
    }

    #[test]
    fn a_guard_hash_reads_its_trips_and_resets_and_skips_what_does_not_parse() {
        let record = TripRecord {
            rule: "canary".into(),
            target: "@prod2-grey".into(),
            host: "gw1".into(),
            pid: 7,
            at: 1.5,
            version: "00000000000000ab".into(),
            responses: 200,
            errors: 20,
            default_responses: 1000,
            default_errors: 40,
            window: 60,
            max_error_rate: 5.0,
        };
        let json = serde_json::to_string(&record).unwrap();
        let field = trip_field("gw1", "canary");
        let reset = reset_field("canary");
        let hash = GuardHash::parse([
            (field.as_bytes(), json.as_bytes()),
            (reset.as_bytes(), &b"1700000000000"[..]),
            (b"reset:other", b"soon"),
            (b"trip:gw2:x", b"{"),
            (b"unrelated", b"1"),
        ]);
        assert_eq!(hash.trips, vec![(field, record)]);
        assert_eq!(
            hash.resets,
            BTreeMap::from([("canary".to_string(), 1_700_000_000_000)])
        );
    }

    #[test]
    fn a_default_without_responses_counts_as_error_free() {
        assert!(GUARD.check(counts(200, 11), counts(0, 0)).is_some());
    }
}
