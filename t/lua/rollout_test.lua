-- t/015-rollout.t's helpers: start a plan with grayctl, read it from Redis, send requests from
-- many clients to the gateway until the plan reaches a state, and the history's rollout moves.
local T = require "gray_test"

local _M = {}

-- Starts a plan for rule "canary" (hold and interval 1 s, 1 point of 5xx, 20 requests, 2
-- failures in a row) with `flags` added: grayctl's first line of output.
function _M.start(flags)
    local out = T.grayctl("rollout start canary --hold 1s --interval 1s --max-error-rate 1"
        .. " --min-requests 20 --failure-limit 2 " .. flags)
    return out:match("^[^\n]*")
end

-- The plan as Redis holds it: its state, step (from 1), percent, reason and driver. (No JSON
-- library is there on every stack; the plan is serde's compact JSON, fields in their order.)
function _M.plan()
    local json = T.redis("get", "gray:rules:rollout")
    local step = tonumber(json:match('"step":(%d+)')) + 1
    local steps = {}
    for percent in json:match('"steps":%[([^%]]*)%]'):gmatch("[%d.]+") do
        steps[#steps + 1] = tonumber(percent)
    end
    return {
        state = json:match('"state":"(%a+)"'),
        step = step,
        percent = json:match('"state":"aborted"') and 0 or steps[step],
        reason = json:match('"reason":"(.-)","driver"'),
        driver = json:match('"driver":"(.-)"'),
    }
end

-- Requests from many clients to the gateway on `port` until the plan is in one of `states` (a
-- set), 30 s at most: the plan (nil at the timeout), and how many answers were "status body".
function _M.load_until(port, states)
    local seen, n = {}, 0
    local reached = T.wait_for(function()
        for _ = 1, 20 do
            n = n + 1
            local status, body = T.http_get(port, "/",
                { ["X-Client"] = "10.1." .. (n % 250) .. "." .. (math.floor(n / 250) % 250) })
            local answer = tostring(status) .. " " .. tostring(body):gsub("\n", "")
            seen[answer] = (seen[answer] or 0) + 1
        end
        return states[_M.plan().state]
    end, 30)
    return reached and _M.plan() or nil, seen
end

-- The history's rollout moves, oldest first.
function _M.moves()
    local history = T.redis("lrange", "gray:history", 0, -1)
    local moves = {}
    for i = #history, 1, -1 do
        local command = history[i]:match('"command":"(.-)"')
        if command:match("^rollout") then
            moves[#moves + 1] = command
        end
    end
    return moves
end

return _M
