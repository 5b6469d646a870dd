//! A scrape, served by any worker: every series' counters summed over the workers, every worker's
//! state, the guards of the answering worker's snapshot; as Prometheus's text format (version
//! 0.0.4, the prometheus crate's encoder, no protobuf) or as JSON.

use gray_core::rollout::State;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::TextEncoder;
use serde::Serialize;

use super::counting::{counter, CLASS_NAMES, LATENCY_BOUNDS};
use super::series::Labels;
use super::workers::{own_state, KeyLoaded, RolloutLoaded, WorkerState};
use super::REGION;
use crate::region::COUNTERS_PER_SERIES;

/// The response content type of each format.
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A guarded rule, for scrapes.
#[derive(Debug, Clone, Serialize)]
pub struct GuardState {
    pub rule_set: String,
    pub rule: String,
    pub target: String,
    /// When its guard tripped (Unix seconds); `None` while it has not.
    pub tripped_at: Option<f64>,
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
        return Scrape {
            shared: false,
            start_time: None,
            series: Vec::new(),
            guards,
            workers: serde_json::from_slice(&own_state()).into_iter().collect(),
        };
    };
    let series = (1..region.registered())
        .filter_map(|i| {
            let labels = Labels::from_name(&region.name(i)?)?;
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
            .map(|s| counter_metric(label_pairs(&s.labels), s.requests))
            .collect(),
    );
    family(
        "gray_responses_total",
        "Responses to routed requests by status class (counted as nginx frees each request)",
        MetricType::COUNTER,
        scrape
            .series
            .iter()
            .flat_map(|s| {
                s.responses.iter().flatten().map(|(class, n)| {
                    let mut labels = label_pairs(&s.labels);
                    labels.push(label("class", class));
                    counter_metric(labels, *n)
                })
            })
            .collect(),
    );
    family(
        "gray_response_seconds",
        "Response times of routed requests (as $request_time: from the request's start to its end)",
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
                m.set_label(label_pairs(&s.labels));
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
    rollout_families(&scrape.workers, &mut family);
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
        "Whitelist entries, rules or ids each worker has loaded from each key, by what it reads it as",
        MetricType::GAUGE,
        workers
            .iter()
            .flat_map(|w| {
                per_key(w, &|k| {
                    k.version.as_ref()?;
                    Some(gauge(key_labels(w, k), k.entries as f64))
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
            .flat_map(|w| per_key(w, &|k| Some(gauge(key_labels(w, k), k.loaded_at?))))
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

/// The rollout plans the workers read, each once: the newest any worker has read.
fn rollout_families(workers: &[WorkerState], family: &mut Family<'_>) {
    let mut plans: Vec<&RolloutLoaded> = Vec::new();
    for plan in workers.iter().flat_map(|w| &w.rollouts) {
        match plans.iter_mut().find(|p| p.key == plan.key) {
            Some(seen) if (seen.id, seen.revision) < (plan.id, plan.revision) => *seen = plan,
            Some(_) => {}
            None => plans.push(plan),
        }
    }
    let labels = |p: &RolloutLoaded| vec![label("rule_set", &p.key), label("rule", &p.rule)];
    family(
        "gray_rollout_step",
        "The step a rule set's rollout plan is at, from 1",
        MetricType::GAUGE,
        plans
            .iter()
            .map(|p| gauge(labels(p), p.step as f64))
            .collect(),
    );
    family(
        "gray_rollout_percent",
        "The percentage a rule set's rollout plan has set its rule to",
        MetricType::GAUGE,
        plans.iter().map(|p| gauge(labels(p), p.percent)).collect(),
    );
    family(
        "gray_rollout_state",
        "A rule set's rollout plan's state: 1 for the one it is in (running, holding, paused, aborted, done)",
        MetricType::GAUGE,
        plans
            .iter()
            .flat_map(|p| {
                State::ALL.iter().map(move |state| {
                    let mut labels = labels(p);
                    labels.push(label("state", state.as_str()));
                    gauge(labels, flag(p.state == state.as_str()).unwrap_or(0.0))
                })
            })
            .collect(),
    );
    family(
        "gray_rollout_driver_info",
        "The gateway (host:pid) that last moved a rule set's rollout plan",
        MetricType::GAUGE,
        plans
            .iter()
            .filter_map(|p| {
                let mut labels = labels(p);
                labels.push(label("driver", p.driver.as_deref()?));
                Some(gauge(labels, 1.0))
            })
            .collect(),
    );
}

/// A worker's key: by worker, key and kind (one key can be read as the whitelist and as ids).
fn key_labels(w: &WorkerState, k: &KeyLoaded) -> Vec<LabelPair> {
    vec![
        label("worker", &w.worker.to_string()),
        label("key", &k.key),
        label("kind", &k.kind),
    ]
}

/// A flag as a gauge's value.
fn flag(on: bool) -> Option<f64> {
    Some(f64::from(u8::from(on)))
}

fn label_pairs(labels: &Labels) -> Vec<LabelPair> {
    labels
        .pairs()
        .into_iter()
        .map(|(name, value)| label(name, value))
        .collect()
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
    use std::collections::HashSet;

    use super::*;

    /// The exposition of `workers`' families: each sample line's name and labels.
    fn samples(workers: &[WorkerState]) -> Vec<String> {
        let mut families = Vec::new();
        worker_families(workers, &mut |name, help, kind, metrics| {
            if metrics.is_empty() {
                return;
            }
            let mut f = MetricFamily::default();
            f.set_name(name.into());
            f.set_help(help.into());
            f.set_field_type(kind);
            f.set_metric(metrics);
            families.push(f);
        });
        let mut text = String::new();
        TextEncoder::new()
            .encode_utf8(&families, &mut text)
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
            .collect()
    }

    #[test]
    fn a_plan_read_by_several_workers_is_shown_once_as_the_newest_read() {
        let plan = |revision: u64, state: &str| RolloutLoaded {
            key: "gray:rules".into(),
            rule: "canary".into(),
            step: revision as usize,
            percent: 5.0,
            state: state.into(),
            driver: Some("gw1:42".into()),
            id: 7,
            revision,
            ..RolloutLoaded::default()
        };
        let workers = [
            WorkerState {
                rollouts: vec![plan(2, "running")],
                ..WorkerState::default()
            },
            WorkerState {
                worker: 1,
                rollouts: vec![plan(3, "paused")],
                ..WorkerState::default()
            },
        ];
        let mut families = Vec::new();
        rollout_families(&workers, &mut |name, _, _, metrics| {
            for m in metrics {
                let labels: Vec<String> = m
                    .get_label()
                    .iter()
                    .map(|l| format!("{}={}", l.name(), l.value()))
                    .collect();
                families.push(format!(
                    "{name}{{{}}} {}",
                    labels.join(","),
                    m.get_gauge().get_value()
                ));
            }
        });
        assert!(
            families.contains(&"gray_rollout_step{rule_set=gray:rules,rule=canary} 3".to_string()),
            "{families:#?}"
        );
        assert!(families.contains(
            &"gray_rollout_state{rule_set=gray:rules,rule=canary,state=paused} 1".to_string()
        ));
        assert!(families.contains(
            &"gray_rollout_state{rule_set=gray:rules,rule=canary,state=running} 0".to_string()
        ));
        assert!(families.contains(
            &"gray_rollout_driver_info{rule_set=gray:rules,rule=canary,driver=gw1:42} 1"
                .to_string()
        ));
        assert_eq!(families.len(), 8);
    }

    #[test]
    fn a_key_read_as_the_whitelist_and_as_ids_is_two_series_not_one_twice() {
        let key = |kind: &str| KeyLoaded {
            key: "gray".into(),
            kind: kind.into(),
            version: Some("00000000000000ab".into()),
            entries: 3,
            loaded_at: Some(1.5),
        };
        let state = WorkerState {
            keys: vec![key("whitelist"), key("ids")],
            ..WorkerState::default()
        };
        let lines = samples(&[state]);
        let unique: HashSet<&String> = lines.iter().collect();
        assert_eq!(unique.len(), lines.len(), "{lines:#?}");
        assert!(
            lines.contains(&r#"gray_loaded_entries{worker="0",key="gray",kind="ids"}"#.to_string())
        );
    }
}
