//! grayctl against a real redis-server (Debian's, started per test on a free loopback port).

mod common;

use std::process::Command;
use std::thread;
use std::time::Duration;

use common::{code, ok, refused, stderr, Redis};

#[test]
fn whitelist_edits_keep_the_keys_type_and_format() {
    let r = Redis::start();
    r.cli(&["SET", "gray", "192.168.2.165"]);
    ok(r.grayctl(&["add", "10.0.0.1", "2001:db8::/32", "-m", "qa"]));
    assert_eq!(
        r.cli(&["GET", "gray"]),
        "192.168.2.165,10.0.0.1,2001:db8::/32"
    );
    ok(r.grayctl(&["remove", "10.0.0.1/32"]));
    assert_eq!(r.cli(&["GET", "gray"]), "192.168.2.165,2001:db8::/32");
    assert_eq!(ok(r.grayctl(&["export"])), "192.168.2.165\n2001:db8::/32\n");

    r.cli(&["DEL", "gray"]);
    r.cli(&["SADD", "gray", "1.1.1.1", "2.2.2.2"]);
    ok(r.grayctl(&["add", "3.3.3.3"]));
    ok(r.grayctl(&["remove", "1.1.1.1"]));
    assert_eq!(r.cli(&["TYPE", "gray"]), "set");
    assert_eq!(r.cli(&["SMEMBERS", "gray"]).lines().count(), 2);
    assert_eq!(r.cli(&["SISMEMBER", "gray", "3.3.3.3"]), "1");

    let listed: serde_json::Value =
        serde_json::from_str(&ok(r.grayctl(&["list", "--json"]))).unwrap();
    assert_eq!(listed["type"], "set");
    assert_eq!(listed["entries"].as_array().unwrap().len(), 2);

    let imported = ok(r.grayctl_with(
        &["import", "-"],
        &[],
        Some("# testers\n5.5.5.5\n6.6.6.6 # bob\n"),
    ));
    assert!(imported.contains("2 -> 2 entries (set)"), "{imported}");
    assert_eq!(r.cli(&["SISMEMBER", "gray", "5.5.5.5"]), "1");
    assert_eq!(r.cli(&["SISMEMBER", "gray", "3.3.3.3"]), "0");
}

#[test]
fn a_bad_entry_is_refused_by_name_and_nothing_is_written() {
    let r = Redis::start();
    r.cli(&["SET", "gray", "1.1.1.1"]);
    let err = refused(r.grayctl(&["add", "2.2.2.2", "10.0.0.300", "1.2.3.4/33"]));
    assert!(
        err.contains("\"10.0.0.300\": not an IPv4/IPv6 address or CIDR"),
        "{err}"
    );
    assert!(err.contains("\"1.2.3.4/33\": bad prefix length"), "{err}");
    let err = refused(r.grayctl_with(&["import", "-"], &[], Some("3.3.3.3\nnot-an-ip\n")));
    assert!(err.contains("\"not-an-ip\""), "{err}");
    assert_eq!(r.cli(&["GET", "gray"]), "1.1.1.1");
    assert_eq!(r.cli(&["LLEN", "gray:history"]), "0");
}

#[test]
fn exit_codes_tell_usage_and_an_unreachable_redis_apart() {
    let r = Redis::start();
    assert_eq!(code(&r.grayctl(&["add"])), 2);
    assert_eq!(code(&r.grayctl(&["no-such-command"])), 2);
    let port = common::free_port();
    let out = r.grayctl(&["--redis", &format!("redis://127.0.0.1:{port}/0"), "list"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("redis unreachable"),
        "{}",
        stderr(&out)
    );
    let err = refused(r.grayctl(&["--targets", "prod3", "list"]));
    assert!(err.contains("--targets"), "{err}");
}

const RULES: &str = r#"{
  "format": 1,
  "default": "@prod1",
  "rules": [
    { "name": "beta", "id": "cookie:uid", "in": ["u1001", "u1002"], "to": "@prod2-grey" },
    { "name": "ramp", "percent": 5, "by": ["cookie:uid", "ip"], "seed": "release-42", "to": "@prod2-grey" }
  ]
}
"#;

