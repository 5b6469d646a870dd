# Keeping the in-memory list in step with Redis: polling, pub/sub, bad entries, wrong types.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';

add_block_preprocessor(\&gray_block);
run_tests();

__DATA__

=== TEST 1: a plain SET (no publish, the seed's workflow) takes effect within refresh
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.5, channel = false,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            ngx.say((gray.decide()))
            T.redis("set", "gray", "127.0.0.1")
            local switched, waited = T.wait_for(function()
                return gray.decide() == "@prod2-grey"
            end, 1.5)
            ngx.say("switched: ", switched, ", within refresh: ", waited <= 0.5 + 0.2)
        }
    }
--- response_body
@prod1
switched: true, within refresh: true



=== TEST 2: SET + PUBLISH takes effect at once, long before the next poll
--- redis
SET gray 127.0.0.9
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 60,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            ngx.say((gray.decide()), " subscribed=", gray.status().subscribed)
            T.redis("set", "gray", "127.0.0.1")
            T.redis("publish", "gray:changed", "1")
            local switched = T.wait_for(function()
                return gray.decide() == "@prod2-grey"
            end, 0.5)
            ngx.say("switched: ", switched)
        }
    }
--- response_body
@prod1 subscribed=true
switched: true



=== TEST 3: a plain SET, SADD or FLUSHALL, no PUBLISH, refresh 60: seen at once, Redis pushes it (client-side caching)
--- redis
SET gray 127.0.0.9
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 60, channel = false,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local s = gray.status()
            ngx.say((gray.decide()), " tracking=", s.tracking, " subscribed=", s.subscribed)
            local function seen(target)
                return (T.wait_for(function() return gray.decide() == target end, 0.5))
            end
            T.redis("set", "gray", "127.0.0.1")
            ngx.say("set: ", seen("@prod2-grey"))
            T.redis("flushall")
            ngx.say("flushall: ", seen("@prod1"))
            T.redis("sadd", "gray", "127.0.0.1")
            ngx.say("sadd: ", seen("@prod2-grey"))
            T.redis("set", "gray:history", "not a key gray reads")
            T.redis("set", "grayish", "127.0.0.1")
            T.redis("srem", "gray", "127.0.0.1")
            ngx.say("srem: ", seen("@prod1"))
        }
    }
--- response_body
@prod1 tracking=true subscribed=false
set: true
flushall: true
sadd: true
srem: true



=== TEST 4: with tracking the steady state reads nothing: each refresh only PINGs the subscriber
--- redis
SET gray 127.0.0.9
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.1, channel = false,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            ngx.sleep(0.3)
            -- Every command but PING is a read (TYPE, STRLEN, GETRANGE, SSCAN, HGETALL, ...).
            local others, pings = T.calls_but("ping"), T.calls("ping")
            ngx.sleep(1)
            ngx.say("commands but PING in 1 s: ", T.calls_but("ping") - others,
                    ", liveness checks: ", T.calls("ping") - pings >= 5)
            T.redis("set", "gray", "127.0.0.1")
            ngx.say("a change is still seen: ", (T.wait_for(function()
                return gray.decide() == "@prod2-grey"
            end, 0.5)))
        }
    }
--- response_body
commands but PING in 1 s: 0, liveness checks: true
a change is still seen: true



=== TEST 5: Redis refuses tracking (an ACL without client|tracking): one warning, and the channel still works
--- redis
SET gray 127.0.0.9
ACL SETUSER tester on >secret ~* &* +@all -client|tracking
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://tester:secret@127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 60,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local s = gray.status()
            ngx.say((gray.decide()), " tracking=", s.tracking, " subscribed=", s.subscribed)
            T.redis("set", "gray", "127.0.0.1")
            T.redis("publish", "gray:changed", "gray")
            ngx.say("published: ", (T.wait_for(function() return gray.decide() == "@prod2-grey" end, 0.5)))
        }
    }
--- response_body
@prod1 tracking=false subscribed=true
published: true
--- error_log
cannot track changes to gray's keys
a write without a PUBLISH is seen by polling every 60.0s


=== TEST 6: a custom channel
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 60, channel = "ops:gray",
            tracking = false,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            T.redis("sadd", "gray", "127.0.0.1")
            T.redis("publish", "gray:changed", "1")
            ngx.say("other channel ignored: ", not T.wait_for(function()
                return gray.decide() == "@prod2-grey"
            end, 0.3))
            T.redis("publish", "ops:gray", "1")
            ngx.say("own channel: ", (T.wait_for(function()
                return gray.decide() == "@prod2-grey"
            end, 0.5)))
        }
    }
