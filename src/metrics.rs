//! What gray counts, where, and how a scrape shows it. Each way a request can be decided (a rule
//! set's rule, its default, its override, the whitelist's listed and unlisted) to each target is
//! one series of the shared [`Region`], named by its labels; a series holds the requests routed by
//! it and, when `log()` runs in the log phase, their responses by status class and a latency
//! histogram. Each worker also publishes what it has loaded and how its Redis link is, so a scrape
//! served by any worker shows every worker, a lagging one included.
//!
//! Counting is one relaxed atomic add into this worker's block; nothing here allocates or locks
//! on the request path. Without a shared region (gray was not required in init_by_lua) nothing is
//! counted: a worker's own counts would read as the whole nginx's.

use std::io;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use once_cell::sync::OnceCell;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::TextEncoder;
use serde::{Deserialize, Serialize};

use crate::region::{Region, RegisterError, COUNTERS_PER_SERIES, MAX_STATE};
use gray_core::snapshot::{CompiledRuleSet, RuleSetSeries};

/// What each counter of a series counts.
pub mod counter {
    pub const REQUESTS: usize = 0;
    /// Responses by status class: `CLASSES + 0` is 1xx ... `CLASSES + 4` is 5xx.
    pub const CLASSES: usize = 1;
    /// The sum of response times, in microseconds.
    pub const LATENCY_SUM_US: usize = 6;
    /// Responses timed.
    pub const LATENCY_COUNT: usize = 7;
    /// Responses no slower than each of `LATENCY_BOUNDS` (and slower than the one before).
    pub const LATENCY_BUCKETS: usize = 8;
}

/// The latency histogram's upper bounds, in seconds.
pub const LATENCY_BOUNDS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];
const _: () = assert!(counter::LATENCY_BUCKETS + LATENCY_BOUNDS.len() == COUNTERS_PER_SERIES);

/// The status classes, as the `class` label shows them.
pub const CLASS_NAMES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The response content type of each format.
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// How a request was decided, as the `outcome` label says it.
pub mod outcome {
    pub const RULE: &str = "rule";
    pub const DEFAULT: &str = "default";
    pub const DISABLED: &str = "disabled";
    pub const OVERRIDE: &str = "override";
    pub const LISTED: &str = "listed";
    pub const UNLISTED: &str = "unlisted";
}

/// A series' labels: the rule set's key (the whitelist's key for the whitelist), how the request
/// was decided, the rule's name (for a rule) and the target location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Labels {
    pub rule_set: String,
    pub outcome: String,
    pub rule: String,
    pub target: String,
}

/// Separates the labels in a series name; it cannot occur in a key, a rule name or a location
/// that anyone would write, and a label holding it only names a different series.
const SEPARATOR: char = '\u{1f}';

impl Labels {
    pub fn new(rule_set: &str, outcome: &str, rule: &str, target: &str) -> Labels {
        Labels {
            rule_set: rule_set.into(),
            outcome: outcome.into(),
            rule: rule.into(),
            target: target.into(),
        }
    }

    fn name(&self) -> String {
        [&self.rule_set, &self.outcome, &self.rule, &self.target]
            .map(String::as_str)
            .join(&SEPARATOR.to_string())
    }

