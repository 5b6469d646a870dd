//! The loaded state: what the refresher has read of each key (the whitelist, each rule set's
//! slot, the keys the rule sets reference), how a new value replaces an old one (a rule set only
//! when it compiles, a list whatever its bad entries), and the snapshot built from it for the
//! request path. It reads through a [`Source`], so it is unit-tested with a fake one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use gray_core::clock::unix_seconds;
use gray_core::config::Config;
use gray_core::fleet;
use gray_core::idset::IdSetBuilder;
use gray_core::keys;
use gray_core::rollout::Plan;
use gray_core::rules::{KeyRef, KeyUse};
use gray_core::snapshot::{
    ActiveRuleSet, CompiledRuleSet, LoadedKey, LoadedList, RuleSetSeries, Snapshot,
};
use gray_core::value::{KeyKind, ListBuilder, Text};
use gray_core::whitelist::WhitelistBuilder;
use gray_io::read::Limit;

use super::host::StoredText;
use super::parse::{parse_ids, parse_list};
use super::reader::Read;
use crate::log::Level;
use crate::metrics::{self, KeyLoaded, Labels, RolloutLoaded, WorkerState, CHECKS_SHOWN};
use crate::region::RegisterError;
use crate::state::Shared;

/// Where the loaded state reads keys and says what it did: the refresher's link and health, or a
/// test's fake.
pub(super) trait Source {
    /// Key `key`, as the poll under way reads it (or leaves it), at most `limit`; `loaded` is
    /// the version loaded now, which a read that finds it again need not hand back.
    fn read<B: ListBuilder>(
        &mut self,
        key: &str,
        limit: Limit,
        loaded: Option<u64>,
    ) -> Result<Read<B>, String>;
    /// Key `key` is no longer read: referenced again later, it is read again, whatever a write
    /// names.
    fn forget(&mut self, key: &str);
    fn log(&mut self, level: Level, message: String);
    /// A condition that repeats with every poll, said once.
    fn log_once(&mut self, level: Level, message: String);
    /// What Redis holds is wrong (a rule set rejected): the status's last error.
    fn rejected(&mut self, error: String);
}

/// Plan numbers, unique per compiled rule set in this process.
static NEXT_PLAN: AtomicU32 = AtomicU32::new(1);

/// A rule set's key and what was loaded from it.
pub(super) struct RuleSetSlot {
    pub key: String,
    pub compiled: Option<Arc<CompiledRuleSet>>,
    /// The version last read, good or bad: an unchanged bad value is not logged again.
    seen: Option<u64>,
    /// Where the compiled rule set's decisions are counted.
    pub series: RuleSetSeries,
    /// Its rollout plan (`<key>:rollout`), as last read; `None` when there is none or it
    /// cannot be read.
    pub rollout: Option<Plan>,
    /// The plan key's version last read.
    rollout_seen: Option<u64>,
    /// The rule set's and the plan's values as last read, for the host's other workers.
    pub text: Option<StoredText>,
    pub rollout_text: Option<StoredText>,
}

pub(super) struct Loaded {
    pub config: Arc<Config>,
    /// The default rule set, then the named ones.
    pub rule_sets: Vec<RuleSetSlot>,
    pub whitelist: Option<Arc<LoadedList>>,
    /// The keys rule sets reference, other than the whitelist key.
    pub keys: HashMap<KeyRef, LoadedKey>,
    /// Where the whitelist's decisions are counted, once registered.
    whitelist_series: Option<[u32; 2]>,
    /// The series registry stayed locked during this poll: register nothing more until the next.
    registry_busy: bool,
    /// When the snapshot in force was swapped in.
    pub published_at: SystemTime,
    /// Something was loaded that no published snapshot holds yet (a poll failed before it
    /// published).
    unpublished: bool,
}

/// The whitelists loaded at one moment, to go back to.
pub(super) struct Whitelists {
    whitelist: Option<Arc<LoadedList>>,
    keys: Vec<(KeyRef, LoadedKey)>,
}

