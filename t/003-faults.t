# Redis failures never reach clients: no 5xx, the last good list stays, errors go to the log
# (rate-limited), and the list comes back when Redis does.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';

add_block_preprocessor(\&gray_block);
run_tests();

__DATA__

=== TEST 1: Redis down at start: everyone to production, then the list loads once Redis is back
--- redis
SET gray 127.0.0.1
--- redis_down
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.3,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local res = ngx.location.capture("/route")
            ngx.print(res.status, " ", res.body)
            ngx.say(gray.decide())
            T.redis_up()
            ngx.say("loaded after redis came back: ", (T.wait_for(function()
                return gray.decide() == "@prod2-grey"
            end, 1.5)))
            res = ngx.location.capture("/route")
            ngx.print(res.status, " ", res.body)
        }
    }
    location = /route { content_by_lua_block { require("gray").route() } }
--- response_body
200 prod
@prod1no whitelist loaded yet
loaded after redis came back: true
200 gray
--- error_log
failed to connect to redis: Connection refused
no list loaded yet, routing everyone to production
--- allowed_errors
failed to connect to redis: Connection refused



=== TEST 2: Redis down after a load: the last good list stays, errors are rate-limited, recovery is logged
--- redis
SET gray 127.0.0.1
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.1,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            T.redis_down()
            ngx.sleep(1.5)
            local s = gray.status()
            ngx.say((gray.decide()), " connected=", s.redis_connected)
            T.redis("set", "gray", "127.0.0.2")
            T.redis_up()
            ngx.say("new list after recovery: ", (T.wait_for(function()
                return gray.decide() == "@prod1"
            end, 1)))
            ngx.sleep(0.3)
            local log = assert(io.open(ngx.config.prefix() .. "logs/error.log")):read("*a")
            local _, connect_errors = log:gsub("failed to connect to redis", "")
            ngx.say("connect errors logged once: ", connect_errors == 1)
        }
    }
--- response_body
@prod2-grey connected=false
new list after recovery: true
connect errors logged once: true
--- error_log
keeping the last good list
redis is back after
--- allowed_errors
lost the subscription: unexpected end of file
Connection refused
Connection reset by peer
unexpected end of file



=== TEST 3: Redis hung (SIGSTOP) after a load: requests are not slowed, the list stays, recovery follows
--- redis
SET gray 127.0.0.1
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.2, timeout = 0.3,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            T.redis_hang()
            ngx.sleep(1)
            local location = gray.decide()
            ngx.say(location, " ", gray.status().last_error)
            T.redis_resume()
            T.redis("set", "gray", "127.0.0.2")
            ngx.say("recovered: ", (T.wait_for(function()
                return gray.decide() == "@prod1"
            end, 2)))
            ngx.print(ngx.location.capture("/route").body)
        }
    }
    location = /route { content_by_lua_block { require("gray").route() } }
--- timeout: 6
--- response_body_like chomp
^@prod2-grey failed to (connect to redis|track gray's keys|subscribe to gray:changed, __redis__:invalidate|read key gray): timed out after 0.3s.*
recovered: true
prod
$
--- error_log
keeping the last good list
--- allowed_errors
timed out after 0.3s



=== TEST 4: Redis hung at start: the worker starts after the bounded first load, routes to production, then loads
--- redis
SET gray 127.0.0.1
--- redis_hung
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.2, timeout = 0.3,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            ngx.say(gray.decide())
            T.redis_resume()
            ngx.say("loaded: ", (T.wait_for(function()
                return gray.decide() == "@prod2-grey"
            end, 2)))
        }
    }
--- timeout: 6
--- response_body
@prod1no whitelist loaded yet
loaded: true
--- error_log eval
[qr/failed to (connect to redis|track gray's keys|subscribe to gray:changed, __redis__:invalidate|read key gray): timed out after 0\.3s/,
 "no list loaded yet, routing everyone to production"]
--- allowed_errors
timed out after 0.3s



=== TEST 5: a Redis that is not there at all (wrong port): production, never a 5xx
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_DEAD_PORT/0" }
    }
--- config
    location = /t {
        content_by_lua_block {
            for _ = 1, 3 do
                local res = ngx.location.capture("/route")
                ngx.print(res.status, " ", res.body)
            end
        }
    }
    location = /route { content_by_lua_block { require("gray").route() } }
--- response_body
200 prod
200 prod
200 prod
--- error_log
failed to connect to redis
--- allowed_errors
failed to connect to redis: Connection refused



=== TEST 6: a panic in the refresher is caught, logged and the refresher restarted; status tells
--- redis
SET gray 127.0.0.1
--- main_config
env GRAY_FAULT=refresher-panic;
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local loaded = T.wait_for(function() return gray.decide() == "@prod2-grey" end, 2)
            local s = gray.status()
            ngx.say("loaded after the restart: ", loaded, ", running: ", s.running, ", restarts: ", s.restarts)
        }
    }
--- response_body
loaded after the restart: true, running: true, restarts: 1
--- error_log
the refresher panicked (fault injected by GRAY_FAULT=refresher-panic); restarting it in 0.1s, keeping the last good list
--- allowed_errors
the refresher panicked (fault injected by GRAY_FAULT=refresher-panic)
