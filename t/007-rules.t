# Rule sets: user ids, sticky percentages, several targets, overrides, the kill switch, explain.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';

add_block_preprocessor(sub {
    my $block = shift;
    # Every block here routes to three targets.
    $block->set_value('http_config', <<'_EOC_') unless defined $block->http_config;
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", targets = { "@canary-b" },
        }
    }
_EOC_
    my $config = $block->config // '';
    $block->set_value('config', $config . <<'_EOC_');
    location @canary-b { return 200 "canary-b\n"; }
    location = /r { content_by_lua_block { require("gray").route() } }
_EOC_
    return gray_block($block);
});
run_tests();

__DATA__

=== TEST 1: each condition kind, tried in order; a client no rule takes goes to the default
--- redis
SET gray 192.168.2.165
SADD gray:beta u5000 u5001
SET gray:rules '{"format":1,"default":"@prod1","rules":[{"name":"whitelist","ip_key":"gray","to":"@prod2-grey"},{"name":"office","ip":["10.20.0.0/16","2001:db8::/32"],"to":"@prod2-grey"},{"name":"beta","id":"cookie:uid","in":["u1001","u1002"],"to":"@prod2-grey"},{"name":"beta-big","id":"header:X-User-Id","in_key":"gray:beta","to":"@prod2-grey"},{"name":"tail-7","id":"arg:uid","suffix":["7","9"],"to":"@canary-b"},{"name":"band","id":"header:X-User-Id","range":[[100000,199999]],"to":"@canary-b"},{"name":"vip-stays","id":"header:X-User-Id","regex":"^vip-[0-9]+$","to":"@prod1"},{"name":"everyone-else","percent":100,"by":["cookie:uid"],"to":"@canary-b"}]}'
--- request eval
["GET /r", "GET /r", "GET /r", "GET /r", "GET /r", "GET /r?uid=u17", "GET /r?uid=u18", "GET /r", "GET /r", "GET /r", "GET /r"]
--- more_headers eval
["X-Client: 192.168.2.165",
 "X-Client: 10.20.9.9",
 "X-Client: 2001:db8::5",
 "X-Client: 1.1.1.1\nCookie: a=b; uid=u1002",
 "X-Client: 1.1.1.1\nX-User-Id: u5001",
 "X-Client: 1.1.1.1",
 "X-Client: 1.1.1.1",
 "X-Client: 1.1.1.1\nX-User-Id: 150000",
 "X-Client: 1.1.1.1\nX-User-Id: vip-12\nCookie: uid=u9",
 "X-Client: 1.1.1.1\nCookie: uid=u9",
 "X-Client: 1.1.1.1"]
--- response_body eval
["gray\n", "gray\n", "gray\n", "gray\n", "gray\n", "canary-b\n", "prod\n", "canary-b\n", "prod\n", "canary-b\n", "prod\n"]



=== TEST 2: the override header: always and target names only from override.from, never from anyone; the kill switch beats it
--- redis
SET gray:rules '{"format":1,"override":{"header":"X-Gray","from":["10.0.0.0/8"]},"rules":[{"name":"office","ip":["10.20.0.0/16"],"to":"@prod2-grey"},{"name":"b","ip":["10.30.0.0/16"],"to":"@canary-b"}]}'
--- request eval
["GET /r", "GET /r", "GET /r", "GET /r", "GET /r", "GET /r"]
--- more_headers eval
["X-Client: 10.1.1.1\nX-Gray: always",
 "X-Client: 10.1.1.1\nX-Gray: \@canary-b",
 "X-Client: 1.1.1.1\nX-Gray: always",
 "X-Client: 1.1.1.1\nX-Gray: \@canary-b",
 "X-Client: 10.20.1.1\nX-Gray: never",
 "X-Client: 10.20.1.1\nX-Gray: nonsense"]
--- response_body eval
["gray\n", "canary-b\n", "prod\n", "prod\n", "prod\n", "gray\n"]



