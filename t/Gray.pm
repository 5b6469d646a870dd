package t::Gray;

# Shared set-up for gray's t/*.t files, run under the real Test::Nginx (`make test-nginx`):
# - starts a private redis-server for the file (TCP on a free loopback port, plus a unix socket the
#   tests keep control through) and stops it at the end;
# - gray_block(), a block preprocessor: resets Redis before each block (blocks run shuffled and must
#   stand alone), runs the block's `--- redis` commands, closes the TCP port when the block has
#   `--- redis_down`, stops it with SIGSTOP for `--- redis_hung`, and fills in what blocks share:
#   the module paths, the named locations, `GET /t`, no errors logged, and (for a block without
#   its own `--- http_config`) gray configured against the test Redis in init_worker;
# - guards every block against [error], [alert], [crit] and [emerg] (a worker crash after the
#   response, say), also the blocks with their own error_log checks. A block that provokes [error]
#   lines on purpose lists them in `--- allowed_errors`, one pattern a line: an [error] line that
#   matches none of them fails the block. One that provokes an [alert] (or [crit], [emerg]) names
#   it in `--- expected_alert` (or _crit, _emerg), which is then required instead.

use strict;
use warnings;

use Cwd qw(cwd);
use File::Path qw(remove_tree);
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(sleep time);

use Exporter 'import';
our @EXPORT = qw(gray_block);

our $Root = cwd();

# Debian's nginx loads the Lua module dynamically; an nginx with it built in (OpenResty) runs with
# TEST_NGINX_LOAD_MODULES set empty.
$ENV{TEST_NGINX_LOAD_MODULES} //= join ' ',
    '/usr/lib/nginx/modules/ndk_http_module.so', '/usr/lib/nginx/modules/ngx_http_lua_module.so';
$ENV{TEST_NGINX_GRAY_CPATH} //= "$Root/target/release/lib?.so";
$ENV{TEST_NGINX_GRAY_ROOT} //= $Root;

sub free_port {
    my $sock = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1)
        or die "cannot find a free port: $!";
    my $port = $sock->sockport;
    close $sock;
    return $port;
}

my $Owner = $$;
my $Dir = tempdir('gray-test-XXXXXX', TMPDIR => 1);
my $Port = free_port();
my $Sock = "$Dir/redis.sock";
system('redis-server', '--port', $Port, '--bind', '127.0.0.1', '--unixsocket', $Sock,
       '--unixsocketperm', '777', '--save', '', '--appendonly', 'no', '--daemonize', 'yes',
       '--pidfile', "$Dir/redis.pid", '--logfile', "$Dir/redis.log", '--dir', $Dir) == 0
    or die "cannot start redis-server: $?";
my $Pid;
for (1 .. 100) {
    if (open my $fh, '<', "$Dir/redis.pid") {
        ($Pid) = <$fh> =~ /(\d+)/;
    }
    last if $Pid && -S $Sock;
    sleep 0.05;
}
die "redis-server did not start (see $Dir/redis.log)" unless $Pid && -S $Sock;

$ENV{TEST_NGINX_REDIS_PORT} = $Port;
$ENV{TEST_NGINX_REDIS_SOCK} = $Sock;
$ENV{TEST_NGINX_REDIS_PID} = $Pid;
# A loopback port nothing listens on, and one for a test's second server block.
$ENV{TEST_NGINX_DEAD_PORT} = free_port();
$ENV{TEST_NGINX_EXTRA_PORT} = free_port();

END {
    # A file's exit status is $? here; what END runs must not overwrite it (a set-up that died
    # would pass).
    local $?;
    if ($$ == $Owner && $Pid) {
        kill 'CONT', $Pid;
        kill 'TERM', $Pid;
        for (1 .. 100) { last if exited($Pid); sleep 0.05 }
        remove_tree($Dir);
    }
}

# More Redis for a file (a replica, TLS servers, a Sentinel group's nodes): redis-server on loopback
# `port` with `args`, its files in `dir`. It is shut down when the file ends, as are the ports given
# to shut_down_at_end (sentinels).
my @ShutDown;

