//! The judge of a rollout's checks: the fleet's responses to the rule's target and to the
//! default target over one interval ([`Window`]), judged against the plan's gates. Pure
//! arithmetic on counts; summing the gateways' contributions is the caller's business.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::guard::Counts;

/// The latency histogram's upper bounds, in seconds: the one definition the module counts by
/// and the judge reads p99 from.
pub const LATENCY_BOUNDS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// One target's responses over a window: how many, the 5xx among them, and how many fell in
/// each latency bucket (`LATENCY_BOUNDS`, not cumulative; slower than the last in none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub responses: u64,
    pub errors: u64,
    pub buckets: [u64; LATENCY_BOUNDS.len()],
}

impl Traffic {
    pub fn counts(&self) -> Counts {
        Counts {
            responses: self.responses,
            errors: self.errors,
        }
    }

    /// The 99th percentile as the histogram bounds it: the upper bound of the bucket the 99th
    /// percentile response falls in; infinity when it is slower than the last bound; `None`
    /// without responses.
    pub fn p99(&self) -> Option<f64> {
        if self.responses == 0 {
            return None;
        }
        let rank = (u128::from(self.responses) * 99).div_ceil(100);
        let mut seen = 0u128;
        for (count, bound) in self.buckets.iter().zip(LATENCY_BOUNDS) {
            seen += u128::from(*count);
            if seen >= rank {
                return Some(bound);
            }
        }
        Some(f64::INFINITY)
    }

    pub fn add(&mut self, other: &Traffic) {
        self.responses = self.responses.saturating_add(other.responses);
        self.errors = self.errors.saturating_add(other.errors);
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine = mine.saturating_add(theirs);
        }
    }
}

/// The fleet's responses over one check's interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// To the rule's target.
    pub canary: Traffic,
    /// To the default target.
    pub baseline: Traffic,
}

/// The gates a check applies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    /// Percentage points the canary's 5xx share may exceed the default's by.
    pub max_error_rate: f64,
    /// Seconds the canary's p99 may reach, if set.
    pub max_p99: Option<f64>,
    /// Canary responses a check needs to be conclusive.
    pub min_requests: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Passed,
    Failed,
    /// Too few canary responses to judge: never a pass.
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// One check: when, the verdict, the figures it was judged on, and why, in words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Unix seconds.
    pub at: f64,
    pub verdict: Verdict,
    pub canary: Figures,
    pub baseline: Figures,
    pub why: String,
}

/// A target's figures as a check saw them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub responses: u64,
    pub errors: u64,
    /// Percent.
    pub error_rate: f64,
    /// Seconds, as the histogram bounds it; `None` without responses or beyond the last bound.
    pub p99: Option<f64>,
}

impl Figures {
    fn of(traffic: &Traffic) -> Figures {
        Figures {
            responses: traffic.responses,
            errors: traffic.errors,
            error_rate: traffic.counts().error_rate(),
            p99: traffic.p99().filter(|p| p.is_finite()),
        }
    }
}

/// A p99 as the histogram gives it.
struct P99(Option<f64>);

impl fmt::Display for P99 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) if p.is_finite() => write!(f, "<= {p}s"),
            Some(_) => write!(f, "> {}s", LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1]),
            None => f.write_str("none"),
        }
    }
}

