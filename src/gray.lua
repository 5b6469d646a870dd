-- The Lua half of require("gray"): the request path and the nginx-facing glue.
-- ngx.exec yields, and a yield cannot cross the Rust (C) frame, so route() lives here: it asks Rust
-- for the decision through FFI functions (no allocation, no Redis, no lock) and jumps in a Lua
-- frame. Everything else is in Rust (`core`). Errors from misuse are raised here, blaming the
-- caller; the request path never raises.
local core, route_request_ptr, route_peer_ptr, route_forwarded_ptr = ...

local ffi = require "ffi"

local ngx = ngx
local ngx_var = ngx.var
local ngx_exec = ngx.exec
local ngx_log = ngx.log
local ngx_WARN = ngx.WARN
local ngx_ERR = ngx.ERR
local ngx_now = ngx.now
local get_phase = ngx.get_phase
local timer_every = ngx.timer.every
local error = error
local type = type

local get_request = require("resty.core.base").get_request
-- Declares ngx_http_lua_ffi_var_get, through which ngx.var reads variables.
require "resty.core.var"
local var_get = ffi.C.ngx_http_lua_ffi_var_get

local route_request = ffi.cast("int (*)(void *)", route_request_ptr)
local route_peer = ffi.cast("int (*)(void *, const char *, size_t)", route_peer_ptr)
local route_forwarded = ffi.cast(
    "int (*)(const char *, size_t, const char *, size_t, const char *, size_t)",
    route_forwarded_ptr)

local PROD = core.codes.prod
local NEED_FORWARDED = core.codes.need_forwarded
local NEED_ADDRESS = core.codes.need_address
local NGX_OK = 0

-- The peer address as ngx.var.binary_remote_addr, read through the same FFI function but without
-- copying it into a Lua string: a pointer into the request's memory, valid until it ends.
local ADDR_VAR = "binary_remote_addr"
local addr_lowcase = ffi.new("char[?]", #ADDR_VAR)
local addr_value = ffi.new("char *[1]")
local addr_len = ffi.new("size_t[1]")
local var_err = ffi.new("char *[1]")

local function peer_addr(r)
    if var_get(r, ADDR_VAR, #ADDR_VAR, addr_lowcase, 0, addr_value, addr_len, var_err) ~= NGX_OK then
        return nil
    end
    return addr_value[0], addr_len[0]
end

-- How often the worker copies the refresher's queued log lines into the error log.
local LOG_DRAIN_INTERVAL = 0.2
local LOG_LEVELS = { ngx.ERR, ngx.WARN, ngx.NOTICE, ngx.INFO }

local _M = { _VERSION = core.version }

-- This VM's options: its configuration cycle's (see lua.rs, Options).
local options = core.defaults
-- targets[code] is the location for a decision code; [PROD] is production.
local targets = {}
-- This VM has asked for the refresher (it may run already, started by another VM of the process).
local started = false
-- A failed thread start is tried again from the log timer, at most this often.
local START_RETRY_INTERVAL = 5
local start_failed_at

local function sync_targets()
    targets[PROD], targets[core.codes.gray] = core.targets(options)
end

local function start(wait)
    started = true
    local ok, err = core.start(options, wait)
    if ok == nil then
        start_failed_at = ngx_now()
        ngx_log(ngx_ERR, "gray: ", err, "; routing everyone to production")
    elseif err then
        ngx_log(ngx_WARN, "gray: ", err)
    end
    sync_targets()
    return ok
end

local function drain_logs()
    if start_failed_at and ngx_now() - start_failed_at >= START_RETRY_INTERVAL then
        start_failed_at = nil
        start(false)
    end
    local lines = core.take_logs()
    if not lines then
        return
    end
    for i = 1, #lines, 2 do
        ngx_log(LOG_LEVELS[lines[i]], "gray: ", lines[i + 1])
    end
end

-- Starts the refresher and, if this call started it for the process, the timer that drains its
-- log lines: one of each per worker process, however many VMs it runs.
local function start_with_timer(wait)
    local ok = start(wait)
    if ok == false then
        return false
    end
    drain_logs()
    local timer_ok, timer_err = timer_every(LOG_DRAIN_INTERVAL, drain_logs)
    if not timer_ok then
        ngx_log(ngx_ERR, "gray: failed to create the log timer: ", timer_err)
    end
    return true
end

local function start_lazily()
    if start_with_timer(false) then
        ngx_log(ngx_WARN, "gray: refresher started by a request; call require(\"gray\").init_worker() ",
                "in init_worker_by_lua* so each worker loads the list before it serves")
    end
end

function _M.configure(opts)
    if type(opts) ~= "table" then
        error("bad argument #1 to 'configure' (table expected, got " .. type(opts) .. ")", 2)
    end
    local phase = get_phase()
    if phase ~= "init" and phase ~= "init_worker" then
        error("gray.configure must be called in init_by_lua* or init_worker_by_lua*, not in "
              .. phase, 2)
    end
    if started then
        error("gray.configure called after the refresher started in this worker", 2)
    end
    local configured, err = core.configure(opts)
    if not configured then
        error(err, 2)
    end
    options = configured
    sync_targets()
    if phase == "init_worker" then
        start_with_timer(true)
    end
    return true
end

-- Starts this worker's refresher and waits (bounded by the Redis timeout) for the first load, so
-- the first request is routed by the current list. Idempotent.
function _M.init_worker()
    if get_phase() ~= "init_worker" then
        error("gray.init_worker must be called in init_worker_by_lua*", 2)
    end
    if not started then
        start_with_timer(true)
    end
    return true
end

function _M.route()
    if not started then
        start_lazily()
    end
    local r = get_request()
    if r == nil then
        return ngx_exec(targets[PROD])
    end
    -- Rust reads the address from the request once this nginx's layout is proven (the first
    -- request proves it against the variable); the binary form needs no parsing, and realip
    -- updates it like $remote_addr.
    local code = route_request(r)
    local peer, peer_len
    if code == NEED_ADDRESS then
        peer, peer_len = peer_addr(r)
        code = peer and route_peer(r, peer, peer_len) or PROD
    end
    if code == NEED_FORWARDED then
        if not peer then
            peer, peer_len = peer_addr(r)
        end
        local xff = ngx_var.http_x_forwarded_for
        local xri = ngx_var.http_x_real_ip
        code = route_forwarded(peer, peer_len or 0, xff, xff and #xff or 0, xri, xri and #xri or 0)
    end
    return ngx_exec(targets[code] or targets[PROD])
end

-- The decision route() would make, without the jump: location, reason.
function _M.decide()
    if not started then
        start_lazily()
    end
    local code, reason = core.explain(ngx_var.remote_addr, ngx_var.http_x_forwarded_for,
                                      ngx_var.http_x_real_ip)
    return targets[code] or targets[PROD], reason
end

function _M.status()
    return core.status(options)
end

sync_targets()

return _M
