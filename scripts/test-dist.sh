#!/bin/sh
# make test-dist: builds the portable tarball and proves it: no binary in it needs a glibc newer
# than 2.28 (the symbol versions objdump reads), the module exports luaopen_gray, grayctl runs,
# and Debian's nginx loads the module and routes by a real list in Redis (scripts/route-check.sh).
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
for f in prometheus/gray.rules.yml grafana/gray.json; do
    test -f "$dir/share/gray/$f" || fail "the tarball lacks share/gray/$f"
done

modules="load_module /usr/lib/nginx/modules/ndk_http_module.so; load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"
"$top/scripts/route-check.sh" test-dist "$scratch/run" nginx "$modules" "$dir/lib/lua/5.1/?.so;;" \
    "$dir/share/gray/route.lua" "$so"
echo "test-dist: $(basename "$tarball") ($(du -k "$tarball" | cut -f1) KiB): Debian's nginx loads its gray.so and routes"
