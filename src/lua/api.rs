//! The Lua API's Rust half: the `core` functions gray.lua calls (configure and start, status,
//! explain, metrics, the plan of a rule set's inputs, the log queue, the guards' timer). They run
//! on nginx's event loop, off the request path's FFI functions ([`super::ffi`]), and report
//! failures as `nil, err` values for the glue to raise or log, so users see plain messages; mlua
//! turns a panic here into a Lua error.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mlua::prelude::*;

use super::ffi::{ADDRESS, CDEF, MAX_HEADERS};
use crate::dashboard;
use crate::log::Level;
use crate::metrics;
use crate::minting;
use crate::refresher;
use crate::request_end;
use crate::state::SHARED;
use gray_core::clock::{unix_now, unix_seconds};
use gray_core::config::{Config, OptionValue};
use gray_core::decision::{code, Target};
use gray_core::rules::MAX_INPUTS;
use gray_core::snapshot::Snapshot;
use gray_io::endpoint::Endpoint;

/// A configuration cycle's options, held by that cycle's Lua VM. nginx runs init_by_lua for a new
/// cycle in a new VM and closes it if it rejects the configuration, so options kept here belong
/// to the cycle nginx actually runs, also in workers the master respawns later.
#[derive(Clone)]
pub(super) struct Options(Arc<(Config, Endpoint)>);

impl Options {
    fn config(&self) -> &Config {
        &self.0 .0
    }

    /// The defaults, as every VM starts with them.
    pub(super) fn defaults() -> Options {
        let config = Config::default();
        let endpoint = Endpoint::new(&config).expect("the default Redis URL is valid");
        Options(Arc::new((config, endpoint)))
    }
}

impl LuaUserData for Options {}

/// The process whose refresher is running: a forked worker has a new pid and starts its own.
static STARTED_PID: AtomicU32 = AtomicU32::new(0);
/// The options this process's refresher runs with. Request VMs under `lua_code_cache off` hold
/// only the defaults; what they route by is what the refresher was started with.
static RUNNING: Mutex<Option<Options>> = Mutex::new(None);
/// How long `init_worker` waits for the first load beyond the Redis timeouts it is bounded by.
const FIRST_LOAD_GRACE: Duration = Duration::from_millis(100);

fn running_here() -> bool {
    STARTED_PID.load(Ordering::SeqCst) == std::process::id()
}

/// The options in force: the running refresher's in a process that started one, else the VM's.
fn active(options: &Options) -> Options {
    if running_here() {
        if let Some(running) = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return running.clone();
        }
    }
    options.clone()
}

fn option_value(value: LuaValue) -> OptionValue {
    match value {
        LuaValue::String(s) => match s.to_str() {
            Ok(s) => OptionValue::Str(s.to_string()),
            Err(_) => OptionValue::Other("non-UTF-8 string".into()),
        },
        LuaValue::Integer(n) => OptionValue::Num(n as f64),
        LuaValue::Number(n) => OptionValue::Num(n),
        LuaValue::Boolean(b) => OptionValue::Bool(b),
        LuaValue::Table(t) => {
            let items: Vec<OptionValue> = t
                .sequence_values::<LuaValue>()
                .map(|v| v.map_or(OptionValue::Other("?".into()), option_value))
                .collect();
            // Keys beyond 1..n mean a map where a list was meant: not a list, never an empty one.
            if t.pairs::<LuaValue, LuaValue>().count() == items.len() {
                OptionValue::List(items)
            } else {
                OptionValue::Other("table with non-list keys".into())
            }
        }
        other => OptionValue::Other(other.type_name().to_string()),
    }
}

/// core.configure(opts) -> options | nil, err
fn configure(_: &Lua, opts: LuaTable) -> LuaResult<(Option<Options>, Option<String>)> {
    let mut options = Vec::new();
    for pair in opts.pairs::<LuaValue, LuaValue>() {
        let (name, value) = pair?;
        let LuaValue::String(name) = name else {
            return Ok((
                None,
                Some(format!(
                    "opts keys must be option names, got a {}",
                    name.type_name()
                )),
            ));
        };
        options.push((name.to_string_lossy(), option_value(value)));
    }
    let checked = Config::from_options(options)
        .and_then(|config| Endpoint::new(&config).map(|endpoint| (config, endpoint)));
    match checked {
        Ok(checked) => Ok((Some(Options(Arc::new(checked))), None)),
        Err(e) => Ok((None, Some(e.to_string()))),
    }
}

