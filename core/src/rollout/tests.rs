//! A plan's life: started, checked, held, advanced, aborted, paused, promoted.

use super::judge::{Gates, Traffic, Window};
use super::*;
use crate::rules::schema::compile;

const RULES: &str = r#"{"format": 1, "rules": [
    {"name": "canary", "percent": 0, "to": "@prod2-grey"},
    {"name": "ramped", "percent": {"from": 1, "to": 5, "start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}, "to": "@prod2-grey"},
    {"name": "office", "ip": ["10.0.0.0/8"], "to": "@prod2-grey"},
    {"name": "stays", "percent": 10, "to": "@prod1"}
]}"#;

fn rule_set() -> RuleSet {
    compile(RULES.as_bytes(), &["@prod1".into(), "@prod2-grey".into()]).unwrap()
}

fn settings() -> Settings {
    Settings {
        steps: vec![100, 500, 2500],
        hold: 20.0,
        interval: 10.0,
        gates: Gates {
            max_error_rate: 1.0,
            max_p99: None,
            min_requests: 100,
        },
        failure_limit: 3,
    }
}

fn start() -> Plan {
    let (plan, first) = Plan::start(
        settings(),
        &rule_set(),
        "canary",
        1000.0,
        "ops@host".into(),
        None,
    )
    .unwrap();
    assert_eq!(first, NewPercent(100));
    plan
}

/// A plan just started at 1000 with `interval`, for the other modules' tests.
pub(crate) fn running(interval: f64) -> Plan {
    let mut plan = start();
    plan.settings.interval = interval;
    plan
}

fn window(canary: u64, canary_errors: u64) -> Window {
    let traffic = |responses, errors| Traffic {
        responses,
        errors,
        buckets: [responses, 0, 0, 0, 0, 0, 0, 0],
    };
    Window {
        canary: traffic(canary, canary_errors),
        baseline: traffic(1000, 0),
    }
}

#[test]
fn a_plan_starts_only_for_a_rule_with_a_plain_percent_to_another_target() {
    let refused = |rule: &str| {
        Plan::start(settings(), &rule_set(), rule, 0.0, "me".into(), None).unwrap_err()
    };
    assert_eq!(refused("nope"), "no rule \"nope\" in the rule set");
    assert!(refused("ramped").contains("time ramp"));
    assert!(refused("office").contains("no \"percent\""));
    assert!(refused("stays").contains("routes to the default target"));
    let bad = |change: fn(&mut Settings)| {
        let mut s = settings();
        change(&mut s);
        Plan::start(s, &rule_set(), "canary", 0.0, "me".into(), None).unwrap_err()
    };
    assert_eq!(bad(|s| s.steps = vec![500, 100]), "--steps must increase");
    assert!(bad(|s| s.steps = vec![50]).contains("last step"));
    assert!(bad(|s| s.interval = 0.5).contains("--interval"));
    assert!(bad(|s| s.failure_limit = 0).contains("--failure-limit"));
}

#[test]
fn a_step_advances_after_its_hold_on_passing_checks_and_the_last_one_ends_the_plan() {
    let mut plan = start();
    assert!(!plan.check_due(1005.0) && plan.check_due(1010.0));
    let (check, changed) = plan.judge(&window(150, 0), "@prod1", 1010.0);
    assert_eq!(
        (check.verdict, changed),
        (Verdict::Passed, None),
        "held 10 of 20 s"
    );
    assert_eq!(plan.state, State::Running);
    assert_eq!(
        plan.judge(&window(150, 0), "@prod1", 1020.0).1,
        Some(NewPercent(500))
    );
    assert_eq!(
        (plan.step, plan.step_started_at, plan.step_responses),
        (1, 1020.0, 0)
    );
    plan.judge(&window(150, 0), "@prod1", 1030.0);
    assert_eq!(
        plan.judge(&window(150, 0), "@prod1", 1040.0).1,
        Some(NewPercent(2500))
    );
    plan.judge(&window(150, 0), "@prod1", 1050.0);
    assert_eq!(plan.judge(&window(150, 0), "@prod1", 1060.0).1, None);
    assert_eq!(
        (plan.state, plan.percent()),
        (State::Done, NewPercent(2500))
    );
    assert_eq!(plan.ended_at, Some(1060.0));
    assert!(!plan.check_due(2000.0));
}

#[test]
fn a_check_taken_late_does_not_push_the_next_one_back() {
    let mut plan = start();
    plan.judge(&window(150, 0), "@prod1", 1010.15);
    assert!(!plan.check_due(1019.9));
    assert!(plan.check_due(1020.05), "the slots of an interval ended");
    assert!(!plan.check_due(1009.7), "a clock stepped back a little");
    assert!(
        plan.check_due(900.0),
        "a clock set back further than a window"
    );
}

#[test]
fn no_data_holds_the_step_however_long_it_lasts() {
    let mut plan = start();
    for i in 1..=100 {
        let (check, changed) = plan.judge(&window(12, 0), "@prod1", 1000.0 + 10.0 * i as f64);
        assert_eq!((check.verdict, changed), (Verdict::Inconclusive, None));
    }
    assert_eq!((plan.state, plan.step), (State::Holding, 0));
    assert_eq!(plan.checks.len(), KEPT_CHECKS);
    assert_eq!(plan.checks[9].why, "holding: 12 of 100 requests");
    // Data again: the hold already lasted, so the first passing check advances.
    assert_eq!(
        plan.judge(&window(150, 0), "@prod1", 3000.0).1,
        Some(NewPercent(500))
    );
    assert_eq!(plan.state, State::Running);
}

