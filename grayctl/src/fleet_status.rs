//! Which gateways serve what Redis holds now: each report's keys against the keys' current
//! versions, computed the way the gateways compute them.

use std::collections::HashMap;

use gray_core::fleet::{version_text, Report};
use gray_core::snapshot::KeyKind;

use crate::failure::Failure;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Serves the current value of every key it loads.
    Current,
    /// Serves an older value of these keys (one line each).
    Behind(Vec<String>),
    /// Stopped reporting: stopped, hung, or cut off from Redis.
    Gone,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Current => "current",
            State::Behind(_) => "behind",
            State::Gone => "gone",
        }
    }
}

/// The current kind and version of each key, read once per assessment.
pub struct Versions<F> {
    read: F,
    seen: HashMap<String, (KeyKind, u64)>,
}

impl<F: FnMut(&str) -> Result<(KeyKind, u64), Failure>> Versions<F> {
    pub fn new(read: F) -> Self {
        Versions {
            read,
            seen: HashMap::new(),
        }
    }

    fn get(&mut self, key: &str) -> Result<(KeyKind, u64), Failure> {
        if let Some(v) = self.seen.get(key) {
            return Ok(*v);
        }
        let v = (self.read)(key)?;
        self.seen.insert(key.to_string(), v);
        Ok(v)
    }
}

/// Where `report`'s worker stands at `now` (Unix seconds).
pub fn assess<F>(report: &Report, now: f64, versions: &mut Versions<F>) -> Result<State, Failure>
where
    F: FnMut(&str) -> Result<(KeyKind, u64), Failure>,
{
    if report.gone(now) {
        return Ok(State::Gone);
    }
    let mut behind = Vec::new();
    for key in &report.keys {
        let (kind, version) = versions.get(&key.key)?;
        let current = version_text(version);
        // A worker reports no version for a key it has nothing loaded from: right when the key
        // is missing (a rule set key), behind when Redis holds a value it has not (or could not) load.
        let serves_current = match &key.version {
            Some(served) => *served == current,
            None => kind == KeyKind::Missing,
        };
        if !serves_current {
            behind.push(format!(
                "{}: serves {}, Redis holds {}",
                key.key,
                key.version.as_deref().unwrap_or("nothing"),
                if kind == KeyKind::Missing {
                    "nothing (missing)".to_string()
                } else {
                    current
                }
            ));
        }
    }
    Ok(if behind.is_empty() {
        State::Current
    } else {
        State::Behind(behind)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gray_core::fleet::KeyState;

    fn report(keys: &[(&str, Option<u64>)]) -> Report {
        Report {
            host: "gw".into(),
            pid: 1,
            gray: "0.1.0".into(),
            keys: keys
                .iter()
                .map(|(k, v)| KeyState {
                    key: k.to_string(),
                    version: v.map(version_text),
                })
                .collect(),
            loaded_at: 0.0,
            reported_at: 100.0,
            every: 1.0,
        }
    }

    #[test]
    fn a_gateway_is_current_behind_or_gone() {
        let mut reads = 0;
        let mut versions = Versions::new(|key: &str| {
            reads += 1;
            Ok(match key {
                "gray" => (KeyKind::String, 7),
                _ => (KeyKind::Missing, 9),
            })
        });
        let current = report(&[("gray", Some(7)), ("gray:rules", None)]);
        assert_eq!(
            assess(&current, 101.0, &mut versions).unwrap(),
            State::Current
        );
        let behind = report(&[("gray", Some(6)), ("gray:rules", Some(5))]);
        assert_eq!(
            assess(&behind, 101.0, &mut versions).unwrap(),
            State::Behind(vec![
                "gray: serves 0000000000000006, Redis holds 0000000000000007".into(),
                "gray:rules: serves 0000000000000005, Redis holds nothing (missing)".into(),
            ])
        );
        assert_eq!(assess(&current, 105.0, &mut versions).unwrap(), State::Gone);
        drop(versions);
        assert_eq!(reads, 2, "each key is read once");
    }
}