#[test]
fn rule_sets_are_validated_against_the_targets_and_percent_steps_up_only() {
    let r = Redis::start();
    let checked = ok(r.grayctl_with(&["rules", "check", "-"], &[], Some(RULES)));
    assert!(
        checked.contains("1. beta: cookie:uid is one of 2 ids -> @prod2-grey"),
        "{checked}"
    );
    let unknown = RULES.replace("\"to\": \"@prod2-grey\" },", "\"to\": \"@canary-b\" },");
    let err = refused(r.grayctl_with(&["rules", "set", "-"], &[], Some(&unknown)));
    assert!(
        err.contains("rules[1] \"beta\": to: unknown target \"@canary-b\""),
        "{err}"
    );
    assert_eq!(r.cli(&["EXISTS", "gray:rules"]), "0");
    ok(r.grayctl_with(
        &["--targets", "@canary-b", "rules", "set", "-"],
        &[],
        Some(&unknown),
    ));

    ok(r.grayctl_with(&["rules", "set", "-"], &[], Some(RULES)));
    assert_eq!(r.cli(&["GET", "gray:rules"]), RULES.trim_end());
    ok(r.grayctl(&["percent", "ramp", "10"]));
    let err = refused(r.grayctl(&["percent", "ramp", "5"]));
    assert!(err.contains("--down"), "{err}");
    let err = refused(r.grayctl(&["percent", "beta", "5"]));
    assert!(err.contains("rule \"beta\" has no percent"), "{err}");
    ok(r.grayctl(&["percent", "ramp", "2.5", "--down"]));
    let stored: serde_json::Value = serde_json::from_str(&r.cli(&["GET", "gray:rules"])).unwrap();
    assert_eq!(stored["rules"][1]["percent"], 2.5);

    ok(r.grayctl(&["off"]));
    let stored: serde_json::Value = serde_json::from_str(&r.cli(&["GET", "gray:rules"])).unwrap();
    assert_eq!(stored["enabled"], false);
    let explained: serde_json::Value = serde_json::from_str(&ok(r.grayctl(&[
        "explain",
        "--ip",
        "10.0.0.1",
        "--cookie",
        "uid=u1001",
        "--json",
    ])))
    .unwrap();
    assert_eq!(
        (explained["target"].as_str(), explained["outcome"].as_str()),
        (Some("@prod1"), Some("disabled"))
    );
    ok(r.grayctl(&["on"]));
    let explained: serde_json::Value = serde_json::from_str(&ok(r.grayctl(&[
        "explain",
        "--ip",
        "10.0.0.1",
        "--cookie",
        "uid=u1001",
        "--json",
    ])))
    .unwrap();
    assert_eq!(explained["target"], "@prod2-grey");
    assert_eq!(explained["rule"], "beta");
}

const LANES: &str = r#"{
  "format": 1,
  "default": "@prod1",
  "lane": { "header": "X-Gray-Lane", "from": ["10.0.0.0/8"],
            "labels": { "@prod1": "stable", "@prod2-grey": "gray" } },
  "anonymous": { "cookie": "gray_uid", "max_age": 2592000 },
  "rules": [
    { "name": "ramp", "percent": 10, "by": ["cookie:uid", "cookie:gray_uid"], "to": "@prod2-grey" }
  ]
}
"#;