--- response_body
other channel ignored: true
own channel: true



=== TEST 7: bad entries are skipped and logged with their text; the good ones load
--- redis
SET gray "127.0.0.1, bogus, 10.0.0.0/99 ::1 10.1.2.3/8"
--- config
    location = /t {
        content_by_lua_block {
            local gray = require "gray"
            local s = gray.status()
            ngx.say("entries=", s.entries, " rejected=", s.rejected,
                    " host_bits_truncated=", s.host_bits_truncated)
            ngx.say(s.rejected_samples[1])
            ngx.say((gray.decide()))
        }
    }
--- response_body
entries=3 rejected=2 host_bits_truncated=1
"bogus" (not an IPv4/IPv6 address or CIDR)
@prod2-grey
--- error_log
rejected whitelist entry "bogus" (not an IPv4/IPv6 address or CIDR) in key gray
rejected whitelist entry "10.0.0.0/99" (bad prefix length) in key gray
whitelist entry "10.1.2.3/8" has host bits set; using 10.0.0.0/8
loaded whitelist from string key gray: 3 entries (2 IPv4, 1 IPv6), 2 rejected



=== TEST 8: a key of the wrong type never loaded: production, and an error naming the type
--- redis
RPUSH gray 127.0.0.1
--- config
    location = /t {
        content_by_lua_block {
            local gray = require "gray"
            local s = gray.status()
            ngx.say(gray.decide())
            ngx.say(s.last_error, " connected=", s.redis_connected)
        }
    }
--- response_body
@prod1no whitelist loaded yet
ignoring key gray: key holds a list, expected a string or a set connected=true
--- error_log
ignoring key gray: key holds a list, expected a string or a set; no list loaded yet, routing everyone to production
--- allowed_errors
ignoring key gray: key holds a list, expected a string or a set



=== TEST 9: a key turned to the wrong type after a load: the last good list stays
--- redis
SET gray 127.0.0.1
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.2,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            T.redis_atomic({ "del", "gray" }, { "hset", "gray", "127.0.0.2", "1" })
            T.redis("publish", "gray:changed", "1")
            T.wait_for(function() return gray.status().last_error end, 1)
            ngx.say((gray.decide()), " ", gray.status().last_error)
        }
    }
--- response_body
@prod2-grey ignoring key gray: key holds a hash, expected a string or a set
--- wait: 0.5
--- error_log
key holds a hash, expected a string or a set; keeping the last good list
--- allowed_errors
ignoring key gray: key holds a hash, expected a string or a set



=== TEST 10: deleting the key empties the list (roll back): everyone to production
--- redis
SET gray 127.0.0.1
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            ngx.say((gray.decide()))
            T.redis("del", "gray")
            T.redis("publish", "gray:changed", "1")
            T.wait_for(function() return gray.decide() == "@prod1" end, 1)
            ngx.say(gray.decide())
        }
    }
--- response_body
@prod2-grey
@prod1client 127.0.0.1 is not in the whitelist (the key is missing: empty list)



=== TEST 11: status() tells an operator what is loaded and from where, never the password
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://tester:secret@127.0.0.1:$TEST_NGINX_REDIS_PORT/0",
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local s = require("gray").status()
            ngx.say(s.running, " ", s.loaded, " ", s.key_type, " ", s.entries_v4, "+", s.entries_v6)
            ngx.say(s.redis)
            ngx.say(#s.version, " ", type(s.loaded_at), " ", type(s.last_ok_at), " ", s.redis_connected)
        }
    }
--- redis
SET gray "127.0.0.1 ::1"
ACL SETUSER tester on >secret ~* +@all
--- response_body_like chomp
^true true string 1\+1
redis://tester:\*\*\*@127\.0\.0\.1:\d+/0
16 number number true
$



=== TEST 12: Redis refuses SUBSCRIBE (ACL without pub/sub): the list still loads, by polling
--- redis
SET gray 127.0.0.1
ACL SETUSER tester on >secret ~* +@all -@pubsub
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://tester:secret@127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.2,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local s = gray.status()
            ngx.say((gray.decide()), " subscribed=", s.subscribed)
            T.redis("set", "gray", "127.0.0.2")
            ngx.say("seen by polling: ", (T.wait_for(function()
                return gray.decide() == "@prod1"
            end, 1)))
        }
    }