    fn from_name(name: &[u8]) -> Option<Labels> {
        let text = std::str::from_utf8(name).ok()?;
        let mut parts = text.split(SEPARATOR);
        let labels = Labels::new(parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        parts.next().is_none().then_some(labels)
    }

    fn pairs(&self) -> Vec<LabelPair> {
        [
            ("rule_set", &self.rule_set),
            ("outcome", &self.outcome),
            ("rule", &self.rule),
            ("target", &self.target),
        ]
        .into_iter()
        .map(|(name, value)| label(name, value))
        .collect()
    }
}

/// The series of each way rule set `compiled` can decide, through `series` (labels to index).
pub fn rule_set_series(
    compiled: &CompiledRuleSet,
    targets: &[String],
    mut series: impl FnMut(&Labels) -> u32,
) -> RuleSetSeries {
    let rules = &compiled.rules;
    let target = |index: usize| targets.get(index).map_or("", String::as_str);
    let key = compiled.key.as_str();
    RuleSetSeries {
        rules: rules
            .rules
            .iter()
            .map(|rule| {
                series(&Labels::new(
                    key,
                    outcome::RULE,
                    &rule.name,
                    target(rule.to),
                ))
            })
            .collect(),
        default: series(&Labels::new(
            key,
            outcome::DEFAULT,
            "",
            target(rules.default),
        )),
        disabled: series(&Labels::new(
            key,
            outcome::DISABLED,
            "",
            target(rules.default),
        )),
        override_: match &rules.override_ {
            Some(_) => (0..targets.len())
                .map(|t| series(&Labels::new(key, outcome::OVERRIDE, "", target(t))))
                .collect(),
            None => Vec::new(),
        },
    }
}

/// The whitelist's series, by target: unlisted (production), listed (gray).
pub fn whitelist_series(
    key: &str,
    targets: &[String],
    mut series: impl FnMut(&Labels) -> u32,
) -> [u32; 2] {
    [
        series(&Labels::new(key, outcome::UNLISTED, "", &targets[0])),
        series(&Labels::new(key, outcome::LISTED, "", &targets[1])),
    ]
}

/// The class counter and the latency bucket (if within the last bound) of a response.
pub fn response_counters(status: u32, seconds: f64) -> (Option<usize>, Option<usize>) {
    let class = match status / 100 {
        class @ 1..=5 => Some(counter::CLASSES + class as usize - 1),
        _ => None,
    };
    let bucket = LATENCY_BOUNDS
        .iter()
        .position(|&bound| seconds <= bound)
        .map(|i| counter::LATENCY_BUCKETS + i);
    (class, bucket)
}

/// What one worker has loaded and how its link to Redis is, as it publishes it for scrapes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerState {
    pub worker: usize,
    pub pid: u32,
    pub running: bool,
    pub connected: bool,
    pub subscribed: bool,
    pub tracking: bool,
    pub failures: u64,
    pub last_ok_at: Option<f64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<f64>,
    pub keys: Vec<KeyLoaded>,
}

/// One key as a worker has it loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyLoaded {
    pub key: String,
    /// `whitelist`, `rule_set` or `ids`.
    pub kind: String,
    /// `None` while nothing is loaded from it.
    pub version: Option<String>,
    /// Whitelist entries, rules or ids.
    pub entries: u64,
    pub loaded_at: Option<f64>,
}

impl WorkerState {
    /// As JSON within `MAX_STATE` bytes: the error message is shortened, then keys are left
    /// out, rather than publish a state cut mid-way.
    fn to_json(&self) -> Vec<u8> {
        let mut state = self.clone();
        loop {
            let json = serde_json::to_vec(&state).expect("a worker state is plain data");
            if json.len() <= MAX_STATE {
                return json;
            }
            match &mut state.last_error {
                Some(error) if error.len() > 200 => {
                    let mut cut = 200;
                    while !error.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    error.truncate(cut);
                }
                _ => {
                    state.keys.pop();
                }
            }
        }
    }
}

static REGION: OnceCell<Region> = OnceCell::new();
/// This worker's counters; null where nothing is counted.
static BLOCK: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
static WORKER: AtomicUsize = AtomicUsize::new(0);
/// This worker's state, for a scrape without a shared region.
static OWN_STATE: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Makes the shared region, once per process: call it where nginx has not forked yet (the
/// master's init_by_lua).
pub fn create_region() -> io::Result<()> {
    REGION.get_or_try_init(Region::create).map(|_| ())
}

pub fn shared() -> bool {
    REGION.get().is_some()
}

/// Whether a worker of this nginx has counted a response (`log()` is in use).
pub fn responses_counted() -> bool {
    REGION.get().is_some_and(Region::responses_counted)
}

/// The shared region, where there is one.
pub fn region() -> Option<&'static Region> {
    REGION.get()
}

/// The target location series `series` counts requests to ("" if unknown).
pub fn target_name(series: u32) -> String {
    REGION
        .get()
        .and_then(|r| r.name(series as usize))
        .and_then(Labels::from_name)
        .map(|l| l.target)
        .unwrap_or_default()
}

/// A guarded rule, for scrapes.
#[derive(Debug, Clone, Serialize)]
pub struct GuardState {
    pub rule_set: String,
    pub rule: String,
    pub target: String,
    /// When its guard tripped (Unix seconds); `None` while it has not.
    pub tripped_at: Option<f64>,
}

/// Makes this process count as worker `worker` (`ngx.worker.id()`). Says whether it counts:
/// not without a shared region, nor for an id beyond the region's blocks.
pub fn join(worker: usize) -> bool {
    WORKER.store(worker, Ordering::Relaxed);
    let Some(block) = REGION.get().and_then(|region| region.join(worker)) else {
        return false;
    };
    BLOCK.store(block.as_ptr().cast_mut(), Ordering::Release);
    true
}

/// The worker id this process counts as.
pub fn worker() -> usize {
    WORKER.load(Ordering::Relaxed)
}

