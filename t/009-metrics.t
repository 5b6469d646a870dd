# Metrics: requests and responses counted per rule set, rule and target across all workers of
# one nginx (a region the master maps in init_by_lua), through reloads; the exposition as
# Prometheus text a real parser reads, and as JSON.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';

workers(2);
master_on();
add_block_preprocessor(\&gray_block);
run_tests();

__DATA__

=== TEST 1: requests and responses add up per rule and target over both workers; the text parses
--- redis
SET gray:rules '{"format": 1, "rules": [{"name": "office", "to": "@prod2-grey", "ip": ["127.0.0.2"]}]}'
--- http_config
    init_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", count_responses = true }
    }
    init_worker_by_lua_block { require("gray").init_worker() }
    server {
        listen 127.0.0.1:$TEST_NGINX_EXTRA_PORT reuseport;
        location / { content_by_lua_block { require("gray").route() } }
        location @prod1 { content_by_lua_block { ngx.say(ngx.worker.id()) } }
        location @prod2-grey { content_by_lua_block { ngx.status = 503 ngx.say(ngx.worker.id()) } }
        location = /gray/metrics {
            allow 127.0.0.1;
            deny all;
            content_by_lua_block { require("gray").metrics(ngx.var.arg_format) }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            local workers, sent = {}, { [200] = 0, [503] = 0 }
            for i = 1, 80 do
                local status, body = T.http_get($TEST_NGINX_EXTRA_PORT, "/",
                                                { ["X-Client"] = i % 4 == 0 and "127.0.0.2" or "127.0.0.3" })
                sent[status] = (sent[status] or 0) + 1
                workers[body] = true
            end
            local n = 0
            for _ in pairs(workers) do n = n + 1 end
            ngx.say("sent: ", sent[200], " to prod, ", sent[503], " to gray, served by ", n, " workers")
            local _, text, head = T.http_get($TEST_NGINX_EXTRA_PORT, "/gray/metrics")
            ngx.say(head:match("[Cc]ontent%-[Tt]ype: ([^\r]+)"))
            local rule = 'rule_set="gray:rules",outcome="rule",rule="office",target="@prod2-grey"'
            local default = 'rule_set="gray:rules",outcome="default",rule="",target="@prod1"'
            ngx.say("requests: ", T.sample(text, "gray_requests_total", rule), " by office, ",
                    T.sample(text, "gray_requests_total", default), " by default, ",
                    T.sum(text, "gray_requests_total"), " in all")
            ngx.say("5xx: ", T.sample(text, "gray_responses_total", rule .. ',class="5xx"'),
                    " by office, ", T.sample(text, "gray_responses_total", default .. ',class="5xx"'),
                    " by default; 2xx by default: ",
                    T.sample(text, "gray_responses_total", default .. ',class="2xx"'))
            ngx.say("timed: ", T.sample(text, "gray_response_seconds_count", default),
                    ", within 5s: ", T.sample(text, "gray_response_seconds_bucket", default .. ',le="5"'),
                    ", +Inf: ", T.sample(text, "gray_response_seconds_bucket", default .. ',le="+Inf"'))
            ngx.say("shared: ", T.sample(text, "gray_metrics_shared"),
                    ", started: ", T.sample(text, "gray_start_time_seconds") <= ngx.now())
            ngx.say("workers reporting: ", T.sum(text, "gray_redis_connected"))
            ngx.say("parsed: ", T.parse_prometheus(text))
        }
    }
--- response_body
sent: 60 to prod, 20 to gray, served by 2 workers
text/plain; version=0.0.4
requests: 20 by office, 60 by default, 80 in all
5xx: 20 by office, 0 by default; 2xx by default: 60
timed: 60, within 5s: 60, +Inf: 60
shared: 1, started: true
workers reporting: 2
parsed: ok 13



=== TEST 2: nginx -s reload five times under requests: the counters neither reset nor double
--- redis
SET gray 127.0.0.2
--- http_config
    init_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", count_responses = true }
        package.loaded.generation = tostring(ngx.now()) .. "-" .. tostring(math.random())
    }
    init_worker_by_lua_block { require("gray").init_worker() }
    server {
        listen 127.0.0.1:$TEST_NGINX_EXTRA_PORT reuseport;
        location / { content_by_lua_block { require("gray").route() } }
        location @prod1 { content_by_lua_block { ngx.say(require "generation") } }
        location @prod2-grey { content_by_lua_block { ngx.say(require "generation") } }
        location = /gray/metrics { content_by_lua_block { require("gray").metrics() } }
    }