--- response_body
@prod2-grey subscribed=false
seen by polling: true
--- error_log
cannot subscribe to gray:changed
changes are seen by polling every 0.2s



=== TEST 13: a value over max_bytes is refused unread, string or set: the last good list stays
--- redis
SET gray 127.0.0.1
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.2, max_bytes = 4096,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local function refused(message)
                return T.wait_for(function()
                    return (gray.status().last_error or ""):find(message, 1, true)
                end, 2)
            end
            T.redis("set", "gray", string.rep("10.0.0.1,", 500))
            T.redis("publish", "gray:changed", "1")
            ngx.say(refused("value is 4500 bytes, over max_bytes (4096 bytes)"), " ",
                    (gray.decide()))
            local members = {}
            for i = 1, 500 do
                members[i] = "10.0." .. math.floor(i / 256) .. "." .. i % 256
            end
            T.redis_atomic({ "del", "gray" }, { "sadd", "gray", unpack(members) })
            T.redis("publish", "gray:changed", "1")
            ngx.say(refused("set members exceed max_bytes (4096 bytes)"), " ",
                    (gray.decide()))
            T.redis("set", "gray", string.rep("10.0.0.1,", 450))
            T.redis("publish", "gray:changed", "1")
            ngx.say("under the cap: ", (T.wait_for(function()
                return gray.decide() == "@prod1"
            end, 2)))
        }
    }
--- response_body
true @prod2-grey
true @prod2-grey
under the cap: true
--- error_log
ignoring key gray: value is 4500 bytes, over max_bytes (4096 bytes); keeping the last good list
--- wait: 0.3
--- allowed_errors
ignoring key gray: value is 4500 bytes, over max_bytes (4096 bytes)
ignoring key gray: set members exceed max_bytes (4096 bytes)



=== TEST 14: a SET read in several SSCAN batches: refused when a later batch crosses max_bytes, loaded whole when under it, and the connection stays in step
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.2, max_bytes = 150000,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local fill = "for i = 1, tonumber(ARGV[1]) do redis.call('sadd', KEYS[1], '10.' "
                         .. ".. math.floor(i / 65536) .. '.' .. math.floor(i / 256) % 256 .. '.' .. i % 256) end"
            T.redis("eval", fill, 1, "gray", 25000)
            T.redis("publish", "gray:changed", "1")
            ngx.say("refused: ", (T.wait_for(function()
                return (gray.status().last_error or ""):find("set members exceed max_bytes (150000 bytes)",
                                                             1, true)
            end, 2)))
            T.redis_atomic({ "del", "gray" }, { "eval", fill, 1, "gray", 12000 })
            T.redis("publish", "gray:changed", "1")
            T.wait_for(function() return gray.status().entries == 12000 end, 2)
            ngx.say("entries: ", gray.status().entries)
            T.redis_atomic({ "del", "gray" }, { "set", "gray", "127.0.0.1" })
            T.redis("publish", "gray:changed", "1")
            ngx.say("then a string: ", (T.wait_for(function()
                return gray.decide() == "@prod2-grey"
            end, 2)))
        }
    }
--- response_body
refused: true
entries: 12000
then a string: true
--- error_log
the rest left unread
--- no_error_log
failed to read key
--- wait: 0.3
--- allowed_errors
ignoring key gray: set members exceed max_bytes (150000 bytes)



=== TEST 15: one huge SET member is refused by its length, unread: memory stays flat, the last good list stays, the next change loads
--- redis
SET gray 127.0.0.1
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.2, max_bytes = 1048576,
            -- Writing the 60 MB member keeps Redis busy: its PINGs must not time out meanwhile.
            timeout = 5,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local function peak_mib()
                local status = assert(io.open("/proc/self/status")):read("*a")
                return tonumber(status:match("VmHWM:%s+(%d+)")) / 1024
            end
            local before = peak_mib()
            T.redis_atomic({ "del", "gray" }, { "sadd", "gray", "127.0.0.2" },
                           { "eval", "redis.call('sadd', KEYS[1], string.rep('x', 60 * 1024 * 1024))", 1, "gray" })
            T.redis("publish", "gray:changed", "1")
            local refused = T.wait_for(function()
                return (gray.status().last_error or ""):find("set members exceed max_bytes (1048576 bytes)", 1, true)
            end, 3)
            ngx.say("refused: ", refused, ", still routing by the last good list: ", (gray.decide()))
            local grown = peak_mib() - before
            ngx.say("peak memory grew under 8 MiB: ", grown < 8, grown < 8 and "" or (" (" .. grown .. " MiB)"))
            T.redis_atomic({ "del", "gray" }, { "set", "gray", "127.0.0.2" })
            T.redis("publish", "gray:changed", "1")
            ngx.say("next change loaded: ", (T.wait_for(function()
                return gray.decide() == "@prod1"
            end, 2)))
        }
    }
