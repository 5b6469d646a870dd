package Test::Nginx::Socket::Lua;

# A runner for the subset of the Test::Nginx::Socket::Lua data format that gray's t/*.t files use,
# written from Test::Nginx's documentation because CPAN (and so Test::Nginx) is out of reach here.
# t/Gray.pm puts this directory on @INC only when no real Test::Nginx is installed, so the same
# files run unchanged under CPAN's Test::Nginx.
#
# What it does, as Test::Nginx does: for each block (shuffled unless no_shuffle()), run the block
# preprocessors, stop the previous nginx, rewrite t/servroot, write the nginx.conf Test::Nginx
# writes, start nginx, send the request(s), then check status codes, bodies and the error log
# written during the block.
#
# Sections: main_config http_config config request pipelined_requests more_headers error_code
# response_body response_body_like error_log no_error_log wait timeout; filters: eval chomp.
# Functions: run_tests repeat_each workers master_on master_off log_level no_shuffle
# add_block_preprocessor blocks no_long_string no_root_location plan.

use strict;
use warnings;

use Cwd qw(cwd);
use File::Path qw(make_path remove_tree);
use IO::Socket::INET;
use IO::Select;
use List::Util qw(shuffle);
use POSIX qw(WNOHANG);
use Test::More ();
use Time::HiRes qw(sleep time);

our $VERSION = '0.1';

our $RepeatEach = 1;
our $Workers = 1;
our $MasterProcess = $ENV{TEST_NGINX_MASTER_PROCESS} || 'off';
our $LogLevel = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $NoShuffle = $ENV{TEST_NGINX_NO_SHUFFLE} || 0;
our $NoRootLocation = 0;
our $Timeout = $ENV{TEST_NGINX_TIMEOUT} || 3;
our $ServerPort = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
our $NginxBinary = $ENV{TEST_NGINX_BINARY} || 'nginx';
our $ServRoot = $ENV{TEST_NGINX_SERVROOT} || cwd() . '/t/servroot';
our @BlockPreprocessors;
my $NoPlan = 0;
my @Blocks;

my @EXPORTS = qw(run_tests repeat_each workers master_on master_off log_level no_shuffle
    add_block_preprocessor blocks no_long_string no_root_location plan server_port);

sub import {
    my ($class, @args) = @_;
    my $caller = caller;
    no strict 'refs';
    *{"${caller}::$_"} = \&{$_} for @EXPORTS;
    if (@args && $args[0] eq 'no_plan') {
        $NoPlan = 1;
    } elsif (@args && $args[0] eq 'tests') {
        Test::More::plan(tests => $args[1]);
    }
}

sub plan { Test::More::plan(@_) }
sub repeat_each { $RepeatEach = shift if @_; $RepeatEach }
sub workers { $Workers = shift if @_; $Workers }
sub master_on { $MasterProcess = 'on' }
sub master_off { $MasterProcess = 'off' }
sub log_level { $LogLevel = shift if @_; $LogLevel }
sub no_shuffle { $NoShuffle = 1 }
sub no_long_string { }
sub no_root_location { $NoRootLocation = 1 }
sub server_port { $ServerPort = shift if @_; $ServerPort }
sub add_block_preprocessor (&) { unshift @BlockPreprocessors, shift }

sub blocks {
    @Blocks = parse_blocks() unless @Blocks;
    return @Blocks;
}

# --- Test::Base data ---------------------------------------------------------------------------

