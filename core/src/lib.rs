//! gray's core: everything that decides a request or describes gray's data, as plain Rust with no
//! Lua, no nginx and no I/O in sight, so the module nginx loads and `grayctl` accept exactly the
//! same input and reach exactly the same decisions, and every rule is a unit test.
//!
//! A worker's state is an immutable [`snapshot::Snapshot`]: the whitelist ([`whitelist`],
//! [`ipset`]), the compiled rule sets ([`rules`], with [`idset`] and [`bucket`]) and the inputs
//! each needs ([`plan`]); [`decision`] decides by it. [`value`] turns what a key holds into those
//! (and its version), [`keys`] names every key, [`config`] holds every option's default and
//! validation ([`endpoint`]: where Redis is, as data). A key's value as written ([`stored`]) and
//! the [`history`] of writes; a rule's guard ([`guard`]) and a [`rollout`] plan judge counts.
//! Reading and writing Redis is gray-io's.

pub mod bucket;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod decision;
pub mod delta;
pub mod endpoint;
pub mod explanation;
pub mod flat;
pub mod fleet;
pub mod guard;
pub mod history;
pub mod idset;
#[cfg(any(test, feature = "invariants"))]
pub mod invariants;
pub mod ipset;
pub mod keys;
pub mod manifest;
pub mod plan;
pub mod rollout;
pub mod rules;
pub mod snapshot;
pub mod stored;
pub mod value;
pub mod whitelist;