#[test]
fn failure_limit_failed_checks_in_a_row_abort_with_the_figures_and_one_failure_restarts_the_hold() {
    let mut plan = start();
    plan.judge(&window(150, 0), "@prod1", 1010.0);
    assert_eq!(plan.judge(&window(150, 30), "@prod1", 1020.0).1, None);
    assert_eq!((plan.step_started_at, plan.failures_in_a_row), (1020.0, 1));
    // Passing again, the step needs a whole hold from the failure.
    assert_eq!(plan.judge(&window(150, 0), "@prod1", 1030.0).1, None);
    assert_eq!(plan.failures_in_a_row, 0);
    assert_eq!(
        plan.judge(&window(150, 0), "@prod1", 1040.0).1,
        Some(NewPercent(500))
    );
    plan.judge(&window(412, 128), "@prod1", 1050.0);
    plan.judge(&window(5, 5), "@prod1", 1060.0);
    plan.judge(&window(412, 128), "@prod1", 1070.0);
    assert_eq!(
        plan.state,
        State::Running,
        "an inconclusive check does not break the row"
    );
    assert_eq!(
        plan.judge(&window(412, 128), "@prod1", 1080.0).1,
        Some(NewPercent(0))
    );
    assert_eq!(
        (plan.state, plan.percent()),
        (State::Aborted, NewPercent(0))
    );
    assert_eq!(
        plan.reason.as_deref(),
        Some("5xx 31.1% of 412 responses vs 0.0% of 1,000 on @prod1, over the 1 point allowed, 3 checks in a row")
    );
    assert!(plan.pause(1090.0).is_err() && plan.abort("again".into(), 1090.0).is_err());
}

#[test]
fn a_pause_freezes_the_hold_and_the_step_and_a_resume_goes_on_where_it_stood() {
    let mut plan = start();
    plan.judge(&window(150, 0), "@prod1", 1010.0);
    plan.pause(1015.0).unwrap();
    assert_eq!(plan.held(1500.0), 15.0);
    // Checks still run while paused, pass without advancing, and may still abort.
    assert_eq!(plan.judge(&window(150, 0), "@prod1", 1500.0).1, None);
    assert_eq!(plan.state, State::Paused);
    plan.resume(1600.0).unwrap();
    assert_eq!(
        plan.judge(&window(150, 0), "@prod1", 1604.0).1,
        None,
        "held 19 s"
    );
    assert_eq!(
        plan.judge(&window(150, 0), "@prod1", 1605.0).1,
        Some(NewPercent(500))
    );
    plan.pause(1606.0).unwrap();
    for at in [1610.0, 1620.0] {
        plan.judge(&window(150, 100), "@prod1", at);
    }
    assert_eq!(
        plan.judge(&window(150, 100), "@prod1", 1630.0).1,
        Some(NewPercent(0))
    );
    assert_eq!(plan.state, State::Aborted);
}

#[test]
fn promote_jumps_to_the_last_step_and_abort_to_zero_once() {
    let mut plan = start();
    assert_eq!(
        plan.promote("by hand".into(), 1001.0).unwrap(),
        NewPercent(2500)
    );
    assert_eq!((plan.state, plan.step), (State::Done, 2));
    let mut plan = start();
    assert_eq!(plan.abort("by hand".into(), 1001.0).unwrap(), NewPercent(0));
    assert_eq!(plan.reason.as_deref(), Some("by hand"));
    assert!(plan.resume(1002.0).is_err());
}

#[test]
fn a_plan_reads_back_as_written_and_a_bad_one_is_refused() {
    let mut plan = start();
    plan.judge(&window(150, 0), "@prod1", 1010.0);
    assert_eq!(Plan::parse(plan.to_json().as_bytes()).unwrap(), plan);
    assert!(plan.to_json().contains("\"state\":\"running\""));
    assert!(Plan::parse(b"{}").is_err());
    let wrong_step = plan.to_json().replace("\"step\":0", "\"step\":7");
    assert!(Plan::parse(wrong_step.as_bytes())
        .unwrap_err()
        .contains("step 8 of 3"));
}

#[test]
fn durations_take_seconds_minutes_and_hours() {
    assert_eq!(parse_duration("10s"), Ok(10.0));
    assert_eq!(parse_duration("1.5s"), Ok(1.5));
    assert_eq!(parse_duration("5m"), Ok(300.0));
    assert_eq!(parse_duration("1h"), Ok(3600.0));
    for bad in ["10", "s", "-1s", "1d", ""] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_hostile_plan_in_redis_is_refused_not_obeyed() {
    let good = start().to_json();
    assert!(Plan::parse(good.as_bytes()).is_ok());
    for (field, value) in [
        ("\"interval\":10.0", "\"interval\":1e300"),
        ("\"hold\":20.0", "\"hold\":-1.0"),
        ("\"min_requests\":100", "\"min_requests\":0"),
        ("\"last_check_at\":null", "\"last_check_at\":1e308"),
        ("\"step\":0", "\"step\":3"),
        ("\"steps\":[1.0,5.0,25.0]", "\"steps\":[]"),
    ] {
        assert!(good.contains(field), "{field} in {good}");
        let hostile = good.replace(field, value);
        assert!(Plan::parse(hostile.as_bytes()).is_err(), "{value}");
    }
    assert!(parse_duration("10µ").is_err());
    assert!(parse_duration("").is_err());
}