--- timeout: 10
--- response_body
refused: true, still routing by the last good list: @prod2-grey
peak memory grew under 8 MiB: true
next change loaded: true
--- wait: 0.5
--- error_log
the rest left unread; keeping the last good list
--- allowed_errors
ignoring key gray: set members exceed max_bytes (1048576 bytes)



=== TEST 16: polling without tracking, a large value is probed (type and length) and read only when its size moves, or when a PUBLISH names it
--- redis
EVAL "local e = {'127.0.0.9'} for a = 0, 39 do for b = 0, 199 do e[#e + 1] = '10.' .. a .. '.' .. b .. '.1' end end redis.call('SET', 'gray', table.concat(e, ',')) return #e" 0
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.1, tracking = false,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local calls = T.calls
            ngx.sleep(0.3)
            local reads, probes = calls("getrange"), calls("strlen")
            ngx.sleep(1)
            ngx.say(gray.status().entries, " entries; reads in 1 s: ", calls("getrange") - reads,
                    ", probes: ", calls("strlen") - probes >= 5)
            local value = T.redis("get", "gray")
            -- The same length: a probe cannot tell, and polling leaves it until resync.
            T.redis("set", "gray", (value:gsub("^127%.0%.0%.9", "127.0.0.1")))
            ngx.say("same length, polled: ", (T.wait_for(function() return gray.decide() == "@prod2-grey" end, 0.5)))
            T.redis("publish", "gray:changed", "gray")
            ngx.say("then published: ", (T.wait_for(function() return gray.decide() == "@prod2-grey" end, 0.5)))
            T.redis("set", "gray", value .. ",10.255.0.1")
            ngx.say("another length, polled: ", (T.wait_for(function() return gray.decide() == "@prod1" end, 0.5)))
        }
    }
--- response_body
8001 entries; reads in 1 s: 0, probes: true
same length, polled: false
then published: true
another length, polled: true



=== TEST 17: with tracking, a write to the rule set reads the rule set, not the large whitelist beside it
--- redis
EVAL "local e = {'127.0.0.9'} for a = 0, 39 do for b = 0, 199 do e[#e + 1] = '10.' .. a .. '.' .. b .. '.1' end end redis.call('SET', 'gray', table.concat(e, ',')) return #e" 0
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 60 }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local calls = T.calls
            local reads = calls("getrange")
            T.redis("set", "gray:rules", '{"format": 1, "rules": [{"name": "all", "to": "@prod2-grey"}]}')
            ngx.say("rule set seen: ", (T.wait_for(function() return gray.decide() == "@prod2-grey" end, 0.5)))
            ngx.say("values read: ", calls("getrange") - reads)
            T.redis("set", "gray", "127.0.0.1")
            T.redis("del", "gray:rules")
            ngx.say("whitelist decides again: ", (T.wait_for(function()
                return gray.status().entries == 1 and gray.decide() == "@prod2-grey"
            end, 0.5)))
        }
    }
--- response_body
rule set seen: true
values read: 1
whitelist decides again: true



=== TEST 18: a burst of writes, each published: the last one is the one served
--- redis
SET gray 127.0.0.9
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 60 }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            -- 200 writes as fast as one connection takes them; only the last lists 127.0.0.1.
            local function burst(last)
                for i = 1, 199 do
                    T.redis("set", "gray", "10.0." .. math.floor(i / 256) .. "." .. i % 256)
                    T.redis("publish", "gray:changed", "gray")
                end
                T.redis("set", "gray", last)
                T.redis("publish", "gray:changed", "gray")
            end
            burst("127.0.0.1")
            ngx.say("last served: ", (T.wait_for(function()
                return gray.decide() == "@prod2-grey"
            end, 1)))
            burst("127.0.0.2")
            ngx.say("and again: ", (T.wait_for(function()
                return gray.decide() == "@prod1" and gray.status().entries == 1
            end, 1)))
        }
    }
--- response_body
last served: true
and again: true



