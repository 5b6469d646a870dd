//! Change detection: the subscriber connection, on which Redis pushes what changed. It is
//! subscribed to `channel` and, with client-side caching (`tracking`), to the invalidations the
//! command connection's tracking redirects to it (see `link`): a write by anyone to a key gray
//! read arrives as a message naming the key. Waiting on it tells the session what to read again
//! ([`Reading`]) or that `refresh` passed; a PING every `refresh` proves it alive. Where Redis
//! refuses tracking or the subscription, a warning says so once and polling does the work.

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use gray_core::config::Config;
use gray_io::connection::{self, Connection, Reply};

use super::health::Health;
use super::link::Link;

/// Messages arriving within this long of the first one are folded into one reload: a fixed
/// deadline, so a publisher that never pauses still gets its changes loaded. A transaction's
/// invalidations arrive together, in one read: a wait this short takes them without delaying
/// the change itself (a plain socket waits on a precise timer; under TLS the socket's timeout
/// counts in scheduler ticks, a few milliseconds).
const MESSAGE_COALESCE: Duration = Duration::from_micros(50);
/// How many messages that arrived already are taken past the coalescing deadline, at most (a
/// publisher that never pauses still gets its changes loaded), and how long each is waited for:
/// long enough to find one already received, with no wait for one still to come.
const DRAIN_MAX: usize = 64;
const ARRIVED: Duration = Duration::from_micros(1);
/// The largest pub/sub message read; a bigger one loses the subscription (it is never ours).
pub(super) const MAX_MESSAGE: usize = 64 * 1024;
/// Where Redis pushes the names of tracked keys that were written.
const INVALIDATE_CHANNEL: &str = "__redis__:invalidate";

/// Which keys a poll reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reading {
    /// Every key, whole: a new session, a resync, a flush.
    All,
    /// Every key, but a large one read within `refresh` only once that has passed: a message on
    /// the channel that names no key gray reads (any number of them cost one read a `refresh`).
    Announced,
    /// The keys Redis said were written (tracking), and any not loaded yet.
    Keys(HashSet<Vec<u8>>),
    /// Every key, polling without tracking: a large value is probed first.
    Poll,
}

impl Reading {
    fn merge(self, other: Reading) -> Reading {
        match (self, other) {
            (Reading::Keys(mut a), Reading::Keys(b)) => {
                a.extend(b);
                Reading::Keys(a)
            }
            (Reading::All, _) | (_, Reading::All) => Reading::All,
            (Reading::Announced, _) | (_, Reading::Announced) => Reading::Announced,
            _ => Reading::Poll,
        }
    }
}

/// Why a wait ended.
pub(super) enum Woke {
    /// A change to gray's keys was announced: these, or all of them.
    Change(Reading),
    /// `refresh` passed.
    Tick,
}

#[derive(Default)]
pub(super) struct Watch {
    /// Subscribed to the channel and the invalidations; `None` where neither is to be had.
    subscription: Option<Connection>,
    /// Tracking is in force in this session.
    pub tracking: bool,
}

impl Watch {
    /// Subscribes a new connection to `channel` and, with `tracking`, to the invalidations of the
    /// keys the command connection reads, which it has redirected here. Without either, or
    /// where Redis refuses the subscription (an ACL without pub/sub, say), there is none:
    /// polling alone still works.
    pub fn subscribe(
        &mut self,
        link: &mut Link,
        health: &mut Health,
        config: &Config,
    ) -> Result<(), String> {
        self.subscription = None;
        self.tracking = false;
        let refused = |health: &mut Health, why: String| {
            health.warn_once(format!(
                "cannot track changes to gray's keys ({why}); a write without a PUBLISH is seen by polling every {:.1}s",
                config.refresh.as_secs_f64()
            ));
        };
        let mut con = link.connect()?;
        let id = if config.tracking {
            let asked = con.query(redis::cmd("CLIENT").arg("ID"), 0);
            match link.triage(asked, || "failed to track gray's keys".to_string())? {
                Ok(Reply::Int(id)) => Some(id),
                Ok(other) => return Err(format!("unexpected reply to CLIENT ID: {other:?}")),
                Err(why) => {
                    refused(health, why);
                    None
                }
            }
        } else {
            None
        };
        let mut channels: Vec<String> = config.channel.iter().cloned().collect();
        if id.is_some() {
            channels.push(INVALIDATE_CHANNEL.to_string());
        }
        let subscribed =
            !channels.is_empty() && subscribe_to(link, health, config, &mut con, &channels)?;
        if let (true, Some(id)) = (subscribed, id) {
            match link.track(id)? {
                Ok(()) => self.tracking = true,
                Err(why) => refused(health, why),
            }
        }
        let (channel, tracking) = (config.channel.is_some(), self.tracking);
        health.shared.update_status(|s| {
            s.subscribed = subscribed && channel;
            s.tracking = tracking;
        });
        self.subscription = subscribed.then_some(con);
        Ok(())
    }

