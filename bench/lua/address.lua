-- Callgrind reference for `make bench`: what gray does on each request except deciding. A module
-- function that reads the client address as gray does (ngx.var's FFI function, into a pointer,
-- no Lua string) and jumps, so gray's cost splits into "reading the client address" and "gray's
-- decision" (the FFI call into Rust and the lookup).
local ffi = require "ffi"
local get_request = require("resty.core.base").get_request
require "resty.core.var"

local var_get = ffi.C.ngx_http_lua_ffi_var_get
local ngx_exec = ngx.exec

local ADDR_VAR = "binary_remote_addr"
local lowcase = ffi.new("char[?]", #ADDR_VAR)
local value = ffi.new("char *[1]")
local len = ffi.new("size_t[1]")
local err = ffi.new("char *[1]")

local _M = {}

function _M.route()
    local rc = var_get(get_request(), ADDR_VAR, #ADDR_VAR, lowcase, 0, value, len, err)
    -- Used, as gray uses it, so the JIT cannot drop the read.
    if rc ~= 0 or len[0] == 0 then
        return ngx_exec("@prod2-grey")
    end
    return ngx_exec("@prod1")
end

return _M
