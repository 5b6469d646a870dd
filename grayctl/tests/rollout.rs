//! `grayctl rollout` against a real redis-server: starting a plan, what it refuses, the
//! operator's moves (pause, resume, abort, promote) and the manual edits a plan refuses. The
//! gateways that judge and step a plan are t/015's.

mod common;

use common::{code, ok, refused, stderr, Redis};
use serde_json::Value;

const RULES: &str = r#"{"format": 1, "rules": [
    {"name": "canary", "percent": 0, "to": "@prod2-grey"},
    {"name": "ramped", "percent": {"from": 1, "to": 5, "start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}, "to": "@prod2-grey"},
    {"name": "stays", "percent": 10, "to": "@prod1"}
]}
"#;

const START: &[&str] = &[
    "rollout",
    "start",
    "canary",
    "--steps",
    "1,5,25",
    "--hold",
    "10m",
    "--interval",
    "10s",
    "--max-error-rate",
    "1",
    "--min-requests",
    "500",
];

fn with_rules() -> Redis {
    let r = Redis::start();
    ok(r.grayctl_with(&["rules", "set", "-"], &[], Some(RULES)));
    r
}

fn rule_percent(r: &Redis, rule: usize) -> Value {
    let stored: Value = serde_json::from_str(&r.cli(&["GET", "gray:rules"])).unwrap();
    stored["rules"][rule]["percent"].clone()
}

fn status(r: &Redis) -> Value {
    serde_json::from_str(&ok(r.grayctl(&["rollout", "status", "--json"]))).unwrap()
}

/// `START` for `rule`, with `changes` (flag, value) in place of START's or added.
fn start_with<'a>(r: &Redis, rule: &'a str, changes: &[&'a str]) -> std::process::Output {
    let mut args: Vec<&str> = START.to_vec();
    args[2] = rule;
    for pair in changes.chunks(2) {
        match args.iter().position(|a| *a == pair[0]) {
            Some(at) => args[at + 1] = pair[1],
            None => args.extend_from_slice(pair),
        }
    }
    r.grayctl(&args)
}

#[test]
fn a_plan_starts_at_its_first_step_and_a_second_one_is_refused() {
    let r = with_rules();
    let started = ok(start_with(&r, "canary", &["-m", "release 43"]));
    assert!(started.contains("rollout of rule \"canary\""), "{started}");
    assert_eq!(rule_percent(&r, 0), 1);
    let plan = status(&r);
    assert_eq!(plan["state"], "running");
    assert_eq!(plan["step"], 1);
    assert_eq!(plan["percent"], 1.0);
    assert_eq!(plan["steps"], serde_json::json!([1.0, 5.0, 25.0]));
    assert_eq!(plan["hold"], 600.0);
    assert_eq!(plan["max_error_rate"], 1.0);
    assert_eq!(plan["min_requests"], 500);
    assert_eq!(plan["failure_limit"], 3);
    assert_eq!(plan["message"], "release 43");
    assert_eq!(plan["lease"], Value::Null);
    let history: Value = serde_json::from_str(&ok(r.grayctl(&["history", "--json"]))).unwrap();
    assert_eq!(
        history[0]["command"], "rollout start canary: step 1 of 3, 1%",
        "{history}"
    );
    let text = ok(r.grayctl(&["rollout", "status"]));
    assert!(text.contains("state    running: no check yet"), "{text}");
    assert!(
        text.contains("driver   none: no gateway holds the lease"),
        "{text}"
    );

    let err = refused(start_with(&r, "canary", &[]));
    assert!(
        err.contains("already has a plan: rule \"canary\", step 1 of 3, 1%, running"),
        "{err}"
    );
}

