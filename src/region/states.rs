//! Each worker's state as it last published it, one slot per worker id, for a scrape served by
//! any worker.

use std::sync::atomic::AtomicU64;

use super::{
    read_sequenced, write_sequenced, Region, MAX_STATE, MAX_WORKERS, STATES_AT, STATE_SLOT,
};

impl Region {
    fn state_words(&self, worker: usize) -> &[AtomicU64] {
        self.words(STATES_AT + worker * STATE_SLOT, STATE_SLOT / 8)
    }

    /// Publishes worker `worker`'s state (at most `MAX_STATE` bytes; longer is cut). Two
    /// writers at once (an old worker draining after a reload and its successor) can tear a
    /// copy: readers parse what they read and drop what does not parse.
    pub fn write_state(&self, worker: usize, state: &[u8]) {
        if worker < MAX_WORKERS {
            write_sequenced(
                self.state_words(worker),
                &state[..state.len().min(MAX_STATE)],
            );
        }
    }

    /// Worker `worker`'s last published state; `None` if it never published (or kept writing
    /// while this read it).
    pub fn read_state(&self, worker: usize) -> Option<Vec<u8>> {
        if worker >= MAX_WORKERS {
            return None;
        }
        read_sequenced(self.state_words(worker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_state_reads_back_as_written_and_is_cut_at_the_limit() {
        let region = Region::create().unwrap();
        assert_eq!(region.read_state(2), None);
        region.write_state(2, b"{\"pid\":1}");
        assert_eq!(region.read_state(2).unwrap(), b"{\"pid\":1}");
        region.write_state(2, &vec![b'x'; MAX_STATE + 100]);
        assert_eq!(region.read_state(2).unwrap().len(), MAX_STATE);
        region.write_state(2, b"short");
        assert_eq!(region.read_state(2).unwrap(), b"short");
        // A writer killed mid-write leaves an odd number: the next write still publishes.
        region.state_words(2)[0].store(7, Ordering::Relaxed);
        assert_eq!(region.read_state(2), None);
        region.write_state(2, b"healed");
        assert_eq!(region.read_state(2).unwrap(), b"healed");
    }
}
