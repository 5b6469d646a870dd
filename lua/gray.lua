-- The Lua half of require("gray"): the request path and the nginx-facing glue.
-- ngx.exec yields, and a yield cannot cross the Rust (C) frame, so route() lives here: it asks Rust
-- for the decision through FFI functions (no allocation, no Redis, no lock) and jumps in a Lua
-- frame. Everything else is in Rust (`core`). Errors from misuse are raised here, blaming the
-- caller; the request path never raises.
local core, route_request_ptr, route_with_ptr = ...

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
local worker_id = ngx.worker.id
local error = error
local type = type
local pairs = pairs

local get_request = require("resty.core.base").get_request
-- Declare ngx_http_lua_ffi_var_get, through which ngx.var reads variables, and the two functions
-- behind ngx.req.get_headers (with ngx_http_lua_ffi_table_elt_t).
require "resty.core.var"
require "resty.core.request"
local var_get = ffi.C.ngx_http_lua_ffi_var_get
local get_headers_count = ffi.C.ngx_http_lua_ffi_req_get_headers_count
local get_headers = ffi.C.ngx_http_lua_ffi_req_get_headers

-- The request inputs struct and the two functions' types, declared once per Lua VM (Rust
-- defines them: core.codes.cdef).
if not pcall(ffi.typeof, "gray_request_inputs_t") then
    ffi.cdef(core.codes.cdef)
end
local route_request = ffi.cast("gray_route_request_t", route_request_ptr)
local route_with = ffi.cast("gray_route_with_t", route_with_ptr)

local PROD = core.codes.prod
local NEED_FORWARDED = core.codes.need_forwarded
local NEED_ADDRESS = core.codes.need_address
local INPUTS_BASE = core.codes.inputs_base
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