=== TEST 19: the resync safety net reads a change no notification announced (SWAPDB sends none)
--- redis
SET gray 127.0.0.9
SELECT 1
SET gray 127.0.0.1
SELECT 0
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.2, resync = 1,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            ngx.say((gray.decide()), " tracking=", gray.status().tracking)
            T.redis("swapdb", "0", "1")
            -- resync is 1 s, give or take a tenth per worker.
            ngx.say("seen by the resync: ", (T.wait_for(function()
                return gray.decide() == "@prod2-grey"
            end, 1.5)))
        }
    }
--- response_body
@prod1 tracking=true
seen by the resync: true



=== TEST 20: the same change under a resync of 300 s is not seen: nothing announced it (TEST 19's control)
--- redis
SET gray 127.0.0.9
SELECT 1
SET gray 127.0.0.1
SELECT 0
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.2, resync = 300,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            T.redis("swapdb", "0", "1")
            ngx.say("seen in 1.5 s: ", (T.wait_for(function()
                return gray.decide() == "@prod2-grey"
            end, 1.5)))
        }
    }
--- response_body
seen in 1.5 s: false



=== TEST 21: redis+unix:// reads the list over a unix socket, and tracks it there
--- redis
SET gray 127.0.0.9
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis+unix://$TEST_NGINX_REDIS_SOCK?db=0", refresh = 60 }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local s = gray.status()
            ngx.say((gray.decide()), " entries=", s.entries, " tracking=", s.tracking,
                    " unix=", s.redis:find("redis+unix://", 1, true) == 1)
            T.redis("set", "gray", "127.0.0.1")
            ngx.say("a plain SET is seen: ", (T.wait_for(function()
                return gray.decide() == "@prod2-grey"
            end, 0.5)))
        }
    }
--- response_body
@prod1 entries=1 tracking=true unix=true
a plain SET is seen: true



=== TEST 22: gray's own writes never wake its readers: a report the worker writes pushes no invalidation back
--- redis
SET gray 127.0.0.9
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.2, report = 0.2,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            local function out_bytes()
                local info = T.redis("info", "stats")
                return tonumber(info:match("total_net_output_bytes:(%d+)")), #info
            end
            local function calls()
                return T.calls("hset"), T.calls("expire"), T.calls("ping")
            end
            ngx.sleep(0.5)
            local hsets, expires, pings = calls()
            local before = out_bytes()
            ngx.sleep(2)
            local after, info_reply = out_bytes()
            local hsets2, expires2, pings2 = calls()
            -- What was sent meanwhile: the worker's PONGs (24 bytes each, subscribed) and the replies
            -- to its HSETs and EXPIREs (4 bytes each), and the reply to the test's first INFO stats
            -- (as long as the second). An invalidation of the reports hash would add ~80 bytes a
            -- report.
            local own = info_reply + 64
            local expected = (pings2 - pings) * 24 + (hsets2 - hsets) * 4 + (expires2 - expires) * 4
            local extra = (after - before) - own - expected
            -- About ten reports in 2 s: half of them shows the worker writes, without racing its timer.
            ngx.say("reports written: ", hsets2 - hsets >= 5, ", pushed to readers besides: ",
                    extra < (hsets2 - hsets) * 20, extra < (hsets2 - hsets) * 20 and "" or (" (" .. extra .. " bytes)"))
        }
    }
--- timeout: 10
--- response_body
reports written: true, pushed to readers besides: true



=== TEST 23: a PUBLISH naming no key reads a big key at most once a refresh, and the last state is served
--- redis
EVAL "local e = {'127.0.0.9'} for a = 0, 39 do for b = 0, 199 do e[#e + 1] = '10.' .. a .. '.' .. b .. '.1' end end redis.call('SET', 'gray', table.concat(e, ',')) return #e" 0
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 1 }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            ngx.sleep(0.2)
            local reads = T.calls("getrange")
            -- 50 messages naming no key over half a second (the classic `publish gray:changed 1`).
            for _ = 1, 50 do
                T.redis("publish", "gray:changed", "1")
                ngx.sleep(0.01)
            end
            ngx.say("whole reads of the 100 KB list for 50 messages: ", T.calls("getrange") - reads <= 2)
            -- The list changes by a SET and a message naming no key: served within a refresh.
            T.redis("eval", "redis.call('SET', KEYS[1], redis.call('GET', KEYS[1]) .. ',127.0.0.1')", 1, "gray")
            T.redis("publish", "gray:changed", "1")
            ngx.say("the last state served: ", (T.wait_for(function()
                return gray.decide() == "@prod2-grey"
            end, 1.5)))
        }
    }
--- timeout: 10
--- response_body
whole reads of the 100 KB list for 50 messages: true
the last state served: true
