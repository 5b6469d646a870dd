# Several workers: each loads before it serves; reloads start fresh refreshers and leave no
# stray threads or processes.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';

workers(2);
master_on();
add_block_preprocessor(\&gray_block);
run_tests();

__DATA__

=== TEST 1: two workers are both right from their first request
--- redis
SET gray 127.0.0.1
--- http_config
    lua_shared_dict first_route 1m;
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
    }
    server {
        # reuseport: one socket per worker, so new connections spread over both workers.
        listen 127.0.0.1:$TEST_NGINX_EXTRA_PORT reuseport;
        location / { content_by_lua_block { require("gray").route() } }
        location @prod1 {
            content_by_lua_block { ngx.shared.first_route:add(ngx.worker.pid(), "prod") ngx.say("prod") }
        }
        location @prod2-grey {
            content_by_lua_block { ngx.shared.first_route:add(ngx.worker.pid(), "gray") ngx.say("gray") }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            local first = ngx.shared.first_route
            for _ = 1, 200 do
                T.http_get($TEST_NGINX_EXTRA_PORT, "/")
                if #first:get_keys() >= 2 then
                    break
                end
            end
            local outcomes = {}
            for _, pid in ipairs(first:get_keys()) do
                outcomes[#outcomes + 1] = first:get(pid)
            end
            ngx.say(#outcomes, " workers, first requests: ", table.concat(outcomes, " "))
        }
    }
--- response_body
2 workers, first requests: gray gray



=== TEST 2: nginx -s reload under requests: none fails, new workers route by the list from their first request, old ones leave no trace
--- redis
SET gray 127.0.0.1
--- http_config
    lua_shared_dict first_route 1m;
    init_by_lua_block {
        package.loaded.generation = tostring(ngx.now()) .. "-" .. tostring(math.random())
    }
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_EXTRA_PORT reuseport;
        location / { content_by_lua_block { require("gray").route() } }
        location @prod1 { content_by_lua_block { ngx.say("prod ", require "generation") } }
        location @prod2-grey { content_by_lua_block { ngx.say("gray ", require "generation") } }
    }
--- config
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            local mine = require "generation"
            local before = #T.workers()
            local sent, failed, done = 0, 0, false
            local load = ngx.thread.spawn(function()
                while not done do
                    local status = T.http_get($TEST_NGINX_SERVER_PORT, "/r")
                    sent = sent + 1
                    if status ~= 200 then
                        failed = failed + 1
                    end
                end
            end)
            ngx.sleep(0.2)
            T.reload()
            local seen
            local reloaded = T.wait_for(function()
                local status, body = T.http_get($TEST_NGINX_EXTRA_PORT, "/")
                local route, generation = (body or ""):match("^(%a+) (%S+)")
                if generation and generation ~= mine then
                    seen = route
                    return true
                end
            end, 5)
            ngx.sleep(0.5)
            done = true
            ngx.thread.wait(load)
            ngx.say("workers before: ", before, ", reloaded: ", reloaded,
                    ", first answer of a new worker: ", seen)
            ngx.say("requests across the reload: ", sent > 10, ", failed: ", failed)
        }
    }
    location = /r { content_by_lua_block { require("gray").route() } }
    location = /check {
        content_by_lua_block {
            local T = require "gray_test"
            -- The old workers finish their requests, then exit. This request itself may have
            -- been accepted by an old worker just before it began shutting down.
            local function others()
                local me = ngx.worker.exiting() and ngx.worker.pid()
                local list = {}
                for _, w in ipairs(T.workers()) do
                    if w.pid ~= me then
                        list[#list + 1] = w
                    end
                end
                return list
            end
            local settled = T.wait_for(function() return #others() == 2 end, 5)
            local threads = {}
            for _, w in ipairs(others()) do
                threads[#threads + 1] = w.threads
            end
            ngx.say("settled: ", settled, ", threads per worker: ", table.concat(threads, " "))
        }
    }
--- request eval
["GET /t", "GET /check"]
--- timeout: 10
--- response_body eval
["workers before: 2, reloaded: true, first answer of a new worker: gray\nrequests across the reload: true, failed: 0\n",
 "settled: true, threads per worker: 2 2\n"]



=== TEST 3: a reload nginx rejects leaves the running configuration's options in force, also in a worker the master respawns later
--- redis
SET gray 127.0.0.1
--- http_config
    init_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", key = "gray" }
    }
    init_worker_by_lua_block { require("gray").init_worker() }
    server {
        listen 127.0.0.1:$TEST_NGINX_EXTRA_PORT reuseport;
        location / {
            content_by_lua_block {
                local gray = require "gray"
                ngx.say(ngx.worker.pid(), " ", gray.status().key, " ", (gray.decide()))
            }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            local ffi = require "ffi"
            local path = ngx.config.prefix() .. "conf/nginx.conf"
            local conf = assert(io.open(path)):read("*a")
            -- init_by_lua of the new cycle runs (with another key) before nginx finds the
            -- unknown variable and rejects the whole configuration.
            conf = conf:gsub('key = "gray"', 'key = "rejected"', 1)
                       :gsub("http {", "http {\n    map $gray_no_such_variable $gray_unused { default 1; }", 1)
            local f = assert(io.open(path, "w"))
            f:write(conf)
            f:close()
            T.reload()
            local log = ngx.config.prefix() .. "logs/error.log"
            ngx.say("reload rejected: ", (T.wait_for(function()
                return assert(io.open(log)):read("*a"):find('unknown "gray_no_such_variable" variable', 1, true)
            end, 5)))
            local old = {}
            for _, w in ipairs(T.workers()) do
                old[w.pid] = true
            end
            -- A worker exits (as after a crash) and the master respawns it from its own cycle.
            for pid in pairs(old) do
                if pid ~= ngx.worker.pid() then
                    ffi.C.kill(pid, 15)
                end
            end
            local answer
            local respawned = T.wait_for(function()
                local _, body = T.http_get($TEST_NGINX_EXTRA_PORT, "/")
                local pid = tonumber((body or ""):match("^(%d+)"))
                if pid and not old[pid] then
                    answer = body:match("^%d+ (.*)\n$")
                    return true
                end
            end, 5)
            ngx.say("respawned: ", respawned, ", its key and decision: ", answer)
        }
    }
--- timeout: 10
--- response_body
reload rejected: true
respawned: true, its key and decision: gray @prod2-grey
--- expected_emerg
unknown "gray_no_such_variable" variable
--- allowed_errors
recv() failed (104: Connection reset by peer)