impl Loaded {
    pub fn new(config: Arc<Config>) -> Loaded {
        let rule_sets = std::iter::once(None)
            .chain(config.rule_sets.iter().map(|name| Some(name.as_str())))
            .map(|name| RuleSetSlot {
                key: config.rule_set_key(name),
                compiled: None,
                seen: None,
                series: RuleSetSeries::default(),
                rollout: None,
                rollout_seen: None,
                text: None,
                rollout_text: None,
            })
            .collect();
        Loaded {
            config,
            rule_sets,
            whitelist: None,
            keys: HashMap::new(),
            whitelist_series: None,
            registry_busy: false,
            published_at: SystemTime::now(),
            unpublished: false,
        }
    }

    /// How much a list is read at most.
    fn lists(&self) -> Limit {
        Limit::list(self.config.max_bytes)
    }

    /// Reads the keys of this poll into the loaded state; says whether anything was replaced.
    /// What was replaced before a failure stays to be published all the same.
    pub fn poll(&mut self, source: &mut impl Source) -> Result<bool, String> {
        self.registry_busy = false;
        let mut replaced = false;
        let read = self.read_keys(source, &mut replaced);
        self.unpublished |= replaced;
        read.map(|()| replaced)
    }

    /// The whitelists loaded now.
    pub fn whitelists(&self) -> Whitelists {
        Whitelists {
            whitelist: self.whitelist.clone(),
            keys: self
                .keys
                .iter()
                .filter(|(_, value)| matches!(value, LoadedKey::Whitelist(_)))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        }
    }

    /// Puts back key `key`'s whitelist as it was in `before` (none if it had none), to be
    /// published.
    pub fn put_back(&mut self, key: &str, before: &Whitelists) {
        if key == self.config.key {
            self.whitelist = before.whitelist.clone();
        }
        self.keys
            .retain(|k, _| !(k.name == key && k.use_ == KeyUse::Whitelist));
        for (k, value) in &before.keys {
            if k.name == key {
                self.keys.insert(k.clone(), value.clone());
            }
        }
        self.unpublished = true;
    }

    /// Something changed that the next publish must carry (a guard reset).
    pub fn mark_unpublished(&mut self) {
        self.unpublished = true;
    }

    /// Whether a snapshot should be published: something new is loaded, or the one in force does
    /// not have this configuration's rule sets yet.
    pub fn unpublished(&self, current: &Snapshot) -> bool {
        self.unpublished || current.rule_sets.len() != self.rule_sets.len()
    }

    fn read_keys(&mut self, source: &mut impl Source, replaced: &mut bool) -> Result<(), String> {
        let key = self.config.key.clone();
        let loaded = self.whitelist.as_ref().map(|l| l.version);
        if let Read::Value(fetched, took) =
            source.read::<WhitelistBuilder>(&key, self.lists(), loaded)?
        {
            if self
                .whitelist
                .as_ref()
                .is_none_or(|l| l.version != fetched.version)
            {
                self.whitelist = Some(parse_list(source, &key, fetched, took));
                *replaced = true;
            }
        }
        for set in 0..self.rule_sets.len() {
            *replaced |= self.poll_rule_set(source, set)?;
            self.poll_rollout(source, set)?;
        }
        *replaced |= self.poll_referenced_keys(source)?;
        Ok(())
    }

