# Routing: the drop-in shape, both routes, exact matching, CIDR, IPv6, SET keys, missing keys.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';

add_block_preprocessor(\&gray_block);
run_tests();

__DATA__

=== TEST 1: the version is reported
--- config
    location = /t {
        content_by_lua_block { ngx.say(require("gray")._VERSION) }
    }
--- response_body_like chomp
^\d+\.\d+\.\d+$



=== TEST 2: drop-in: classic nginx.conf shape, route.lua, upstreams; a whitelisted client goes to prod2-grey with its URI and args
--- redis
SET gray 192.168.2.165
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
    }
    upstream prod1 { server 127.0.0.1:$TEST_NGINX_SERVER_PORT; }
    upstream prod2-grey { server 127.0.0.1:$TEST_NGINX_SERVER_PORT; }
--- config
    location /app/ { content_by_lua_file $TEST_NGINX_GRAY_ROOT/lua/route.lua; }
    location @prod1 { proxy_pass http://prod1/backend/prod$request_uri; }
    location @prod2-grey { proxy_pass http://prod2-grey/backend/gray$request_uri; }
    location /backend/ { return 200 "$uri?$args\n"; }
--- request eval
["GET /app/page?x=1", "GET /app/page?x=2"]
--- more_headers eval
["X-Client: 192.168.2.165", "X-Client: 192.168.2.166"]
--- response_body eval
["/backend/gray/app/page?x=1\n", "/backend/prod/app/page?x=2\n"]



=== TEST 3: a client not in the list goes to production
--- redis
SET gray 127.0.0.2
--- config
    location = /t { content_by_lua_block { require("gray").route() } }
--- response_body
prod



=== TEST 4: exact membership: no substring or Lua-pattern matches
--- redis
SET gray "127.0.0.10 10.141.1.1 1.2.3.4"
--- config
    location = /t { content_by_lua_block { require("gray").route() } }
--- request eval
["GET /t", "GET /t", "GET /t", "GET /t", "GET /t", "GET /t"]
--- more_headers eval
["X-Client: 127.0.0.1", "X-Client: 10.1.1.1", "X-Client: 1.2.3.40", "X-Client: 127.0.0.10", "X-Client: 10.141.1.1", "X-Client: 1.2.3.4"]
--- response_body eval
["prod\n", "prod\n", "prod\n", "gray\n", "gray\n", "gray\n"]



=== TEST 5: IPv4 CIDR, IPv6 host and CIDR, IPv4-mapped IPv6 client, all separators
--- redis
SET gray "10.0.0.0/8;2001:db8::/32,\n::1\t192.168.2.165"
--- config
    location = /t { content_by_lua_block { require("gray").route() } }
--- request eval
["GET /t", "GET /t", "GET /t", "GET /t", "GET /t", "GET /t", "GET /t", "GET /t"]
--- more_headers eval
["X-Client: 10.200.3.4", "X-Client: 11.0.0.1", "X-Client: 2001:db8:1::5", "X-Client: 2001:db9::1", "X-Client: ::1", "X-Client: ::2", "X-Client: ::ffff:192.168.2.165", "X-Client: ::ffff:10.1.1.1"]
--- response_body eval
["gray\n", "prod\n", "gray\n", "prod\n", "gray\n", "prod\n", "gray\n", "gray\n"]



=== TEST 6: a Redis SET of entries is a list too
--- redis
SADD gray 127.0.0.5 10.0.0.0/8 2001:db8::1
--- config
    location = /t {
        content_by_lua_block {
            local gray = require "gray"
            local s = gray.status()
            ngx.say(s.key_type, " ", s.entries, " v4=", s.entries_v4, " v6=", s.entries_v6)
            ngx.say(gray.decide())
        }
    }
--- more_headers
X-Client: 10.9.9.9
--- response_body
set 3 v4=2 v6=1
@prod2-greyclient 10.9.9.9 matched whitelist entry 10.0.0.0/8



=== TEST 7: key missing: everyone to production (the operator rolled back), no error
--- config
    location = /t {
        content_by_lua_block {
            local gray = require "gray"
            ngx.say(gray.decide())
            ngx.say(gray.status().key_type)
        }
    }
--- response_body
@prod1client 127.0.0.1 is not in the whitelist (the key is missing: empty list)
missing



=== TEST 8: zero configuration: route works without init_worker too (the first route() starts the refresher)
--- http_config
    # No init_worker_by_lua: the first route() starts the refresher. It reads the default Redis
    # (127.0.0.1:6379), which may not run here: the request goes to production either way.
--- config
    location = /t { content_by_lua_block { require("gray").route() } }
--- response_body
prod
--- error_log
refresher started by a request
--- allowed_errors
failed to connect to redis



=== TEST 9: zero configuration: the default Redis URL and key
--- http_config
    # No configure call at all.
--- config
    location = /t {
        content_by_lua_block {
            local s = require("gray").status()
            ngx.say(s.redis, " ", s.key)
        }
    }
--- response_body
redis://127.0.0.1:6379/0 gray



=== TEST 10: custom key and location names
--- redis
SET canary 127.0.0.1
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0",
            key = "canary", prod = "@stable", gray = "@next",
        }
    }
