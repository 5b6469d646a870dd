#!/bin/sh
# make test-deb: builds the .deb and proves it. Its contents and control fields; unpacked into a
# scratch root, the module exports luaopen_gray and grayctl runs; then, as root and where no
# lua-gray is installed already, a real `apt-get install ./lua-gray_*.deb`: Debian's nginx
# loads `require "gray"` with no lua_package_cpath at all, and the package is purged after.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
installed=""
cleanup() {
    [ -n "$installed" ] && DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq lua-gray >/dev/null 2>&1
    rm -rf "$scratch"
}
trap cleanup EXIT
fail() { echo "test-deb: $*" >&2; exit 1; }

deb=$("$top/scripts/package-deb.sh" "$scratch/out")
triplet=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
contents=$(dpkg-deb -c "$deb")
for path in "./usr/lib/$triplet/lua/5.1/gray.so" ./usr/bin/grayctl ./usr/share/gray/route.lua \
    ./usr/local/openresty/lualib/gray.so ./usr/share/doc/lua-gray/examples/nginx.conf \
    ./usr/share/doc/lua-gray/examples/rules/example.json ./usr/share/doc/lua-gray/README.md; do
    echo "$contents" | grep -q " $path\( -> .*\)\?$" || fail "$deb lacks $path"
done
depends=$(dpkg-deb -f "$deb" Depends)
echo "$depends" | grep -q '^libc6 (>= 2\.[0-9]*)' || fail "Depends is \"$depends\""

dpkg-deb -x "$deb" "$scratch/root"
so=$scratch/root/usr/lib/$triplet/lua/5.1/gray.so
readelf -S "$so" | grep -q '\.debug_' && fail "gray.so has debug sections"
readelf --dyn-syms "$so" | grep -q ' luaopen_gray$' || fail "gray.so does not export luaopen_gray"
"$scratch/root/usr/bin/grayctl" --version >/dev/null || fail "the packaged grayctl does not run"
grep -q 'content_by_lua_file /usr/share/gray/route.lua' "$scratch/root/usr/share/doc/lua-gray/examples/nginx.conf" \
    || fail "the example nginx.conf does not use the packaged route.lua"
echo "test-deb: $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB): contents, Depends: $depends, unpacked module and grayctl ok"

if [ "$(id -u)" -ne 0 ]; then
    echo "test-deb: not root, the real apt-get install is skipped"
    exit 0
fi
if dpkg-query -W -f='${Status}' lua-gray 2>/dev/null | grep -q "ok installed"; then
    echo "test-deb: lua-gray is installed on this machine already, the real apt-get install is skipped"
    exit 0
fi
installed=yes
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$deb" >/dev/null \
    || fail "apt-get install $deb failed"
/usr/bin/grayctl --version >/dev/null || fail "/usr/bin/grayctl does not run"
# A real nginx (init_by_lua does not run under nginx -t), with no lua_package_cpath.
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
    server {
        listen 127.0.0.1:$port;
        location = /which {
            content_by_lua_block {
                ngx.say(package.searchpath("gray", package.cpath), " ", require("gray")._VERSION)
            }
        }
        location / { content_by_lua_file /usr/share/gray/route.lua; }
        location @prod1 { return 200 "prod\n"; }
        location @prod2-grey { return 200 "gray\n"; }
    }
}
EOC
nginx -p "$scratch/nginx/" -c "$scratch/nginx/nginx.conf" || fail "nginx did not start with the package's gray"
which=$(curl -s "http://127.0.0.1:$port/which")
routed=$(curl -s "http://127.0.0.1:$port/hello")
nginx -p "$scratch/nginx/" -c "$scratch/nginx/nginx.conf" -s quit 2>/dev/null
i=0
while [ -f "$scratch/nginx/nginx.pid" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
[ "$which" = "/usr/lib/$triplet/lua/5.1/gray.so $(dpkg-deb -f "$deb" Version)" ] \
    || { cat "$scratch/nginx/logs/error.log" >&2; fail "nginx loaded gray as \"$which\""; }
# Whatever Redis on the default port says (none: production), a named location answers.
[ "$routed" = "prod" ] || [ "$routed" = "gray" ] || { cat "$scratch/nginx/logs/error.log" >&2; fail "route.lua answered \"$routed\""; }
echo "test-deb: apt-get install ./$(basename "$deb"): grayctl runs; Debian's nginx loads gray from /usr/lib/$triplet/lua/5.1 with no lua_package_cpath and the packaged route.lua routes; purged"