    /// Waits until the next poll is due, or less when a message on the channel or an
    /// invalidation of a key gray reads arrives (other keys under the tracked prefixes, such as
    /// grayctl's history, are let pass); the messages that follow within `MESSAGE_COALESCE` are
    /// read with it.
    pub fn wait(
        &mut self,
        link: &Link,
        refresh: Duration,
        reads_key: impl Fn(&[u8]) -> bool,
    ) -> Result<Woke, String> {
        let Some(con) = self.subscription.as_mut() else {
            thread::sleep(refresh);
            return Ok(Woke::Tick);
        };
        let lost = |e: connection::Error| format!("lost the subscription: {}", link.describe(&e));
        // Until the next poll; once a change arrives, only a little longer, for the messages
        // that come with it.
        let mut until = Instant::now() + refresh;
        let mut pending = None;
        let mut drained = 0;
        loop {
            let left = match until.saturating_duration_since(Instant::now()) {
                // Past the deadline, messages that arrived already are taken all the same: a
                // transaction's invalidation and message taken a scheduler tick apart would
                // otherwise come as two changes, the second a whole read of a key its deltas
                // brought up to date (a number unchanged after an announced write).
                left if left.is_zero() && pending.is_some() && drained < DRAIN_MAX => {
                    drained += 1;
                    ARRIVED
                }
                // A zero read timeout is refused by the socket: the wait is over anyway.
                left if left.is_zero() => break,
                left => left,
            };
            let Some(message) = con.read_within(left, MAX_MESSAGE).map_err(lost)? else {
                break;
            };
            let first = pending.is_none();
            pending = with_message(pending, &message, &reads_key);
            if first && pending.is_some() {
                until = Instant::now() + MESSAGE_COALESCE;
            }
        }
        Ok(pending.map_or(Woke::Tick, Woke::Change))
    }

    /// With tracking, PINGs the subscriber and waits `timeout` for the answer: an error when none
    /// comes (the session then reconnects, subscribes, re-arms tracking and reloads). `Some` with
    /// the changes to gray's keys that arrived meanwhile; `None` without a tracking subscriber.
    pub fn check_alive(
        &mut self,
        link: &Link,
        reads_key: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<Option<Reading>>, String> {
        let Some(subscriber) = self.subscription.as_mut().filter(|_| self.tracking) else {
            return Ok(None);
        };
        let timeout = link.endpoint.timeout;
        let lost = |e: connection::Error| format!("lost the subscription: {}", link.describe(&e));
        subscriber.send(&redis::cmd("PING")).map_err(lost)?;
        let deadline = Instant::now() + timeout;
        let mut changed: Option<Reading> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match subscriber.read_within(left, MAX_MESSAGE).map_err(lost)? {
                None => {
                    return Err(format!(
                        "lost the subscription: no answer to PING, timed out after {:.1}s",
                        timeout.as_secs_f64()
                    ))
                }
                Some(reply) if is_pong(&reply) => return Ok(Some(changed)),
                Some(reply) => changed = with_message(changed, &reply, &reads_key),
            }
        }
    }
}

/// Subscribes `con` to `channels`; false, with one warning, where Redis refuses.
fn subscribe_to(
    link: &Link,
    health: &mut Health,
    config: &Config,
    con: &mut Connection,
    channels: &[String],
) -> Result<bool, String> {
    let names = channels.join(", ");
    match link.triage(con.subscribe(channels), || {
        format!("failed to subscribe to {names}")
    })? {
        Ok(()) => Ok(true),
        Err(refusal) => {
            health.warn_once(format!(
                "cannot subscribe to {names} ({refusal}); changes are seen by polling every {:.1}s",
                config.refresh.as_secs_f64()
            ));
            Ok(false)
        }
    }
}

/// The keys to read again, `pending` and what `message` asks for.
fn with_message(
    pending: Option<Reading>,
    message: &Reply,
    reads_key: impl Fn(&[u8]) -> bool,
) -> Option<Reading> {
    match (pending, wants_reload(message, reads_key)) {
        (Some(pending), Some(more)) => Some(pending.merge(more)),
        (pending, more) => pending.or(more),
    }
}

