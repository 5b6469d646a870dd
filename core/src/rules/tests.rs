//! The evaluator and the decoder, table-driven where the cases are many.

use std::net::IpAddr;

use super::schema::compile;
use super::*;

fn targets() -> Vec<String> {
    ["@prod1", "@prod2-grey", "@canary-b"]
        .map(String::from)
        .to_vec()
}

fn rule_set(json: &str) -> RuleSet {
    compile(json.as_bytes(), &targets()).unwrap_or_else(|e| panic!("{e}"))
}

fn error(json: &str) -> String {
    compile(json.as_bytes(), &targets())
        .unwrap_err()
        .to_string()
}

/// A request from `client` with inputs by source text.
struct Req<'a> {
    client: &'a str,
    values: Vec<(&'a str, &'a str)>,
    now: f64,
}

fn req(client: &str) -> Req<'_> {
    Req {
        client,
        values: Vec::new(),
        now: 0.0,
    }
}

impl<'a> Req<'a> {
    fn with(mut self, source: &'a str, value: &'a str) -> Self {
        self.values.push((source, value));
        self
    }

    fn at(mut self, now: f64) -> Self {
        self.now = now;
        self
    }
}

/// The target name and the deciding rule's name (or "default", "override", "disabled").
fn decide(rs: &RuleSet, r: Req<'_>, keys: &[Option<KeyData<'_>>]) -> (String, String) {
    let inputs = inputs_of(rs, &r);
    let request = Request {
        client: r.client.parse::<IpAddr>().ok(),
        inputs: &inputs,
        now: r.now,
        mint: None,
    };
    let d = rs.evaluate(&request, keys, &mut ());
    (targets()[d.target].clone(), how(rs, &d))
}

/// The values of `rs`'s inputs in `r`, in order.
fn inputs_of<'a>(rs: &RuleSet, r: &Req<'a>) -> Vec<Option<&'a [u8]>> {
    rs.inputs
        .iter()
        .map(|source| {
            r.values
                .iter()
                .find(|(s, _)| *s == source.to_string())
                .map(|(_, v)| v.as_bytes())
        })
        .collect()
}

/// The deciding rule's name, or how it was decided.
fn how(rs: &RuleSet, d: &Decision) -> String {
    match d.outcome {
        Outcome::Rule(i) => rs.rules[i].name.clone(),
        other => other.as_str().into(),
    }
}

/// The README's example, kept in one file.
const EXAMPLE: &str = include_str!("../../../nginx-conf/rules/example.json");

#[test]
fn the_readme_shows_the_example_as_it_is() {
    let readme = include_str!("../../../README.md");
    assert!(
        readme.contains(&format!("```json\n{EXAMPLE}```")),
        "README.md's example rule set differs from nginx-conf/rules/example.json"
    );
}

#[test]
fn the_example_compiles_with_each_input_once() {
    let rs = rule_set(EXAMPLE);
    assert_eq!(rs.rules.len(), 8);
    let inputs: Vec<String> = rs.inputs.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        inputs,
        ["header:X-Gray", "cookie:uid", "header:X-User-Id", "arg:uid"]
    );
    assert_eq!(
        rs.keys,
        vec![
            KeyRef {
                name: "gray".into(),
                use_: KeyUse::Whitelist
            },
            KeyRef {
                name: "gray:beta".into(),
                use_: KeyUse::Ids
            },
        ]
    );
}