sub start_redis {
    my ($dir, $port, @args) = @_;
    system('redis-server', '--port', $port, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
           '--daemonize', 'yes', '--pidfile', "$dir/$port.pid", '--logfile', "$dir/$port.log",
           '--dir', $dir, @args) == 0 or die "cannot start redis-server on $port: $?";
    shut_down_at_end($port);
}

sub shut_down_at_end { push @ShutDown, @_ }

# Waits until the replica on `port` is in sync with its master; false after 30 s (a full sync
# forks the master: slow on a loaded machine).
sub replica_synced {
    my $port = shift;
    for (1 .. 600) {
        return 1 if `redis-cli -p $port info replication 2>/dev/null` =~ /master_link_status:up/;
        sleep 0.05;
    }
    return 0;
}

END {
    local $?;
    system("redis-cli -p $_ shutdown nosave >/dev/null 2>&1") for $$ == $Owner ? @ShutDown : ();
}

# What a worker answers on /who of loopback `port` (t/017-host.t): its pid, its part in the
# session, the session's holder, its decision; empty when none answers within `timeout` seconds.
sub who {
    my ($port, $timeout) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => $timeout) or return;
    print $sock "GET /who HTTP/1.0\r\nHost: localhost\r\n\r\n";
    my $response = '';
    my $deadline = time + $timeout;
    my $select = IO::Select->new($sock);
    while ((my $left = $deadline - time) > 0) {
        last unless $select->can_read($left);
        sysread($sock, my $chunk, 4096) or last;
        $response .= $chunk;
    }
    return $response =~ /\r\n\r\n(\d+) (\S+) (\S+) (\S+)/;
}

# Sends `signal` to the worker that holds the Redis session of the nginx answering /who on `port`,
# from here rather than from a worker, which may be the holder itself; writes its pid to
# logs/holder.pid.
sub signal_session_holder {
    my ($port, $signal) = @_;
    my $holder;
    for (1 .. 100) {
        (undef, undef, $holder) = who($port, 1);
        last if $holder && $holder =~ /^\d+$/;
        sleep 0.05;
    }
    die "no worker named the session's holder" unless $holder;
    kill $signal, $holder or die "cannot signal $holder: $!";
    open my $fh, '>', "$Test::Nginx::Util::ServRoot/logs/holder.pid" or die "holder.pid: $!";
    print $fh $holder;
    close $fh;
    return $holder;
}

