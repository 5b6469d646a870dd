# Redis Sentinel: gray finds the master (or a replica) through the sentinels, under its own
# timeouts (a dead sentinel first in the list is skipped), and after a failover it finds the new
# master, tracks it and reads what is written there. Its own master, replica and three sentinels,
# for this file alone: a failover leaves them changed.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep);

my $Dir = tempdir('gray-sentinel-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my ($Master, $Replica) = (t::Gray::free_port(), t::Gray::free_port());
my @Sentinels = map { t::Gray::free_port() } 1 .. 3;
sub cli { my $port = shift; my $out = `redis-cli -p $port @_ 2>&1`; return $out }

# True once `check` is, polled for up to 30 s (a loaded machine is slow to sync and fail over).
sub wait_until {
    my $check = shift;
    for (1 .. 600) { return 1 if $check->(); sleep 0.05 }
    return 0;
}

t::Gray::start_redis($Dir, $Master);
t::Gray::start_redis($Dir, $Replica, '--replicaof', '127.0.0.1', $Master);
for my $port (@Sentinels) {
    open my $conf, '>', "$Dir/sentinel-$port.conf" or die $!;
    print $conf "sentinel monitor grays 127.0.0.1 $Master 2\n",
                "sentinel down-after-milliseconds grays 1000\n",
                "sentinel failover-timeout grays 5000\n";
    close $conf;
    system('redis-sentinel', "$Dir/sentinel-$port.conf", '--port', $port, '--bind', '127.0.0.1',
           '--daemonize', 'yes', '--pidfile', "$Dir/$port.pid", '--logfile', "$Dir/$port.log",
           '--dir', $Dir) == 0 or die "cannot start redis-sentinel on $port: $?";
    t::Gray::shut_down_at_end($port);
}
wait_until(sub { cli($Replica, 'info replication') =~ /master_link_status:up/ })
    or die "the replica did not sync";
wait_until(sub { cli($Sentinels[0], 'sentinel replicas grays') =~ /master-link-status\s+ok/ })
    or die "the sentinels did not find the replica";
wait_until(sub { cli($Sentinels[0], 'sentinel sentinels grays') =~ /(?:s?)127\.0\.0\.1/ })
    or die "the sentinels did not find each other";

$ENV{TEST_NGINX_SENTINELS} = join ', ', map { "\"127.0.0.1:$_\"" } @Sentinels;
$ENV{TEST_NGINX_SENTINEL_MASTER} = $Master;
$ENV{TEST_NGINX_SENTINEL_REPLICA} = $Replica;
$ENV{TEST_NGINX_SENTINEL_1} = $Sentinels[0];

# Each block starts from a settled group: after a failover the old master rejoins as a replica,
# and the sentinels see it in sync, before the next block asks them.
add_block_preprocessor(sub {
    my $block = shift;
    wait_until(sub { cli($Sentinels[0], 'sentinel replicas grays') =~ /master-link-status\s+ok/ })
        or die "the sentinels see no replica in sync";
    return gray_block($block);
});
run_tests();

__DATA__

=== TEST 1: found through the sentinels (a dead one first is skipped); after a failover, the new master is read and tracked
--- main_config
env TEST_NGINX_SENTINEL_MASTER;
env TEST_NGINX_SENTINEL_REPLICA;
env TEST_NGINX_SENTINEL_1;
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            sentinels = { "127.0.0.1:$TEST_NGINX_DEAD_PORT", $TEST_NGINX_SENTINELS },
            sentinel_master = "grays", timeout = 0.5,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray = require "gray"
            local T = require "gray_test"
            local on = T.redis_at
            local master = os.getenv("TEST_NGINX_SENTINEL_MASTER")
            local replica = os.getenv("TEST_NGINX_SENTINEL_REPLICA")
            on(master, "set", "gray", "127.0.0.1")
            ngx.say("first master: ", (T.wait_for(function()
                return gray.decide() == "@prod2-grey" and gray.status().redis_node == "127.0.0.1:" .. master
            end, 3)), ", tracking: ", gray.status().tracking)
            on(os.getenv("TEST_NGINX_SENTINEL_1"), "sentinel", "failover", "grays")
            ngx.say("failed over: ", (T.wait_for(function()
                local role = on(replica, "role")
                return role and role[1] == "master"
            end, 10)))
            -- On the new master, a plain SET: gray has lost its connections to the old one,
            -- asked the sentinels again, and tracks the new one.
            local moved = T.wait_for(function()
                return gray.status().redis_node == "127.0.0.1:" .. replica
            end, 10)
            ngx.say("reads the new master: ", moved, moved and "" or (" (" .. tostring(gray.status().redis_node) .. " m=" .. master .. " r=" .. replica .. ")"))
            T.wait_for(function() return gray.status().tracking end, 3)
            on(replica, "set", "gray", "127.0.0.9")
            ngx.say("a write there is seen: ", (T.wait_for(function()
                return gray.decide() == "@prod1"
            end, 1)))
        }
    }
--- timeout: 30
--- response_body
first master: true, tracking: true
failed over: true
reads the new master: true
a write there is seen: true
--- allowed_errors
the master of "grays" now, not
unexpected end of file
Connection reset by peer



=== TEST 2: read_from = "replica": the sentinels name the replica, gray reads and tracks it there, and a write on the master reaches it at run time
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            sentinels = { $TEST_NGINX_SENTINELS }, sentinel_master = "grays", read_from = "replica",
            timeout = 0.5,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local on = T.redis_at
            -- TEST 1 may have failed the group over already: ask which node is which.
            local master = on(os.getenv("TEST_NGINX_SENTINEL_1"), "sentinel", "get-master-addr-by-name", "grays")[2]
            local replica = master == os.getenv("TEST_NGINX_SENTINEL_MASTER")
                            and os.getenv("TEST_NGINX_SENTINEL_REPLICA") or os.getenv("TEST_NGINX_SENTINEL_MASTER")
            on(master, "set", "gray", "127.0.0.9")
            ngx.say("reads the replica: ", (T.wait_for(function()
                return gray.status().redis_node == "127.0.0.1:" .. replica and gray.status().tracking
            end, 3)))
            on(master, "set", "gray", "127.0.0.1")
            ngx.say("a write on the master is seen through it: ", (T.wait_for(function()
                return gray.decide() == "@prod2-grey"
            end, 1)))
            local role = on(replica, "role")
            ngx.say("the node read is a replica: ", role[1] == "slave")
        }
    }
--- main_config
env TEST_NGINX_SENTINEL_MASTER;
env TEST_NGINX_SENTINEL_REPLICA;
env TEST_NGINX_SENTINEL_1;
--- timeout: 15
--- response_body
reads the replica: true
a write on the master is seen through it: true
the node read is a replica: true
