//! gray: gray (canary) release routing for nginx/OpenResty, the module nginx loads.
//!
//! Each nginx worker decides requests by an immutable [`gray_core::snapshot::Snapshot`], rebuilt
//! from Redis by a background [`refresher`] thread and swapped atomically, so a request is decided
//! without I/O. What decides a request lives in gray-core and what reads Redis in gray-io, both
//! shared with `grayctl`; this crate is the refresher, the counters every worker shares
//! ([`region`], [`metrics`], [`guard`], [`request_end`]) and the LuaJIT binding (`require("gray")`, in
//! `lua/` behind the default `lua` feature: in module mode nothing links Lua, so the tests build
//! with `--no-default-features`).
//!
//! Process-wide state, who owns it and which threads touch it:
//! - [`state::SHARED`]: the snapshot in force, the refresher's status, its log queue and the
//!   guard trips to record. Written by the refresher thread (and the guards' timer, which swaps in
//!   a snapshot with trips applied); read by nginx's event-loop thread on every request.
//! - `metrics::REGION`: the region every worker counts into, made by the master in init_by_lua
//!   and inherited by each worker; `metrics::WORKER` and `counting::BLOCK`: this worker's id and
//!   counters, set once as its refresher starts. The event loop counts; the refresher registers
//!   series and publishes the worker's state (`workers::OWN_STATE` without a region).
//! - `request_end::COUNT_RESPONSES`, `POOL`, `NGINX`: whether this worker counts responses, where
//!   a request keeps its pool and the nginx functions that count them; set and read on the event
//!   loop (the options when the refresher starts, the rest by the first routed requests).
//! - `guard::WATCHES`: the guards' windows; the worker's timer only (on the event loop).
//! - `loaded::NEXT_PLAN`, `refresher::FAULT_INJECTED`: the refresher thread.
//! - In `lua/`: the options the process's refresher runs with and how it reads a request's
//!   address, set when the refresher starts (event loop), read by requests.

// Without the binding (`cargo test --no-default-features`) nothing reaches the modules but their
// tests: the dead-code lint speaks for the module nginx loads, the default build.
#![cfg_attr(not(feature = "lua"), allow(dead_code, unused_imports))]

mod dashboard;
mod guard;
mod log;
mod metrics;
mod minting;
mod nginx_request;
mod os;
mod refresher;
mod region;
mod request_end;
mod state;
mod store;

#[cfg(feature = "lua")]
mod lua;