sub parse_blocks {
    my $data = do { local $/; my $fh = \*main::DATA; <$fh> } // '';
    my @blocks;
    for my $chunk (split /^(?====[ \t])/m, $data) {
        next unless $chunk =~ s/\A===[ \t]*(.*?)[ \t]*\n//;
        my $block = Test::Nginx::Socket::Lua::Block->new($1);
        for my $section (split /^(?=--- )/m, $chunk) {
            next unless $section =~ s/\A--- (\w+)(.*)\n?//;
            my ($name, $rest) = ($1, $2);
            my ($value, @filters);
            if ($rest =~ /\A\s*:\s*(.*?)\s*\z/) {
                $value = $1;
            } else {
                @filters = split ' ', $rest;
                $value = $section;
                $value =~ s/\A([ \t]*\n)+//;
                $value =~ s/(?<=\n)\s*\z//;
            }
            for my $filter (@filters) {
                if ($filter eq 'chomp') {
                    chomp $value;
                } elsif ($filter eq 'eval') {
                    $value = eval "package main; no strict; $value";
                    die "TEST $block->{name}: --- $name eval: $@" if $@;
                } else {
                    die "TEST $block->{name}: unsupported filter '$filter' in --- $name\n";
                }
            }
            $block->set_value($name, $value);
        }
        push @blocks, $block;
    }
    return @blocks;
}

# --- nginx -------------------------------------------------------------------------------------

sub expand_env {
    my $text = shift;
    return $text unless defined $text;
    $text =~ s/\$(TEST_NGINX_[_A-Z0-9]+)/
        defined $ENV{$1} ? $ENV{$1} : die "environment variable $1 not set\n"/ge;
    return $text;
}

sub nginx_pid {
    open my $fh, '<', "$ServRoot/logs/nginx.pid" or return;
    my $pid = <$fh>;
    return unless defined $pid && $pid =~ /(\d+)/;
    return $1;
}

# A daemon is reparented to PID 1, which may reap it late: a zombie has exited.
sub is_running {
    my $pid = shift;
    return 0 unless kill 0, $pid;
    open my $fh, '<', "/proc/$pid/stat" or return 0;
    my $stat = <$fh> // '';
    return $stat !~ /^\d+ \(.*\) Z/;
}

# Generous waits: they end as soon as nginx is up or gone, and nginx under valgrind
# (TEST_NGINX_BINARY set to a wrapper) starts and exits slowly.
sub stop_nginx {
    my $pid = nginx_pid() or return;
    kill 'QUIT', $pid;
    for (1 .. 600) {
        return unless is_running($pid);
        sleep 0.05;
    }
    kill 'KILL', $pid;
    sleep 0.1;
}