=== TEST 3: enabled false is the kill switch: everyone to the default at once, overrides included; true again restores
--- redis
SET gray:rules '{"format":1,"override":{"header":"X-Gray","from":["127.0.0.0/8"]},"rules":[{"name":"all","to":"@prod2-grey"}]}'
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local function route(headers)
                local _, body = T.http_get($TEST_NGINX_SERVER_PORT, "/r", headers)
                return body
            end
            ngx.print("on: ", route())
            T.redis("set", "gray:rules", '{"format":1,"enabled":false,"override":{"header":"X-Gray","from":["127.0.0.0/8"]},"rules":[{"name":"all","to":"@prod2-grey"}]}')
            T.redis("publish", "gray:changed", "1")
            T.wait_for(function() return gray.decide() == "@prod1" end, 1)
            ngx.print("off: ", route())
            -- The tester's address is in override.from: the header would be honoured, were it on.
            ngx.print("off, X-Gray: always: ", route({ ["X-Gray"] = "always" }))
            ngx.print("off, X-Gray: @prod2-grey: ", route({ ["X-Gray"] = "@prod2-grey" }))
            ngx.say("decide: ", select(2, gray.decide()))
            T.redis("set", "gray:rules", '{"format":1,"rules":[{"name":"all","to":"@prod2-grey"}]}')
            T.redis("publish", "gray:changed", "1")
            T.wait_for(function() return gray.decide() == "@prod2-grey" end, 1)
            ngx.print("on again: ", route())
        }
    }
--- response_body
on: gray
off: prod
off, X-Gray: always: prod
off, X-Gray: @prod2-grey: prod
decide: rule set gray:rules, client 127.0.0.1: disabled (enabled: false), the default
on again: gray



=== TEST 4: a bad rule set never replaces a good one; the log names the rule and the field
--- redis
SET gray:rules '{"format":1,"rules":[{"name":"all","to":"@prod2-grey"}]}'
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local bad = {
                '{"format":1,"rules":[{"name":"all","to":"@prod1"},{"name":"beta","precent":5,"to":"@prod1"}]}',
                '{"format":1,"rules":[{"name":"all","to":"@nowhere"}]}',
                '{"format":2,"rules":[]}',
                'not json',
            }
            for _, value in ipairs(bad) do
                local before = gray.status().last_error
                T.redis("set", "gray:rules", value)
                T.redis("publish", "gray:changed", "1")
                T.wait_for(function() return gray.status().last_error ~= before end, 1)
                ngx.say((gray.decide()), " | ", gray.status().last_error)
            end
        }
    }
--- wait: 0.3
--- response_body
@prod2-grey | rejected rule set in key gray:rules: rules[2] "beta": unknown field `precent`, expected one of `name`, `to`, `ip`, `ip_key`, `id`, `in`, `in_key`, `suffix`, `prefix`, `range`, `regex`, `percent`, `by`, `seed`, `guard`
@prod2-grey | rejected rule set in key gray:rules: rules[1] "all": to: unknown target "@nowhere" (this nginx has @prod1, @prod2-grey, @canary-b)
@prod2-grey | rejected rule set in key gray:rules: format is 2, this gray reads format 1
@prod2-grey | rejected rule set in key gray:rules: not a rule set: expected ident at line 1 column 2
--- error_log
rejected rule set in key gray:rules: rules[1] "all": to: unknown target "@nowhere" (this nginx has @prod1, @prod2-grey, @canary-b); keeping the previous rule set
--- allowed_errors
rejected rule set in key gray:rules: rules[2] "beta": unknown field `precent`
rejected rule set in key gray:rules: rules[1] "all": to: unknown target "@nowhere"
rejected rule set in key gray:rules: format is 2, this gray reads format 1
rejected rule set in key gray:rules: not a rule set: expected ident at line 1 column 2



