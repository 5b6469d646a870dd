//! The rule sets' commands: show, check and set one, and the edits that rewrite the stored JSON
//! (a percentage, the kill switch), each compiled as the gateways compile it before it is written.

use gray_core::clock::unix_now;
use gray_core::history::Subject;
use gray_core::rules::schema;
use gray_core::stored::{Change, KeyValue};
use serde_json::{json, Value};

use super::{pretty, read_file, Context};
use crate::cli::SetName;
use crate::failure::{refused, Failure};
use crate::rules_edit;
use crate::store::Write;

/// Validates a rule set the way the gateways do: whole, against the targets they have.
pub(super) fn compile(ctx: &Context, json: &[u8]) -> Result<gray_core::rules::RuleSet, Failure> {
    schema::compile(json, &ctx.config.targets)
        .map_err(|e| refused(format!("rule set refused, nothing written: {e}")))
}

pub(super) fn show(ctx: &Context, set: &SetName) -> Result<(), Failure> {
    let key = ctx.rule_set_key(set)?;
    match ctx.store()?.read(&key)? {
        KeyValue::String(text) => {
            print!("{}", String::from_utf8_lossy(&text));
            if !text.ends_with(b"\n") {
                println!();
            }
            Ok(())
        }
        KeyValue::Missing => Err(refused(format!(
            "no rule set in key {key}: the whitelist key {} decides",
            ctx.config.key
        ))),
        KeyValue::Set(_) => Err(refused(format!(
            "key {key} holds a set, not a rule set (the gateways refuse it)"
        ))),
    }
}

pub(super) fn check(ctx: &Context, file: &str) -> Result<(), Failure> {
    let text = read_file(file)?;
    let rules = schema::compile(text.as_bytes(), &ctx.config.targets)
        .map_err(|e| refused(format!("{file}: rule set refused: {e}")))?;
    let lines = rules_edit::describe(&rules, &ctx.config.targets, unix_now());
    if ctx.json {
        println!("{}", json!({"file": file, "valid": true, "summary": lines}));
    } else {
        println!("{file}: valid, {} rules", rules.rules.len());
        for line in lines {
            println!("  {line}");
        }
    }
    Ok(())
}

/// Rewrites a rule set: `change` gets the stored JSON (`None` when there is none) and returns
/// the new text, which must compile before anything is written.
pub(super) fn edit(
    ctx: &Context,
    set: &SetName,
    command: String,
    change: impl FnOnce(&KeyValue) -> Result<Vec<u8>, Failure>,
) -> Result<(), Failure> {
    let key = ctx.rule_set_key(set)?;
    let record = ctx.record(&key, Subject::RuleSet, command);
    let mut store = ctx.store()?;
    let mut summary = Vec::new();
    let (_, written) = store.update(&key, |current| {
        let text = change(current)?;
        let rules = compile(ctx, &text)?;
        summary = rules_edit::describe(&rules, &ctx.config.targets, unix_now());
        if *current == KeyValue::String(text.clone()) {
            return Ok(None);
        }
        Ok(Some(Write {
            key: key.clone(),
            change: Change::Replace(KeyValue::String(text)),
            record,
        }))
    })?;
    if ctx.json {
        println!(
            "{}",
            json!({"key": key, "changed": written, "summary": summary})
        );
    } else {
        println!(
            "{key}: {}",
            if written {
                "written"
            } else {
                "nothing to change"
            }
        );
        for line in summary {
            println!("  {line}");
        }
    }
    Ok(())
}

pub(super) fn kill_switch(ctx: &Context, set: &SetName, enabled: bool) -> Result<(), Failure> {
    let verb = if enabled { "on" } else { "off" };
    let key = ctx.rule_set_key(set)?;
    edit(ctx, set, verb.to_string(), |current| {
        let mut doc = stored(&key, current)?;
        rules_edit::set_enabled(&mut doc, enabled)?;
        pretty(&doc)
    })
}

/// The rule set stored in `key`, as JSON to edit.
pub(super) fn stored(key: &str, current: &KeyValue) -> Result<Value, Failure> {
    match current {
        KeyValue::String(text) => serde_json::from_slice(text).map_err(|e| {
            refused(format!(
                "key {key} does not hold JSON ({e}); replace it with `grayctl rules set`"
            ))
        }),
        KeyValue::Missing => Err(refused(format!(
            "there is no rule set in key {key} to change; the whitelist alone decides"
        ))),
        KeyValue::Set(_) => Err(refused(format!(
            "key {key} holds a set, not a rule set; replace it with `grayctl rules set`"
        ))),
    }
}