    /// Reads rule set `set`; a new good one replaces the old, a bad one is logged once and
    /// changes nothing, a missing key leaves the whitelist to decide. Says whether it replaced.
    fn poll_rule_set(&mut self, source: &mut impl Source, set: usize) -> Result<bool, String> {
        let key = self.rule_sets[set].key.clone();
        let seen = self.rule_sets[set].seen;
        let Read::Value(fetched, _) =
            source.read::<Text>(&key, Limit::rule_set(self.config.max_bytes), seen)?
        else {
            return Ok(false);
        };
        let slot = &mut self.rule_sets[set];
        if slot.seen == Some(fetched.version) {
            return Ok(false);
        }
        slot.seen = Some(fetched.version);
        let (kind, version) = (fetched.kind, fetched.version);
        let plan = NEXT_PLAN.fetch_add(1, Ordering::Relaxed);
        let text = fetched.into_list();
        slot.text = Some(StoredText {
            kind,
            version,
            value: text.as_slice().into(),
        });
        match CompiledRuleSet::compile(&key, kind, &text, version, &self.config.targets, plan) {
            Ok(None) => {
                if slot.compiled.take().is_some() {
                    source.log(
                        Level::Notice,
                        format!("rule set key {key} is gone: the whitelist key decides again"),
                    );
                }
                Ok(true)
            }
            Ok(Some(compiled)) => {
                let rules = &compiled.rules;
                source.log(
                    Level::Notice,
                    format!(
                        "loaded rule set from key {key}: {} rules, {}, reading {}; version {version:016x}",
                        rules.rules.len(),
                        if rules.enabled { "enabled" } else { "disabled (everyone to the default)" },
                        if rules.inputs.is_empty() {
                            "the client address only".to_string()
                        } else {
                            rules.inputs.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
                        }
                    ),
                );
                let compiled = Arc::new(compiled);
                let targets = self.config.targets.clone();
                let series = metrics::rule_set_series(&compiled, &targets, |labels| {
                    self.series(labels, &mut |level, message| {
                        source.log_once(level, message)
                    })
                });
                for (rule, &s) in compiled.rules.rules.iter().zip(&series.rules) {
                    if rule.guard.is_some() && s == 0 && metrics::shared() {
                        source.log_once(
                            Level::Err,
                            format!(
                                "the guard of rule set {key} rule \"{}\" is off: its requests are not counted",
                                rule.name
                            ),
                        );
                    }
                }
                crate::guard::forget_other_versions(&compiled, &series);
                crate::guard::start_windows(&compiled, &series);
                let slot = &mut self.rule_sets[set];
                slot.compiled = Some(compiled);
                slot.series = series;
                Ok(true)
            }
            Err(e) => {
                let keeping = if slot.compiled.is_some() {
                    "keeping the previous rule set"
                } else {
                    "no rule set loaded, the whitelist key decides"
                };
                let error = format!("rejected rule set in key {key}: {e}");
                source.log(Level::Err, format!("{error}; {keeping}"));
                source.rejected(error);
                // Redis answered; what it holds is wrong, and the log says so.
                Ok(false)
            }
        }
    }

    /// Reads rule set `set`'s rollout plan. The snapshot does not hold it: the refresher
    /// contributes traffic to it and, with `rollouts`, drives it.
    fn poll_rollout(&mut self, source: &mut impl Source, set: usize) -> Result<(), String> {
        let key = keys::rollout(&self.rule_sets[set].key);
        let seen = self.rule_sets[set].rollout_seen;
        let Read::Value(fetched, _) =
            source.read::<Text>(&key, Limit::rule_set(self.config.max_bytes), seen)?
        else {
            return Ok(());
        };
        let slot = &mut self.rule_sets[set];
        if slot.rollout_seen == Some(fetched.version) {
            return Ok(());
        }
        slot.rollout_seen = Some(fetched.version);
        let (kind, version) = (fetched.kind, fetched.version);
        let text = fetched.into_list();
        slot.rollout_text = Some(StoredText {
            kind,
            version,
            value: text.as_slice().into(),
        });
        slot.rollout = match kind {
            KeyKind::Missing => None,
            _ => {
                match Plan::parse(&text) {
                    Ok(plan) => Some(plan),
                    Err(e) => {
                        source.log(
                        Level::Err,
                        format!("ignoring the rollout plan in key {key} (version {version:016x}): {e}"),
                    );
                        None
                    }
                }
            }
        };
        Ok(())
    }

    /// The keys the loaded rule sets reference (`ip_key`, `in_key`), each once.
    fn referenced_keys(&self) -> Vec<KeyRef> {
        let mut wanted: Vec<KeyRef> = Vec::new();
        for compiled in self.rule_sets.iter().filter_map(|s| s.compiled.as_ref()) {
            for key in &compiled.rules.keys {
                if !wanted.contains(key) {
                    wanted.push(key.clone());
                }
            }
        }
        wanted
    }

