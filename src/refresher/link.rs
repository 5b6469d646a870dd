//! The refresher's link to Redis, the ground floor every part reads and writes through: the
//! Redis the options name (an [`Endpoint`]: a URL, or a Sentinel group's node), the command
//! connection (made when first needed, made again when a reply was abandoned half-read), and what
//! a command's failure means, decided once: Redis refused it (an ACL, a wrong type: the session
//! goes on, the caller says what it cannot do) or the link failed (the session ends, and the
//! message names what failed and, for a hung Redis, the timeout it ran out of).
//!
//! With client-side caching the command connection is the tracked one: Redis remembers each key
//! read on it (default mode, not broadcast) and pushes a write to any of them, by anyone but this
//! connection itself (NOLOOP), to the subscriber it redirects to. So only keys gray reads wake it:
//! the reports and guard trips gray writes wake no one.

use gray_io::connection::{self, Connection, Reply};
use gray_io::endpoint::{describe, Endpoint};

use crate::state::Shared;

pub(super) struct Link {
    pub endpoint: Endpoint,
    shared: &'static Shared,
    /// Where keys are read and records written; `None` until needed again.
    command: Option<Connection>,
    /// Counts the command connections made: keys read on an earlier one are no longer tracked.
    generation: u64,
    /// The subscriber that the command connection's tracking pushes to, while tracking is on.
    redirect: Option<i64>,
}

impl Link {
    pub fn new(endpoint: Endpoint, shared: &'static Shared) -> Link {
        Link {
            endpoint,
            shared,
            command: None,
            generation: 0,
            redirect: None,
        }
    }

    /// A new connection to the Redis to read (the node the sentinels name, recorded as the node
    /// in use).
    pub fn connect(&self) -> Result<Connection, String> {
        let (con, node) = self
            .endpoint
            .connect()
            .map_err(|e| format!("failed to connect to redis: {}", e.message))?;
        if node.is_some() {
            self.shared.update_status(|s| s.node = node);
        }
        Ok(con)
    }

    /// The command connection, connected (and, with tracking, tracked) now if it is not.
    pub fn command(&mut self) -> Result<&mut Connection, String> {
        if self.command.is_none() {
            let mut con = self.connect()?;
            if let Some(redirect) = self.redirect {
                // Refused before on this Redis it could not have been: it is a failure now.
                if let Err(refusal) = self.triage(arm(&mut con, redirect), track_failed)? {
                    return Err(format!("{}: {refusal}", track_failed()));
                }
            }
            self.generation += 1;
            self.command = Some(con);
        }
        Ok(self.command.as_mut().expect("connected above"))
    }

    /// Starts a session: a new command connection, untracked until [`Link::track`].
    pub fn reconnect(&mut self) -> Result<(), String> {
        self.redirect = None;
        self.command = None;
        self.command().map(|_| ())
    }

    /// Has Redis push writes to the keys read on the command connection, from now on and on
    /// every command connection of this session, to subscriber `redirect`. `Ok(Err(refusal))`
    /// where Redis refuses (before 6.0, an ACL without `client|tracking`): no tracking.
    pub fn track(&mut self, redirect: i64) -> Result<Result<(), String>, String> {
        let con = self.command()?;
        let armed = arm(con, redirect);
        let armed = self.triage(armed, track_failed)?;
        if armed.is_ok() {
            self.redirect = Some(redirect);
        }
        Ok(armed.map(|_| ()))
    }

    /// How many command connections this link has made: a key read under an earlier one is no
    /// longer tracked.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Drops the command connection (a reply left half-read); the next command connects again.
    pub fn drop_command(&mut self) {
        self.command = None;
    }

    /// `e` as the log says it, a timeout naming the `timeout` it ran out of.
    pub fn describe(&self, e: &connection::Error) -> String {
        describe(e, Some(self.endpoint.timeout))
    }

    /// What `result` means: done, refused by Redis (`Ok(Err(refusal))`: the session goes on), or
    /// a failed link (`Err`, `doing` and why: the session ends).
    pub fn triage<T>(
        &self,
        result: Result<T, connection::Error>,
        doing: impl FnOnce() -> String,
    ) -> Result<Result<T, String>, String> {
        match result {
            Ok(value) => Ok(Ok(value)),
            Err(connection::Error::Server(refusal)) => Ok(Err(refusal)),
            Err(e) => Err(format!("{}: {}", doing(), self.describe(&e))),
        }
    }
}

fn track_failed() -> String {
    "failed to track gray's keys".to_string()
}

/// Client-side caching on `con`, default mode: the keys read on it, pushed to `redirect`, not
/// for its own writes.
fn arm(con: &mut Connection, redirect: i64) -> Result<Reply, connection::Error> {
    con.query(
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("REDIRECT")
            .arg(redirect)
            .arg("NOLOOP"),
        0,
    )
}
