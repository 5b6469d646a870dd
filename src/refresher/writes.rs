//! What the refresher writes to Redis, and the guard records it reads back: this worker's report
//! to the gateways hash (`report`), the guard trips its worker made, and the operators' resets
//! of them (`grayctl guard reset`). A write Redis refuses (no permission on that key) is warned
//! about once and changes nothing else; a lost connection ends the session, and what was not
//! written waits for the next one.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use gray_core::clock::unix_seconds;
use gray_core::config::Config;
use gray_core::fleet;
use gray_core::guard::GuardHash;
use gray_core::keys;
use gray_io::connection::Reply;
use gray_io::host::hostname;

use super::health::Health;
use super::link::Link;
use super::loaded::Loaded;
use super::watch::MAX_MESSAGE;
use crate::log::Level;

#[derive(Default)]
pub(super) struct Writes {
    /// When this worker last reported what it serves (`report`).
    reported_at: Option<Instant>,
}

impl Writes {
    /// Writes what this worker serves to the gateways hash, after a change and at least every
    /// `report` (or `refresh`, if longer: reports ride on polls).
    pub fn report(
        &mut self,
        link: &mut Link,
        health: &mut Health,
        config: &Config,
        loaded: &Loaded,
        changed: bool,
    ) -> Result<(), String> {
        let Some(every) = config.report else {
            return Ok(());
        };
        let every = every.max(config.refresh);
        if !changed && self.reported_at.is_some_and(|at| at.elapsed() < every) {
            return Ok(());
        }
        let keys = loaded
            .loaded_keys()
            .into_iter()
            .map(|k| fleet::KeyState {
                key: k.key,
                version: k.version,
            })
            .collect();
        let report = fleet::Report {
            host: hostname(),
            pid: std::process::id(),
            gray: env!("CARGO_PKG_VERSION").to_string(),
            keys,
            loaded_at: unix_seconds(loaded.published_at),
            reported_at: unix_seconds(SystemTime::now()),
            every: every.as_secs_f64(),
        };
        let hash = config.gateways_key();
        let ttl = (every.as_secs_f64() * fleet::MISSED_BEATS * 2.0).ceil() as u64;
        let command = link.command()?;
        let written = command
            .query(
                redis::cmd("HSET")
                    .arg(&hash)
                    .arg(report.field())
                    .arg(report.to_json()),
                0,
            )
            .and_then(|_| command.query(redis::cmd("EXPIRE").arg(&hash).arg(ttl.max(1)), 0));
        self.reported_at = Some(Instant::now());
        if let Err(refusal) = link.triage(written, || format!("failed to report to {hash}"))? {
            health.warn_once(format!(
                "cannot report to {hash} ({refusal}); grayctl status will not list this gateway"
            ));
        }
        Ok(())
    }

    /// Writes the guard trips this worker made to their rule sets' guard hashes. The trip itself
    /// holds whether or not its record is written.
    pub fn record_trips(&mut self, link: &mut Link, health: &mut Health) -> Result<(), String> {
        let shared = health.shared;
        let mut trips = shared.take_trips().into_iter();
        while let Some(trip) = trips.next() {
            let json = serde_json::to_string(&trip.record).expect("a trip record is plain data");
            let written = link
                .command()
                .map(|command| {
                    command.query(
                        redis::cmd("HSET").arg(&trip.key).arg(&trip.field).arg(json),
                        0,
                    )
                })
                .and_then(|result| {
                    link.triage(result, || {
                        format!("failed to record a guard trip in {}", trip.key)
                    })
                });
            match written {
                Ok(Ok(_)) => {}
                Ok(Err(refusal)) => health.warn_once(format!(
                    "cannot record guard trips in {} ({refusal}); grayctl guard show will not list them",
                    trip.key
                )),
                Err(error) => {
                    std::iter::once(trip)
                        .chain(trips)
                        .for_each(|t| shared.queue_trip(t));
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Reads the guard hash of each loaded rule set with guards, and clears the trips an
    /// operator reset since they tripped (the other workers see it in the region). Says whether
    /// any was cleared.
    pub fn read_guard_resets(
        &mut self,
        link: &mut Link,
        health: &mut Health,
        loaded: &Loaded,
    ) -> Result<bool, String> {
        let mut cleared_any = false;
        for slot in &loaded.rule_sets {
            let Some(compiled) = &slot.compiled else {
                continue;
            };
            if compiled.rules.rules.iter().all(|r| r.guard.is_none()) {
                continue;
            }
            let hash = keys::guard(&slot.key);
            let read = link
                .command()?
                .query(redis::cmd("HGETALL").arg(&hash), MAX_MESSAGE);
            let fields = match link.triage(read, || format!("failed to read {hash}"))? {
                Ok(Reply::Array(Some(fields))) => fields,
                Ok(_) => continue,
                Err(refusal) => {
                    health.warn_once(format!(
                        "cannot read {hash} ({refusal}); guards cannot be reset from grayctl"
                    ));
                    continue;
                }
            };
            let resets = guard_resets(&fields);
            let cleared = crate::guard::reset(compiled, &slot.series, &resets);
            for rule in &cleared {
                health.log(
                    Level::Notice,
                    format!(
                        "guard of rule set {} rule \"{rule}\" reset: the rule matches again",
                        compiled.key
                    ),
                );
            }
            cleared_any |= !cleared.is_empty();
        }
        Ok(cleared_any)
    }
}

/// The resets a guard hash holds, from its fields as HGETALL lists them.
fn guard_resets(fields: &[Reply]) -> BTreeMap<String, u64> {
    GuardHash::parse(Reply::hash_pairs(fields)).resets
}