/// core.start(options, wait) -> started [, note] | nil, err. `started` is false when this process
/// already runs a refresher (a second VM of the same worker, as under `lua_code_cache off`): one
/// refresher per process. With `wait`, returns once the first load attempt finished, bounded by
/// the Redis timeouts; the note says when that bound ran out.
fn start(
    _: &Lua,
    (options, wait, worker): (LuaUserDataRef<Options>, bool, Option<usize>),
) -> LuaResult<(Option<bool>, Option<String>)> {
    let pid = std::process::id();
    if STARTED_PID.swap(pid, Ordering::SeqCst) == pid {
        return Ok((Some(false), None));
    }
    // Before the refresher publishes anything: its snapshots' series and its state are this
    // worker's.
    let counting = metrics::join(worker.unwrap_or(0));
    let config = Arc::new(options.config().clone());
    request_end::set_count_responses(config.count_responses);
    SHARED.snapshot.store(Arc::new(Snapshot {
        trusted_proxies: Arc::new(config.trusted_proxies.clone()),
        real_ip_header: config.real_ip_header,
        targets: config.targets.clone().into(),
        ..Snapshot::default()
    }));
    let first_load = match refresher::spawn(config.clone(), options.0 .1.clone(), &SHARED) {
        Ok(first_load) => first_load,
        Err(e) => {
            // Not running: a later call may try again.
            STARTED_PID.store(0, Ordering::SeqCst);
            let error = format!("failed to start the refresher thread: {e}");
            SHARED.update_status(|s| {
                s.last_error = Some(error.clone());
                s.last_error_at = Some(SystemTime::now());
            });
            return Ok((None, Some(error)));
        }
    };
    *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = Some(options.clone());
    match (metrics::shared(), counting) {
        (true, true) => {}
        (true, false) => SHARED.log(
            Level::Err,
            format!(
                "worker id {} is beyond the {} the metrics region has room for: this worker's requests are not counted",
                worker.unwrap_or(0),
                crate::region::MAX_WORKERS
            ),
        ),
        (false, _) => SHARED.log(Level::Notice, NOT_SHARED.into()),
    }
    if wait {
        // A worker accepts nothing until this returns: bounded by `timeout` as a whole, however
        // many connects and reads the first load takes; it goes on in the background after.
        let bound = config.timeout + FIRST_LOAD_GRACE;
        if first_load.recv_timeout(bound).is_err() {
            return Ok((
                Some(true),
                Some(format!(
                    "no answer from redis within {:.1}s; serving before the first load, which continues in the background",
                    bound.as_secs_f64()
                )),
            ));
        }
    }
    Ok((Some(true), None))
}

/// Why nothing is counted without a shared region.
const NOT_SHARED: &str = "metrics are off: require(\"gray\") in init_by_lua* (the nginx master) so that all workers count into one region; required first in a worker, each worker would count alone";

