# Lanes and anonymous users: the decision carried on to the services behind as a header (and a
# baggage member), an upstream gray's lane honoured only from lane.from, ids minted for cookieless
# users and handed back by Set-Cookie, and the decision as nginx variables.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value('http_config', <<'_EOC_') unless defined $block->http_config;
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", targets = { "@canary-b" },
        }
    }
_EOC_
    # Each target is a real proxy_pass to a backend that echoes what it received (a block may
    # define a target location of its own).
    my $config = $block->config // '';
    for my $target (['prod1', 'prod'], ['prod2-grey', 'gray'], ['canary-b', 'canary-b']) {
        my ($name, $answer) = @$target;
        next if $config =~ /location \@\Q$name\E/;
        $config .= "    location \@$name { rewrite ^ /backend/$answer break; proxy_pass http://127.0.0.1:\$TEST_NGINX_SERVER_PORT; }\n";
    }
    $block->set_value('config', <<'_EOC_' . $config);
    location /backend/ {
        content_by_lua_block {
            local function all(value)
                return type(value) == "table" and table.concat(value, "|") or tostring(value)
            end
            local h = ngx.req.get_headers(0)
            ngx.header["Set-Cookie"] = "backend=1"
            ngx.say(ngx.var.uri:sub(10), " lane=", all(h["x-gray-lane"]), " baggage=", all(h["baggage"]))
        }
    }
    location = /r { content_by_lua_block { require("gray").route() } }
_EOC_
    return gray_block($block);
});
run_tests();

__DATA__

=== TEST 1: every target, the default included, carries its label; a client's own value is replaced, however many it sends, even past the 100 headers gray reads
--- redis
SET gray:rules '{"format":1,"default":"@prod1","lane":{"header":"X-Gray-Lane","labels":{"@prod1":"stable","@prod2-grey":"gray"}},"rules":[{"name":"office","ip":["10.20.0.0/16"],"to":"@prod2-grey"},{"name":"b","ip":["10.30.0.0/16"],"to":"@canary-b"}]}'
--- request eval
["GET /r", "GET /r", "GET /r", "GET /r", "GET /r", "GET /r"]
--- more_headers eval
["X-Client: 1.1.1.1",
 "X-Client: 10.20.1.1",
 "X-Client: 10.30.1.1",
 "X-Client: 1.1.1.1\nX-Gray-Lane: gray",
 "X-Client: 10.30.1.1\nX-Gray-Lane: gray\nx-gray-lane: stable",
 "X-Client: 1.1.1.1\n" . CORE::join("", map { "X-Filler-$_: x\n" } 1 .. 100) . "X-Gray-Lane: gray"]
--- response_body eval
["prod lane=stable baggage=nil\n",
 "gray lane=gray baggage=nil\n",
 "canary-b lane=canary-b baggage=nil\n",
 "prod lane=stable baggage=nil\n",
 "canary-b lane=canary-b baggage=nil\n",
 "prod lane=stable baggage=nil\n"]



=== TEST 2: an upstream gray's lane from lane.from decides before any rule and goes on as it came; an unknown label goes to the default
--- redis
SET gray:rules '{"format":1,"lane":{"header":"X-Gray-Lane","from":["10.0.0.0/8"],"labels":{"@prod1":"stable","@prod2-grey":"gray"}},"rules":[{"name":"b","ip":["10.30.0.0/16","1.1.1.1"],"to":"@canary-b"}]}'
--- request eval
["GET /r", "GET /r", "GET /r", "GET /r", "GET /r"]
--- more_headers eval
["X-Client: 10.30.1.1\nX-Gray-Lane: gray",
 "X-Client: 10.30.1.1\nX-Gray-Lane: stable",
 "X-Client: 10.30.1.1\nX-Gray-Lane: blue",
 "X-Client: 1.1.1.1\nX-Gray-Lane: gray",
 "X-Client: 10.30.1.1"]
--- response_body eval
["gray lane=gray baggage=nil\n",
 "prod lane=stable baggage=nil\n",
 "prod lane=blue baggage=nil\n",
 "canary-b lane=canary-b baggage=nil\n",
 "canary-b lane=canary-b baggage=nil\n"]



