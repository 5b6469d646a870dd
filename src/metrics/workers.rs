//! Each worker's state as it publishes it for scrapes: what it has loaded from each key and how
//! its link to Redis is. In the region's slot of its worker id, or kept in the process where
//! there is no region.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use gray_core::rollout::judge::Check;
use serde::{Deserialize, Serialize};

use super::{REGION, WORKER};
use crate::region::MAX_STATE;

/// What one worker has loaded and how its link to Redis is, as it publishes it for scrapes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerState {
    pub worker: usize,
    pub pid: u32,
    pub running: bool,
    pub connected: bool,
    pub subscribed: bool,
    pub tracking: bool,
    pub failures: u64,
    pub last_ok_at: Option<f64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<f64>,
    pub keys: Vec<KeyLoaded>,
    /// The rollout plans of the rule sets it reads, as it last read them.
    #[serde(default)]
    pub rollouts: Vec<RolloutLoaded>,
}

/// The last checks of a plan a worker's state carries: the region's slot for it holds a few KiB.
pub const CHECKS_SHOWN: usize = 5;

/// A rule set's rollout plan as a worker last read it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutLoaded {
    /// The rule set's key.
    pub key: String,
    pub rule: String,
    /// From 1.
    pub step: usize,
    pub percent: f64,
    pub state: String,
    /// `host:pid` of the gateway that last moved it.
    pub driver: Option<String>,
    /// The plan's id and revision: the newest a worker has read wins.
    pub id: u64,
    pub revision: u64,
    /// Its steps' percentages.
    #[serde(default)]
    pub steps: Vec<f64>,
    /// Its last checks, oldest first, with the figures each judged (the dashboard shows them).
    #[serde(default)]
    pub checks: Vec<Check>,
}

/// One key as a worker has it loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyLoaded {
    pub key: String,
    /// `whitelist`, `rule_set` or `ids`.
    pub kind: String,
    /// `None` while nothing is loaded from it.
    pub version: Option<String>,
    /// Whitelist entries, rules or ids.
    pub entries: u64,
    pub loaded_at: Option<f64>,
}

impl WorkerState {
    /// As JSON within `MAX_STATE` bytes: the error message is shortened, then plans' checks
    /// (oldest first) and keys are left out, rather than publish a state cut mid-way.
    fn to_json(&self) -> Vec<u8> {
        let mut state = self.clone();
        loop {
            let json = serde_json::to_vec(&state).expect("a worker state is plain data");
            if json.len() <= MAX_STATE {
                return json;
            }
            match &mut state.last_error {
                Some(error) if error.len() > 200 => {
                    let mut cut = 200;
                    while !error.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    error.truncate(cut);
                }
                _ if state.rollouts.iter().any(|r| !r.checks.is_empty()) => {
                    if let Some(plan) = state.rollouts.iter_mut().find(|r| !r.checks.is_empty()) {
                        plan.checks.remove(0);
                    }
                }
                _ if !state.rollouts.is_empty() && state.keys.is_empty() => {
                    state.rollouts.pop();
                }
                _ => {
                    state.keys.pop();
                }
            }
        }
    }
}

/// This worker's state, for a scrape without a shared region.
static OWN_STATE: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Publishes this worker's state for scrapes.
pub fn publish_state(state: &WorkerState) {
    let json = state.to_json();
    if let Some(region) = REGION.get() {
        region.write_state(WORKER.load(Ordering::Relaxed), &json);
    }
    *OWN_STATE.lock().unwrap_or_else(|e| e.into_inner()) = json;
}

/// This worker's own state, as it last published it.
pub(super) fn own_state() -> Vec<u8> {
    OWN_STATE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_too_large_loses_keys_and_error_text_not_its_shape() {
        let state = WorkerState {
            last_error: Some("e".repeat(10_000)),
            keys: (0..200)
                .map(|i| KeyLoaded {
                    key: format!("gray:key:{i}"),
                    kind: "ids".into(),
                    version: Some("0123456789abcdef".into()),
                    entries: 1,
                    loaded_at: Some(1.5),
                })
                .collect(),
            ..WorkerState::default()
        };
        let json = state.to_json();
        assert!(json.len() <= MAX_STATE);
        let back: WorkerState = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.last_error.unwrap().len(), 200);
        assert!(!back.keys.is_empty() && back.keys.len() < 200);
        assert_eq!(back.keys[0], state.keys[0]);
    }
}
