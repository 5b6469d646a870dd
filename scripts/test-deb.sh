#!/bin/sh
# make test-deb: builds the .deb and proves it. Its contents and control fields; unpacked into a
# scratch root, the module exports luaopen_gray and grayctl runs; then, as root (as make test
# runs) on a machine without lua-gray, a real `apt-get install ./lua-gray_*.deb`: Debian's nginx
# loads `require "gray"` with no lua_package_cpath at all and routes by a real list in Redis, as
# does OpenResty's through the package's link (scripts/route-check.sh); the package is purged after.
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
    ./usr/share/gray/prometheus/gray.rules.yml ./usr/share/gray/grafana/gray.json \
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

# The real install: as root, as `make test` runs.
[ "$(id -u)" -eq 0 ] || fail "not root: the real apt-get install needs root (make test runs as root)"
dpkg-query -W -f='${Status}' lua-gray 2>/dev/null | grep -q "ok installed" \
    && fail "lua-gray is installed on this machine already: purge it first (apt-get purge lua-gray)"
installed=yes
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$deb" >/dev/null \
    || fail "apt-get install $deb failed"
[ "$(/usr/bin/grayctl --version)" = "grayctl $(dpkg-deb -f "$deb" Version)" ] || fail "/usr/bin/grayctl is not this version"
modules="load_module /usr/lib/nginx/modules/ndk_http_module.so; load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"
# Debian's nginx finds it with no lua_package_cpath at all.
"$top/scripts/route-check.sh" test-deb "$scratch/debian" nginx "$modules" "" \
    /usr/share/gray/route.lua "/usr/lib/$triplet/lua/5.1/gray.so"
# OpenResty's nginx through the package's link in /usr/local/openresty/lualib (the OpenResty leg's
# build, made here if it is not yet; its LuaJIT's own default cpath is its build prefix).
vendor="$top/../shared/vendor/openresty"
if [ -d "$vendor" ]; then
    openresty=$("$top/scripts/build-openresty.sh" "$(cd "$vendor" && pwd)" "$top/target/openresty" | tail -n 1)
    "$top/scripts/route-check.sh" test-deb "$scratch/openresty" "$openresty" "" \
        "/usr/local/openresty/lualib/?.so;;" /usr/share/gray/route.lua /usr/local/openresty/lualib/gray.so
else
    echo "test-deb: no OpenResty sources at $vendor: the /usr/local/openresty/lualib link is checked by the listing only"
fi
echo "test-deb: apt-get install ./$(basename "$deb"): grayctl runs; purged on the way out"