    /// Reads the keys the loaded rule sets reference and forgets the others. Says whether
    /// anything was replaced.
    fn poll_referenced_keys(&mut self, source: &mut impl Source) -> Result<bool, String> {
        let wanted = self.referenced_keys();
        let before = self.keys.len();
        self.keys.retain(|key, _| {
            let kept = wanted.contains(key);
            if !kept {
                source.forget(&key.name);
            }
            kept
        });
        let mut replaced = self.keys.len() != before;
        for key in wanted {
            // The whitelist key is read once, above.
            if key.use_ == KeyUse::Whitelist && key.name == self.config.key {
                continue;
            }
            let current = self.keys.get(&key).map(LoadedKey::version);
            let loaded = match key.use_ {
                KeyUse::Whitelist => {
                    match source.read::<WhitelistBuilder>(&key.name, self.lists(), current)? {
                        Read::Value(f, took) if current != Some(f.version) => {
                            Some(LoadedKey::Whitelist(parse_list(source, &key.name, f, took)))
                        }
                        _ => None,
                    }
                }
                KeyUse::Ids => {
                    match source.read::<IdSetBuilder>(&key.name, self.lists(), current)? {
                        Read::Value(f, took) if current != Some(f.version) => {
                            Some(LoadedKey::Ids(parse_ids(source, &key.name, f, took)))
                        }
                        _ => None,
                    }
                }
            };
            if let Some(loaded) = loaded {
                self.keys.insert(key, loaded);
                replaced = true;
            }
        }
        Ok(replaced)
    }

    /// Whether a loaded rule set's rollout plan is running (or holding, or paused).
    pub fn rollout_running(&self) -> bool {
        self.rule_sets
            .iter()
            .any(|s| s.rollout.as_ref().is_some_and(|p| p.state.active()))
    }

    /// Whether the refresher reads `key`: the whitelist, a rule set, a rule set's guard hash,
    /// or a key a rule references.
    pub fn reads_key(&self, key: &[u8]) -> bool {
        key == self.config.key.as_bytes()
            || self.rule_sets.iter().any(|s| {
                s.key.as_bytes() == key
                    || keys::is_guard_of(key, &s.key)
                    || keys::is_rollout_of(key, &s.key)
            })
            || self.keys.keys().any(|k| k.name.as_bytes() == key)
    }

    /// Swaps in a snapshot of what is loaded now.
    pub fn publish(&mut self, shared: &Shared, warn: &mut dyn FnMut(Level, String)) {
        self.unpublished = false;
        self.published_at = SystemTime::now();
        let whitelist = self.whitelist.clone();
        let rule_sets = self
            .rule_sets
            .iter()
            .map(|slot| {
                let compiled = slot.compiled.clone()?;
                Some(ActiveRuleSet::new(
                    compiled.clone(),
                    &self.config.key,
                    whitelist.as_ref(),
                    |key| self.keys.get(key).cloned(),
                    slot.series.clone(),
                    crate::guard::tripped_rules(&compiled, &slot.series),
                ))
            })
            .collect();
        let whitelist_series = match self.whitelist_series {
            Some(series) => series,
            None => {
                let config = self.config.clone();
                let series = metrics::whitelist_series(&config.key, &config.targets, |l| {
                    self.series(l, warn)
                });
                // Registered for good once both are; tried again at the next publish otherwise.
                if !series.contains(&0) || !metrics::shared() {
                    self.whitelist_series = Some(series);
                }
                series
            }
        };
        shared.snapshot.store(Arc::new(Snapshot {
            trusted_proxies: Arc::new(self.config.trusted_proxies.clone()),
            real_ip_header: self.config.real_ip_header,
            targets: self.config.targets.clone().into(),
            loaded: whitelist,
            rule_sets,
            whitelist_series,
        }));
        if let Err(e) = metrics::keep_only(&self.series_in_use()) {
            warn(
                Level::Err,
                format!("metrics: could not let go of the series no longer loaded: {e}"),
            );
        }
    }

