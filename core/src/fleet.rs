//! What a gateway reports of itself when `report` is on, so `grayctl status` and `grayctl wait`
//! can tell which gateways serve the latest change. One Redis hash (`keys::gateways`), one field
//! per worker (`host:pid`) holding a [`Report`] as JSON, rewritten after every load and at least
//! every [`Report::every`]. A worker that stops reporting is not deleted (it cannot say it died):
//! readers count it gone once it has missed [`MISSED_BEATS`] reports, and the whole hash expires
//! when no worker reports at all.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often a worker reports with `report = true`.
pub const DEFAULT_REPORT_EVERY: Duration = Duration::from_secs(10);
/// A worker whose last report is this many intervals old is gone.
pub const MISSED_BEATS: f64 = 3.0;

/// One key as a worker has it loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    pub key: String,
    /// The version in force ([`version_text`]); `None` when nothing is loaded from the key (a
    /// rule set key that is missing, or whose every value so far was rejected).
    pub version: Option<String>,
}

/// What one worker serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub host: String,
    pub pid: u32,
    /// gray's version.
    pub gray: String,
    /// The whitelist key, the rule set keys and the keys their rules reference.
    pub keys: Vec<KeyState>,
    /// When the snapshot in force was built, Unix seconds.
    pub loaded_at: f64,
    pub reported_at: f64,
    /// Seconds between reports, at most.
    pub every: f64,
}

impl Report {
    /// The hash field this report is written to.
    pub fn field(&self) -> String {
        format!("{}:{}", self.host, self.pid)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report is plain data")
    }

    /// Whether the worker has missed too many reports to count as running, at `now`.
    pub fn gone(&self, now: f64) -> bool {
        now - self.reported_at > self.every * MISSED_BEATS + 1.0
    }
}

/// A key's version as reports and grayctl write it.
pub fn version_text(version: u64) -> String {
    format!("{version:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_gone_after_missing_its_reports() {
        let report = Report {
            host: "gw1".into(),
            pid: 42,
            gray: "0.1.0".into(),
            keys: vec![KeyState {
                key: "gray".into(),
                version: Some(version_text(0xab)),
            }],
            loaded_at: 100.0,
            reported_at: 100.0,
            every: 10.0,
        };
        assert_eq!(report.field(), "gw1:42");
        assert_eq!(report.keys[0].version.as_deref(), Some("00000000000000ab"));
        assert!(!report.gone(131.0));
        assert!(report.gone(131.5));
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    }
}
