//! `grayctl status` and `grayctl wait` with two real gateways reporting (`report` in configure),
//! one of which hangs and then stops.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{ok, refused, Gateway, Redis};

fn status(r: &Redis) -> serde_json::Value {
    serde_json::from_str(&ok(r.grayctl(&["status", "--json"]))).unwrap()
}

fn states(r: &Redis) -> Vec<(u64, String)> {
    let mut states: Vec<(u64, String)> = status(r)["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["report"]["pid"].as_u64().unwrap(),
                g["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    states.sort();
    states
}

#[track_caller]
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_and_wait_follow_two_gateways_one_hung_then_stopped() {
    let r = Redis::start();
    r.cli(&["SET", "gray", "1.1.1.1"]);
    let refusal = refused(r.grayctl(&["wait", "--timeout", "0.5"]));
    assert!(
        refusal.contains("no gateway reports to gray:gateways"),
        "{refusal}"
    );

    // Reports every 0.5 s: a gateway is gone after missing 3 (2.5 s).
    let options = "refresh = 0.5, report = 0.5";
    let a = Gateway::start(&r, "a", options);
    let mut b = Gateway::start(&r, "b", options);
    let (wa, wb) = (u64::from(a.worker()), u64::from(b.worker()));
    let mut both = [(wa, "current".to_string()), (wb, "current".to_string())];
    both.sort();
    eventually("both gateways report", || states(&r) == both);
    assert!(ok(r.grayctl(&["wait", "--timeout", "10"]))
        .contains("all 2 reporting gateways serve the latest"));

    // b hangs: it neither loads the change nor reports. Until it misses its reports, it holds the
    // wait up and shows as behind.
    b.signal(wb as u32, "STOP");
    ok(r.grayctl(&["add", "2.2.2.2"]));
    let refusal = refused(r.grayctl(&["wait", "--timeout", "0.3"]));
    assert!(
        refusal.contains("timed out") && refusal.contains(&format!(":{wb} (gray: serves")),
        "{refusal}"
    );
    let behind = status(&r);
    let b_status = behind["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["report"]["pid"] == wb)
        .unwrap()
        .clone();
    assert_eq!(b_status["state"], "behind", "{behind}");
    let done = ok(r.grayctl(&["wait", "--timeout", "10"]));
    assert!(
        done.contains("all 1 reporting gateways serve the latest (1 not reporting, ignored)"),
        "{done}"
    );
    assert!(states(&r).contains(&(wb, "gone".to_string())));

    // b comes back, loads the change and reports again.
    b.signal(wb as u32, "CONT");
    eventually("b is current again", || states(&r) == both);

    // b stops for good: gone, and --prune forgets it.
    b.stop();
    eventually("b is gone", || {
        states(&r).contains(&(wb, "gone".to_string()))
    });
    ok(r.grayctl(&["status", "--prune"]));
    assert_eq!(states(&r), [(wa, "current".to_string())]);
    drop(a);
}
