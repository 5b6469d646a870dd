//! Where gray's Redis is and how to reach it, as plain data checked by `configure`: the URL as
//! given (its password masked for display), the TLS files of a `rediss://` URL, and the Sentinel
//! group to ask for the node. gray-io builds connections from it; nothing here opens one.

use std::fmt;

/// Which node of a Sentinel group to read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    /// A healthy replica (the master when none is).
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Replica => "replica",
        }
    }
}

/// A Sentinel group (`sentinels`, `sentinel_master`, `read_from`, the sentinels' credentials).
#[derive(Clone, PartialEq, Eq)]
pub struct Sentinels {
    /// `host:port` of each sentinel, asked in this order.
    pub addresses: Vec<(String, u16)>,
    /// The monitored group's name (`sentinel monitor <name> ...`).
    pub master: String,
    pub role: Role,
    /// The sentinels' own credentials (`requirepass` or an ACL user in sentinel.conf), not the
    /// data nodes'.
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Without the password.
impl fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sentinels")
            .field("addresses", &self.addresses)
            .field("master", &self.master)
            .field("role", &self.role)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The files of the TLS options, as given.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CA certificates that sign the server's certificate; the system's store when `None`.
    pub ca: Option<String>,
    /// PEM client certificate chain and its private key, for servers that ask for one.
    pub cert: Option<String>,
    pub key: Option<String>,
}

impl TlsFiles {
    /// The first TLS option given, by its name.
    pub fn option_given(&self) -> Option<&'static str> {
        [
            ("tls_ca", &self.ca),
            ("tls_cert", &self.cert),
            ("tls_key", &self.key),
        ]
        .into_iter()
        .find_map(|(name, file)| file.is_some().then_some(name))
    }
}

/// A TLS URL (`rediss://`, `valkeys://`, in any case) as the `redis://` URL redis-rs parses, whose
/// scheme alone decides TLS; `None` for any other URL.
pub fn tls_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    (scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys"))
        .then(|| format!("redis://{rest}"))
}

/// A URL as status and logs show it: `redis://user:secret@host` → `redis://user:***@host`, and a
/// unix socket's `?pass=secret` → `?pass=***`, so they never show a password.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(mask_query(query))),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("***@{host}"),
        },
        None => authority.to_string(),
    };
    match query {
        Some(query) => format!("{scheme}://{authority}{path}?{query}"),
        None => format!("{scheme}://{authority}{path}"),
    }
}

/// A URL's query with the value of `pass` (and `password`) masked.
fn mask_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if name == "pass" || name == "password" => format!("{name}=***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(mask_password("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(mask_password("redis://pw@h"), "redis://***@h");
        assert_eq!(mask_password("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(mask_password("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(
            mask_password("redis+unix:///tmp/r.sock"),
            "redis+unix:///tmp/r.sock"
        );
        assert_eq!(
            mask_password("redis+unix:///tmp/r.sock?db=2&pass=secret&user=u"),
            "redis+unix:///tmp/r.sock?db=2&pass=***&user=u"
        );
        assert_eq!(
            mask_password("unix:///tmp/r.sock?password=secret"),
            "unix:///tmp/r.sock?password=***"
        );
    }

    #[test]
    fn the_scheme_alone_decides_tls() {
        assert_eq!(tls_url("rediss://h:1/0").as_deref(), Some("redis://h:1/0"));
        assert_eq!(tls_url("VALKEYS://h").as_deref(), Some("redis://h"));
        assert_eq!(tls_url("redis://h"), None);
        assert_eq!(tls_url("redis+unix:///s"), None);
    }

    #[test]
    fn sentinels_show_no_password() {
        let sentinels = Sentinels {
            addresses: vec![("h".into(), 1)],
            master: "m".into(),
            role: Role::Master,
            username: None,
            password: Some("secret".into()),
        };
        assert!(!format!("{sentinels:?}").contains("secret"));
    }
}
