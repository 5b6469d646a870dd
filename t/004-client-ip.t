# Which address is decided: the peer by default; forwarding headers only from trusted proxies.
# (The test client's peer address is set with X-Client through nginx's realip module.)
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';

add_block_preprocessor(\&gray_block);
run_tests();

__DATA__

=== TEST 1: without trusted proxies, X-Forwarded-For and X-Real-IP are ignored
--- redis
SET gray 2.2.2.2
--- config
    location = /t { content_by_lua_block { require("gray").route() } }
--- request eval
["GET /t", "GET /t", "GET /t"]
--- more_headers eval
["X-Client: 10.0.0.1\nX-Forwarded-For: 2.2.2.2", "X-Client: 10.0.0.1\nX-Real-IP: 2.2.2.2", "X-Client: 2.2.2.2"]
--- response_body eval
["prod\n", "prod\n", "gray\n"]



=== TEST 2: trusted and untrusted peers
--- redis
SET gray "2.2.2.2 2001:db8::7"
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0",
            trusted_proxies = { "10.0.0.0/8", "fd00::/8" },
        }
    }
--- config
    location = /t { content_by_lua_block { require("gray").route() } }
--- request eval
["GET /t", "GET /t", "GET /t", "GET /t", "GET /t", "GET /t", "GET /t", "GET /t", "GET /t", "GET /t"]
--- more_headers eval
[
"X-Client: 10.0.0.1\nX-Forwarded-For: 2.2.2.2",
"X-Client: 1.1.1.1\nX-Forwarded-For: 2.2.2.2",
"X-Client: 10.0.0.1\nX-Forwarded-For: 6.6.6.6, 2.2.2.2, 10.0.0.9",
"X-Client: 10.0.0.1\nX-Forwarded-For: 2.2.2.2, 6.6.6.6",
"X-Client: 10.0.0.1\nX-Real-IP: 2.2.2.2",
"X-Client: 1.1.1.1\nX-Real-IP: 2.2.2.2",
"X-Client: fd00::1\nX-Forwarded-For: [2001:db8::7]:443",
"X-Client: 10.0.0.1\nX-Forwarded-For: 2.2.2.2, junk",
"X-Client: 10.0.0.1\nX-Forwarded-For: 2.2.2.2\nX-Forwarded-For: 10.0.0.3",
"X-Client: 10.0.0.1",
]
--- response_body eval
["gray\n", "prod\n", "gray\n", "prod\n", "gray\n", "prod\n", "gray\n", "prod\n", "gray\n", "prod\n"]



=== TEST 3: decide() says which header the address came from
--- redis
SET gray 2.2.2.2
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0",
            trusted_proxies = "10.0.0.0/8",
        }
    }
--- config
    location = /t { content_by_lua_block { ngx.say(require("gray").decide()) } }
--- request eval
["GET /t", "GET /t"]
--- more_headers eval
["X-Client: 10.0.0.1\nX-Forwarded-For: 2.2.2.2", "X-Client: 10.0.0.1\nX-Forwarded-For: nonsense"]
--- response_body eval
["\@prod2-greyclient 2.2.2.2 (from X-Forwarded-For) matched whitelist entry 2.2.2.2\n",
 "\@prod1client 10.0.0.1 (forwarding header unusable, peer address used) is not in the whitelist (1 entries)\n"]



=== TEST 4: a long many-hop header from a trusted proxy is handled
--- redis
SET gray 2.2.2.2
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0",
            trusted_proxies = { "10.0.0.0/8" },
        }
    }
--- config
    location = /t { content_by_lua_block { require("gray").route() } }
--- more_headers eval
"X-Client: 10.0.0.1\nX-Forwarded-For: 2.2.2.2, " . CORE::join(", ", ("10.0.0.5") x 500)
--- response_body
gray



=== TEST 5: the PROXY protocol: with `listen ... proxy_protocol` alone the client is the load balancer; realip's `real_ip_header proxy_protocol` makes it the PROXY header's client
--- redis
SET gray 127.0.0.77
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_EXTRA_PORT proxy_protocol;
        location / { content_by_lua_block { require("gray").route() } }
        location /realip/ {
            real_ip_header proxy_protocol;
            content_by_lua_block { require("gray").route() }
        }
        location @prod1 { return 200 "prod\n"; }
        location @prod2-grey { return 200 "gray\n"; }
    }
--- config
    location = /t {
        content_by_lua_block {
            for _, path in ipairs({ "/", "/realip/" }) do
                local sock = ngx.socket.tcp()
                assert(sock:connect("127.0.0.1", $TEST_NGINX_EXTRA_PORT))
                sock:send("PROXY TCP4 127.0.0.77 127.0.0.1 40000 80\r\nGET " .. path
                          .. " HTTP/1.0\r\nHost: localhost\r\n\r\n")
                local response = sock:receive("*a")
                sock:close()
                ngx.print(path, " ", response:match("\r\n\r\n(.*)$"))
            end
        }
    }
--- response_body
/ prod
/realip/ gray



=== TEST 6: real_ip_header = "X-Real-IP": behind a proxy that sets X-Real-IP and passes X-Forwarded-For through, a client's own X-Forwarded-For chooses nothing
--- redis
SET gray 2.2.2.2
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0",
            trusted_proxies = "10.0.0.0/8", real_ip_header = "X-Real-IP",
        }
    }
--- config
    location = /t { content_by_lua_block { require("gray").route() } }
--- request eval
["GET /t", "GET /t", "GET /t"]
--- more_headers eval
[
"X-Client: 10.0.0.1\nX-Forwarded-For: 2.2.2.2\nX-Real-IP: 6.6.6.6",
"X-Client: 10.0.0.1\nX-Forwarded-For: 6.6.6.6\nX-Real-IP: 2.2.2.2",
"X-Client: 10.0.0.1\nX-Forwarded-For: 2.2.2.2",
]
--- response_body eval
["prod\n", "gray\n", "prod\n"]



=== TEST 7: real_ip_header = "X-Forwarded-For": X-Real-IP is never read
--- redis
SET gray 2.2.2.2
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0",
            trusted_proxies = "10.0.0.0/8", real_ip_header = "X-Forwarded-For",
        }
    }
--- config
    location = /t { content_by_lua_block { require("gray").route() } }
--- request eval
["GET /t", "GET /t"]
--- more_headers eval
["X-Client: 10.0.0.1\nX-Real-IP: 2.2.2.2", "X-Client: 10.0.0.1\nX-Forwarded-For: 2.2.2.2"]
--- response_body eval
["prod\n", "gray\n"]
