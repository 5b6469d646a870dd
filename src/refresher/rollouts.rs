//! The gateways' part in rollout plans, off the request path: each worker adds the responses it
//! counted to the rule's target and to the default target (its own counters in the region, the
//! change since its last contribution) to the plan's traffic in Redis, once a second just before
//! it ends and only while a plan runs; and with `rollouts = true` it competes for the plan's lease
//! just after, and the holder judges the fleet's traffic every interval and moves the plan
//! (`schedule`: a check reads what every gateway added; gray-io's
//! `rollout::begin` / `Moving::write`, the path grayctl takes: a step is never applied twice nor
//! skipped, because the write is refused when the plan changed since it was read).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use gray_core::clock::unix_seconds;
use gray_core::config::Config;
use gray_core::history::{Record, Subject};
use gray_core::keys;
use gray_core::rollout::judge::{Traffic, Verdict, Window};
use gray_core::rollout::schedule::Turns;
use gray_core::rollout::{traffic, Plan, State};
use gray_core::snapshot::CompiledRuleSet;
use gray_io::change::ChangeError;
use gray_io::connection::Reply;
use gray_io::endpoint::describe;
use gray_io::host::hostname;

use super::health::Health;
use super::link::Link;
use super::loaded::{Loaded, RuleSetSlot};
use super::watch::MAX_MESSAGE;
use crate::log::Level;
use crate::metrics::{self, counter};
use crate::region::COUNTERS_PER_SERIES;

pub(super) struct Rollouts {
    /// Contributes the counts of every worker of this nginx (the host's session holder), not
    /// this worker's own.
    host_wide: bool,
    turns: Turns,
    /// This worker's counters as last contributed, by plan id and series.
    contributed: HashMap<(u64, u32), [u64; COUNTERS_PER_SERIES]>,
}

impl Rollouts {
    pub fn new(host_wide: bool) -> Rollouts {
        Rollouts {
            host_wide,
            turns: Turns::default(),
            contributed: HashMap::new(),
        }
    }

    /// Contributes to and (with `rollouts`) drives the plans of the loaded rule sets. Returns
    /// the keys this worker wrote, which it must read again: Redis does not tell a tracked
    /// connection of its own writes.
    pub fn round(
        &mut self,
        link: &mut Link,
        health: &mut Health,
        config: &Config,
        loaded: &mut Loaded,
    ) -> Result<HashSet<Vec<u8>>, String> {
        let mut written = HashSet::new();
        let due = self.turns.take(unix_seconds(SystemTime::now()));
        let running: HashSet<u64> = loaded
            .rule_sets
            .iter()
            .filter_map(|s| {
                s.rollout
                    .as_ref()
                    .filter(|p| p.state.active())
                    .map(|p| p.id)
            })
            .collect();
        self.contributed.retain(|(id, _), _| running.contains(id));
        for set in 0..loaded.rule_sets.len() {
            let slot = &loaded.rule_sets[set];
            let (Some(plan), Some(compiled)) = (&slot.rollout, &slot.compiled) else {
                continue;
            };
            if !plan.state.active() {
                continue;
            }
            // A plan seen the first time takes this worker's counters as they stand at once
            // (nothing is sent): its first contribution then counts from the plan's start.
            if due.contribute || !self.counting(plan.id) {
                self.contribute(link, health, slot, plan, compiled)?;
            }
            if due.judge && config.rollouts {
                if let Some(moved) = drive(link, health, config, slot, plan, compiled)? {
                    written.insert(slot.key.as_bytes().to_vec());
                    written.insert(keys::rollout(&slot.key).into_bytes());
                    loaded.rule_sets[set].rollout = Some(moved);
                }
            }
        }
        Ok(written)
    }

    /// Whether this worker holds counters to count plan `id`'s traffic from.
    fn counting(&self, id: u64) -> bool {
        self.contributed.keys().any(|&(plan, _)| plan == id)
    }

    /// How long until the next turn to contribute or drive.
    pub fn until_next_turn(&self) -> Duration {
        Duration::from_secs_f64(self.turns.until_next(unix_seconds(SystemTime::now())))
    }