#[test]
fn lanes_and_anonymous_ids_are_checked_shown_and_explained() {
    let r = Redis::start();
    let checked = ok(r.grayctl_with(&["rules", "check", "-"], &[], Some(LANES)));
    for line in [
        "lane header X-Gray-Lane: @prod1 stable, @prod2-grey gray; an upstream lane honoured from the addresses in from",
        "anonymous: cookie:gray_uid minted where a rule reads it and the request has none (Max-Age 2592000)",
    ] {
        assert!(checked.contains(line), "{checked}");
    }
    let clash = LANES.replace("\"gray\" }", "\"stable\" }");
    let err = refused(r.grayctl_with(&["rules", "check", "-"], &[], Some(&clash)));
    assert!(
        err.contains("lane.labels: @prod1 and @prod2-grey both have the label \"stable\""),
        "{err}"
    );
    ok(r.grayctl_with(&["rules", "set", "-"], &[], Some(LANES)));
    let explain = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["explain", "--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&ok(r.grayctl(&all))).unwrap()
    };
    let upstream = explain(&["--ip", "10.1.2.3", "--header", "X-Gray-Lane:gray"]);
    assert_eq!(
        (upstream["target"].as_str(), upstream["outcome"].as_str()),
        (Some("@prod2-grey"), Some("lane"))
    );
    assert_eq!(upstream["lane"], "X-Gray-Lane: as it came");
    let forged = explain(&[
        "--ip",
        "1.2.3.4",
        "--header",
        "X-Gray-Lane:gray",
        "--cookie",
        "uid=u1",
    ]);
    assert_ne!(forged["outcome"], "lane");
    assert!(
        forged["reason"]
            .as_str()
            .unwrap()
            .contains("lane X-Gray-Lane: gray ignored"),
        "{forged}"
    );
    let label = if forged["target"] == "@prod1" {
        "stable"
    } else {
        "gray"
    };
    assert_eq!(forged["lane"], format!("X-Gray-Lane: {label}"));
    let cookieless = explain(&["--ip", "1.2.3.4"]);
    assert_eq!(
        cookieless["anonymous"],
        "a new id would be minted; 10% of new ids go to @prod2-grey"
    );
    assert!(cookieless.get("anonymous").is_some());
    let text = ok(r.grayctl(&["explain", "--ip", "1.2.3.4"]));
    assert!(
        text.contains("a new id would be minted; 10% of new ids go to @prod2-grey"),
        "{text}"
    );
    assert!(text.contains("lane:   X-Gray-Lane: "), "{text}");
}

#[test]
fn history_records_each_change_and_rollback_restores_it() {
    let r = Redis::start();
    r.cli(&["SET", "gray", "1.1.1.1"]);
    ok(r.grayctl(&["add", "2.2.2.2", "-m", "ticket 7"]));
    ok(r.grayctl(&["add", "3.3.3.3"]));
    let shown = ok(r.grayctl(&["history"]));
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(
        lines[0].contains("tester@") && lines[0].contains("gray: add 3.3.3.3"),
        "{shown}"
    );
    assert!(lines[1].contains("add 2.2.2.2  (ticket 7)"), "{shown}");

    ok(r.grayctl(&["rollback"]));
    assert_eq!(r.cli(&["GET", "gray"]), "1.1.1.1,2.2.2.2");
    ok(r.grayctl(&["rollback", "3"]));
    assert_eq!(r.cli(&["GET", "gray"]), "1.1.1.1");
    // The rollbacks are changes too: undoing the last one puts 2.2.2.2 back.
    ok(r.grayctl(&["rollback"]));
    assert_eq!(r.cli(&["GET", "gray"]), "1.1.1.1,2.2.2.2");
    let err = refused(r.grayctl(&["rollback", "99"]));
    assert!(err.contains("no history entry 99"), "{err}");

    ok(r.grayctl_with(&["rules", "set", "-"], &[], Some(RULES)));
    ok(r.grayctl(&["percent", "ramp", "20"]));
    ok(r.grayctl(&["rollback"]));
    assert_eq!(r.cli(&["GET", "gray:rules"]), RULES.trim_end());
    // Before the first rule set there was none: rolling back to it deletes the key.
    ok(r.grayctl(&["rollback", "3"]));
    assert_eq!(r.cli(&["EXISTS", "gray:rules"]), "0");
}

