-- The load of `make chaos`: wrk sends the requests listed in $CHAOS_REQUESTS round robin and
-- counts every answer by 100 ms bucket, status, what the request expected and where it went.
-- The backends answer "<route> <expected>" (the expectation travels in X-Expect), so a response
-- needs no pairing with its request. done() writes the counts and wrk's socket errors to
-- $CHAOS_RESULT for chaos/run.py to judge against the fault's timeline.
--
-- Each line of $CHAOS_REQUESTS: expected route ("gray", "prod"), then tab-separated headers.

local ffi = require "ffi"

ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } chaos_timespec;
int clock_gettime(int clock, chaos_timespec *ts);
]]

local CLOCK_REALTIME = 0
local now = ffi.new("chaos_timespec")

local function bucket()
    ffi.C.clock_gettime(CLOCK_REALTIME, now)
    return tonumber(now.tv_sec) * 10 + math.floor(tonumber(now.tv_nsec) / 1e8)
end

local threads = {}
local requests, next_request = {}, 1

-- A global: done() copies it out of each thread.
counts = {}

function setup(thread)
    threads[#threads + 1] = thread
end

function init()
    for line in io.lines(os.getenv("CHAOS_REQUESTS")) do
        local fields = {}
        for field in line:gmatch("[^\t]+") do
            fields[#fields + 1] = field
        end
        local headers = { ["X-Expect"] = fields[1] }
        for i = 2, #fields do
            local name, value = fields[i]:match("^([^:]+): ?(.*)$")
            headers[name] = value
        end
        requests[#requests + 1] = wrk.format("GET", "/", headers)
    end
end

function request()
    local r = requests[next_request]
    next_request = next_request % #requests + 1
    return r
end

function response(status, _, body)
    local route, expected = (body or ""):match("^(%S+) (%S+)")
    local key = table.concat({ bucket(), status, expected or "-", route or "-" }, " ")
    counts[key] = (counts[key] or 0) + 1
end

function done(summary)
    local out = assert(io.open(os.getenv("CHAOS_RESULT"), "w"))
    local e = summary.errors
    out:write(string.format("errors %d %d %d %d\n", e.connect, e.read, e.write, e.timeout))
    for _, thread in ipairs(threads) do
        for key, n in pairs(thread:get("counts")) do
            out:write(key, " ", n, "\n")
        end
    end
    out:close()
end
