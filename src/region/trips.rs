//! Which series' guards have tripped: per series, the rule set version it tripped under (0:
//! none), when, and an epoch that moves with every trip, clearing and new name, so a guard that
//! watched the series under another epoch starts its window over.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Region, MAX_SERIES, TRIPS_AT, TRIP_SLOT};

impl Region {
    fn trip_slot(&self, series: usize) -> Option<&[AtomicU64]> {
        if series == 0 || series >= MAX_SERIES {
            return None;
        }
        Some(self.words(TRIPS_AT + series * TRIP_SLOT, 3))
    }

    /// How many times series `series` has tripped, been cleared or renamed.
    pub fn trip_epoch(&self, series: usize) -> u64 {
        self.trip_slot(series)
            .map_or(0, |slot| slot[2].load(Ordering::Acquire))
    }

    /// Marks series `series`' guard tripped under rule set version `version` at `at_ms`. Says
    /// whether this call tripped it (false: it already was, for that version).
    pub fn trip(&self, series: usize, version: u64, at_ms: u64) -> bool {
        let Some([tripped, at, epoch]) = self.trip_slot(series) else {
            return false;
        };
        let current = tripped.load(Ordering::Acquire);
        if current == version {
            return false;
        }
        // The time first: whoever sees the version sees its time, never an older one.
        at.store(at_ms, Ordering::Release);
        if tripped
            .compare_exchange(current, version, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        epoch.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// The rule set version series `series`' guard tripped under, and when (Unix ms).
    pub fn tripped(&self, series: usize) -> Option<(u64, u64)> {
        let [tripped, at, _] = self.trip_slot(series)? else {
            return None;
        };
        match tripped.load(Ordering::Acquire) {
            0 => None,
            version => Some((version, at.load(Ordering::Acquire))),
        }
    }

    /// Clears series `series`' trip if it is still the one under `version`.
    pub fn untrip(&self, series: usize, version: u64) -> bool {
        self.trip_slot(series).is_some_and(|slot| {
            let cleared = slot[0]
                .compare_exchange(version, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if cleared {
                slot[2].fetch_add(1, Ordering::AcqRel);
            }
            cleared
        })
    }

    /// Forgets series `series`' trip whatever it was: the series is given a new name.
    pub(super) fn clear_trip(&self, series: usize) {
        if let Some([tripped, at, epoch]) = self.trip_slot(series) {
            tripped.store(0, Ordering::Release);
            at.store(0, Ordering::Release);
            epoch.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trip_happens_once_per_version_and_clears_only_for_its_version() {
        let region = Region::create().unwrap();
        let series = region.series(b"guarded").unwrap() as usize;
        assert_eq!(region.tripped(series), None);
        assert!(region.trip(series, 7, 1000));
        assert!(!region.trip(series, 7, 2000));
        assert_eq!(region.tripped(series), Some((7, 1000)));
        assert!(!region.untrip(series, 6));
        assert_eq!(region.trip_epoch(series), 1);
        assert!(region.untrip(series, 7));
        assert_eq!(region.tripped(series), None);
        assert_eq!(region.trip_epoch(series), 2);
        assert!(!region.trip(0, 7, 1000));
        region.trip(series, 8, 3000);
        region.clear_trip(series);
        assert_eq!(region.tripped(series), None);
        assert_eq!(region.trip_epoch(series), 4);
    }
}
