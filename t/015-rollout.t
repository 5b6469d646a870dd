# Rollout plans driven by the gateway itself: both workers count their responses into the plan's
# traffic in Redis and compete for its lease; the holder judges every interval and moves the plan.
# A healthy canary is stepped to done; a failing one (500s) is aborted and no request reaches it
# afterwards; a slow one is aborted on --max-p99. The canary answers what `canary_status` and
# `canary_sleep` in Redis say. (Two gateways, and a driver SIGKILLed mid-plan, are
# grayctl/tests/rollout_fleet.rs's.)
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';

workers(2);
master_on();
add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value('http_config', <<'_EOC_' . ($block->http_config // ''));
    init_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.5,
            count_responses = true, rollouts = true,
        }
    }
    init_worker_by_lua_block { require("gray").init_worker() }
    server {
        listen 127.0.0.1:$TEST_NGINX_EXTRA_PORT reuseport;
        location / { content_by_lua_block { require("gray").route() } }
        location @prod1 { return 200 "prod\n"; }
        location @prod2-grey {
            content_by_lua_block {
                local T = require "gray_test"
                local sleep = tonumber(T.redis("get", "canary_sleep"))
                if sleep then ngx.sleep(sleep) end
                ngx.status = tonumber(T.redis("get", "canary_status")) or 200
                ngx.say("gray")
            }
        }
        location = /gray/metrics { content_by_lua_block { require("gray").metrics() } }
    }
_EOC_
    $block->set_value('redis', q{SET gray:rules '{"format": 1, "rules": [{"name": "canary", "percent": 0, "to": "@prod2-grey"}]}'} . "\n" . ($block->redis // ''));
    return gray_block($block);
});
run_tests();

__DATA__


=== TEST 1: a healthy canary is stepped to done by the gateway's own workers, each step in the history once, and the metrics say done
--- config
    location = /t {
        content_by_lua_block {
            local T, R = require "gray_test", require "rollout_test"
            ngx.say(R.start("--steps 10,50,100"))
            local plan, seen = R.load_until($TEST_NGINX_EXTRA_PORT, { done = true })
            ngx.say("state: ", plan and plan.state, ", percent: ", plan and plan.percent)
            ngx.say("answers other than 200: ", (seen["500 gray"] or 0) + (seen["nil nil"] or 0))
            ngx.say(table.concat(R.moves(), "\n"))
            ngx.say("driver: ", plan.driver:match("^[^:]+:%d+$") ~= nil)
            ngx.sleep(1)
            local _, metrics = T.http_get($TEST_NGINX_EXTRA_PORT, "/gray/metrics")
            ngx.say(T.sample(metrics, "gray_rollout_state", [[rule_set="gray:rules",rule="canary",state="done"]]))
            ngx.say(T.sample(metrics, "gray_rollout_percent", [[rule_set="gray:rules",rule="canary"]]))
        }
    }
--- timeout: 60
--- response_body_like chomp
^gray:rules: rollout of rule "canary" \(plan \d+, started [^)]+\)
state: done, percent: 100
answers other than 200: 0
rollout start canary: step 1 of 3, 10%
rollout step canary: step 2 of 3, 50%
rollout step canary: step 3 of 3, 100%
driver: true
1
100$



=== TEST 2: a canary answering 500s is aborted after two failed checks, the reason has the figures, and no request reaches it afterwards
--- redis
SET canary_status 500
--- config
    location = /t {
        content_by_lua_block {
            local T, R = require "gray_test", require "rollout_test"
            R.start("--steps 20,100")
            local plan = R.load_until($TEST_NGINX_EXTRA_PORT, { aborted = true })
            ngx.say("state: ", plan and plan.state)
            ngx.say(plan and plan.reason)
            -- The abort is published: both workers route by it within milliseconds.
            ngx.sleep(0.5)
            local prod = 0
            for n = 1, 200 do
                local status, body = T.http_get($TEST_NGINX_EXTRA_PORT, "/", { ["X-Client"] = "10.2.0." .. n })
                if status == 200 and body == "prod\n" then prod = prod + 1 end
            end
            ngx.say("after: ", prod, " of 200 to prod")
        }
    }
--- timeout: 60
--- response_body_like chomp
^state: aborted
5xx 100\.0% of [\d,]+ responses vs 0\.0% of [\d,]+ on \@prod1, over the 1 point allowed, 2 checks in a row
after: 200 of 200 to prod$
--- error_log
aborted: 5xx 100.0%



=== TEST 3: a canary slower than --max-p99 is aborted on its p99
A 30 ms sleep falls in the 50 ms bucket, or the 100 ms one on a loaded machine.
--- redis
SET canary_sleep 0.03
--- config
    location = /t {
        content_by_lua_block {
            local R = require "rollout_test"
            R.start("--steps 50,100 --max-p99 0.01")
            local plan = R.load_until($TEST_NGINX_EXTRA_PORT, { aborted = true })
            ngx.say("state: ", plan and plan.state)
            ngx.say(plan and plan.reason)
        }
    }
--- timeout: 60
--- response_body_like chomp
^state: aborted
p99 <= 0\.(?:05|1)s of [\d,]+ responses, over the 0\.01s allowed, 2 checks in a row$
