#!/bin/bash
# `make run`: Redis, the two demo backends and the gateway on loopback, in the foreground.
# Ctrl-C stops all of it.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
gateway_port=${GATEWAY_PORT:-8080}
redis_port=${REDIS_PORT:-6379}
prod_port=${PROD_PORT:-8081}
gray_port=${GRAY_PORT:-8082}
run_dir="$top/.run"

rm -rf "$run_dir"
mkdir -p "$run_dir"

sed -e "s|@RUN_DIR@|$run_dir|g" \
    -e "s|@CPATH@|$top/target/release/lib?.so|g" \
    -e "s|@ROUTE_LUA@|$top/lua/route.lua|g" \
    -e "s|@REDIS_PORT@|$redis_port|g" \
    -e "s|@GATEWAY_PORT@|$gateway_port|g" \
    -e "s|@PROD_PORT@|$prod_port|g" \
    -e "s|@GRAY_PORT@|$gray_port|g" \
    "$top/nginx-conf/demo.conf" > "$run_dir/nginx.conf"

redis_pid=""
nginx_pid=""
stop() {
    trap - INT TERM EXIT
    [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    echo "stopped"
}
trap stop INT TERM EXIT

wait_for_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$run_dir" --logfile "$run_dir/redis.log" &
redis_pid=$!
wait_for_port "$redis_port" || { cat "$run_dir/redis.log" >&2; exit 1; }

nginx -p "$run_dir/" -c "$run_dir/nginx.conf" &
nginx_pid=$!
wait_for_port "$gateway_port"

cat <<MSG

gray demo: gateway on http://127.0.0.1:$gateway_port (backends :$prod_port and :$gray_port), Redis on :$redis_port.
Your client goes to production until its address is in the whitelist. Try, in another terminal:

    curl http://127.0.0.1:$gateway_port/hello
    redis-cli -p $redis_port set gray 127.0.0.1

then curl again (it switches within a second), and 'redis-cli -p $redis_port del gray' to roll back.
What gray sees: curl http://127.0.0.1:$gateway_port/gray/status
Requests and responses per target: curl http://127.0.0.1:$gateway_port/gray/metrics
Ctrl-C stops everything.

MSG
wait "$nginx_pid"
