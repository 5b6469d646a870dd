//! What each command does, on top of the store (Redis), the edits (pure) and the core.

use std::io::Read as _;
use std::time::SystemTime;

use clap::Args;
use gray_core::config::Config;
use gray_core::load::compile_rule_set;
use gray_core::rules::{schema, Outcome, Source};
use gray_core::snapshot::{unix_now, KeyKind, Reason};
use gray_core::whitelist::Whitelist;
use serde_json::{json, Value};

use crate::failure::{refused, Failure};
use crate::history::{self, Record, Subject};
use crate::store::{unix_seconds, who, Store, Write};
use crate::value::KeyValue;
use crate::whitelist_edit::{self, Change, Edit};
use crate::{rules_edit, Cli, Command, RulesCommand, SetName};

#[derive(Args)]
pub struct ExplainArgs {
    /// The client address (as the gateway derives it)
    #[arg(long)]
    ip: String,
    /// A request header, NAME:VALUE (repeatable)
    #[arg(long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
    /// A cookie, NAME=VALUE (repeatable)
    #[arg(long = "cookie", value_name = "NAME=VALUE")]
    cookies: Vec<String>,
    /// A query argument, NAME=VALUE (repeatable)
    #[arg(long = "arg", value_name = "NAME=VALUE")]
    args: Vec<String>,
    /// An nginx variable, NAME=VALUE (repeatable)
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    #[command(flatten)]
    set: SetName,
}

struct Context {
    config: Config,
    json: bool,
    message: Option<String>,
}

impl Context {
    fn store(&self) -> Result<Store, Failure> {
        Store::open(self.config.clone())
    }

    fn record(&self, key: &str, subject: Subject, command: String) -> Record {
        Record {
            time: unix_seconds(SystemTime::now()),
            who: who(),
            command,
            message: self.message.clone(),
            key: key.to_string(),
            subject,
        }
    }
}

pub fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Context {
        config: cli.connection.config()?,
        json: cli.connection.json,
        message: cli.connection.message.clone(),
    };
    match cli.command {
        Command::List => list(&ctx),
        Command::Export => export(&ctx),
        Command::Add { entries } => edit_whitelist(&ctx, "add", &entries, whitelist_edit::add),
        Command::Remove { entries } => {
            edit_whitelist(&ctx, "remove", &entries, whitelist_edit::remove)
        }
        Command::Import { file } => {
            let text = read_file(&file)?;
            let lines: Vec<String> = whitelist_edit::import_lines(&text)
                .map(str::to_string)
                .collect();
            edit_whitelist(
                &ctx,
                &format!("import {file}"),
                &lines,
                whitelist_edit::replace,
            )
        }
        Command::Rules(RulesCommand::Show { set }) => rules_show(&ctx, &set),
        Command::Rules(RulesCommand::Check { file }) => rules_check(&ctx, &file),
        Command::Rules(RulesCommand::Set { file, set }) => {
            let text = read_file(&file)?;
            edit_rules(&ctx, &set, format!("rules set {file}"), |_| {
                Ok(text.clone().into_bytes())
            })
        }
        Command::Percent {
            rule,
            percent,
            down,
            set,
        } => edit_rules(&ctx, &set, format!("percent {rule} {percent}"), |doc| {
            let mut doc = doc.ok_or_else(|| refused("there is no rule set to change"))?;
            let old = rules_edit::set_percent(&mut doc, &rule, percent, down)?;
            eprintln!("grayctl: rule \"{rule}\": {old}% -> {percent}%");
            pretty(&doc)
        }),
        Command::Off { set } => kill_switch(&ctx, &set, false),
        Command::On { set } => kill_switch(&ctx, &set, true),
        Command::Explain(args) => explain(&ctx, &args),
        Command::History { limit } => show_history(&ctx, limit),
        Command::Rollback { entry } => rollback(&ctx, entry),
    }
}

fn read_file(file: &str) -> Result<String, Failure> {
    let mut text = String::new();
    let read = if file == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(file).map(|t| text = t)
    };
    read.map_err(|e| refused(format!("cannot read {file}: {e}")))?;
    Ok(text)
}

fn pretty(doc: &Value) -> Result<Vec<u8>, Failure> {
    let mut text = serde_json::to_vec_pretty(doc).expect("a JSON value serializes");
    text.push(b'\n');
    Ok(text)
}

/// The whitelist as the gateways parse it.
fn list(ctx: &Context) -> Result<(), Failure> {
    let key = &ctx.config.key;
    let value = ctx.store()?.read(key)?;
    let parsed = Whitelist::parse(value.values());
    let entries: Vec<String> = value
        .values()
        .into_iter()
        .flat_map(gray_core::whitelist::tokens)
        .filter(|t| gray_core::whitelist::parse_entry(t).is_ok())
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    let rejected: Vec<String> = parsed.rejected.iter().map(|r| r.to_string()).collect();
    if ctx.json {
        println!(
            "{}",
            json!({
                "key": key,
                "type": value.kind(),
                "entries": entries,
                "rejected_count": parsed.rejected_count,
                "rejected": rejected,
            })
        );
        return Ok(());
    }
    println!(
        "# key {key}: {}, {} entries ({} IPv4, {} IPv6){}",
        value.kind(),
        parsed.entries(),
        parsed.entries_v4,
        parsed.entries_v6,
        if parsed.rejected_count > 0 {
            format!(", {} rejected by the gateways", parsed.rejected_count)
        } else {
            String::new()
        }
    );
    for entry in entries {
        println!("{entry}");
    }
    for r in rejected {
        println!("# rejected: {r}");
    }
    Ok(())
}