#[test]
fn each_condition_kind_decides_in_order() {
    let rs = rule_set(EXAMPLE);
    let whitelist = crate::whitelist::Whitelist::parse([&b"192.168.2.165"[..]]);
    let beta = IdSet::parse([&b"u5000 u5001"[..]]);
    let keys = [
        Some(KeyData::Whitelist(&whitelist)),
        Some(KeyData::Ids(&beta)),
    ];
    let cases: &[(Req, &str, &str)] = &[
        (req("192.168.2.165"), "@prod2-grey", "whitelist"),
        (req("10.20.3.4"), "@prod2-grey", "office"),
        (req("2001:db8::1"), "@prod2-grey", "office"),
        (
            req("1.1.1.1").with("cookie:uid", "u1002"),
            "@prod2-grey",
            "beta",
        ),
        (
            req("1.1.1.1").with("cookie:uid", "u10021"),
            "@prod1",
            "default",
        ),
        (
            req("1.1.1.1").with("header:X-User-Id", "u5001"),
            "@prod2-grey",
            "beta-big",
        ),
        (req("1.1.1.1").with("arg:uid", "u17"), "@canary-b", "tail-7"),
        (req("1.1.1.1").with("arg:uid", "u18"), "@prod1", "default"),
        (
            req("1.1.1.1").with("header:X-User-Id", "150000"),
            "@canary-b",
            "band",
        ),
        (
            req("1.1.1.1").with("header:X-User-Id", "200000"),
            "@prod1",
            "default",
        ),
        (
            req("1.1.1.1").with("header:X-User-Id", "15e4"),
            "@prod1",
            "default",
        ),
        (
            req("1.1.1.1").with("header:X-User-Id", "vip-12"),
            "@prod1",
            "vip-stays",
        ),
        (
            req("1.1.1.1").with("header:X-User-Id", "vip-12x"),
            "@prod1",
            "default",
        ),
        // An empty id is no id.
        (req("1.1.1.1").with("cookie:uid", ""), "@prod1", "default"),
        // Rule order: the whitelist is tried before the office.
        (
            req("10.20.0.1").with("cookie:uid", "u1001"),
            "@prod2-grey",
            "office",
        ),
    ];
    for (r, target, rule) in cases {
        let r = Req {
            client: r.client,
            values: r.values.clone(),
            now: 0.0,
        };
        let label = format!("{} {:?}", r.client, r.values);
        assert_eq!(
            decide(&rs, r, &keys),
            (target.to_string(), rule.to_string()),
            "{label}"
        );
    }
}

#[test]
fn a_key_not_loaded_matches_no_one() {
    let rs = rule_set(EXAMPLE);
    assert_eq!(
        decide(&rs, req("192.168.2.165"), &[None, None]),
        ("@prod1".into(), "default".into())
    );
}

#[test]
fn conditions_of_one_rule_are_anded() {
    let rs = rule_set(
        r#"{"format":1,"rules":[{"name":"office-10","ip":["10.0.0.0/8"],"percent":100,"by":["cookie:uid"],"to":"@canary-b"}]}"#,
    );
    let keys: [Option<KeyData>; 0] = [];
    assert_eq!(
        decide(&rs, req("10.1.1.1").with("cookie:uid", "u"), &keys).1,
        "office-10"
    );
    assert_eq!(decide(&rs, req("10.1.1.1"), &keys).1, "default");
    assert_eq!(
        decide(&rs, req("11.1.1.1").with("cookie:uid", "u"), &keys).1,
        "default"
    );
}

#[test]
fn the_percentage_is_sticky_and_reads_its_sources_in_order() {
    let json = |p: &str| {
        format!(
            r#"{{"format":1,"rules":[{{"name":"ramp","percent":{p},"by":["cookie:uid","ip"],"seed":"s","to":"@prod2-grey"}}]}}"#
        )
    };
    let keys: [Option<KeyData>; 0] = [];
    let (none, all, ten) = (
        rule_set(&json("0")),
        rule_set(&json("100")),
        rule_set(&json("10")),
    );
    let mut in_at_ten = 0;
    for i in 0..2000 {
        let uid = format!("u{i}");
        assert_eq!(
            decide(&none, req("1.1.1.1").with("cookie:uid", &uid), &keys).1,
            "default"
        );
        assert_eq!(
            decide(&all, req("1.1.1.1").with("cookie:uid", &uid), &keys).1,
            "ramp"
        );
        let b = bucket::bucket("s", uid.as_bytes());
        let expected = if b < 429_496_729 { "ramp" } else { "default" };
        let got = decide(&ten, req("1.1.1.1").with("cookie:uid", &uid), &keys).1;
        assert_eq!(got, expected);
        in_at_ten += (got == "ramp") as usize;
    }
    assert!((150..250).contains(&in_at_ten), "{in_at_ten}");
    // No cookie: the client address is the key.
    let by_ip = bucket::bucket("s", b"1.2.3.4") < 429_496_729;
    assert_eq!(decide(&ten, req("1.2.3.4"), &keys).1 == "ramp", by_ip);
}