=== TEST 5: a sticky percentage: 0 sends no one, 100 everyone, raising keeps everyone who was in
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local function set_percent(p)
                T.redis("set", "gray:rules", '{"format":1,"rules":[{"name":"ramp","percent":' .. p
                        .. ',"by":["cookie:uid"],"seed":"release-42","to":"@prod2-grey"}]}')
                T.redis("publish", "gray:changed", "1")
                local before = gray.status().rule_sets[1].version
                T.wait_for(function() return gray.status().rule_sets[1].version ~= before end, 1)
            end
            local function ins()
                local list = {}
                for i = 1, 300 do
                    local sock = ngx.socket.tcp()
                    assert(sock:connect("127.0.0.1", $TEST_NGINX_SERVER_PORT))
                    sock:send("GET /r HTTP/1.0\r\nCookie: uid=u" .. i .. "\r\n\r\n")
                    local response = sock:receive("*a")
                    sock:close()
                    list[i] = response:find("gray\n", 1, true) ~= nil
                end
                return list
            end
            local count = function(list)
                local n = 0
                for _, v in ipairs(list) do n = n + (v and 1 or 0) end
                return n
            end
            set_percent(0)
            ngx.say("0%: ", count(ins()))
            set_percent(10)
            local ten = ins()
            set_percent(50)
            local fifty = ins()
            local kept = true
            for i, v in ipairs(ten) do
                if v and not fifty[i] then kept = false end
            end
            ngx.say("10%: ", count(ten) > 10 and count(ten) < 60, ", 50%: ", count(fifty) > 110 and count(fifty) < 190, ", kept: ", kept)
            set_percent(100)
            ngx.say("100%: ", count(ins()))
        }
    }
--- timeout: 20
--- response_body
0%: 0
10%: true, 50%: true, kept: true
100%: 300



=== TEST 6: decide() and explain() say which rule, why, the id and where it came from, and the bucket
--- redis
SET gray:rules '{"format":1,"override":{"header":"X-Gray","from":["10.0.0.0/8"]},"rules":[{"name":"beta","id":"cookie:uid","in":["u1001"],"to":"@prod2-grey"},{"name":"ramp","percent":100,"by":["header:X-User-Id","ip"],"seed":"s","to":"@canary-b"}]}'
--- config
    location = /t {
        content_by_lua_block {
            local gray = require "gray"
            local target, reason = gray.decide()
            ngx.say(target, " | ", reason)
            local e = gray.explain()
            ngx.say(e.target, " ", e.rule, " ", e.outcome, " ", e.client, " ", e.inputs["cookie:uid"] or "-",
                    " ", e.bucket or "-", " ", e.threshold or "-")
        }
    }
--- request eval
["GET /t", "GET /t", "GET /t"]
--- more_headers eval
["X-Client: 1.1.1.1\nCookie: uid=u1001",
 "X-Client: 1.1.1.1\nX-User-Id: 42",
 "X-Client: 1.1.1.1\nX-Gray: always"]
--- response_body eval
["\@prod2-grey | rule set gray:rules, client 1.1.1.1: rule 1 \"beta\": cookie:uid \"u1001\" in the list\n\@prod2-grey beta rule 1.1.1.1 u1001 - -\n",
 "\@canary-b | rule set gray:rules, client 1.1.1.1: rule 2 \"ramp\": bucket 1591947571 of header:X-User-Id \"42\" < threshold 4294967296 (100%)\n\@canary-b ramp rule 1.1.1.1 - 1591947571 4294967296\n",
 "\@canary-b | rule set gray:rules, client 1.1.1.1: rule 2 \"ramp\": bucket 558244660 of ip \"1.1.1.1\" < threshold 4294967296 (100%); override X-Gray: always ignored (the client is not in override.from)\n\@canary-b ramp rule 1.1.1.1 - 558244660 4294967296\n"]



=== TEST 7: two named rule sets side by side, and the default set; an unknown name routes to production
--- redis
SET gray:rules '{"format":1,"rules":[{"name":"all","to":"@prod2-grey"}]}'
SET gray:rules:shop '{"format":1,"rules":[{"name":"all","to":"@canary-b"}]}'
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", targets = { "@canary-b" },
            rule_sets = { "shop", "api" },
        }
    }