/// core.create_region() -> true | nil, err: the shared metrics region and the host's store (one
/// Redis session and one copy of the lists for every worker), made once, before nginx forks its
/// workers.
fn create_region(_: &Lua, _: ()) -> LuaResult<(Option<bool>, Option<String>)> {
    let errors: Vec<String> = [
        metrics::create_region()
            .err()
            .map(|e| format!("failed to map the metrics region: {e}; nothing is counted")),
        crate::store::create().err().map(|e| {
            format!("failed to map the host's shared copy: {e}; each worker holds its own Redis session")
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    if errors.is_empty() {
        Ok((Some(true), None))
    } else {
        Ok((None, Some(errors.join("; "))))
    }
}

/// core.metrics(format) -> body, content type: every worker's counters and state, in
/// Prometheus's text format or (`"json"`) as JSON.
fn metrics_body(_: &Lua, format: Option<String>) -> LuaResult<(Option<String>, Option<String>)> {
    let guards = crate::guard::states(&SHARED.current());
    Ok(match format.as_deref() {
        None | Some("prometheus") => (
            Some(metrics::prometheus_text(guards)),
            Some(metrics::PROMETHEUS_CONTENT_TYPE.into()),
        ),
        Some("json") => (
            Some(metrics::json(guards)),
            Some(metrics::JSON_CONTENT_TYPE.into()),
        ),
        Some(other) => (
            None,
            Some(format!(
                "bad argument #1 to 'metrics' (\"prometheus\" or \"json\" expected, got \"{other}\")"
            )),
        ),
    })
}

/// core.dashboard(format) -> body, content type: the dashboard's page, or (`"json"`) what it polls.
fn dashboard_body(_: &Lua, format: Option<String>) -> LuaResult<(Option<String>, Option<String>)> {
    Ok(match format.as_deref() {
        None | Some("") | Some("html") => (
            Some(dashboard::PAGE.into()),
            Some(dashboard::PAGE_CONTENT_TYPE.into()),
        ),
        Some("json") => (
            Some(dashboard::json(&SHARED.current())),
            Some(metrics::JSON_CONTENT_TYPE.into()),
        ),
        Some(other) => (
            None,
            Some(format!(
                "bad argument #1 to 'dashboard' (\"html\" or \"json\" expected, got \"{other}\")"
            )),
        ),
    })
}

fn status(lua: &Lua, options: LuaUserDataRef<Options>) -> LuaResult<LuaTable> {
    let options = active(&options);
    let config = options.config();
    let snapshot = SHARED.current();
    let refresh = SHARED.status();
    let t = lua.create_table()?;
    t.set("running", running_here() && refresh.running)?;
    t.set("restarts", refresh.restarts)?;
    t.set("redis", config.redis_display.as_str())?;
    t.set("key", config.key.as_str())?;
    t.set("redis_connected", refresh.connected)?;
    t.set("redis_node", refresh.node)?;
    t.set("subscribed", refresh.subscribed)?;
    t.set("tracking", refresh.tracking)?;
    t.set("last_ok_at", refresh.last_ok_at.map(unix_seconds))?;
    t.set("last_error", refresh.last_error)?;
    t.set("last_error_at", refresh.last_error_at.map(unix_seconds))?;
    t.set("failures", refresh.failures)?;
    t.set("address_read", ADDRESS.mode().as_str())?;
    t.set("metrics", if metrics::shared() { "shared" } else { "off" })?;
    match crate::store::get() {
        Some(store) => {
            let holder = store.holder();
            let holding = holder == Some(std::process::id());
            t.set("session", if holding { "holder" } else { "follower" })?;
            t.set("session_holder", holder)?;
            t.set("shared_bytes", store.bytes_held())?;
            t.set("shared_spare_bytes", store.bytes_spare())?;
        }
        None => t.set("session", "own")?,
    }
    t.set("worker", metrics::worker())?;
    t.set("loaded", snapshot.loaded.is_some())?;
    if let Some(loaded) = &snapshot.loaded {
        let list = &loaded.list;
        t.set("key_type", loaded.kind.as_str())?;
        t.set("version", format!("{:016x}", loaded.version))?;
        t.set("loaded_at", unix_seconds(loaded.loaded_at))?;
        t.set("entries", list.entries())?;
        t.set("entries_v4", list.entries_v4)?;
        t.set("entries_v6", list.entries_v6)?;
        t.set("rejected", list.rejected_count)?;
        t.set(
            "rejected_samples",
            list.rejected
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>(),
        )?;
        t.set("host_bits_truncated", list.truncated_count)?;
        t.set("memory_bytes", list.set.heap_bytes())?;
    }
    let sets = lua.create_table()?;
    let names = std::iter::once("").chain(config.rule_sets.iter().map(String::as_str));
    for (i, name) in names.enumerate() {
        let set = lua.create_table()?;
        set.set("name", (!name.is_empty()).then_some(name))?;
        set.set(
            "key",
            config.rule_set_key((!name.is_empty()).then_some(name)),
        )?;
        let active = snapshot.active(i);
        set.set("loaded", active.is_some())?;
        if let Some(active) = active {
            let compiled = &active.compiled;
            set.set("version", format!("{:016x}", compiled.version))?;
            set.set("loaded_at", unix_seconds(compiled.loaded_at))?;
            set.set("rules", compiled.rules.rules.len())?;
            set.set("enabled", compiled.rules.enabled)?;
            let tripped: Vec<String> = compiled
                .rules
                .rules
                .iter()
                .zip(&active.tripped)
                .filter(|(_, &t)| t)
                .map(|(r, _)| r.name.clone())
                .collect();
            set.set("tripped", tripped)?;
            set.set(
                "inputs",
                compiled
                    .rules
                    .inputs
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )?;
        }
        sets.raw_push(set)?;
    }
    t.set("rule_sets", sets)?;
    Ok(t)
}

/// core.plan(set) -> plan, { variable, ... }, reads_headers, { every input's variable, ... }:
/// what the request path fetches for rule set `set`, and what an explanation reads.
fn plan(lua: &Lua, set: usize) -> LuaResult<(u32, LuaTable, bool, LuaTable)> {
    let snapshot = SHARED.current();
    let plan = snapshot.plan(set);
    Ok((
        plan.map_or(0, |p| p.id),
        lua.create_sequence_from(plan.map(|p| p.variables.clone()).unwrap_or_default())?,
        plan.is_some_and(|p| p.reads_headers),
        lua.create_sequence_from(plan.map(|p| p.all_variables.clone()).unwrap_or_default())?,
    ))
}

/// The number of rule set `set`'s plan; 0 without a rule set.
fn plan_id(_: &Lua, set: usize) -> LuaResult<u32> {
    Ok(SHARED.current().plan(set).map_or(0, |p| p.id))
}

/// The arguments of `core.explain`.
type ExplainArgs = (
    usize,
    Option<LuaString>,
    Option<LuaString>,
    Option<LuaString>,
    Option<LuaTable>,
);

/// core.explain(set, peer, x_forwarded_for, x_real_ip, values) -> code, reason, details
fn explain(
    lua: &Lua,
    (set, peer, forwarded_for, real_ip, values): ExplainArgs,
) -> LuaResult<(usize, String, LuaTable)> {
    let snapshot = SHARED.current();
    let peer = peer.map(|p| p.as_bytes().to_vec()).unwrap_or_default();
    let forwarded_for = forwarded_for.map(|h| h.as_bytes().to_vec());
    let real_ip = real_ip.map(|h| h.as_bytes().to_vec());
    let active = snapshot.active(set);
    let sources = active.map(|a| &a.compiled.rules.inputs[..]).unwrap_or(&[]);
    let mut owned: Vec<Option<Vec<u8>>> = Vec::with_capacity(sources.len());
    for i in 0..sources.len() {
        let value: Option<LuaString> = match &values {
            Some(t) => t.raw_get(i + 1)?,
            None => None,
        };
        owned.push(value.map(|v| v.as_bytes().to_vec()));
    }
    let inputs: Vec<Option<&[u8]>> = owned.iter().map(|v| v.as_deref()).collect();
    let (target, reason) = snapshot.decide(
        set,
        &peer,
        (forwarded_for.as_deref(), real_ip.as_deref()),
        &inputs,
        unix_now(),
        &minting::mint,
    );
    let details = lua.create_table()?;
    let explained = serde_json::to_value(snapshot.explain(target, &reason))
        .expect("an explanation is plain data");
    for (field, value) in explained.as_object().into_iter().flatten() {
        details.set(field.as_str(), lua_value(lua, value)?)?;
    }
    if active.is_some() {
        let shown = lua.create_table()?;
        for (source, value) in sources.iter().zip(&inputs) {
            if let Some(value) = value {
                shown.set(source.to_string(), lua.create_string(value)?)?;
            }
        }
        details.set("inputs", shown)?;
    }
    Ok((target, reason.to_string(), details))
}

/// A JSON value (an explanation's field) as Lua has it: null is nil, an array a sequence.
fn lua_value(lua: &Lua, value: &serde_json::Value) -> LuaResult<LuaValue> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => LuaValue::Nil,
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Number(n) => LuaValue::Number(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => LuaValue::String(lua.create_string(s)?),
        Value::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for item in items {
                t.raw_push(lua_value(lua, item)?)?;
            }
            LuaValue::Table(t)
        }
        Value::Object(fields) => {
            let t = lua.create_table()?;
            for (name, field) in fields {
                t.set(name.as_str(), lua_value(lua, field)?)?;
            }
            LuaValue::Table(t)
        }
    })
}

