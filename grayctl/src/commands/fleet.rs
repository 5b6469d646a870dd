//! The fleet's commands: `status`, which gateways (`report = true`) serve the latest of each key,
//! and `wait`, until they all do.

use std::io::{self, Write};

use gray_core::clock::unix_now;
use gray_core::fleet::Report;
use serde_json::{json, Value};

use super::Context;
use crate::failure::{refused, written, Failure};
use crate::fleet_status::{self, State, Versions};
use crate::store::Store;

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

pub(super) fn ago(now: f64, then: f64) -> String {
    format!("{:.0}s ago", (now - then).max(0.0))
}

pub(super) fn status(ctx: &Context, prune: bool) -> Result<(), Failure> {
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
    write_fleet(&mut std::io::stdout().lock(), ctx, &fleet, now).map_err(written)
}

/// The fleet as `status` shows it now, into `out` (`top`).
pub(super) fn write_now(
    out: &mut dyn Write,
    ctx: &Context,
    store: &mut Store,
) -> Result<(), Failure> {
    let fleet = assess_fleet(store)?;
    write_fleet(out, ctx, &fleet, unix_now()).map_err(written)
}

/// The fleet as `status` shows it, into `out`.
fn write_fleet(out: &mut dyn Write, ctx: &Context, fleet: &Fleet, now: f64) -> io::Result<()> {
    let count = |s: &str| {
        fleet
            .iter()
            .filter(|(_, a)| matches!(a, Ok((_, st)) if st.as_str() == s))
            .count()
    };
    writeln!(
        out,
        "{}: {} gateways, {} current, {} behind, {} gone",
        ctx.config.gateways_key(),
        fleet.len(),
        count("current"),
        count("behind"),
        count("gone")
    )?;
    for (field, assessed) in fleet {
        match assessed {
            Ok((report, state)) => {
                writeln!(
                    out,
                    "  {field:<24} {:<8} loaded {}, reported {} (gray {})",
                    state.as_str(),
                    ago(now, report.loaded_at),
                    ago(now, report.reported_at),
                    report.gray
                )?;
                if let State::Behind(lines) = state {
                    for line in lines {
                        writeln!(out, "      {line}")?;
                    }
                }
            }
            Err(e) => writeln!(out, "  {field:<24} unreadable report: {e}")?,
        }
    }
    Ok(())
}

pub(super) fn wait(ctx: &Context, timeout: f64) -> Result<(), Failure> {
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
