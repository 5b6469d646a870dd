//! `grayctl top` in a real terminal (tmux, on a server of its own): with a real gateway reporting
//! and a rollout plan in Redis, the screen shows the gateway and the plan, and follows a change of
//! the plan within seconds.

mod common;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{ok, Gateway, Redis};

const RULES: &str = r#"{"format": 1, "rules": [
    {"name": "canary", "percent": 0, "to": "@prod2-grey"}
]}
"#;

/// A tmux server of this test's own, killed when dropped.
struct Tmux(String);

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .output()
            .expect("tmux runs (make test-grayctl installs it)");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    #[track_caller]
    fn shows(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let screen = self.screen();
            if wanted(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {what}:\n{screen}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

#[test]
fn top_shows_the_gateways_and_the_plan_and_follows_them() {
    let r = Redis::start();
    r.cli(&["SET", "gray", "1.1.1.1"]);
    ok(r.grayctl_with(&["rules", "set", "-"], &[], Some(RULES)));
    let gateway = Gateway::start(&r, "top", "refresh = 0.5, report = 0.5");
    ok(r.grayctl(&[
        "rollout",
        "start",
        "canary",
        "--steps",
        "5,50,100",
        "--hold",
        "10m",
        "--max-error-rate",
        "1",
    ]));

    let tmux = Tmux(format!("gray-top-{}", std::process::id()));
    let command = format!("{} --redis {} top", env!("CARGO_BIN_EXE_grayctl"), r.url());
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "150",
        "-y",
        "40",
        &command,
    ]);
    let pid = gateway.worker().to_string();
    let screen = tmux.shows("the gateway, current, and the running plan", |s| {
        s.contains("gray:gateways: 1 gateways, 1 current, 0 behind, 0 gone")
            && s.contains(&pid)
            && s.contains("gray:rules: rollout of rule \"canary\"")
            && s.contains("state    running")
            && s.contains("step     1 of 3: 5%")
    });
    assert!(screen.contains("Ctrl-C quits"), "{screen}");

    ok(r.grayctl(&["rollout", "pause"]));
    tmux.shows("the plan paused", |s| s.contains("state    paused"));
    ok(r.grayctl(&["rollout", "promote"]));
    tmux.shows("the plan done, at its last step", |s| {
        s.contains("state    done") && s.contains("step     3 of 3: 100%")
    });
}
