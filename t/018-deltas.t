# Changes that cost what changed: grayctl records each change of a SET beside it (<key>:changes,
# a change number and the delta); the worker holding the session applies the deltas instead of
# reading the SET again (Redis counts no SSCAN for them), and reads it whole for a write no
# delta describes (a raw SADD) and for a gap in the change numbers.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';

workers(4);
master_on();
add_block_preprocessor(\&gray_block);

our $Host = <<'_EOC_';
    init_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
    }
    init_worker_by_lua_block { require("gray").init_worker() }
    server {
        listen 127.0.0.1:$TEST_NGINX_EXTRA_PORT reuseport;
        location = /who {
            content_by_lua_block {
                local s = require("gray").status()
                ngx.say(ngx.worker.pid(), " ", (require("gray").decide()), " ", s.version)
            }
        }
    }
_EOC_

run_tests();

__DATA__

=== TEST 1: grayctl add and remove reach every worker as deltas (no SSCAN); a raw SADD and a gap in the change numbers are read whole; a whole read and the deltas give one version
--- redis
SADD gray 10.0.0.1 10.0.0.2 bad
--- main_config
env EXTRA=$TEST_NGINX_EXTRA_PORT;
--- http_config eval
$::Host
--- config
location = /t {
    content_by_lua_block {
        local T = require "gray_test"
        local port = tonumber(os.getenv("EXTRA"))
        -- SSCANs sent by the gateway (its TCP connections; grayctl reads a small SET whole
        -- too, on connections of its own), as Redis's slow log records every command.
        T.redis("config", "set", "slowlog-log-slower-than", 0)
        T.redis("config", "set", "slowlog-max-len", 100000)
        local function scans()
            local gateway = {}
            for addr in T.redis("client", "list"):gmatch("addr=(127%.0%.0%.1:%d+)") do
                gateway[addr] = true
            end
            local n = 0
            for _, entry in ipairs(T.redis("slowlog", "get", -1)) do
                if gateway[entry[5]] and tostring(entry[4][1]):upper() == "SSCAN" then
                    n = n + 1
                end
            end
            return n
        end
        -- Every worker decides the test's client (127.0.0.1) `decision`, serving another version
        -- than `was` (when given); the one version they serve.
        local function everywhere(decision, was)
            local versions
            local ok = T.wait_for(function()
                local answers = T.every_worker(port, "/who", 1, function(body)
                    local d, v = body:match("^%d+ (%S+) (%S+)")
                    return { decision = d, version = v }
                end)
                if not answers then return false end
                versions = {}
                local n = 0
                for _, a in pairs(answers) do
                    if a.decision ~= decision or a.version == was then return false end
                    if not versions[a.version] then n = n + 1 end
                    versions[a.version] = true
                end
                -- A worker answers its decision and version from two reads of its state: during
                -- a change they may straddle it, so wait for one version everywhere.
                return n == 1
            end, 5)
            local n, version = 0, nil
            for v in pairs(versions or {}) do n, version = n + 1, v end
            return ok and n == 1, version
        end
        -- The first change starts the record; the gateway read the SET before it, so reads it whole.
        T.grayctl("add 127.0.0.1")
        ngx.say("first add: ", everywhere("@prod2-grey"), ", change ", T.redis("hget", "gray:changes", "ver"))
        local before = scans()
        -- Connections grayctl opens are gone when it is done: only the gateway's stay listed.
        T.grayctl("remove 127.0.0.1")
        local removed = everywhere("@prod1")
        T.grayctl("add 127.0.0.0/24 192.0.2.1")
        local added, version = everywhere("@prod2-grey")
        ngx.say("deltas: ", removed, " ", added, ", SSCANs ", scans() - before,
                ", change ", T.redis("hget", "gray:changes", "ver"))
        ngx.say("delta 3: ", T.redis("hget", "gray:changes", "d:3"))
        -- A raw write no delta describes: tracking says the key changed, the change number did not.
        before = scans()
        T.redis("srem", "gray", "127.0.0.0/24")
        ngx.say("raw srem: ", (everywhere("@prod1")), ", read whole: ", scans() > before)
        -- A gap: change numbers moved by two, no delta recorded.
        before = scans()
        T.redis_atomic({ "sadd", "gray", "127.0.0.1" }, { "hincrby", "gray:changes", "ver", 2 })
        local gapped, gap_version = everywhere("@prod2-grey")
        ngx.say("gap: ", gapped, ", read whole: ", scans() > before)
        -- Back to the SET the deltas made, by a raw write: the version a whole read gives is theirs.
        -- The decision does not change: wait for the version to.
        T.redis_atomic({ "srem", "gray", "127.0.0.1" }, { "sadd", "gray", "127.0.0.0/24" })
        local _, whole = everywhere("@prod2-grey", gap_version)
        ngx.say("one version: ", whole == version)
        T.redis("config", "set", "slowlog-log-slower-than", 10000)
    }
}
--- timeout: 40
--- response_body
first add: true, change 1
deltas: true true, SSCANs 0, change 3
delta 3: {"add":["127.0.0.0/24","192.0.2.1"],"remove":[],"card":5}
raw srem: true, read whole: true
gap: true, read whole: true
one version: true



