# Redis as operators run it: a least-privilege ACL user, and a read-only replica per gateway
# host (the cheap fan-out to a big fleet), client-side caching included.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep);

# A replica of the file's Redis, on a port of its own, for the whole file.
my $Dir = tempdir('gray-replica-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $ReplicaPort = t::Gray::free_port();
t::Gray::start_redis($Dir, $ReplicaPort, '--replicaof', '127.0.0.1', $ENV{TEST_NGINX_REDIS_PORT});
t::Gray::replica_synced($ReplicaPort) or die "the replica did not sync";
$ENV{TEST_NGINX_REPLICA_PORT} = $ReplicaPort;

add_block_preprocessor(\&gray_block);
run_tests();

__DATA__

=== TEST 1: the least-privilege ACL user the README lists: loads, tracks, and sees a plain SET at once
--- redis
SET gray 127.0.0.9
ACL SETUSER tester on >secret resetkeys %R~gray* resetchannels &gray:changed &__redis__:invalidate -@all +ping +type +strlen +getrange +sscan +scard +hget +hmget +hgetall +subscribe +client|id +client|tracking
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://tester:secret@127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 60,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local s = gray.status()
            ngx.say((gray.decide()), " tracking=", s.tracking, " subscribed=", s.subscribed)
            T.redis("set", "gray", "127.0.0.1")
            ngx.say("a plain SET: ", (T.wait_for(function() return gray.decide() == "@prod2-grey" end, 0.5)))
            T.redis_atomic({ "del", "gray" }, { "sadd", "gray", "127.0.0.9" })
            ngx.say("a SET key: ", (T.wait_for(function() return gray.decide() == "@prod1" end, 0.5)))
        }
    }
--- response_body
@prod1 tracking=true subscribed=true
a plain SET: true
a SET key: true
--- no_error_log
[warn]



=== TEST 2: a read-only replica as `redis`: a write on the master, no PUBLISH, is pushed through the replica
--- redis
SET gray 127.0.0.9
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REPLICA_PORT/0", refresh = 60 }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            -- The FLUSHALL and SET before this block reach the replica within moments.
            T.wait_for(function() return gray.status().entries == 1 end, 2)
            local s = gray.status()
            ngx.say((gray.decide()), " tracking=", s.tracking, " redis=", (s.redis:gsub(":%d+/", ":PORT/")))
            T.redis("set", "gray", "127.0.0.1")
            ngx.say("written on the master: ", (T.wait_for(function() return gray.decide() == "@prod2-grey" end, 0.5)))
        }
    }
--- response_body
@prod1 tracking=true redis=redis://127.0.0.1:PORT/0
written on the master: true



=== TEST 3: the same ACL user, polling (tracking = false): a large SET is probed (SCARD) and read again when it grows
--- redis
EVAL "for a = 0, 39 do for b = 0, 199 do redis.call('SADD', 'gray', '10.' .. a .. '.' .. b .. '.1') end end return 1" 0
ACL SETUSER tester on >secret resetkeys %R~gray* resetchannels &gray:changed &__redis__:invalidate -@all +ping +type +strlen +getrange +sscan +scard +hget +hmget +hgetall +subscribe +client|id +client|tracking
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://tester:secret@127.0.0.1:$TEST_NGINX_REDIS_PORT/0", refresh = 0.1,
            tracking = false, channel = false,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            ngx.say(gray.status().entries, " entries, ", (gray.decide()))
            T.redis("sadd", "gray", "127.0.0.1")
            ngx.say("grown, polled: ", (T.wait_for(function() return gray.decide() == "@prod2-grey" end, 0.5)))
        }
    }
--- response_body
8000 entries, @prod1
grown, polled: true
--- no_error_log
[warn]
