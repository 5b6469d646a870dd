# TLS (rediss://): a CA the file generates with openssl, a client certificate for servers that
# ask for one, and the failures an operator meets: a CA that did not sign the server's
# certificate (from the start, or after the server's certificate is replaced), a missing client
# certificate, bad files. gray reads through TLS replicas of the file's Redis, so the usual
# `--- redis` set-up and writes on the master reach it; the replicas' plain ports are for control.
use lib '.';
use t::Gray;
use Test::Nginx::Socket::Lua 'no_plan';
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep);

my $Dir = tempdir('gray-tls-XXXXXX', TMPDIR => 1, CLEANUP => 1);

sub openssl { system("openssl @_ >/dev/null 2>&1") == 0 or die "openssl @_ failed" }

# A CA, a server certificate for 127.0.0.1 and ::1 signed by it, a client certificate, and a
# second CA with a server certificate of its own (what gray must refuse).
for my $ca ('ca', 'other-ca') {
    openssl("req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=$ca -keyout $Dir/$ca.key -out $Dir/$ca.pem");
}
sub signed {
    my ($name, $ca, $extensions) = @_;
    open my $ext, '>', "$Dir/$name.ext" or die $!;
    print $ext "$extensions\n";
    close $ext;
    openssl("req -newkey rsa:2048 -nodes -subj /CN=$name -keyout $Dir/$name.key -out $Dir/$name.csr");
    openssl("x509 -req -days 2 -in $Dir/$name.csr -CA $Dir/$ca.pem -CAkey $Dir/$ca.key"
            . " -CAcreateserial -out $Dir/$name.pem -extfile $Dir/$name.ext");
}
signed('server', 'ca', 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost');
signed('other-server', 'other-ca', 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost');
signed('client', 'ca', 'extendedKeyUsage=clientAuth');
# Signed by gray's CA, but for another host name than the one gray connects to.
signed('other-name', 'ca', 'subjectAltName=DNS:other.example');

my @Tls = ('--tls-cert-file', "$Dir/server.pem", '--tls-key-file', "$Dir/server.key",
           '--tls-ca-cert-file', "$Dir/ca.pem");
# TLS replicas of the file's Redis: one that takes clients without a certificate, one that asks.
my ($Plain, $TlsPort) = (t::Gray::free_port(), t::Gray::free_port());
my ($MutualPlain, $MutualTls) = (t::Gray::free_port(), t::Gray::free_port());
for ([$Plain, $TlsPort, 'optional'], [$MutualPlain, $MutualTls, 'yes']) {
    my ($plain, $tls, $clients) = @$_;
    t::Gray::start_redis($Dir, $plain, '--tls-port', $tls, @Tls, '--tls-auth-clients', $clients,
                         '--replicaof', '127.0.0.1', $ENV{TEST_NGINX_REDIS_PORT});
}
# A master over TLS alone, and a sentinel over TLS watching it, with a password of its own.
my ($Master, $MasterTls, $Sentinel) = map { t::Gray::free_port() } 1 .. 3;
t::Gray::start_redis($Dir, $Master, '--tls-port', $MasterTls, @Tls, '--tls-auth-clients', 'optional');
open my $conf, '>', "$Dir/sentinel.conf" or die $!;
print $conf "port 0\ntls-port $Sentinel\ntls-replication yes\ntls-auth-clients optional\nrequirepass sentinel-secret\n",
            "tls-cert-file $Dir/server.pem\ntls-key-file $Dir/server.key\ntls-ca-cert-file $Dir/ca.pem\n",
            "sentinel monitor grays 127.0.0.1 $MasterTls 1\n";
close $conf;
system('redis-sentinel', "$Dir/sentinel.conf", '--bind', '127.0.0.1', '--daemonize', 'yes',
       '--pidfile', "$Dir/sentinel.pid", '--logfile', "$Dir/sentinel.log", '--dir', $Dir) == 0
    or die "cannot start redis-sentinel: $?";

# A TLS server whose certificate names another host.
my ($OtherName, $OtherNameTls) = (t::Gray::free_port(), t::Gray::free_port());
t::Gray::start_redis($Dir, $OtherName, '--tls-port', $OtherNameTls, '--tls-cert-file', "$Dir/other-name.pem",
                     '--tls-key-file', "$Dir/other-name.key", '--tls-ca-cert-file', "$Dir/ca.pem",
                     '--tls-auth-clients', 'no');

t::Gray::replica_synced($_) or die "the TLS replica on $_ did not sync" for $Plain, $MutualPlain;

$ENV{TEST_NGINX_TLS_DIR} = $Dir;
$ENV{TEST_NGINX_TLS_PORT} = $TlsPort;
$ENV{TEST_NGINX_TLS_CONTROL} = $Plain;
$ENV{TEST_NGINX_MUTUAL_TLS_PORT} = $MutualTls;
$ENV{TEST_NGINX_TLS_MASTER} = $MasterTls;
$ENV{TEST_NGINX_TLS_MASTER_CONTROL} = $Master;
$ENV{TEST_NGINX_TLS_SENTINEL} = $Sentinel;
$ENV{TEST_NGINX_TLS_OTHER_NAME} = $OtherNameTls;

END {
    system("redis-cli --tls --cacert $Dir/ca.pem -p $Sentinel -a sentinel-secret --no-auth-warning shutdown nosave >/dev/null 2>&1")
        if $Sentinel;
}

add_block_preprocessor(\&gray_block);
run_tests();

__DATA__

=== TEST 1: rediss:// with the CA that signed the server: loads, tracks, and a plain SET on the master is seen at once
--- redis
SET gray 127.0.0.9
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "rediss://127.0.0.1:$TEST_NGINX_TLS_PORT/0",
            tls_ca = "$TEST_NGINX_TLS_DIR/ca.pem", refresh = 60,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            T.wait_for(function() return gray.status().entries == 1 end, 2)
            local s = gray.status()
            ngx.say((gray.decide()), " tracking=", s.tracking, " redis=", (s.redis:gsub(":%d+/", ":PORT/")))
            T.redis("set", "gray", "127.0.0.1")
            ngx.say("written on the master: ", (T.wait_for(function() return gray.decide() == "@prod2-grey" end, 0.5)))
        }
    }
