//! Rollout plans: one rule's percentage taken through steps (`1, 5, 25, 50, 100`), each held for
//! a while and judged every interval on the whole fleet's responses ([`judge`]), advancing only on
//! passing checks that saw enough traffic, aborting on failing ones. A [`Plan`] is the plan and
//! its state together, as JSON in Redis (`keys::rollout`); what happens to it (a check, an
//! operator's pause, resume, abort or promotion) is a method here that says what it changed, so
//! grayctl and the driving gateway move a plan by the same rules. Pure: the caller reads the
//! plan and the traffic and writes what changed.

pub mod judge;
pub mod schedule;
mod settings;
pub mod traffic;

pub use settings::{
    hundredths, parse_duration, Settings, DEFAULT_FAILURE_LIMIT, DEFAULT_INTERVAL,
    DEFAULT_MIN_REQUESTS, MAX_HOLD, MAX_INTERVAL, MIN_INTERVAL,
};

use serde::{Deserialize, Serialize};

use crate::rules::{Amount, RuleSet};
use judge::{Check, Verdict, Window};

/// The plan format this code reads and writes.
pub const FORMAT: u32 = 1;
/// The latest time (Unix seconds, the year 2500) and longest duration a plan may hold.
const MAX_TIME: f64 = 16_725_225_600.0;
/// Checks a plan keeps, the newest last.
pub const KEPT_CHECKS: usize = 10;

/// Where a plan stands, in the words status and metrics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Checks pass (or none ran yet in this step).
    Running,
    /// Not enough traffic to judge: no data, no promotion.
    Holding,
    /// An operator froze the step; checks still run and still abort.
    Paused,
    Aborted,
    Done,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Running,
        State::Holding,
        State::Paused,
        State::Aborted,
        State::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Holding => "holding",
            State::Paused => "paused",
            State::Aborted => "aborted",
            State::Done => "done",
        }
    }

    /// Whether the plan still drives its rule (and refuses manual edits of it).
    pub fn active(self) -> bool {
        matches!(self, State::Running | State::Holding | State::Paused)
    }
}

/// A plan and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format: u32,
    /// Unique per plan (its start, Unix milliseconds): the fleet's traffic is kept under it.
    pub id: u64,
    pub rule: String,
    #[serde(flatten)]
    pub settings: Settings,
    pub message: Option<String>,
    /// Who started it (`user@host`).
    pub by: String,
    /// Unix seconds.
    pub started_at: f64,
    pub state: State,
    /// Index into `steps`.
    pub step: usize,
    pub step_started_at: f64,
    /// Seconds the step has been held before `counting_since` (pauses stop the count).
    pub held: f64,
    /// Since when the hold counts; `None` while paused.
    pub counting_since: Option<f64>,
    /// Canary responses the conclusive checks of this step saw, all passed.
    pub step_responses: u64,
    pub failures_in_a_row: u32,
    pub checks: Vec<Check>,
    pub last_check_at: Option<f64>,
    /// The end of the last slot judged: the next check judges from there, so no slot of the
    /// fleet's traffic is judged twice or skipped.
    #[serde(default)]
    pub judged_until: Option<u64>,
    pub ended_at: Option<f64>,
    /// Why it was aborted or promoted, in words.
    pub reason: Option<String>,
    /// The gateway that drives it (`host:pid`), as it last wrote it.
    pub driver: Option<String>,
    /// Writes made to it: each write is of the next revision.
    pub revision: u64,
}

/// A percentage a plan sets its rule to (hundredths): what a move asks of the rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewPercent(pub u32);