--- config
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            local sent, failed, done = 0, 0, false
            local generations = {}
            local function load(client)
                return function()
                    while not done do
                        local status, body = T.http_get($TEST_NGINX_EXTRA_PORT, "/", { ["X-Client"] = client })
                        if status == 200 then
                            sent = sent + 1
                            generations[body] = true
                        else
                            failed = failed + 1
                        end
                    end
                end
            end
            local threads = { ngx.thread.spawn(load("127.0.0.2")), ngx.thread.spawn(load("127.0.0.3")) }
            for _ = 1, 5 do
                ngx.sleep(0.3)
                T.reload()
            end
            ngx.sleep(0.5)
            done = true
            for _, t in ipairs(threads) do ngx.thread.wait(t) end
            local n = 0
            for _ in pairs(generations) do n = n + 1 end
            local text
            -- The last responses are counted as nginx frees their requests, after the client has them.
            local settled = T.wait_for(function()
                _, text = T.http_get($TEST_NGINX_EXTRA_PORT, "/gray/metrics")
                return T.sum(text or "", "gray_requests_total") == sent
                       and T.sum(text, "gray_response_seconds_count") == sent
            end, 3)
            ngx.say("generations seen: ", n >= 3, ", failed: ", failed)
            ngx.say("counted every request once: ", settled,
                    sent ~= T.sum(text, "gray_requests_total") and (" (sent " .. sent .. ", counted "
                        .. T.sum(text, "gray_requests_total") .. ")") or "")
            local listed = T.sample(text, "gray_requests_total",
                                    'rule_set="gray",outcome="listed",rule="",target="@prod2-grey"')
            local unlisted = T.sample(text, "gray_requests_total",
                                      'rule_set="gray",outcome="unlisted",rule="",target="@prod1"')
            ngx.say("both ways counted: ", listed > 0 and unlisted > 0)
        }
    }
--- timeout: 15
--- response_body
generations seen: true, failed: 0
counted every request once: true
both ways counted: true



=== TEST 3: a worker killed with SIGKILL: its replacement counts on from the same totals
--- redis
SET gray 127.0.0.2
--- http_config
    init_by_lua_block { require "gray" }
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_EXTRA_PORT reuseport;
        location / { content_by_lua_block { require("gray").route() } }
        location @prod1 { content_by_lua_block { ngx.say(ngx.worker.pid()) } }
        location @prod2-grey { content_by_lua_block { ngx.say(ngx.worker.pid()) } }
        location = /gray/metrics { content_by_lua_block { require("gray").metrics() } }
    }
--- config
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            local ffi = require "ffi"
            local pids = {}
            for _ = 1, 40 do
                local _, body = T.http_get($TEST_NGINX_EXTRA_PORT, "/")
                pids[tonumber(body)] = true
            end
            local victim
            for pid in pairs(pids) do
                if pid ~= ngx.worker.pid() then victim = pid end
            end
            if not victim then
                ngx.say("only this worker answered")
                return
            end
            ffi.C.kill(victim, 9)
            local respawned = T.wait_for(function()
                local workers = T.workers()
                return #workers == 2 and workers[1].pid ~= victim and workers[2].pid ~= victim
            end, 5)
            for _ = 1, 40 do
                T.http_get($TEST_NGINX_EXTRA_PORT, "/")
            end
            local _, text = T.http_get($TEST_NGINX_EXTRA_PORT, "/gray/metrics")
            ngx.say("respawned: ", respawned, ", counted: ", T.sum(text, "gray_requests_total"))
        }
    }
--- response_body
respawned: true, counted: 80
--- expected_alert
exited on signal 9



=== TEST 4: required first in init_worker, nothing is counted, and status and the log say why
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
    }