--- response_body
@prod1 tracking=true redis=rediss://127.0.0.1:PORT/0
written on the master: true
--- no_error_log
[warn]



=== TEST 2: mutual TLS: a server that asks for a client certificate takes tls_cert and tls_key
--- redis
SET gray 127.0.0.1
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "rediss://127.0.0.1:$TEST_NGINX_MUTUAL_TLS_PORT/0",
            tls_ca = "$TEST_NGINX_TLS_DIR/ca.pem",
            tls_cert = "$TEST_NGINX_TLS_DIR/client.pem", tls_key = "$TEST_NGINX_TLS_DIR/client.key",
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            ngx.say("loaded: ", (T.wait_for(function() return gray.decide() == "@prod2-grey" end, 2)))
            ngx.say("tracking=", gray.status().tracking)
        }
    }
--- response_body
loaded: true
tracking=true
--- no_error_log
[warn]



=== TEST 3: the same server without a client certificate: refused, said in the log, requests to prod
--- redis
SET gray 127.0.0.1
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "rediss://127.0.0.1:$TEST_NGINX_MUTUAL_TLS_PORT/0", tls_ca = "$TEST_NGINX_TLS_DIR/ca.pem",
        }
    }
--- config
    location = /t { content_by_lua_block { ngx.sleep(0.3) require("gray").route() } }
--- response_body
prod
--- error_log eval
qr/\[error\].*gray: failed to connect to redis: TLS: received fatal alert: CertificateRequired/
--- allowed_errors
failed to connect to redis: TLS: received fatal alert: CertificateRequired



=== TEST 4: a CA that did not sign the server's certificate: refused with the reason, requests to prod
--- redis
SET gray 127.0.0.1
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "rediss://127.0.0.1:$TEST_NGINX_TLS_PORT/0", tls_ca = "$TEST_NGINX_TLS_DIR/other-ca.pem",
        }
    }
--- config
    location = /t { content_by_lua_block { ngx.sleep(0.3) require("gray").route() } }
--- response_body
prod
--- error_log eval
qr/\[error\].*gray: failed to connect to redis: TLS handshake: invalid peer certificate: UnknownIssuer/
--- allowed_errors
failed to connect to redis: TLS handshake: invalid peer certificate: UnknownIssuer



