//! The history's commands: show the changes grayctl made, and roll one back, the value it
//! restores validated as the gateways would load it.

use std::time::SystemTime;

use gray_core::history::{self, Subject};
use gray_core::keys;
use gray_core::snapshot::CompiledRuleSet;
use gray_core::stored::{Change, KeyValue};
use gray_core::whitelist::Whitelist;
use serde_json::{json, Value};

use super::whitelist;
use super::Context;
use crate::failure::{refused, Failure};
use crate::store::Write;

/// The latest time humantime writes (the year 9999).
const MAX_SHOWN_TIME: std::time::Duration = std::time::Duration::from_secs(253_402_300_799);

pub(super) fn show(ctx: &Context, limit: usize) -> Result<(), Failure> {
    let entries = ctx.store()?.history()?;
    let mut shown = Vec::new();
    for (i, raw) in entries.iter().take(limit).enumerate() {
        let n = i + 1;
        match history::parse(raw) {
            Ok(entry) => shown.push((n, Some(entry))),
            Err(_) => shown.push((n, None)),
        }
    }
    if ctx.json {
        let items: Vec<Value> = shown
            .iter()
            .map(|(n, entry)| match entry {
                Some(e) => json!({
                    "entry": n, "time": e.record.time, "who": e.record.who, "command": e.record.command,
                    "message": e.record.message, "key": e.record.key, "subject": e.record.subject,
                    "previous": e.previous, "previous_bytes": e.previous_bytes,
                }),
                None => json!({"entry": n, "unreadable": true}),
            })
            .collect();
        println!("{}", Value::Array(items));
        return Ok(());
    }
    for (n, entry) in shown {
        match entry {
            Some(e) => {
                // Any number may stand there: one past what a clock shows is shown as it is.
                let at = SystemTime::UNIX_EPOCH
                    .checked_add(std::time::Duration::from_secs(e.record.time))
                    .filter(|at| *at < SystemTime::UNIX_EPOCH + MAX_SHOWN_TIME)
                    .map_or_else(
                        || format!("time {}", e.record.time),
                        |at| humantime::format_rfc3339_seconds(at).to_string(),
                    );
                println!(
                    "{n:>3}  {at}  {}  {}: {}{}",
                    e.record.who,
                    e.record.key,
                    e.record.command,
                    e.record
                        .message
                        .map(|m| format!("  ({m})"))
                        .unwrap_or_default()
                );
            }
            None => println!("{n:>3}  (unreadable entry)"),
        }
    }
    Ok(())
}

/// Checks that a value about to be restored is one the gateways accept whole.
fn validate_restore(
    ctx: &Context,
    entry: &history::Entry,
    value: &KeyValue,
) -> Result<(), Failure> {
    match entry.record.subject {
        Subject::Whitelist => {
            let parsed = Whitelist::parse(value.values());
            // The value the gateways had, bad entries and all: they skip those, as they did.
            if parsed.rejected_count > 0 {
                let samples: Vec<String> = parsed.rejected.iter().map(|r| r.to_string()).collect();
                eprintln!(
                    "grayctl: the value restored has {} entries the gateways skip, as they did before: {}",
                    parsed.rejected_count,
                    samples.join(", ")
                );
            }
        }
        Subject::RuleSet => {
            let text = match value {
                KeyValue::String(text) => &text[..],
                _ => &[][..],
            };
            let kind = value.key_kind();
            CompiledRuleSet::compile(&entry.record.key, kind, text, 0, &ctx.config.targets, 0)
                .map_err(|e| {
                    refused(format!(
                        "the rule set to restore is refused, nothing written: {e}"
                    ))
                })?;
        }
    }
    Ok(())
}

pub(super) fn rollback(ctx: &Context, n: usize, force: bool) -> Result<(), Failure> {
    let mut store = ctx.store()?;
    // Watched before it is read: a change by anyone after this aborts the restore.
    store.watch_history()?;
    let entry = history::nth(&store.history()?, n).map_err(refused)?;
    let previous = entry.previous.clone().ok_or_else(|| {
        refused(format!(
            "history entry {n} did not keep its previous value ({})",
            entry.not_kept().unwrap_or_default()
        ))
    })?;
    let key = entry.record.key.clone();
    let owned = match entry.record.subject {
        Subject::Whitelist => key == ctx.config.key,
        Subject::RuleSet => keys::rule_set_name(&ctx.config.rules_key, &key).is_some(),
    };
    if !owned {
        return Err(refused(format!(
            "history entry {n} names key {key} as a {}: not one this gray's whitelist or rule sets own (--key {}, --rules-key {}); nothing written",
            entry.record.subject.as_str(),
            ctx.config.key,
            ctx.config.rules_key
        )));
    }
    validate_restore(ctx, &entry, &previous)?;
    if entry.record.subject == Subject::RuleSet {
        super::rollout::check_manual_edit(ctx, &key, force)?;
    }
    let record = ctx.record(
        &key,
        entry.record.subject,
        format!(
            "rollback {n} (the value before \"{}\")",
            entry.record.command
        ),
    );
    let (before, written) = store.update(&key, |current| {
        Ok((!current.same_as(&previous)).then(|| Write {
            key: key.clone(),
            change: Change::Replace(previous.clone()),
            record,
        }))
    })?;
    match entry.record.subject {
        Subject::Whitelist => whitelist::report(ctx, &mut store, &key, &before, written),
        Subject::RuleSet => {
            if ctx.json {
                println!(
                    "{}",
                    json!({"key": key, "changed": written, "type": previous.kind()})
                );
            } else if written {
                println!("{key}: restored ({})", previous.kind());
            } else {
                println!("{key}: nothing to change");
            }
            Ok(())
        }
    }
}