/// A subscribed connection's answer to PING.
fn is_pong(reply: &Reply) -> bool {
    matches!(reply, Reply::Array(Some(parts))
        if parts.first() == Some(&Reply::Bulk(Some(b"pong".to_vec()))))
}

/// What a message on the subscription asks to read again: the key a message on gray's channel
/// names (grayctl names the key it wrote), or everything, a large key at most once a `refresh`,
/// for any other payload on the channel; everything for an invalidation naming no key (a flush,
/// a replica's resync); the keys gray reads that an invalidation names; nothing for other
/// messages.
fn wants_reload(message: &Reply, reads_key: impl Fn(&[u8]) -> bool) -> Option<Reading> {
    let Reply::Array(Some(parts)) = message else {
        return None;
    };
    match parts.as_slice() {
        [Reply::Bulk(Some(kind)), Reply::Bulk(Some(channel)), payload] if kind == b"message" => {
            if channel != INVALIDATE_CHANNEL.as_bytes() {
                return Some(match payload {
                    Reply::Bulk(Some(key)) if reads_key(key) => {
                        Reading::Keys(HashSet::from([key.clone()]))
                    }
                    _ => Reading::Announced,
                });
            }
            match payload {
                Reply::Array(Some(keys)) => {
                    let written: HashSet<Vec<u8>> = keys
                        .iter()
                        .filter_map(|k| match k {
                            Reply::Bulk(Some(k)) if reads_key(k) => Some(k.clone()),
                            _ => None,
                        })
                        .collect();
                    (!written.is_empty()).then_some(Reading::Keys(written))
                }
                _ => Some(Reading::All),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscribed_ping_is_answered_by_pong() {
        let bulk = |b: &str| Reply::Bulk(Some(b.as_bytes().to_vec()));
        assert!(is_pong(&Reply::Array(Some(vec![bulk("pong"), bulk("")]))));
        assert!(!is_pong(&Reply::Array(Some(vec![
            bulk("message"),
            bulk("gray:changed"),
            bulk("1")
        ]))));
        assert!(!is_pong(&Reply::Status("PONG".into())));
    }

    #[test]
    fn only_changes_to_keys_gray_reads_reload() {
        let bulk = |b: &str| Reply::Bulk(Some(b.as_bytes().to_vec()));
        let message = |channel: &str, payload: Reply| {
            Reply::Array(Some(vec![bulk("message"), bulk(channel), payload]))
        };
        let reads = |k: &[u8]| k == b"gray" || k == b"gray:rules";
        let keys = |names: &[&str]| Reply::Array(Some(names.iter().map(|n| bulk(n)).collect()));
        let written = |names: &[&str]| {
            Some(Reading::Keys(
                names.iter().map(|n| n.as_bytes().to_vec()).collect(),
            ))
        };
        assert_eq!(
            wants_reload(&message("gray:changed", bulk("anything")), reads),
            Some(Reading::Announced)
        );
        assert_eq!(
            wants_reload(&message("gray:changed", bulk("gray:rules")), reads),
            written(&["gray:rules"])
        );
        assert_eq!(
            wants_reload(
                &message(INVALIDATE_CHANNEL, keys(&["gray:rules", "gray:history"])),
                reads
            ),
            written(&["gray:rules"])
        );
        assert_eq!(
            wants_reload(
                &message(INVALIDATE_CHANNEL, keys(&["gray:history", "gray:gateways"])),
                reads
            ),
            None
        );
        assert_eq!(
            wants_reload(&message(INVALIDATE_CHANNEL, Reply::Bulk(None)), reads),
            Some(Reading::All)
        );
        assert_eq!(
            wants_reload(&message(INVALIDATE_CHANNEL, Reply::Array(None)), reads),
            Some(Reading::All)
        );
        assert_eq!(
            wants_reload(&Reply::Array(Some(vec![bulk("pong"), bulk("")])), reads),
            None
        );
    }

    #[test]
    fn readings_merge_into_the_wider() {
        let keys = |k: &[&str]| Reading::Keys(k.iter().map(|k| k.as_bytes().to_vec()).collect());
        assert_eq!(keys(&["a"]).merge(keys(&["b"])), keys(&["a", "b"]));
        assert_eq!(keys(&["a"]).merge(Reading::All), Reading::All);
        assert_eq!(Reading::Poll.merge(keys(&["a"])), Reading::Poll);
        assert_eq!(Reading::Poll.merge(Reading::All), Reading::All);
        assert_eq!(keys(&["a"]).merge(Reading::Announced), Reading::Announced);
        assert_eq!(Reading::Announced.merge(Reading::All), Reading::All);
    }
}