--- config
    location = /t { content_by_lua_block { require("gray").route() } }
    location @stable { return 200 "stable\n"; }
    location @next { return 200 "next\n"; }
--- response_body
next



=== TEST 11: configure in init_by_lua, start in init_worker_by_lua
--- redis
SET gray 127.0.0.1
--- http_config
    init_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
    }
    init_worker_by_lua_block { require("gray").init_worker() }
--- config
    location = /t { content_by_lua_block { require("gray").route() } }
--- response_body
gray



=== TEST 12: route() from the access phase
--- redis
SET gray 127.0.0.1
--- config
    location = /t {
        access_by_lua_block { require("gray").route() }
        content_by_lua_block { ngx.say("not routed") }
    }
--- response_body
gray



=== TEST 13: the client address is read from the request itself once the first request proved nginx's layout; decisions are the same either way
--- redis
SET gray "127.0.0.10 2001:db8::/32"
--- config
    location = /t { content_by_lua_block { require("gray").route() } }
    location = /read { content_by_lua_block { ngx.say(require("gray").status().address_read) } }
--- request eval
["GET /read", "GET /t", "GET /read", "GET /t", "GET /t", "GET /t", "GET /t", "GET /t"]
--- more_headers eval
["X-Client: 127.0.0.10", "X-Client: 127.0.0.10", "X-Client: 127.0.0.10", "X-Client: 127.0.0.10", "X-Client: 127.0.0.1", "X-Client: 2001:db8::5", "X-Client: 2001:db9::5", "X-Client: ::ffff:127.0.0.10"]
--- response_body eval
["unchecked\n", "gray\n", "connection\n", "gray\n", "prod\n", "gray\n", "prod\n", "gray\n"]



=== TEST 14: lua_code_cache off: one refresher and one log timer per worker, however many request VMs; custom targets still apply
--- redis
SET canary 127.0.0.1
--- http_config
    lua_code_cache off;
    # Few timers, so a timer per request VM would run out within the block.
    lua_max_pending_timers 16;
    lua_max_running_timers 16;
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", key = "canary", gray = "@next",
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            local answers = {}
            for _ = 1, 100 do
                local status, body = T.http_get($TEST_NGINX_SERVER_PORT, "/route")
                answers[status .. " " .. (body or "")] = (answers[status .. " " .. (body or "")] or 0) + 1
            end
            for answer, n in pairs(answers) do
                ngx.print(n, " x ", answer)
            end
            -- nginx's own thread and one refresher.
            local status = assert(io.open("/proc/self/status")):read("*a")
            ngx.say("threads: ", status:match("Threads:%s+(%d+)"))
        }
    }
    location = /route { content_by_lua_block { require("gray").route() } }
    location @next { return 200 "next\n"; }
--- response_body
100 x 200 next
threads: 2
--- no_error_log
failed to create the log timer
refresher started by a request
--- expected_alert
lua_code_cache is off
