//! Finding the Redis to read through Redis Sentinel, under gray's own timeouts: each sentinel is
//! asked in turn, its connect and its answer bounded by `timeout` (a black-holed sentinel costs
//! that, never minutes), and the node it names is asked its `ROLE` before it is trusted, since a
//! sentinel can lag a failover. The caller resolves again whenever a connection fails: after a
//! failover Sentinel kills the clients of the nodes it reconfigured, so that is when it matters.

use std::fmt;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use gray_core::endpoint::{Role, Sentinels};

use crate::connection::{self, Connection, Reply};
use crate::tls::Tls;

/// The channel on which a sentinel announces the end of a failover.
const SWITCH_MASTER: &str = "+switch-master";

/// A Sentinel group (its addresses, name, role and credentials, as `configure` checked them)
/// to ask.
pub struct Group<'a>(pub &'a Sentinels);

impl std::ops::Deref for Group<'_> {
    type Target = Sentinels;
    fn deref(&self) -> &Sentinels {
        self.0
    }
}

#[derive(Debug)]
pub struct Error {
    message: String,
    refused: bool,
}

impl Error {
    fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            refused: false,
        }
    }

    /// A sentinel or a node answered with an error reply (a wrong password, an ACL refusal):
    /// reachable, but refusing.
    pub fn refused(&self) -> bool {
        self.refused
    }
}

