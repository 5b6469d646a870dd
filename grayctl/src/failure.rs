//! How a command fails, and the exit code a script sees: 1 refused (bad input, a conflict), 2
//! usage (clap's own), 3 Redis unreachable. The message goes to stderr and names what was wrong.

use std::fmt;
use std::process::ExitCode;

use gray_io::connection;
use gray_io::load::LoadError;

#[derive(Debug)]
pub enum Failure {
    /// Bad input, a value a gateway would refuse, or a change that lost a race: nothing written.
    Refused(String),
    /// Redis could not be reached, or the connection failed midway.
    Unreachable(String),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Refused(_) => ExitCode::from(1),
            Failure::Unreachable(_) => ExitCode::from(3),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused(why) => f.write_str(why),
            Failure::Unreachable(why) => write!(f, "redis unreachable: {why}"),
        }
    }
}

/// Error replies that mean Redis cannot serve right now (loading, a replica, a master down,
/// a busy script), not that the command was wrong.
const UNAVAILABLE: &[&str] = &[
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
];

/// A Redis error: an error reply (an ACL refusal, a wrong type) is a refusal, unless it says
/// Redis cannot serve now; anything else means Redis is not there to talk to.
impl From<connection::Error> for Failure {
    fn from(e: connection::Error) -> Self {
        match e {
            connection::Error::Server(reply)
                if UNAVAILABLE.contains(&reply.split(' ').next().unwrap_or("")) =>
            {
                Failure::Unreachable(reply)
            }
            connection::Error::Server(reply) => Failure::Refused(format!("redis refused: {reply}")),
            other => Failure::Unreachable(other.to_string()),
        }
    }
}

impl From<LoadError> for Failure {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Redis(e) => e.into(),
            LoadError::Refused(why) => Failure::Refused(why),
        }
    }
}

pub fn refused(why: impl Into<String>) -> Failure {
    Failure::Refused(why.into())
}

/// The output could not be written (a closed pipe, a full disk).
pub fn written(e: std::io::Error) -> Failure {
    Failure::Refused(format!("writing the output: {e}"))
}
