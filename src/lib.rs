//! gray: gray (canary) release routing for nginx/OpenResty.
//!
//! Each nginx worker keeps the whitelist in memory as an immutable [`snapshot::Snapshot`], rebuilt
//! from Redis by a background [`refresher`] thread and swapped atomically, so a request is decided
//! without I/O: whitelisted clients go to the pre-release location, everyone else to production.
//!
//! The core (parsing, matching, client-IP derivation, option validation, the refresher) is plain
//! Rust and unit-tests without nginx. The LuaJIT binding (`require("gray")`) lives in `lua.rs`
//! behind the default `lua` feature: in module mode nothing links Lua, so the tests build with
//! `--no-default-features`.

pub mod bucket;
pub mod client_ip;
pub mod config;
pub mod connection;
pub mod idset;
pub mod ipset;
pub mod log;
pub mod nginx_request;
mod os;
pub mod plan;
pub mod refresher;
pub mod rules;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod whitelist;

#[cfg(feature = "lua")]
mod lua;