fn export(ctx: &Context) -> Result<(), Failure> {
    let value = ctx.store()?.read(&ctx.config.key)?;
    for token in value
        .values()
        .into_iter()
        .flat_map(gray_core::whitelist::tokens)
    {
        println!("{}", String::from_utf8_lossy(token));
    }
    Ok(())
}

fn edit_whitelist(
    ctx: &Context,
    verb: &str,
    inputs: &[String],
    edit: fn(&KeyValue, &[whitelist_edit::Entry]) -> Edit,
) -> Result<(), Failure> {
    let mut notes = Vec::new();
    let entries = whitelist_edit::parse_entries(inputs.iter().map(String::as_str), &mut notes)?;
    let key = ctx.config.key.clone();
    let command = if verb == "add" || verb == "remove" {
        format!("{verb} {}", inputs.join(" "))
    } else {
        verb.to_string()
    };
    let record = ctx.record(&key, Subject::Whitelist, command);
    let mut store = ctx.store()?;
    let (before, written) = store.update(&key, |current| {
        let Edit {
            change,
            notes: more,
        } = edit(current, &entries);
        notes.extend(more);
        Ok(change.map(|change| Write {
            key: key.clone(),
            change,
            record,
        }))
    })?;
    for note in &notes {
        eprintln!("grayctl: {note}");
    }
    report_whitelist(ctx, &mut store, &key, &before, written)
}

fn report_whitelist(
    ctx: &Context,
    store: &mut Store,
    key: &str,
    before: &KeyValue,
    written: bool,
) -> Result<(), Failure> {
    let after = if written {
        store.read(key)?
    } else {
        before.clone()
    };
    let count = |v: &KeyValue| Whitelist::parse(v.values()).entries();
    let (was, now) = (count(before), count(&after));
    if ctx.json {
        println!(
            "{}",
            json!({"key": key, "type": after.kind(), "changed": written, "entries_before": was, "entries": now})
        );
    } else if written {
        println!("{key}: {was} -> {now} entries ({})", after.kind());
    } else {
        println!("{key}: nothing to change ({now} entries)");
    }
    Ok(())
}

/// Validates a rule set the way the gateways do: whole, against the targets they have.
fn compile(ctx: &Context, json: &[u8]) -> Result<gray_core::rules::RuleSet, Failure> {
    schema::compile(json, &ctx.config.targets)
        .map_err(|e| refused(format!("rule set refused, nothing written: {e}")))
}