=== TEST 3: the label is also a baggage member: other members kept, the member replaced, not duplicated
--- redis
SET gray:rules '{"format":1,"lane":{"header":"X-Gray-Lane","baggage":"gray-lane"},"rules":[{"name":"b","ip":["10.30.0.0/16"],"to":"@canary-b"}]}'
--- request eval
["GET /r", "GET /r", "GET /r"]
--- more_headers eval
["X-Client: 1.1.1.1",
 "X-Client: 10.30.1.1\nbaggage: userId=alice, gray-lane=prod1;p=1\nbaggage: serverNode=DF%2028",
 "X-Client: 1.1.1.1\nbaggage: gray-lane=canary-b,gray-lane=x"]
--- response_body eval
["prod lane=prod1 baggage=gray-lane=prod1\n",
 "canary-b lane=canary-b baggage=userId=alice,serverNode=DF%2028,gray-lane=canary-b\n",
 "prod lane=prod1 baggage=gray-lane=prod1\n"]



=== TEST 4: 1,000 cookieless users each get their own id, the canary's share within 4 points, the same target when they come back, and still after a raise
--- redis
SET gray:rules '{"format":1,"anonymous":{"cookie":"gray_uid","max_age":2592000},"rules":[{"name":"ramp","percent":20,"by":["cookie:uid","cookie:gray_uid"],"to":"@prod2-grey"}]}'
--- config
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            local port = $TEST_NGINX_SERVER_PORT
            local ids, first, canary, problems = {}, {}, 0, {}
            local N = 1000
            for i = 1, N do
                local status, body, head = T.http_get(port, "/r", { ["X-Client"] = "1.1.1.1" })
                local id = head:match("\r\n[Ss]et%-[Cc]ookie: gray_uid=([0-9a-f]+); Path=/; Max%-Age=2592000; HttpOnly; SameSite=Lax\r\n")
                if status ~= 200 or not id or #id < 24 or ids[id] or not head:find("backend=1", 1, true) then
                    problems[#problems + 1] = "request " .. i .. ": " .. tostring(status) .. " " .. head
                    break
                end
                ids[id] = true
                first[#first + 1] = { id = id, target = body:match("^(%S+)") }
                if body:match("^gray") then canary = canary + 1 end
            end
            local share = canary / N * 100
            ngx.say("distinct ids: ", #first == N)
            ngx.log(ngx.NOTICE, "the canary took ", share, "% of 1,000 new ids")
            ngx.say("share within 4 points of 20: ", math.abs(share - 20) <= 4)
            local function back(entry)
                local _, body, head = T.http_get(port, "/r", { ["X-Client"] = "1.1.1.1", Cookie = "gray_uid=" .. entry.id })
                return body:match("^(%S+)"), head:find("gray_uid=", 1, true) ~= nil
            end
            local same, minted_again = 0, 0
            for _, entry in ipairs(first) do
                local target, cookie = back(entry)
                if target == entry.target then same = same + 1 end
                if cookie then minted_again = minted_again + 1 end
            end
            ngx.say("routed the same when back: ", same, " of ", #first, ", minted again: ", minted_again)
            T.redis("set", "gray:rules", '{"format":1,"anonymous":{"cookie":"gray_uid","max_age":2592000},"rules":[{"name":"ramp","percent":50,"by":["cookie:uid","cookie:gray_uid"],"to":"@prod2-grey"}]}')
            T.wait_for(function()
                local note = require("gray").explain().anonymous
                return note and note:find("50% of new ids", 1, true)
            end, 5)
            local kept, was_in = 0, 0
            for _, entry in ipairs(first) do
                if entry.target == "gray" then
                    was_in = was_in + 1
                    if back(entry) == "gray" then kept = kept + 1 end
                end
            end
            ngx.say("still in after the raise: ", kept == was_in)
            for _, p in ipairs(problems) do ngx.say(p) end
        }
    }
--- response_body
distinct ids: true
share within 4 points of 20: true
routed the same when back: 1000 of 1000, minted again: 0
still in after the raise: true
--- timeout: 60



=== TEST 5: no Set-Cookie where none is needed: the cookie sent, another id first, an earlier rule, an override, the kill switch
--- redis
SET gray:rules '{"format":1,"override":{"header":"X-Gray","from":["127.0.0.0/8"]},"anonymous":{"cookie":"gray_uid","secure":true,"domain":"example.com"},"rules":[{"name":"office","ip":["10.20.0.0/16"],"to":"@canary-b"},{"name":"ramp","percent":50,"by":["cookie:uid","cookie:gray_uid"],"to":"@prod2-grey"}]}'
--- config
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            local function cookies(headers)
                local _, _, head = T.http_get($TEST_NGINX_SERVER_PORT, "/r", headers)
                local found = {}
                for value in head:gmatch("\r\n[Ss]et%-[Cc]ookie: ([^\r]+)") do
                    found[#found + 1] = (value:gsub("gray_uid=%x+", "gray_uid=ID"))
                end
                return table.concat(found, " + ")
            end
            ngx.say("none: ", cookies({ ["X-Client"] = "1.1.1.1" }))
            ngx.say("with gray_uid: ", cookies({ ["X-Client"] = "1.1.1.1", Cookie = "gray_uid=abc" }))
            ngx.say("with uid: ", cookies({ ["X-Client"] = "1.1.1.1", Cookie = "uid=u1" }))
            ngx.say("office: ", cookies({ ["X-Client"] = "10.20.1.1" }))
            ngx.say("override: ", cookies({ ["X-Client"] = "127.0.0.1", ["X-Gray"] = "never" }))
            T.redis("set", "gray:rules", '{"format":1,"enabled":false,"anonymous":{"cookie":"gray_uid"},"rules":[{"name":"ramp","percent":50,"by":["cookie:gray_uid"],"to":"@prod2-grey"}]}')
            T.wait_for(function()
                return require("gray").explain().outcome == "disabled"
            end, 5)
            ngx.say("kill switch: ", cookies({ ["X-Client"] = "1.1.1.1" }))
        }
    }
--- response_body
none: gray_uid=ID; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax; Secure; Domain=example.com + backend=1
with gray_uid: backend=1
with uid: backend=1
office: backend=1
override: backend=1
kill switch: backend=1



=== TEST 6: $gray_target and $gray_rule, where declared, reach proxy_set_header and the access log
--- redis
SET gray:rules '{"format":1,"rules":[{"name":"office \"hq\"","ip":["10.20.0.0/16"],"to":"@prod2-grey"}]}'
--- http_config
    log_format gray 'target=$gray_target rule="$gray_rule"';
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", targets = { "@canary-b" },
        }
    }