# Stops the session's holder (SIGSTOP) and, from here (a request could land on the stopped
# worker and wait), times how long until another worker holds the session, changes the whitelist
# key, times how long until a worker routes by it, then resumes the holder: logs/stopped.txt says
# what it saw.
sub stop_session_holder {
    my ($port, $redis_sock) = @_;
    my $stopped = signal_session_holder($port, 'STOP');
    my $started = time;
    my ($taken, $seen);
    # A connection the kernel gives the stopped worker's socket (reuseport) waits out the
    # timeout: kept short, so that a poll that lands there delays the reading only by as much.
    while (!defined $taken && time - $started < 5) {
        my ($pid, $session, $holder) = who($port, 0.05);
        $taken = time - $started if $holder && $holder ne $stopped && $holder =~ /^\d+$/;
    }
    system('redis-cli', '-s', $redis_sock, 'set', 'gray', '127.0.0.9') == 0 or die "redis-cli: $?";
    my $changed = time;
    while (!defined $seen && time - $changed < 5) {
        my (undef, undef, undef, $decision) = who($port, 0.3);
        $seen = time - $changed if $decision && $decision eq '@prod1';
    }
    kill 'CONT', $stopped;
    open my $fh, '>', "$Test::Nginx::Util::ServRoot/logs/stopped.txt" or die "stopped.txt: $!";
    printf $fh "taken over within a second: %s\nthe change seen: %s\n",
        defined $taken && $taken < 1 ? 'true' : 'false (' . ($taken // 'never') . ')',
        defined $seen ? 'true' : 'false';
    close $fh;
}

# redis-server daemonizes, so PID 1 reaps it, perhaps late: a zombie has exited.
sub exited {
    my $pid = shift;
    open my $fh, '<', "/proc/$pid/stat" or return 1;
    return (<$fh> // '') =~ /^\d+ \(.*\) Z/;
}

sub redis_cli {
    my @commands = @_;
    open my $cli, '|-', "redis-cli -s $Sock >/dev/null" or die "redis-cli: $!";
    print $cli "$_\n" for @commands;
    close $cli or die "redis-cli failed: @commands";
}

my $HttpConfig = <<"_EOC_";
    lua_package_cpath "\$TEST_NGINX_GRAY_CPATH;;";
    lua_package_path "\$TEST_NGINX_GRAY_ROOT/t/lua/?.lua;;";
    # nginx's realip module sets \$remote_addr from X-Client, so one test client can be anyone.
    set_real_ip_from 127.0.0.1;
    real_ip_header X-Client;
_EOC_

my $DefaultGray = <<'_EOC_';
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0" }
    }
_EOC_

my $MainConfig = <<'_EOC_';
env TEST_NGINX_REDIS_SOCK;
env TEST_NGINX_REDIS_PORT;
env TEST_NGINX_REDIS_PID;
env TEST_NGINX_GRAY_ROOT;
_EOC_

my $NamedLocations = <<'_EOC_';
    location @prod1 { return 200 "prod\n"; }
    location @prod2-grey { return 200 "gray\n"; }
_EOC_

sub gray_block {
    my $block = shift;

    kill 'CONT', $Pid;
    redis_cli("CONFIG SET port $Port", 'ACL DELUSER tester', 'FLUSHALL');
    if (defined $block->redis) {
        redis_cli(grep { /\S/ } split /\n/, $block->redis);
    }
    if (defined $block->redis_down) {
        redis_cli('CONFIG SET port 0');
    }
    if (defined $block->redis_hung) {
        kill 'STOP', $Pid;
    }

    $block->set_value('main_config', $MainConfig . ($block->main_config // ''));
    $block->set_value('http_config', $HttpConfig . ($block->http_config // $DefaultGray));
    my $config = $block->config // '';
    $config = $NamedLocations . $config unless $config =~ /location \@prod1\b/;
    $block->set_value('config', $config);
    if (!defined $block->request && !defined $block->pipelined_requests) {
        $block->set_value('request', 'GET /t');
    }
    guard_error_log($block);
    return $block;
}

my %Guard = (alert => '[alert]', crit => '[crit]', emerg => '[emerg]');

sub guard_error_log {
    my $block = shift;
    my @guard;
    my @expected;
    for my $level (sort keys %Guard) {
        my $expected = $block->can("expected_$level") && $block->${\"expected_$level"};
        if (defined $expected && length $expected) {
            chomp $expected;
            # With its level, so Test::Nginx's own warning about the level is silenced too.
            push @expected, qr/\[$level\].*\Q$expected\E/;
        } else {
            push @guard, $Guard{$level};
        }
    }
    $block->set_value('error_log', [patterns($block->error_log), @expected]) if @expected;
    my @forbidden = grep { ref || $_ ne '[error]' } patterns($block->no_error_log);
    for my $pattern (@guard) {
        push @forbidden, $pattern unless grep { !ref && $_ eq $pattern } @forbidden;
    }
    push @forbidden, error_guard($block->can('allowed_errors') ? $block->allowed_errors : undef);
    $block->set_value('no_error_log', \@forbidden);
}

# An [error] line is forbidden unless it matches one of the block's allowed patterns (plain
# text, found anywhere after the level).
sub error_guard {
    my @allowed = patterns(shift);
    return '[error]' unless @allowed;
    my $any = join '|', map { quotemeta } @allowed;
    return qr/\[error\](?!.*(?:$any))/;
}

# A section's patterns as a list: lines of text, one regex, or an eval'd array.
sub patterns {
    my $value = shift;
    return () unless defined $value;
    return @$value if ref $value eq 'ARRAY';
    return ($value) if ref $value;
    return grep { length } split /\n+/, $value;
}

1;
