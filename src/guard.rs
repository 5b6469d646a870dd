//! Guards at work in a worker. Once a second, from the worker's own timer (never on a request),
//! [`tick`] samples the shared counters of each rule that carries a guard and of its rule set's
//! default target, judges the last `window` seconds, and trips the rule for the whole nginx: in
//! the metrics region, under the rule set's version. Every worker applies the region's trips to
//! its snapshot, so the rule stops matching in all of them; the worker that tripped it logs it
//! once and leaves a record for its refresher to write to Redis. A trip lasts until the rule set
//! changes (a new version) or an operator resets it (`grayctl guard reset`, read by the refresher:
//! [`reset`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use once_cell::sync::Lazy;

use crate::log::Level;
use crate::metrics::{self, GuardState};
use crate::region::Region;
use crate::state::{Shared, TripToRecord};
use gray_core::clock;
use gray_core::fleet;
use gray_core::guard::{self, Counts, TripRecord};
use gray_core::keys;
use gray_core::snapshot::{CompiledRuleSet, RuleSetSeries, Snapshot};
use gray_io::host::hostname;

/// How often the guards judge.
const TICK: Duration = Duration::from_secs(1);

/// A watch made as its rule set loaded is kept this long before a judgement takes it up: the
/// snapshot that holds the new version is published just after.
const UNJUDGED_KEPT: Duration = Duration::from_secs(10);

/// One guarded rule's samples of the cumulative counts (its target's, the default's), oldest
/// first, taken under the trip epoch (region) it names: after a trip or a reset, even one this
/// worker did not see happen, the window starts over. The first sample is taken as its rule set
/// version loads, so what is answered before the first judgement is judged too.
struct Watch {
    epoch: u64,
    made: Instant,
    samples: VecDeque<(Instant, Counts, Counts)>,
}

impl Watch {
    fn starting(epoch: u64, at: Instant, canary: Counts, default: Counts) -> Watch {
        Watch {
            epoch,
            made: at,
            samples: VecDeque::from([(at, canary, default)]),
        }
    }
}

struct Watches {
    last_tick: Option<Instant>,
    /// By series and the rule set version it is judged under.
    by_rule: HashMap<(u32, u64), Watch>,
}

static WATCHES: Lazy<Mutex<Watches>> = Lazy::new(|| {
    Mutex::new(Watches {
        last_tick: None,
        by_rule: HashMap::new(),
    })
});

/// Responses counted in `series` (of any class) and the 5xx among them, since the region began.
fn counts(region: &Region, series: &[u32]) -> Counts {
    let mut total = Counts::default();
    for &s in series {
        let counted = metrics::traffic(&region.totals(s as usize)).counts();
        total.responses += counted.responses;
        total.errors += counted.errors;
    }
    total
}

/// When series `series` tripped (Unix ms), if it tripped under rule set version `version`.
fn tripped_under(region: &Region, series: u32, version: u64) -> Option<u64> {
    region
        .tripped(series as usize)
        .filter(|&(tripped, _)| tripped == version)
        .map(|(_, at)| at)
}

/// Starts the window of each guarded rule of `compiled`, a rule set version loaded now (the
/// refresher, as it loads it): its first sample is the counts at the load.
pub fn start_windows(compiled: &CompiledRuleSet, series: &RuleSetSeries) {
    let Some(region) = metrics::region() else {
        return;
    };
    let rules = &compiled.rules;
    if rules.rules.iter().all(|r| r.guard.is_none()) {
        return;
    }
    let now = Instant::now();
    let default = counts(region, &series.to_default(rules));
    let mut watches = WATCHES.lock().unwrap_or_else(|e| e.into_inner());
    for (rule, &s) in rules.rules.iter().zip(&series.rules) {
        if rule.guard.is_some() && s != 0 {
            let watch = Watch::starting(
                region.trip_epoch(s as usize),
                now,
                counts(region, &[s]),
                default,
            );
            watches.by_rule.insert((s, compiled.version), watch);
        }
    }
}

/// Clears the trips of `compiled`'s rules made under another version of the rule set: a trip
/// lasts until the rule set changes, also when a later change brings the same text back (a
/// rollback, `grayctl off` then `on`).
pub fn forget_other_versions(compiled: &CompiledRuleSet, series: &RuleSetSeries) {
    let Some(region) = metrics::region() else {
        return;
    };
    for (rule, &s) in compiled.rules.rules.iter().zip(&series.rules) {
        if rule.guard.is_none() {
            continue;
        }
        if let Some((version, _)) = region.tripped(s as usize) {
            if version != compiled.version {
                region.untrip(s as usize, version);
            }
        }
    }
}

