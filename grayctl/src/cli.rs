//! The command line: clap's types for grayctl's commands, flags and arguments, and the module's
//! options built from the connection flags (their names are the module's, as flags).

use clap::{Args, Parser, Subcommand};
use gray_core::config::{self, Config, ConfigError, OptionValue};

use crate::failure::{self, Failure};

/// Operate a gray (canary) rollout: the whitelist, rule sets, rollout plans, explain, history and
/// rollback.
///
/// Exit codes: 0 done, 1 refused (bad input, a value a gateway would reject, a conflicting
/// writer), 2 usage, 3 Redis unreachable. Messages on stderr say what was wrong.
#[derive(Parser)]
#[command(
    version,
    after_help = "Example:\n  grayctl --redis redis://127.0.0.1:6379/0 add 192.168.2.165 -m \"QA laptop\""
)]
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args)]
pub struct Connection {
    /// Redis URL, as the module's `redis` option
    #[arg(long, global = true, env = "GRAY_REDIS", default_value = config::DEFAULT_REDIS_URL)]
    redis: String,
    /// The whitelist key, as the module's `key` option
    #[arg(long, global = true, env = "GRAY_KEY", default_value = config::DEFAULT_KEY)]
    key: String,
    /// The default rule set's key, as `rules_key` [default: <key>:rules]
    #[arg(long, global = true, env = "GRAY_RULES_KEY")]
    rules_key: Option<String>,
    /// The channel changes are announced on, as `channel`; "false" announces none
    #[arg(long, global = true, env = "GRAY_CHANNEL", default_value = config::DEFAULT_CHANNEL)]
    channel: String,
    /// The gateways' named locations beyond prod and gray, as `targets` (comma-separated)
    #[arg(long, global = true, env = "GRAY_TARGETS", value_delimiter = ',')]
    targets: Vec<String>,
    /// The gateways' `prod` target
    #[arg(long, global = true, env = "GRAY_PROD", default_value = config::DEFAULT_PROD)]
    prod: String,
    /// The gateways' `gray` target
    #[arg(long, global = true, env = "GRAY_GRAY", default_value = config::DEFAULT_GRAY)]
    gray: String,
    /// PEM CA certificates that sign a rediss:// server's, as `tls_ca` [default: the system's]
    #[arg(long, global = true, env = "GRAY_TLS_CA")]
    tls_ca: Option<String>,
    /// PEM client certificate for mutual TLS, as `tls_cert` (with --tls-key)
    #[arg(long, global = true, env = "GRAY_TLS_CERT")]
    tls_cert: Option<String>,
    /// PEM private key of --tls-cert, as `tls_key`
    #[arg(long, global = true, env = "GRAY_TLS_KEY")]
    tls_key: Option<String>,
    /// Sentinels (host:port, comma-separated) to find the master through, as `sentinels`;
    /// --redis then gives only the credentials and database
    #[arg(long, global = true, env = "GRAY_SENTINELS", value_delimiter = ',')]
    sentinels: Vec<String>,
    /// The group the sentinels monitor, as `sentinel_master`
    #[arg(long, global = true, env = "GRAY_SENTINEL_MASTER")]
    sentinel_master: Option<String>,
    /// The sentinels' own username, as `sentinel_username` (with --sentinel-password)
    #[arg(long, global = true, env = "GRAY_SENTINEL_USERNAME")]
    sentinel_username: Option<String>,
    /// The sentinels' own password, as `sentinel_password`
    #[arg(
        long,
        global = true,
        env = "GRAY_SENTINEL_PASSWORD",
        hide_env_values = true
    )]
    sentinel_password: Option<String>,
    /// Seconds to wait for Redis (connect, each reply)
    #[arg(long, global = true, default_value_t = config::DEFAULT_TIMEOUT.as_secs_f64())]
    timeout: f64,
    /// A note kept with the change in the history
    #[arg(short, long, global = true)]
    pub message: Option<String>,
    /// JSON output, for scripts
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show the whitelist, parsed as the gateways parse it
    #[command(after_help = "Example:\n  grayctl list --json")]
    List,
    /// Add entries (addresses or CIDRs) to the whitelist
    #[command(after_help = "Example:\n  grayctl add 192.168.2.165 10.20.0.0/16 -m \"QA team\"")]
    Add {
        #[arg(required = true)]
        entries: Vec<String>,
    },
    /// Remove entries from the whitelist
    #[command(after_help = "Example:\n  grayctl remove 192.168.2.165")]
    Remove {
        #[arg(required = true)]
        entries: Vec<String>,
    },
    /// Replace the whitelist with a file's entries (one or more a line, # comments; - for stdin)
    #[command(after_help = "Example:\n  grayctl import testers.txt -m \"release 42 testers\"")]
    Import {
        file: String,
        /// Allow a file with no entries (it empties the list)
        #[arg(long)]
        allow_empty: bool,
    },
    /// Print the whitelist's entries one a line, as import reads them
    #[command(after_help = "Example:\n  grayctl export > testers.txt")]
    Export,
    /// Show, check or set a rule set
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Set a rule's percentage (one ramp step); lowering it needs --down
    #[command(after_help = "Example:\n  grayctl percent ramp 10 -m \"ramp step 2\"")]
    Percent {
        /// The rule's name in the rule set
        rule: String,
        /// Its new percentage, 0 to 100 in steps of 0.01 (a ramp is replaced by it)
        percent: f64,
        /// Allow lowering it (takes users back out of the target)
        #[arg(long)]
        down: bool,
        #[command(flatten)]
        set: SetName,
        #[command(flatten)]
        force: Force,
    },
    /// The kill switch: everyone to the default target, overrides included
    #[command(after_help = "Example:\n  grayctl off -m \"5xx on the canary\"")]
    Off {
        #[command(flatten)]
        set: SetName,
        #[command(flatten)]
        force: Force,
    },
    /// Undo `off`
    #[command(after_help = "Example:\n  grayctl on")]
    On {
        #[command(flatten)]
        set: SetName,
    },
    /// Decide a request offline against what is in Redis now, and say why
    #[command(
        after_help = "Example:\n  grayctl explain --ip 10.0.0.7 --cookie uid=u1001 --header X-User-Id:150000"
    )]
    Explain(ExplainArgs),
    /// The changes grayctl made, newest first
    #[command(after_help = "Example:\n  grayctl history --limit 5")]
    History {
        /// Show at most this many
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// The gateways that report (`report = true` in configure) and whether each serves the latest
    #[command(
        after_help = "Example:\n  grayctl status\n  grayctl status --prune   # forget gateways that stopped reporting"
    )]
    Status {
        /// Remove the reports of gateways that stopped reporting
        #[arg(long)]
        prune: bool,
    },
    /// A live view, redrawn every second: the gateways (current, behind, gone) and a rule set's
    /// rollout plan with its last checks
    #[command(after_help = "Example:\n  grayctl top\n  grayctl top --set checkout")]
    Top {
        #[command(flatten)]
        set: SetName,
    },
    /// Wait until every reporting gateway serves what Redis holds now; exit 1 at the timeout
    #[command(
        after_help = "Example:\n  grayctl percent ramp 10 && grayctl wait --timeout 30 && echo live everywhere"
    )]
    Wait {
        /// Seconds to wait at most
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Show or reset guards: a rule whose target answers too many 5xx stops matching on the
    /// gateway that saw it (`"guard"` in the rule set)
    #[command(subcommand)]
    Guard(GuardCommand),
    /// Restore the value a key had before history entry N (1, the default, is the latest change)
    #[command(
        after_help = "Example:\n  grayctl rollback      # undo the last change\n  grayctl rollback 3"
    )]
    Rollback {
        #[arg(default_value_t = 1)]
        entry: usize,
        #[command(flatten)]
        force: Force,
    },
    /// Roll a rule's percentage out in steps, each held and judged on the whole fleet's
    /// responses: promoted on passing checks, aborted on failing ones (gateways with
    /// `rollouts = true` drive it)
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Start a plan for one rule: its percentage goes to the first step at once
    #[command(
        after_help = "Example:\n  grayctl rollout start canary --steps 1,5,25,50,100 --hold 10m --interval 10s \\\n      --max-error-rate 1 --max-p99 0.5 --min-requests 500 --failure-limit 3 -m \"release 43\""
    )]
    Start(StartArgs),
    /// The plan: step, percent, state, driver and the figures of the last checks
    #[command(after_help = "Example:\n  grayctl rollout status --watch")]
    Status {
        /// Print it again every second until the plan ends
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        set: SetName,
    },
    /// Freeze the step: the hold stops counting; checks still run and still abort
    Pause {
        #[command(flatten)]
        set: SetName,
    },
    /// Go on from a pause, the hold where it stood
    Resume {
        #[command(flatten)]
        set: SetName,
    },
    /// Stop the plan: the rule's percentage goes to 0, its users to the default target
    Abort {
        #[command(flatten)]
        set: SetName,
    },
    /// Jump to the last step: the plan is done
    Promote {
        #[command(flatten)]
        set: SetName,
    },
}

