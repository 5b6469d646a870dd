//! The guards' commands: show the trips the gateways recorded and the resets, and reset a rule's
//! guard on every gateway.

use std::time::SystemTime;

use gray_core::clock::{self, unix_now};
use gray_core::guard::{GuardHash, TripRecord};
use gray_core::keys;
use serde_json::{json, Value};

use super::fleet::ago;
use super::rules::{compile, stored};
use super::{pretty, Context};
use crate::cli::SetName;
use crate::failure::{refused, Failure};
use crate::store::Store;

fn read_guard(store: &mut Store, key: &str) -> Result<GuardHash, Failure> {
    let fields = store.guard(key)?;
    Ok(GuardHash::parse(
        fields.iter().map(|(f, v)| (f.as_bytes(), v.as_bytes())),
    ))
}

pub(super) fn show(ctx: &Context, set: &SetName) -> Result<(), Failure> {
    let key = ctx.rule_set_key(set)?;
    let GuardHash { trips, resets } = read_guard(&mut ctx.store()?, &key)?;
    if ctx.json {
        let trips: Vec<&TripRecord> = trips.iter().map(|(_, t)| t).collect();
        let resets: Vec<Value> = resets
            .iter()
            .map(|(rule, at)| json!({"rule": rule, "at": *at as f64 / 1000.0}))
            .collect();
        println!(
            "{}",
            json!({"key": keys::guard(&key), "trips": trips, "resets": resets})
        );
        return Ok(());
    }
    let now = unix_now();
    println!(
        "{}: {} trips recorded, {} resets",
        keys::guard(&key),
        trips.len(),
        resets.len()
    );
    for (_, t) in &trips {
        println!(
            "  {} (to {}) tripped on {} (pid {}) {}, rule set version {}: {}",
            t.rule,
            t.target,
            t.host,
            t.pid,
            ago(now, t.at),
            t.version,
            t.trip()
        );
    }
    for (rule, at) in &resets {
        println!("  {rule} reset {}", ago(now, *at as f64 / 1000.0));
    }
    Ok(())
}

pub(super) fn reset(ctx: &Context, set: &SetName, rule: &str) -> Result<(), Failure> {
    let key = ctx.rule_set_key(set)?;
    let mut store = ctx.store()?;
    let current = store.read(&key)?;
    let doc = stored(&key, &current)?;
    let rules = compile(ctx, &pretty(&doc)?)?;
    if !rules
        .rules
        .iter()
        .any(|r| r.name == rule && r.guard.is_some())
    {
        return Err(refused(format!(
            "rule set {key} has no rule \"{rule}\" with a guard"
        )));
    }
    let trips = read_guard(&mut store, &key)?.trips;
    let records: Vec<String> = trips
        .into_iter()
        .filter(|(_, t)| t.rule == rule)
        .map(|(field, _)| field)
        .collect();
    let at_ms = clock::unix_ms(SystemTime::now());
    store.reset_guard(&key, rule, &records, at_ms)?;
    if ctx.json {
        println!(
            "{}",
            json!({"key": keys::guard(&key), "rule": rule, "records_removed": records.len()})
        );
    } else {
        println!(
            "reset the guard of rule \"{rule}\" in {key}, trip records removed: {}; gateways let it match again on their next read",
            records.len()
        );
    }
    Ok(())
}