impl From<connection::Error> for Error {
    fn from(e: connection::Error) -> Self {
        Error {
            refused: matches!(e, connection::Error::Server(_)),
            message: e.to_string(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl Group<'_> {
    /// A connection to the node to read from: the first sentinel that answers names it, and the
    /// node confirms its role. `data` holds the credentials and database for that node; with
    /// `tls`, the sentinels and the node are both reached over TLS.
    pub fn connect(
        &self,
        data: &ConnectionInfo,
        tls: Option<&Tls>,
        timeout: Duration,
    ) -> Result<(Connection, String), Error> {
        let mut failures = Vec::new();
        let mut refused = false;
        for (host, port) in &self.addresses {
            let sentinel = format!("{host}:{port}");
            let candidates = match self.ask(host, *port, tls, timeout) {
                Ok(candidates) => candidates,
                Err(e) => {
                    refused |= e.refused;
                    failures.push(format!("sentinel {sentinel}: {e}"));
                    continue;
                }
            };
            for (node_host, node_port, role) in candidates {
                let node = format!("{node_host}:{node_port}");
                let info = data
                    .clone()
                    .set_addr(ConnectionAddr::Tcp(node_host, node_port));
                let confirmed = Connection::open(&info, tls, timeout)
                    .map_err(Error::from)
                    .and_then(|mut con| {
                        confirm_role(&mut con, role).map_err(Error::new)?;
                        Ok(con)
                    });
                match confirmed {
                    Ok(con) => return Ok((con, node)),
                    Err(e) => {
                        refused |= e.refused;
                        failures.push(format!(
                            "{node} ({} by sentinel {sentinel}): {e}",
                            role.as_str()
                        ));
                    }
                }
            }
        }
        Err(Error {
            message: format!(
                "no node of \"{}\" to read from: {}",
                self.master,
                failures.join("; ")
            ),
            refused,
        })
    }

    /// A connection to the first sentinel that names the group's master, to ask
    /// [`Group::master`] on again, with the master it named.
    pub fn watch(
        &self,
        tls: Option<&Tls>,
        timeout: Duration,
    ) -> Result<(Connection, String), Error> {
        self.first_sentinel(tls, timeout, None, |con| {
            self.master(con).map_err(|e| e.to_string())
        })
    }

    /// A connection to the first sentinel that answers before `deadline`, subscribed to
    /// `+switch-master`: the event each sentinel publishes when a failover has made a new master
    /// ([`Group::switched`] reads it).
    pub fn switches(
        &self,
        tls: Option<&Tls>,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Connection, Error> {
        self.first_sentinel(tls, timeout, Some(deadline), |con| {
            con.subscribe(&[SWITCH_MASTER]).map_err(|e| e.to_string())
        })
        .map(|(con, ())| con)
    }

    /// The first sentinel, in order, that connects and answers `ask`; each given `timeout`, or
    /// what is left before `deadline` when less.
    fn first_sentinel<T>(
        &self,
        tls: Option<&Tls>,
        timeout: Duration,
        deadline: Option<Instant>,
        ask: impl Fn(&mut Connection) -> Result<T, String>,
    ) -> Result<(Connection, T), Error> {
        let mut failures = Vec::new();
        for (host, port) in &self.addresses {
            let left = deadline.map_or(timeout, |d| {
                timeout.min(d.saturating_duration_since(Instant::now()))
            });
            if left.is_zero() {
                failures.push("no time left for the others".to_string());
                break;
            }
            let answered = self
                .sentinel_info(host, *port)
                .and_then(|info| Connection::open(&info, tls, left).map_err(|e| e.to_string()))
                .and_then(|mut con| Ok((ask(&mut con)?, con)));
            match answered {
                Ok((answer, con)) => return Ok((con, answer)),
                Err(e) => failures.push(format!("sentinel {host}:{port}: {e}")),
            }
        }
        Err(Error::new(failures.join("; ")))
    }

    /// Whether `message`, read from a [`Group::switches`] connection, says this group has a
    /// new master (`+switch-master <name> <old ip> <old port> <new ip> <new port>`).
    pub fn switched(&self, message: &Reply) -> bool {
        match message {
            Reply::Array(Some(parts)) => match parts.as_slice() {
                [Reply::Bulk(Some(kind)), Reply::Bulk(Some(channel)), Reply::Bulk(Some(payload))] => {
                    kind == b"message"
                        && channel == SWITCH_MASTER.as_bytes()
                        && payload.split(|b| *b == b' ').next() == Some(self.master.as_bytes())
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// The group's master as the sentinel on `con` names it, `host:port`.
    pub fn master(&self, con: &mut Connection) -> Result<String, Error> {
        self.master_address(con)
            .map(|(host, port)| format!("{host}:{port}"))
    }

    fn master_address(&self, con: &mut Connection) -> Result<(String, u16), Error> {
        match con.query(
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.master),
            1024,
        ) {
            Ok(Reply::Array(Some(parts))) => address(&parts)
                .ok_or_else(|| Error::new(format!("an address it cannot give: {parts:?}"))),
            Ok(Reply::Array(None)) => Err(Error::new(format!(
                "it does not monitor \"{}\"",
                self.master
            ))),
            Ok(other) => Err(Error::new(format!("unexpected reply {other:?}"))),
            Err(e) => Err(Error::from(e)),
        }
    }

    fn sentinel_info(&self, host: &str, port: u16) -> Result<ConnectionInfo, String> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let info = format!("redis://{host}:{port}")
            .into_connection_info()
            .map_err(|e| e.to_string())?;
        let mut settings = info.redis_settings().clone();
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        if let Some(username) = &self.username {
            settings = settings.set_username(username);
        }
        Ok(info.set_redis_settings(settings))
    }

    /// The nodes sentinel `host:port` names for the group, best first, with the role each
    /// should have.
    fn ask(
        &self,
        host: &str,
        port: u16,
        tls: Option<&Tls>,
        timeout: Duration,
    ) -> Result<Vec<(String, u16, Role)>, Error> {
        let info = self.sentinel_info(host, port).map_err(Error::new)?;
        let mut con = Connection::open(&info, tls, timeout)?;
        let (master_host, master_port) = self.master_address(&mut con)?;
        let mut nodes = Vec::new();
        if self.role == Role::Replica {
            let replicas = con.query(
                redis::cmd("SENTINEL").arg("REPLICAS").arg(&self.master),
                1 << 20,
            )?;
            nodes.extend(
                healthy_replicas(&replicas)
                    .into_iter()
                    .map(|(h, p)| (h, p, Role::Replica)),
            );
        }
        nodes.push((master_host, master_port, Role::Master));
        Ok(nodes)
    }
}

/// `[host, port]` as `SENTINEL GET-MASTER-ADDR-BY-NAME` answers.
fn address(parts: &[Reply]) -> Option<(String, u16)> {
    match parts {
        [Reply::Bulk(Some(host)), Reply::Bulk(Some(port))] => Some((
            String::from_utf8(host.clone()).ok()?,
            std::str::from_utf8(port).ok()?.parse().ok()?,
        )),
        _ => None,
    }
}

/// The replicas `SENTINEL REPLICAS` lists that are up and in sync with the master.
fn healthy_replicas(reply: &Reply) -> Vec<(String, u16)> {
    let Reply::Array(Some(replicas)) = reply else {
        return Vec::new();
    };
    replicas
        .iter()
        .filter_map(|replica| {
            let Reply::Array(Some(fields)) = replica else {
                return None;
            };
            let field = |name: &str| {
                fields.chunks(2).find_map(|pair| match pair {
                    [Reply::Bulk(Some(k)), Reply::Bulk(Some(v))] if k == name.as_bytes() => {
                        std::str::from_utf8(v).ok()
                    }
                    _ => None,
                })
            };
            let flags = field("flags")?;
            let down = flags
                .split(',')
                .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"));
            if down || field("master-link-status") != Some("ok") {
                return None;
            }
            Some((field("ip")?.to_string(), field("port")?.parse().ok()?))
        })
        .collect()
}

/// Asks a node its `ROLE`: a sentinel may name a master that has since been demoted.
fn confirm_role(con: &mut Connection, expected: Role) -> Result<(), String> {
    let role = match con.query(&redis::cmd("ROLE"), 1 << 20) {
        Ok(Reply::Array(Some(parts))) => match parts.first() {
            Some(Reply::Bulk(Some(role))) => String::from_utf8_lossy(role).into_owned(),
            _ => return Err("ROLE gave no role".into()),
        },
        Ok(other) => return Err(format!("unexpected reply to ROLE: {other:?}")),
        // An ACL without ROLE: trust the sentinel.
        Err(connection::Error::Server(_)) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let actual = if role == "master" {
        Role::Master
    } else {
        Role::Replica
    };
    if actual == expected {
        Ok(())
    } else {
        Err(format!("it is a {role} now"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(s.as_bytes().to_vec()))
    }

    fn replica(ip: &str, port: &str, flags: &str, link: &str) -> Reply {
        Reply::Array(Some(
            [
                ("name", "x"),
                ("ip", ip),
                ("port", port),
                ("flags", flags),
                ("master-link-status", link),
            ]
            .iter()
            .flat_map(|(k, v)| [bulk(k), bulk(v)])
            .collect(),
        ))
    }

    #[test]
    fn a_switch_of_this_group_is_told_apart() {
        let sentinels = Sentinels {
            addresses: vec![],
            master: "grays".into(),
            role: Role::Master,
            username: None,
            password: None,
        };
        let message = |channel: &str, payload: &str| {
            Reply::Array(Some(vec![bulk("message"), bulk(channel), bulk(payload)]))
        };
        assert!(Group(&sentinels).switched(&message(
            "+switch-master",
            "grays 127.0.0.1 6379 127.0.0.1 6380"
        )));
        assert!(!Group(&sentinels).switched(&message(
            "+switch-master",
            "grays-other 127.0.0.1 6379 127.0.0.1 6380"
        )));
        assert!(!Group(&sentinels).switched(&message("+sdown", "grays 127.0.0.1 6379")));
        assert!(!Group(&sentinels).switched(&Reply::Int(1)));
    }

    #[test]
    fn only_replicas_up_and_in_sync_are_read_from() {
        let reply = Reply::Array(Some(vec![
            replica("10.0.0.1", "6380", "slave", "ok"),
            replica("10.0.0.2", "6380", "s_down,slave", "ok"),
            replica("10.0.0.3", "6380", "slave", "err"),
            replica("10.0.0.4", "6380", "slave,disconnected", "ok"),
            replica("10.0.0.5", "6381", "slave", "ok"),
        ]));
        assert_eq!(
            healthy_replicas(&reply),
            [
                ("10.0.0.1".to_string(), 6380),
                ("10.0.0.5".to_string(), 6381)
            ]
        );
        assert!(healthy_replicas(&Reply::Array(None)).is_empty());
    }

    #[test]
    fn a_master_address_is_a_host_and_a_port() {
        assert_eq!(
            address(&[bulk("127.0.0.1"), bulk("6379")]),
            Some(("127.0.0.1".to_string(), 6379))
        );
        assert_eq!(address(&[bulk("127.0.0.1"), bulk("port")]), None);
        assert_eq!(address(&[bulk("127.0.0.1")]), None);
    }
}