/// Adds `n` to counter `counter` of series `series` (0: nothing counted).
#[inline]
pub fn count(series: u32, counter: usize, n: u64) {
    let block = BLOCK.load(Ordering::Relaxed);
    let index = series as usize * COUNTERS_PER_SERIES + counter;
    if block.is_null() || series == 0 || index >= crate::region::MAX_SERIES * COUNTERS_PER_SERIES {
        return;
    }
    // SAFETY: a non-null block is this worker's, MAX_SERIES * COUNTERS_PER_SERIES counters long
    // in a mapping that lives as long as the process; `index` is within it.
    unsafe { (*block.add(index)).fetch_add(n, Ordering::Relaxed) };
}

/// Counts a response of `status` that took `seconds`, in `series`.
pub fn count_response(series: u32, status: u32, seconds: f64) {
    if let Some(region) = REGION.get() {
        region.note_responses_counted();
    }
    let (class, bucket) = response_counters(status, seconds);
    if let Some(class) = class {
        count(series, class, 1);
    }
    count(series, counter::LATENCY_COUNT, 1);
    count(
        series,
        counter::LATENCY_SUM_US,
        (seconds.max(0.0) * 1e6).round() as u64,
    );
    if let Some(bucket) = bucket {
        count(series, bucket, 1);
    }
}

/// The series of `labels`, registered if new; 0 (nothing counted) without a shared region, or
/// with the reason it could not be registered.
pub fn register(labels: &Labels) -> Result<u32, RegisterError> {
    match REGION.get() {
        Some(region) => region.series(labels.name().as_bytes()),
        None => Ok(0),
    }
}

/// Publishes this worker's state for scrapes.
pub fn publish_state(state: &WorkerState) {
    let json = state.to_json();
    if let Some(region) = REGION.get() {
        region.write_state(WORKER.load(Ordering::Relaxed), &json);
    }
    *OWN_STATE.lock().unwrap_or_else(|e| e.into_inner()) = json;
}

/// A series as a scrape shows it.
#[derive(Debug, Serialize)]
struct SeriesTotals {
    #[serde(flatten)]
    labels: Labels,
    requests: u64,
    /// Responses by status class, when any was counted.
    responses: Option<std::collections::BTreeMap<&'static str, u64>>,
    latency: Option<LatencyTotals>,
}

#[derive(Debug, Serialize)]
struct LatencyTotals {
    count: u64,
    sum_seconds: f64,
    /// (upper bound, responses no slower), cumulative as Prometheus has it.
    buckets: Vec<(f64, u64)>,
}

#[derive(Debug, Serialize)]
struct Scrape {
    shared: bool,
    start_time: Option<f64>,
    series: Vec<SeriesTotals>,
    guards: Vec<GuardState>,
    workers: Vec<WorkerState>,
}

fn scrape(guards: Vec<GuardState>) -> Scrape {
    let Some(region) = REGION.get() else {
        let own = OWN_STATE.lock().unwrap_or_else(|e| e.into_inner());
        return Scrape {
            shared: false,
            start_time: None,
            series: Vec::new(),
            guards,
            workers: serde_json::from_slice(&own).into_iter().collect(),
        };
    };
    let series = (1..region.registered())
        .filter_map(|i| {
            let labels = Labels::from_name(region.name(i)?)?;
            Some(totals(labels, &region.totals(i)))
        })
        .collect();
    let workers = (0..region.workers())
        .filter_map(|w| serde_json::from_slice(&region.read_state(w)?).ok())
        .collect();
    Scrape {
        shared: true,
        start_time: Some(region.created()),
        series,
        guards,
        workers,
    }
}

fn totals(labels: Labels, counters: &[u64; COUNTERS_PER_SERIES]) -> SeriesTotals {
    let timed = counters[counter::LATENCY_COUNT];
    let mut cumulative = 0;
    SeriesTotals {
        labels,
        requests: counters[counter::REQUESTS],
        responses: (timed > 0).then(|| {
            CLASS_NAMES
                .iter()
                .enumerate()
                .map(|(i, name)| (*name, counters[counter::CLASSES + i]))
                .collect()
        }),
        latency: (timed > 0).then(|| LatencyTotals {
            count: timed,
            sum_seconds: counters[counter::LATENCY_SUM_US] as f64 / 1e6,
            buckets: LATENCY_BOUNDS
                .iter()
                .enumerate()
                .map(|(i, &bound)| {
                    cumulative += counters[counter::LATENCY_BUCKETS + i];
                    (bound, cumulative)
                })
                .collect(),
        }),
    }
}

