//! The fleet's traffic as the gateways add it up in Redis: each gateway's workers add the
//! responses they counted since their last contribution to the hash of the current time slot
//! (`keys::rollout_traffic`), and the driver sums the slots of a check's window. A slot's hash
//! holds one field per count: `c:` for the rule's target (the canary), `d:` for the default
//! target, then `n` (responses), `5xx`, or `b0`..`b7` (the latency buckets).

use super::judge::{Traffic, Window, LATENCY_BOUNDS};
use super::Plan;

const CANARY: &str = "c:";
const BASELINE: &str = "d:";

/// The fields a contribution adds to a slot's hash, the zero counts left out.
pub fn fields(window: &Window) -> Vec<(String, u64)> {
    let mut fields = Vec::new();
    for (prefix, traffic) in [(CANARY, &window.canary), (BASELINE, &window.baseline)] {
        let counts = [
            ("n".to_string(), traffic.responses),
            ("5xx".to_string(), traffic.errors),
        ]
        .into_iter()
        .chain(
            traffic
                .buckets
                .iter()
                .enumerate()
                .map(|(i, &count)| (format!("b{i}"), count)),
        );
        for (name, count) in counts {
            if count > 0 {
                fields.push((format!("{prefix}{name}"), count));
            }
        }
    }
    fields
}

/// Adds a slot's hash, as field and value pairs, to `window`; a field it does not know (or a
/// value that is no count) is left out.
pub fn add_fields<'a>(window: &mut Window, pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) {
    for (field, value) in pairs {
        let (Ok(field), Some(count)) = (
            std::str::from_utf8(field),
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let (traffic, name) = if let Some(name) = field.strip_prefix(CANARY) {
            (&mut window.canary, name)
        } else if let Some(name) = field.strip_prefix(BASELINE) {
            (&mut window.baseline, name)
        } else {
            continue;
        };
        add_count(traffic, name, count);
    }
}

fn add_count(traffic: &mut Traffic, name: &str, count: u64) {
    let slot = match name {
        "n" => &mut traffic.responses,
        "5xx" => &mut traffic.errors,
        _ => match name
            .strip_prefix('b')
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|&i| i < LATENCY_BOUNDS.len())
        {
            Some(i) => &mut traffic.buckets[i],
            None => return,
        },
    };
    *slot = slot.saturating_add(count);
}

impl Plan {
    /// The width of the plan's time slots, in seconds: a tenth of its interval, at least 1.
    pub fn slot_seconds(&self) -> u64 {
        ((self.settings.interval / 10.0).floor() as u64).max(1)
    }

    /// The slot Unix time `at` falls in.
    pub fn slot(&self, at: f64) -> u64 {
        (at.max(0.0) / self.slot_seconds() as f64) as u64
    }

    /// The slot a gateway adds what it counted at `now` to: the one `now` is in, or, where the
    /// plan as last read says a check judged it already (this gateway's clock behind the
    /// driver's, or its turn late), the first one no check judged, so that no count is lost.
    pub fn contribution_slot(&self, now: f64) -> u64 {
        self.slot(now).max(self.judged_until.unwrap_or(0))
    }

    /// The slots an interval spans.
    pub fn slots_per_check(&self) -> u64 {
        (self.settings.interval / self.slot_seconds() as f64).ceil() as u64
    }

    /// The slots a check at `now` judges: from the end of the last check's (the last
    /// interval's on the first check, or after a gap of more than an interval) up to the slot
    /// `now` is in, which the gateways are still adding to.
    pub fn window_slots(&self, now: f64) -> std::ops::Range<u64> {
        let end = self.slot(now);
        let count = self.slots_per_check();
        let start = match self.judged_until {
            Some(judged) if judged <= end && end - judged <= 2 * count => judged,
            _ => end.saturating_sub(count),
        };
        start..end
    }

    /// How long the driver's lease lasts unless renewed, in seconds: a few intervals, so a
    /// driver that died is replaced within them.
    pub fn lease_seconds(&self) -> f64 {
        (self.settings.interval * 3.0).max(3.0)
    }

    /// How long a slot's hash is kept, in seconds: long enough for any check that reads it.
    pub fn traffic_ttl(&self) -> u64 {
        // A plan's interval is at most MAX_INTERVAL (Settings::validate): no overflow.
        (self.settings.interval * 3.0).ceil() as u64 + 60
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::tests::running;

    #[test]
    fn each_check_judges_the_slots_since_the_last_one_none_twice_none_skipped() {
        let mut plan = running(10.0);
        assert_eq!(plan.slot_seconds(), 1);
        assert_eq!(plan.window_slots(1000.95), 990..1000);
        plan.judged_until = Some(1000);
        // A check a little late judges eleven slots, one early nine: contiguous either way.
        assert_eq!(plan.window_slots(1011.02), 1000..1011);
        assert_eq!(plan.window_slots(1009.5), 1000..1009);
        // After a gap of more than two intervals (no driver), the last interval only.
        assert_eq!(plan.window_slots(1100.0), 1090..1100);
        let wide = running(25.0);
        assert_eq!(
            (wide.slot_seconds(), wide.window_slots(1000.0)),
            (2, 487..500)
        );
    }

    #[test]
    fn counts_made_after_their_slot_was_judged_go_to_the_next_one() {
        let mut plan = running(1.0);
        assert_eq!(plan.contribution_slot(1000.9), 1000);
        // The driver, its clock ahead, judged slot 1000 before this gateway's turn in it.
        plan.judged_until = Some(1001);
        assert_eq!(plan.contribution_slot(1000.9), 1001);
        assert_eq!(plan.contribution_slot(1001.9), 1001);
    }

    #[test]
    fn a_contribution_reads_back_as_the_counts_it_added_and_strangers_are_left_out() {
        let mut sent = Window::default();
        sent.canary.responses = 412;
        sent.canary.errors = 128;
        sent.canary.buckets[0] = 400;
        sent.canary.buckets[7] = 12;
        sent.baseline.responses = 3880;
        sent.baseline.buckets[1] = 3880;
        let fields = fields(&sent);
        assert!(fields.iter().all(|(_, n)| *n > 0));
        assert_eq!(fields.len(), 6);
        let texts: Vec<(Vec<u8>, Vec<u8>)> = fields
            .iter()
            .map(|(f, n)| (f.clone().into_bytes(), n.to_string().into_bytes()))
            .chain([
                (b"c:n".to_vec(), b"8".to_vec()),
                (b"x:n".to_vec(), b"1".to_vec()),
                (b"c:b9".to_vec(), b"1".to_vec()),
                (b"d:n".to_vec(), b"many".to_vec()),
            ])
            .collect();
        let mut read = Window::default();
        add_fields(
            &mut read,
            texts.iter().map(|(f, v)| (f.as_slice(), v.as_slice())),
        );
        sent.canary.responses += 8;
        assert_eq!(read, sent);
    }
}
