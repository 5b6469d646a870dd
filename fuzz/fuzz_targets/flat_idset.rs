//! `gray_core::invariants::flat_idset` over any input (`make fuzz`; `make test` replays the corpus).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gray_core::invariants::flat_idset(data));