/// Judges `window` by `gates`, at `at` (Unix seconds); `baseline_target` names the default target
/// in the words.
pub fn check(gates: &Gates, window: &Window, baseline_target: &str, at: f64) -> Check {
    let (canary, baseline) = (window.canary.counts(), window.baseline.counts());
    let figures = format!(
        "5xx {:.1}% of {} responses vs {:.1}% of {} on {baseline_target}",
        canary.error_rate(),
        thousands(canary.responses),
        baseline.error_rate(),
        thousands(baseline.responses),
    );
    let (verdict, why) = if canary.responses == 0 && baseline.responses == 0 {
        (
            Verdict::Inconclusive,
            format!(
                "holding: 0 of {} requests, and no gateway counted a response to either target (they count with init_by_lua's require \"gray\" and count_responses)",
                thousands(gates.min_requests)
            ),
        )
    } else if canary.responses < gates.min_requests {
        (
            Verdict::Inconclusive,
            format!(
                "holding: {} of {} requests",
                thousands(canary.responses),
                thousands(gates.min_requests)
            ),
        )
    } else if canary.error_rate() - baseline.error_rate() > gates.max_error_rate {
        (
            Verdict::Failed,
            format!(
                "{figures}, over the {} point{} allowed",
                gates.max_error_rate,
                if gates.max_error_rate == 1.0 { "" } else { "s" }
            ),
        )
    } else if let Some(max) = gates
        .max_p99
        .filter(|&max| window.canary.p99().is_some_and(|p| p > max))
    {
        (
            Verdict::Failed,
            format!(
                "p99 {} of {} responses, over the {max}s allowed",
                P99(window.canary.p99()),
                thousands(canary.responses)
            ),
        )
    } else {
        (Verdict::Passed, figures)
    };
    Check {
        at,
        verdict,
        canary: Figures::of(&window.canary),
        baseline: Figures::of(&window.baseline),
        why,
    }
}

/// `n` with thousands separated by commas, as the messages write counts.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATES: Gates = Gates {
        max_error_rate: 1.0,
        max_p99: Some(0.5),
        min_requests: 100,
    };

    fn traffic(responses: u64, errors: u64, fast: u64) -> Traffic {
        let mut buckets = [0; 8];
        buckets[0] = fast;
        buckets[7] = responses - fast;
        Traffic {
            responses,
            errors,
            buckets,
        }
    }

    #[test]
    fn p99_is_the_bound_of_the_bucket_the_99th_percentile_falls_in() {
        assert_eq!(traffic(100, 0, 99).p99(), Some(0.005));
        assert_eq!(traffic(100, 0, 98).p99(), Some(5.0));
        let mut slow = traffic(100, 0, 0);
        slow.buckets[7] = 98;
        assert_eq!(slow.p99(), Some(f64::INFINITY));
        assert_eq!(Traffic::default().p99(), None);
    }

    #[test]
    fn too_few_canary_responses_is_inconclusive_however_they_went() {
        let c = check(
            &GATES,
            &Window {
                canary: traffic(12, 12, 0),
                baseline: traffic(3880, 8, 3880),
            },
            "@prod1",
            1.0,
        );
        assert_eq!(c.verdict, Verdict::Inconclusive);
        assert_eq!(c.why, "holding: 12 of 100 requests");
    }

    #[test]
    fn fails_on_the_error_rate_over_the_default_then_on_p99_and_passes_otherwise() {
        let baseline = traffic(3880, 8, 3880);
        let c = check(
            &GATES,
            &Window {
                canary: traffic(412, 128, 412),
                baseline,
            },
            "@prod1",
            1.0,
        );
        assert_eq!(c.verdict, Verdict::Failed);
        assert_eq!(
            c.why,
            "5xx 31.1% of 412 responses vs 0.2% of 3,880 on @prod1, over the 1 point allowed"
        );
        let slow = check(
            &GATES,
            &Window {
                canary: traffic(412, 0, 400),
                baseline,
            },
            "@prod1",
            1.0,
        );
        assert_eq!(slow.verdict, Verdict::Failed);
        assert_eq!(
            slow.why,
            "p99 <= 5s of 412 responses, over the 0.5s allowed"
        );
        let good = check(
            &GATES,
            &Window {
                canary: traffic(412, 1, 412),
                baseline,
            },
            "@prod1",
            1.0,
        );
        assert_eq!(good.verdict, Verdict::Passed);
        assert_eq!(good.canary.p99, Some(0.005));
    }

    #[test]
    fn counts_read_with_thousands_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(3880), "3,880");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
