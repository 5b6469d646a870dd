-- Test helpers for t/*.t: talk to the test's private Redis over its unix socket (which stays up
-- when a test closes the TCP port), and wait for conditions instead of sleeping blindly.
-- OpenResty ships lua-resty-redis as resty.redis, Debian as nginx.redis.
local has_resty_redis, redis = pcall(require, "resty.redis")
if not has_resty_redis then
    redis = require "nginx.redis"
end
local ffi = require "ffi"

-- kill(2) directly: os.execute's status is unreliable under nginx, whose SIGCHLD handler reaps
-- the child first.
ffi.cdef "int kill(int pid, int sig);"
local SIGHUP, SIGCONT, SIGSTOP = 1, 18, 19

local _M = {}

local SOCK = "unix:" .. os.getenv("TEST_NGINX_REDIS_SOCK")
local PORT = os.getenv("TEST_NGINX_REDIS_PORT")
local PID = os.getenv("TEST_NGINX_REDIS_PID")

-- One Redis command; raises on failure so a broken test set-up is loud.
function _M.redis(cmd, ...)
    local r = redis:new()
    r:set_timeout(2000)
    assert(r:connect(SOCK))
    local res, err = r[cmd](r, ...)
    assert(res ~= nil, err)
    r:close()
    return res
end

-- grayctl against the test's Redis, `args` its command line: everything it printed.
function _M.grayctl(args)
    local p = io.popen(os.getenv("TEST_NGINX_GRAY_ROOT") .. "/target/release/grayctl --redis "
                       .. "redis://127.0.0.1:" .. PORT .. "/0 " .. args .. " 2>&1")
    local out = p:read("*a")
    p:close()
    return out
end

-- How many clients the test's Redis has over TCP: gray's connections (the helpers here use its
-- unix socket).
function _M.tcp_clients()
    local n = 0
    for line in _M.redis("client", "list"):gmatch("[^\n]+") do
        if line:find(" laddr=127.0.0.1:", 1, true) then
            n = n + 1
        end
    end
    return n
end

-- How many times the test's Redis has run `command` (lowercase), from INFO commandstats.
function _M.calls(command)
    local info = _M.redis("info", "commandstats")
    return tonumber(info:match("cmdstat_" .. command .. ":calls=(%d+)")) or 0
end

-- How many commands the test's Redis has run in all, but for those named (lowercase, as
-- INFO commandstats names them) and the INFO this count runs itself.
function _M.calls_but(...)
    local info = _M.redis("info", "commandstats")
    local skipped = { info = true }
    for _, name in ipairs({ ... }) do
        skipped[name] = true
    end
    local total = 0
    for name, calls in info:gmatch("cmdstat_([%w|_]+):calls=(%d+)") do
        if not skipped[name] then
            total = total + tonumber(calls)
        end
    end
    return total
end

-- One command to the Redis on 127.0.0.1:`port` (another than the file's): result, err.
function _M.redis_at(port, cmd, ...)
    local r = redis:new()
    r:set_timeout(2000)
    assert(r:connect("127.0.0.1", tonumber(port)))
    local res, err = r[cmd](r, ...)
    r:close()
    return res, err
end

-- Several commands as one MULTI/EXEC transaction, so no poll sees a state in between (a DEL
-- before the SADD that refills the key, say): T.redis_atomic({ "del", "gray" }, { "sadd", "gray", "1.1.1.1" })
function _M.redis_atomic(...)
    local r = redis:new()
    r:set_timeout(2000)
    assert(r:connect(SOCK))
    assert(r:multi())
    for _, command in ipairs({ ... }) do
        assert(r[command[1]](r, unpack(command, 2)))
    end
    local res, err = r:exec()
    assert(res, err)
    r:close()
    return res
end

-- Redis refuses new connections and drops the module's: as good as stopped, and reversible.
function _M.redis_down()
    _M.redis("config", "set", "port", "0")
    _M.redis("client", "kill", "type", "normal")
    _M.redis("client", "kill", "type", "pubsub")
end

function _M.redis_up()
    _M.redis("config", "set", "port", PORT)
end

-- SIGSTOP: connections are accepted by the kernel but nothing answers.
function _M.redis_hang()
    assert(ffi.C.kill(tonumber(PID), SIGSTOP) == 0, "cannot stop redis")
end

function _M.redis_resume()
    assert(ffi.C.kill(tonumber(PID), SIGCONT) == 0, "cannot resume redis")
end

-- GET `path` from this nginx on `port` over a new connection, with `headers` (a table, or
-- nil), waiting up to `timeout` seconds (2): status, body, the response's header block.
function _M.http_get(port, path, headers, timeout)
    local sock = ngx.socket.tcp()
    sock:settimeout((timeout or 2) * 1000)
    local ok, err = sock:connect("127.0.0.1", port)
    if not ok then
        return nil, err
    end
    local request = { "GET ", path, " HTTP/1.0\r\nHost: localhost\r\n" }
    for name, value in pairs(headers or {}) do
        request[#request + 1] = name .. ": " .. value .. "\r\n"
    end
    request[#request + 1] = "\r\n"
    sock:send(request)
    local response = sock:receive("*a")
    sock:close()
    if not response then
        return nil, "no response"
    end
    local head, body = response:match("^(.-)\r\n\r\n(.*)$")
    return tonumber(response:match("^HTTP/%d%.%d (%d+)")), body, head
end

-- The value of the Prometheus sample `name{labels}` in `text` (labels as written, sorted as
-- gray writes them), or nil.
function _M.sample(text, name, labels)
    local line = name .. (labels and ("{" .. labels .. "}") or "") .. " "
    for l in text:gmatch("[^\n]+") do
        if l:sub(1, #line) == line then
            return tonumber(l:sub(#line + 1))
        end
    end
    return nil
end

-- The sum of every sample of metric `name` in `text`.
function _M.sum(text, name)
    local total = 0
    for l in text:gmatch("[^\n]+") do
        local value = l:match("^" .. name .. "{.-} (%S+)$") or l:match("^" .. name .. " (%S+)$")
        if value then
            total = total + tonumber(value)
        end
    end
    return total
end

-- Parses `text` with Prometheus's own Python client (Debian's python3-prometheus-client):
-- "ok <families>" or its error.
function _M.parse_prometheus(text)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
    local p = assert(io.popen("/usr/bin/python3 " .. os.getenv("TEST_NGINX_GRAY_ROOT")
                              .. "/t/parse-metrics.py < " .. path .. " 2>&1"))
    local out = p:read("*a")
    p:close()
    os.remove(path)
    return (out:gsub("%s+$", ""))
end

local function read_file(path)
    local f = io.open(path)
    if not f then
        return nil
    end
    local data = f:read("*a")
    f:close()
    return data
end

function _M.master_pid()
    return tonumber(read_file(ngx.config.prefix() .. "logs/nginx.pid"))
end

-- Sends signal `sig` (a number) to process `pid`.
function _M.signal(pid, sig)
    assert(ffi.C.kill(pid, sig) == 0, "cannot signal " .. pid)
end

-- The memory process `pid` holds in kB, shared pages counted in shares (its PSS).
function _M.pss_kb(pid)
    local rollup = read_file("/proc/" .. pid .. "/smaps_rollup") or ""
    return tonumber(rollup:match("\nPss:%s+(%d+) kB"))
end

-- SADDs 200,000 hosts to `key` (10.a.b.c, a < 40), 5,000 at a time.
function _M.sadd_200k(key)
    for a = 0, 39 do
        local batch = {}
        for i = 0, 4999 do
            batch[#batch + 1] = "10." .. a .. "." .. math.floor(i / 250) .. "." .. (i % 250)
        end
        _M.redis("sadd", key, unpack(batch))
    end
end

-- The PSS of every worker of this nginx but the one running the test, summed in kB: the Lua
-- garbage of the test's own worker (the lists it builds) is the test's, not gray's.
function _M.others_pss_kb()
    local pss = 0
    for _, w in ipairs(_M.workers()) do
        if w.pid ~= ngx.worker.pid() then
            pss = pss + _M.pss_kb(w.pid)
        end
    end
    return pss
end

-- What each worker of this nginx answers on `path` of `port` (reuseport: new connections spread
-- over the workers), by pid, once every worker answered within `timeout` seconds; false if some
-- worker did not. `parse` turns a body into the answer, its first word the worker's pid.
function _M.every_worker(port, path, timeout, parse)
    local answers = {}
    local all = _M.wait_for(function()
        local _, body = _M.http_get(port, path)
        local pid = tonumber((body or ""):match("^(%d+)"))
        if pid then
            answers[pid] = parse(body)
        end
        for _, w in ipairs(_M.workers()) do
            if not answers[w.pid] then
                return false
            end
        end
        return true
    end, timeout)
    return all and answers
end

function _M.reload()
    assert(ffi.C.kill(_M.master_pid(), SIGHUP) == 0, "cannot signal the master")
end

-- The worker processes of this nginx, and how many threads each runs.
function _M.workers()
    local master = _M.master_pid()
    local children = read_file("/proc/" .. master .. "/task/" .. master .. "/children") or ""
    local workers = {}
    for pid in children:gmatch("%d+") do
        local status = read_file("/proc/" .. pid .. "/status") or ""
        if not status:match("State:%s+Z") then
            workers[#workers + 1] = { pid = tonumber(pid),
                                      threads = tonumber(status:match("Threads:%s+(%d+)")) }
        end
    end
    return workers
end

-- Polls `check` every 10 ms until it returns true or `timeout` seconds pass; returns the result
-- and the seconds waited.
function _M.wait_for(check, timeout)
    local start = ngx.now()
    while true do
        ngx.update_time()
        if check() then
            return true, ngx.now() - start
        end
        if ngx.now() - start > timeout then
            return false, ngx.now() - start
        end
        ngx.sleep(0.01)
    end
end

return _M
