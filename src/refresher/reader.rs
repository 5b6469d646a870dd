//! Reading keys: which keys a poll reads ([`Reading`]: all, the ones a change named, all for a
//! message naming none, or a poll without tracking, which probes a large value's type and size
//! before it reads it), each read bounded by its limit, and what each key looked like when last
//! read. A message that names no key reads a large key whole at most once a `refresh`: one sooner
//! is read when the `refresh` is up, with whatever came meanwhile (a write that names the key is
//! read at once). A key refused (the wrong type, too large) is reported, never read into memory,
//! and keeps its last good value.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use gray_core::delta::SetAtChange;
use gray_core::flat::Stage;
use gray_core::manifest::ItemForm;
use gray_core::value::{Fetched, KeyKind, ListBuilder};
use gray_io::read::{fetch, probe, FetchError, Limit};
use gray_io::{changes, connection};

use super::health::Health;
use super::host::Staging;
use super::link::Link;
use super::watch::Reading;
use crate::log::Level;

/// A key whose value is at least this large is read whole at most once a `refresh` for messages
/// that name no key, and, polling without tracking, is probed (its type and size) before it is
/// read and read only when those moved or `resync` has passed since its last read; a smaller one
/// is read whole whenever asked, which costs less than a miss.
const LARGE: usize = 64 * 1024;
/// A read at least this large is followed by the memory housekeeping that gives it back.
pub(super) const LARGE_READ: usize = 1 << 20;

/// One key as read: its value and how long the read took, refused (why), or left unread
/// because it has not changed.
pub(super) enum Read<B: ListBuilder> {
    Value(Fetched<B>, Duration),
    Refused(String),
    Unchanged,
}

/// A key's last read, for the polls that follow: its size, and its kind and size as probed
/// before it was read (`None` when it was not).
struct LastRead {
    bytes: usize,
    probed: Option<(KeyKind, u64)>,
    at: Instant,
}

/// What one poll did: for the memory housekeeping after it, and whether to publish.
#[derive(Default)]
pub(super) struct Polled {
    /// Bytes of list read from Redis.
    pub bytes: usize,
    /// A new list replaced the previous one.
    pub replaced: bool,
    /// Keys refused, each with why.
    pub refusals: Vec<String>,
}

#[derive(Default)]
pub(super) struct Reader {
    /// Which keys the poll under way reads.
    reading: Option<Reading>,
    /// Where the poll under way lays out a list changed by deltas, when this worker holds the
    /// host's session: straight into the store.
    stage: Option<Staging>,
    /// Each key's last read in this session.
    last_reads: HashMap<String, LastRead>,
    /// Keys refused in this session (read again when a write names them).
    refused: HashSet<String>,
    /// Large keys whose read waits for their `refresh` to pass, and when it does.
    deferred: HashMap<String, Instant>,
    /// The SETs grayctl records changes of, as of their last change read: the next changes are
    /// applied to them instead of reading them again.
    at_change: HashMap<String, SetAtChange>,
    /// The command connection the keys were read on: a new one tracks none of them yet.
    generation: u64,
    /// This session's `resync` (jittered), set as it starts.
    pub resync: Duration,
    refresh: Duration,
}

impl Reader {
    /// Changes paused: the SETs kept as of a change let the memory of their last layout go.
    pub fn release_layouts(&mut self) {
        for at in self.at_change.values_mut() {
            at.release_layout();
        }
    }

    /// Another worker holds the host's session: nothing is kept for deltas this one does not
    /// read.
    pub fn drop_kept(&mut self) {
        self.at_change.clear();
    }

    /// A new session: nothing read on it yet, and its own `resync`: `resync` give or take a
    /// tenth, different in each worker, so that N workers do not read a big list at the same
    /// moment.
    pub fn start(&mut self, resync: Duration, refresh: Duration) {
        self.refresh = refresh;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let spread =
            (u64::from(std::process::id()).wrapping_mul(2_654_435_761) ^ u64::from(nanos)) % 2001;
        self.resync = resync.mul_f64(0.9 + spread as f64 / 10_000.0);
        self.last_reads.clear();
        self.refused.clear();
        self.deferred.clear();
        self.at_change.clear();
    }

    /// Whether a deferred key is due: the session polls for it though nothing was announced.
    pub fn deferred_due(&self) -> bool {
        let now = Instant::now();
        self.deferred.values().any(|&due| due <= now)
    }

