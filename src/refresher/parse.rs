//! A list or an id set as it is read into the loaded state: built from what was fetched, and
//! said in the log (its size, what was rejected, how long the read and the parse took).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gray_core::idset::{IdSetBuilder, MAX_ID_LEN};
use gray_core::snapshot::{LoadedIds, LoadedList};
use gray_core::value::{Fetched, KeyKind};
use gray_core::whitelist::Whitelist;

use super::loaded::Source;
use crate::log::Level;

pub(super) fn parse_list(
    source: &mut impl Source,
    key: &str,
    fetched: Fetched,
    read_took: Duration,
) -> Arc<LoadedList> {
    let (kind, version) = (fetched.kind, fetched.version);
    let started = Instant::now();
    let list = fetched.into_list();
    report_parse(
        source,
        key,
        &list,
        kind,
        version,
        read_took,
        started.elapsed(),
    );
    Arc::new(LoadedList {
        list,
        kind,
        version,
        loaded_at: SystemTime::now(),
    })
}

pub(super) fn parse_ids(
    source: &mut impl Source,
    key: &str,
    fetched: Fetched<IdSetBuilder>,
    took: Duration,
) -> Arc<LoadedIds> {
    let (kind, version) = (fetched.kind, fetched.version);
    let started = Instant::now();
    let ids = fetched.into_list();
    source.log(
        Level::Notice,
        format!(
            "loaded ids from {} key {key}: {} ids, {} rejected (over {MAX_ID_LEN} bytes), version {version:016x}, read in {:.1} ms, parsed in {:.1} ms",
            kind.as_str(),
            ids.len(),
            ids.rejected_count,
            took.as_secs_f64() * 1000.0,
            started.elapsed().as_secs_f64() * 1000.0
        ),
    );
    Arc::new(LoadedIds { ids, kind, version })
}

fn report_parse(
    source: &mut impl Source,
    key: &str,
    list: &Whitelist,
    kind: KeyKind,
    version: u64,
    read_took: Duration,
    parse_took: Duration,
) {
    // A SET's members are parsed as its batches arrive; what is left after reading is indexing.
    let (read, parse) = match kind {
        KeyKind::Set => ("read and parsed", "indexed"),
        _ => ("read", "parsed"),
    };
    source.log(
        Level::Notice,
        format!(
            "loaded whitelist from {} key {key}: {} entries ({} IPv4, {} IPv6), {} rejected, version {version:016x}, {read} in {:.1} ms, {parse} in {:.1} ms",
            kind.as_str(),
            list.entries(),
            list.entries_v4,
            list.entries_v6,
            list.rejected_count,
            read_took.as_secs_f64() * 1000.0,
            parse_took.as_secs_f64() * 1000.0
        ),
    );
    for rejected in &list.rejected {
        source.log(
            Level::Warn,
            format!("rejected whitelist entry {rejected} in key {key}"),
        );
    }
    if list.rejected_count > list.rejected.len() {
        source.log(
            Level::Warn,
            format!(
                "... and {} more rejected entries in key {key}",
                list.rejected_count - list.rejected.len()
            ),
        );
    }
    for t in &list.truncated {
        source.log(
            Level::Warn,
            format!(
                "whitelist entry \"{}\" has host bits set; using {}",
                t.entry, t.network
            ),
        );
    }
}
