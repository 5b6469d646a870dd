//! When, in each second of the wall clock, a gateway adds its counts to a plan's traffic and when
//! the driver judges it. Counts go in just before a second ends and checks run just after, so a
//! check reads slots every gateway finished adding to, and a response is judged 0.2 to 1.2 s after
//! it was counted: with `failure_limit` 3 and a 1 s interval, a canary that starts failing is
//! aborted within about 3.2 s. Turns taken at any phase (each worker's own tick) would judge a
//! response up to 3 s after it was counted, and a change that woke a worker would push its next
//! turn back. Gateways' clocks agree to milliseconds under NTP; the 0.2 s between the turns
//! leaves room for that and for the contributions' round trips.

/// Where in each second a gateway adds what it counted (into the slot that second is in).
pub const CONTRIBUTE_AT: f64 = 0.9;
/// Where in each second the driver takes or renews its lease and judges a check that is due.
pub const JUDGE_AT: f64 = 0.1;

/// Which turns a gateway took last, by the second they belong to: each is taken once a second,
/// at its phase or as soon after as the gateway gets to it.
#[derive(Debug, Default)]
pub struct Turns {
    contributed: Option<i64>,
    judged: Option<i64>,
}

/// The turns due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Due {
    pub contribute: bool,
    pub judge: bool,
}

/// The second whose turn at `phase` is the latest one at `now`.
fn turn(now: f64, phase: f64) -> i64 {
    (now - phase).floor() as i64
}

/// Seconds from `now` to the next turn at `phase` not yet taken.
fn until(now: f64, phase: f64, taken: Option<i64>) -> f64 {
    let latest = turn(now, phase);
    if taken != Some(latest) {
        return 0.0;
    }
    (latest + 1) as f64 + phase - now
}

impl Turns {
    /// The turns due at `now` (Unix seconds), taken by this call. A clock set back is a new
    /// turn at once, not a wait until the old time comes again.
    pub fn take(&mut self, now: f64) -> Due {
        let take = |taken: &mut Option<i64>, phase| {
            let latest = turn(now, phase);
            let due = *taken != Some(latest);
            *taken = Some(latest);
            due
        };
        Due {
            contribute: take(&mut self.contributed, CONTRIBUTE_AT),
            judge: take(&mut self.judged, JUDGE_AT),
        }
    }

    /// Seconds from `now` until the next turn not yet taken: 0 when one is due.
    pub fn until_next(&self, now: f64) -> f64 {
        until(now, CONTRIBUTE_AT, self.contributed).min(until(now, JUDGE_AT, self.judged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn each_turn_comes_once_a_second_at_its_phase() {
        let mut turns = Turns::default();
        assert_eq!(
            turns.take(1000.5),
            Due {
                contribute: true,
                judge: true
            },
            "the first turns at once"
        );
        assert_eq!(turns.take(1000.6), Due::default());
        assert!(close(turns.until_next(1000.6), 0.3));
        assert_eq!(
            turns.take(1000.91),
            Due {
                contribute: true,
                judge: false
            }
        );
        assert!(close(turns.until_next(1000.95), 0.15));
        assert_eq!(
            turns.take(1001.12),
            Due {
                contribute: false,
                judge: true
            }
        );
        assert!(close(turns.until_next(1001.12), 0.78));
    }

    #[test]
    fn a_late_turn_is_taken_once_and_the_next_keeps_its_phase() {
        let mut turns = Turns::default();
        turns.take(1000.95);
        // Busy from 1000.95 to 1003.5: each turn once, not once per second missed.
        assert_eq!(
            turns.take(1003.5),
            Due {
                contribute: true,
                judge: true
            }
        );
        assert_eq!(turns.take(1003.6), Due::default());
        assert!(close(turns.until_next(1003.6), 0.3));
    }

    #[test]
    fn a_clock_set_back_is_a_turn_at_once() {
        let mut turns = Turns::default();
        turns.take(5000.95);
        assert_eq!(turns.until_next(1000.0), 0.0);
        assert!(turns.take(1000.0).contribute);
    }
}
