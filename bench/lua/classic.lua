-- Variants 1 and 2 of `make bench`: the classic per-request script, written from its description.
-- Every request connects to Redis, GETs the list, and matches with string.find (substring and
-- pattern semantics, as the original). Variant 2 returns the connection to a keepalive pool.
local redis = require "nginx.redis"

local _M = {}

function _M.route(port, keepalive)
    local red = redis:new()
    red:set_timeout(1000)
    local ok, err = red:connect("127.0.0.1", port)
    if not ok then
        ngx.say("failed to connect: ", err)
        return
    end
    local list = red:get("gray")
    if keepalive then
        red:set_keepalive(10000, 64)
    else
        red:close()
    end
    if type(list) == "string" and string.find(list, ngx.var.remote_addr) then
        return ngx.exec("@prod2-grey")
    end
    return ngx.exec("@prod1")
end

return _M