#[test]
fn a_ramp_grows_linearly_between_its_times_and_only_grows() {
    let rs = rule_set(
        r#"{"format":1,"rules":[{"name":"r","percent":{"from":1,"to":50,"start":"2026-12-02T10:00:00Z","end":"2026-12-02T12:00:00Z"},"to":"@prod2-grey"}]}"#,
    );
    let start = 1_796_205_600.0; // 2026-12-02T10:00:00Z
    let amount = rs.rules[0].percent.as_ref().unwrap().amount;
    assert_eq!(amount.at(start - 1.0), 100);
    assert_eq!(amount.at(start), 100);
    assert_eq!(amount.at(start + 3600.0), 2550);
    assert_eq!(amount.at(start + 7200.0), 5000);
    assert_eq!(amount.at(start + 1e6), 5000);
    let mut last = 0;
    for s in 0..7300 {
        let now = amount.at(start + f64::from(s));
        assert!(now >= last);
        last = now;
    }
    let keys: [Option<KeyData>; 0] = [];
    // The evaluation reads the amount at the request's time; with no `by`, the key is the client.
    let bucket = bucket::bucket("r", b"1.1.1.1");
    for (now, hundredths) in [(start, 100), (start + 7200.0, 5000)] {
        let expected = if bucket::is_in(bucket, bucket::threshold(hundredths)) {
            "r"
        } else {
            "default"
        };
        assert_eq!(decide(&rs, req("1.1.1.1").at(now), &keys).1, expected);
    }
}

#[test]
fn the_override_header() {
    let rs = rule_set(EXAMPLE);
    let keys = [None, None];
    let cases: &[(&str, &str, &str, &str)] = &[
        ("10.1.2.3", "always", "@prod2-grey", "override"),
        ("127.0.0.1", "@canary-b", "@canary-b", "override"),
        ("10.1.2.3", "ALWAYS", "@prod2-grey", "override"),
        // From elsewhere always and target names are ignored: the rules decide.
        ("1.1.1.1", "always", "@prod1", "default"),
        ("1.1.1.1", "@canary-b", "@prod1", "default"),
        // never lowers risk: honoured from anyone, even a whitelisted client.
        ("10.20.1.1", "never", "@prod1", "override"),
        ("1.1.1.1", "bogus", "@prod1", "default"),
    ];
    for (client, value, target, how) in cases {
        let got = decide(&rs, req(client).with("header:X-Gray", value), &keys);
        assert_eq!(
            got,
            (target.to_string(), how.to_string()),
            "{client} {value}"
        );
    }
    let off = rule_set(&EXAMPLE.replace("\"enabled\": true", "\"enabled\": false"));
    assert_eq!(
        decide(&off, req("10.1.2.3").with("header:X-Gray", "always"), &keys),
        ("@prod1".into(), "disabled".into())
    );
    assert_eq!(decide(&off, req("10.20.1.1"), &keys).1, "disabled");
}

