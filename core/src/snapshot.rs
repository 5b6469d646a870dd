//! The immutable value every request is decided against. A worker holds one snapshot at a time;
//! the refresher builds the next one and swaps it in whole, so a request never sees half a list or
//! half a rule set. It holds the whitelist, each rule set compiled with the data of the keys it
//! references, the target table their decisions index, and where the decisions are counted.
//! Building one from what was read ([`CompiledRuleSet::compile`], [`ActiveRuleSet::new`]) is
//! written here once, for the refresher and for grayctl's offline load alike; deciding is in
//! [`crate::decision`].

use std::sync::Arc;
use std::time::SystemTime;

use crate::client_ip::RealIpHeader;
use crate::idset::IdSet;
use crate::ipset::IpSet;
use crate::plan::Plan;
use crate::rules::{self, schema, KeyData, KeyRef, KeyUse, Keys, Outcome, RuleSet};
pub use crate::value::KeyKind;
use crate::whitelist::Whitelist;

/// A loaded whitelist and where it came from.
#[derive(Debug)]
pub struct LoadedList {
    pub list: Whitelist,
    pub kind: KeyKind,
    /// A hash of the raw value: equal values are not parsed again.
    pub version: u64,
    pub loaded_at: SystemTime,
}

/// A set of ids read from an `in_key`.
#[derive(Debug)]
pub struct LoadedIds {
    pub ids: IdSet,
    pub kind: KeyKind,
    pub version: u64,
}

/// A key a rule set references, as loaded.
#[derive(Debug, Clone)]
pub enum LoadedKey {
    Whitelist(Arc<LoadedList>),
    Ids(Arc<LoadedIds>),
}

impl LoadedKey {
    pub fn version(&self) -> u64 {
        match self {
            LoadedKey::Whitelist(list) => list.version,
            LoadedKey::Ids(ids) => ids.version,
        }
    }
}

/// A rule set as compiled from its key.
#[derive(Debug)]
pub struct CompiledRuleSet {
    pub key: String,
    pub rules: RuleSet,
    /// A hash of the JSON text.
    pub version: u64,
    pub loaded_at: SystemTime,
    /// How the request path gathers `rules.inputs`.
    pub plan: Plan,
}

impl CompiledRuleSet {
    /// A rule set key's value compiled as the gateways compile it, against the target table
    /// `targets`: `None` for a missing key (the whitelist decides), an error for a value the
    /// gateways reject whole. `plan` numbers its plan of inputs.
    pub fn compile(
        key: &str,
        kind: KeyKind,
        json: &[u8],
        version: u64,
        targets: &[String],
        plan: u32,
    ) -> Result<Option<CompiledRuleSet>, schema::RuleSetError> {
        let rules = match kind {
            KeyKind::Missing => return Ok(None),
            KeyKind::String => schema::compile(json, targets)?,
            KeyKind::Set => {
                return Err(schema::RuleSetError(
                    "key holds a set, expected a string of JSON".into(),
                ))
            }
        };
        Ok(Some(CompiledRuleSet {
            key: key.to_string(),
            plan: Plan::new(plan, &rules.inputs),
            rules,
            version,
            loaded_at: SystemTime::now(),
        }))
    }
}

/// A rule set with the data of the keys it references (`None` while one is missing).
#[derive(Debug, Clone)]
pub struct ActiveRuleSet {
    pub compiled: Arc<CompiledRuleSet>,
    pub keys: Vec<Option<LoadedKey>>,
    /// Where its decisions are counted.
    pub series: RuleSetSeries,
    /// By rule index: the rule's guard has tripped (empty while none has).
    pub tripped: Vec<bool>,
}