#[derive(Args)]
pub struct StartArgs {
    /// The rule to roll out: it must carry a plain "percent" and route elsewhere than the default
    pub rule: String,
    /// Increasing percentages (steps of 0.01; the last 1 to 100)
    #[arg(long, value_delimiter = ',', required = true)]
    pub steps: Vec<f64>,
    /// How long each step lasts at least (10s, 1.5s, 5m, 1h)
    #[arg(long, default_value = "10m")]
    pub hold: String,
    /// Time between checks, and the window each judges (at least 1s)
    #[arg(long, default_value = "10s")]
    pub interval: String,
    /// Percentage points the target's 5xx share may exceed the default target's by
    #[arg(long, required = true)]
    pub max_error_rate: f64,
    /// Seconds the target's p99 may reach (from the latency histogram)
    #[arg(long, value_name = "SECONDS")]
    pub max_p99: Option<f64>,
    /// Responses to the target a check needs to be conclusive
    #[arg(long, default_value_t = gray_core::rollout::DEFAULT_MIN_REQUESTS)]
    pub min_requests: u64,
    /// Failed checks in a row that abort
    #[arg(long, default_value_t = gray_core::rollout::DEFAULT_FAILURE_LIMIT)]
    pub failure_limit: u32,
    #[command(flatten)]
    pub set: SetName,
}

