# configure() rejects bad options with an error naming the option, and is only for init phases.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';

add_block_preprocessor(\&gray_block);
run_tests();

__DATA__

=== TEST 1: bad options raise errors that name the option
--- http_config
    init_by_lua_block {
        local gray = require "gray"
        local errors = {}
        local cases = {
            { refresh = 0 },
            { refresh = "1" },
            { timeout = -1 },
            { refrsh = 1 },
            { redis = "http://127.0.0.1" },
            { key = "" },
            { prod = 1 },
            { channel = true },
            { trusted_proxies = { "10.0.0.0/8", "nope" } },
            { trusted_proxies = 5 },
            { trusted_proxies = { proxy = "10.0.0.1" } },
            { max_bytes = 100 },
            { max_bytes = "32m" },
            { redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0?protocol=resp3" },
            "redis://127.0.0.1",
        }
        for _, opts in ipairs(cases) do
            local ok, err = pcall(gray.configure, opts)
            errors[#errors + 1] = ok and "accepted" or err
        end
        package.loaded.configure_errors = errors
    }
--- config
    location = /t {
        content_by_lua_block {
            for _, err in ipairs(require "configure_errors") do
                ngx.say(err)
            end
        }
    }
--- response_body
opts.refresh must be a positive number of seconds (at most 86400)
opts.refresh must be a positive number of seconds (at most 86400)
opts.timeout must be a positive number of seconds (at most 86400)
unknown option opts.refrsh (known: redis, key, prod, gray, refresh, channel, trusted_proxies, timeout, max_bytes, rules_key, rule_sets, targets, report, count_responses, rollouts, tracking, resync, sentinels, sentinel_master, read_from, sentinel_username, sentinel_password, tls_ca, tls_cert, tls_key, real_ip_header)
opts.redis is not a valid Redis URL: Redis URL did not parse - InvalidClientConfig
opts.key must be a non-empty string, got string
opts.prod must be a non-empty string, got number
opts.channel must be a non-empty string or false
opts.trusted_proxies[2] is not an IP address or CIDR: "nope" (not an IPv4/IPv6 address or CIDR)
opts.trusted_proxies must be a list of IP addresses or CIDRs, got number
opts.trusted_proxies must be a list of IP addresses or CIDRs, got table with non-list keys
opts.max_bytes must be a whole number of bytes from 1024 to 4294967296
opts.max_bytes must be a whole number of bytes from 1024 to 4294967296
opts.redis asks for protocol=resp3, which gray does not speak; remove it (RESP2 works with every Redis)
bad argument #1 to 'configure' (table expected, got string)



=== TEST 2: a rejected configure leaves the earlier good one in force
--- redis
SET gray 127.0.0.1
--- http_config
    init_by_lua_block {
        local gray = require "gray"
        gray.configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
        pcall(gray.configure, { refresh = -5 })
    }
    init_worker_by_lua_block { require("gray").init_worker() }
--- config
    location = /t { content_by_lua_block { require("gray").route() } }
--- response_body
gray



=== TEST 3: configure outside the init phases is a programmer error
--- config
    location = /t {
        content_by_lua_block {
            local gray = require "gray"
            ngx.say(select(2, pcall(gray.configure, {})))
            ngx.say(select(2, pcall(gray.init_worker)))
        }
    }
--- response_body
gray.configure must be called in init_by_lua* or init_worker_by_lua*, not in content
gray.init_worker must be called in init_worker_by_lua*



=== TEST 4: configure after this worker's refresher started is refused
--- http_config
    init_worker_by_lua_block {
        local gray = require "gray"
        gray.configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
        local ok, err = pcall(gray.configure, { key = "other" })
        package.loaded.second_configure = err
    }
--- config
    location = /t {
        content_by_lua_block {
            ngx.say(require "second_configure")
            ngx.say(require("gray").status().key)
        }
    }
--- response_body
gray.configure called after the refresher started in this worker
gray
