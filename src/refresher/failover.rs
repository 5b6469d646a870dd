//! Following a Sentinel failover. Connected, the refresher asks a sentinel every `refresh` which
//! node is the master, and ends the session once it is not the node in use: a failover shows
//! here before Sentinel reconfigures the old master, which it does only on its next look at it
//! (up to 10 s), killing gray's connections there. Between attempts to reconnect it waits on a
//! sentinel's `+switch-master`, so a failover's end is followed at once, not up to `refresh`
//! later. Without sentinels, nothing here does anything.

use std::thread;
use std::time::{Duration, Instant};

use gray_core::endpoint::Role;
use gray_io::connection::Connection;

use super::health::Health;
use super::link::Link;
use super::watch::MAX_MESSAGE;

#[derive(Default)]
pub(super) struct Failover {
    /// A sentinel asked every `refresh` which node is the master (master role).
    sentinel: Option<Connection>,
    /// Between failed attempts: a sentinel's `+switch-master` announcements.
    switches: Option<Connection>,
    /// A subscription to them was tried in this outage.
    switches_tried: bool,
}

impl Failover {
    /// Connected again: announcements are for the time between attempts; none pile up meanwhile.
    pub fn connected(&mut self) {
        self.switches = None;
        self.switches_tried = false;
    }

    /// Waits `backoff` before the next attempt. With sentinels, less if a failover ends in the
    /// meantime: a sentinel announces the new master (`+switch-master`) and the next attempt
    /// follows at once, rather than up to `refresh` later.
    pub fn pause(&mut self, link: &Link, backoff: Duration) {
        let deadline = Instant::now() + backoff;
        let endpoint = &link.endpoint;
        if let (Some(group), None, false) = (endpoint.group(), &self.switches, self.switches_tried)
        {
            // Once an outage, within the backoff: sentinels slow to answer, or gone, only
            // mean no early wake-up.
            self.switches_tried = true;
            self.switches = group
                .switches(endpoint.tls.as_ref(), endpoint.timeout, deadline)
                .ok();
        }
        if let (Some(group), Some(con)) = (endpoint.group(), &mut self.switches) {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                match con.read_within(left, MAX_MESSAGE) {
                    Ok(Some(message)) if group.switched(&message) => return,
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(_) => {
                        self.switches = None;
                        break;
                    }
                }
            }
        }
        thread::sleep(deadline.saturating_duration_since(Instant::now()));
    }

    /// With sentinels (master role), asks one which node is the master: an error (the session
    /// ends, and the next one connects to the new master) once it is not the node in use.
    pub fn check(&mut self, link: &Link, health: &mut Health) -> Result<(), String> {
        let endpoint = &link.endpoint;
        let Some(group) = endpoint.group().filter(|g| g.role == Role::Master) else {
            return Ok(());
        };
        let asked = match self.sentinel.as_mut() {
            Some(sentinel) => group.master(sentinel).map_err(|e| e.to_string()),
            None => group
                .watch(endpoint.tls.as_ref(), endpoint.timeout)
                .map(|(sentinel, master)| {
                    self.sentinel = Some(sentinel);
                    master
                })
                .map_err(|e| e.to_string()),
        };
        let master = match asked {
            Ok(master) => master,
            Err(e) => {
                // Nothing to compare with now; the data connections still tell a failure.
                self.sentinel = None;
                health.warn_once(format!("no sentinel to watch for a failover: {e}"));
                return Ok(());
            }
        };
        let node = health.shared.status().node;
        if node.as_deref().is_some_and(|node| node != master) {
            return Err(format!(
                "the sentinels name {master} the master of \"{}\" now, not {}",
                group.master,
                node.unwrap_or_default()
            ));
        }
        Ok(())
    }
}