    /// The poll that begins reads these keys, and lays lists out in `stage` if there is one.
    pub fn begin(&mut self, reading: Reading, stage: Option<Staging>) {
        self.reading = Some(reading);
        self.stage = stage;
    }

    /// Forgets key `key`'s last read: referenced again later, it is read again, whatever a write
    /// names.
    pub fn forget(&mut self, key: &str) {
        self.at_change.remove(key);
        self.last_reads.remove(key);
        self.refused.remove(key);
        self.deferred.remove(key);
    }

    /// On a new command connection, has Redis track again every key read on the old one (a
    /// TYPE is a read): a write to one is pushed from now on. One made between the old read and
    /// this is seen at the next resync. The SETs kept as of a change are read whole again: the
    /// new connection may be to another node (a failover), whose changes the kept ones are not.
    fn rearm(&mut self, link: &mut Link, tracking: bool) -> Result<(), String> {
        if link.generation() == self.generation {
            return Ok(());
        }
        self.at_change.clear();
        if tracking {
            let keys: Vec<String> = self
                .last_reads
                .keys()
                .chain(&self.refused)
                .cloned()
                .collect();
            for key in keys {
                let typed = link.command()?.query(redis::cmd("TYPE").arg(&key), 0);
                link.triage(typed, || format!("failed to track key {key}"))?
                    .map_err(|refusal| format!("failed to track key {key}: {refusal}"))?;
            }
        }
        self.generation = link.generation();
        Ok(())
    }

    /// One key read, with the connection kept in order: a refusal (wrong type, too large) keeps
    /// the key's last good value; a Redis error ends the session.
    pub fn read<B: ListBuilder>(
        &mut self,
        link: &mut Link,
        health: &mut Health,
        tracking: bool,
        (limit, loaded): (Limit, Option<u64>),
        key: &str,
        polled: &mut Polled,
    ) -> Result<Read<B>, String> {
        link.command()?;
        self.rearm(link, tracking)?;
        let now = Instant::now();
        let due = self.deferred.get(key).is_some_and(|&at| at <= now);
        let last = self.last_reads.get(key);
        if let Some(Reading::Keys(written)) = &self.reading {
            if last.is_some() && !written.contains(key.as_bytes()) && !due {
                return Ok(Read::Unchanged);
            }
        }
        // Announced without a name, a large key read within `refresh` waits for it to pass.
        if let (Some(Reading::Announced), Some(last)) = (&self.reading, last) {
            let next = last.at + self.refresh;
            if last.bytes >= LARGE && now < next {
                self.deferred.insert(key.to_string(), next);
                return Ok(Read::Unchanged);
            }
        }
        // Without tracking, a large value (or one not read yet) is probed before every read, so
        // that the next poll can tell it unchanged.
        let probing = !tracking && last.is_none_or(|l| l.bytes >= LARGE);
        self.deferred.remove(key);
        if let Some(read) = self.read_changes::<B>(link, health, key, polled)? {
            return Ok(read);
        }
        let started = Instant::now();
        let probed = if probing {
            match probe(link.command()?, key) {
                Ok(probed) => Some(probed),
                Err(refused @ FetchError::WrongType(_)) => {
                    self.refused.insert(key.to_string());
                    return Ok(Read::Refused(format!("ignoring key {key}: {refused}")));
                }
                Err(FetchError::Redis(connection::Error::Server(refusal))) => {
                    health.warn_once(format!(
                        "cannot probe key {key} ({refusal}); it is read whole every poll (grant +strlen +scard)"
                    ));
                    None
                }
                Err(e) => return Err(read_failed(link, key, e)),
            }
        } else {
            None
        };
        if let (Some(Reading::Poll), Some(probed), Some(last)) =
            (&self.reading, probed, self.last_reads.get(key))
        {
            if last.probed == Some(probed) && last.at.elapsed() < self.resync {
                return Ok(Read::Unchanged);
            }
        }
        // A whitelist SET's change number before it is read: its deltas from there on apply.
        let change = if B::STORED_AS == ItemForm::Whitelist {
            match changes::latest(link.command()?, key) {
                Ok((change, _)) => change,
                // Not a SET, or an ACL without HGET: read whole every time.
                Err(connection::Error::Server(_)) => None,
                Err(e) => return Err(format!("failed to read key {key}: {}", link.describe(&e))),
            }
        } else {
            None
        };
        let command = link.command()?;
        match fetch::<B>(command, key, limit) {
            Ok(mut fetched) => {
                // The same SET read again (a resync, a new session): nothing is laid out for a
                // version loaded already.
                let known = change.is_some() && loaded == Some(fetched.version);
                let at = change.and_then(|change| {
                    if known {
                        return SetAtChange::take(change, &mut fetched);
                    }
                    let stage = self.stage.as_ref().map(|s| s as &dyn Stage);
                    SetAtChange::read(change, &mut fetched, stage)
                });
                match at {
                    Some(at) => self.at_change.insert(key.to_string(), at),
                    None => self.at_change.remove(key),
                };
                polled.bytes += fetched.bytes;
                self.refused.remove(key);
                self.last_reads.insert(
                    key.to_string(),
                    LastRead {
                        bytes: fetched.bytes,
                        probed,
                        at: Instant::now(),
                    },
                );
                if known {
                    return Ok(Read::Unchanged);
                }
                Ok(Read::Value(fetched, started.elapsed()))
            }
            Err(refused @ (FetchError::WrongType(_) | FetchError::TooLarge(_))) => {
                if !command.in_step() {
                    link.drop_command();
                }
                self.refused.insert(key.to_string());
                // What was read before the refusal is freed: give it back.
                polled.bytes += LARGE_READ;
                Ok(Read::Refused(format!("ignoring key {key}: {refused}")))
            }
            Err(e) => Err(read_failed(link, key, e)),
        }
    }
}

