//! The Redis gray reads, live: a [`Config`]'s plain data (the URL, the TLS files, the Sentinel
//! group) built into what connects, once, when the options are checked: the URL parsed (redis-rs
//! parses it and encodes commands; the connections are gray's own), the TLS files read, so a bad
//! URL or file is an error of `configure` naming the option, not a failure at every reconnect.

use std::time::Duration;

use redis::ConnectionInfo;

use gray_core::config::{Config, ConfigError};
use gray_core::endpoint::{tls_url, Sentinels};

use crate::connection::{self, Connection};
use crate::sentinel::{self, Group};
use crate::tls::Tls;

#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The node's address, credentials and database; with sentinels, only the credentials and
    /// the database (the address is the node they name).
    pub info: ConnectionInfo,
    /// Every connection, to the nodes and to the sentinels, is TLS with it.
    pub tls: Option<Tls>,
    pub sentinels: Option<Sentinels>,
    /// Each connect (resolution, every address, the handshake) and each read and write.
    pub timeout: Duration,
}

/// Why a connection could not be made: the reason, and whether Redis (or a sentinel) answered
/// with a refusal (a wrong password, an ACL) rather than not being there.
#[derive(Debug)]
pub struct ConnectError {
    pub message: String,
    pub refused: bool,
}

impl From<sentinel::Error> for ConnectError {
    fn from(e: sentinel::Error) -> Self {
        ConnectError {
            refused: e.refused(),
            message: e.to_string(),
        }
    }
}

/// An error as a log line says it: a timeout (a hung Redis shows up as EAGAIN, "Resource
/// temporarily unavailable") names the timeout it ran out of.
pub fn describe(e: &connection::Error, timeout: Option<Duration>) -> String {
    match timeout {
        Some(timeout) if e.is_timeout() => {
            format!("timed out after {:.1}s ({e})", timeout.as_secs_f64())
        }
        _ => e.to_string(),
    }
}

fn invalid(message: String) -> ConfigError {
    ConfigError::new(message)
}

impl Endpoint {
    /// `config`'s Redis, checked: the URL parses, speaks RESP2, and the TLS files are good.
    pub fn new(config: &Config) -> Result<Endpoint, ConfigError> {
        // redis-rs parses `rediss://` only when built with its own TLS; gray's TLS is its own
        // (tls.rs), so a TLS URL is parsed as `redis://` and the scheme decides TLS.
        let url = tls_url(&config.redis).unwrap_or_else(|| config.redis.clone());
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .map_err(|e| invalid(format!("opts.redis is not a valid Redis URL: {e}")))?;
        // gray speaks RESP2 on connections of its own (connection.rs): refuse what it would
        // otherwise ignore, rather than fail to load at run time.
        if info.redis_settings().protocol() != redis::ProtocolVersion::RESP2 {
            return Err(invalid(
                "opts.redis asks for protocol=resp3, which gray does not speak; remove it (RESP2 works with every Redis)".into(),
            ));
        }
        let tls = match &config.tls {
            Some(files) => Some(Tls::load(files).map_err(invalid)?),
            None => None,
        };
        Ok(Endpoint {
            info,
            tls,
            sentinels: config.sentinels.clone(),
            timeout: config.timeout,
        })
    }

    /// The Sentinel group to ask, where there is one.
    pub fn group(&self) -> Option<Group<'_>> {
        self.sentinels.as_ref().map(Group)
    }

    /// A new connection to the Redis to read: the URL's, or the node the sentinels name (given
    /// with it, `host:port`), for `role`'s sake asked of them anew.
    pub fn connect(&self) -> Result<(Connection, Option<String>), ConnectError> {
        match self.group() {
            None => Connection::open(&self.info, self.tls.as_ref(), self.timeout)
                .map(|con| (con, None))
                .map_err(|e| ConnectError {
                    refused: matches!(e, connection::Error::Server(_)),
                    message: describe(&e, Some(self.timeout)),
                }),
            Some(group) => {
                let (con, node) = group.connect(&self.info, self.tls.as_ref(), self.timeout)?;
                Ok((con, Some(node)))
            }
        }
    }

    /// The same Redis, its master where a Sentinel group is asked (grayctl writes).
    pub fn master(&self) -> Endpoint {
        let mut master = self.clone();
        if let Some(sentinels) = &mut master.sentinels {
            sentinels.role = gray_core::endpoint::Role::Master;
        }
        master
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gray_core::config::OptionValue::{self, Str};

    fn endpoint(pairs: &[(&str, OptionValue)]) -> Result<Endpoint, String> {
        let config = Config::from_options(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
        .map_err(|e| e.to_string())?;
        Endpoint::new(&config).map_err(|e| e.to_string())
    }

    #[test]
    fn the_url_gives_the_address_credentials_and_database() {
        let e = endpoint(&[("redis", Str("redis://u:pw@127.0.0.1:6390/2".into()))]).unwrap();
        assert_eq!(e.info.redis_settings().db(), 2);
        assert_eq!(e.info.redis_settings().password(), Some("pw"));
        assert!(e.tls.is_none());
    }

    #[test]
    fn errors_name_the_option() {
        let cases: &[(&[(&str, OptionValue)], &str)] = &[
            (
                &[("redis", Str("http://x".into()))],
                "opts.redis is not a valid Redis URL",
            ),
            (
                &[("redis", Str("redis://127.0.0.1/0?protocol=resp3".into()))],
                "opts.redis asks for protocol=resp3, which gray does not speak",
            ),
            (
                &[
                    ("redis", Str("VALKEYS://127.0.0.1/0".into())),
                    ("tls_ca", Str("/nonexistent/ca.pem".into())),
                ],
                "opts.tls_ca: /nonexistent/ca.pem: I/O error: No such file or directory (os error 2)",
            ),
        ];
        for (pairs, expected) in cases {
            let got = endpoint(pairs).unwrap_err();
            assert!(
                got.starts_with(expected),
                "{got:?} should start with {expected:?}"
            );
        }
    }
}
