//! gray's core: everything that decides a request or reads Redis's data model, as plain Rust with
//! no Lua and no nginx in sight, so the module nginx loads and `grayctl` accept exactly the same
//! input and reach exactly the same decisions.
//!
//! A worker's state is an immutable [`snapshot::Snapshot`]: the whitelist ([`whitelist`],
//! [`ipset`]), the compiled rule sets ([`rules`], with [`idset`] and [`bucket`]) and the inputs
//! each needs ([`plan`]). [`source`] reads a key the way the refresher does, over [`connection`];
//! [`config`] holds every option's default and validation.

pub mod bucket;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod connection;
pub mod fleet;
pub mod guard;
pub mod idset;
#[cfg(any(test, feature = "invariants"))]
pub mod invariants;
pub mod ipset;
pub mod load;
pub mod plan;
pub mod rules;
pub mod sentinel;
pub mod snapshot;
pub mod source;
pub mod tls;
pub mod whitelist;
