//! The whitelist's commands: list and export it as the gateways parse it; add, remove and import
//! entries, each parsed first, through the store's one write path.

use gray_core::history::Subject;
use gray_core::stored::KeyValue;
use gray_core::whitelist::Whitelist;
use serde_json::json;

use super::Context;
use crate::failure::Failure;
use crate::store::{Seen, Store, Write};
use crate::whitelist_edit::{self, Edit};

/// The whitelist as the gateways parse it.
pub(super) fn list(ctx: &Context) -> Result<(), Failure> {
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

pub(super) fn export(ctx: &Context) -> Result<(), Failure> {
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

pub(super) fn edit(
    ctx: &Context,
    verb: &str,
    inputs: &[String],
    edit: fn(&KeyValue, &[whitelist_edit::Entry]) -> Edit,
) -> Result<(), Failure> {
    let mut notes = Vec::new();
    let entries = whitelist_edit::parse_entries(inputs.iter().map(String::as_str), &mut notes)?;
    let key = ctx.config.key.clone();
    let by_entry = verb == "add" || verb == "remove";
    let command = if by_entry {
        format!("{verb} {}", inputs.join(" "))
    } else {
        verb.to_string()
    };
    // Adding or removing entries depends only on the members that spell them: a large SET is
    // asked about those, not read.
    let candidates = by_entry.then(|| whitelist_edit::spellings(&entries));
    let record = ctx.record(&key, Subject::Whitelist, command);
    let mut store = ctx.store()?;
    let (seen, written) = store.update_among(&key, candidates.as_deref(), |current| {
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
    match seen {
        Seen::Whole(before) => report(ctx, &mut store, &key, &before, written),
        Seen::LargeSet { members, .. } => report_members(ctx, &mut store, &key, members, written),
    }
}

pub(super) fn report(
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

/// A large SET's change, told by its number of members: counting its entries would read it.
fn report_members(
    ctx: &Context,
    store: &mut Store,
    key: &str,
    before: u64,
    written: bool,
) -> Result<(), Failure> {
    let now = if written { store.members(key)? } else { before };
    if ctx.json {
        println!(
            "{}",
            json!({"key": key, "type": "set", "changed": written, "members_before": before, "members": now})
        );
    } else if written {
        println!("{key}: {before} -> {now} members (set)");
    } else {
        println!("{key}: nothing to change ({now} members)");
    }
    Ok(())
}
