//! `gray_core::invariants::manifest` over any input (`make fuzz`; `make test` replays the corpus).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gray_core::invariants::manifest(data));