#[test]
fn validation_errors_name_the_rule_and_the_field() {
    let r = |rule: &str| {
        format!(r#"{{"format":1,"rules":[{{"name":"x","to":"@prod2-grey"}},{rule}]}}"#)
    };
    let cases: Vec<(String, &str)> = vec![
        ("{".into(), "not a rule set: EOF while parsing"),
        (r#"{"format":2,"rules":[]}"#.into(), "format is 2, this gray reads format 1"),
        (r#"{"rules":[]}"#.into(), "not a rule set: missing field `format`"),
        (r#"{"format":1,"rules":[],"extra":1}"#.into(), "not a rule set: unknown field `extra`"),
        (r(r#"{"name":"beta","precent":5,"to":"@prod1"}"#), "rules[2] \"beta\": unknown field `precent`"),
        (r(r#"{"name":"p","percent":100.5,"to":"@prod1"}"#), "rules[2] \"p\": percent: must be a number from 0 to 100 in steps of 0.01"),
        (r(r#"{"name":"p","percent":5.005,"to":"@prod1"}"#), "rules[2] \"p\": percent: must be a number from 0 to 100 in steps of 0.01"),
        (r(r#"{"name":"p","percent":-1,"to":"@prod1"}"#), "percent: must be a number"),
        (r(r#"{"name":"re","id":"arg:u","regex":"(","to":"@prod1"}"#), "rules[2] \"re\": regex: regex parse error"),
        (r(r#"{"name":"x","to":"@prod1"}"#), "rules[2] \"x\": duplicate rule name"),
        (r(r#"{"name":"t","to":"@nowhere"}"#), "rules[2] \"t\": to: unknown target \"@nowhere\" (this nginx has @prod1, @prod2-grey, @canary-b)"),
        (r#"{"format":1,"default":"@x","rules":[]}"#.into(), "default: unknown target \"@x\""),
        (r(r#"{"name":"i","id":"body:uid","in":["1"],"to":"@prod1"}"#), "rules[2] \"i\": id: \"body:uid\": unknown source kind \"body\""),
        (r(r#"{"name":"i","id":"cookie:uid","to":"@prod1"}"#), "rules[2] \"i\": id: needs in, in_key"),
        (r(r#"{"name":"i","in":["1"],"to":"@prod1"}"#), "rules[2] \"i\": id: missing"),
        (r(r#"{"name":"i","ip":["10.0.0.0/99"],"to":"@prod1"}"#), "rules[2] \"i\": ip[1]: \"10.0.0.0/99\" (bad prefix length)"),
        (r(r#"{"name":"g","id":"arg:u","range":[[5,1]],"to":"@prod1"}"#), "range: [5, 1] ends before it starts"),
        (r(r#"{"name":"b","percent":5,"by":["query:x"],"to":"@prod1"}"#), "rules[2] \"b\": by: \"query:x\": unknown source kind"),
        (r(r#"{"name":"b","by":["ip"],"to":"@prod1"}"#), "by: only means something with percent"),
        (r(r#"{"name":"r","percent":{"from":5,"to":1,"start":"2026-12-02T10:00:00Z","end":"2026-12-02T12:00:00Z"},"to":"@prod1"}"#), "percent: a ramp only goes up"),
        (r(r#"{"name":"r","percent":{"from":1,"to":5,"start":"tomorrow","end":"2026-12-02T12:00:00Z"},"to":"@prod1"}"#), "percent.start: \"tomorrow\" is not an RFC 3339 time"),
        (r(r#"{"name":"r","percent":"5","to":"@prod1"}"#), "percent: \"5\" is neither a number nor a ramp object"),
        (r#"{"format":1,"override":{"header":"X Gray"},"rules":[]}"#.into(), "override.header: \"header:X Gray\""),
        (r#"{"format":1,"override":{"header":"X-Gray","from":["nope"]},"rules":[]}"#.into(), "override.from[1]: \"nope\""),
        (r(r#"{"name":"g","to":"@canary-b","guard":{"max_error_rate":101}}"#), "rules[2] \"g\": guard.max_error_rate: 101 is not a number of percentage points from 0 to 100"),
        (r(r#"{"name":"g","to":"@canary-b","guard":{"max_error_rate":5,"min_requests":0}}"#), "rules[2] \"g\": guard.min_requests: must be at least 1"),
        (r(r#"{"name":"g","to":"@canary-b","guard":{"max_error_rate":5,"window":3601}}"#), "rules[2] \"g\": guard.window: 3601 is not a number of seconds from 1 to 3600"),
        (r(r#"{"name":"g","to":"@canary-b","guard":{"max_error_rate":5,"windows":60}}"#), "rules[2] \"g\": unknown field `windows`"),
        (r(r#"{"name":"g","to":"@canary-b","guard":{"min_requests":5}}"#), "rules[2] \"g\": missing field `max_error_rate`"),
        (r(r#"{"name":"g","to":"@prod1","guard":{"max_error_rate":5}}"#), "rules[2] \"g\": guard: the rule sends to the default target"),
    ];
    for (json, expected) in cases {
        let got = error(&json);
        assert!(
            got.starts_with(expected) || got.contains(expected),
            "{json}\n  got: {got}\n want: {expected}"
        );
    }
    let many = format!(
        r#"{{"format":1,"rules":[{}]}}"#,
        (0..=MAX_RULES)
            .map(|i| format!(r#"{{"name":"r{i}","to":"@prod1"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(
        error(&many).starts_with("not a rule set: more than 1000 rules"),
        "{}",
        error(&many)
    );
}

#[test]
fn a_guard_has_defaults_and_a_tripped_rule_matches_no_one() {
    let rs = rule_set(
        r#"{"format":1,"rules":[{"name":"canary","ip":["1.1.1.1"],"to":"@canary-b","guard":{"max_error_rate":2.5}},{"name":"all","ip":["1.1.1.1"],"to":"@prod2-grey"}]}"#,
    );
    assert_eq!(
        rs.rules[0].guard,
        Some(crate::guard::Guard {
            max_error_rate: 2.5,
            min_requests: crate::guard::DEFAULT_MIN_REQUESTS,
            window: crate::guard::DEFAULT_WINDOW,
        })
    );
    struct Tripped;
    impl Keys for Tripped {
        fn get(&self, _: usize) -> Option<KeyData<'_>> {
            None
        }
        fn tripped(&self, rule: usize) -> bool {
            rule == 0
        }
    }
    let request = Request {
        client: "1.1.1.1".parse().ok(),
        inputs: &[],
        now: 0.0,
        mint: None,
    };
    assert_eq!(
        rs.evaluate(&request, &[][..], &mut ()).outcome,
        Outcome::Rule(0)
    );
    assert_eq!(
        rs.evaluate(&request, &Tripped, &mut ()).outcome,
        Outcome::Rule(1)
    );
}

#[test]
fn always_goes_to_the_first_rule_target_that_is_not_the_default() {
    let rs = rule_set(
        r#"{"format":1,"rules":[{"name":"a","ip":["1.1.1.1"],"to":"@prod1"},{"name":"b","ip":["2.2.2.2"],"to":"@canary-b"}]}"#,
    );
    assert_eq!(targets()[rs.always_target()], "@canary-b");
}

#[test]
fn a_rule_set_costs_a_bounded_amount_to_refuse() {
    // What would have cost gigabytes to parse or compile is refused, whole, naming what was wrong
    // (t/007-rules.t measures a worker's peak memory meanwhile).
    let zeros = |n: usize| format!(r#"{{"format":1,"rules":[{}0]}}"#, "0,".repeat(n));
    let too_big = error(&zeros(MAX_BYTES));
    assert!(
        too_big.starts_with("the rule set is ") && too_big.ends_with("bytes, at most 1048576"),
        "{too_big}"
    );
    // Under the byte limit, half a million elements where rules go.
    let many = error(&zeros(MAX_BYTES / 2 - 32));
    assert!(many.contains("more than 1000 rules"), "{many}");
    let regex = |pattern: &str, n: usize| {
        let rules: Vec<String> = (0..n)
            .map(|i| {
                format!(r#"{{"name":"r{i}","id":"arg:u","regex":{pattern:?},"to":"@prod2-grey"}}"#)
            })
            .collect();
        format!(r#"{{"format":1,"rules":[{}]}}"#, rules.join(","))
    };
    assert_eq!(
        error(&regex(&"x".repeat(100_000), 1)),
        "rules[1] \"r0\": regex: a pattern of 100000 bytes, at most 4096"
    );
    assert_eq!(
        error(&regex(r"\w{50}[a-z]{50}", 1)),
        "rules[1] \"r0\": regex: compiles to more than 1048576 bytes"
    );
    let many_large = error(&regex(r"[a-z]{20}@[a-z]{20}\.com", 1000));
    assert!(
        many_large.contains("regex: the rule set's regexes would take more than 16777216 bytes"),
        "{many_large}"
    );
    // Ordinary ones compile.
    assert!(compile(regex("^vip-[0-9]+$", 50).as_bytes(), &targets()).is_ok());
}

/// The issue's example: a lane for the services behind and anonymous ids for a 10% ramp.
const LANES: &str = r#"{
  "format": 1,
  "default": "@prod1",
  "override": { "header": "X-Gray", "from": ["127.0.0.1"] },
  "lane": { "header": "X-Gray-Lane", "from": ["10.0.0.0/8"],
            "labels": { "@prod1": "stable", "@prod2-grey": "gray" } },
  "anonymous": { "cookie": "gray_uid", "max_age": 2592000 },
  "rules": [
    { "name": "staff", "ip": ["192.168.0.0/16"], "to": "@canary-b" },
    { "name": "ramp", "percent": 10, "by": ["cookie:uid", "cookie:gray_uid"], "to": "@prod2-grey" }
  ]
}"#;

/// Decides `r` by `rs`, minting ids from `next`, a counter: the target, how it was decided, and
/// the id minted.
fn decide_minting(
    rs: &RuleSet,
    r: Req<'_>,
    next: &std::cell::Cell<u128>,
) -> (String, String, Option<MintedId>) {
    let inputs = inputs_of(rs, &r);
    let mint = || {
        next.set(next.get() + 1);
        MintedId::from_bits(
            next.get()
                .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
        )
    };
    let request = Request {
        client: r.client.parse::<IpAddr>().ok(),
        inputs: &inputs,
        now: r.now,
        mint: Some(&mint),
    };
    let d = rs.evaluate(&request, &[][..], &mut ());
    (targets()[d.target].clone(), how(rs, &d), d.minted)
}

#[test]
fn labels_default_to_the_target_name_and_validate() {
    let rs = rule_set(LANES);
    let lane = rs.lane.as_ref().unwrap();
    assert_eq!(lane.labels, ["stable", "gray", "canary-b"]);
    assert_eq!(
        rs.inputs[lane.input],
        Source::parse("header:X-Gray-Lane").unwrap()
    );
    let with_lane = |lane: &str| error(&format!(r#"{{"format":1,"lane":{lane},"rules":[]}}"#));
    let cases = [
        (
            r#"{"header":"X-Gray-Lane","labels":{"@nope":"x"}}"#,
            "lane.labels: unknown target \"@nope\"",
        ),
        (
            r#"{"header":"X-Gray-Lane","labels":{"@prod1":"canary-b"}}"#,
            "lane.labels: @prod1 and @canary-b both have the label \"canary-b\"",
        ),
        (
            r#"{"header":"X-Gray-Lane","labels":{"@prod1":"a b"}}"#,
            "lane.labels.@prod1: \"a b\" is not a label",
        ),
        (
            r#"{"header":"X-Gray-Lane","labels":{"@prod1":""}}"#,
            "lane.labels.@prod1: \"\" is not a label",
        ),
        (
            r#"{"header":"X-Gray-Lane","from":["10.0.0.0/33"]}"#,
            "lane.from[1]: \"10.0.0.0/33\"",
        ),
        (
            r#"{"header":"X Lane"}"#,
            "lane.\"header:X Lane\": \"X Lane\" is not a valid header name",
        ),
        (
            r#"{"header":"Cookie"}"#,
            "lane.header: \"Cookie\" has a meaning of its own",
        ),
        (
            r#"{"header":"X-Gray-Lane","baggage":"a,b"}"#,
            "lane.baggage: \"a,b\" is not a baggage member name",
        ),
        (
            r#"{"header":"X-Gray-Lane","colour":"red"}"#,
            "unknown field `colour`",
        ),
        (r#"{"from":[]}"#, "missing field `header`"),
    ];
    for (lane, expected) in cases {
        let got = with_lane(lane);
        assert!(got.contains(expected), "{lane}: {got}");
    }
    let anonymous = |a: &str| error(&format!(r#"{{"format":1,"anonymous":{a},"rules":[]}}"#));
    assert!(anonymous(r#"{"cookie":"gray uid"}"#).starts_with("anonymous.cookie: "));
    assert!(anonymous(r#"{"cookie":"gray_uid","max_age":315360001}"#)
        .starts_with("anonymous.max_age: 315360001 "));
    assert!(anonymous(r#"{"cookie":"gray_uid","path":"/x"}"#).contains("unknown field `path`"));
}

#[test]
fn an_upstream_lane_is_honoured_only_from_lane_from() {
    let rs = rule_set(LANES);
    let next = std::cell::Cell::new(0);
    let cases: &[(&str, &str, &str, &str)] = &[
        // From a trusted gray: its decision, before any rule.
        ("10.1.2.3", "gray", "@prod2-grey", "lane"),
        ("10.1.2.3", "stable", "@prod1", "lane"),
        ("10.1.2.3", "canary-b", "@canary-b", "lane"),
        ("192.168.1.1", "stable", "@canary-b", "staff"),
        // A label this nginx does not have: the baseline.
        ("10.1.2.3", "blue", "@prod1", "lane"),
        // Labels are exact.
        ("10.1.2.3", "GRAY", "@prod1", "lane"),
    ];
    for (client, value, target, how) in cases {
        let request = req(client)
            .with("header:X-Gray-Lane", value)
            .with("cookie:uid", "u1");
        let (t, h, minted) = decide_minting(&rs, request, &next);
        assert_eq!(
            (t.as_str(), h.as_str()),
            (*target, *how),
            "{client} {value}"
        );
        assert_eq!(minted, None);
    }
    // From anyone else the header decides nothing: the rules do.
    let (_, how, _) = decide_minting(
        &rs,
        req("1.1.1.1")
            .with("header:X-Gray-Lane", "gray")
            .with("cookie:uid", "u1"),
        &next,
    );
    assert!(how == "ramp" || how == "default");
    // The override comes first; the kill switch before both.
    let (t, h, _) = decide_minting(
        &rs,
        req("127.0.0.1")
            .with("header:X-Gray-Lane", "gray")
            .with("header:X-Gray", "never"),
        &next,
    );
    assert_eq!((t.as_str(), h.as_str()), ("@prod1", "override"));
    let off = rule_set(&LANES.replace("\"format\": 1,", "\"format\": 1, \"enabled\": false,"));
    let (t, h, _) = decide_minting(
        &off,
        req("10.1.2.3").with("header:X-Gray-Lane", "gray"),
        &next,
    );
    assert_eq!((t.as_str(), h.as_str()), ("@prod1", "disabled"));
    // from empty: no one.
    let closed = rule_set(&LANES.replace(r#""from": ["10.0.0.0/8"],"#, ""));
    let (_, h, _) = decide_minting(
        &closed,
        req("10.1.2.3")
            .with("header:X-Gray-Lane", "gray")
            .with("cookie:uid", "u1"),
        &next,
    );
    assert_ne!(h, "lane");
}

#[test]
fn an_id_is_minted_only_where_a_rule_reads_it_and_the_request_has_none() {
    let rs = rule_set(LANES);
    let next = std::cell::Cell::new(0);
    // No uid, no gray_uid: the ramp reads gray_uid, so one is minted.
    let (_, _, minted) = decide_minting(&rs, req("1.1.1.1"), &next);
    assert!(minted.is_some());
    assert_eq!(next.get(), 1);
    // The cookie sent back: none minted, the same decision.
    for (request, why) in [
        (
            req("1.1.1.1").with("cookie:gray_uid", "abc"),
            "has the cookie",
        ),
        (
            req("1.1.1.1").with("cookie:uid", "u7"),
            "an earlier key source",
        ),
        (req("192.168.3.3"), "an earlier rule matched"),
        (
            req("127.0.0.1").with("header:X-Gray", "never"),
            "the override",
        ),
        (
            req("10.1.1.1").with("header:X-Gray-Lane", "gray"),
            "an upstream lane",
        ),
    ] {
        let (_, _, minted) = decide_minting(&rs, request, &next);
        assert_eq!(minted, None, "{why}");
    }
    let off = rule_set(&LANES.replace("\"format\": 1,", "\"format\": 1, \"enabled\": false,"));
    assert_eq!(
        decide_minting(&off, req("1.1.1.1"), &next).2,
        None,
        "the kill switch"
    );
    assert_eq!(next.get(), 1);
    // Nothing reads the cookie: nothing is minted.
    let unread = rule_set(&LANES.replace(r#", "cookie:gray_uid""#, ""));
    assert_eq!(unread.anonymous.as_ref().unwrap().input, None);
    assert_eq!(decide_minting(&unread, req("1.1.1.1"), &next).2, None);
}

#[test]
fn a_minted_id_decides_as_the_cookie_would_and_keeps_its_place_as_the_share_grows() {
    let rs = rule_set(LANES);
    let raised = rule_set(&LANES.replace("\"percent\": 10,", "\"percent\": 50,"));
    let next = std::cell::Cell::new(0);
    let mut canary = 0;
    for _ in 0..1000 {
        let (target, _, minted) = decide_minting(&rs, req("1.1.1.1"), &next);
        let id = std::str::from_utf8(minted.unwrap().as_bytes())
            .unwrap()
            .to_string();
        let back = decide(&rs, req("1.1.1.1").with("cookie:gray_uid", &id), &[]).0;
        assert_eq!(back, target, "the id sent back lands where it was minted");
        let later = decide(&raised, req("1.1.1.1").with("cookie:gray_uid", &id), &[]).0;
        if target == "@prod2-grey" {
            canary += 1;
            assert_eq!(later, target, "raising the share keeps everyone who was in");
        }
    }
    assert!(
        (60..=140).contains(&canary),
        "{canary} of 1000 in a 10% ramp"
    );
}