    /// Adds what this worker counted for `plan` since its last contribution to the current
    /// slot's hash. What was not written is added next time.
    fn contribute(
        &mut self,
        link: &mut Link,
        health: &mut Health,
        slot: &RuleSetSlot,
        plan: &Plan,
        compiled: &CompiledRuleSet,
    ) -> Result<(), String> {
        let rules = &compiled.rules;
        let canary: Vec<u32> = rules
            .rules
            .iter()
            .position(|r| r.name == plan.rule && r.to != rules.default)
            .and_then(|i| slot.series.rules.get(i).copied())
            .into_iter()
            .collect();
        let mut now_counted = Vec::new();
        let window = Window {
            canary: self.counted_since(plan.id, &canary, &mut now_counted),
            baseline: self.counted_since(plan.id, &slot.series.to_default(rules), &mut now_counted),
        };
        let fields = traffic::fields(&window);
        if fields.is_empty() {
            self.contributed.extend(now_counted);
            return Ok(());
        }
        let now = unix_seconds(SystemTime::now());
        let key = keys::rollout_traffic(&slot.key, plan.id, plan.contribution_slot(now));
        let mut commands: Vec<redis::Cmd> = fields
            .iter()
            .map(|(field, count)| {
                redis::cmd("HINCRBY")
                    .arg(&key)
                    .arg(field)
                    .arg(count)
                    .clone()
            })
            .collect();
        commands.push(
            redis::cmd("EXPIRE")
                .arg(&key)
                .arg(plan.traffic_ttl())
                .clone(),
        );
        let sent = link.command()?.pipeline(&commands, 0);
        match link.triage(sent, || format!("failed to add to {key}"))? {
            Ok(_) => self.contributed.extend(now_counted),
            Err(refusal) => health.warn_once(format!(
                "cannot add this gateway's responses to rollout traffic {key} ({refusal}); the plan is judged without them"
            )),
        }
        Ok(())
    }

    /// What this worker counted in `series` since its last contribution for plan `id`, and
    /// (into `now_counted`) the counters to remember once it is written. A series seen the
    /// first time counts from now; counters that went back (a series given again) count from
    /// zero.
    fn counted_since(
        &mut self,
        id: u64,
        series: &[u32],
        now_counted: &mut Vec<((u64, u32), [u64; COUNTERS_PER_SERIES])>,
    ) -> Traffic {
        let mut total = Traffic::default();
        for &s in series {
            let counted = if self.host_wide {
                metrics::host_counters(s)
            } else {
                metrics::own_counters(s)
            };
            let Some(now) = counted else {
                continue;
            };
            now_counted.push(((id, s), now));
            let Some(before) = self.contributed.get(&(id, s)) else {
                continue;
            };
            let went_back = now.iter().zip(before).any(|(n, b)| n < b);
            let mut delta = [0; COUNTERS_PER_SERIES];
            for (d, (n, b)) in delta.iter_mut().zip(now.iter().zip(before)) {
                *d = if went_back { *n } else { n - b };
            }
            if delta[counter::CLASSES..].iter().any(|&n| n > 0) {
                total.add(&metrics::traffic(&delta));
            }
        }
        total
    }
}

/// This gateway's name as a driver: `host:pid`.
fn me() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

/// With the plan's lease held (or taken now), judges it when a check is due and writes what
/// moved. Returns the plan as written.
fn drive(
    link: &mut Link,
    health: &mut Health,
    config: &Config,
    slot: &RuleSetSlot,
    plan: &Plan,
    compiled: &CompiledRuleSet,
) -> Result<Option<Plan>, String> {
    let me = me();
    let lease = keys::rollout_lease(&slot.key);
    match hold_lease(link, &lease, &me, plan.lease_seconds())? {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(refusal) => {
            health.warn_once(format!(
                "cannot take the rollout lease {lease} ({refusal}); this gateway does not drive plans"
            ));
            return Ok(None);
        }
    }
    let now = unix_seconds(SystemTime::now());
    if !plan.check_due(now) {
        return Ok(None);
    }
    let window = match read_window(link, &slot.key, plan, now)? {
        Ok(window) => window,
        Err(refusal) => {
            health.warn_once(format!(
                "cannot read the rollout traffic of {} ({refusal}); its plan is not judged",
                slot.key
            ));
            return Ok(None);
        }
    };
    let default_target = config
        .targets
        .get(compiled.rules.default)
        .cloned()
        .unwrap_or_default();
    let history_key = config.history_key();
    // The move borrows the link's connection until it ends; a failure is described apart.
    let timeout = link.endpoint.timeout;
    let begun = gray_io::rollout::begin(link.command()?, &history_key, &slot.key);
    let moving = match begun {
        Ok(moving) => moving,
        Err(e) => return failed(timeout, health, &slot.key, e),
    };
    let Some(mut moved) = moving
        .plan
        .clone()
        .filter(|p| p.id == plan.id && p.state.active() && p.check_due(now))
    else {
        // Moved by someone else since this worker read it: it reads it again.
        return match moving.give_up() {
            Ok(()) => Ok(None),
            Err(e) => failed(timeout, health, &slot.key, e),
        };
    };
    let (check, percent) = moved.judge(&window, &default_target, now);
    moved.driver = Some(me.clone());
    let what = match moved.state {
        State::Aborted => "abort",
        _ => "step",
    };
    let change = percent.map(|p| {
        let record = Record {
            time: now as u64,
            who: format!("rollout driver {me}"),
            command: moved.history_command(what, p),
            message: moved.message.clone(),
            key: slot.key.clone(),
            subject: Subject::RuleSet,
        };
        (p, record)
    });
    let written = moving.write(&moved, change, &config.targets, config.channel.as_deref());
    if let Err(e) = written {
        return failed(timeout, health, &slot.key, e);
    }
    let (level, message) = match (moved.state, check.verdict) {
        (State::Aborted, _) => (
            Level::Warn,
            format!(
                "aborted: {}; the rule goes to 0%",
                moved.reason.as_deref().unwrap_or("")
            ),
        ),
        (State::Done, _) => (Level::Notice, "done: every step passed".to_string()),
        (_, Verdict::Failed) => (
            Level::Warn,
            format!(
                "check failed ({} of {} in a row): {}",
                moved.failures_in_a_row, moved.settings.failure_limit, check.why
            ),
        ),
        _ if percent.is_some() => (
            Level::Notice,
            format!(
                "step {} of {}: {}%",
                moved.step + 1,
                moved.settings.steps.len(),
                moved.percent().percent()
            ),
        ),
        // Passed and inconclusive checks are in the plan, for `grayctl rollout status`.
        _ => return Ok(Some(moved)),
    };
    health.log(
        level,
        format!(
            "rollout of rule set {} rule \"{}\": {message}",
            slot.key, moved.rule
        ),
    );
    Ok(Some(moved))
}

