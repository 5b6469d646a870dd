# gray.dashboard(): the page (self-contained, under a content security policy that lets nothing
# else in) and the JSON it polls: the rule sets this worker routes by, each rule with where it
# sends and its percentage, the scrape of every worker, the plan with its steps. The page's
# drawing is checked in a real browser by make check-dashboard.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';

workers(2);
master_on();
add_block_preprocessor(\&gray_block);
run_tests();

__DATA__

=== TEST 1: the page, the JSON with the rule sets and every worker, a bad format refused
--- redis
SET gray:rules '{"format": 1, "rules": [{"name": "<b>ramp</b>", "percent": 25, "by": ["header:X-User"], "to": "@prod2-grey", "guard": {"max_error_rate": 5}}]}'
--- http_config
    init_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", count_responses = true }
    }
    init_worker_by_lua_block { require("gray").init_worker() }
    server {
        listen 127.0.0.1:$TEST_NGINX_EXTRA_PORT reuseport;
        location / { content_by_lua_block { require("gray").route() } }
        location @prod1 { return 200 "prod\n"; }
        location @prod2-grey { return 200 "gray\n"; }
        location = /gray/dashboard { content_by_lua_block { require("gray").dashboard() } }
    }
--- config
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            for i = 1, 40 do T.http_get($TEST_NGINX_EXTRA_PORT, "/", { ["X-User"] = "u" .. i }) end
            local status, page, head = T.http_get($TEST_NGINX_EXTRA_PORT, "/gray/dashboard")
            ngx.say("page: ", status, " ", head:match("[Cc]ontent%-[Tt]ype: ([^\r]+)"), ", ",
                    #page < 64 * 1024 and "under 64 KiB" or #page .. " bytes", ", ",
                    page:find("<title>gray</title>", 1, true) and "titled" or "untitled", ", ",
                    (page:find('src="http', 1, true) or page:find('href="http', 1, true)
                     or page:find("url(http", 1, true) or page:find("@import", 1, true))
                    and "links out" or "nothing from elsewhere")
            ngx.say("policy: ", head:match("[Cc]ontent%-[Ss]ecurity%-[Pp]olicy: (default%-src 'none'[^;]*)"))
            local body
            T.wait_for(function()
                _, body = T.http_get($TEST_NGINX_EXTRA_PORT, "/gray/dashboard?format=json")
                return body:find('"rule_sets":[{', 1, true) and select(2, body:gsub('"pid":', "")) == 2
            end, 5)
            ngx.say(body:match('"rule_sets":(.-),"scrape":'))
            local requests = 0
            for n in body:gmatch('"rule_set":"gray:rules","outcome":"[^"]*","rule":"[^"]*","target":"[^"]*","requests":(%d+)') do
                requests = requests + tonumber(n)
            end
            ngx.say("requests counted: ", requests, "; workers: ", select(2, body:gsub('"pid":', "")))
            local bad, why = T.http_get($TEST_NGINX_EXTRA_PORT, "/gray/dashboard?format=xml")
            ngx.say("format=xml: ", bad, " ", (why:gsub("\n$", "")))
        }
    }
--- response_body
page: 200 text/html; charset=utf-8, under 64 KiB, titled, nothing from elsewhere
policy: default-src 'none'
[{"key":"gray:rules","enabled":true,"default":"@prod1","rules":[{"name":"<b>ramp</b>","to":"@prod2-grey","percent":25.0,"guarded":true}]}]
requests counted: 40; workers: 2
format=xml: 400 bad argument #1 to 'dashboard' ("html" or "json" expected, got "xml")
