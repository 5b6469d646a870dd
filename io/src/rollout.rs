//! Moving a rollout plan in Redis, the same way for grayctl and for the gateway that drives it:
//! the plan and its rule set read under WATCH ([`begin`]), and a move written as one transaction
//! ([`Moving::write`]): the plan, and the rule's new percentage as a rule set write that is
//! compiled first, recorded in the history and announced. A step is never applied twice nor
//! skipped: a writer that read an older plan finds its transaction refused.

use gray_core::history::{Previous, Record};
use gray_core::keys;
use gray_core::rollout::{self, NewPercent, Plan};
use gray_core::rules::{edit, schema};
use gray_core::stored::{Change, KeyValue};

use crate::change::{self, ChangeError, Watched, Write};
use crate::connection::Connection;

/// The most a plan or rule set read here may hold.
const MAX_BYTES: usize = 32 << 20;

/// A rule set and its plan, watched since they were read.
pub struct Moving<'c> {
    watched: Watched<'c>,
    pub rule_set_key: String,
    pub plan_key: String,
    /// `None` when there is none (or never was).
    pub plan: Option<Plan>,
    pub rule_set: KeyValue,
}

/// The plan stored as `value` in `key`.
pub fn parse_plan(key: &str, value: &KeyValue) -> Result<Option<Plan>, String> {
    match value {
        KeyValue::Missing => Ok(None),
        KeyValue::String(json) => Plan::parse(json)
            .map(Some)
            .map_err(|e| format!("key {key} holds no plan gray can read ({e})")),
        KeyValue::Set(_) => Err(format!("key {key} holds a set, not a rollout plan")),
    }
}

/// Watches rule set `rule_set_key`, its plan and the history `history_key`, and reads the plan
/// and the rule set.
pub fn begin<'c>(
    con: &'c mut Connection,
    history_key: &str,
    rule_set_key: &str,
) -> Result<Moving<'c>, ChangeError> {
    let plan_key = keys::rollout(rule_set_key);
    let mut watched = change::watch(con, history_key, &[rule_set_key, &plan_key])?;
    let read = watched
        .read(&plan_key, MAX_BYTES)
        .and_then(|value| parse_plan(&plan_key, &value).map_err(ChangeError::Refused));
    let plan = match read {
        Ok(plan) => plan,
        Err(e) => {
            watched.give_up()?;
            return Err(e);
        }
    };
    let rule_set = watched.read(rule_set_key, MAX_BYTES)?;
    Ok(Moving {
        watched,
        rule_set_key: rule_set_key.to_string(),
        plan_key,
        plan,
        rule_set,
    })
}

impl Moving<'_> {
    /// Writes nothing.
    pub fn give_up(self) -> Result<(), ChangeError> {
        self.watched.give_up()
    }

    /// Writes `plan`, and when `percent` is given the rule's new percentage in the rule set,
    /// compiled against `targets` first and recorded in the history as `record`; both announced
    /// on `channel`.
    pub fn write(
        self,
        plan: &Plan,
        percent: Option<(NewPercent, Record)>,
        targets: &[String],
        channel: Option<&str>,
    ) -> Result<(), ChangeError> {
        let write = match percent {
            Some((percent, record)) => self.rule_set_write(plan, percent, record, targets)?,
            None => None,
        };
        let json = plan.to_json();
        let sets = [(self.plan_key.as_str(), json.as_str())];
        self.watched.commit(
            write.as_ref().map(|w| (w, Previous::Read(&self.rule_set))),
            &sets,
            channel,
        )
    }

    /// The rule set with the plan's rule at `percent`, unless it is already there.
    fn rule_set_write(
        &self,
        plan: &Plan,
        percent: NewPercent,
        record: Record,
        targets: &[String],
    ) -> Result<Option<Write>, ChangeError> {
        let KeyValue::String(text) = &self.rule_set else {
            return Err(ChangeError::Refused(format!(
                "key {} holds no rule set: the plan's rule cannot be set",
                self.rule_set_key
            )));
        };
        let refused = |e: String| {
            ChangeError::Refused(format!(
                "rule \"{}\" of {} cannot be set to {}%, nothing written: {e}",
                plan.rule,
                self.rule_set_key,
                percent.percent()
            ))
        };
        // A rule renamed or removed since has no users left to take back: the plan ends alone.
        if percent.0 == 0 && !edit::has_rule(text, &plan.rule) {
            return Ok(None);
        }
        let new = rollout::rule_set_at(text, &plan.rule, percent).map_err(refused)?;
        schema::compile(&new, targets).map_err(|e| refused(e.to_string()))?;
        if new == *text {
            return Ok(None);
        }
        Ok(Some(Write {
            key: self.rule_set_key.clone(),
            change: Change::Replace(KeyValue::String(new)),
            record,
        }))
    }
}