/// A failed move: a refusal is said once and the session goes on; a failed link ends it.
fn failed(
    timeout: Duration,
    health: &mut Health,
    key: &str,
    e: ChangeError,
) -> Result<Option<Plan>, String> {
    match e {
        ChangeError::Conflict => {}
        ChangeError::Redis(gray_io::connection::Error::Server(refusal))
        | ChangeError::Refused(refusal) => health.warn_once(format!(
            "cannot move the rollout plan of {key} ({refusal}); it waits where it stands"
        )),
        ChangeError::Redis(e) | ChangeError::Unknown(e) => {
            return Err(format!(
                "failed to move the rollout plan of {key}: {}",
                describe(&e, Some(timeout))
            ))
        }
    }
    Ok(None)
}

/// Takes the lease, or renews it when this gateway holds it. `Ok(Ok(false))`: another holds it.
/// A renewal is watched: a lease that ran out and was taken meanwhile is not extended for its
/// new holder.
fn hold_lease(
    link: &mut Link,
    lease: &str,
    me: &str,
    seconds: f64,
) -> Result<Result<bool, String>, String> {
    let ms = (seconds * 1000.0).ceil() as u64;
    let con = link.command()?;
    let taken = con
        .query(
            redis::cmd("SET")
                .arg(lease)
                .arg(me)
                .arg("NX")
                .arg("PX")
                .arg(ms),
            0,
        )
        .and_then(|reply| match reply {
            Reply::Status(_) => Ok(true),
            _ => renew(con, lease, me, ms),
        });
    link.triage(taken, || {
        format!("failed to hold the rollout lease {lease}")
    })
}

fn renew(
    con: &mut gray_io::connection::Connection,
    lease: &str,
    me: &str,
    ms: u64,
) -> Result<bool, gray_io::connection::Error> {
    con.query(redis::cmd("WATCH").arg(lease), 0)?;
    if !matches!(con.query(redis::cmd("GET").arg(lease), MAX_MESSAGE)?, Reply::Bulk(Some(holder)) if holder == me.as_bytes())
    {
        con.query(&redis::cmd("UNWATCH"), 0)?;
        return Ok(false);
    }
    con.query(&redis::cmd("MULTI"), 0)?;
    if let Err(e) = con.query(redis::cmd("PEXPIRE").arg(lease).arg(ms), 0) {
        let _ = con.query(&redis::cmd("DISCARD"), 0);
        return Err(e);
    }
    Ok(matches!(
        con.query(&redis::cmd("EXEC"), 0)?,
        Reply::Array(Some(_))
    ))
}

/// The fleet's traffic over the window of a check of `plan` at `now`.
fn read_window(
    link: &mut Link,
    rule_set_key: &str,
    plan: &Plan,
    now: f64,
) -> Result<Result<Window, String>, String> {
    let commands: Vec<redis::Cmd> = plan
        .window_slots(now)
        .map(|slot| {
            redis::cmd("HGETALL")
                .arg(keys::rollout_traffic(rule_set_key, plan.id, slot))
                .clone()
        })
        .collect();
    let replies = link.command()?.pipeline(&commands, MAX_MESSAGE);
    let replies = match link.triage(replies, || {
        format!("failed to read the rollout traffic of {rule_set_key}")
    })? {
        Ok(replies) => replies,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let mut window = Window::default();
    for reply in &replies {
        let Reply::Array(Some(items)) = reply else {
            continue;
        };
        traffic::add_fields(&mut window, Reply::hash_pairs(items));
    }
    Ok(Ok(window))
}