=== TEST 5: the server's certificate replaced by one gray's CA did not sign: the reconnect is refused, the last good list kept
--- main_config
env TEST_NGINX_TLS_DIR;
env TEST_NGINX_TLS_CONTROL;
--- redis
SET gray 127.0.0.1
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "rediss://127.0.0.1:$TEST_NGINX_TLS_PORT/0",
            tls_ca = "$TEST_NGINX_TLS_DIR/ca.pem", refresh = 0.1,
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local dir, control = os.getenv("TEST_NGINX_TLS_DIR"), os.getenv("TEST_NGINX_TLS_CONTROL")
            ngx.say("loaded: ", (T.wait_for(function() return gray.decide() == "@prod2-grey" end, 2)))
            assert(T.redis_at(control, "config", "set", "tls-cert-file", dir .. "/other-server.pem",
                              "tls-key-file", dir .. "/other-server.key"))
            assert(T.redis_at(control, "client", "kill", "type", "pubsub"))
            assert(T.redis_at(control, "client", "kill", "type", "normal"))
            T.redis("set", "gray", "127.0.0.2")
            ngx.say("refused: ", (T.wait_for(function() return gray.status().redis_connected == false end, 2)))
            ngx.sleep(0.3)
            ngx.say("still by the last list: ", (gray.decide()))
            assert(T.redis_at(control, "config", "set", "tls-cert-file", dir .. "/server.pem",
                              "tls-key-file", dir .. "/server.key"))
            ngx.say("the server's own certificate back: ",
                    (T.wait_for(function() return gray.decide() == "@prod1" end, 2)))
        }
    }
--- response_body
loaded: true
refused: true
still by the last list: @prod2-grey
the server's own certificate back: true
--- error_log eval
qr/\[error\].*gray: failed to connect to redis: TLS handshake: invalid peer certificate: UnknownIssuer/
--- allowed_errors
unexpected end of file
failed to connect to redis: TLS handshake: invalid peer certificate: UnknownIssuer



=== TEST 6: a sentinel over TLS, with a password of its own, names a master over TLS
--- main_config
env TEST_NGINX_TLS_MASTER;
env TEST_NGINX_TLS_MASTER_CONTROL;
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "rediss://127.0.0.1:6379/0", tls_ca = "$TEST_NGINX_TLS_DIR/ca.pem",
            sentinels = { "127.0.0.1:$TEST_NGINX_TLS_SENTINEL" }, sentinel_master = "grays",
            sentinel_password = "sentinel-secret",
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            assert(T.redis_at(os.getenv("TEST_NGINX_TLS_MASTER_CONTROL"), "set", "gray", "127.0.0.1"))
            ngx.say("loaded: ", (T.wait_for(function() return gray.decide() == "@prod2-grey" end, 2)))
            local s = gray.status()
            ngx.say("node is the TLS port: ", s.redis_node == "127.0.0.1:" .. os.getenv("TEST_NGINX_TLS_MASTER"))
        }
    }
--- response_body
loaded: true
node is the TLS port: true
--- no_error_log
[warn]



=== TEST 7: grayctl over TLS through the sentinel: its change reaches the gateway; a wrong CA is unreachable (exit code 3), a wrong sentinel password refused (1)
--- main_config
env TEST_NGINX_TLS_DIR;
env TEST_NGINX_TLS_SENTINEL;
env TEST_NGINX_TLS_MASTER_CONTROL;
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "rediss://127.0.0.1:6379/0", tls_ca = "$TEST_NGINX_TLS_DIR/ca.pem",
            sentinels = { "127.0.0.1:$TEST_NGINX_TLS_SENTINEL" }, sentinel_master = "grays",
            sentinel_password = "sentinel-secret",
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local gray, T = require "gray", require "gray_test"
            local dir = os.getenv("TEST_NGINX_TLS_DIR")
            local function grayctl(ca, password, args)
                local p = io.popen(os.getenv("TEST_NGINX_GRAY_ROOT") .. "/target/release/grayctl"
                    .. " --redis rediss://127.0.0.1:6379/0 --tls-ca " .. dir .. "/" .. ca
                    .. " --sentinels 127.0.0.1:" .. os.getenv("TEST_NGINX_TLS_SENTINEL")
                    .. " --sentinel-master grays --sentinel-password " .. password .. " " .. args
                    .. " 2>&1; echo rc=$?")
                local out = p:read("*a")
                p:close()
                return (out:gsub(dir:gsub("%p", "%%%0"), "DIR"))
            end
            -- The TLS master is not the file's Redis, which each block empties: start it afresh.
            assert(T.redis_at(os.getenv("TEST_NGINX_TLS_MASTER_CONTROL"), "set", "gray", "127.0.0.1"))
            T.wait_for(function() return gray.status().entries == 1 end, 2)
            ngx.say("before: ", (gray.decide()))
            ngx.print(grayctl("ca.pem", "sentinel-secret", "add 127.0.0.3 -m tls"))
            ngx.say("seen: ", (T.wait_for(function() return gray.decide() == "@prod2-grey" end, 1)))
            ngx.print(grayctl("other-ca.pem", "sentinel-secret", "list"))
            ngx.print(grayctl("ca.pem", "wrong", "list"))
        }
    }
