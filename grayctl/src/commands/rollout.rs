//! The rollout commands: start a plan for one rule, show it, pause, resume, abort or promote it;
//! and the refusal of a manual edit of a rule set a plan drives. Every move goes through
//! gray-io's `rollout::begin` / `Moving::write`, the path the driving gateways take.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use gray_core::clock;
use gray_core::history::Subject;
use gray_core::keys;
use gray_core::rollout::judge::{thousands, Verdict};
use gray_core::rollout::{self, Plan, Settings, State};
use gray_core::rules::schema;
use gray_core::stored::KeyValue;
use gray_io::rollout::Moving;
use serde_json::{json, Value};

use super::Context;
use crate::cli::{SetName, StartArgs};
use crate::failure::{refused, written, Failure};
use crate::store::{fail, Store};

/// What an operator does to a running plan.
#[derive(Clone, Copy)]
pub(super) enum Action {
    Pause,
    Resume,
    Abort,
    Promote,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Promote => "promote",
        }
    }
}

fn now() -> f64 {
    clock::unix_seconds(SystemTime::now())
}

fn begin<'s>(store: &'s mut Store, key: &str) -> Result<Moving<'s>, Failure> {
    let history_key = store.config.history_key();
    store.begin_plan(&history_key, key)
}

fn settings(args: &StartArgs) -> Result<Settings, Failure> {
    let duration = |flag: &str, text: &str| {
        rollout::parse_duration(text).map_err(|e| refused(format!("--{flag}: {e}")))
    };
    let steps = args
        .steps
        .iter()
        .map(|&p| rollout::hundredths(p).map_err(|e| refused(format!("--steps: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let settings = Settings {
        steps,
        hold: duration("hold", &args.hold)?,
        interval: duration("interval", &args.interval)?,
        gates: rollout::judge::Gates {
            max_error_rate: args.max_error_rate,
            max_p99: args.max_p99,
            min_requests: args.min_requests,
        },
        failure_limit: args.failure_limit,
    };
    settings.validate().map_err(refused)?;
    Ok(settings)
}

pub(super) fn start(ctx: &Context, args: &StartArgs) -> Result<(), Failure> {
    let key = ctx.rule_set_key(&args.set)?;
    let settings = settings(args)?;
    let mut store = ctx.store()?;
    let moving = begin(&mut store, &key)?;
    if let Some(running) = moving.plan.as_ref().filter(|p| p.state.active()) {
        let why = format!(
            "rule set {key} already has a plan: {}; `grayctl rollout abort` it first",
            running.summary()
        );
        moving.give_up().map_err(|e| fail(&key, e))?;
        return Err(refused(why));
    }
    let compiled = match &moving.rule_set {
        KeyValue::String(text) => schema::compile(text, &ctx.config.targets)
            .map_err(|e| format!("the rule set in {key} is refused by the gateways: {e}")),
        _ => Err(format!("there is no rule set in key {key} to roll out")),
    };
    let started = compiled.and_then(|rules| {
        Plan::start(
            settings,
            &rules,
            &args.rule,
            now(),
            crate::store::who(),
            ctx.message.clone(),
        )
    });
    let (plan, first) = match started {
        Ok(started) => started,
        Err(why) => {
            moving.give_up().map_err(|e| fail(&key, e))?;
            return Err(refused(why));
        }
    };
    let record = ctx.record(&key, Subject::RuleSet, plan.history_command("start", first));
    moving
        .write(
            &plan,
            Some((first, record)),
            &ctx.config.targets,
            ctx.config.channel.as_deref(),
        )
        .map_err(|e| fail(&key, e))?;
    print(ctx, &key, &plan, None)
}

pub(super) fn act(ctx: &Context, set: &SetName, action: Action) -> Result<(), Failure> {
    let key = ctx.rule_set_key(set)?;
    let mut store = ctx.store()?;
    let moving = begin(&mut store, &key)?;
    let Some(mut plan) = moving.plan.clone() else {
        moving.give_up().map_err(|e| fail(&key, e))?;
        return Err(refused(format!("rule set {key} has no rollout plan")));
    };
    let by = crate::store::who();
    let why = |what: &str| match &ctx.message {
        Some(message) => format!("{what} by {by}: {message}"),
        None => format!("{what} by {by}"),
    };
    let at = now();
    let moved = match action {
        Action::Pause => plan.pause(at).map(|()| None),
        Action::Resume => plan.resume(at).map(|()| None),
        Action::Abort => plan.abort(why("aborted"), at).map(Some),
        Action::Promote => plan.promote(why("promoted"), at).map(Some),
    };
    let percent = match moved {
        Ok(percent) => percent,
        Err(e) => {
            moving.give_up().map_err(|e| fail(&key, e))?;
            return Err(refused(format!("{key}: {e}")));
        }
    };
    let percent = percent.map(|p| {
        let command = plan.history_command(action.verb(), p);
        (p, ctx.record(&key, Subject::RuleSet, command))
    });
    moving
        .write(
            &plan,
            percent,
            &ctx.config.targets,
            ctx.config.channel.as_deref(),
        )
        .map_err(|e| fail(&key, e))?;
    print(ctx, &key, &plan, None)
}

/// Refuses a manual edit of rule set `key` while a plan drives it, unless `force`, which pauses
/// the plan first. The edit itself then watches the plan key: a plan started meanwhile makes it
/// conflict.
pub(super) fn check_manual_edit(ctx: &Context, key: &str, force: bool) -> Result<(), Failure> {
    let mut store = ctx.store()?;
    let moving = begin(&mut store, key)?;
    let Some(mut plan) = moving.plan.clone().filter(|p| p.state.active()) else {
        return moving.give_up().map_err(|e| fail(key, e));
    };
    if !force {
        moving.give_up().map_err(|e| fail(key, e))?;
        return Err(refused(format!(
            "rule set {key} is driven by a rollout plan ({}); `grayctl rollout pause` or `abort` it, or pass --force to pause it and make this change",
            plan.summary()
        )));
    }
    if plan.state != State::Paused {
        plan.pause(now()).map_err(refused)?;
        moving
            .write(
                &plan,
                None,
                &ctx.config.targets,
                ctx.config.channel.as_deref(),
            )
            .map_err(|e| fail(key, e))?;
        eprintln!("{key}: rollout plan paused (--force)");
    } else {
        moving.give_up().map_err(|e| fail(key, e))?;
    }
    Ok(())
}

/// Rule set `key`'s plan, if it has one, and who holds its driver's lease.
fn read_plan(store: &mut Store, key: &str) -> Result<Option<(Plan, Option<String>)>, Failure> {
    let plan_key = keys::rollout(key);
    let plan = gray_io::rollout::parse_plan(&plan_key, &store.read(&plan_key)?).map_err(refused)?;
    let Some(plan) = plan else {
        return Ok(None);
    };
    let lease = match store.read(&keys::rollout_lease(key))? {
        KeyValue::String(holder) => Some(String::from_utf8_lossy(&holder).into_owned()),
        _ => None,
    };
    Ok(Some((plan, lease)))
}

/// Rule set `key`'s plan as `rollout status` shows it now, into `out` (`top`).
pub(super) fn write_now(out: &mut dyn Write, store: &mut Store, key: &str) -> Result<(), Failure> {
    match read_plan(store, key)? {
        Some((plan, lease)) => write_plan(out, key, &plan, Some(lease), now()),
        None => writeln!(out, "{key}: no rollout plan"),
    }
    .map_err(written)
}

pub(super) fn status(ctx: &Context, set: &SetName, watch: bool) -> Result<(), Failure> {
    let key = ctx.rule_set_key(set)?;
    let mut store = ctx.store()?;
    loop {
        let Some((plan, lease)) = read_plan(&mut store, &key)? else {
            return Err(refused(format!("rule set {key} has no rollout plan")));
        };
        print(ctx, &key, &plan, Some(lease))?;
        if !watch || !plan.state.active() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
        if !ctx.json {
            println!();
        }
    }
}

/// Prints the plan; `lease` is the driver's lease as read (`Some(None)`: nobody holds it).
fn print(
    ctx: &Context,
    key: &str,
    plan: &Plan,
    lease: Option<Option<String>>,
) -> Result<(), Failure> {
    let at = now();
    if ctx.json {
        let mut value = serde_json::to_value(plan).expect("a plan is plain data");
        let object = value.as_object_mut().expect("a plan is an object");
        object.insert("key".into(), json!(key));
        object.insert("state".into(), json!(plan.state.as_str()));
        object.insert("step".into(), json!(plan.step + 1));
        object.insert("percent".into(), json!(plan.percent().percent()));
        object.insert("held".into(), json!(plan.held(at)));
        if let Some(lease) = lease {
            object.insert("lease".into(), json!(lease));
        }
        object.insert("why".into(), json!(why(plan, at)));
        println!("{}", Value::Object(object.clone()));
        return Ok(());
    }
    write_plan(&mut std::io::stdout().lock(), key, plan, lease, at).map_err(written)
}

/// The plan as `rollout status` shows it, into `out`.
fn write_plan(
    out: &mut dyn Write,
    key: &str,
    plan: &Plan,
    lease: Option<Option<String>>,
    at: f64,
) -> io::Result<()> {
    let settings = &plan.settings;
    let steps: Vec<String> = settings
        .steps
        .iter()
        .map(|&h| format!("{}", f64::from(h) / 100.0))
        .collect();
    writeln!(
        out,
        "{key}: rollout of rule \"{}\" (plan {}, started {} by {}{})",
        plan.rule,
        plan.id,
        time(plan.started_at),
        plan.by,
        plan.message
            .as_ref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    )?;
    let state = plan.state.as_str();
    let why = why(plan, at);
    match why
        .strip_prefix(state)
        .and_then(|rest| rest.strip_prefix(": "))
    {
        Some(rest) => writeln!(out, "  state    {state}: {rest}")?,
        None => writeln!(out, "  state    {state}: {why}")?,
    }
    writeln!(
        out,
        "  step     {} of {}: {}% (steps {}%)",
        plan.step + 1,
        settings.steps.len(),
        plan.percent().percent(),
        steps.join(", ")
    )?;
    writeln!(
        out,
        "  held     {} of {}, {} of {} responses judged",
        seconds(plan.held(at)),
        seconds(settings.hold),
        thousands(plan.step_responses),
        thousands(settings.gates.min_requests)
    )?;
    writeln!(
        out,
        "  checks   every {}: 5xx at most {} point{} over the default target's{}, at least {} responses; {} failed in a row abort",
        seconds(settings.interval),
        settings.gates.max_error_rate,
        if settings.gates.max_error_rate == 1.0 { "" } else { "s" },
        settings
            .gates
            .max_p99
            .map(|p| format!(", p99 at most {p}s"))
            .unwrap_or_default(),
        thousands(settings.gates.min_requests),
        settings.failure_limit
    )?;
    if let Some(lease) = lease {
        let driver = match (&lease, plan.state.active()) {
            (Some(holder), _) => holder.clone(),
            (None, true) => {
                "none: no gateway holds the lease (configure{ rollouts = true } on the gateways)"
                    .into()
            }
            (None, false) => "none".into(),
        };
        writeln!(out, "  driver   {driver}")?;
    }
    if !plan.checks.is_empty() {
        writeln!(out, "  last checks, newest first:")?;
        for check in plan.checks.iter().rev() {
            writeln!(
                out,
                "    {}  {:<12}  {}",
                time(check.at),
                check.verdict.as_str(),
                check.why
            )?;
        }
    }
    Ok(())
}

/// Why the plan stands where it does, in words.
fn why(plan: &Plan, at: f64) -> String {
    match plan.state {
        State::Aborted | State::Done => format!(
            "{} at {}",
            plan.reason.as_deref().unwrap_or("ended"),
            time(plan.ended_at.unwrap_or(at))
        ),
        State::Paused => "paused: checks still run and still abort".into(),
        State::Holding | State::Running => match plan.checks.last() {
            Some(check) if check.verdict == Verdict::Inconclusive => check.why.clone(),
            Some(check) => format!("last check {}", check.verdict.as_str()),
            None => "no check yet".into(),
        },
    }
}

fn time(unix: f64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(unix.max(0.0));
    humantime::format_rfc3339_seconds(at).to_string()
}

fn seconds(s: f64) -> String {
    if s >= 3600.0 && s % 3600.0 == 0.0 {
        format!("{}h", s / 3600.0)
    } else if s >= 60.0 && s % 60.0 == 0.0 {
        format!("{}m", s / 60.0)
    } else {
        format!("{:.1}s", s).replace(".0s", "s")
    }
}