/// The scrape as JSON; `guards` are the guarded rules of the answering worker's snapshot.
pub fn json(guards: Vec<GuardState>) -> String {
    serde_json::to_string(&scrape(guards)).expect("a scrape is plain data")
}

/// The scrape in Prometheus's text format (version 0.0.4).
pub fn prometheus_text(guards: Vec<GuardState>) -> String {
    let scrape = scrape(guards);
    let mut families = Vec::new();
    let mut family = |name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>| {
        if metrics.is_empty() {
            return;
        }
        let mut f = MetricFamily::default();
        f.set_name(name.into());
        f.set_help(help.into());
        f.set_field_type(kind);
        f.set_metric(metrics);
        families.push(f);
    };
    family(
        "gray_metrics_shared",
        "1 when the counters are shared by every worker of this nginx; 0 when gray was not required in init_by_lua, so nothing is counted",
        MetricType::GAUGE,
        vec![gauge(vec![], f64::from(u8::from(scrape.shared)))],
    );
    family(
        "gray_start_time_seconds",
        "When the counters started (the nginx master's start; a binary upgrade starts them over), Unix seconds",
        MetricType::GAUGE,
        scrape.start_time.map(|t| gauge(vec![], t)).into_iter().collect(),
    );
    family(
        "gray_requests_total",
        "Requests routed, by rule set (key), outcome, rule and target",
        MetricType::COUNTER,
        scrape
            .series
            .iter()
            .map(|s| counter_metric(s.labels.pairs(), s.requests))
            .collect(),
    );
    family(
        "gray_responses_total",
        "Responses to routed requests by status class (counted by log() in the log phase)",
        MetricType::COUNTER,
        scrape
            .series
            .iter()
            .flat_map(|s| {
                s.responses.iter().flatten().map(|(class, n)| {
                    let mut labels = s.labels.pairs();
                    labels.push(label("class", class));
                    counter_metric(labels, *n)
                })
            })
            .collect(),
    );
    family(
        "gray_response_seconds",
        "Response times of routed requests ($request_time, counted by log())",
        MetricType::HISTOGRAM,
        scrape
            .series
            .iter()
            .filter_map(|s| {
                let latency = s.latency.as_ref()?;
                let mut h = Histogram::default();
                h.set_sample_count(latency.count);
                h.set_sample_sum(latency.sum_seconds);
                h.set_bucket(
                    latency
                        .buckets
                        .iter()
                        .map(|&(bound, n)| {
                            let mut b = Bucket::default();
                            b.set_upper_bound(bound);
                            b.set_cumulative_count(n);
                            b
                        })
                        .collect(),
                );
                let mut m = Metric::default();
                m.set_label(s.labels.pairs());
                m.set_histogram(h);
                Some(m)
            })
            .collect(),
    );
    family(
        "gray_guard_tripped",
        "1 while the rule's guard has tripped on this nginx (its requests go to the default target), 0 while it watches",
        MetricType::GAUGE,
        scrape
            .guards
            .iter()
            .map(|g| {
                let labels = vec![
                    label("rule_set", &g.rule_set),
                    label("rule", &g.rule),
                    label("target", &g.target),
                ];
                gauge(labels, f64::from(u8::from(g.tripped_at.is_some())))
            })
            .collect(),
    );
    worker_families(&scrape.workers, &mut family);
    let mut text = String::new();
    TextEncoder::new()
        .encode_utf8(&families, &mut text)
        .expect("families are checked non-empty");
    text
}

type Family<'a> = dyn FnMut(&str, &str, MetricType, Vec<Metric>) + 'a;

