//! Rollout plans driven by real gateways (Debian's nginx with the built module) under real load:
//! a healthy canary promoted to done by two gateways (paused and resumed on the way), a failing
//! one aborted with no request sent to it afterwards, a slow one aborted on p99, a fleet that
//! counts nothing holding at the first step, and the driving worker SIGKILLed mid-plan with
//! another carrying on, every step applied once. The tests of this file run one at a time: each
//! loads two cores.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{free_port, ok, Gateway, Redis};
use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const RULES: &str = r#"{"format": 1, "rules": [
    {"name": "canary", "percent": 0, "to": "@prod2-grey"}
]}
"#;

const HEALTHY: &str = r#"return 200 "gray\n";"#;

/// A gateway routing by gray, counting responses, its canary answering with `canary`.
fn gateway(
    r: &Redis,
    name: &str,
    workers: u32,
    canary: &str,
    options: &str,
    counts: bool,
) -> (Gateway, u16) {
    let port = free_port();
    let http = format!(
        r#"{init}
    init_worker_by_lua_block {{
        require("gray").configure{{ redis = "{url}", refresh = 0.5, count_responses = true, {options} }}
    }}
    set_real_ip_from 127.0.0.1;
    real_ip_header X-Client;
    server {{
        listen 127.0.0.1:{port};
        location / {{ content_by_lua_block {{ require("gray").route() }} }}
        location /metrics {{ content_by_lua_block {{ require("gray").metrics() }} }}
        location @prod1 {{ return 200 "prod\n"; }}
        location @prod2-grey {{ {canary} }}
    }}"#,
        init = if counts {
            "init_by_lua_block { require \"gray\" }"
        } else {
            ""
        },
        url = r.url(),
    );
    let gateway = Gateway::start_with(name, workers, &http);
    let deadline = Instant::now() + Duration::from_secs(10);
    while request(port, "/metrics", "127.0.0.1").is_err() {
        assert!(Instant::now() < deadline, "gateway {name} never answered");
        thread::sleep(Duration::from_millis(20));
    }
    (gateway, port)
}

/// One request as client `client`: the status and body, `None` if it failed (said on stderr).
fn get(port: u16, path: &str, client: &str) -> Option<(u16, String)> {
    request(port, path, client)
        .map_err(|e| eprintln!("request to {port}: {e}"))
        .ok()
}

fn request(port: u16, path: &str, client: &str) -> Result<(u16, String), String> {
    let failed = |e: std::io::Error| e.to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(failed)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(failed)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: t\r\nX-Client: {client}\r\n\r\n"
    )
    .map_err(failed)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(failed)?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok());
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string());
    match (status, body) {
        (Some(status), Some(body)) => Ok((status, body)),
        _ => Err(format!("not an HTTP response: {response:?}")),
    }
}