--- config
    location = /shop { content_by_lua_block { require("gray").route("shop") } }
    location = /api { content_by_lua_block { require("gray").route("api") } }
    location = /nope { content_by_lua_block { require("gray").route("nope") } }
--- request eval
["GET /r", "GET /shop", "GET /api", "GET /nope"]
--- more_headers eval
["X-Client: 1.1.1.1", "X-Client: 1.1.1.1", "X-Client: 1.1.1.1", "X-Client: 1.1.1.1"]
--- response_body eval
["gray\n", "canary-b\n", "prod\n", "prod\n"]
--- allowed_errors
route("nope"): no rule set of that name is configured



=== TEST 8: route() by a rule set name that is not configured: production, and an error line naming it
--- config
    location = /nope { content_by_lua_block { require("gray").route("nope") } }
--- request
GET /nope
--- response_body
prod
--- error_log
gray: route("nope"): no rule set of that name is configured (configure{ rule_sets = {...} }); routing to @prod1
--- allowed_errors
route("nope"): no rule set of that name is configured



=== TEST 9: without a rule set key the whitelist decides, exactly as before
--- redis
SET gray 127.0.0.7
--- request eval
["GET /r", "GET /r"]
--- more_headers eval
["X-Client: 127.0.0.7", "X-Client: 127.0.0.8"]
--- response_body eval
["gray\n", "prod\n"]



=== TEST 10: a rule set naming a target this nginx lacks is rejected whole, at first load too: the whitelist decides
--- redis
SET gray 127.0.0.7
SET gray:rules '{"format":1,"rules":[{"name":"a","ip":["127.0.0.8"],"to":"@prod2-grey"},{"name":"b","to":"@canary-x"}]}'
--- request eval
["GET /r", "GET /r"]
--- more_headers eval
["X-Client: 127.0.0.7", "X-Client: 127.0.0.8"]
--- response_body eval
["gray\n", "prod\n"]
--- allowed_errors
rejected rule set in key gray:rules: rules[2] "b": to: unknown target "@canary-x"



=== TEST 11: the error log says why a rule set naming an unknown target was rejected
--- redis
SET gray:rules '{"format":1,"rules":[{"name":"a","ip":["127.0.0.8"],"to":"@prod2-grey"},{"name":"b","to":"@canary-x"}]}'
--- request
GET /r
--- response_body
prod
--- error_log
rejected rule set in key gray:rules: rules[2] "b": to: unknown target "@canary-x" (this nginx has @prod1, @prod2-grey, @canary-b); no rule set loaded, the whitelist key decides
--- allowed_errors
rejected rule set in key gray:rules: rules[2] "b": to: unknown target "@canary-x"



=== TEST 12: behind a trusted proxy: the client comes from X-Forwarded-For, the id from a cookie, a variable from nginx
--- redis
SET gray:rules '{"format":1,"rules":[{"name":"office-beta","ip":["10.20.0.0/16"],"id":"cookie:uid","prefix":["beta-"],"to":"@prod2-grey"},{"name":"by-host","id":"var:host","in":["canary.example"],"to":"@canary-b"}]}'
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", targets = { "@canary-b" },
            trusted_proxies = { "127.0.0.1" },
        }
    }
--- request eval
["GET /r", "GET /r", "GET /r", "GET /r", "GET /r"]
--- more_headers eval
["X-Forwarded-For: 10.20.1.1\nCookie: uid=beta-7",
 "X-Forwarded-For: 10.21.1.1\nCookie: uid=beta-7",
 "X-Forwarded-For: 10.20.1.1\nCookie: uid=alpha-7",
 "X-Forwarded-For: 10.20.1.1\nHost: canary.example",
 "Host: canary.example\nCookie: uid=beta-1"]
--- response_body eval
["gray\n", "prod\n", "prod\n", "canary-b\n", "canary-b\n"]