impl Reader {
    /// A whitelist SET grayctl records changes of, read by its deltas: `None` when it must be
    /// read whole (no change recorded since it was, by a write no delta describes; a delta
    /// missing or that does not add up). Unannounced (a resync, a message naming no key, a
    /// poll), an unchanged change number and size leave it unread.
    fn read_changes<B: ListBuilder>(
        &mut self,
        link: &mut Link,
        health: &mut Health,
        key: &str,
        polled: &mut Polled,
    ) -> Result<Option<Read<B>>, String> {
        // A key also read as an id set is not the whitelist kept as of its change.
        if B::STORED_AS != ItemForm::Whitelist {
            return Ok(None);
        }
        let Some(mut at) = self.at_change.remove(key) else {
            return Ok(None);
        };
        let started = Instant::now();
        let failed = |link: &Link, e: connection::Error| {
            format!(
                "failed to read the changes of key {key}: {}",
                link.describe(&e)
            )
        };
        let (latest, members) = match changes::latest(link.command()?, key) {
            Ok(latest) => latest,
            Err(connection::Error::Server(_)) => return Ok(None),
            Err(e) => return Err(failed(link, e)),
        };
        let Some(latest) = latest else {
            return Ok(None);
        };
        if latest == at.change {
            let announced = matches!(&self.reading, Some(Reading::Keys(_)));
            if announced || members != at.members() {
                return Ok(None);
            }
            if let Some(last) = self.last_reads.get_mut(key) {
                last.at = Instant::now();
            }
            self.at_change.insert(key.to_string(), at);
            return Ok(Some(Read::Unchanged));
        }
        let deltas = match changes::since(link.command()?, key, at.change, latest) {
            Ok(Some(deltas)) => deltas,
            Ok(None) => {
                if !link.command()?.in_step() {
                    link.drop_command();
                }
                return Ok(None);
            }
            Err(connection::Error::Server(_)) => return Ok(None),
            Err(e) => return Err(failed(link, e)),
        };
        for delta in &deltas {
            if let Err(why) = at.apply(delta) {
                health.log(
                    Level::Notice,
                    format!(
                        "the recorded changes of key {key} do not add up ({why}): reading it whole"
                    ),
                );
                return Ok(None);
            }
        }
        if at.members() != members {
            return Ok(None);
        }
        let Some(builder) = B::built(at.list(self.stage.as_ref().map(|s| s as &dyn Stage))) else {
            return Ok(None);
        };
        polled.bytes += deltas
            .iter()
            .flat_map(|d| d.add.iter().chain(&d.remove))
            .map(String::len)
            .sum::<usize>();
        let fetched = Fetched::stored(
            KeyKind::Set,
            at.version(),
            at.bytes(),
            at.members(),
            builder,
        );
        if let Some(last) = self.last_reads.get_mut(key) {
            last.bytes = at.bytes();
            last.at = Instant::now();
        }
        self.at_change.insert(key.to_string(), at);
        Ok(Some(Read::Value(fetched, started.elapsed())))
    }
}

fn read_failed(link: &Link, key: &str, e: FetchError) -> String {
    match e {
        FetchError::Redis(e) => format!("failed to read key {key}: {}", link.describe(&e)),
        other => format!("failed to read key {key}: {other}"),
    }
}