/// Requests to the gateways from many clients until dropped; counts what came back.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    answered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Load {
    fn start(ports: &[u16]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = ports
            .iter()
            .map(|&port| {
                let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
                thread::spawn(move || {
                    let mut n: u32 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n = n.wrapping_add(1);
                        let client =
                            format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
                        match get(port, "/", &client) {
                            Some((200, _)) => answered.fetch_add(1, Ordering::Relaxed),
                            // The failing canary's 500s are what its test is about.
                            Some((500, body)) if body == "gray\n" => {
                                answered.fetch_add(1, Ordering::Relaxed)
                            }
                            other => {
                                if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                    eprintln!("port {port}: {other:?}");
                                }
                                0
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            answered,
            failed,
        }
    }

    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.answered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn status(r: &Redis) -> Value {
    serde_json::from_str(&ok(r.grayctl(&["rollout", "status", "--json"]))).unwrap()
}

#[track_caller]
fn wait_for(r: &Redis, what: &str, seconds: u64, mut done: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let plan = status(r);
        if done(&plan) {
            return plan;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: {plan:#}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn start(r: &Redis, extra: &[&str]) {
    let mut args = vec![
        "rollout",
        "start",
        "canary",
        "--hold",
        "1s",
        "--interval",
        "1s",
        "--max-error-rate",
        "1",
        "--min-requests",
        "20",
        "--failure-limit",
        "2",
    ];
    args.extend_from_slice(extra);
    ok(r.grayctl(&args));
}

/// The history's rollout moves, oldest first.
fn rollout_moves(r: &Redis) -> Vec<String> {
    let history: Value = serde_json::from_str(&ok(r.grayctl(&["history", "--json"]))).unwrap();
    let mut moves: Vec<String> = history
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["command"].as_str())
        .filter(|c| c.starts_with("rollout "))
        .map(str::to_string)
        .collect();
    moves.reverse();
    moves
}

fn rule_percent(r: &Redis) -> Value {
    let stored: Value = serde_json::from_str(&r.cli(&["GET", "gray:rules"])).unwrap();
    stored["rules"][0]["percent"].clone()
}

fn with_rules() -> Redis {
    let r = Redis::start();
    ok(r.grayctl_with(&["rules", "set", "-"], &[], Some(RULES)));
    r
}

#[test]
fn a_healthy_canary_is_promoted_to_done_by_two_gateways_paused_and_resumed_on_the_way() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let r = with_rules();
    let (a, pa) = gateway(&r, "healthy-a", 2, HEALTHY, "rollouts = true", true);
    let (b, pb) = gateway(&r, "healthy-b", 1, HEALTHY, "rollouts = true", true);
    let load = Load::start(&[pa, pb]);
    start(&r, &["--steps", "10,30,60,100"]);
    wait_for(&r, "step 2", 30, |p| p["step"] == 2);
    ok(r.grayctl(&["rollout", "pause", "-m", "a look at the dashboards"]));
    thread::sleep(Duration::from_secs(3));
    let paused = status(&r);
    assert_eq!(
        (paused["state"].as_str(), paused["step"].as_u64()),
        (Some("paused"), Some(2))
    );
    assert!(
        paused["checks"].as_array().unwrap().len() >= 2,
        "checks still run: {paused:#}"
    );
    ok(r.grayctl(&["rollout", "resume"]));
    let done = wait_for(&r, "done", 60, |p| p["state"] == "done");
    let (answered, failed) = load.stop();
    assert_eq!(failed, 0, "non-2xx or failed requests of {answered}");
    assert_eq!(done["percent"], 100.0);
    assert_eq!(rule_percent(&r), 100);
    assert!(done["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["verdict"] == "passed"));
    assert_eq!(
        rollout_moves(&r),
        [
            "rollout start canary: step 1 of 4, 10%",
            "rollout step canary: step 2 of 4, 30%",
            "rollout step canary: step 3 of 4, 60%",
            "rollout step canary: step 4 of 4, 100%",
        ]
    );
    let driver = done["driver"].as_str().unwrap().to_string();
    let drivers: Vec<String> = a
        .workers()
        .iter()
        .chain(&b.workers())
        .map(|p| format!(":{p}"))
        .collect();
    assert!(
        drivers.iter().any(|d| driver.ends_with(d)),
        "{driver} is a worker of the gateways"
    );

    let metrics = get(pa, "/metrics", "127.0.0.1").unwrap().1;
    for line in [
        "gray_rollout_step{rule_set=\"gray:rules\",rule=\"canary\"} 4",
        "gray_rollout_percent{rule_set=\"gray:rules\",rule=\"canary\"} 100",
        "gray_rollout_state{rule_set=\"gray:rules\",rule=\"canary\",state=\"done\"} 1",
        "gray_rollout_state{rule_set=\"gray:rules\",rule=\"canary\",state=\"running\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // A step is a rule set write like any other: a rollback undoes it.
    ok(r.grayctl(&["rollback"]));
    assert_eq!(rule_percent(&r), 60);
    assert!(!a.error_log().contains("[error]"), "{}", a.error_log());
}

#[test]
fn a_failing_canary_is_aborted_and_neither_gateway_sends_to_it_afterwards() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let r = with_rules();
    let failing = r#"return 500 "gray\n";"#;
    let (a, pa) = gateway(&r, "failing-a", 1, failing, "rollouts = true", true);
    let (b, pb) = gateway(&r, "failing-b", 1, failing, "rollouts = true", true);
    let load = Load::start(&[pa, pb]);
    start(&r, &["--steps", "20,50,100"]);
    let aborted = wait_for(&r, "aborted", 30, |p| p["state"] == "aborted");
    load.stop();
    let reason = aborted["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("5xx 100.0% of ")
            && reason.contains("on @prod1, over the 1 point allowed, 2 checks in a row"),
        "{reason}"
    );
    assert_eq!(aborted["percent"], 0.0);
    assert_eq!(rule_percent(&r), 0);
    // The abort is published: every worker of both routes by it within the change detection's
    // latency (milliseconds); a second is plenty.
    thread::sleep(Duration::from_secs(1));
    for port in [pa, pb] {
        for n in 0..300 {
            let (status, body) = get(port, "/", &format!("10.9.{}.{}", n / 256, n % 256)).unwrap();
            assert_eq!(
                (status, body.as_str()),
                (200, "prod\n"),
                "request {n} to port {port}"
            );
        }
    }
    // The driver, on either gateway, says so in its error log.
    let logs = a.error_log() + &b.error_log();
    assert!(logs.contains("aborted: 5xx 100.0%"), "{logs}");
    let moves = rollout_moves(&r);
    assert_eq!(
        moves.last().unwrap(),
        "rollout abort canary: step 1 of 3, 0%"
    );
}

#[test]
fn a_slow_canary_is_aborted_on_its_p99() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let r = with_rules();
    let slow = r#"content_by_lua_block { ngx.sleep(0.03) ngx.print("gray\n") }"#;
    let (_a, pa) = gateway(&r, "slow-a", 1, slow, "rollouts = true", true);
    let load = Load::start(&[pa, pa]);
    start(&r, &["--steps", "30,100", "--max-p99", "0.01"]);
    let aborted = wait_for(&r, "aborted", 30, |p| p["state"] == "aborted");
    let (_, failed) = load.stop();
    assert_eq!(failed, 0);
    let reason = aborted["reason"].as_str().unwrap();
    assert!(reason.starts_with("p99 <= 0.05s of "), "{reason}");
    assert!(
        reason.ends_with("over the 0.01s allowed, 2 checks in a row"),
        "{reason}"
    );
}

#[test]
fn a_fleet_that_counts_no_responses_holds_the_first_step_and_says_why() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let r = with_rules();
    // No init_by_lua: no shared counters, nothing counted, however much traffic passes.
    let (_a, pa) = gateway(&r, "uncounted", 1, HEALTHY, "rollouts = true", false);
    let load = Load::start(&[pa]);
    start(&r, &["--steps", "10,100"]);
    thread::sleep(Duration::from_secs(5));
    let (answered, _) = load.stop();
    let plan = status(&r);
    assert!(answered > 100, "{answered}");
    assert_eq!(
        (plan["state"].as_str(), plan["step"].as_u64()),
        (Some("holding"), Some(1))
    );
    assert!(
        plan["why"]
            .as_str()
            .unwrap()
            .contains("no gateway counted a response to either target"),
        "{plan:#}"
    );
    let text = ok(r.grayctl(&["rollout", "status"]));
    assert!(
        text.contains("state    holding: 0 of 20 requests, and no gateway counted"),
        "{text}"
    );
}

#[test]
fn the_driving_worker_killed_mid_plan_is_replaced_and_no_step_is_applied_twice() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let r = with_rules();
    let (a, pa) = gateway(&r, "kill-a", 1, HEALTHY, "rollouts = true", true);
    let (b, pb) = gateway(&r, "kill-b", 1, HEALTHY, "rollouts = true", true);
    let load = Load::start(&[pa, pb]);
    start(&r, &["--steps", "5,10,20,40,70,100"]);
    wait_for(&r, "step 3", 40, |p| p["step"].as_u64() >= Some(3));
    let holder = r.cli(&["GET", "gray:rules:rollout:lease"]);
    let pid: u32 = holder.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        a.workers().contains(&pid) || b.workers().contains(&pid),
        "{holder}"
    );
    let killed_at = Instant::now();
    a.signal(pid, "KILL");
    let done = wait_for(&r, "done", 60, |p| p["state"] == "done");
    let (_, failed) = load.stop();
    // A worker's death costs the requests it was serving, no more.
    assert!(failed <= 5, "{failed} failed requests");
    let driver = done["driver"].as_str().unwrap();
    assert!(
        !driver.ends_with(&format!(":{pid}")),
        "{driver} took over from {pid}"
    );
    assert!(killed_at.elapsed() < Duration::from_secs(60));
    let moves = rollout_moves(&r);
    let steps: Vec<&String> = moves
        .iter()
        .filter(|m| m.starts_with("rollout step"))
        .collect();
    assert_eq!(steps.len(), 5, "{moves:#?}");
    for n in 2..=6 {
        let step = format!("step {n} of 6");
        assert_eq!(
            steps.iter().filter(|m| m.contains(&step)).count(),
            1,
            "{moves:#?}"
        );
    }
}