=== TEST 13: an in_key loaded from a string and from a SET, and a rule set that stops referencing it
--- redis
SET gray:vip "v1, v2 v3"
SADD gray:beta b1 b2
SET gray:rules '{"format":1,"rules":[{"name":"vip","id":"header:X-User","in_key":"gray:vip","to":"@canary-b"},{"name":"beta","id":"header:X-User","in_key":"gray:beta","to":"@prod2-grey"}]}'
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local function route(user)
                local sock = ngx.socket.tcp()
                assert(sock:connect("127.0.0.1", $TEST_NGINX_SERVER_PORT))
                sock:send("GET /r HTTP/1.0\r\nX-User: " .. user .. "\r\n\r\n")
                local response = sock:receive("*a")
                sock:close()
                return (response:match("\r\n\r\n(%S+)"))
            end
            ngx.say(route("v2"), " ", route("b2"), " ", route("x"))
            T.redis("sadd", "gray:beta", "b3")
            T.redis("publish", "gray:changed", "1")
            T.wait_for(function() return route("b3") == "gray" end, 1)
            ngx.say("added: ", route("b3"))
            T.redis("set", "gray:rules", '{"format":1,"rules":[{"name":"beta","id":"header:X-User","in_key":"gray:beta","to":"@prod2-grey"}]}')
            T.redis("publish", "gray:changed", "1")
            T.wait_for(function() return route("v2") == "prod" end, 1)
            ngx.say("vip rule gone: ", route("v2"), " ", route("b1"))
        }
    }
--- response_body
canary-b gray prod
added: gray
vip rule gone: prod gray



=== TEST 14: a worker reads what the rule set in force needs: its inputs change, the rule set goes, it comes back
--- redis
SET gray 127.0.0.1
SET gray:rules '{"format":1,"rules":[{"name":"by-header","id":"header:X-User","in":["u1"],"to":"@canary-b"}]}'
--- config
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            local function route(request)
                local sock = ngx.socket.tcp()
                assert(sock:connect("127.0.0.1", $TEST_NGINX_SERVER_PORT))
                sock:send(request .. "\r\n\r\n")
                local response = sock:receive("*a")
                sock:close()
                return (response:match("\r\n\r\n(%S+)"))
            end
            local header, cookie, arg = "GET /r HTTP/1.0\r\nX-User: u1", "GET /r HTTP/1.0\r\nCookie: uid=u1", "GET /r?uid=u1 HTTP/1.0"
            local function change(rules)
                if rules then
                    T.redis("set", "gray:rules", rules)
                else
                    T.redis("del", "gray:rules")
                end
                T.redis("publish", "gray:changed", "1")
            end
            ngx.say("header: ", route(header), " ", route(cookie), " ", route(arg))
            change('{"format":1,"rules":[{"name":"by-cookie","id":"cookie:uid","in":["u1"],"to":"@canary-b"}]}')
            T.wait_for(function() return route(cookie) == "canary-b" end, 1)
            ngx.say("cookie: ", route(header), " ", route(cookie), " ", route(arg))
            change('{"format":1,"rules":[{"name":"by-arg","id":"arg:uid","in":["u1"],"to":"@canary-b"}]}')
            T.wait_for(function() return route(arg) == "canary-b" end, 1)
            ngx.say("arg: ", route(header), " ", route(cookie), " ", route(arg))
            change(nil)
            T.wait_for(function() return route(arg) == "gray" end, 1)
            ngx.say("none: ", route(header), " ", route(cookie), " ", route(arg))
            change('{"format":1,"rules":[{"name":"by-header","id":"header:X-User","in":["u1"],"to":"@canary-b"}]}')
            T.wait_for(function() return route(header) == "canary-b" end, 1)
            ngx.say("header again: ", route(header), " ", route(cookie), " ", route(arg))
        }
    }
--- response_body
header: canary-b prod prod
cookie: prod canary-b prod
arg: prod prod canary-b
none: gray gray gray
header again: canary-b prod prod



