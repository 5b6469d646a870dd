//! One load of what a gateway loads (the whitelist, one rule set and the keys its rules
//! reference) into a [`Snapshot`], for deciding offline as the gateway would (`grayctl explain`).
//! The refresher loads the same keys the same way, incrementally, keeping what did not change.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Config;
use crate::connection;
use crate::idset::IdSet;
use crate::plan::Plan;
use crate::rules::{schema, KeyRef, KeyUse};
use crate::snapshot::{
    ActiveRuleSet, CompiledRuleSet, KeyKind, LoadedIds, LoadedKey, LoadedList, Snapshot,
};
use crate::source::{fetch, FetchError, Fetched, ListBuilder, Text};
use crate::whitelist::WhitelistBuilder;

#[derive(Debug)]
pub enum LoadError {
    /// Redis failed (or refused a command).
    Redis(connection::Error),
    /// A key holds what a gateway would refuse: the wrong type, too much, a bad rule set.
    Refused(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Redis(e) => write!(f, "{e}"),
            LoadError::Refused(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for LoadError {}

fn read<B: ListBuilder>(
    con: &mut connection::Connection,
    key: &str,
    config: &Config,
) -> Result<Fetched<B>, LoadError> {
    fetch::<B>(con, key, config.max_bytes).map_err(|e| match e {
        FetchError::Redis(e) => LoadError::Redis(e),
        refused => LoadError::Refused(format!("key {key}: {refused}")),
    })
}

fn list(fetched: Fetched) -> Arc<LoadedList> {
    let (kind, version) = (fetched.kind, fetched.version);
    Arc::new(LoadedList {
        list: fetched.into_list(),
        kind,
        version,
        loaded_at: SystemTime::now(),
    })
}

/// A rule set key's value compiled as the gateways compile it: `None` for a missing key.
pub fn compile_rule_set(
    kind: KeyKind,
    json: &[u8],
    config: &Config,
) -> Result<Option<crate::rules::RuleSet>, schema::RuleSetError> {
    match kind {
        KeyKind::Missing => Ok(None),
        KeyKind::String => schema::compile(json, &config.targets).map(Some),
        KeyKind::Set => Err(schema::RuleSetError(
            "key holds a set, expected a string of JSON".into(),
        )),
    }
}

/// Loads the whitelist and rule set `set` (the default one for `None`) into a snapshot whose
/// rule set 0 is that set (absent when its key is missing: the whitelist decides).
pub fn load(
    con: &mut connection::Connection,
    config: &Config,
    set: Option<&str>,
) -> Result<Snapshot, LoadError> {
    let whitelist = list(read::<WhitelistBuilder>(con, &config.key, config)?);
    let key = config.rule_set_key(set);
    let fetched = read::<Text>(con, &key, config)?;
    let (kind, version) = (fetched.kind, fetched.version);
    let rules = compile_rule_set(kind, &fetched.into_list(), config)
        .map_err(|e| LoadError::Refused(format!("rule set in key {key} is rejected: {e}")))?;
    let active = match rules {
        None => None,
        Some(rules) => {
            let mut keys = Vec::with_capacity(rules.keys.len());
            for key in &rules.keys {
                keys.push(Some(load_key(con, key, config, &whitelist)?));
            }
            let plan = Plan::new(1, &rules.inputs);
            Some(ActiveRuleSet {
                series: Default::default(),
                tripped: Vec::new(),
                compiled: Arc::new(CompiledRuleSet {
                    key,
                    rules,
                    version,
                    loaded_at: SystemTime::now(),
                    plan,
                }),
                keys,
            })
        }
    };
    Ok(Snapshot {
        trusted_proxies: Arc::new(config.trusted_proxies.clone()),
        loaded: Some(whitelist),
        rule_sets: vec![active],
        whitelist_series: [0; 2],
    })
}

fn load_key(
    con: &mut connection::Connection,
    key: &KeyRef,
    config: &Config,
    whitelist: &Arc<LoadedList>,
) -> Result<LoadedKey, LoadError> {
    Ok(match key.use_ {
        KeyUse::Whitelist if key.name == config.key => LoadedKey::Whitelist(whitelist.clone()),
        KeyUse::Whitelist => LoadedKey::Whitelist(list(read(con, &key.name, config)?)),
        KeyUse::Ids => {
            let fetched = read::<IdSet>(con, &key.name, config)?;
            let (kind, version) = (fetched.kind, fetched.version);
            LoadedKey::Ids(Arc::new(LoadedIds {
                ids: fetched.into_list(),
                kind,
                version,
            }))
        }
    })
}
