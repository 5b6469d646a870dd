//! Edits of a rule set made on its JSON as the operator wrote it, so every other field, and
//! their order, stays: a rule's percentage (grayctl's `percent`, a rollout's steps) and the kill
//! switch. The result is compiled as any rule set before it is written.

use serde_json::Value;

fn rule_mut<'a>(doc: &'a mut Value, name: &str) -> Result<&'a mut Value, String> {
    let rules = doc
        .get_mut("rules")
        .and_then(Value::as_array_mut)
        .ok_or("the rule set has no \"rules\" array")?;
    let names: Vec<String> = rules
        .iter()
        .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    rules
        .iter_mut()
        .find(|r| r.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| format!("no rule named \"{name}\" (rules: {})", names.join(", ")))
}

/// A percentage as JSON: whole numbers without a fraction (`10`, not `10.0`).
fn percent_value(percent: f64) -> Value {
    if percent.fract() == 0.0 {
        Value::from(percent as u64)
    } else {
        Value::from(percent)
    }
}

/// Sets rule `name`'s fixed percentage to `percent`; lowering it (which takes users back out of
/// the canary) needs `down`. Returns the old percentage.
pub fn set_percent(doc: &mut Value, name: &str, percent: f64, down: bool) -> Result<f64, String> {
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("percent {percent} is not between 0 and 100"));
    }
    let rule = rule_mut(doc, name)?;
    let old = match rule.get("percent") {
        None => return Err(format!("rule \"{name}\" has no percent")),
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(_) => {
            return Err(format!(
                "rule \"{name}\" ramps over time; change its ramp with `grayctl rules set`"
            ))
        }
    };
    if percent < old && !down {
        return Err(format!(
            "lowering rule \"{name}\" from {old}% to {percent}% takes users out of its target; pass --down to do it"
        ));
    }
    rule["percent"] = percent_value(percent);
    Ok(old)
}

/// The kill switch: `enabled: false` sends everyone to the default.
pub fn set_enabled(doc: &mut Value, enabled: bool) -> Result<(), String> {
    let object = doc
        .as_object_mut()
        .ok_or("the rule set is not a JSON object")?;
    object.insert("enabled".into(), Value::Bool(enabled));
    Ok(())
}

/// Whether rule set `text` (JSON) has a rule named `name`.
pub fn has_rule(text: &[u8], name: &str) -> bool {
    serde_json::from_slice::<Value>(text).is_ok_and(|mut doc| rule_mut(&mut doc, name).is_ok())
}

/// A rule set document as gray writes it: pretty, with a final newline.
pub fn render(doc: &Value) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(doc).expect("a JSON value serializes");
    text.push(b'\n');
    text
}
