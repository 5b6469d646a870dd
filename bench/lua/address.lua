-- Callgrind reference for `make bench`: what reading the client address through nginx's variable
-- costs. A module function that reads $binary_remote_addr through ngx.var's FFI function (into a
-- pointer, no Lua string) and jumps: what any Lua router pays for the address, and what gray pays in
-- a worker that could not prove nginx's request layout and falls back to the variable.
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