=== TEST 2: forty grayctl adds to a 200,000-member SET, one at a time: each applied as a delta (no SSCAN), laid straight into the host's store, and memory where the first left it
--- redis
SADD gray 10.255.0.1
--- main_config
env EXTRA=$TEST_NGINX_EXTRA_PORT;
--- http_config eval
$::Host
--- config
location = /t {
    content_by_lua_block {
        local T = require "gray_test"
        local port = tonumber(os.getenv("EXTRA"))
        T.sadd_200k("gray")
        local function everywhere(decision)
            return T.wait_for(function()
                local answers = T.every_worker(port, "/who", 1, function(body)
                    return body:match("^%d+ (%S+)")
                end)
                if not answers then return false end
                for _, d in pairs(answers) do
                    if d ~= decision then return false end
                end
                return true
            end, 10)
        end
        local function memory()
            return T.others_pss_kb(), require("gray").status().shared_bytes
        end
        -- The first change starts the record: the SET is read whole once more. The holder read
        -- it whole as the batches above landed, a read behind them: wait until every worker has
        -- served one version for half a second.
        T.grayctl("add 10.254.0.1")
        local function one_version()
            local answers = T.every_worker(port, "/who", 1, function(body)
                return body:match("^%d+ %S+ (%S+)")
            end)
            local version
            for _, v in pairs(answers or {}) do
                if version and v ~= version then return nil end
                version = v
            end
            return version
        end
        local last, since = nil, ngx.now()
        ngx.say("settled: ", (T.wait_for(function()
            local version = one_version()
            if version ~= last then last, since = version, ngx.now() end
            return version ~= nil and ngx.now() - since >= 0.5
        end, 20)))
        ngx.sleep(1.5)
        local pss_one, shared_one = memory()
        local scanned = T.calls("sscan")
        -- One at a time: a write that lands while the holder reads the SET's change number and
        -- size, or reads it whole, makes the numbers not add up, and the SET is read whole.
        for n = 1, 40 do
            T.grayctl("add " .. (n == 40 and "127.0.0.1" or ("10.254.1." .. n)))
            ngx.sleep(0.2)
        end
        ngx.say("the last add seen by every worker: ", (everywhere("@prod2-grey")))
        ngx.say("SSCANs: ", T.calls("sscan") - scanned)
        ngx.sleep(1.5)
        local pss_many, shared_many = memory()
        ngx.say("shared bytes the same: ", shared_many == shared_one,
                shared_many == shared_one and "" or (" (" .. shared_one .. " then " .. shared_many .. ")"))
        -- While changes come, the generation before last's block is kept as a spare, its pages
        -- mapped, for the next change to reuse: one copy more at most, however many changes.
        local grown, bound = pss_many - pss_one, shared_one / 1024 + 1024
        ngx.say("PSS summed over the other workers grew by a copy at most (and 1 MB): ", grown < bound,
                grown < bound and "" or (" (" .. grown .. " kB, against " .. bound .. " kB)"))
    }
}
--- timeout: 60
--- response_body
settled: true
the last add seen by every worker: true
SSCANs: 0
shared bytes the same: true
PSS summed over the other workers grew by a copy at most (and 1 MB): true



=== TEST 3: a new session reads an unchanged 200,000-member SET whole once more and lays nothing out again, whether the holder kept its entries or not
--- redis
SADD gray 127.0.0.1
--- main_config
env EXTRA=$TEST_NGINX_EXTRA_PORT;
--- http_config eval
$::Host
--- config
location = /t {
    content_by_lua_block {
        local T = require "gray_test"
        local gray = require "gray"
        T.sadd_200k("gray")
        ngx.say("loaded: ", (T.wait_for(function()
            return gray.status().entries == 200001
        end, 20)))
        -- A record of changes, written after the SET was read: the holder has not kept its
        -- entries; changes paused, the spare pages kept for the next change are given back.
        T.redis("hset", "gray:changes", "ver", "1")
        ngx.say("no spare pages after a rest: ", (T.wait_for(function()
            return gray.status().shared_spare_bytes == 0
        end, 20)))
        local held = gray.status().shared_bytes
        -- Twice: each new session's whole read finds the version loaded and keeps its entries.
        for round = 1, 2 do
            local scanned = T.calls("sscan")
            T.redis("client", "kill", "type", "normal")
            T.redis("client", "kill", "type", "pubsub")
            local read = T.wait_for(function() return T.calls("sscan") > scanned end, 10)
            ngx.sleep(1)
            local s = gray.status()
            ngx.say("new session ", round, ": read whole: ", read, ", nothing laid out again: ",
                    s.shared_spare_bytes == 0 and s.shared_bytes == held,
                    " (spare ", s.shared_spare_bytes, ", held ", s.shared_bytes, " then ", held, ")")
        end
    }
}
--- timeout: 60
--- response_body_like
loaded: true
no spare pages after a rest: true
new session 1: read whole: true, nothing laid out again: true \(spare 0, held \d+ then \d+\)
new session 2: read whole: true, nothing laid out again: true \(spare 0, held \d+ then \d+\)
--- allowed_errors
lost the subscription
failed to read