impl Plan {
    /// A new plan for rule `rule` of `rule_set` (whose default target is `default`), started at
    /// `now`: the rule must exist, carry a plain percentage and route elsewhere than the default.
    /// Its first step is the rule's new percentage.
    pub fn start(
        settings: Settings,
        rule_set: &RuleSet,
        rule: &str,
        now: f64,
        by: String,
        message: Option<String>,
    ) -> Result<(Plan, NewPercent), String> {
        settings.validate()?;
        let found = rule_set
            .rules
            .iter()
            .find(|r| r.name == rule)
            .ok_or_else(|| format!("no rule \"{rule}\" in the rule set"))?;
        match found.percent.as_ref().map(|p| p.amount) {
            Some(Amount::Fixed(_)) => {}
            Some(Amount::Ramp { .. }) => {
                return Err(format!(
                    "rule \"{rule}\" has a time ramp: a plan steps a plain \"percent\""
                ))
            }
            None => return Err(format!("rule \"{rule}\" has no \"percent\" to step")),
        }
        if found.to == rule_set.default {
            return Err(format!(
                "rule \"{rule}\" routes to the default target: there is nothing to roll out"
            ));
        }
        let first = settings.steps[0];
        let plan = Plan {
            format: FORMAT,
            id: (now * 1000.0) as u64,
            rule: rule.to_string(),
            settings,
            message,
            by,
            started_at: now,
            state: State::Running,
            step: 0,
            step_started_at: now,
            held: 0.0,
            counting_since: Some(now),
            step_responses: 0,
            failures_in_a_row: 0,
            checks: Vec::new(),
            last_check_at: None,
            judged_until: None,
            ended_at: None,
            reason: None,
            driver: None,
            revision: 1,
        };
        Ok((plan, NewPercent(first)))
    }

    pub fn parse(json: &[u8]) -> Result<Plan, String> {
        let plan: Plan = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if plan.format != FORMAT {
            return Err(format!("plan format {} is not {FORMAT}", plan.format));
        }
        plan.settings.validate()?;
        if plan.step >= plan.settings.steps.len() {
            return Err(format!(
                "step {} of {}",
                plan.step + 1,
                plan.settings.steps.len()
            ));
        }
        let times = [plan.started_at, plan.step_started_at, plan.held]
            .into_iter()
            .chain(plan.counting_since)
            .chain(plan.last_check_at)
            .chain(plan.ended_at);
        for time in times {
            if !(0.0..=MAX_TIME).contains(&time) {
                return Err(format!("{time} is not a time this plan can hold"));
            }
        }
        Ok(plan)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a plan is plain data")
    }

    /// The rule's percentage the plan has set: the step's, 0 once aborted.
    pub fn percent(&self) -> NewPercent {
        NewPercent(match self.state {
            State::Aborted => 0,
            _ => self.settings.steps[self.step],
        })
    }

    /// The history's words for a move of the plan that sets the rule to `percent`.
    pub fn history_command(&self, what: &str, percent: NewPercent) -> String {
        format!(
            "rollout {what} {}: step {} of {}, {}%",
            self.rule,
            self.step + 1,
            self.settings.steps.len(),
            percent.percent()
        )
    }

    /// The plan in a line: its rule, step, percent and state.
    pub fn summary(&self) -> String {
        format!(
            "rule \"{}\", step {} of {}, {}%, {}",
            self.rule,
            self.step + 1,
            self.settings.steps.len(),
            self.percent().percent(),
            self.state.as_str()
        )
    }

    /// Seconds the current step has been held at `now`.
    pub fn held(&self, now: f64) -> f64 {
        self.held
            + self
                .counting_since
                .map_or(0.0, |since| (now - since).max(0.0))
    }

    /// Whether a check is due at `now`.
    pub fn check_due(&self, now: f64) -> bool {
        if !self.state.active() {
            return false;
        }
        match self.judged_until {
            // Counted in slots, not from the last check's time: a check taken a little late
            // does not push the next one back a whole turn. A clock set back a little (a step
            // of NTP) waits for the slots it judged to pass again rather than judge them twice;
            // one set back further than a window reaches judges the last interval at once.
            Some(judged) => {
                let (end, count) = (self.slot(now), self.slots_per_check());
                if end < judged {
                    judged - end > 2 * count
                } else {
                    end - judged >= count
                }
            }
            None => now - self.last_check_at.unwrap_or(self.started_at) >= self.settings.interval,
        }
    }

