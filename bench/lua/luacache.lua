-- Variant 3 of `make bench`: a pure-Lua per-worker cache of the list, refreshed by a timer, with
-- exact matching: a hash of host entries, plus one hash per IPv4 prefix length for IPv4 CIDRs
-- (IPv6 CIDRs are not handled: a Lua cache rarely does; RESULTS.md says so).
local redis = require "nginx.redis"

local _M = {}

local hosts, nets, prefixes = {}, {}, {}
local version

local function ipv4_number(addr)
    local a, b, c, d = addr:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    if a then
        return ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
    end
end

local function build(entries)
    local new_hosts, new_nets, new_prefixes = {}, {}, {}
    for _, entry in ipairs(entries) do
        local addr, len = entry:match("^([%d%.]+)/(%d+)$")
        local n = addr and ipv4_number(addr)
        if n then
            len = tonumber(len)
            local size = 2 ^ (32 - len)
            if not new_nets[len] then
                new_nets[len] = {}
                new_prefixes[#new_prefixes + 1] = len
            end
            new_nets[len][n - n % size] = true
        else
            new_hosts[entry] = true
        end
    end
    hosts, nets, prefixes = new_hosts, new_nets, new_prefixes
    ngx.log(ngx.NOTICE, "luacache: loaded ", #entries, " entries")
end

local function refresh(premature, port)
    if premature then
        return
    end
    local red = redis:new()
    red:set_timeout(5000)
    if not red:connect("127.0.0.1", port) then
        return
    end
    local kind = red:type("gray")
    local entries = {}
    if kind == "set" then
        entries = red:smembers("gray")
    elseif kind == "string" then
        local value = red:get("gray")
        for entry in value:gmatch("[^,;%s]+") do
            entries[#entries + 1] = entry
        end
    end
    red:set_keepalive(10000, 4)
    local new_version = #entries .. ":" .. tostring(entries[1]) .. ":" .. tostring(entries[#entries])
    if new_version ~= version then
        version = new_version
        build(entries)
    end
end

function _M.init_worker(port, interval)
    ngx.timer.at(0, refresh, port)
    ngx.timer.every(interval, refresh, port)
end

function _M.route()
    local addr = ngx.var.remote_addr
    if hosts[addr] then
        return ngx.exec("@prod2-grey")
    end
    local n = ipv4_number(addr)
    if n then
        for i = 1, #prefixes do
            local len = prefixes[i]
            if nets[len][n - n % 2 ^ (32 - len)] then
                return ngx.exec("@prod2-grey")
            end
        end
    end
    return ngx.exec("@prod1")
end

return _M
