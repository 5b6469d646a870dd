//! One load of what a gateway loads (the whitelist, one rule set and the keys its rules
//! reference) into a [`Snapshot`], for deciding offline as the gateway would (`grayctl explain`).
//! The refresher loads the same keys the same way, incrementally, keeping what did not change;
//! both assemble the snapshot with gray-core's [`CompiledRuleSet::compile`] and
//! [`ActiveRuleSet::new`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use gray_core::config::Config;
use gray_core::idset::IdSetBuilder;
use gray_core::rules::{KeyRef, KeyUse};
use gray_core::snapshot::{
    ActiveRuleSet, CompiledRuleSet, LoadedIds, LoadedKey, LoadedList, Snapshot,
};
use gray_core::value::{Fetched, ListBuilder, Text};
use gray_core::whitelist::WhitelistBuilder;

use crate::connection;
use crate::read::{fetch, FetchError, Limit};

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
    limit: Limit,
) -> Result<Fetched<B>, LoadError> {
    fetch::<B>(con, key, limit).map_err(|e| match e {
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

/// Loads the whitelist and rule set `set` (the default one for `None`) into a snapshot whose
/// rule set 0 is that set (absent when its key is missing: the whitelist decides).
pub fn load(
    con: &mut connection::Connection,
    config: &Config,
    set: Option<&str>,
) -> Result<Snapshot, LoadError> {
    let lists = Limit::list(config.max_bytes);
    let whitelist = list(read::<WhitelistBuilder>(con, &config.key, lists)?);
    let key = config.rule_set_key(set);
    let fetched = read::<Text>(con, &key, Limit::rule_set(config.max_bytes))?;
    let (kind, version) = (fetched.kind, fetched.version);
    let compiled = CompiledRuleSet::compile(
        &key,
        kind,
        &fetched.into_list(),
        version,
        &config.targets,
        1,
    )
    .map_err(|e| LoadError::Refused(format!("rule set in key {key} is rejected: {e}")))?;
    let active = match compiled {
        None => None,
        Some(compiled) => {
            let mut loaded = HashMap::new();
            for key in &compiled.rules.keys {
                if !(key.use_ == KeyUse::Whitelist && key.name == config.key) {
                    loaded.insert(key.clone(), load_key(con, key, config)?);
                }
            }
            Some(ActiveRuleSet::new(
                Arc::new(compiled),
                &config.key,
                Some(&whitelist),
                |key| loaded.get(key).cloned(),
                Default::default(),
                Vec::new(),
            ))
        }
    };
    Ok(Snapshot {
        trusted_proxies: Arc::new(config.trusted_proxies.clone()),
        real_ip_header: config.real_ip_header,
        targets: config.targets.clone().into(),
        loaded: Some(whitelist),
        rule_sets: vec![active],
        whitelist_series: [0; 2],
    })
}

fn lists(config: &Config) -> Limit {
    Limit::list(config.max_bytes)
}

fn load_key(
    con: &mut connection::Connection,
    key: &KeyRef,
    config: &Config,
) -> Result<LoadedKey, LoadError> {
    Ok(match key.use_ {
        KeyUse::Whitelist => LoadedKey::Whitelist(list(read(con, &key.name, lists(config))?)),
        KeyUse::Ids => {
            let fetched = read::<IdSetBuilder>(con, &key.name, lists(config))?;
            let (kind, version) = (fetched.kind, fetched.version);
            LoadedKey::Ids(Arc::new(LoadedIds {
                ids: fetched.into_list(),
                kind,
                version,
            }))
        }
    })
}
