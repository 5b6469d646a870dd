#!/bin/sh
# make test-dist: builds the portable tarball and proves it: no binary in it needs a glibc newer
# than 2.28 (the symbol versions objdump reads), the module exports luaopen_gray and Debian's
# nginx loads it and routes with it, grayctl runs.
set -eu

MAX_GLIBC=2.28
top=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
# nginx workers run as nobody: they read the unpacked module and route.lua.
chmod 755 "$scratch"
trap 'rm -rf "$scratch"' EXIT
fail() { echo "test-dist: $*" >&2; exit 1; }

tarball=$("$top/scripts/dist.sh")
tar -C "$scratch" -xzf "$tarball"
dir=$(echo "$scratch"/gray-*)
so=$dir/lib/lua/5.1/gray.so
for f in "$so" "$dir/bin/grayctl"; do
    needed=$("$top/scripts/glibc-needed.sh" "$f")
    newest=$(printf '%s\n%s\n' "$needed" "$MAX_GLIBC" | sort -t. -k1,1n -k2,2n | tail -n 1)
    [ "$newest" = "$MAX_GLIBC" ] || fail "$(basename "$f") needs glibc $needed, over $MAX_GLIBC"
    echo "test-dist: $(basename "$f") needs glibc $needed"
done
readelf --dyn-syms "$so" | grep -q ' luaopen_gray$' || fail "gray.so does not export luaopen_gray"
"$dir/bin/grayctl" --version >/dev/null || fail "grayctl does not run"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$scratch/nginx/logs"
cat > "$scratch/nginx/nginx.conf" <<EOC
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
pid $scratch/nginx/nginx.pid;
error_log $scratch/nginx/logs/error.log notice;
events {}
http {
    access_log off;
    lua_package_cpath "$dir/lib/lua/5.1/?.so;;";
    server {
        listen 127.0.0.1:$port;
        location = /which { content_by_lua_block { ngx.say(package.searchpath("gray", package.cpath)) } }
        location / { content_by_lua_file $dir/share/gray/route.lua; }
        location @prod1 { return 200 "prod\\n"; }
        location @prod2-grey { return 200 "gray\\n"; }
    }
}
EOC
nginx -p "$scratch/nginx/" -c "$scratch/nginx/nginx.conf" || fail "nginx did not start"
which=$(curl -s "http://127.0.0.1:$port/which")
routed=$(curl -s "http://127.0.0.1:$port/hello")
nginx -p "$scratch/nginx/" -c "$scratch/nginx/nginx.conf" -s quit 2>/dev/null
i=0
while [ -f "$scratch/nginx/nginx.pid" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
[ "$which" = "$so" ] || { cat "$scratch/nginx/logs/error.log" >&2; fail "nginx found gray at \"$which\""; }
[ "$routed" = "prod" ] || [ "$routed" = "gray" ] || { cat "$scratch/nginx/logs/error.log" >&2; fail "route.lua answered \"$routed\""; }
echo "test-dist: $(basename "$tarball") ($(du -k "$tarball" | cut -f1) KiB): Debian's nginx loads its gray.so and routes"