#[test]
fn two_writers_at_once_one_wins_and_the_other_is_told() {
    let r = Redis::start();
    r.cli(&["SET", "gray", "1.1.1.1"]);
    let url = r.url();
    let slow = thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_grayctl"))
            .args(["--redis", &url, "add", "2.2.2.2"])
            .env("GRAYCTL_PAUSE_BEFORE_WRITE", "1500")
            .output()
            .unwrap()
    });
    thread::sleep(Duration::from_millis(500));
    ok(r.grayctl(&["add", "3.3.3.3"]));
    let err = refused(slow.join().unwrap());
    assert!(err.contains("changed under you"), "{err}");
    assert_eq!(r.cli(&["GET", "gray"]), "1.1.1.1,3.3.3.3");
    assert_eq!(r.cli(&["LLEN", "gray:history"]), "1");
}

#[test]
fn a_reader_never_sees_a_partial_list() {
    for kind in ["set", "string"] {
        let r = Redis::start();
        let list = |tag: u8| -> String {
            (0..2000)
                .map(|i| format!("10.{tag}.{}.{}\n", i / 250, i % 250))
                .collect()
        };
        if kind == "set" {
            r.cli(&["SADD", "gray", "10.1.0.0"]);
        } else {
            r.cli(&["SET", "gray", "10.1.0.0\n"]);
        }
        ok(r.grayctl_with(&["import", "-"], &[], Some(&list(1))));
        let port = r.port.to_string();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let done = done.clone();
            thread::spawn(move || {
                let read = if kind == "set" { "SMEMBERS" } else { "GET" };
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let out = Command::new("redis-cli")
                        .args(["-p", &port, read, "gray"])
                        .output()
                        .unwrap();
                    let entries: Vec<String> = String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .map(str::to_string)
                        .collect();
                    let tags: std::collections::HashSet<&str> = entries
                        .iter()
                        .map(|m| m.split('.').nth(1).unwrap_or("?"))
                        .collect();
                    assert_eq!(
                        entries.len(),
                        2000,
                        "a {kind} reader saw {} entries",
                        entries.len()
                    );
                    assert_eq!(tags.len(), 1, "a {kind} reader saw a mix of lists");
                    reads += 1;
                }
                reads
            })
        };
        for round in 0..10u8 {
            ok(r.grayctl_with(&["import", "-"], &[], Some(&list(2 + round % 2))));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(r.cli(&["TYPE", "gray"]), kind);
    }
}

#[test]
fn rule_set_keys_of_another_kind_are_replaced_or_refused_by_name() {
    let r = Redis::start();
    r.cli(&["SET", "gray:rules", "not json"]);
    let err = refused(r.grayctl(&["percent", "ramp", "10"]));
    assert!(err.contains("key gray:rules does not hold JSON"), "{err}");
    ok(r.grayctl_with(&["rules", "set", "-"], &[], Some(RULES)));
    assert_eq!(r.cli(&["GET", "gray:rules"]), RULES.trim_end());

    ok(r.grayctl_with(&["rules", "set", "-", "--set", "shop"], &[], Some(RULES)));
    assert_eq!(r.cli(&["GET", "gray:rules:shop"]), RULES.trim_end());
    ok(r.grayctl(&["off", "--set", "shop"]));
    assert_eq!(
        r.cli(&["GET", "gray:rules"]),
        RULES.trim_end(),
        "only the named set changed"
    );
    let err = refused(r.grayctl(&["off", "--set", "a b"]));
    assert!(err.contains("--set \"a b\""), "{err}");
    // gray:rules:guard is the default rule set's guard hash: never a rule set of its own.
    for name in ["guard", "shop:guard"] {
        let err = refused(r.grayctl(&["rules", "set", "-", "--set", name]));
        assert!(err.contains("cannot name a rule set"), "{err}");
    }
    assert_eq!(r.cli(&["EXISTS", "gray:rules:guard"]), "0");
    let err = refused(r.grayctl(&["on", "--set", "nothing-here"]));
    assert!(
        err.contains("no rule set in key gray:rules:nothing-here"),
        "{err}"
    );
}