/// By rule: tripped in the region under `compiled`'s version. Empty while none is.
pub fn tripped_rules(compiled: &CompiledRuleSet, series: &RuleSetSeries) -> Vec<bool> {
    let Some(region) = metrics::region() else {
        return Vec::new();
    };
    let tripped: Vec<bool> = compiled
        .rules
        .rules
        .iter()
        .zip(&series.rules)
        .map(|(rule, &s)| {
            rule.guard.is_some() && tripped_under(region, s, compiled.version).is_some()
        })
        .collect();
    if tripped.contains(&true) {
        tripped
    } else {
        Vec::new()
    }
}

/// Judges every guarded rule of the snapshot in force (at most once a `TICK`), then applies the
/// region's trips to this worker's snapshot.
pub fn tick(shared: &'static Shared) {
    let Some(region) = metrics::region() else {
        return;
    };
    let now = Instant::now();
    let mut watches = WATCHES.lock().unwrap_or_else(|e| e.into_inner());
    if watches
        .last_tick
        .is_some_and(|at| now.duration_since(at) < TICK)
    {
        return;
    }
    watches.last_tick = Some(now);
    judge(shared, region, &mut watches, now);
    drop(watches);
    apply(shared);
}

/// One judgement of every guarded rule of the snapshot in force: its work is one read of the
/// counters per guarded rule and one per rule set for its default target, summed over the
/// workers (`make bench` times it with 500 guarded rules).
fn judge(shared: &Shared, region: &Region, watches: &mut Watches, now: Instant) {
    let snapshot = shared.current();
    let mut watched = HashSet::new();
    for active in snapshot.rule_sets.iter().flatten() {
        let compiled = &active.compiled;
        let rules = &compiled.rules;
        if rules.rules.iter().all(|r| r.guard.is_none()) {
            continue;
        }
        // The default target's counts, once a rule set, whatever the number of its guards.
        let default = counts(region, &active.series.to_default(rules));
        for (rule, &series) in rules.rules.iter().zip(&active.series.rules) {
            let Some(guard) = rule.guard else { continue };
            if series == 0 {
                continue;
            }
            if tripped_under(region, series, compiled.version).is_some() {
                continue;
            }
            watched.insert((series, compiled.version));
            let epoch = region.trip_epoch(series as usize);
            let canary = counts(region, &[series]);
            let watch = watches
                .by_rule
                .entry((series, compiled.version))
                .or_insert_with(|| Watch::starting(epoch, now, canary, default));
            if watch.epoch != epoch {
                *watch = Watch::starting(epoch, now, canary, default);
            }
            watch.samples.push_back((now, canary, default));
            // Keep the newest sample at least `window` old: the window's start.
            let window = Duration::from_secs(u64::from(guard.window));
            while watch.samples.len() > 1 && now.duration_since(watch.samples[1].0) >= window {
                watch.samples.pop_front();
            }
            let (_, canary_then, default_then) = watch.samples[0];
            let since = |now: Counts, then: Counts| Counts {
                responses: now.responses.saturating_sub(then.responses),
                errors: now.errors.saturating_sub(then.errors),
            };
            let Some(trip) = guard.check(since(canary, canary_then), since(default, default_then))
            else {
                continue;
            };
            let at_ms = clock::unix_ms(SystemTime::now());
            if !region.trip(series as usize, compiled.version, at_ms) {
                continue;
            }
            let target = snapshot.target_name(rule.to).to_string();
            shared.log(
                Level::Warn,
                format!(
                    "guard tripped: rule set {} rule \"{}\" (to {target}): {trip}; its requests go to the default target until the rule set changes or `grayctl guard reset {}`",
                    compiled.key, rule.name, rule.name
                ),
            );
            shared.queue_trip(TripToRecord {
                key: keys::guard(&compiled.key),
                field: guard::trip_field(&hostname(), &rule.name),
                record: TripRecord {
                    rule: rule.name.clone(),
                    target,
                    host: hostname(),
                    pid: std::process::id(),
                    at: at_ms as f64 / 1000.0,
                    version: fleet::version_text(compiled.version),
                    responses: trip.canary.responses,
                    errors: trip.canary.errors,
                    default_responses: trip.baseline.responses,
                    default_errors: trip.baseline.errors,
                    window: trip.window,
                    max_error_rate: trip.max_error_rate,
                },
            });
        }
    }
    // A rule tripped, reset or gone starts its window over when it is watched again; one whose
    // rule set just loaded waits for the snapshot that publishes it.
    watches
        .by_rule
        .retain(|rule, watch| watched.contains(rule) || watch.made.elapsed() < UNJUDGED_KEPT);
}