--- more_headers
X-Client: 127.0.0.3
--- response_body_like
^before: \@prod1
gray: 1 -> 2 entries \(string\)
rc=0
seen: true
grayctl: redis unreachable: no node of "grays" to read from: sentinel 127.0.0.1:\d+: TLS handshake: invalid peer certificate: UnknownIssuer
rc=3
grayctl: no node of "grays" to read from: sentinel 127.0.0.1:\d+: WRONGPASS [^\n]*
rc=1
--- no_error_log
[warn]



=== TEST 8: a wrong sentinel password: said in the log, requests to prod
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "rediss://127.0.0.1:6379/0", tls_ca = "$TEST_NGINX_TLS_DIR/ca.pem",
            sentinels = { "127.0.0.1:$TEST_NGINX_TLS_SENTINEL" }, sentinel_master = "grays",
            sentinel_password = "wrong",
        }
    }
--- config
    location = /t { content_by_lua_block { ngx.sleep(0.3) require("gray").route() } }
--- response_body
prod
--- error_log eval
qr/\[error\].*gray: failed to connect to redis: no node of "grays" to read from: sentinel 127\.0\.0\.1:\d+: WRONGPASS/
--- allowed_errors
WRONGPASS invalid username-password pair



=== TEST 9: bad TLS options are errors of configure naming the option
--- http_config
    init_by_lua_block {
        local gray, errors = require "gray", {}
        local dir, url = "$TEST_NGINX_TLS_DIR", "rediss://127.0.0.1:$TEST_NGINX_TLS_PORT/0"
        for _, opts in ipairs{
            { redis = url, tls_ca = dir .. "/missing.pem" },
            { redis = url, tls_ca = dir .. "/client.key" },
            { redis = url, tls_ca = dir .. "/ca.pem", tls_cert = dir .. "/client.pem" },
            { redis = url, tls_ca = dir .. "/ca.pem", tls_cert = dir .. "/client.pem", tls_key = dir .. "/server.key" },
            { redis = "redis://127.0.0.1:$TEST_NGINX_TLS_PORT/0", tls_ca = dir .. "/ca.pem" },
            { redis = url .. "#insecure" },
        } do
            local ok, err = pcall(gray.configure, opts)
            errors[#errors + 1] = ok and "accepted" or (err:gsub((dir:gsub("%p", "%%%0")), "DIR"))
        end
        package.loaded.tls_errors = errors
    }
--- config
    location = /t {
        content_by_lua_block {
            for _, err in ipairs(require "tls_errors") do ngx.say(err) end
        }
    }
--- response_body
opts.tls_ca: DIR/missing.pem: I/O error: No such file or directory (os error 2)
opts.tls_ca: DIR/client.key holds no PEM certificate
opts.tls_cert needs opts.tls_key
opts.tls_cert and opts.tls_key: keys may not be consistent: KeyMismatch
opts.tls_ca needs a rediss:// URL in opts.redis
opts.redis: a rediss:// URL takes no #fragment (#insecure is not offered: give the server's CA as opts.tls_ca)



=== TEST 10: a certificate signed by the right CA for another host name: refused, naming why, requests to prod
--- redis
SET gray 127.0.0.1
--- http_config
    init_worker_by_lua_block {
        require("gray").configure{
            redis = "rediss://127.0.0.1:$TEST_NGINX_TLS_OTHER_NAME/0", tls_ca = "$TEST_NGINX_TLS_DIR/ca.pem",
        }
    }
--- config
    location = /t { content_by_lua_block { ngx.sleep(0.3) require("gray").route() } }
--- response_body
prod
--- error_log eval
qr/\[error\].*gray: failed to connect to redis: TLS handshake: invalid peer certificate: certificate not valid for name "127\.0\.0\.1"; certificate is only valid for .*other\.example/
--- allowed_errors
invalid peer certificate: certificate not valid for name "127.0.0.1"
