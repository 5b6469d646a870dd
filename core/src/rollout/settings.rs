//! What a plan asks for, as `grayctl rollout start` takes it: the steps (percentages in
//! hundredths), the hold, the interval, the gates and the failure limit, each checked; and the
//! flags' own units (a percentage in steps of 0.01, a duration).

use serde::{Deserialize, Serialize};

use super::judge::Gates;

/// The shortest interval between checks, in seconds.
pub const MIN_INTERVAL: f64 = 1.0;
/// The longest interval between checks, in seconds: a day.
pub const MAX_INTERVAL: f64 = 86_400.0;
/// The longest hold of a step, in seconds: thirty days.
pub const MAX_HOLD: f64 = 30.0 * 86_400.0;
pub const DEFAULT_INTERVAL: f64 = 10.0;
pub const DEFAULT_FAILURE_LIMIT: u32 = 3;
pub const DEFAULT_MIN_REQUESTS: u64 = 100;

/// What a plan asks for, as `grayctl rollout start` takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Percentages in hundredths, increasing; the last within 1..=100% (percentages in JSON).
    #[serde(with = "percentages")]
    pub steps: Vec<u32>,
    /// Seconds each step lasts at least.
    pub hold: f64,
    /// Seconds between checks, and the window each judges.
    pub interval: f64,
    #[serde(flatten)]
    pub gates: Gates,
    /// Failed checks in a row that abort.
    pub failure_limit: u32,
}

impl Settings {
    /// Checks the settings alone.
    pub fn validate(&self) -> Result<(), String> {
        let Some(&last) = self.steps.last() else {
            return Err("--steps: give at least one percentage".into());
        };
        if self.steps.windows(2).any(|w| w[0] >= w[1]) {
            return Err("--steps must increase".into());
        }
        if !(100..=10_000).contains(&last) {
            return Err("--steps: the last step must be between 1 and 100".into());
        }
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval) {
            return Err(format!(
                "--interval must be at least {MIN_INTERVAL}s and at most {}h",
                MAX_INTERVAL / 3600.0
            ));
        }
        if !(0.0..=MAX_HOLD).contains(&self.hold) {
            return Err(format!(
                "--hold must be a duration of at most {}h",
                MAX_HOLD / 3600.0
            ));
        }
        if self.gates.min_requests == 0 {
            return Err("--min-requests must be at least 1: no data, no promotion".into());
        }
        if !(0.0..=100.0).contains(&self.gates.max_error_rate) {
            return Err("--max-error-rate must be between 0 and 100 (percentage points)".into());
        }
        if self
            .gates
            .max_p99
            .is_some_and(|p| p <= 0.0 || !p.is_finite())
        {
            return Err("--max-p99 must be a positive number of seconds".into());
        }
        if self.failure_limit == 0 {
            return Err("--failure-limit must be at least 1".into());
        }
        Ok(())
    }
}

/// A percentage in hundredths: `--steps` and the plan's JSON take steps of 0.01.
pub fn hundredths(percent: f64) -> Result<u32, String> {
    let scaled = percent * 100.0;
    if !(0.0..=10_000.0).contains(&scaled) || (scaled - scaled.round()).abs() > 1e-6 {
        return Err(format!(
            "{percent} is not a percentage between 0 and 100 in steps of 0.01"
        ));
    }
    Ok(scaled.round() as u32)
}

/// Steps as JSON writes them: percentages.
mod percentages {
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(steps: &[u32], s: S) -> Result<S::Ok, S::Error> {
        let percents: Vec<f64> = steps.iter().map(|&h| f64::from(h) / 100.0).collect();
        percents.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        Vec::<f64>::deserialize(d)?
            .into_iter()
            .map(|p| super::hundredths(p).map_err(D::Error::custom))
            .collect()
    }
}

/// Parses a duration as the rollout flags take it: a number with `s`, `m` or `h` (`10s`, `1.5s`,
/// `5m`, `1h`), in seconds.
pub fn parse_duration(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let bad = || format!("\"{text}\" is not a duration: write 10s, 1.5s, 5m or 1h");
    let unit = text.chars().last().ok_or_else(bad)?;
    let number = &text[..text.len() - unit.len_utf8()];
    let scale = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        _ => return Err(bad()),
    };
    match number.parse::<f64>() {
        Ok(n) if n >= 0.0 && n.is_finite() => Ok(n * scale),
        _ => Err(bad()),
    }
}