#[test]
fn a_history_key_of_another_type_stops_the_write_before_it_starts() {
    let r = Redis::start();
    r.cli(&["SET", "gray", "1.1.1.1"]);
    r.cli(&["SET", "gray:history", "oops"]);
    let err = refused(r.grayctl(&["add", "2.2.2.2"]));
    assert!(
        err.contains("history key gray:history is not a list"),
        "{err}"
    );
    assert_eq!(r.cli(&["GET", "gray"]), "1.1.1.1");
}

#[test]
fn imports_refuse_an_empty_file_and_see_a_reordered_set_as_unchanged() {
    let r = Redis::start();
    r.cli(&["SADD", "gray", "1.1.1.1", "2.2.2.2", "3.3.3.3"]);
    let err = refused(r.grayctl_with(&["import", "-"], &[], Some("# nobody\n")));
    assert!(err.contains("--allow-empty"), "{err}");
    let same = ok(r.grayctl_with(&["import", "-"], &[], Some("3.3.3.3\n1.1.1.1\n2.2.2.2\n")));
    assert!(same.contains("nothing to change"), "{same}");
    assert_eq!(r.cli(&["LLEN", "gray:history"]), "0");
    ok(r.grayctl_with(&["import", "-", "--allow-empty"], &[], Some("")));
    assert_eq!(r.cli(&["EXISTS", "gray"]), "0");
}

#[test]
fn a_rollback_racing_another_writer_is_told() {
    let r = Redis::start();
    r.cli(&["SET", "gray", "1.1.1.1"]);
    ok(r.grayctl(&["add", "2.2.2.2"]));
    let url = r.url();
    let slow = thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_grayctl"))
            .args(["--redis", &url, "rollback"])
            .env("GRAYCTL_PAUSE_BEFORE_WRITE", "1500")
            .output()
            .unwrap()
    });
    thread::sleep(Duration::from_millis(500));
    ok(r.grayctl(&["add", "3.3.3.3"]));
    let err = refused(slow.join().unwrap());
    assert!(err.contains("changed under you"), "{err}");
    assert_eq!(r.cli(&["GET", "gray"]), "1.1.1.1,2.2.2.2,3.3.3.3");
}

#[test]
fn a_change_is_announced_on_the_channel() {
    use std::io::{BufRead, BufReader, Write};
    let r = Redis::start();
    let mut sub = std::net::TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sub.write_all(b"SUBSCRIBE gray:changed\r\n").unwrap();
    let mut lines = BufReader::new(sub);
    let mut line = String::new();
    // *3, $9, subscribe, $12, gray:changed, :1
    for _ in 0..6 {
        line.clear();
        lines.read_line(&mut line).unwrap();
    }
    ok(r.grayctl(&["add", "2.2.2.2"]));
    let mut message = Vec::new();
    for _ in 0..7 {
        line.clear();
        lines.read_line(&mut line).unwrap();
        message.push(line.trim_end().to_string());
    }
    assert_eq!(message[2], "message");
    assert_eq!(message[4], "gray:changed");
    assert_eq!(message[6], "gray", "the payload names the key");
}

