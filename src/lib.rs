//! gray: gray (canary) release routing for nginx/OpenResty, the module nginx loads.
//!
//! Each nginx worker keeps the whitelist and rule sets in memory as an immutable
//! [`gray_core::snapshot::Snapshot`], rebuilt from Redis by a background [`refresher`] thread and
//! swapped atomically, so a request is decided without I/O.
//!
//! What decides a request lives in the `gray-core` crate, shared with `grayctl`; this crate is the
//! refresher and the LuaJIT binding (`require("gray")`, in `lua.rs` behind the default `lua`
//! feature: in module mode nothing links Lua, so the tests build with `--no-default-features`).

pub mod guard;
pub mod log;
pub mod metrics;
pub mod nginx_request;
mod os;
pub mod pending;
pub mod refresher;
pub mod region;
pub mod state;

#[cfg(feature = "lua")]
mod lua;