impl ActiveRuleSet {
    /// `compiled` with the data of each key its rules reference: the whitelist's own list where a
    /// rule reads the whitelist key as an `ip_key` (it is read once, for both), else what
    /// `loaded` has of the key.
    pub fn new(
        compiled: Arc<CompiledRuleSet>,
        whitelist_key: &str,
        whitelist: Option<&Arc<LoadedList>>,
        loaded: impl Fn(&KeyRef) -> Option<LoadedKey>,
        series: RuleSetSeries,
        tripped: Vec<bool>,
    ) -> ActiveRuleSet {
        let keys = compiled
            .rules
            .keys
            .iter()
            .map(|key| {
                if key.use_ == KeyUse::Whitelist && key.name == whitelist_key {
                    return whitelist.cloned().map(LoadedKey::Whitelist);
                }
                loaded(key)
            })
            .collect();
        ActiveRuleSet {
            compiled,
            keys,
            series,
            tripped,
        }
    }
}

/// The metrics series (indexes the module assigns; 0 counts nothing) a rule set's decisions are
/// counted in, one per way of deciding and target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSetSeries {
    /// By rule index.
    pub rules: Vec<u32>,
    pub default: u32,
    pub disabled: u32,
    /// An override's, by target index.
    pub override_: Vec<u32>,
    /// An upstream lane's, by target index.
    pub lane: Vec<u32>,
}

impl RuleSetSeries {
    #[inline]
    pub fn of(&self, decision: &rules::Decision) -> u32 {
        let series = match decision.outcome {
            Outcome::Rule(i) => self.rules.get(i),
            Outcome::Default => Some(&self.default),
            Outcome::Disabled => Some(&self.disabled),
            Outcome::Override => self.override_.get(decision.target),
            Outcome::Lane => self.lane.get(decision.target),
        };
        series.copied().unwrap_or(0)
    }

    /// Every series a request to the rule set's default target is counted in: its default, its
    /// kill switch, the rules that send there and an override or upstream lane that does. A
    /// guard's baseline.
    pub fn to_default(&self, rules: &RuleSet) -> Vec<u32> {
        let mut baseline = vec![self.default, self.disabled];
        for (rule, s) in rules.rules.iter().zip(&self.rules) {
            if rule.to == rules.default {
                baseline.push(*s);
            }
        }
        baseline.extend(self.override_.get(rules.default));
        baseline.extend(self.lane.get(rules.default));
        baseline.retain(|&s| s != 0);
        baseline.sort_unstable();
        baseline.dedup();
        baseline
    }
}

impl Keys for ActiveRuleSet {
    fn get(&self, index: usize) -> Option<KeyData<'_>> {
        match self.keys.get(index)?.as_ref()? {
            LoadedKey::Whitelist(list) => Some(KeyData::Whitelist(&list.list)),
            LoadedKey::Ids(ids) => Some(KeyData::Ids(&ids.ids)),
        }
    }

    fn tripped(&self, rule: usize) -> bool {
        self.tripped.get(rule).copied().unwrap_or(false)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub trusted_proxies: Arc<IpSet>,
    /// Which of a trusted proxy's forwarding headers names the client.
    pub real_ip_header: RealIpHeader,
    /// The named locations decisions index: `prod`, `gray`, then `targets`.
    pub targets: Arc<[String]>,
    /// `None` until the first successful load.
    pub loaded: Option<Arc<LoadedList>>,
    /// By rule set index (the default set first, then `rule_sets`); `None` where the set's key
    /// holds no rule set, so the whitelist decides.
    pub rule_sets: Vec<Option<ActiveRuleSet>>,
    /// Where the whitelist's decisions are counted, by target (unlisted: prod, listed: gray).
    pub whitelist_series: [u32; 2],
}

impl Snapshot {
    /// Rule set `set` as loaded; `None` without one (the whitelist decides).
    pub fn active(&self, set: usize) -> Option<&ActiveRuleSet> {
        self.rule_sets.get(set).and_then(Option::as_ref)
    }

    /// How the request path gathers rule set `set`'s inputs; `None` without a rule set.
    pub fn plan(&self, set: usize) -> Option<&Plan> {
        self.active(set).map(|a| &a.compiled.plan)
    }

    /// The location of target index `target` ("" past the table).
    pub fn target_name(&self, target: usize) -> &str {
        self.targets.get(target).map_or("", String::as_str)
    }
}