sub write_config {
    my $block = shift;
    remove_tree("$ServRoot/conf", "$ServRoot/html", "$ServRoot/logs");
    remove_tree(glob "$ServRoot/*_temp");
    make_path("$ServRoot/conf", "$ServRoot/html", "$ServRoot/logs");
    open my $index, '>', "$ServRoot/html/index.html" or die $!;
    print $index '<html><head><title>It works!</title></head><body>It works!</body></html>';
    close $index;

    my $load_modules = join '', map { "load_module $_;\n" }
        split ' ', ($ENV{TEST_NGINX_LOAD_MODULES} || '');
    my $user = $> == 0 ? "user root;\n" : '';
    my $main = expand_env($block->main_config // '');
    my $http = expand_env($block->http_config // '');
    my $config = expand_env($block->config // '');
    my $root_location = $NoRootLocation ? '' : <<_EOC_;
        location / {
            root $ServRoot/html;
            index index.html index.htm;
        }
_EOC_

    open my $out, '>', "$ServRoot/conf/nginx.conf" or die $!;
    print $out <<_EOC_;
worker_processes $Workers;
daemon on;
master_process $MasterProcess;
error_log $ServRoot/logs/error.log $LogLevel;
pid $ServRoot/logs/nginx.pid;
$load_modules
$main
$user
http {
    access_log $ServRoot/logs/access.log;
    client_body_temp_path $ServRoot/client_body_temp;
    proxy_temp_path $ServRoot/proxy_temp;
    fastcgi_temp_path $ServRoot/fastcgi_temp;
    uwsgi_temp_path $ServRoot/uwsgi_temp;
    scgi_temp_path $ServRoot/scgi_temp;
    default_type text/plain;
    keepalive_timeout 68000ms;

$http

    server {
        listen $ServerPort;
        server_name 'localhost';
        client_max_body_size 30M;

$config

$root_location
    }
}

events {
    accept_mutex off;
    worker_connections 64;
}
_EOC_
    close $out;
}

sub start_nginx {
    my $name = shift;
    my $cmd = "$NginxBinary -p $ServRoot/ -c $ServRoot/conf/nginx.conf";
    if (system($cmd) != 0) {
        Test::More::fail("$name - nginx started");
        Test::More::diag(`cat $ServRoot/logs/error.log 2>/dev/null`);
        return 0;
    }
    for (1 .. 600) {
        my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $ServerPort);
        return 1 if $sock;
        sleep 0.05;
    }
    Test::More::fail("$name - nginx listens on $ServerPort");
    return 0;
}

# --- HTTP --------------------------------------------------------------------------------------

sub build_request {
    my ($line, $headers, $last) = @_;
    $line = expand_env($line);
    $line =~ s/\A\s+//;
    $line =~ s/\s+\z//;
    my ($first, $body) = split /\n/, $line, 2;
    $first .= ' HTTP/1.1' unless $first =~ m{ HTTP/\d\.\d\z};
    my $req = "$first\r\nHost: localhost\r\n";
    $req .= "Connection: close\r\n" if $last;
    for my $h (split /\n/, expand_env($headers // '')) {
        $req .= "$h\r\n" if $h =~ /\S/;
    }
    if (defined $body && length $body) {
        $req .= 'Content-Length: ' . length($body) . "\r\n";
    }
    $req .= "\r\n";
    $req .= $body if defined $body;
    return $req;
}

# Reads one response from $buf (refilled from $sock as needed): (code, body) or () on timeout.
sub read_response {
    my ($sock, $buf, $timeout) = @_;
    my $deadline = time + $timeout;
    my $fill = sub {
        my $left = $deadline - time;
        return 0 if $left <= 0;
        return 0 unless IO::Select->new($sock)->can_read($left);
        my $n = sysread($sock, my $chunk, 65536);
        return 0 unless $n;
        $$buf .= $chunk;
        return 1;
    };
    until ($$buf =~ /\r\n\r\n/) { $fill->() or return }
    $$buf =~ s/\A(.*?)\r\n\r\n//s;
    my $head = $1;
    my ($code) = $head =~ m{\AHTTP/\d\.\d (\d+)} or return;
    my $body = '';
    if ($head =~ /^Transfer-Encoding:\s*chunked/mi) {
        while (1) {
            until ($$buf =~ /\r\n/) { $fill->() or return }
            $$buf =~ s/\A([0-9a-fA-F]+)[^\r\n]*\r\n// or return;
            my $size = hex $1;
            until (length($$buf) >= $size + 2) { $fill->() or return }
            $body .= substr($$buf, 0, $size);
            substr($$buf, 0, $size + 2) = '';
            if ($size == 0) { last }
        }
    } elsif ($head =~ /^Content-Length:\s*(\d+)/mi) {
        my $len = $1;
        until (length($$buf) >= $len) { $fill->() or return }
        $body = substr($$buf, 0, $len);
        substr($$buf, 0, $len) = '';
    } else {
        while ($fill->()) { }
        $body = $$buf;
        $$buf = '';
    }
    return ($code, $body);
}

# Sends the requests of one connection; returns a list of [code, body] (undef code on failure).
sub send_requests {
    my ($requests, $headers, $timeout) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $ServerPort,
                                     Timeout => $timeout)
        or return map { [undef, "connect failed: $!"] } @$requests;
    my $payload = '';
    for my $i (0 .. $#$requests) {
        $payload .= build_request($requests->[$i], $headers, $i == $#$requests);
    }
    print $sock $payload;
    my $buf = '';
    my @responses;
    for (@$requests) {
        my ($code, $body) = read_response($sock, \$buf, $timeout);
        push @responses, [$code, $body];
    }
    close $sock;
    return @responses;
}

# --- checks ------------------------------------------------------------------------------------

sub nth {
    my ($value, $i) = @_;
    return ref $value eq 'ARRAY' ? $value->[$i] : $value;
}

sub log_patterns {
    my $value = shift;
    return () unless defined $value;
    return @$value if ref $value eq 'ARRAY';
    return ($value) if ref $value eq 'Regexp';
    return grep { length } split /\n/, $value;
}

sub run_block {
    my $block = shift;
    my $name = $block->name;
    stop_nginx();
    write_config($block);
    return unless start_nginx($name);

    my $timeout = $block->timeout // $Timeout;
    my @responses;
    if (defined $block->pipelined_requests) {
        @responses = send_requests($block->pipelined_requests, $block->more_headers, $timeout);
    } else {
        my $requests = $block->request;
        my @requests = ref $requests eq 'ARRAY' ? @$requests : ($requests);
        for my $i (0 .. $#requests) {
            push @responses,
                send_requests([$requests[$i]], nth($block->more_headers, $i), $timeout);
        }
    }

    for my $i (0 .. $#responses) {
        my ($code, $body) = @{ $responses[$i] };
        my $expected_code = nth($block->error_code, $i) // 200;
        Test::More::is($code, $expected_code, "$name - status code ok");
        if (defined $block->response_body) {
            Test::More::is($body, nth($block->response_body, $i), "$name - response_body - response is expected");
        }
        if (defined $block->response_body_like) {
            my $pattern = nth($block->response_body_like, $i);
            Test::More::like($body // '', ref $pattern ? $pattern : qr/$pattern/s,
                "$name - response_body_like - response is expected");
        }
    }

    sleep($block->wait) if $block->wait;
    sleep 0.15;
    my $log = '';
    # The log was wiped before this block's nginx started, so it holds exactly this block's lines,
    # start-up included.
    if (open my $fh, '<', "$ServRoot/logs/error.log") {
        local $/;
        $log = <$fh> // '';
    }
    for my $pattern (log_patterns($block->error_log)) {
        my $found = ref $pattern ? $log =~ $pattern : index($log, $pattern) >= 0;
        Test::More::ok($found, "$name - pattern \"$pattern\" matches a line in error.log");
    }
    for my $pattern (log_patterns($block->no_error_log)) {
        my $found = ref $pattern ? $log =~ $pattern : index($log, $pattern) >= 0;
        Test::More::ok(!$found, "$name - pattern \"$pattern\" should not match any line in error.log");
        Test::More::diag(join '', grep { ref $pattern ? /$pattern/ : index($_, $pattern) >= 0 }
                         split /^/, $log) if $found;
    }
}

sub run_tests {
    $ENV{TEST_NGINX_SERVER_PORT} //= $ServerPort;
    my @all = blocks();
    for my $block ($NoShuffle ? @all : shuffle @all) {
        for my $preprocessor (@BlockPreprocessors) {
            my $result = $preprocessor->($block);
            $block = $result if ref $result && $result->isa('Test::Nginx::Socket::Lua::Block');
        }
        run_block($block) for 1 .. $RepeatEach;
    }
    stop_nginx() unless $ENV{TEST_NGINX_NO_CLEAN};
    Test::More::done_testing() if $NoPlan;
}

package Test::Nginx::Socket::Lua::Block;

# A block's sections, with Test::Base's interface: an accessor per section (undef when absent),
# name, and set_value.

sub new {
    my ($class, $name) = @_;
    return bless { name => $name }, $class;
}

sub name { $_[0]{name} }

sub set_value {
    my ($self, $section, $value) = @_;
    $self->{sections}{$section} = $value;
}

our $AUTOLOAD;

sub AUTOLOAD {
    my $self = shift;
    (my $section = $AUTOLOAD) =~ s/.*:://;
    return if $section eq 'DESTROY';
    return $self->{sections}{$section};
}

1;
