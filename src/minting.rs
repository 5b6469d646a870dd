//! The anonymous ids this worker mints. One generator per process, seeded from the OS the first
//! time the process mints: in a worker (the master routes no request), so no two workers share a
//! sequence, and no request after the first pays for the seed.

use std::cell::RefCell;

use gray_core::rules::anonymous::{IdGenerator, MintedId};

use crate::log::Level;
use crate::state::SHARED;

thread_local! {
    static IDS: RefCell<Option<IdGenerator>> = const { RefCell::new(None) };
}

/// A new anonymous id.
pub fn mint() -> MintedId {
    IDS.with(|ids| ids.borrow_mut().get_or_insert_with(seeded).mint())
}

fn seeded() -> IdGenerator {
    let mut seed = [0u8; 32];
    if let Err(e) = getrandom::getrandom(&mut seed) {
        // Ids only pick buckets; a worse seed keeps routing up, the log says why.
        SHARED.log(
            Level::Err,
            format!("the OS gave no random seed for anonymous ids ({e}); seeding from the clock and pid"),
        );
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        seed[..16].copy_from_slice(&clock.to_le_bytes());
        seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    IdGenerator::from_seed(seed)
}
