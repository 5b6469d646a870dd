//! What each command does, on top of the store (Redis), the edits (pure) and the core.

use std::io::Read as _;
use std::time::SystemTime;

use clap::Args;
use gray_core::clock::{self, unix_now};
use gray_core::config::Config;
use gray_core::fleet::Report;
use gray_core::guard::{self, TripRecord};
use gray_core::load::compile_rule_set;
use gray_core::plan::{Header, Plan, Slices};
use gray_core::rules::{schema, Outcome};
use gray_core::snapshot::Reason;
use gray_core::whitelist::Whitelist;
use serde_json::{json, Value};

use crate::failure::{refused, Failure};
use crate::fleet_status::{self, State, Versions};
use crate::history::{self, Record, Subject};
use crate::store::{who, Store, Write};
use crate::value::KeyValue;
use crate::whitelist_edit::{self, Change, Edit};
use crate::{rules_edit, Cli, Command, GuardCommand, RulesCommand, SetName};

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
    /// The key of rule set `set`, its name checked as the module checks `rule_sets`.
    fn rule_set_key(&self, set: &SetName) -> Result<String, Failure> {
        if let Some(name) = &set.name {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(refused(format!(
                    "--set \"{name}\": a rule set name is not empty and has no spaces"
                )));
            }
        }
        Ok(self.config.rule_set_key(set.name.as_deref()))
    }

    fn store(&self) -> Result<Store, Failure> {
        Store::open(self.config.clone())
    }

    fn record(&self, key: &str, subject: Subject, command: String) -> Record {
        Record {
            time: clock::unix_seconds(SystemTime::now()) as u64,
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
        Command::Import { file, allow_empty } => {
            let text = read_file(&file)?;
            let lines: Vec<String> = whitelist_edit::import_lines(&text)
                .map(str::to_string)
                .collect();
            if lines.is_empty() && !allow_empty {
                return Err(refused(format!(
                    "{file} has no entries: importing it would empty the list; pass --allow-empty to do that"
                )));
            }
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
            edit_rules(&ctx, &set, format!("rules set {file}"), |_current| {
                Ok(text.clone().into_bytes())
            })
        }
        Command::Percent {
            rule,
            percent,
            down,
            set,
        } => {
            let key = ctx.rule_set_key(&set)?;
            edit_rules(&ctx, &set, format!("percent {rule} {percent}"), |current| {
                let mut doc = stored_rule_set(&key, current)?;
                rules_edit::set_percent(&mut doc, &rule, percent, down)?;
                pretty(&doc)
            })
        }
        Command::Off { set } => kill_switch(&ctx, &set, false),
        Command::On { set } => kill_switch(&ctx, &set, true),
        Command::Explain(args) => explain(&ctx, &args),
        Command::History { limit } => show_history(&ctx, limit),
        Command::Rollback { entry } => rollback(&ctx, entry),
        Command::Status { prune } => status(&ctx, prune),
        Command::Wait { timeout } => wait(&ctx, timeout),
        Command::Guard(GuardCommand::Show { set }) => guard_show(&ctx, &set),
        Command::Guard(GuardCommand::Reset { rule, set }) => guard_reset(&ctx, &set, &rule),
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
    // What the gateways accept, so that `export | import -` round-trips.
    for token in value
        .values()
        .into_iter()
        .flat_map(gray_core::whitelist::tokens)
    {
        let text = String::from_utf8_lossy(token);
        match gray_core::whitelist::parse_entry(token) {
            Ok(_) => println!("{text}"),
            Err(e) => eprintln!("grayctl: skipping \"{}\": {e}", text.escape_default()),
        }
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

fn kill_switch(ctx: &Context, set: &SetName, enabled: bool) -> Result<(), Failure> {
    let verb = if enabled { "on" } else { "off" };
    let key = ctx.rule_set_key(set)?;
    edit_rules(ctx, set, verb.to_string(), |current| {
        let mut doc = stored_rule_set(&key, current)?;
        rules_edit::set_enabled(&mut doc, enabled)?;
        pretty(&doc)
    })
}

/// The rule set stored in `key`, as JSON to edit.
fn stored_rule_set(key: &str, current: &KeyValue) -> Result<Value, Failure> {
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

/// The request the command line describes, as the gateway's request path sees it: headers by
/// lowercase name, cookies in one `Cookie` header, args in `$args`, other variables by name.
struct Request {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    variables: Vec<(String, Vec<u8>)>,
}

fn split_pairs(items: &[String], sep: char) -> Result<Vec<(&str, &str)>, Failure> {
    items
        .iter()
        .map(|item| {
            item.split_once(sep)
                .ok_or_else(|| refused(format!("\"{item}\" is not NAME{sep}VALUE")))
        })
        .collect()
}

impl Request {
    fn from_args(args: &ExplainArgs) -> Result<Request, Failure> {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = split_pairs(&args.headers, ':')?
            .into_iter()
            .map(|(k, v)| {
                (
                    k.trim().to_ascii_lowercase().into_bytes(),
                    v.trim().as_bytes().to_vec(),
                )
            })
            .collect();
        let cookies = split_pairs(&args.cookies, '=')?;
        if !cookies.is_empty() {
            let joined: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            headers.push((b"cookie".to_vec(), joined.join("; ").into_bytes()));
        }
        let mut variables: Vec<(String, Vec<u8>)> = split_pairs(&args.vars, '=')?
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        let query = split_pairs(&args.args, '=')?;
        if !query.is_empty() {
            let joined: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            variables.push(("args".into(), joined.join("&").into_bytes()));
        }
        Ok(Request { headers, variables })
    }

    /// The header list and the plan's variables, as the request path hands them to the plan.
    fn fetched<'a>(&'a self, plan: &Plan) -> (Vec<Header<'a>>, Vec<Option<&'a [u8]>>) {
        let headers: Vec<Header<'a>> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let variables: Vec<Option<&'a [u8]>> = plan
            .variables
            .iter()
            .map(|name| {
                self.variables
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_slice())
            })
            .collect();
        (headers, variables)
    }
}

fn explain(ctx: &Context, args: &ExplainArgs) -> Result<(), Failure> {
    ctx.rule_set_key(&args.set)?;
    let snapshot = ctx.store()?.snapshot(args.set.name.as_deref())?;
    let request = Request::from_args(args)?;
    let (headers, variables) = match snapshot.active(0) {
        Some(active) => request.fetched(&active.compiled.plan),
        None => (Vec::new(), Vec::new()),
    };
    let mut values = Vec::new();
    if let Some(active) = snapshot.active(0) {
        // The rule set's inputs, gathered by its plan as the gateway gathers them.
        values.resize(active.compiled.rules.inputs.len(), None);
        let fetched = Slices {
            headers: &headers,
            variables: &variables,
        };
        active.compiled.plan.gather(&fetched, &mut values);
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
    // Watched before it is read: a change by anyone after this aborts the restore.
    store.watch_history()?;
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

/// A report in the gateways hash with where its worker stands now, or why it does not parse.
type FleetEntry = (String, Result<(Report, State), String>);
type Fleet = Vec<FleetEntry>;

fn assess_fleet(store: &mut Store) -> Result<Fleet, Failure> {
    let reports = store.reports()?;
    let now = unix_now();
    let mut assessed = Vec::with_capacity(reports.len());
    let mut pending = Vec::new();
    for (field, report) in reports {
        match report {
            Ok(report) => pending.push((field, report)),
            Err(e) => assessed.push((field, Err(e))),
        }
    }
    let mut versions = Versions::new(|key: &str| store.version(key));
    for (field, report) in pending {
        let state = fleet_status::assess(&report, now, &mut versions)?;
        assessed.push((field, Ok((report, state))));
    }
    assessed.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(assessed)
}

fn ago(now: f64, then: f64) -> String {
    format!("{:.0}s ago", (now - then).max(0.0))
}

fn status(ctx: &Context, prune: bool) -> Result<(), Failure> {
    let mut store = ctx.store()?;
    let fleet = assess_fleet(&mut store)?;
    let now = unix_now();
    if prune {
        let gone: Vec<String> = fleet
            .iter()
            .filter(|(_, a)| !matches!(a, Ok((_, State::Current | State::Behind(_)))))
            .map(|(field, _)| field.clone())
            .collect();
        store.forget(&gone)?;
        eprintln!(
            "grayctl: forgot {} gateways that stopped reporting",
            gone.len()
        );
    }
    if ctx.json {
        let items: Vec<Value> = fleet
            .iter()
            .map(|(field, a)| match a {
                Ok((report, state)) => json!({
                    "gateway": field, "state": state.as_str(), "report": report,
                    "behind": match state { State::Behind(lines) => lines.clone(), _ => Vec::new() },
                }),
                Err(e) => json!({"gateway": field, "state": "unreadable", "error": e}),
            })
            .collect();
        println!(
            "{}",
            json!({"key": ctx.config.gateways_key(), "gateways": items})
        );
        return Ok(());
    }
    let count = |s: &str| {
        fleet
            .iter()
            .filter(|(_, a)| matches!(a, Ok((_, st)) if st.as_str() == s))
            .count()
    };
    println!(
        "{}: {} gateways, {} current, {} behind, {} gone",
        ctx.config.gateways_key(),
        fleet.len(),
        count("current"),
        count("behind"),
        count("gone")
    );
    for (field, assessed) in &fleet {
        match assessed {
            Ok((report, state)) => {
                println!(
                    "  {field:<24} {:<8} loaded {}, reported {} (gray {})",
                    state.as_str(),
                    ago(now, report.loaded_at),
                    ago(now, report.reported_at),
                    report.gray
                );
                if let State::Behind(lines) = state {
                    for line in lines {
                        println!("      {line}");
                    }
                }
            }
            Err(e) => println!("  {field:<24} unreadable report: {e}"),
        }
    }
    Ok(())
}

fn wait(ctx: &Context, timeout: f64) -> Result<(), Failure> {
    let mut store = ctx.store()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(timeout.max(0.0));
    loop {
        let fleet = assess_fleet(&mut store)?;
        let live: Vec<&FleetEntry> = fleet
            .iter()
            .filter(|(_, a)| matches!(a, Ok((_, State::Current | State::Behind(_)))))
            .collect();
        let behind: Vec<String> = live
            .iter()
            .filter_map(|(field, a)| match a {
                Ok((_, State::Behind(lines))) => Some(format!("{field} ({})", lines.join("; "))),
                _ => None,
            })
            .collect();
        if !live.is_empty() && behind.is_empty() {
            let gone = fleet.len() - live.len();
            println!(
                "all {} reporting gateways serve the latest{}",
                live.len(),
                if gone > 0 {
                    format!(" ({gone} not reporting, ignored)")
                } else {
                    String::new()
                }
            );
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(refused(if live.is_empty() {
                format!(
                    "no gateway reports to {} (configure report = true)",
                    ctx.config.gateways_key()
                )
            } else {
                format!("timed out after {timeout}s; behind: {}", behind.join(", "))
            }));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The trips recorded in a rule set's guard hash (by field) and its resets (rule, Unix ms).
type GuardHash = (Vec<(String, TripRecord)>, Vec<(String, u64)>);

fn read_guard(store: &mut Store, key: &str) -> Result<GuardHash, Failure> {
    let (mut trips, mut resets) = (Vec::new(), Vec::new());
    for (field, value) in store.guard(key)? {
        if let Some(rule) = guard::reset_rule(field.as_bytes()) {
            if let Ok(at) = value.parse() {
                resets.push((rule.to_string(), at));
            }
        } else if guard::is_trip_field(&field) {
            if let Ok(record) = serde_json::from_str(&value) {
                trips.push((field, record));
            }
        }
    }
    Ok((trips, resets))
}

fn guard_show(ctx: &Context, set: &SetName) -> Result<(), Failure> {
    let key = ctx.rule_set_key(set)?;
    let (trips, resets) = read_guard(&mut ctx.store()?, &key)?;
    if ctx.json {
        let trips: Vec<&TripRecord> = trips.iter().map(|(_, t)| t).collect();
        let resets: Vec<Value> = resets
            .iter()
            .map(|(rule, at)| json!({"rule": rule, "at": *at as f64 / 1000.0}))
            .collect();
        println!(
            "{}",
            json!({"key": guard::guard_key(&key), "trips": trips, "resets": resets})
        );
        return Ok(());
    }
    let now = unix_now();
    println!(
        "{}: {} trips recorded, {} resets",
        guard::guard_key(&key),
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

fn guard_reset(ctx: &Context, set: &SetName, rule: &str) -> Result<(), Failure> {
    let key = ctx.rule_set_key(set)?;
    let mut store = ctx.store()?;
    let current = store.read(&key)?;
    let doc = stored_rule_set(&key, &current)?;
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
    let (trips, _) = read_guard(&mut store, &key)?;
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
            json!({"key": guard::guard_key(&key), "rule": rule, "records_removed": records.len()})
        );
    } else {
        println!(
            "reset the guard of rule \"{rule}\" in {key}, trip records removed: {}; gateways let it match again on their next read",
            records.len()
        );
    }
    Ok(())
}