--- config
    location = /r { content_by_lua_block { require("gray").route() } }
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            T.http_get($TEST_NGINX_SERVER_PORT, "/r")
            local _, text = T.http_get($TEST_NGINX_SERVER_PORT, "/gray/metrics")
            ngx.say("status: ", require("gray").status().metrics)
            ngx.say("shared: ", T.sample(text, "gray_metrics_shared"),
                    ", requests: ", T.sample(text, "gray_requests_total") or "none",
                    ", this worker's state: ", T.sum(text, "gray_redis_connected"))
        }
    }
    location = /gray/metrics { content_by_lua_block { require("gray").metrics() } }
--- response_body
status: off
shared: 0, requests: none, this worker's state: 1
--- error_log
metrics are off: require("gray") in init_by_lua*



=== TEST 5: metrics("json") has the same counts; a format it does not know raises
--- redis
SET gray 127.0.0.1
--- http_config
    init_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
    }
    init_worker_by_lua_block { require("gray").init_worker() }
--- config
    location = /r { content_by_lua_block { require("gray").route() } }
    location = /json { content_by_lua_block { require("gray").metrics("json") } }
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            for _ = 1, 3 do T.http_get($TEST_NGINX_SERVER_PORT, "/r") end
            local _, body, head = T.http_get($TEST_NGINX_SERVER_PORT, "/json")
            ngx.say(head:match("[Cc]ontent%-[Tt]ype: ([^\r]+)"))
            ngx.say(body:match('{"rule_set":"gray","outcome":"listed","rule":"","target":"@prod2%-grey","requests":%d+'))
            local _, workers = body:gsub('"pid":', "")
            local key = body:match('"key":"gray","kind":"whitelist","version":"%x+","entries":%d+') or ""
            ngx.say("workers: ", workers, ", ", (key:gsub('"version":"%x+"', '"version":"V"')))
            ngx.say(select(2, pcall(require("gray").metrics, "xml")))
        }
    }
--- response_body
application/json
{"rule_set":"gray","outcome":"listed","rule":"","target":"@prod2-grey","requests":3
workers: 2, "key":"gray","kind":"whitelist","version":"V","entries":1
bad argument #1 to 'metrics' ("prometheus" or "json" expected, got "xml")



=== TEST 6: log() in log_by_lua, as older configurations have it, turns counting on; a request whose log phase runs a location's own handler instead is still counted, and no later request at its address inherits its series
--- redis
SET gray 127.0.0.2
--- http_config
    init_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
    }
    init_worker_by_lua_block { require("gray").init_worker() }
    log_by_lua_block { require("gray").log() }
    server {
        listen 127.0.0.1:$TEST_NGINX_EXTRA_PORT;
        location / { content_by_lua_block { require("gray").route() } }
        location @prod1 { content_by_lua_block { ngx.say("prod") } }
        location @prod2-grey {
            log_by_lua_block { }
            content_by_lua_block { ngx.status = 503 ngx.say("gray") }
        }
        location = /plain { content_by_lua_block { ngx.say("not routed") } }
        location = /gray/metrics { content_by_lua_block { require("gray").metrics() } }
    }
--- config
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            local port = $TEST_NGINX_EXTRA_PORT
            -- The first log phase turns counting on for the requests routed after it.
            T.http_get(port, "/plain")
            local failed = 0
            for _ = 1, 5 do
                if T.http_get(port, "/", { ["X-Client"] = "127.0.0.2" }) == 503 then
                    failed = failed + 1
                end
                -- Not routed, and given the memory the request before it was freed from.
                T.http_get(port, "/plain")
            end
            local listed = 'rule_set="gray",outcome="listed",rule="",target="@prod2-grey"'
            local text
            T.wait_for(function()
                text = select(2, T.http_get(port, "/gray/metrics"))
                return (T.sample(text, "gray_response_seconds_count", listed) or 0) >= failed
            end, 2)
            ngx.say("sent to gray: ", failed, ", counted: ",
                    T.sample(text, "gray_responses_total", listed .. ',class="5xx"') or 0, " 5xx, ",
                    T.sample(text, "gray_responses_total", listed .. ',class="2xx"') or 0, " 2xx")
        }
    }
--- response_body
sent to gray: 5, counted: 5 5xx, 0 2xx