/// Swaps in a snapshot whose rule sets skip exactly the rules tripped in the region, if the one
/// in force does not already.
pub fn apply(shared: &Shared) {
    loop {
        let current = shared.snapshot.load_full();
        let mut changed = false;
        let rule_sets = current
            .rule_sets
            .iter()
            .map(|active| {
                active.as_ref().map(|a| {
                    let tripped = tripped_rules(&a.compiled, &a.series);
                    changed |= tripped != a.tripped;
                    gray_core::snapshot::ActiveRuleSet {
                        tripped,
                        ..a.clone()
                    }
                })
            })
            .collect();
        if !changed {
            return;
        }
        let next = Arc::new(Snapshot {
            rule_sets,
            ..(*current).clone()
        });
        let previous = shared.snapshot.compare_and_swap(&current, next);
        if Arc::ptr_eq(&previous, &current) {
            return;
        }
    }
}

/// Clears the trips of `compiled`'s rules that an operator reset after they tripped (`resets`:
/// rule name to the reset's Unix milliseconds). Returns the rules cleared.
pub fn reset(
    compiled: &CompiledRuleSet,
    series: &RuleSetSeries,
    resets: &BTreeMap<String, u64>,
) -> Vec<String> {
    let Some(region) = metrics::region() else {
        return Vec::new();
    };
    let mut cleared = Vec::new();
    for (rule, &s) in compiled.rules.rules.iter().zip(&series.rules) {
        let Some(&reset_at) = resets.get(&rule.name) else {
            continue;
        };
        let reset_since_trip =
            tripped_under(region, s, compiled.version).is_some_and(|at| at < reset_at);
        if reset_since_trip && region.untrip(s as usize, compiled.version) {
            cleared.push(rule.name.clone());
        }
    }
    cleared
}

/// Every guarded rule of `snapshot`, tripped or not, for scrapes.
pub fn states(snapshot: &Snapshot) -> Vec<GuardState> {
    let region = metrics::region();
    let mut states = Vec::new();
    for active in snapshot.rule_sets.iter().flatten() {
        let compiled = &active.compiled;
        for (rule, &series) in compiled.rules.rules.iter().zip(&active.series.rules) {
            if rule.guard.is_none() {
                continue;
            }
            let tripped_at = region.and_then(|r| tripped_under(r, series, compiled.version));
            states.push(GuardState {
                rule_set: compiled.key.clone(),
                rule: rule.name.clone(),
                target: snapshot.target_name(rule.to).to_string(),
                tripped_at: tripped_at.map(|at| at as f64 / 1000.0),
            });
        }
    }
    states
}

#[cfg(test)]
mod tests {
    use super::*;
    use gray_core::snapshot::{ActiveRuleSet, KeyKind};

    /// What one judgement costs with 500 guarded rules over 8 workers. A measurement, not a
    /// check: `make bench` runs it (`cargo test --release ... -- --ignored judging`) and reports it.
    #[test]
    #[ignore = "a measurement, run by make bench"]
    fn judging_500_guarded_rules() {
        metrics::create_region().unwrap();
        let region = metrics::region().unwrap();
        for worker in 0..8 {
            region.join(worker);
        }
        let targets = vec!["@prod1".to_string(), "@prod2-grey".to_string()];
        let rules: Vec<String> = (0..500)
            .map(|i| {
                format!(
                    r#"{{"name":"r{i}","ip":["10.{}.{}.0/24"],"to":"@prod2-grey","guard":{{"max_error_rate":5}}}}"#,
                    i / 256,
                    i % 256
                )
            })
            .collect();
        let json = format!(r#"{{"format":1,"rules":[{}]}}"#, rules.join(","));
        let compiled = CompiledRuleSet::compile(
            "gray:rules",
            KeyKind::String,
            json.as_bytes(),
            1,
            &targets,
            1,
        )
        .unwrap()
        .unwrap();
        let series =
            metrics::rule_set_series(&compiled, &targets, |l| metrics::register(l).unwrap());
        let shared = Shared::default();
        shared.snapshot.store(Arc::new(Snapshot {
            rule_sets: vec![Some(ActiveRuleSet::new(
                Arc::new(compiled),
                "gray",
                None,
                |_| None,
                series,
                Vec::new(),
            ))],
            ..Snapshot::default()
        }));
        let mut watches = Watches {
            last_tick: None,
            by_rule: HashMap::new(),
        };
        let mut took: Vec<Duration> = (0..51)
            .map(|_| {
                let started = Instant::now();
                judge(&shared, region, &mut watches, started);
                started.elapsed()
            })
            .collect();
        took.sort();
        println!(
            "judging 500 guarded rules over 8 workers: {:.0} us a tick (median of 51)",
            took[25].as_secs_f64() * 1e6
        );
        assert_eq!(watches.by_rule.len(), 500);
    }
}