#[test]
fn guard_show_lists_trips_and_reset_clears_that_rules_records() {
    let r = Redis::start();
    r.cli(&[
        "SET",
        "gray:rules",
        r#"{"format":1,"rules":[{"name":"canary","ip":["10.0.0.1"],"to":"@prod2-grey","guard":{"max_error_rate":5}},{"name":"plain","ip":["10.0.0.2"],"to":"@prod2-grey"}]}"#,
    ]);
    let record = |rule: &str| {
        format!(
            r#"{{"rule":"{rule}","target":"@prod2-grey","host":"gw1","pid":7,"at":1.0,"version":"00000000000000ab","responses":250,"errors":30,"default_responses":1000,"default_errors":4,"window":60,"max_error_rate":5.0}}"#
        )
    };
    r.cli(&[
        "HSET",
        "gray:rules:guard",
        "trip:gw1:canary",
        &record("canary"),
    ]);
    r.cli(&[
        "HSET",
        "gray:rules:guard",
        "trip:gw1:other",
        &record("other"),
    ]);
    let shown = ok(r.grayctl(&["guard", "show"]));
    assert!(
        shown.contains("canary (to @prod2-grey) tripped on gw1 (pid 7)")
            && shown.contains(
                "5xx 12.0% of 250 responses in the last 60s against 0.4% of 1000 for the default target, over the 5 points allowed"
            ),
        "{shown}"
    );
    let err = refused(r.grayctl(&["guard", "reset", "plain"]));
    assert!(
        err.contains("rule set gray:rules has no rule \"plain\" with a guard"),
        "{err}"
    );
    let reset = ok(r.grayctl(&["guard", "reset", "canary"]));
    assert!(reset.contains("trip records removed: 1;"), "{reset}");
    assert_eq!(
        r.cli(&["HEXISTS", "gray:rules:guard", "trip:gw1:canary"]),
        "0"
    );
    assert_eq!(
        r.cli(&["HEXISTS", "gray:rules:guard", "trip:gw1:other"]),
        "1"
    );
    let at: u64 = r
        .cli(&["HGET", "gray:rules:guard", "reset:canary"])
        .parse()
        .unwrap();
    assert!(at > 1_700_000_000_000, "{at}");
    let shown: serde_json::Value =
        serde_json::from_str(&ok(r.grayctl(&["guard", "show", "--json"]))).unwrap();
    assert_eq!(shown["trips"].as_array().unwrap().len(), 1);
    assert_eq!(shown["resets"][0]["rule"], "canary");
}

#[test]
fn a_history_entry_cannot_steer_a_rollback_elsewhere_nor_crash_the_history() {
    let r = Redis::start();
    r.cli(&["SET", "gray", "1.1.1.1"]);
    r.cli(&["SET", "gray:history:victim", "precious"]);
    let entry = |key: &str, subject: &str, time: &str| {
        format!(
            r#"{{"time":{time},"who":"x@y","command":"add 9.9.9.9","key":"{key}","subject":"{subject}","previous":{{"type":"string","value":"9.9.9.9"}},"previous_bytes":7}}"#
        )
    };
    // Keys no whitelist or rule set of this gray owns: refused, nothing written.
    for (key, subject) in [
        ("gray:history:victim", "whitelist"),
        ("gray:rules:guard", "rule_set"),
        ("gray:rules", "whitelist"),
        ("gray", "rule_set"),
    ] {
        r.cli(&["LPUSH", "gray:history", &entry(key, subject, "1")]);
        let err = refused(r.grayctl(&["rollback"]));
        assert!(err.contains("not one this gray's"), "{key}: {err}");
        r.cli(&["LPOP", "gray:history"]);
    }
    assert_eq!(r.cli(&["GET", "gray:history:victim"]), "precious");
    // A time no clock can show: the history lists it all the same.
    r.cli(&[
        "LPUSH",
        "gray:history",
        &entry("gray", "whitelist", "18446744073709551615"),
    ]);
    let shown = ok(r.grayctl(&["history"]));
    assert!(shown.contains("gray: add 9.9.9.9"), "{shown}");
    ok(r.grayctl(&["history", "--json"]));
}

#[test]
fn every_argument_says_what_it_is() {
    let r = Redis::start();
    let help = ok(r.grayctl(&["percent", "--help"]));
    assert!(help.contains("The rule's name in the rule set"), "{help}");
    assert!(help.contains("Its new percentage, 0 to 100"), "{help}");
}