#[derive(Args, Clone, Copy)]
pub struct Force {
    /// Change a rule set a rollout plan drives: the plan is paused first
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand)]
pub enum RulesCommand {
    /// Print the rule set as stored
    #[command(after_help = "Example:\n  grayctl rules show --set mobile")]
    Show {
        #[command(flatten)]
        set: SetName,
    },
    /// Validate a rule set file and say what each rule does (- for stdin); writes nothing
    #[command(after_help = "Example:\n  grayctl rules check release-42.json")]
    Check { file: String },
    /// Validate a rule set file and make it the live one
    #[command(after_help = "Example:\n  grayctl rules set release-42.json -m \"release 42\"")]
    Set {
        file: String,
        #[command(flatten)]
        set: SetName,
        #[command(flatten)]
        force: Force,
    },
}

#[derive(Subcommand)]
pub enum GuardCommand {
    /// The trips gateways recorded (<rule set key>:guard) and the resets
    #[command(after_help = "Example:\n  grayctl guard show")]
    Show {
        #[command(flatten)]
        set: SetName,
    },
    /// Let a tripped rule match again on every gateway, with a fresh window
    #[command(after_help = "Example:\n  grayctl guard reset canary -m \"fixed in 42.1\"")]
    Reset {
        rule: String,
        #[command(flatten)]
        set: SetName,
    },
}

#[derive(Args, Clone)]
pub struct SetName {
    /// A named rule set (the module's `rule_sets`), <rules_key>:<NAME>
    #[arg(long = "set", value_name = "NAME")]
    pub name: Option<String>,
}

impl Connection {
    pub fn config(&self) -> Result<Config, Failure> {
        let s = |v: &str| OptionValue::Str(v.to_string());
        let mut options = vec![
            ("redis".to_string(), s(&self.redis)),
            ("key".to_string(), s(&self.key)),
            ("prod".to_string(), s(&self.prod)),
            ("gray".to_string(), s(&self.gray)),
            ("timeout".to_string(), OptionValue::Num(self.timeout)),
            (
                "channel".to_string(),
                if self.channel == "false" {
                    OptionValue::Bool(false)
                } else {
                    s(&self.channel)
                },
            ),
            (
                "targets".to_string(),
                OptionValue::List(self.targets.iter().map(|t| s(t)).collect()),
            ),
        ];
        if let Some(rules_key) = &self.rules_key {
            options.push(("rules_key".to_string(), s(rules_key)));
        }
        for (name, value) in [
            ("tls_ca", &self.tls_ca),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
            ("sentinel_master", &self.sentinel_master),
            ("sentinel_username", &self.sentinel_username),
            ("sentinel_password", &self.sentinel_password),
        ] {
            if let Some(value) = value {
                options.push((name.to_string(), s(value)));
            }
        }
        if !self.sentinels.is_empty() {
            options.push((
                "sentinels".to_string(),
                OptionValue::List(self.sentinels.iter().map(|a| s(a)).collect()),
            ));
        }
        Config::from_options(options).map_err(|e| self.flag_error(&e))
    }

    /// An option's error, the module's option names in it written as grayctl's flags.
    pub fn flag_error(&self, e: &ConfigError) -> Failure {
        let mut message = e.to_string();
        for name in config::OPTION_NAMES {
            message = message.replace(
                &format!("opts.{name}"),
                &format!("--{}", name.replace('_', "-")),
            );
        }
        failure::refused(message)
    }
}

#[derive(Args)]
pub struct ExplainArgs {
    /// The client address (as the gateway derives it)
    #[arg(long)]
    pub ip: String,
    /// A request header, NAME:VALUE (repeatable)
    #[arg(long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// A cookie, NAME=VALUE (repeatable)
    #[arg(long = "cookie", value_name = "NAME=VALUE")]
    pub cookies: Vec<String>,
    /// A query argument, NAME=VALUE (repeatable)
    #[arg(long = "arg", value_name = "NAME=VALUE")]
    pub args: Vec<String>,
    /// An nginx variable, NAME=VALUE (repeatable)
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    #[command(flatten)]
    pub set: SetName,
}