    /// The series this worker's loaded rule sets and whitelist count into: the ones a new name
    /// must not take.
    fn series_in_use(&self) -> Vec<u32> {
        let mut in_use: Vec<u32> = self.whitelist_series.iter().flatten().copied().collect();
        for series in self.rule_sets.iter().map(|slot| &slot.series) {
            in_use.extend(
                series
                    .rules
                    .iter()
                    .chain(&series.override_)
                    .chain(&series.lane),
            );
            in_use.extend([series.default, series.disabled]);
        }
        in_use
    }

    /// The metrics series of `labels`; 0 (not counted, said once) where it cannot have one.
    fn series(&mut self, labels: &Labels, warn: &mut dyn FnMut(Level, String)) -> u32 {
        if self.registry_busy {
            return 0;
        }
        metrics::register(labels).unwrap_or_else(|e| {
            // A registry held by a stuck process: not once per rule of this poll.
            self.registry_busy = matches!(e, RegisterError::Busy);
            let rule = if labels.rule.is_empty() {
                String::new()
            } else {
                format!(" \"{}\"", labels.rule)
            };
            warn(
                Level::Err,
                format!(
                    "not counting the requests key {} sends to {} ({}{rule}): {e}",
                    labels.rule_set, labels.target, labels.outcome
                ),
            );
            0
        })
    }

    /// Every key this worker has loaded: the whitelist, each rule set slot (loaded or not), and
    /// the keys the rule sets reference. What scrapes and the gateways hash show.
    pub fn loaded_keys(&self) -> Vec<KeyLoaded> {
        let whitelist = self.whitelist.as_ref();
        let mut keys = vec![KeyLoaded {
            key: self.config.key.clone(),
            kind: "whitelist".into(),
            version: whitelist.map(|l| fleet::version_text(l.version)),
            entries: whitelist.map_or(0, |l| l.list.entries() as u64),
            loaded_at: whitelist.map(|l| unix_seconds(l.loaded_at)),
        }];
        for slot in &self.rule_sets {
            let compiled = slot.compiled.as_ref();
            keys.push(KeyLoaded {
                key: slot.key.clone(),
                kind: "rule_set".into(),
                version: compiled.map(|c| fleet::version_text(c.version)),
                entries: compiled.map_or(0, |c| c.rules.rules.len() as u64),
                loaded_at: compiled.map(|c| unix_seconds(c.loaded_at)),
            });
        }
        for (key, loaded) in &self.keys {
            let (kind, entries, loaded_at) = match loaded {
                LoadedKey::Whitelist(l) => (
                    "whitelist",
                    l.list.entries() as u64,
                    Some(unix_seconds(l.loaded_at)),
                ),
                LoadedKey::Ids(ids) => ("ids", ids.ids.len() as u64, None),
            };
            keys.push(KeyLoaded {
                key: key.name.clone(),
                kind: kind.into(),
                version: Some(fleet::version_text(loaded.version())),
                entries,
                loaded_at,
            });
        }
        keys
    }

