//! The refresher's link to Redis, the ground floor every part reads and writes through: the
//! Redis the options name (an [`Endpoint`]: a URL, or a Sentinel group's node), the command
//! connection (made when first needed, dropped when a reply was abandoned half-read), and what a
//! command's failure means, decided once: Redis refused it (an ACL, a wrong type: the session goes
//! on, the caller says what it cannot do) or the link failed (the session ends, and the message
//! names what failed and, for a hung Redis, the timeout it ran out of).

use gray_io::connection::{self, Connection};
use gray_io::endpoint::{describe, Endpoint};

use crate::state::Shared;

pub(super) struct Link {
    pub endpoint: Endpoint,
    shared: &'static Shared,
    /// Where keys are read and records written; `None` until needed again.
    command: Option<Connection>,
}

impl Link {
    pub fn new(endpoint: Endpoint, shared: &'static Shared) -> Link {
        Link {
            endpoint,
            shared,
            command: None,
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

    /// The command connection, connected now if it is not.
    pub fn command(&mut self) -> Result<&mut Connection, String> {
        if self.command.is_none() {
            self.command = Some(self.connect()?);
        }
        Ok(self.command.as_mut().expect("connected above"))
    }

    /// Starts a session on a new command connection.
    pub fn reconnect(&mut self) -> Result<(), String> {
        self.command = Some(self.connect()?);
        Ok(())
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
