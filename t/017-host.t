# One Redis session and one copy of the lists per nginx: with require "gray" in init_by_lua one
# worker holds the session and the others follow it through the master's shared mapping; the
# session passes on when its holder is killed, stopped or retired by a reload, and the memory a
# change takes is given back.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';

workers(4);
master_on();
add_block_preprocessor(\&gray_block);

# The gateway of every block: four workers, each answering on the reuseport server with its pid,
# its part in the session, the session's holder and where it sends the test's client.
our $Host = <<'_EOC_';
    init_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
    }
    init_worker_by_lua_block { require("gray").init_worker() }
    server {
        listen 127.0.0.1:$TEST_NGINX_EXTRA_PORT reuseport;
        location = /who {
            content_by_lua_block {
                local gray = require "gray"
                local s = gray.status()
                ngx.say(ngx.worker.pid(), " ", s.session, " ", s.session_holder, " ",
                        (gray.decide()), " ", s.shared_bytes)
            }
        }
        location / { content_by_lua_block { require("gray").route() } }
        location @prod1 { return 200 "prod\n"; }
        location @prod2-grey { return 200 "gray\n"; }
    }
_EOC_

# Each worker's answer on /who, by pid (see gray_test.every_worker).
our $Who = <<'_EOC_';
    local function every_worker(T, timeout)
        return T.every_worker(tonumber(os.getenv("EXTRA")), "/who", timeout, function(body)
            local session, holder, decision, shared = body:match("^%d+ (%S+) (%S+) (%S+) (%S+)")
            return { session = session, holder = tonumber(holder), decision = decision,
                     shared = tonumber(shared) }
        end)
    end
_EOC_

run_tests();

__DATA__