fn rules_show(ctx: &Context, set: &SetName) -> Result<(), Failure> {
    let key = ctx.config.rule_set_key(set.name.as_deref());
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

fn rules_check(ctx: &Context, file: &str) -> Result<(), Failure> {
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
fn edit_rules(
    ctx: &Context,
    set: &SetName,
    command: String,
    change: impl FnOnce(Option<Value>) -> Result<Vec<u8>, Failure>,
) -> Result<(), Failure> {
    let key = ctx.config.rule_set_key(set.name.as_deref());
    let record = ctx.record(&key, Subject::RuleSet, command);
    let mut store = ctx.store()?;
    let mut summary = Vec::new();
    let (_, written) = store.update(&key, |current| {
        let doc = match current {
            KeyValue::Missing => None,
            KeyValue::String(text) => Some(serde_json::from_slice(text).map_err(|e| {
                refused(format!(
                    "key {key} does not hold JSON ({e}); replace it with `grayctl rules set`"
                ))
            })?),
            KeyValue::Set(_) => None,
        };
        let text = change(doc)?;
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

fn kill_switch(ctx: &Context, set: &SetName, enabled: bool) -> Result<(), Failure> {
    let verb = if enabled { "on" } else { "off" };
    edit_rules(ctx, set, verb.to_string(), |doc| {
        let mut doc = doc.ok_or_else(|| {
            refused("there is no rule set to switch; the whitelist alone decides (remove its entries instead)")
        })?;
        rules_edit::set_enabled(&mut doc, enabled)?;
        pretty(&doc)
    })
}

/// The value of `source` among the request parts given on the command line.
fn input_value<'a>(args: &'a ExplainArgs, source: &Source) -> Result<Option<&'a str>, Failure> {
    let find = |items: &'a [String], sep: char, name: &str, exact: bool| {
        let mut found = None;
        for item in items {
            let (k, v) = item
                .split_once(sep)
                .ok_or_else(|| refused(format!("\"{item}\" is not NAME{sep}VALUE")))?;
            let matches = if exact {
                k == name
            } else {
                k.eq_ignore_ascii_case(name)
            };
            if matches {
                found = Some(v.trim_start_matches(if sep == ':' { " " } else { "" }));
            }
        }
        Ok::<_, Failure>(found)
    };
    match source {
        Source::Header(name) => find(&args.headers, ':', name, false),
        Source::Cookie(name) => find(&args.cookies, '=', name, true),
        Source::Arg(name) => find(&args.args, '=', name, true),
        Source::Var(name) => find(&args.vars, '=', name, true),
    }
}

fn explain(ctx: &Context, args: &ExplainArgs) -> Result<(), Failure> {
    let snapshot = ctx.store()?.snapshot(args.set.name.as_deref())?;
    let sources: Vec<Source> = snapshot
        .active(0)
        .map(|a| a.compiled.rules.inputs.clone())
        .unwrap_or_default();
    let mut values = Vec::with_capacity(sources.len());
    for source in &sources {
        values.push(input_value(args, source)?.map(str::as_bytes));
    }
    let (target, reason) = snapshot.decide(0, args.ip.as_bytes(), None, None, &values, unix_now());
    let target_name = ctx.config.targets.get(target).cloned().unwrap_or_default();
    let mut out = json!({
        "target": target_name,
        "reason": reason.to_string(),
    });
    match &reason {
        Reason::RuleSet {
            key,
            client,
            outcome,
            rule,
            explanation,
            ..
        } => {
            out["rule_set"] = json!(key);
            out["client"] = json!(client.to_string());
            out["outcome"] = json!(outcome.as_str());
            out["rule"] = json!(rule);
            out["matched"] = json!(explanation.matched);
            out["override"] = json!(explanation.override_);
            if let Some((bucket, threshold, _)) = explanation.bucket {
                out["bucket"] = json!(bucket);
                out["threshold"] = json!(threshold);
            }
            if let Outcome::Rule(i) = outcome {
                out["rule_number"] = json!(i + 1);
            }
        }
        Reason::Listed { .. } | Reason::NotListed { .. } | Reason::NoListLoaded => {
            out["outcome"] = json!("whitelist");
            out["rule"] = Value::Null;
        }
        Reason::BadPeerAddress(_) => {
            return Err(refused(format!("--ip {}: {reason}", args.ip)));
        }
    }
    if ctx.json {
        println!("{out}");
        return Ok(());
    }
    println!("target: {target_name}");
    if let Some(rule) = out["rule"].as_str() {
        println!("rule:   {rule}");
    }
    println!("why:    {reason}");
    if let (Some(bucket), Some(threshold)) = (out["bucket"].as_u64(), out["threshold"].as_u64()) {
        println!(
            "bucket: {bucket} ({} threshold {threshold})",
            if bucket < threshold {
                "under"
            } else {
                "not under"
            }
        );
    }
    Ok(())
}

fn show_history(ctx: &Context, limit: usize) -> Result<(), Failure> {
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
                let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(e.record.time);
                println!(
                    "{n:>3}  {}  {}  {}: {}{}",
                    humantime::format_rfc3339_seconds(at),
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
            if parsed.rejected_count > 0 {
                let samples: Vec<String> = parsed.rejected.iter().map(|r| r.to_string()).collect();
                return Err(refused(format!(
                    "the value to restore has {} entries the gateways reject ({}); nothing written",
                    parsed.rejected_count,
                    samples.join(", ")
                )));
            }
        }
        Subject::RuleSet => {
            let (kind, text) = match value {
                KeyValue::Missing => (KeyKind::Missing, &[][..]),
                KeyValue::String(text) => (KeyKind::String, &text[..]),
                KeyValue::Set(_) => (KeyKind::Set, &[][..]),
            };
            compile_rule_set(kind, text, &ctx.config).map_err(|e| {
                refused(format!(
                    "the rule set to restore is refused, nothing written: {e}"
                ))
            })?;
        }
    }
    Ok(())
}

fn rollback(ctx: &Context, n: usize) -> Result<(), Failure> {
    let mut store = ctx.store()?;
    let entry = history::nth(&store.history()?, n)?;
    let previous = entry.previous.clone().ok_or_else(|| {
        refused(format!(
            "history entry {n} did not keep its previous value ({} bytes, over {})",
            entry.previous_bytes,
            history::MAX_VALUE_BYTES
        ))
    })?;
    validate_restore(ctx, &entry, &previous)?;
    let key = entry.record.key.clone();
    let record = ctx.record(
        &key,
        entry.record.subject,
        format!("rollback {n} (undo \"{}\")", entry.record.command),
    );
    let (before, written) = store.update(&key, |current| {
        Ok((*current != previous).then(|| Write {
            key: key.clone(),
            change: Change::Replace(previous.clone()),
            record,
        }))
    })?;
    match entry.record.subject {
        Subject::Whitelist => report_whitelist(ctx, &mut store, &key, &before, written),
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
