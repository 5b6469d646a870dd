# A Redis that is not Redis (a fake, or a compromised server or sentinel) must never take a
# gateway down: replies nested without end, arrays that never end, a SCAN whose cursor never comes
# back to 0. Each is refused as a protocol error, the connection dropped, and requests keep going
# to the last good snapshot (production here: nothing was ever loaded). Before the bounds, the
# nested reply overflowed the refresher thread's stack and killed the worker, again at each start.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';
use IO::Socket::INET;
use POSIX ();

my @Fakes;

# One RESP command from $client: its words, or () at the end of the stream.
sub command {
    my $client = shift;
    my $head = <$client> // return ();
    my ($n) = $head =~ /^\*(\d+)/ or return ();
    my @words;
    for (1 .. $n) {
        my $len_line = <$client> // return ();
        my ($len) = $len_line =~ /^\$(\d+)/ or return ();
        read($client, my $word, $len + 2) or return ();
        push @words, substr($word, 0, $len);
    }
    return @words;
}

# What a fake answers, by mode: an endless reply, or per command.
my %Modes = (
    nested => sub { my $c = shift; command($c); 1 while print $c "*1\r\n" },
    elements => sub { my $c = shift; command($c); print $c "*2147483647\r\n"; 1 while print $c ":1\r\n" },
    # Every reply a quarter of a second late: each within a timeout of 0.3 s, a first load longer.
    slow => sub {
        my $c = shift;
        while (my @words = command($c)) {
            select(undef, undef, undef, 0.25);
            my $name = uc $words[0];
            my $reply = $name eq 'TYPE' ? "+none\r\n" : $name eq 'PING' ? "+PONG\r\n" : "-ERR slow\r\n";
            print $c $reply or return;
        }
    },
    scan => sub {
        my $c = shift;
        while (my @words = command($c)) {
            my $name = uc $words[0];
            my $reply = $name eq 'TYPE' ? "+set\r\n"
                      : $name eq 'SCARD' ? ":5\r\n"
                      : $name eq 'SSCAN' ? "*2\r\n\$1\r\n7\r\n*0\r\n"
                      : $name eq 'PING' ? "+PONG\r\n"
                      : "-ERR not here\r\n";
            print $c $reply or return;
        }
    },
);

sub fake_redis {
    my $mode = shift;
    my $listener = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 64,
                                         ReuseAddr => 1) or die "cannot listen: $!";
    my $pid = fork() // die "cannot fork: $!";
    if ($pid == 0) {
        $SIG{CHLD} = 'IGNORE';
        while (my $client = $listener->accept) {
            if (!fork()) {
                $client->autoflush(1);
                local $SIG{PIPE} = 'IGNORE';
                $Modes{$mode}->($client);
                # Not exit: the END blocks of Test::Nginx (stopping nginx) belong to the test.
                POSIX::_exit(0);
            }
            close $client;
        }
        POSIX::_exit(0);
    }
    push @Fakes, $pid;
    return $listener->sockport;
}

my $Owner = $$;
$ENV{TEST_NGINX_FAKE_NESTED} = fake_redis('nested');
$ENV{TEST_NGINX_FAKE_ELEMENTS} = fake_redis('elements');
$ENV{TEST_NGINX_FAKE_SCAN} = fake_redis('scan');
$ENV{TEST_NGINX_FAKE_SLOW} = fake_redis('slow');

END { kill 'KILL', @Fakes if $$ == $Owner }

add_block_preprocessor(\&gray_block);
run_tests();

__DATA__

=== TEST 1: replies nested without end: refused, the worker lives on and routes to production
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_FAKE_NESTED/0", refresh = 0.1 }
    }
--- config
    location = /t { content_by_lua_block { ngx.sleep(1) require("gray").route() } }
--- response_body
prod
--- error_log
a reply nested no deeper than 8 arrays
--- allowed_errors
a reply nested no deeper than 8 arrays



=== TEST 2: an array that never ends: refused at its element bound, the worker lives on
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{ redis = "redis://127.0.0.1:$TEST_NGINX_FAKE_ELEMENTS/0", refresh = 0.1 }
    }
--- config
    location = /t { content_by_lua_block { ngx.sleep(1) require("gray").route() } }
--- response_body
prod
--- error_log
a reply of at most 1048576 elements
--- allowed_errors
a reply of at most 1048576 elements



=== TEST 3: a SSCAN whose cursor never returns to 0: given up after the rounds its SCARD allows
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_FAKE_SCAN/0", refresh = 0.2, channel = false,
            tracking = false,
        }
    }
--- config
    location = /t { content_by_lua_block { ngx.sleep(0.5) require("gray").route() } }
--- response_body
prod
--- error_log
failed to read key gray: unexpected reply: a SSCAN of key gray that ends, not one past 1024 rounds and 0 members (SCARD said 5)
--- allowed_errors
a SSCAN of key gray that ends



=== TEST 4: a Redis slow to answer holds a starting worker for timeout, not more: the first load goes on in the background
--- http_config
    init_worker_by_lua_block {
        ngx.update_time()
        local started = ngx.now()
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_FAKE_SLOW/0", timeout = 0.3, channel = false,
        }
        ngx.update_time()
        package.loaded.init_worker_took = ngx.now() - started
    }
--- config
    location = /t {
        content_by_lua_block {
            local took = package.loaded.init_worker_took
            ngx.say("served after at most timeout + 0.15 s: ", took < 0.45, took < 0.45 and "" or (" (" .. took .. " s)"))
            ngx.say((require("gray").decide()))
        }
    }
--- response_body
served after at most timeout + 0.15 s: true
@prod1
--- error_log
no answer from redis within 0.4s; serving before the first load, which continues in the background