/// core.watch_guards(): the guards judge (at most once a second), from the worker's timer.
fn watch_guards(_: &Lua, _: ()) -> LuaResult<()> {
    crate::guard::tick(&SHARED);
    Ok(())
}

/// core.take_logs() -> nil | { level, message, level, message, ... }
fn take_logs(lua: &Lua, _: ()) -> LuaResult<Option<LuaTable>> {
    let Some(lines) = SHARED.log.take() else {
        return Ok(None);
    };
    let t = lua.create_table_with_capacity(lines.len() * 2, 0)?;
    for (level, message) in lines {
        t.raw_push(level as i32)?;
        t.raw_push(message)?;
    }
    Ok(Some(t))
}

/// core.targets(options) -> { location, ... }: the target table, index 0 first.
fn targets(lua: &Lua, options: LuaUserDataRef<Options>) -> LuaResult<LuaTable> {
    lua.create_sequence_from(active(&options).config().targets.clone())
}

/// core.rule_sets(options) -> { name, ... }: the named rule sets; set i is the (i)th, 0 the default.
fn rule_sets(lua: &Lua, options: LuaUserDataRef<Options>) -> LuaResult<LuaTable> {
    lua.create_sequence_from(active(&options).config().rule_sets.clone())
}

/// The decision codes and the FFI declarations, for the glue: one definition of each, in
/// `gray_core::decision` and [`super::ffi`].
pub(super) fn codes(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    t.set("cdef", CDEF)?;
    t.set("prod", Target::Prod as i32)?;
    t.set("need_forwarded", code::NEED_FORWARDED)?;
    t.set("need_address", code::NEED_ADDRESS)?;
    t.set("inputs_base", code::INPUTS_BASE)?;
    t.set("max_inputs", MAX_INPUTS)?;
    t.set("max_headers", MAX_HEADERS)?;
    Ok(t)
}

