# grayctl and the gateway decide alike: the example rule set, written by `grayctl rules set`, and a
# table of requests; what the gateway's route() and explain() answer for each is what
# `grayctl explain` says for the same inputs.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';
use JSON::PP;

my $Grayctl = "$t::Gray::Root/target/release/grayctl";
my @Grayctl = ($Grayctl, '--redis', "redis://127.0.0.1:$ENV{TEST_NGINX_REDIS_PORT}/0",
               '--targets', '@canary-b');

# A client address and the request's parts, as grayctl's flags take them.
my @Cases = (
    ['192.168.2.165'],
    ['10.20.9.9'],
    ['2001:db8::5'],
    ['1.1.1.1', cookie => 'uid=u1002'],
    ['1.1.1.1', cookie => 'UID=u1001'],
    ['1.1.1.1', arg => 'UID=u19'],
    ['1.1.1.1', header => 'x-user-id:u5000'],
    ['1.1.1.1', header => 'X-User-Id:u5001'],
    ['1.1.1.1', arg => 'uid=u17'],
    ['1.1.1.1', arg => 'uid=u18'],
    ['1.1.1.1', header => 'X-User-Id:150000'],
    ['1.1.1.1', header => 'X-User-Id:vip-12', cookie => 'uid=u9'],
    ['10.1.1.1', header => 'X-Gray:always'],
    ['10.1.1.1', header => 'X-Gray:@canary-b'],
    ['1.1.1.1', header => 'X-Gray:@canary-b'],
    ['10.20.1.1', header => 'X-Gray:never'],
    (map { ['1.1.1.1', cookie => "uid=c$_"] } 1 .. 40),
    (map { ["127.0.3.$_"] } 1 .. 20),
);

sub grayctl_explain {
    my ($ip, %parts) = @_;
    my @args = (@Grayctl, 'explain', '--json', '--ip', $ip, map { ("--$_", $parts{$_}) } sort keys %parts);
    open my $out, '-|', @args or die "grayctl: $!";
    my $json = do { local $/; <$out> };
    close $out or die "grayctl explain failed: @args";
    return decode_json($json);
}

sub request_of {
    my ($ip, %parts) = @_;
    my $uri = '/x' . (defined $parts{arg} ? "?$parts{arg}" : '');
    my @headers = ("X-Client: $ip");
    push @headers, "Cookie: $parts{cookie}" if defined $parts{cookie};
    if (defined $parts{header}) {
        my ($name, $value) = split /:/, $parts{header}, 2;
        push @headers, "$name: $value";
    }
    return ($uri, join "\n", @headers);
}

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value('http_config', <<'_EOC_');
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/0", targets = { "@canary-b" },
        }
    }
_EOC_
    $block = gray_block($block);
    system(@Grayctl, 'rules', 'set', "$t::Gray::Root/nginx-conf/rules/example.json") == 0
        or die "grayctl rules set failed";
    my (@requests, @headers, @bodies, %seen);
    for my $case (@Cases) {
        my $explained = grayctl_explain(@$case);
        my ($uri, $headers) = request_of(@$case);
        my $rule = $explained->{rule} // '-';
        $seen{$rule}++;
        for my $location ('x', 'r') {
            (my $path = $uri) =~ s{^/x}{/$location};
            push @requests, "GET $path";
            push @headers, $headers;
            push @bodies, $location eq 'x' ? "$explained->{target} $rule\n" : "$explained->{target}\n";
        }
    }
    # The table must reach every rule, and the default, or it proves less than it says.
    my @missing = grep { !$seen{$_} } qw(whitelist office beta beta-big tail-7 band vip-stays ramp -);
    die "the cases reach no request for: @missing" if @missing;
    $block->set_value('request', \@requests);
    $block->set_value('more_headers', \@headers);
    $block->set_value('response_body', \@bodies);
    return $block;
});
run_tests();

__DATA__

=== TEST 1: a table of requests: the gateway's target and rule are grayctl's
--- redis
SET gray 192.168.2.165
SADD gray:beta u5000 u5001
--- config
    location @prod1 { return 200 "@prod1\n"; }
    location @prod2-grey { return 200 "@prod2-grey\n"; }
    location @canary-b { return 200 "@canary-b\n"; }
    location /r { content_by_lua_block { require("gray").route() } }
    location /x {
        content_by_lua_block {
            local e = require("gray").explain()
            ngx.say(e.target, " ", e.rule or "-")
        }
    }
