//! The LuaJIT binding, the one layer that knows Lua: `luaopen_gray` hands gray.lua (the Lua half,
//! embedded) the `core` table of Rust functions ([`api`]) and the request path's FFI functions
//! ([`ffi`]), and gray.lua returns the module.
//!
//! Rules at this boundary: nothing panics into nginx (the FFI functions catch every panic and
//! answer production; mlua turns a panic in a `core` function into a Lua error), and expected
//! failures are `nil, err` values for the glue to raise or log.

mod api;
mod ffi;
mod send_on;

use std::ffi::c_void;

use mlua::prelude::*;

#[mlua::lua_module]
fn gray(lua: &Lua) -> LuaResult<LuaValue> {
    send_on::resolve();
    let glue = lua
        .load(include_str!("../../lua/gray.lua"))
        .set_name("=gray")
        .into_function()?;
    glue.call((
        api::core_table(lua)?,
        LuaLightUserData(ffi::route_request as *mut c_void),
        LuaLightUserData(ffi::route_with as *mut c_void),
    ))
}