/// The `core` table gray.lua is handed: these functions, the version, the defaults and the codes.
pub(super) fn core_table(lua: &Lua) -> LuaResult<LuaTable> {
    let core = lua.create_table()?;
    core.set("version", env!("CARGO_PKG_VERSION"))?;
    core.set("configure", lua.create_function(configure)?)?;
    core.set("start", lua.create_function(start)?)?;
    core.set("status", lua.create_function(status)?)?;
    core.set("explain", lua.create_function(explain)?)?;
    core.set("take_logs", lua.create_function(take_logs)?)?;
    core.set("watch_guards", lua.create_function(watch_guards)?)?;
    core.set("targets", lua.create_function(targets)?)?;
    core.set("rule_sets", lua.create_function(rule_sets)?)?;
    core.set("plan", lua.create_function(plan)?)?;
    core.set("plan_id", lua.create_function(plan_id)?)?;
    core.set("create_region", lua.create_function(create_region)?)?;
    core.set("metrics", lua.create_function(metrics_body)?)?;
    core.set("dashboard", lua.create_function(dashboard_body)?)?;
    core.set(
        "count_responses_from_log",
        lua.create_function(|_, ()| {
            metrics::note_responses_counted();
            Ok(())
        })?,
    )?;
    core.set("defaults", Options::defaults())?;
    core.set("codes", codes(lua)?)?;
    Ok(core)
}
