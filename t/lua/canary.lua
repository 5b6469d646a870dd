-- t/010-guard.t's client, the one its guarded rule takes (127.0.0.2), against the gateway on a
-- port.
local T = require "gray_test"

local HEADERS = { ["X-Client"] = "127.0.0.2" }

local _M = {}

-- Sends `n` requests; returns the last one's body.
function _M.send(port, n)
    local body
    for _ = 1, n do
        body = select(2, T.http_get(port, "/", HEADERS))
    end
    return body
end

-- Whether a request is answered `body` within 5 s.
function _M.answered(port, body)
    return (T.wait_for(function() return _M.send(port, 1) == body end, 5))
end

-- Whether every worker answers the canary client `body` within 5 s (the backends name the worker
-- that proxied in X-Worker).
function _M.answered_by_every_worker(port, body)
    local answering = {}
    return (T.wait_for(function()
        local _, got, head = T.http_get(port, "/", HEADERS)
        local pid = tonumber((head or ""):match("X%-Worker: (%d+)"))
        if pid and got == body then
            answering[pid] = true
        end
        for _, worker in ipairs(T.workers()) do
            if not answering[worker.pid] then
                return false
            end
        end
        return true
    end, 5))
end

return _M
