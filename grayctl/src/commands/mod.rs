//! What each command does, by noun (whitelist, rules, explain, history, fleet, guard), on top of
//! the store (Redis), the edits (pure) and the core. Every command reads its options into a
//! [`Context`] first.

mod explain;
mod fleet;
mod guard;
mod history;
mod rollout;
mod rules;
mod top;
mod whitelist;

use std::io::Read as _;
use std::time::SystemTime;

use gray_core::clock;
use gray_core::config::Config;
use gray_core::history::{Record, Subject};
use gray_core::keys;
use gray_io::endpoint::Endpoint;
use serde_json::Value;

use crate::cli::{Cli, Command, GuardCommand, RolloutCommand, RulesCommand, SetName};
use crate::failure::{refused, Failure};
use crate::store::{who, Store};
use crate::whitelist_edit;

struct Context {
    config: Config,
    endpoint: Endpoint,
    json: bool,
    message: Option<String>,
}

impl Context {
    /// The key of rule set `set`, its name checked as the module checks `rule_sets`.
    fn rule_set_key(&self, set: &SetName) -> Result<String, Failure> {
        if let Some(name) = &set.name {
            keys::check_rule_set_name(name).map_err(|e| refused(format!("--set {e}")))?;
        }
        Ok(self.config.rule_set_key(set.name.as_deref()))
    }

    fn store(&self) -> Result<Store, Failure> {
        Store::open(self.config.clone(), &self.endpoint)
    }

    fn record(&self, key: &str, subject: Subject, command: String) -> Record {
        Record {
            time: clock::unix_seconds(SystemTime::now()) as u64,
            who: who(),
            command,
            message: self.message.clone(),
            key: key.to_string(),
            subject,
        }
    }
}

pub fn run(cli: Cli) -> Result<(), Failure> {
    let config = cli.connection.config()?;
    let endpoint = Endpoint::new(&config).map_err(|e| cli.connection.flag_error(&e))?;
    let ctx = Context {
        config,
        endpoint,
        json: cli.connection.json,
        message: cli.connection.message.clone(),
    };
    match cli.command {
        Command::List => whitelist::list(&ctx),
        Command::Export => whitelist::export(&ctx),
        Command::Add { entries } => whitelist::edit(&ctx, "add", &entries, whitelist_edit::add),
        Command::Remove { entries } => {
            whitelist::edit(&ctx, "remove", &entries, whitelist_edit::remove)
        }
        Command::Import { file, allow_empty } => {
            let text = read_file(&file)?;
            let lines: Vec<String> = whitelist_edit::import_lines(&text)
                .map(str::to_string)
                .collect();
            if lines.is_empty() && !allow_empty {
                return Err(refused(format!(
                    "{file} has no entries: importing it would empty the list; pass --allow-empty to do that"
                )));
            }
            whitelist::edit(
                &ctx,
                &format!("import {file}"),
                &lines,
                whitelist_edit::replace,
            )
        }
        Command::Rules(RulesCommand::Show { set }) => rules::show(&ctx, &set),
        Command::Rules(RulesCommand::Check { file }) => rules::check(&ctx, &file),
        Command::Rules(RulesCommand::Set { file, set, force }) => {
            let text = read_file(&file)?;
            rollout::check_manual_edit(&ctx, &ctx.rule_set_key(&set)?, force.force)?;
            rules::edit(&ctx, &set, format!("rules set {file}"), |_current| {
                Ok(text.clone().into_bytes())
            })
        }
        Command::Percent {
            rule,
            percent,
            down,
            set,
            force,
        } => {
            let key = ctx.rule_set_key(&set)?;
            rollout::check_manual_edit(&ctx, &key, force.force)?;
            rules::edit(&ctx, &set, format!("percent {rule} {percent}"), |current| {
                let mut doc = rules::stored(&key, current)?;
                crate::rules_edit::set_percent(&mut doc, &rule, percent, down)?;
                pretty(&doc)
            })
        }
        Command::Off { set, force } => {
            rollout::check_manual_edit(&ctx, &ctx.rule_set_key(&set)?, force.force)?;
            rules::kill_switch(&ctx, &set, false)
        }
        Command::On { set } => rules::kill_switch(&ctx, &set, true),
        Command::Explain(args) => explain::explain(&ctx, &args),
        Command::History { limit } => history::show(&ctx, limit),
        Command::Rollback { entry, force } => history::rollback(&ctx, entry, force.force),
        Command::Status { prune } => fleet::status(&ctx, prune),
        Command::Wait { timeout } => fleet::wait(&ctx, timeout),
        Command::Top { set } => top::top(&ctx, &set),
        Command::Guard(GuardCommand::Show { set }) => guard::show(&ctx, &set),
        Command::Guard(GuardCommand::Reset { rule, set }) => guard::reset(&ctx, &set, &rule),
        Command::Rollout(RolloutCommand::Start(args)) => rollout::start(&ctx, &args),
        Command::Rollout(RolloutCommand::Status { watch, set }) => {
            rollout::status(&ctx, &set, watch)
        }
        Command::Rollout(RolloutCommand::Pause { set }) => {
            rollout::act(&ctx, &set, rollout::Action::Pause)
        }
        Command::Rollout(RolloutCommand::Resume { set }) => {
            rollout::act(&ctx, &set, rollout::Action::Resume)
        }
        Command::Rollout(RolloutCommand::Abort { set }) => {
            rollout::act(&ctx, &set, rollout::Action::Abort)
        }
        Command::Rollout(RolloutCommand::Promote { set }) => {
            rollout::act(&ctx, &set, rollout::Action::Promote)
        }
    }
}

fn read_file(file: &str) -> Result<String, Failure> {
    let mut text = String::new();
    let read = if file == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(file).map(|t| text = t)
    };
    read.map_err(|e| refused(format!("cannot read {file}: {e}")))?;
    Ok(text)
}

fn pretty(doc: &Value) -> Result<Vec<u8>, Failure> {
    Ok(gray_core::rules::edit::render(doc))
}
