//! The options of `gray.configure(opts)`: their defaults (one place for each) and their
//! validation. Values arrive already converted from Lua into [`OptionValue`], so this file has no
//! Lua in it and every rule is unit-tested. A [`Config`] is plain data: what touches files or the
//! network (the URL's parse, the TLS files, connections) is gray-io's `Endpoint`, built from it.

use std::fmt;
use std::time::Duration;

use ipnet::IpNet;

pub use crate::client_ip::RealIpHeader;
use crate::decision::code::MAX_TARGETS;
use crate::endpoint::{mask_password, tls_url};
pub use crate::endpoint::{Role, Sentinels, TlsFiles};
use crate::ipset::IpSet;
use crate::keys;
use crate::whitelist::{parse_entry, tokens};

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
pub const DEFAULT_KEY: &str = "gray";
pub const DEFAULT_PROD: &str = "@prod1";
pub const DEFAULT_GRAY: &str = "@prod2-grey";
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(1);
/// With tracking, the keys are read whole this often (as a safety net); `refresh` only checks
/// that the subscription is alive.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);
pub const DEFAULT_CHANNEL: &str = "gray:changed";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Room for about 1.25 million mixed IPv4/IPv6 entries (a 1M-entry list is ~26 MB of text).
pub const DEFAULT_MAX_BYTES: usize = 32 << 20;

/// The option names `configure` accepts, in the order the README documents them.
pub const OPTION_NAMES: &[&str] = &[
    "redis",
    "key",
    "prod",
    "gray",
    "refresh",
    "channel",
    "trusted_proxies",
    "timeout",
    "max_bytes",
    "rules_key",
    "rule_sets",
    "targets",
    "report",
    "count_responses",
    "rollouts",
    "tracking",
    "resync",
    "sentinels",
    "sentinel_master",
    "read_from",
    "sentinel_username",
    "sentinel_password",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "real_ip_header",
];

/// A Lua value as far as option validation needs to see it.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    Str(String),
    Num(f64),
    Bool(bool),
    List(Vec<OptionValue>),
    /// Any other Lua type, by its Lua type name.
    Other(String),
}

