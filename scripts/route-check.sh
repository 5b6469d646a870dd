#!/bin/sh
# Proves an installed gray end to end: `route-check.sh NAME DIR NGINX LOAD_MODULES CPATH ROUTE_LUA SO`
# starts a private redis-server whose whitelist holds 127.0.0.1 and an nginx (binary NGINX, the
# load_module lines LOAD_MODULES, lua_package_cpath CPATH or none when empty) whose gray reads it;
# then `require "gray"` must come from SO, ROUTE_LUA must send this client to the gray location,
# and, once the list is emptied (a plain DEL, seen by tracking), to production. Everything lives in
# DIR and is stopped on the way out. Used by test-deb.sh and test-dist.sh.
set -eu

name=$1 dir=$2 nginx=$3 load_modules=$4 cpath=$5 route_lua=$6 so=$7
fail() { echo "$name: $*" >&2; [ -f "$dir/nginx/logs/error.log" ] && cat "$dir/nginx/logs/error.log" >&2; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

redis_port=$(free_port)
port=$(free_port)
mkdir -p "$dir/redis" "$dir/nginx/logs"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$dir/redis/redis.pid" --logfile "$dir/redis/redis.log" --dir "$dir/redis" >/dev/null
stop() {
    [ -f "$dir/nginx/nginx.pid" ] && "$nginx" -p "$dir/nginx/" -c "$dir/nginx/nginx.conf" -s quit 2>/dev/null
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
    i=0
    while [ -f "$dir/nginx/nginx.pid" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
}
trap stop EXIT
i=0
until redis-cli -p "$redis_port" set gray 127.0.0.1 >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 100 ] || fail "redis-server did not start"; sleep 0.05
done

cpath_line=""
[ -n "$cpath" ] && cpath_line="lua_package_cpath \"$cpath\";"
cat > "$dir/nginx/nginx.conf" <<EOC
$load_modules
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/logs/error.log notice;
events {}
http {
    access_log off;
    client_body_temp_path $dir/nginx/client_body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    $cpath_line
    init_by_lua_block { require "gray" }
    init_worker_by_lua_block { require("gray").configure{ redis = "redis://127.0.0.1:$redis_port/0" } }
    server {
        listen 127.0.0.1:$port;
        location = /which { content_by_lua_block { ngx.say(package.searchpath("gray", package.cpath)) } }
        location / { content_by_lua_file $route_lua; }
        location @prod1 { return 200 "prod\\n"; }
        location @prod2-grey { return 200 "gray\\n"; }
    }
}
EOC
"$nginx" -p "$dir/nginx/" -c "$dir/nginx/nginx.conf" || fail "nginx did not start"
which=$(curl -s "http://127.0.0.1:$port/which")
[ "$which" = "$so" ] || fail "nginx loaded gray from \"$which\", not $so"
routed=$(curl -s "http://127.0.0.1:$port/hello")
[ "$routed" = "gray" ] || fail "route.lua sent a whitelisted client to \"$routed\""
redis-cli -p "$redis_port" del gray >/dev/null
i=0
until [ "$(curl -s "http://127.0.0.1:$port/hello")" = "prod" ]; do
    i=$((i + 1)); [ $i -lt 40 ] || fail "the emptied list was not routed by within 2 s"; sleep 0.05
done
grep -q '\[error\]' "$dir/nginx/logs/error.log" && fail "errors in the log"
echo "$name: $nginx loads gray from $so; route.lua routes by the list in Redis, and by its change"
