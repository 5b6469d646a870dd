# Guards: a rule whose target answers too many 5xx against the default target's stops matching
# on the whole nginx (both workers), says so once in the log, in metrics and status, and in Redis;
# it stays tripped until the rule set changes or an operator resets it.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';

workers(2);
master_on();
add_block_preprocessor(sub {
    my $block = shift;
    # Every block's gateway: the canary target answers what $canary_status says.
    $block->set_value('http_config', <<'_EOC_' . ($block->http_config // ''));
    init_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", count_responses = true }
    }
    init_worker_by_lua_block { require("gray").init_worker() }
    server {
        listen 127.0.0.1:$TEST_NGINX_EXTRA_PORT reuseport;
        location / { content_by_lua_block { require("gray").route() } }
        location @prod1 {
            content_by_lua_block {
                ngx.header["X-Worker"] = ngx.worker.pid()
                ngx.say("prod")
            }
        }
        location @prod2-grey {
            content_by_lua_block {
                ngx.header["X-Worker"] = ngx.worker.pid()
                ngx.status = tonumber(require("gray_test").redis("get", "canary_status")) or 200
                ngx.say("gray")
            }
        }
        location = /gray/metrics { content_by_lua_block { require("gray").metrics() } }
    }
_EOC_
    $block->set_value('config', <<'_EOC_' . ($block->config // ''));
    location = /status {
        content_by_lua_block {
            local tripped = require("gray").status().rule_sets[1].tripped
            ngx.print("[", table.concat(tripped or {}, ","), "]")
        }
    }
_EOC_
    return gray_block($block);
});
run_tests();

__DATA__

=== TEST 1: a canary answering 500s trips its guard: both workers send its clients to the default, and metrics, status, Redis and the log say so
--- redis
SET canary_status 500
SET gray:rules '{"format": 1, "rules": [{"name": "canary", "to": "@prod2-grey", "ip": ["127.0.0.2"], "guard": {"max_error_rate": 5, "min_requests": 20, "window": 60}}]}'
--- config
    location = /t {
        content_by_lua_block {
            local T, C = require "gray_test", require "canary"
            for _ = 1, 25 do
                T.http_get($TEST_NGINX_EXTRA_PORT, "/", { ["X-Client"] = "127.0.0.3" })
                C.send($TEST_NGINX_EXTRA_PORT, 1)
            end
            local stopped = C.answered($TEST_NGINX_EXTRA_PORT, "prod\n")
            -- The worker that answered has applied the trip; the other applies it from its own
            -- timer, within a second.
            ngx.sleep(1.2)
            -- Both workers: twenty new connections, spread over them by reuseport.
            local after, workers, answering = {}, {}, 0
            for _ = 1, 20 do
                local _, body, head = T.http_get($TEST_NGINX_EXTRA_PORT, "/", { ["X-Client"] = "127.0.0.2" })
                after[body] = (after[body] or 0) + 1
                local pid = (head or ""):match("X%-Worker: (%d+)")
                if pid and not workers[pid] then
                    workers[pid], answering = true, answering + 1
                end
            end
            ngx.say("stopped: ", stopped, ", then ", after["prod\n"], " of 20 to prod, from ",
                    answering, " workers")
            local _, text = T.http_get($TEST_NGINX_EXTRA_PORT, "/gray/metrics")
            ngx.say("metric: ", T.sample(text, "gray_guard_tripped",
                                         'rule_set="gray:rules",rule="canary",target="@prod2-grey"'))
            ngx.say("status: ", (select(2, T.http_get($TEST_NGINX_SERVER_PORT, "/status"))))
            -- The refresher writes it on its next round.
            local records
            T.wait_for(function()
                records = T.redis("hgetall", "gray:rules:guard")
                return #records > 0
            end, 3)
            local record = records[2] or ""
            ngx.say("recorded: ", #records / 2, " field ", (records[1] or ""):match("^trip:.+:canary$") ~= nil,
                    ", ", record:match('"rule":"canary","target":"@prod2%-grey"') ~= nil,
                    ", errors ", (tonumber(record:match('"errors":(%d+)')) or 0) >= 20)
            -- Logged once for the nginx, by the worker that tripped it, not once a worker.
            local log = assert(io.open(ngx.config.prefix() .. "logs/error.log")):read("*a")
            local _, logged = log:gsub('guard tripped: rule set gray:rules rule "canary"', "")
            ngx.say("logged: ", logged, " time")
        }
    }
--- timeout: 15
--- response_body
stopped: true, then 20 of 20 to prod, from 2 workers
metric: 1
status: [canary]
recorded: 1 field true, true, errors true
logged: 1 time
--- error_log eval
qr/guard tripped: rule set gray:rules rule "canary" \(to \@prod2-grey\): 5xx 100\.0% of \d+ responses in the last 60s against 0\.0% of \d+ for the default target, over the 5 points allowed/



=== TEST 2: a canary answering 200s keeps its traffic
--- redis
SET canary_status 200
SET gray:rules '{"format": 1, "rules": [{"name": "canary", "to": "@prod2-grey", "ip": ["127.0.0.2"], "guard": {"max_error_rate": 5, "min_requests": 20}}]}'
--- config
    location = /t {
        content_by_lua_block {
            local T, C = require "gray_test", require "canary"
            C.send($TEST_NGINX_EXTRA_PORT, 40)
            ngx.sleep(2.5)
            local body = C.send($TEST_NGINX_EXTRA_PORT, 1)
            local _, text = T.http_get($TEST_NGINX_EXTRA_PORT, "/gray/metrics")
            ngx.say(body, "metric: ", T.sample(text, "gray_guard_tripped",
                                               'rule_set="gray:rules",rule="canary",target="@prod2-grey"'))
        }
    }
--- timeout: 10
--- response_body
gray
metric: 0
--- no_error_log
guard tripped



=== TEST 3: below min_requests a failing canary is not judged
--- redis
SET canary_status 503
SET gray:rules '{"format": 1, "rules": [{"name": "canary", "to": "@prod2-grey", "ip": ["127.0.0.2"], "guard": {"max_error_rate": 5, "min_requests": 30}}]}'
--- config
    location = /t {
        content_by_lua_block {
            local T, C = require "gray_test", require "canary"
            C.send($TEST_NGINX_EXTRA_PORT, 25)
            ngx.sleep(2.5)
            local body = C.send($TEST_NGINX_EXTRA_PORT, 1)
            ngx.say(body, "status: ", (select(2, T.http_get($TEST_NGINX_SERVER_PORT, "/status"))))
        }
    }
--- timeout: 10
--- response_body
gray
status: []
--- no_error_log
guard tripped



=== TEST 4: a tripped rule matches again once the rule set changes, and once an operator resets it
--- redis
SET canary_status 500
SET gray:rules '{"format": 1, "rules": [{"name": "canary", "to": "@prod2-grey", "ip": ["127.0.0.2"], "guard": {"max_error_rate": 5, "min_requests": 20}}]}'
--- config
    location = /t {
        content_by_lua_block {
            local T, C = require "gray_test", require "canary"
            local function trip()
                C.send($TEST_NGINX_EXTRA_PORT, 25)
                return C.answered($TEST_NGINX_EXTRA_PORT, "prod\n")
            end
            local function back()
                return C.answered($TEST_NGINX_EXTRA_PORT, "gray\n")
            end
            ngx.say("tripped: ", trip())
            -- A new version of the rule set (the canary's fix, say): the rule matches again, on
            -- a fresh window, so the errors before the trip do not trip it again.
            T.redis("set", "canary_status", "200")
            T.redis("set", "gray:rules", '{"format": 1, "rules": [{"name": "canary", "to": "@prod2-grey", "ip": ["127.0.0.2"], "guard": {"max_error_rate": 4, "min_requests": 20}}]}')
            ngx.say("back after a new rule set: ", back())
            C.send($TEST_NGINX_EXTRA_PORT, 25)
            ngx.sleep(1.5)
            ngx.say("still back: ", C.send($TEST_NGINX_EXTRA_PORT, 1) == "gray\n")
            T.redis("set", "canary_status", "500")
            ngx.say("tripped again: ", trip())
            T.redis("set", "canary_status", "200")
            ngx.say(T.grayctl("guard reset canary"))
            ngx.say("back after a reset: ", back())
            C.send($TEST_NGINX_EXTRA_PORT, 25)
            ngx.sleep(1.5)
            ngx.say("still back: ", C.send($TEST_NGINX_EXTRA_PORT, 1) == "gray\n")
        }
    }
--- timeout: 30
--- response_body
tripped: true
back after a new rule set: true
still back: true
tripped again: true
reset the guard of rule "canary" in gray:rules, trip records removed: 1; gateways let it match again on their next read

back after a reset: true
still back: true
--- error_log eval
[qr/guard tripped/, qr/guard of rule set gray:rules rule "canary" reset: the rule matches again/]



=== TEST 5: a rule set brought back as it was when its rule tripped (a rollback, off then on) is a change too: the rule matches again
--- redis
SET canary_status 500
SET gray:rules '{"format": 1, "rules": [{"name": "canary", "to": "@prod2-grey", "ip": ["127.0.0.2"], "guard": {"max_error_rate": 5, "min_requests": 20}}]}'
--- config
    location = /t {
        content_by_lua_block {
            local T, C = require "gray_test", require "canary"
            local tripped_text = T.redis("get", "gray:rules")
            C.send($TEST_NGINX_EXTRA_PORT, 25)
            ngx.say("tripped: ", C.answered($TEST_NGINX_EXTRA_PORT, "prod\n"))
            T.redis("set", "canary_status", "200")
            T.redis("set", "gray:rules", '{"format": 1, "enabled": false, "rules": [{"name": "canary", "to": "@prod2-grey", "ip": ["127.0.0.2"], "guard": {"max_error_rate": 5, "min_requests": 20}}]}')
            ngx.sleep(0.5)
            T.redis("set", "gray:rules", tripped_text)
            ngx.say("back as it was, matches: ", C.answered($TEST_NGINX_EXTRA_PORT, "gray\n"))
        }
    }
--- timeout: 20
--- response_body
tripped: true
back as it was, matches: true
--- error_log
guard tripped



=== TEST 6: the window starts at the load: failing responses answered before the first judgement after it are judged too
--- redis
SET canary_status 500
--- config
    location = /t {
        content_by_lua_block {
            local T, C = require "gray_test", require "canary"
            -- Loaded while the test runs: the guards have judged the empty rule set for a while.
            ngx.sleep(1.5)
            T.redis("set", "gray:rules", '{"format": 1, "rules": [{"name": "canary", "to": "@prod2-grey", "ip": ["127.0.0.2"], "guard": {"max_error_rate": 5, "min_requests": 50}}]}')
            T.wait_for(function() return C.send($TEST_NGINX_EXTRA_PORT, 1) == "gray\n" end, 2)
            -- 80 failing answers at once, then no traffic at all.
            C.send($TEST_NGINX_EXTRA_PORT, 80)
            ngx.say("tripped: ", (T.wait_for(function()
                local _, status = T.http_get($TEST_NGINX_SERVER_PORT, "/status")
                return status == "[canary]"
            end, 4)))
        }
    }
--- timeout: 15
--- response_body
tripped: true
--- error_log
guard tripped: rule set gray:rules rule "canary"



=== TEST 7: rules renamed past the registry's 2,047 series: the series no worker uses any more are given to new names, and a guard loaded after still trips
--- redis
SET canary_status 500
--- config
    location = /t {
        content_by_lua_block {
            local T, C = require "gray_test", require "canary"
            local gray = require "gray"
            -- Six generations of 400 renamed rules (this request's client the first's): 2,400
            -- names, each loaded before the next.
            local function rule_set(generation, extra)
                local rules = {}
                for i = 1, 400 do
                    rules[i] = '{"name": "g' .. generation .. '-r' .. i .. '", "ip": ["127.0.0.1"], "to": "@prod2-grey"}'
                end
                if extra then
                    rules[#rules + 1] = extra
                end
                return '{"format": 1, "rules": [' .. table.concat(rules, ", ") .. ']}'
            end
            local loaded = 0
            for generation = 1, 6 do
                T.redis("set", "gray:rules", rule_set(generation))
                if T.wait_for(function()
                    return gray.explain().rule == "g" .. generation .. "-r1"
                end, 5) then
                    loaded = loaded + 1
                end
            end
            ngx.say("generations loaded: ", loaded)
            T.redis("set", "gray:rules", rule_set(7, '{"name": "canary", "to": "@prod2-grey", "ip": ["127.0.0.2"], "guard": {"max_error_rate": 5, "min_requests": 20}}'))
            -- Every worker, so that all the requests below reach the canary; answering 200s until
            -- then, so that the guard does not trip while this waits.
            T.redis("set", "canary_status", 200)
            ngx.say("loaded by every worker: ", C.answered_by_every_worker($TEST_NGINX_EXTRA_PORT, "gray\n"))
            T.redis("set", "canary_status", 500)
            C.send($TEST_NGINX_EXTRA_PORT, 25)
            ngx.say("tripped: ", C.answered($TEST_NGINX_EXTRA_PORT, "prod\n"))
        }
    }
--- timeout: 60
--- response_body
generations loaded: 6
loaded by every worker: true
tripped: true
--- wait: 0.5
--- error_log
guard tripped: rule set gray:rules rule "canary"