fn worker_families(workers: &[WorkerState], family: &mut Family<'_>) {
    let worker = |w: &WorkerState| vec![label("worker", &w.worker.to_string())];
    let per_key = |w: &WorkerState, value: &dyn Fn(&KeyLoaded) -> Option<Metric>| {
        w.keys.iter().filter_map(value).collect::<Vec<_>>()
    };
    family(
        "gray_loaded_info",
        "What each worker serves from each key: its version, 1 while loaded (a worker that lags shows another version)",
        MetricType::GAUGE,
        workers
            .iter()
            .flat_map(|w| {
                per_key(w, &|k| {
                    let mut labels = worker(w);
                    labels.push(label("pid", &w.pid.to_string()));
                    labels.push(label("key", &k.key));
                    labels.push(label("kind", &k.kind));
                    labels.push(label("version", k.version.as_deref()?));
                    Some(gauge(labels, 1.0))
                })
            })
            .collect(),
    );
    family(
        "gray_loaded_entries",
        "Whitelist entries, rules or ids each worker has loaded from each key",
        MetricType::GAUGE,
        workers
            .iter()
            .flat_map(|w| {
                per_key(w, &|k| {
                    k.version.as_ref()?;
                    let mut labels = worker(w);
                    labels.push(label("key", &k.key));
                    Some(gauge(labels, k.entries as f64))
                })
            })
            .collect(),
    );
    family(
        "gray_loaded_timestamp_seconds",
        "When each worker loaded what it serves from each key, Unix seconds",
        MetricType::GAUGE,
        workers
            .iter()
            .flat_map(|w| {
                per_key(w, &|k| {
                    let mut labels = worker(w);
                    labels.push(label("key", &k.key));
                    Some(gauge(labels, k.loaded_at?))
                })
            })
            .collect(),
    );
    // One gauge a worker, for those that have a value.
    let per_worker = |value: fn(&WorkerState) -> Option<f64>| {
        workers
            .iter()
            .filter_map(|w| Some(gauge(worker(w), value(w)?)))
            .collect()
    };
    family(
        "gray_redis_connected",
        "1 while the worker's refresher is connected to Redis",
        MetricType::GAUGE,
        per_worker(|w| flag(w.connected)),
    );
    family(
        "gray_redis_tracking",
        "1 while Redis pushes changes to the worker (client-side caching); 0: it polls",
        MetricType::GAUGE,
        per_worker(|w| flag(w.tracking)),
    );
    family(
        "gray_refresher_running",
        "1 while the worker's refresher thread runs",
        MetricType::GAUGE,
        per_worker(|w| flag(w.running)),
    );
    family(
        "gray_refresh_failures_total",
        "Failed Redis reads, connects and subscriptions, per worker",
        MetricType::COUNTER,
        workers
            .iter()
            .map(|w| counter_metric(worker(w), w.failures))
            .collect(),
    );
    family(
        "gray_last_success_timestamp_seconds",
        "When the worker last heard from Redis, Unix seconds",
        MetricType::GAUGE,
        per_worker(|w| w.last_ok_at),
    );
    family(
        "gray_last_error_timestamp_seconds",
        "When the worker last failed to read Redis or rejected what it read, Unix seconds",
        MetricType::GAUGE,
        per_worker(|w| w.last_error_at),
    );
    family(
        "gray_last_error_info",
        "The worker's last error, as a label",
        MetricType::GAUGE,
        workers
            .iter()
            .filter_map(|w| {
                let mut labels = worker(w);
                labels.push(label("error", w.last_error.as_deref()?));
                Some(gauge(labels, 1.0))
            })
            .collect(),
    );
}

/// A flag as a gauge's value.
fn flag(on: bool) -> Option<f64> {
    Some(f64::from(u8::from(on)))
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.into());
    pair.set_value(value.into());
    pair
}

fn gauge(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_gauge(g);
    m
}

fn counter_metric(labels: Vec<LabelPair>, value: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_counter(c);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_through_a_series_name() {
        let labels = Labels::new("gray:rules", outcome::RULE, "beta \"users\"", "@canary");
        assert_eq!(Labels::from_name(labels.name().as_bytes()), Some(labels));
        assert_eq!(Labels::from_name(b"too\x1ffew"), None);
    }

    #[test]
    fn a_response_lands_in_its_class_and_the_first_bucket_that_holds_it() {
        use counter::*;
        assert_eq!(
            response_counters(200, 0.001),
            (Some(CLASSES + 1), Some(LATENCY_BUCKETS))
        );
        assert_eq!(
            response_counters(503, 0.005),
            (Some(CLASSES + 4), Some(LATENCY_BUCKETS))
        );
        assert_eq!(
            response_counters(404, 0.3),
            (Some(CLASSES + 3), Some(LATENCY_BUCKETS + 6))
        );
        assert_eq!(response_counters(0, 9.0), (None, None));
        assert_eq!(response_counters(600, 1.0).0, None);
    }

    #[test]
    fn a_state_too_large_loses_keys_and_error_text_not_its_shape() {
        let state = WorkerState {
            last_error: Some("e".repeat(10_000)),
            keys: (0..200)
                .map(|i| KeyLoaded {
                    key: format!("gray:key:{i}"),
                    kind: "ids".into(),
                    version: Some("0123456789abcdef".into()),
                    entries: 1,
                    loaded_at: Some(1.5),
                })
                .collect(),
            ..WorkerState::default()
        };
        let json = state.to_json();
        assert!(json.len() <= MAX_STATE);
        let back: WorkerState = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.last_error.unwrap().len(), 200);
        assert!(!back.keys.is_empty() && back.keys.len() < 200);
        assert_eq!(back.keys[0], state.keys[0]);
    }
}