    /// Publishes what this worker serves and how its link to Redis is, for scrapes.
    pub fn publish_state(&self, shared: &Shared) {
        let status = shared.status();
        metrics::publish_state(&WorkerState {
            worker: metrics::worker(),
            pid: std::process::id(),
            running: status.running,
            connected: status.connected,
            subscribed: status.subscribed,
            tracking: status.tracking,
            failures: status.failures,
            last_ok_at: status.last_ok_at.map(unix_seconds),
            last_error: status.last_error,
            last_error_at: status.last_error_at.map(unix_seconds),
            keys: self.loaded_keys(),
            rollouts: self
                .rule_sets
                .iter()
                .filter_map(|slot| {
                    let plan = slot.rollout.as_ref()?;
                    Some(RolloutLoaded {
                        key: slot.key.clone(),
                        rule: plan.rule.clone(),
                        step: plan.step + 1,
                        percent: plan.percent().percent(),
                        state: plan.state.as_str().to_string(),
                        driver: plan.driver.clone(),
                        id: plan.id,
                        revision: plan.revision,
                        steps: plan
                            .settings
                            .steps
                            .iter()
                            .map(|&step| f64::from(step) / 100.0)
                            .collect(),
                        checks: plan.checks[plan.checks.len().saturating_sub(CHECKS_SHOWN)..]
                            .to_vec(),
                    })
                })
                .collect(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;
    use gray_core::config::OptionValue;
    use gray_core::decision::{Carry, Extra};
    use gray_core::value::Fetched;

    /// Redis as a map of string keys; what was read and forgotten, and what was said.
    #[derive(Default)]
    struct Fake {
        values: HashMap<String, String>,
        reads: Vec<String>,
        limits: HashMap<String, Limit>,
        forgotten: HashSet<String>,
        logged: Vec<String>,
        rejected: Vec<String>,
    }

    impl Source for Fake {
        fn read<B: ListBuilder>(
            &mut self,
            key: &str,
            limit: Limit,
            _: Option<u64>,
        ) -> Result<Read<B>, String> {
            self.reads.push(key.to_string());
            self.limits.insert(key.to_string(), limit);
            let fetched = match self.values.get(key) {
                Some(value) if value.len() > limit.bytes => {
                    return Ok(Read::Refused(format!("{key} over {}", limit.name)))
                }
                Some(value) => Fetched::text(KeyKind::String, value.as_bytes().to_vec()),
                None => Fetched::text(KeyKind::Missing, Vec::new()),
            };
            Ok(Read::Value(fetched, Duration::ZERO))
        }
        fn forget(&mut self, key: &str) {
            self.forgotten.insert(key.to_string());
        }
        fn log(&mut self, _: Level, message: String) {
            self.logged.push(message);
        }
        fn log_once(&mut self, _: Level, message: String) {
            self.logged.push(message);
        }
        fn rejected(&mut self, error: String) {
            self.rejected.push(error);
        }
    }

    fn loaded() -> Loaded {
        let targets = OptionValue::List(vec![OptionValue::Str("@canary".into())]);
        Loaded::new(Arc::new(
            Config::from_options(vec![("targets".into(), targets)]).unwrap(),
        ))
    }

    /// Where the published snapshot sends a client (peer address bytes), by target name.
    fn routes(shared: &Shared, client: [u8; 4]) -> String {
        let snapshot = shared.current();
        let code = snapshot.route(0, &client, &Extra::default(), &mut Carry::default());
        snapshot.target_name((code & 0xff) as usize).to_string()
    }

    #[test]
    fn a_rule_set_reading_the_whitelist_key_shares_its_one_read() {
        let mut fake = Fake::default();
        fake.values.insert("gray".into(), "10.0.0.1".into());
        fake.values.insert(
            "gray:rules".into(),
            r#"{"format":1,"rules":[{"name":"list","ip_key":"gray","to":"@canary"}]}"#.into(),
        );
        let mut loaded = loaded();
        assert!(loaded.poll(&mut fake).unwrap());
        assert_eq!(fake.reads, ["gray", "gray:rules", "gray:rules:rollout"]);
        let shared = Shared::default();
        loaded.publish(&shared, &mut |_, _| {});
        assert_eq!(routes(&shared, [10, 0, 0, 1]), "@canary");
        assert_eq!(routes(&shared, [10, 0, 0, 2]), "@prod1");
        assert!(loaded.reads_key(b"gray:rules:guard"));
        assert!(loaded.reads_key(b"gray:rules:rollout"));
        assert!(!loaded.reads_key(b"gray:rules:rollout:lease"));
        assert!(!loaded.reads_key(b"gray:history"));
    }

    #[test]
    fn a_rule_sets_plan_is_read_with_it_and_a_bad_one_is_ignored_by_version() {
        let mut fake = Fake::default();
        fake.values.insert(
            "gray:rules".into(),
            r#"{"format":1,"rules":[{"name":"canary","percent":0,"to":"@canary"}]}"#.into(),
        );
        let plan = r#"{"format":1,"id":7,"rule":"canary","steps":[1.0,5.0],"hold":1.0,"interval":1.0,"max_error_rate":1.0,"max_p99":null,"min_requests":10,"failure_limit":3,"message":null,"by":"t@h","started_at":1.0,"state":"running","step":0,"step_started_at":1.0,"held":0.0,"counting_since":1.0,"step_responses":0,"failures_in_a_row":0,"checks":[],"last_check_at":null,"ended_at":null,"reason":null,"driver":null,"revision":1}"#;
        fake.values.insert("gray:rules:rollout".into(), plan.into());
        let mut loaded = loaded();
        loaded.poll(&mut fake).unwrap();
        let read = loaded.rule_sets[0]
            .rollout
            .as_ref()
            .expect("the plan is read");
        assert_eq!((read.id, read.rule.as_str()), (7, "canary"));
        fake.values
            .insert("gray:rules:rollout".into(), "{not a plan".into());
        loaded.poll(&mut fake).unwrap();
        assert!(loaded.rule_sets[0].rollout.is_none());
        assert!(fake
            .logged
            .iter()
            .any(|l| l.contains("ignoring the rollout plan in key gray:rules:rollout")));
    }

    #[test]
    fn a_bad_rule_set_keeps_the_good_one_and_a_missing_one_hands_back_to_the_whitelist() {
        let mut fake = Fake::default();
        fake.values.insert("gray".into(), "10.0.0.1".into());
        fake.values.insert(
            "gray:rules".into(),
            r#"{"format":1,"rules":[{"name":"all","to":"@canary"}]}"#.into(),
        );
        let (mut loaded, shared) = (loaded(), Shared::default());
        loaded.poll(&mut fake).unwrap();
        fake.values.insert(
            "gray:rules".into(),
            r#"{"format":1,"rules":[{"name":"all","to":"@x"}]}"#.into(),
        );
        assert!(!loaded.poll(&mut fake).unwrap());
        assert!(fake.rejected[0].starts_with(
            "rejected rule set in key gray:rules: rules[1] \"all\": to: unknown target \"@x\""
        ));
        loaded.publish(&shared, &mut |_, _| {});
        assert_eq!(routes(&shared, [10, 9, 9, 9]), "@canary");
        fake.values.remove("gray:rules");
        assert!(loaded.poll(&mut fake).unwrap());
        loaded.publish(&shared, &mut |_, _| {});
        assert_eq!(routes(&shared, [10, 9, 9, 9]), "@prod1");
        assert_eq!(routes(&shared, [10, 0, 0, 1]), "@prod2-grey");
    }

    #[test]
    fn a_referenced_key_is_read_and_forgotten_with_the_rules_that_named_it() {
        let mut fake = Fake::default();
        fake.values.insert(
            "gray:rules".into(),
            r#"{"format":1,"rules":[{"name":"office","ip_key":"office","to":"@canary"}]}"#.into(),
        );
        fake.values.insert("office".into(), "10.0.0.0/8".into());
        let (mut loaded, shared) = (loaded(), Shared::default());
        loaded.poll(&mut fake).unwrap();
        loaded.publish(&shared, &mut |_, _| {});
        assert_eq!(routes(&shared, [10, 1, 2, 3]), "@canary");
        assert!(loaded.reads_key(b"office"));
        fake.values
            .insert("gray:rules".into(), r#"{"format":1,"rules":[]}"#.into());
        assert!(loaded.poll(&mut fake).unwrap());
        assert!(fake.forgotten.contains("office"));
        assert!(!loaded.reads_key(b"office"));
    }

    #[test]
    fn a_rule_set_is_read_under_its_own_limit_and_a_list_under_max_bytes() {
        let mut fake = Fake::default();
        fake.values.insert(
            "gray:rules".into(),
            "x".repeat(gray_core::rules::MAX_BYTES + 1),
        );
        let mut loaded = loaded();
        loaded.poll(&mut fake).unwrap();
        assert_eq!(fake.limits["gray:rules"], Limit::rule_set(32 << 20));
        assert_eq!(fake.limits["gray:rules"].bytes, 1 << 20);
        assert_eq!(fake.limits["gray"], Limit::list(32 << 20));
        assert!(loaded.rule_sets[0].compiled.is_none());
    }
}
