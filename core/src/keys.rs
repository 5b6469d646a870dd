//! gray's Redis keyspace, one definition of each name: from the whitelist key `<key>` (default
//! `gray`) come the default rule set `<key>:rules` (or `rules_key`), a named rule set
//! `<rules_key>:<name>`, each rule set's guard hash `<rule set key>:guard` and rollout plan
//! `<rule set key>:rollout` (with its driver's lease `...:rollout:lease` and the fleet's traffic
//! `...:rollout:<plan id>:<slot>`), grayctl's history `<key>:history`, the gateways' reports
//! `<key>:gateways`, and beside any key grayctl writes, the record of its changes
//! `<key>:changes` ([`crate::delta`]). A rule set's name is checked here too, once for the module's `rule_sets` and
//! grayctl's `--set`: a name that would make its key another rule set's guard hash or rollout
//! key is refused.

/// The default rule set's key is the whitelist key followed by this.
pub const RULES_SUFFIX: &str = ":rules";
/// grayctl's capped list of the changes it made.
pub const HISTORY_SUFFIX: &str = ":history";
/// The hash the gateways report what they serve to (`report`).
pub const GATEWAYS_SUFFIX: &str = ":gateways";
/// A rule set's guard hash: trips recorded by the gateways, resets by grayctl.
pub const GUARD_SUFFIX: &str = ":guard";

/// The hash beside a key that records grayctl's changes of it: a version and the deltas.
pub const CHANGES_SUFFIX: &str = ":changes";

/// A rule set's rollout plan; the keys of its lease and traffic extend it.
pub const ROLLOUT_SUFFIX: &str = ":rollout";

/// The default rule set's key for whitelist key `key`.
pub fn default_rules(key: &str) -> String {
    format!("{key}{RULES_SUFFIX}")
}

/// The key of rule set `name` (`None`: the default one, `rules_key` itself).
pub fn rule_set(rules_key: &str, name: Option<&str>) -> String {
    match name {
        None => rules_key.to_string(),
        Some(name) => format!("{rules_key}:{name}"),
    }
}

pub fn history(key: &str) -> String {
    format!("{key}{HISTORY_SUFFIX}")
}

pub fn gateways(key: &str) -> String {
    format!("{key}{GATEWAYS_SUFFIX}")
}

/// The record of the changes made to `key` ([`crate::delta`]).
pub fn changes(key: &str) -> String {
    format!("{key}{CHANGES_SUFFIX}")
}

pub fn guard(rule_set_key: &str) -> String {
    format!("{rule_set_key}{GUARD_SUFFIX}")
}

pub fn rollout(rule_set_key: &str) -> String {
    format!("{rule_set_key}{ROLLOUT_SUFFIX}")
}

/// The lease of the gateway driving rule set `rule_set_key`'s rollout.
pub fn rollout_lease(rule_set_key: &str) -> String {
    format!("{rule_set_key}{ROLLOUT_SUFFIX}:lease")
}

/// The hash the gateways add plan `plan_id`'s traffic of time slot `slot` to.
pub fn rollout_traffic(rule_set_key: &str, plan_id: u64, slot: u64) -> String {
    format!("{rule_set_key}{ROLLOUT_SUFFIX}:{plan_id}:{slot}")
}

/// Whether `key` is the rollout plan of rule set key `rule_set_key`.
pub fn is_rollout_of(key: &[u8], rule_set_key: &str) -> bool {
    key.strip_prefix(rule_set_key.as_bytes()) == Some(ROLLOUT_SUFFIX.as_bytes())
}

/// Whether `key` is the guard hash of rule set key `rule_set_key`.
pub fn is_guard_of(key: &[u8], rule_set_key: &str) -> bool {
    key.strip_prefix(rule_set_key.as_bytes()) == Some(GUARD_SUFFIX.as_bytes())
}