impl OptionValue {
    fn type_name(&self) -> &str {
        match self {
            OptionValue::Str(_) => "string",
            OptionValue::Num(_) => "number",
            OptionValue::Bool(_) => "boolean",
            OptionValue::List(_) => "table",
            OptionValue::Other(name) => name,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An option's error, its message naming the option (`opts.<name> ...`).
    pub fn new(message: impl Into<String>) -> ConfigError {
        ConfigError(message.into())
    }
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::new(message)
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The Redis URL as given (`redis://`, `redis+unix://`, `rediss://`).
    pub redis: String,
    /// The URL with any password masked, and the sentinels it goes through, for status and logs.
    pub redis_display: String,
    pub key: String,
    pub refresh: Duration,
    pub channel: Option<String>,
    pub trusted_proxies: IpSet,
    /// Which forwarding header a trusted proxy's client comes from.
    pub real_ip_header: RealIpHeader,
    pub timeout: Duration,
    /// The largest list text (string length, or the sum of a SET's member lengths) gray reads.
    pub max_bytes: usize,
    /// The default rule set's key; `<rules_key>:<name>` for a named one.
    pub rules_key: String,
    /// The named rule sets, in addition to the default one (index 0); `route(name)` picks one.
    pub rule_sets: Vec<String>,
    /// The named locations a rule set may send to: `prod`, `gray`, then `targets`.
    pub targets: Vec<String>,
    /// How often each worker reports what it serves to `<key>:gateways`; `None`: it does not.
    pub report: Option<Duration>,
    /// Have Redis push writes to gray's keys (client-side caching) rather than wait for a poll.
    pub tracking: bool,
    /// Count each routed request's response (class and time) as nginx frees the request.
    pub count_responses: bool,
    /// Take part in driving rollout plans: judge and step them while holding their lease.
    pub rollouts: bool,
    /// Find the Redis to read through these sentinels; `redis` then gives only the credentials
    /// and the database.
    pub sentinels: Option<Sentinels>,
    /// With tracking, how often the keys are read whole all the same.
    pub resync: Duration,
    /// Set for a `rediss://` URL: every connection (to Redis, and to the sentinels) is TLS, with
    /// these files.
    pub tls: Option<TlsFiles>,
}

impl Default for Config {
    fn default() -> Self {
        Config::from_options(Vec::new()).expect("the defaults are valid")
    }
}

impl Config {
    /// The key of the default rule set (`None`) or of the named one.
    pub fn rule_set_key(&self, name: Option<&str>) -> String {
        keys::rule_set(&self.rules_key, name)
    }

    /// Where grayctl keeps its history of changes.
    pub fn history_key(&self) -> String {
        keys::history(&self.key)
    }

    /// Where workers report what they serve ([`crate::fleet`]).
    pub fn gateways_key(&self) -> String {
        keys::gateways(&self.key)
    }

    /// Validates `opts`; every error names the option it is about.
    pub fn from_options(options: Vec<(String, OptionValue)>) -> Result<Self, ConfigError> {
        let mut redis_url = DEFAULT_REDIS_URL.to_string();
        let mut key = DEFAULT_KEY.to_string();
        let mut prod = DEFAULT_PROD.to_string();
        let mut gray = DEFAULT_GRAY.to_string();
        let mut refresh = DEFAULT_REFRESH;
        let mut channel = Some(DEFAULT_CHANNEL.to_string());
        let mut trusted_proxies = IpSet::default();
        let mut real_ip_header = RealIpHeader::default();
        let mut timeout = DEFAULT_TIMEOUT;
        let mut max_bytes = DEFAULT_MAX_BYTES;
        let mut rules_key = None;
        let mut rule_sets = Vec::new();
        let mut extra_targets = Vec::new();
        let mut report = None;
        let mut tracking = true;
        let mut count_responses = false;
        let mut rollouts = false;
        let mut resync = DEFAULT_RESYNC;
        let mut sentinel_addresses = Vec::new();
        let mut sentinel_master = None;
        let mut read_from = None;
        let mut sentinel_username = None;
        let mut sentinel_password = None;
        let mut tls_files = TlsFiles::default();

        for (name, value) in options {
            match name.as_str() {
                "redis" => redis_url = non_empty_string(&name, value)?,
                "key" => key = non_empty_string(&name, value)?,
                "prod" => prod = non_empty_string(&name, value)?,
                "gray" => gray = non_empty_string(&name, value)?,
                "refresh" => refresh = positive_seconds(&name, value)?,
                "timeout" => timeout = positive_seconds(&name, value)?,
                "resync" => resync = positive_seconds(&name, value)?,
                "channel" => {
                    channel = match value {
                        OptionValue::Bool(false) => None,
                        value => Some(non_empty_string(&name, value).map_err(|_| {
                            invalid("opts.channel must be a non-empty string or false")
                        })?),
                    }
                }
                "trusted_proxies" => trusted_proxies = networks(&name, value)?,
                "real_ip_header" => {
                    real_ip_header = match &value {
                        OptionValue::Str(h) if h.eq_ignore_ascii_case("X-Forwarded-For") => {
                            RealIpHeader::ForwardedFor
                        }
                        OptionValue::Str(h) if h.eq_ignore_ascii_case("X-Real-IP") => {
                            RealIpHeader::RealIp
                        }
                        other => {
                            return Err(invalid(format!(
                                "opts.real_ip_header must be \"X-Forwarded-For\" or \"X-Real-IP\", got {}",
                                match other {
                                    OptionValue::Str(s) => format!("\"{s}\""),
                                    other => other.type_name().to_string(),
                                }
                            )))
                        }
                    }
                }
                "max_bytes" => max_bytes = byte_count(&name, value)?,
                "rules_key" => rules_key = Some(non_empty_string(&name, value)?),
                "rule_sets" => {
                    rule_sets = names(&name, value, |n| !n.contains(char::is_whitespace))?
                }
                "targets" => extra_targets = names(&name, value, |n| n.starts_with('@'))?,
                "tracking" => tracking = boolean(&name, value)?,
                "count_responses" => count_responses = boolean(&name, value)?,
                "rollouts" => rollouts = boolean(&name, value)?,
                "sentinels" => sentinel_addresses = host_ports(&name, value)?,
                "sentinel_master" => sentinel_master = Some(non_empty_string(&name, value)?),
                "sentinel_username" => sentinel_username = Some(non_empty_string(&name, value)?),
                "sentinel_password" => sentinel_password = Some(non_empty_string(&name, value)?),
                "read_from" => {
                    read_from = Some(match value {
                        OptionValue::Str(s) if s == "master" => Role::Master,
                        OptionValue::Str(s) if s == "replica" => Role::Replica,
                        other => {
                            return Err(invalid(format!(
                                "opts.read_from must be \"master\" or \"replica\", got {}",
                                match other {
                                    OptionValue::Str(s) => format!("\"{s}\""),
                                    other => other.type_name().to_string(),
                                }
                            )))
                        }
                    })
                }
                "tls_ca" => tls_files.ca = Some(non_empty_string(&name, value)?),
                "tls_cert" => tls_files.cert = Some(non_empty_string(&name, value)?),
                "tls_key" => tls_files.key = Some(non_empty_string(&name, value)?),
                "report" => {
                    report = match value {
                        OptionValue::Bool(true) => Some(crate::fleet::DEFAULT_REPORT_EVERY),
                        OptionValue::Bool(false) => None,
                        value => Some(positive_seconds(&name, value).map_err(|_| {
                            invalid("opts.report must be true, false or a positive number of seconds (at most 86400)")
                        })?),
                    }
                }
                _ => {
                    return Err(invalid(format!(
                        "unknown option opts.{name} (known: {})",
                        OPTION_NAMES.join(", ")
                    )))
                }
            }
        }

        if sentinel_username.is_some() && sentinel_password.is_none() {
            return Err(invalid(
                "opts.sentinel_username needs opts.sentinel_password",
            ));
        }
        let sentinel_options = [
            ("read_from", read_from.is_some()),
            ("sentinel_password", sentinel_password.is_some()),
        ];
        let sentinels = match (sentinel_addresses.is_empty(), sentinel_master) {
            (true, None) => match sentinel_options.iter().find(|(_, given)| *given) {
                None => None,
                Some((option, _)) => {
                    return Err(invalid(format!(
                        "opts.{option} needs opts.sentinels and opts.sentinel_master"
                    )))
                }
            },
            (false, Some(master)) => Some(Sentinels {
                addresses: sentinel_addresses,
                master,
                role: read_from.unwrap_or(Role::Master),
                username: sentinel_username,
                password: sentinel_password,
            }),
            (false, None) => {
                return Err(invalid(
                    "opts.sentinels needs opts.sentinel_master, the name the sentinels monitor",
                ))
            }
            (true, Some(_)) => {
                return Err(invalid(
                    "opts.sentinel_master needs opts.sentinels, the sentinels' addresses",
                ))
            }
        };
        let tls_url = tls_url(&redis_url);
        if tls_url.as_deref().is_some_and(|url| url.contains('#')) {
            return Err(invalid(
                "opts.redis: a rediss:// URL takes no #fragment (#insecure is not offered: give the server's CA as opts.tls_ca)",
            ));
        }
        let tls = if tls_url.is_some() {
            match (&tls_files.cert, &tls_files.key) {
                (Some(_), None) => return Err(invalid("opts.tls_cert needs opts.tls_key")),
                (None, Some(_)) => return Err(invalid("opts.tls_key needs opts.tls_cert")),
                _ => Some(tls_files),
            }
        } else if let Some(option) = tls_files.option_given() {
            return Err(invalid(format!(
                "opts.{option} needs a rediss:// URL in opts.redis"
            )));
        } else {
            None
        };
        let mut targets = vec![prod, gray];
        for target in extra_targets {
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        if targets.len() > MAX_TARGETS {
            return Err(invalid(format!(
                "opts.targets lists {} locations; with prod and gray that is {}, over the {MAX_TARGETS} a gateway routes to",
                targets.len() - 2,
                targets.len()
            )));
        }
        for name in &rule_sets {
            keys::check_rule_set_name(name).map_err(|e| invalid(format!("opts.rule_sets: {e}")))?;
        }
        Ok(Config {
            rules_key: rules_key.unwrap_or_else(|| keys::default_rules(&key)),
            rule_sets,
            targets,
            redis_display: match &sentinels {
                Some(s) => format!(
                    "{} ({} of \"{}\" by sentinels {})",
                    mask_password(&redis_url),
                    s.role.as_str(),
                    s.master,
                    s.addresses
                        .iter()
                        .map(|(host, port)| format!("{host}:{port}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => mask_password(&redis_url),
            },
            redis: redis_url,
            key,
            refresh,
            channel,
            trusted_proxies,
            real_ip_header,
            timeout,
            max_bytes,
            report,
            tracking,
            count_responses,
            rollouts,
            resync,
            sentinels,
            tls,
        })
    }
}

/// A list of `host:port` (a single string for one).
fn host_ports(name: &str, value: OptionValue) -> Result<Vec<(String, u16)>, ConfigError> {
    let items = match value {
        OptionValue::Str(s) => vec![OptionValue::Str(s)],
        OptionValue::List(items) if items.is_empty() => {
            return Err(invalid(format!(
                "opts.{name} is empty: list one \"host:port\" at least"
            )))
        }
        OptionValue::List(items) => items,
        other => {
            return Err(invalid(format!(
                "opts.{name} must be a list of \"host:port\", got {}",
                other.type_name()
            )))
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let parsed = match &item {
                OptionValue::Str(s) => s
                    .rsplit_once(':')
                    .and_then(|(host, port)| {
                        let host = host.trim_start_matches('[').trim_end_matches(']');
                        Some((host.to_string(), port.parse::<u16>().ok()?))
                    })
                    .filter(|(host, port)| !host.is_empty() && *port != 0),
                _ => None,
            };
            parsed.ok_or_else(|| {
                invalid(format!(
                    "opts.{name}[{}] must be \"host:port\", got {}",
                    i + 1,
                    match item {
                        OptionValue::Str(s) => format!("\"{s}\""),
                        other => other.type_name().to_string(),
                    }
                ))
            })
        })
        .collect()
}

fn boolean(name: &str, value: OptionValue) -> Result<bool, ConfigError> {
    match value {
        OptionValue::Bool(b) => Ok(b),
        other => Err(invalid(format!(
            "opts.{name} must be true or false, got {}",
            other.type_name()
        ))),
    }
}

fn non_empty_string(name: &str, value: OptionValue) -> Result<String, ConfigError> {
    match value {
        OptionValue::Str(s) if !s.is_empty() => Ok(s),
        other => Err(invalid(format!(
            "opts.{name} must be a non-empty string, got {}",
            other.type_name()
        ))),
    }
}

/// A list of distinct names, each passing `valid` (a target is a named location: `@name`).
fn names(
    name: &str,
    value: OptionValue,
    valid: fn(&str) -> bool,
) -> Result<Vec<String>, ConfigError> {
    let what = if name == "targets" {
        "named locations (\"@name\")"
    } else {
        "names without spaces"
    };
    let OptionValue::List(items) = value else {
        return Err(invalid(format!(
            "opts.{name} must be a list of {what}, got {}",
            value.type_name()
        )));
    };
    let mut names: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match item {
            OptionValue::Str(s) if !s.is_empty() && valid(&s) => {
                if names.contains(&s) {
                    return Err(invalid(format!(
                        "opts.{name}[{}]: \"{s}\" is listed twice",
                        i + 1
                    )));
                }
                names.push(s);
            }
            other => {
                return Err(invalid(format!(
                    "opts.{name}[{}] must be one of {what}, got {}",
                    i + 1,
                    match other {
                        OptionValue::Str(s) => format!("\"{s}\""),
                        other => other.type_name().to_string(),
                    }
                )))
            }
        }
    }
    Ok(names)
}

/// A duration in seconds; fractions allowed, at most a day so a typo cannot stall refreshes.
fn positive_seconds(name: &str, value: OptionValue) -> Result<Duration, ConfigError> {
    match value {
        OptionValue::Num(n) if n.is_finite() && n > 0.0 && n <= 86_400.0 => {
            Ok(Duration::from_secs_f64(n).max(Duration::from_millis(1)))
        }
        _ => Err(invalid(format!(
            "opts.{name} must be a positive number of seconds (at most 86400)"
        ))),
    }
}

/// A whole number of bytes, from 1 KiB (any smaller cap is a typo) to 4 GiB.
fn byte_count(name: &str, value: OptionValue) -> Result<usize, ConfigError> {
    match value {
        OptionValue::Num(n) if n.fract() == 0.0 && (1024.0..=4_294_967_296.0).contains(&n) => {
            Ok(n as usize)
        }
        _ => Err(invalid(format!(
            "opts.{name} must be a whole number of bytes from 1024 to 4294967296"
        ))),
    }
}

/// A list of IPs/CIDRs (a Lua array, or one string in the whitelist format).
fn networks(name: &str, value: OptionValue) -> Result<IpSet, ConfigError> {
    let items = match value {
        OptionValue::List(items) => items,
        OptionValue::Str(s) => vec![OptionValue::Str(s)],
        other => {
            return Err(invalid(format!(
                "opts.{name} must be a list of IP addresses or CIDRs, got {}",
                other.type_name()
            )))
        }
    };
    let mut nets: Vec<IpNet> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let OptionValue::Str(text) = item else {
            return Err(invalid(format!(
                "opts.{name}[{}] must be a string, got {}",
                i + 1,
                item.type_name()
            )));
        };
        for token in tokens(text.as_bytes()) {
            let (net, _) = parse_entry(token).map_err(|e| {
                invalid(format!(
                    "opts.{name}[{}] is not an IP address or CIDR: \"{}\" ({e})",
                    i + 1,
                    token.escape_ascii()
                ))
            })?;
            nets.push(net);
        }
    }
    Ok(IpSet::new(nets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use OptionValue::*;

    fn opts(pairs: &[(&str, OptionValue)]) -> Result<Config, ConfigError> {
        Config::from_options(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    fn err(pairs: &[(&str, OptionValue)]) -> String {
        opts(pairs).unwrap_err().to_string()
    }

    #[test]
    fn zero_configuration_gives_the_seed_setup() {
        let c = Config::default();
        assert_eq!(c.key, "gray");
        assert_eq!(c.refresh, Duration::from_secs(1));
        assert_eq!(c.channel.as_deref(), Some("gray:changed"));
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.redis_display, "redis://127.0.0.1:6379/0");
        assert_eq!(c.max_bytes, 32 << 20);
        assert_eq!(c.rules_key, "gray:rules");
        assert!(c.rule_sets.is_empty());
        assert_eq!(c.targets, ["@prod1", "@prod2-grey"]);
        assert_eq!(c.report, None);
        assert!(c.tracking);
        assert_eq!(c.resync, Duration::from_secs(300));
        assert_eq!(c.history_key(), "gray:history");
        assert_eq!(c.gateways_key(), "gray:gateways");
    }

    #[test]
    fn rule_sets_and_targets() {
        let c = opts(&[
            ("key", Str("canary".into())),
            (
                "rule_sets",
                List(vec![Str("shop".into()), Str("api".into())]),
            ),
            (
                "targets",
                List(vec![Str("@canary-b".into()), Str("@prod1".into())]),
            ),
        ])
        .unwrap();
        assert_eq!(c.rules_key, "canary:rules");
        assert_eq!(c.rule_sets, ["shop", "api"]);
        assert_eq!(c.targets, ["@prod1", "@prod2-grey", "@canary-b"]);
        assert_eq!(
            opts(&[("rules_key", Str("r".into()))]).unwrap().rules_key,
            "r"
        );
    }

    #[test]
    fn accepts_every_option() {
        let c = opts(&[
            ("redis", Str("redis://u:pw@127.0.0.1:6390/2".into())),
            ("key", Str("canary".into())),
            ("prod", Str("@stable".into())),
            ("gray", Str("@canary".into())),
            ("refresh", Num(0.25)),
            ("channel", Bool(false)),
            (
                "trusted_proxies",
                List(vec![Str("10.0.0.0/8".into()), Str("::1".into())]),
            ),
            ("timeout", Num(2.0)),
            ("max_bytes", Num(1048576.0)),
            ("report", Num(0.5)),
            ("tracking", Bool(false)),
            ("count_responses", Bool(true)),
            ("rollouts", Bool(true)),
            ("real_ip_header", Str("x-real-ip".into())),
        ])
        .unwrap();
        assert!(c.count_responses && !Config::default().count_responses);
        assert!(c.rollouts && !Config::default().rollouts);
        assert_eq!(c.real_ip_header, RealIpHeader::RealIp);
        assert_eq!(Config::default().real_ip_header, RealIpHeader::Either);
        assert_eq!(c.report, Some(Duration::from_millis(500)));
        assert!(!c.tracking);
        assert_eq!(
            opts(&[("report", Bool(true))]).unwrap().report,
            Some(crate::fleet::DEFAULT_REPORT_EVERY)
        );
        assert_eq!(c.max_bytes, 1 << 20);
        assert_eq!(c.refresh, Duration::from_millis(250));
        assert_eq!(c.channel, None);
        assert!(c.trusted_proxies.contains("10.1.1.1".parse().unwrap()));
        assert_eq!(c.redis_display, "redis://u:***@127.0.0.1:6390/2");
    }

    #[test]
    fn sentinels_name_the_group_and_the_role_to_read() {
        let c = Config::from_options(vec![
            (
                "sentinels".into(),
                List(vec![
                    Str("10.0.0.1:26379".into()),
                    Str("[::1]:26380".into()),
                ]),
            ),
            ("sentinel_master".into(), Str("grays".into())),
            ("read_from".into(), Str("replica".into())),
        ])
        .unwrap();
        let sentinels = c.sentinels.unwrap();
        assert_eq!(
            sentinels.addresses,
            [("10.0.0.1".to_string(), 26379), ("::1".to_string(), 26380)]
        );
        assert_eq!(
            (sentinels.master.as_str(), sentinels.role),
            ("grays", Role::Replica)
        );
        assert_eq!(
            c.redis_display,
            "redis://127.0.0.1:6379/0 (replica of \"grays\" by sentinels 10.0.0.1:26379, ::1:26380)"
        );
    }

    #[test]
    fn errors_name_the_option() {
        let cases: &[(&[(&str, OptionValue)], &str)] = &[
            (
                &[("refresh", Num(0.0))],
                "opts.refresh must be a positive number of seconds",
            ),
            (
                &[("sentinels", List(vec![Str("127.0.0.1:26379".into())]))],
                "opts.sentinels needs opts.sentinel_master",
            ),
            (
                &[("sentinel_master", Str("grays".into()))],
                "opts.sentinel_master needs opts.sentinels",
            ),
            (
                &[("read_from", Str("replica".into()))],
                "opts.read_from needs opts.sentinels and opts.sentinel_master",
            ),
            (
                &[("sentinel_password", Str("pw".into()))],
                "opts.sentinel_password needs opts.sentinels and opts.sentinel_master",
            ),
            (
                &[("sentinel_username", Str("gray".into()))],
                "opts.sentinel_username needs opts.sentinel_password",
            ),
            (
                &[("tls_ca", Str("/etc/ca.pem".into()))],
                "opts.tls_ca needs a rediss:// URL in opts.redis",
            ),
            (
                &[
                    ("redis", Str("VALKEYS://127.0.0.1/0".into())),
                    ("tls_cert", Str("/etc/client.pem".into())),
                ],
                "opts.tls_cert needs opts.tls_key",
            ),
            (
                &[("real_ip_header", Str("Forwarded".into()))],
                "opts.real_ip_header must be \"X-Forwarded-For\" or \"X-Real-IP\", got \"Forwarded\"",
            ),
            (
                &[
                    ("sentinels", List(vec![Str("127.0.0.1".into())])),
                    ("sentinel_master", Str("grays".into())),
                ],
                "opts.sentinels[1] must be \"host:port\", got \"127.0.0.1\"",
            ),
            (
                &[
                    ("sentinels", Str("127.0.0.1:26379".into())),
                    ("sentinel_master", Str("grays".into())),
                    ("read_from", Str("slave".into())),
                ],
                "opts.read_from must be \"master\" or \"replica\", got \"slave\"",
            ),
            (
                &[("rule_sets", List(vec![Str("guard".into())]))],
                "opts.rule_sets: \"guard\" cannot name a rule set: its key would be another rule set's guard hash",
            ),
            (
                &[("report", Str("yes".into()))],
                "opts.report must be true, false or a positive number of seconds",
            ),
            (
                &[("refresh", Num(-1.0))],
                "opts.refresh must be a positive number",
            ),
            (
                &[("refresh", Num(f64::NAN))],
                "opts.refresh must be a positive number",
            ),
            (
                &[("refresh", Str("1".into()))],
                "opts.refresh must be a positive number",
            ),
            (
                &[("timeout", Num(1e9))],
                "opts.timeout must be a positive number",
            ),
            (
                &[("key", Str("".into()))],
                "opts.key must be a non-empty string, got string",
            ),
            (
                &[("prod", Num(1.0))],
                "opts.prod must be a non-empty string, got number",
            ),
            (
                &[("gray", Other("function".into()))],
                "opts.gray must be a non-empty string, got function",
            ),
            (
                &[("channel", Bool(true))],
                "opts.channel must be a non-empty string or false",
            ),
            (
                &[("trusted_proxies", Num(1.0))],
                "opts.trusted_proxies must be a list of IP addresses or CIDRs, got number",
            ),
            (
                &[(
                    "trusted_proxies",
                    List(vec![Str("10.0.0.1".into()), Str("nope".into())]),
                )],
                "opts.trusted_proxies[2] is not an IP address or CIDR: \"nope\"",
            ),
            (
                &[("trusted_proxies", List(vec![Bool(true)]))],
                "opts.trusted_proxies[1] must be a string, got boolean",
            ),
            (
                &[("max_bytes", Num(100.0))],
                "opts.max_bytes must be a whole number of bytes from 1024",
            ),
            (
                &[("max_bytes", Num(2048.5))],
                "opts.max_bytes must be a whole number of bytes",
            ),
            (
                &[("max_bytes", Str("32m".into()))],
                "opts.max_bytes must be a whole number of bytes",
            ),
            (
                &[("targets", List(vec![Str("canary".into())]))],
                "opts.targets[1] must be one of named locations (\"@name\"), got \"canary\"",
            ),
            (
                &[("rule_sets", List(vec![Str("a".into()), Str("a".into())]))],
                "opts.rule_sets[2]: \"a\" is listed twice",
            ),
            (
                &[("rule_sets", Str("shop".into()))],
                "opts.rule_sets must be a list of names without spaces, got string",
            ),
            (
                &[("refrsh", Num(1.0))],
                "unknown option opts.refrsh (known: redis, key,",
            ),
        ];
        for (pairs, expected) in cases {
            let got = err(pairs);
            assert!(
                got.starts_with(expected),
                "{got:?} should start with {expected:?}"
            );
        }
    }

    #[test]
    fn trusted_proxies_accepts_one_string_list() {
        let c = opts(&[("trusted_proxies", Str("10.0.0.0/8, 192.168.0.0/16".into()))]).unwrap();
        assert!(c.trusted_proxies.contains("192.168.3.3".parse().unwrap()));
    }
}