#[test]
fn a_plan_is_refused_for_a_rule_it_cannot_step_and_for_bad_flags() {
    let r = with_rules();
    let refusals = [
        (start_with(&r, "nope", &[]), "no rule \"nope\""),
        (start_with(&r, "ramped", &[]), "has a time ramp"),
        (start_with(&r, "stays", &[]), "routes to the default target"),
        (
            start_with(&r, "canary", &["--steps", "5,1"]),
            "--steps must increase",
        ),
        (
            start_with(&r, "canary", &["--steps", "0.005,1"]),
            "in steps of 0.01",
        ),
        (
            start_with(&r, "canary", &["--interval", "0.5s"]),
            "--interval must be at least 1s",
        ),
        (
            start_with(&r, "canary", &["--hold", "ten"]),
            "--hold: \"ten\" is not a duration",
        ),
        (
            start_with(&r, "canary", &["--set", "rollout"]),
            "its key would be another rule set's rollout key",
        ),
    ];
    for (out, expected) in refusals {
        let err = refused(out);
        assert!(err.contains(expected), "{expected}: {err}");
    }
    let no_gate = r.grayctl(&["rollout", "start", "canary", "--steps", "1,5"]);
    assert_eq!(code(&no_gate), 2, "{}", stderr(&no_gate));
    assert!(stderr(&no_gate).contains("--max-error-rate"));
    assert_eq!(r.cli(&["EXISTS", "gray:rules:rollout"]), "0");
    assert_eq!(rule_percent(&r, 0), 0);
}

#[test]
fn pause_resume_promote_and_abort_move_the_plan_and_the_rule() {
    let r = with_rules();
    ok(start_with(&r, "canary", &["--hold", "1.5s"]));
    ok(r.grayctl(&["rollout", "pause"]));
    assert_eq!(status(&r)["state"], "paused");
    let err = refused(r.grayctl(&["rollout", "pause"]));
    assert!(err.contains("already paused"), "{err}");
    ok(r.grayctl(&["rollout", "resume"]));
    assert_eq!(status(&r)["state"], "running");
    ok(r.grayctl(&["rollout", "promote", "-m", "looks good"]));
    let plan = status(&r);
    assert_eq!(
        (plan["state"].as_str(), plan["step"].as_u64()),
        (Some("done"), Some(3))
    );
    let reason = plan["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("promoted by tester@") && reason.ends_with(": looks good"),
        "{reason}"
    );
    assert_eq!(rule_percent(&r, 0), 25);
    let err = refused(r.grayctl(&["rollout", "abort"]));
    assert!(err.contains("cannot abort a plan that is done"), "{err}");

    ok(start_with(&r, "canary", &[]));
    assert_eq!(rule_percent(&r, 0), 1);
    ok(r.grayctl(&["rollout", "abort", "-m", "bad build"]));
    let plan = status(&r);
    assert_eq!(
        (plan["state"].as_str(), plan["percent"].as_f64()),
        (Some("aborted"), Some(0.0))
    );
    assert!(
        plan["reason"].as_str().unwrap().ends_with(": bad build"),
        "{plan}"
    );
    assert_eq!(rule_percent(&r, 0), 0);
    let history: Value = serde_json::from_str(&ok(r.grayctl(&["history", "--json"]))).unwrap();
    assert_eq!(
        history[0]["command"],
        "rollout abort canary: step 1 of 3, 0%"
    );

    // The abort is a rule set write like any other: a rollback undoes it.
    ok(r.grayctl(&["rollback"]));
    assert_eq!(rule_percent(&r, 0), 1);
}

#[test]
fn manual_edits_of_a_driven_rule_set_are_refused_unless_forced_which_pauses_the_plan() {
    let r = with_rules();
    ok(start_with(&r, "canary", &[]));
    let edits: [&[&str]; 4] = [
        &["percent", "canary", "50"],
        &["off"],
        &["rules", "set", "-"],
        &["rollback"],
    ];
    for edit in edits {
        let err = refused(r.grayctl_with(edit, &[], Some(RULES)));
        assert!(
            err.contains("is driven by a rollout plan (rule \"canary\", step 1 of 3, 1%, running)"),
            "{edit:?}: {err}"
        );
    }
    assert_eq!(rule_percent(&r, 0), 1);
    assert_eq!(status(&r)["state"], "running");

    let forced = r.grayctl(&["percent", "canary", "50", "--force"]);
    assert_eq!(code(&forced), 0, "{}", stderr(&forced));
    assert!(stderr(&forced).contains("rollout plan paused (--force)"));
    assert_eq!(rule_percent(&r, 0), 50);
    assert_eq!(status(&r)["state"], "paused");
    // A named rule set's edits are not held by the default one's plan.
    ok(r.grayctl_with(&["rules", "set", "-", "--set", "shop"], &[], Some(RULES)));
}