=== TEST 15: on an nginx whose request layout gray does not know, the address comes through the variable, inputs fetched first or not
--- main_config
env GRAY_FAULT=address-layout;
--- redis
SET gray:rules '{"format":1,"rules":[{"name":"office","ip":["127.0.0.0/8"],"id":"cookie:uid","in":["u1"],"to":"@canary-b"}]}'
--- config
    location = /read { content_by_lua_block { ngx.say(require("gray").status().address_read) } }
--- request eval
["GET /r", "GET /r", "GET /r", "GET /r", "GET /read"]
--- more_headers eval
["Cookie: uid=u1", "Cookie: uid=u1", "Cookie: uid=u2", "Cookie: uid=u1", ""]
--- response_body eval
["canary-b\n", "canary-b\n", "prod\n", "canary-b\n", "variable\n"]



=== TEST 16: an in_key outside the tracked prefixes is tracked once a rule set names it: a plain SADD, no PUBLISH, refresh 60, is seen at once
--- redis
SET gray:rules '{"format":1,"rules":[{"name":"beta","id":"header:X-User-Id","in_key":"beta-users","to":"@canary-b"}]}'
SADD beta-users u1
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", targets = { "@canary-b" },
            refresh = 60, channel = false,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            ngx.req.set_header("X-User-Id", "u2")
            ngx.say((gray.decide()), " tracking=", gray.status().tracking)
            T.redis("sadd", "beta-users", "u2")
            ngx.say("sadd seen: ", (T.wait_for(function() return gray.decide() == "@canary-b" end, 0.5)))
        }
    }
--- more_headers
X-Client: 1.1.1.1
--- response_body
@prod1 tracking=true
sadd seen: true



=== TEST 17: a rule set that would cost gigabytes to parse or compile is refused whole, the good one kept, the worker's peak memory flat
--- redis
SET gray:rules '{"format":1,"rules":[{"name":"all","to":"@prod2-grey"}]}'
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.2 }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local function peak_mib()
                local status = assert(io.open("/proc/self/status")):read("*a")
                return tonumber(status:match("VmHWM:%s+(%d+)")) / 1024
            end
            local function refused(message)
                return (T.wait_for(function()
                    return (gray.status().last_error or ""):find(message, 1, true)
                end, 3))
            end
            local before = peak_mib()
            -- 30 MB of zeros where the rules go: under max_bytes, far over a rule set's limit.
            T.redis("eval", "redis.call('set', KEYS[1], '{\"format\":1,\"rules\":[' .. string.rep('0,', 15000000) .. '0]}')", 1, "gray:rules")
            ngx.say("30 MB: ", refused("over the rule set limit (1048576 bytes)"))
            -- Under the limit: half a million elements.
            T.redis("eval", "redis.call('set', KEYS[1], '{\"format\":1,\"rules\":[' .. string.rep('0,', 500000) .. '0]}')", 1, "gray:rules")
            ngx.say("500,000 rules: ", refused("more than 1000 rules"))
            -- A thousand regexes that compile large.
            local rules = {}
            for i = 1, 1000 do
                rules[i] = '{"name":"r' .. i .. '","id":"arg:u","regex":"[a-z]{20}@[a-z]{20}\\\\.com","to":"@prod2-grey"}'
            end
            T.redis("set", "gray:rules", '{"format":1,"rules":[' .. table.concat(rules, ",") .. ']}')
            ngx.say("1,000 regexes: ", refused("regexes would take more than 16777216 bytes"))
            ngx.say("still the good one: ", (gray.decide()))
            local grown = peak_mib() - before
            ngx.say("peak memory grew under 16 MiB: ", grown < 16, grown < 16 and "" or (" (" .. grown .. " MiB)"))
        }
    }
--- timeout: 20
--- response_body
30 MB: true
500,000 rules: true
1,000 regexes: true
still the good one: @prod2-grey
peak memory grew under 16 MiB: true
--- allowed_errors
over the rule set limit (1048576 bytes)
rejected rule set in key gray:rules