--- config
    set $gray_target "";
    set $gray_rule "";
    location /backend2/ {
        access_log off;
        content_by_lua_block { ngx.say(ngx.var.http_x_gray_target, " ", ngx.var.http_x_gray_rule) }
    }
    location @prod2-grey {
        access_log logs/gray_access.log gray;
        proxy_set_header X-Gray-Target $gray_target;
        proxy_set_header X-Gray-Rule $gray_rule;
        rewrite ^ /backend2/ break;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT;
    }
    location = /t {
        content_by_lua_block {
            local T = require "gray_test"
            local _, office = T.http_get($TEST_NGINX_SERVER_PORT, "/r", { ["X-Client"] = "10.20.1.1" })
            local _, other = T.http_get($TEST_NGINX_SERVER_PORT, "/r", { ["X-Client"] = "1.1.1.1" })
            ngx.print(office, other)
            local f = io.open(ngx.config.prefix() .. "logs/gray_access.log")
            ngx.print(f:read("*a"))
            f:close()
        }
    }
--- response_body
@prod2-grey office "hq"
prod lane=nil baggage=nil
target=@prod2-grey rule="office \x22hq\x22"



=== TEST 7: explain() shows an upstream lane, the label sent on, and what a cookieless request would get
--- redis
SET gray:rules '{"format":1,"lane":{"header":"X-Gray-Lane","from":["10.0.0.0/8"],"labels":{"@prod2-grey":"gray"}},"anonymous":{"cookie":"gray_uid"},"rules":[{"name":"ramp","percent":10,"by":["cookie:gray_uid"],"to":"@prod2-grey"}]}'
--- config
    location = /e {
        content_by_lua_block {
            local e = require("gray").explain()
            ngx.say(e.outcome, " | ", e.target, " | ", tostring(e.lane), " | ", tostring(e.anonymous))
        }
    }
--- request eval
["GET /e", "GET /e", "GET /e"]
--- more_headers eval
["X-Client: 10.1.1.1\nX-Gray-Lane: gray",
 "X-Client: 1.1.1.1\nX-Gray-Lane: gray\nCookie: gray_uid=a",
 "X-Client: 1.1.1.1"]
--- response_body_like eval
["^lane \\| \@prod2-grey \\| X-Gray-Lane: as it came \\| nil\$",
 "^(rule|default) \\| \@prod[^ ]+ \\| X-Gray-Lane: (gray|prod1) \\| nil\$",
 "^(rule|default) \\| \@prod[^ ]+ \\| X-Gray-Lane: (gray|prod1) \\| a new id would be minted; 10% of new ids go to \@prod2-grey\$"]