    /// Judges `window` (the fleet's last interval) at `now`: records the check, and moves the
    /// plan on: aborted after `failure_limit` failed checks in a row, to the next step once this
    /// one has been held long enough with every conclusive check passing and enough responses
    /// seen, done after the last. A failed check that does not abort starts the step's hold
    /// over. Returns the check and the rule's new percentage if it changes.
    pub fn judge(
        &mut self,
        window: &Window,
        baseline_target: &str,
        now: f64,
    ) -> (Check, Option<NewPercent>) {
        let check = judge::check(&self.settings.gates, window, baseline_target, now);
        self.last_check_at = Some(now);
        self.judged_until = Some(self.window_slots(now).end);
        self.revision = self.revision.saturating_add(1);
        self.checks.push(check.clone());
        if self.checks.len() > KEPT_CHECKS {
            self.checks.remove(0);
        }
        let changed = match check.verdict {
            Verdict::Failed => {
                self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
                if self.failures_in_a_row >= self.settings.failure_limit {
                    let reason = format!(
                        "{}, {} check{} in a row",
                        check.why,
                        self.failures_in_a_row,
                        if self.failures_in_a_row == 1 { "" } else { "s" }
                    );
                    self.end(State::Aborted, reason, now);
                    Some(NewPercent(0))
                } else {
                    self.restart_step(now);
                    None
                }
            }
            Verdict::Passed => {
                self.failures_in_a_row = 0;
                self.step_responses = self.step_responses.saturating_add(check.canary.responses);
                self.advance_if_due(now)
            }
            Verdict::Inconclusive => None,
        };
        if self.state.active() && self.state != State::Paused {
            self.state = if check.verdict == Verdict::Inconclusive {
                State::Holding
            } else {
                State::Running
            };
        }
        (check, changed)
    }

    fn advance_if_due(&mut self, now: f64) -> Option<NewPercent> {
        if self.state == State::Paused
            || self.held(now) < self.settings.hold
            || self.step_responses < self.settings.gates.min_requests
        {
            return None;
        }
        if self.step + 1 == self.settings.steps.len() {
            self.end(State::Done, "every step passed".into(), now);
            return None;
        }
        self.step += 1;
        self.restart_step(now);
        Some(self.percent())
    }

    fn restart_step(&mut self, now: f64) {
        self.step_started_at = now;
        self.held = 0.0;
        self.step_responses = 0;
        if self.counting_since.is_some() {
            self.counting_since = Some(now);
        }
    }

    fn end(&mut self, state: State, reason: String, now: f64) {
        self.state = state;
        self.reason = Some(reason);
        self.ended_at = Some(now);
        self.counting_since = None;
    }

    /// Freezes the step: the hold stops counting; checks still run and may still abort.
    pub fn pause(&mut self, now: f64) -> Result<(), String> {
        self.require_active("pause")?;
        if self.state == State::Paused {
            return Err("the plan is already paused".into());
        }
        self.held = self.held(now);
        self.counting_since = None;
        self.state = State::Paused;
        self.revision = self.revision.saturating_add(1);
        Ok(())
    }

    /// Goes on from a pause, the hold where it stood.
    pub fn resume(&mut self, now: f64) -> Result<(), String> {
        self.require_active("resume")?;
        if self.state != State::Paused {
            return Err("the plan is not paused".into());
        }
        self.counting_since = Some(now);
        self.state = State::Running;
        self.revision = self.revision.saturating_add(1);
        Ok(())
    }

    /// Stops the plan for `why`: the rule's percentage goes to 0.
    pub fn abort(&mut self, why: String, now: f64) -> Result<NewPercent, String> {
        self.require_active("abort")?;
        self.end(State::Aborted, why, now);
        self.revision = self.revision.saturating_add(1);
        Ok(NewPercent(0))
    }

    /// Jumps to the last step, and the plan is done.
    pub fn promote(&mut self, why: String, now: f64) -> Result<NewPercent, String> {
        self.require_active("promote")?;
        self.step = self.settings.steps.len() - 1;
        self.end(State::Done, why, now);
        self.revision = self.revision.saturating_add(1);
        Ok(self.percent())
    }

    fn require_active(&self, what: &str) -> Result<(), String> {
        if self.state.active() {
            Ok(())
        } else {
            Err(format!(
                "cannot {what} a plan that is {}",
                self.state.as_str()
            ))
        }
    }
}

/// Rule set `text` with rule `rule` at `percent`, everything else as it was written.
pub fn rule_set_at(text: &[u8], rule: &str, percent: NewPercent) -> Result<Vec<u8>, String> {
    let mut doc: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("the rule set is not JSON: {e}"))?;
    crate::rules::edit::set_percent(&mut doc, rule, percent.percent(), true)?;
    Ok(crate::rules::edit::render(&doc))
}

impl NewPercent {
    /// As the rule set writes it: `5`, `0.25`.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

#[cfg(test)]
mod tests;