=== TEST 1: four workers, one Redis session: one holder, three followers, the same decision; two connections at rest
--- redis
SET gray 127.0.0.1
--- main_config
env EXTRA=$TEST_NGINX_EXTRA_PORT;
--- http_config eval
$::Host
--- config eval
q|location = /t {
    content_by_lua_block {
        local T = require 'gray_test'
| . $::Who . q|
        local answers = every_worker(T, 5)
        local sessions, holders, decisions = {}, {}, {}
        for pid, a in pairs(answers) do
            sessions[a.session] = (sessions[a.session] or 0) + 1
            holders[a.holder] = true
            decisions[a.decision] = true
        end
        local n = 0
        for _ in pairs(holders) do n = n + 1 end
        ngx.say('holder: ', sessions.holder, ', followers: ', sessions.follower, ', holders named: ', n)
        ngx.say('decisions: ', table.concat((function() local d = {} for k in pairs(decisions) do d[#d + 1] = k end return d end)(), ' '))
        ngx.say('redis connections: ', T.tcp_clients())
        T.redis('set', 'gray', '127.0.0.9')
        local changed = T.wait_for(function()
            local a = every_worker(T, 1)
            if not a then return false end
            for _, w in pairs(a) do
                if w.decision ~= '@prod1' then return false end
            end
            return true
        end, 2)
        ngx.say('a change seen by every worker: ', changed)
    }
}|
--- response_body
holder: 1, followers: 3, holders named: 1
decisions: @prod2-grey
redis connections: 2
a change seen by every worker: true



=== TEST 2: the holder SIGKILLed: another worker takes the session, and a change made 1 s later reaches every worker within 2 s
--- redis
SET gray 127.0.0.1
--- main_config
env EXTRA=$TEST_NGINX_EXTRA_PORT;
--- http_config eval
$::Host
--- init
t::Gray::signal_session_holder($ENV{TEST_NGINX_EXTRA_PORT}, 'KILL');
--- config eval
q|location = /t {
    content_by_lua_block {
        local T = require 'gray_test'
| . $::Who . q|
        local killed = tonumber(assert(io.open(ngx.config.prefix() .. 'logs/holder.pid')):read('*a'))
        ngx.sleep(1)
        T.redis('set', 'gray', '127.0.0.9')
        local changed, took = T.wait_for(function()
            local answers = every_worker(T, 1)
            if not answers then return false end
            for _, a in pairs(answers) do
                if a.decision ~= '@prod1' or not a.holder or a.holder == killed then return false end
            end
            return true
        end, 3)
        ngx.say('every worker routes by the change within 2 s of it: ', changed and took < 2)
        ngx.say('redis connections: ', T.tcp_clients())
    }
}|
--- timeout: 15
--- response_body
every worker routes by the change within 2 s of it: true
redis connections: 2
--- expected_alert
exited on signal 9



=== TEST 3: the holder stopped (SIGSTOP): another takes over within a second and routes by a change; resumed, the old holder follows and lets its connections go
--- redis
SET gray 127.0.0.1
--- main_config
env EXTRA=$TEST_NGINX_EXTRA_PORT;
--- http_config eval
$::Host
--- init
t::Gray::stop_session_holder($ENV{TEST_NGINX_EXTRA_PORT}, $ENV{TEST_NGINX_REDIS_SOCK});
--- config eval
q|location = /t {
    content_by_lua_block {
        local T = require 'gray_test'
| . $::Who . q|
        local logs = ngx.config.prefix() .. 'logs/'
        ngx.print(assert(io.open(logs .. 'stopped.txt')):read('*a'))
        local stopped = tonumber(assert(io.open(logs .. 'holder.pid')):read('*a'))
        local settled = T.wait_for(function()
            local answers = every_worker(T, 1)
            if not answers or not answers[stopped] then return false end
            return answers[stopped].session == 'follower'
                and answers[stopped].decision == '@prod1'
                and T.tcp_clients() == 2
        end, 5)
        ngx.say('resumed, it follows and two connections are left: ', settled)
    }
}|
--- timeout: 15
--- response_body
taken over within a second: true
the change seen: true
resumed, it follows and two connections are left: true
--- allowed_errors
lost the subscription
failed to read
Interrupted system call



=== TEST 4: nginx -s reload: a worker of the new configuration holds the session, the old ones leave, two connections remain
--- redis
SET gray 127.0.0.1
--- main_config
env EXTRA=$TEST_NGINX_EXTRA_PORT;
--- http_config eval
$::Host
--- config eval
q|location = /t {
    content_by_lua_block {
        local T = require 'gray_test'
| . $::Who . q|
        local old = {}
        for _, w in ipairs(T.workers()) do old[w.pid] = true end
        T.reload()
        -- This request's worker is an old one: it leaves once the request is over.
        local answers = {}
        local handed = T.wait_for(function()
            local _, body = T.http_get(tonumber(os.getenv('EXTRA')), '/who')
            local pid, holder, decision = (body or ''):match('^(%d+) %S+ (%S+) (%S+)')
            pid = tonumber(pid)
            if pid and not old[pid] then
                answers[pid] = not old[tonumber(holder)] and decision == '@prod2-grey'
            end
            local n = 0
            for _, ok in pairs(answers) do
                if not ok then return false end
                n = n + 1
            end
            return n == 4
        end, 8)
        ngx.say('new workers only, one of them holding the session: ', handed)
        ngx.say('redis connections: ', (T.wait_for(function() return T.tcp_clients() == 2 end, 3)))
    }
}|
--- timeout: 15
--- response_body
new workers only, one of them holding the session: true
redis connections: true



=== TEST 5: forty changes of a 50,000-entry list: one copy for all workers, and memory where one change left it
--- redis
SET gray 127.0.0.1
--- main_config
env EXTRA=$TEST_NGINX_EXTRA_PORT;
--- http_config eval
$::Host
--- config eval
q|location = /t {
    content_by_lua_block {
        local T = require 'gray_test'
| . $::Who . q|
        local function list(n, with_client)
            local entries = { with_client and '127.0.0.1' or '127.0.0.2' }
            for i = 1, 50000 do
                entries[i + 1] = '10.' .. (i % 250) .. '.' .. math.floor(i / 250) .. '.' .. n
            end
            return table.concat(entries, ' ')
        end
        local function settled(decision)
            return T.wait_for(function()
                local answers = every_worker(T, 1)
                if not answers then return false end
                for _, a in pairs(answers) do
                    if a.decision ~= decision then return false end
                end
                return true
            end, 5)
        end
        local function memory()
            local pss = T.others_pss_kb()
            local _, body = T.http_get(tonumber(os.getenv('EXTRA')), '/who')
            return pss, tonumber(body:match('(%d+)%s*$'))
        end
        T.redis('set', 'gray', list(0, false))
        settled('@prod1')
        ngx.sleep(1.5)
        local pss_one, shared_one = memory()
        for n = 1, 40 do
            T.redis('set', 'gray', list(n, n == 40))
            ngx.sleep(0.05)
        end
        ngx.say('the last change seen by every worker: ', (settled('@prod2-grey')))
        ngx.sleep(1.5)
        local pss_many, shared_many = memory()
        ngx.say('shared bytes the same: ', shared_many == shared_one, shared_many == shared_one and '' or (' (' .. shared_one .. ' then ' .. shared_many .. ')'))
        local grown = pss_many - pss_one
        ngx.say('PSS summed over the other workers grew under 1 MB: ', grown < 1024, grown < 1024 and '' or (' (' .. grown .. ' kB)'))
    }
}|
--- timeout: 30
--- response_body
the last change seen by every worker: true
shared bytes the same: true
PSS summed over the other workers grew under 1 MB: true



=== TEST 6: a large list whose checksum does not match (a stray write): each follower routes by it, checks it and goes back to the last good snapshot
--- redis
SET gray 10.0.0.1
--- main_config
env EXTRA=$TEST_NGINX_EXTRA_PORT;
env GRAY_FAULT=stray-write;
--- http_config eval
$::Host
--- config eval
q|location = /t {
    content_by_lua_block {
        local T = require 'gray_test'
| . $::Who . q|
        -- 187,501 addresses, none next to another: a list laid out in over 1 MiB, which a
        -- follower adopts before it checks it.
        local entries = { '127.0.0.1' }
        for a = 0, 249 do
            for b = 0, 249 do
                for _, c in ipairs({ 1, 3, 5 }) do
                    entries[#entries + 1] = '10.' .. a .. '.' .. b .. '.' .. c
                end
            end
        end
        local function split()
            local answers = every_worker(T, 1)
            if not answers then return false end
            local holder, followers = 0, 0
            for _, a in pairs(answers) do
                if a.session == 'holder' and a.decision == '@prod2-grey' then holder = holder + 1 end
                if a.session == 'follower' and a.decision == '@prod1' then followers = followers + 1 end
            end
            return holder == 1 and followers == 3
        end
        T.redis('set', 'gray', table.concat(entries, ' '))
        local split_once = T.wait_for(split, 5)
        -- Long after every follower adopted it and checked it.
        ngx.sleep(0.5)
        ngx.say('the holder routes by the new list, the followers by the last good one: ',
                split_once and split())
    }
}|
--- timeout: 20
--- response_body
the holder routes by the new list, the followers by the last good one: true
--- error_log
the host's copy of key gray: its checksum does not match; back to the last good snapshot
--- allowed_errors
its checksum does not match; back to the last good snapshot



=== TEST 7: an id set a rule set references lies once in the host's store, laid out flat: every worker decides by it, and counts its rejected ids
--- redis
SET gray:rules '{"format":1,"rules":[{"name":"beta","id":"header:X-User","in_key":"gray:beta","to":"@prod2-grey"}]}'
--- main_config
env EXTRA=$TEST_NGINX_EXTRA_PORT;
--- http_config eval
$::Host
--- config
location = /t {
    content_by_lua_block {
        local T = require 'gray_test'
        local port = tonumber(os.getenv('EXTRA'))
        -- Every worker decides `decision` for a client sending X-User: `user`.
        local function everywhere(user, decision)
            return (T.wait_for(function()
                local seen, n = {}, 0
                T.wait_for(function()
                    local _, body = T.http_get(port, '/who', { ['X-User'] = user })
                    local pid, decided = (body or ''):match('^(%d+) %S+ %S+ (%S+)')
                    if pid and not seen[pid] then seen[pid], n = decided, n + 1 end
                    return n == #T.workers()
                end, 2)
                for _, d in pairs(seen) do
                    if d ~= decision then return false end
                end
                return n == #T.workers()
            end, 5))
        end
        T.redis('sadd', 'gray:beta', 'u1', 'u2', 'u3', string.rep('x', 300))
        ngx.say('in the set, every worker: ', everywhere('u2', '@prod2-grey'))
        ngx.say('not in it, every worker: ', everywhere('u9', '@prod1'))
        T.redis('srem', 'gray:beta', 'u2')
        ngx.say('taken out, every worker: ', everywhere('u2', '@prod1'))
        local file = io.open(ngx.config.prefix() .. 'logs/error.log')
        local log = file:read('*a')
        file:close()
        local pids, n = {}, 0
        for pid in log:gmatch('(%d+)#%d+: [^\n]*loaded ids from set key gray:beta: 3 ids, 1 rejected') do
            if not pids[pid] then pids[pid], n = true, n + 1 end
        end
        ngx.say('workers that loaded 3 ids, 1 rejected: ', n)
    }
}
--- timeout: 20
--- response_body
in the set, every worker: true
not in it, every worker: true
taken out, every worker: true
workers that loaded 3 ids, 1 rejected: 4



=== TEST 8: without require "gray" in init_by_lua each worker holds its own session, and says so
--- redis
SET gray 127.0.0.1
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
    }
--- config
    location = /t {
        content_by_lua_block {
            ngx.say(require("gray").status().session)
        }
    }
--- response_body
own
--- error_log
each worker holds its own Redis session and its own copy of the lists