/// Which rule set `key` is, under `rules_key`: `Some(None)` for the default one, `Some(name)`
/// for a named one with a good name, `None` for a key that is no rule set's.
pub fn rule_set_name<'k>(rules_key: &str, key: &'k str) -> Option<Option<&'k str>> {
    if key == rules_key {
        return Some(None);
    }
    let name = key.strip_prefix(rules_key)?.strip_prefix(':')?;
    check_rule_set_name(name).ok().map(|()| Some(name))
}

/// Checks a rule set's name (`rule_sets`, `--set`): not empty, no white space, and not one that
/// makes its key another rule set's guard hash (`guard`, `x:guard`), record of changes
/// (`changes`, `x:changes`) or rollout key (a `rollout` segment: `rollout`, `x:rollout`,
/// `rollout:lease`).
pub fn check_rule_set_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!(
            "\"{name}\" is not a rule set name: it must be non-empty and without spaces"
        ));
    }
    let guard = GUARD_SUFFIX.trim_start_matches(':');
    if name == guard || name.ends_with(GUARD_SUFFIX) {
        return Err(format!(
            "\"{name}\" cannot name a rule set: its key would be another rule set's guard hash"
        ));
    }
    let changes = CHANGES_SUFFIX.trim_start_matches(':');
    if name == changes || name.ends_with(CHANGES_SUFFIX) {
        return Err(format!(
            "\"{name}\" cannot name a rule set: its key would be another key's record of changes"
        ));
    }
    let rollout = ROLLOUT_SUFFIX.trim_start_matches(':');
    if name.split(':').any(|segment| segment == rollout) {
        return Err(format!(
            "\"{name}\" cannot name a rule set: its key would be another rule set's rollout key"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_follows_from_the_whitelist_key() {
        assert_eq!(default_rules("gray"), "gray:rules");
        assert_eq!(rule_set("gray:rules", None), "gray:rules");
        assert_eq!(rule_set("gray:rules", Some("shop")), "gray:rules:shop");
        assert_eq!(history("gray"), "gray:history");
        assert_eq!(gateways("gray"), "gray:gateways");
        assert_eq!(guard("gray:rules:shop"), "gray:rules:shop:guard");
        assert_eq!(changes("gray"), "gray:changes");
        assert_eq!(rollout("gray:rules"), "gray:rules:rollout");
        assert_eq!(rollout_lease("gray:rules"), "gray:rules:rollout:lease");
        assert_eq!(
            rollout_traffic("gray:rules", 17, 4),
            "gray:rules:rollout:17:4"
        );
        assert!(is_rollout_of(b"gray:rules:rollout", "gray:rules"));
        assert!(!is_rollout_of(b"gray:rules:shop:rollout", "gray:rules"));
        assert!(is_guard_of(b"gray:rules:guard", "gray:rules"));
        assert!(!is_guard_of(b"gray:rules:shop:guard", "gray:rules"));
        assert!(!is_guard_of(b"gray:rules", "gray:rules"));
    }

    #[test]
    fn a_key_is_a_rule_sets_by_its_name() {
        assert_eq!(rule_set_name("gray:rules", "gray:rules"), Some(None));
        assert_eq!(
            rule_set_name("gray:rules", "gray:rules:shop"),
            Some(Some("shop"))
        );
        assert_eq!(rule_set_name("gray:rules", "gray:rules:guard"), None);
        assert_eq!(rule_set_name("gray:rules", "gray:rulesx"), None);
        assert_eq!(rule_set_name("gray:rules", "gray"), None);
    }

    #[test]
    fn a_rule_set_name_never_makes_a_guard_hash() {
        assert!(check_rule_set_name("shop").is_ok());
        for bad in [
            "guard",
            "shop:guard",
            "",
            "a b",
            "rollout",
            "shop:rollout",
            "rollout:lease",
            "changes",
            "shop:changes",
        ] {
            assert!(check_rule_set_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_rule_set_name("guard").unwrap_err(),
            "\"guard\" cannot name a rule set: its key would be another rule set's guard hash"
        );
    }
}