-- A rule set's inputs, into arrays Rust reads: headers and cookies from one copy of the request's
-- header list (pointers into nginx's memory, lowercase names), args and variables through nginx
-- variables. plans[set] is what the rule set's current plan fetches, asked of Rust when it changes.
local MAX_INPUTS = core.codes.max_inputs
local MAX_HEADERS = core.codes.max_headers
local input_values = ffi.new("const char *[?]", MAX_INPUTS)
local input_lens = ffi.new("size_t[?]", MAX_INPUTS)
local input_lowcase = ffi.new("char[?]", 128)
local header_list = ffi.new("ngx_http_lua_ffi_table_elt_t[?]", MAX_HEADERS)
local headers_truncated = ffi.new("int[1]")
local plans = {}

-- What route_with gets, one struct reused by every request; the arrays never move.
local inputs = ffi.new("gray_request_inputs_t")
inputs.values, inputs.lens, inputs.headers = input_values, input_lens, header_list

local function fetch_inputs(r, set, plan_id)
    local plan = plans[set]
    if not plan or plan.id ~= plan_id then
        local id, variables, reads_headers = core.plan(set)
        plan = { id = id, variables = variables, reads_headers = reads_headers }
        plans[set] = plan
    end
    local n_headers = 0
    if plan.reads_headers then
        n_headers = get_headers_count(r, MAX_HEADERS, headers_truncated)
        if n_headers > 0 then
            get_headers(r, header_list, n_headers, 0)
        else
            n_headers = 0
        end
    end
    local variables = plan.variables
    for i = 1, #variables do
        local name = variables[i]
        if var_get(r, name, #name, input_lowcase, 0, addr_value, addr_len, var_err) == NGX_OK then
            input_values[i - 1], input_lens[i - 1] = addr_value[0], addr_len[0]
        else
            input_values[i - 1], input_lens[i - 1] = nil, 0
        end
    end
    return plan.id, #variables, n_headers
end

-- The decision code for request r by rule set `set`: Rust answers at once, or says what it
-- needs (the address through the variable, the forwarding headers of a trusted peer, the inputs
-- of the rule set's plan, whose number the code carries); each is fetched at most once.
local function decision(r, set)
    local code
    -- A rule set that read inputs for the last request reads the same ones now: fetching them
    -- first saves asking Rust twice. Rust still checks the plan number.
    local known = plans[set]
    if not known then
        code = route_request(r, set)
        if code >= 0 then
            return code
        end
    end
    -- Only a request Rust asks more of fills the struct, cleared of the last one's first.
    local xff, xri
    inputs.peer, inputs.peer_len, inputs.forwarded = nil, 0, 0
    inputs.forwarded_for, inputs.forwarded_for_len, inputs.real_ip, inputs.real_ip_len = nil, 0, nil, 0
    inputs.plan, inputs.n, inputs.n_headers = 0, 0, 0
    if known then
        inputs.plan, inputs.n, inputs.n_headers = fetch_inputs(r, set, known.id)
        code = route_with(r, set, inputs)
    end
    for _ = 1, 4 do
        if code >= 0 then
            return code
        elseif code == NEED_ADDRESS then
            local peer, peer_len = peer_addr(r)
            if not peer then
                return PROD
            end
            inputs.peer, inputs.peer_len = peer, peer_len
        elseif code == NEED_FORWARDED then
            if inputs.peer == nil then
                local peer, peer_len = peer_addr(r)
                inputs.peer, inputs.peer_len = peer, peer_len or 0
            end
            -- Kept in locals: the struct points into these strings while Rust reads them.
            xff, xri = ngx_var.http_x_forwarded_for, ngx_var.http_x_real_ip
            inputs.forwarded = 1
            inputs.forwarded_for, inputs.forwarded_for_len = xff, xff and #xff or 0
            inputs.real_ip, inputs.real_ip_len = xri, xri and #xri or 0
        elseif code <= INPUTS_BASE then
            inputs.plan, inputs.n, inputs.n_headers = fetch_inputs(r, set, INPUTS_BASE - code)
        else
            return PROD
        end
        code = route_with(r, set, inputs)
    end
    return PROD
end

-- How often the worker copies the refresher's queued log lines into the error log.
local LOG_DRAIN_INTERVAL = 0.2
local LOG_LEVELS = { ngx.ERR, ngx.WARN, ngx.NOTICE }

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

-- log() has run in this VM: it has turned response counting on for the whole nginx.
local log_seen = false

-- set_index[name] is the index of a named rule set; the default set is 0.
local set_index = {}
-- Names route() was asked for that are not configured: logged once each.
local unknown_sets = {}

local function sync_targets()
    for i, location in ipairs(core.targets(options)) do
        targets[i - 1] = location
    end
    set_index = {}
    for i, name in ipairs(core.rule_sets(options)) do
        set_index[name] = i
    end
end

-- The index of rule set `name` (nil: the default); nil and an error log line once if unknown.
local function rule_set(name, caller)
    if name == nil then
        return 0
    end
    local index = set_index[name]
    if index then
        return index
    end
    if type(name) ~= "string" then
        error("bad argument #1 to '" .. caller .. "' (string expected, got " .. type(name) .. ")", 3)
    end
    if not unknown_sets[name] then
        unknown_sets[name] = true
        ngx_log(ngx_ERR, "gray: ", caller, "(\"", name, "\"): no rule set of that name is ",
                "configured (configure{ rule_sets = {...} }); routing to ", targets[PROD])
    end
    return nil
end

local function start(wait)
    started = true
    local ok, err = core.start(options, wait, worker_id())
    if ok == nil then
        start_failed_at = ngx_now()
        ngx_log(ngx_ERR, "gray: ", err, "; routing everyone to production")
    elseif err then
        ngx_log(ngx_WARN, "gray: ", err)
    end
    sync_targets()
    return ok
end

-- Forgets the plans of rule sets that are gone, so their requests stop fetching inputs.
local function forget_stale_plans()
    for set, plan in pairs(plans) do
        if core.plan_id(set) ~= plan.id then
            plans[set] = nil
        end
    end
end

-- The worker's timer: the guards judge, then the refresher's queued log lines reach the error log.
local function drain_logs()
    forget_stale_plans()
    core.watch_guards()
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

function _M.route(name)
    if not started then
        start_lazily()
    end
    local set = rule_set(name, "route")
    local r = get_request()
    if r == nil or set == nil then
        return ngx_exec(targets[PROD])
    end
    return ngx_exec(targets[decision(r, set)] or targets[PROD])
end

-- In log_by_lua*, as configurations written before the option count_responses have it: turns
-- response counting on for this nginx. The responses are counted as nginx frees each routed
-- request, not here.
function _M.log()
    if not log_seen then
        log_seen = true
        core.count_responses_from_log()
    end
end

-- The metrics of every worker of this nginx, as the response: Prometheus's text format, or JSON
-- with format "json".
function _M.metrics(format)
    if format ~= nil and type(format) ~= "string" then
        error("bad argument #1 to 'metrics' (string expected, got " .. type(format) .. ")", 2)
    end
    local body, content_type = core.metrics(format)
    if not body then
        error(content_type, 2)
    end
    ngx.header.content_type = content_type
    ngx.print(body)
end

-- A page of this nginx's state for a browser, redrawn every 2 s: each rule set's targets with
-- their request rate, 5xx share and p99, the rules, the guards and rollout plans with their
-- checks, every worker's versions and Redis link. `?format=json` answers what the page polls.
function _M.dashboard()
    local format = ngx.var.arg_format
    local body, content_type = core.dashboard(format)
    if not body then
        ngx.status = ngx.HTTP_BAD_REQUEST
        ngx.header.content_type = "text/plain"
        ngx.header["X-Content-Type-Options"] = "nosniff"
        ngx.say(content_type)
        return
    end
    ngx.header.content_type = content_type
    ngx.header["Cache-Control"] = "no-store"
    -- The page's own inline script and style, its JSON from this origin, nothing else.
    ngx.header["Content-Security-Policy"] = "default-src 'none'; script-src 'unsafe-inline'; "
        .. "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; "
        .. "form-action 'none'; frame-ancestors 'none'"
    ngx.header["X-Content-Type-Options"] = "nosniff"
    ngx.print(body)
end

-- The inputs of rule set `set` as Lua strings, in its plan's order.
local function input_strings(set)
    local _, _, _, variables = core.plan(set)
    local values = {}
    for i = 1, #variables do
        values[i] = ngx_var[variables[i]]
    end
    return values
end

local function explained(name, caller)
    if not started then
        start_lazily()
    end
    local set = rule_set(name, caller)
    if set == nil then
        return PROD, "no rule set named " .. name .. " is configured", { target = targets[PROD] }
    end
    return core.explain(set, ngx_var.remote_addr, ngx_var.http_x_forwarded_for,
                        ngx_var.http_x_real_ip, input_strings(set))
end

-- The decision route([name]) would make, without the jump: location, reason.
function _M.decide(name)
    local code, reason = explained(name, "decide")
    return targets[code] or targets[PROD], reason
end

-- The same as a table: target, reason, and for a rule set rule_set, rule, outcome, client,
-- inputs, matched, bucket and threshold (a percentage), override.
function _M.explain(name)
    local _, _, details = explained(name, "explain")
    return details
end

function _M.status()
    return core.status(options)
end

sync_targets()

-- Run by init_by_lua*, in the nginx master before it forks: the counters' shared region.
if get_phase() == "init" then
    local ok, err = core.create_region()
    if not ok then
        ngx_log(ngx_ERR, "gray: ", err)
    end
end

return _M
