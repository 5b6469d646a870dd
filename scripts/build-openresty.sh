#!/bin/sh
# Builds OpenResty's parts (LuaJIT, nginx + ngx_devel_kit + lua-nginx-module, lua-resty-core,
# -lrucache, -redis) from the release tarballs in VENDOR_DIR into OUT_BASE/<key>/; prints the nginx path.
# <key> hashes the tarballs and this script, so a finished build (stamp file) is reused until either changes.
# Usage: scripts/build-openresty.sh VENDOR_DIR OUT_BASE
set -eu

[ $# -eq 2 ] || { echo "usage: $0 VENDOR_DIR OUT_BASE" >&2; exit 2; }
vendor=$(cd "$1" && pwd -P)
mkdir -p "$2"
out_base=$(cd "$2" && pwd -P)

NGINX=nginx-1.29.2 LUA_MOD=lua-nginx-module-0.10.29 NDK=ngx_devel_kit-0.3.4 LUAJIT=luajit2-2.1-20240314
tarballs="$LUA_MOD $NDK $LUAJIT lua-resty-core-0.1.32 lua-resty-lrucache-0.15 lua-resty-redis-0.33 $NGINX"
for t in $tarballs; do
    [ -f "$vendor/$t.tar.gz" ] || { echo "openresty: missing $vendor/$t.tar.gz" >&2; exit 1; }
done

# Separate steps, so set -e catches a failing sha256sum (sh has no pipefail).
sums=$(cd "$vendor" && sha256sum $(for t in $tarballs; do echo "$t.tar.gz"; done | LC_ALL=C sort))
self=$(sha256sum < "$0")
key=$(printf '%s\n%s\n' "$sums" "$self" | sha256sum | cut -c1-16)
final=$out_base/$key
nginx=$final/nginx/sbin/nginx
stamp=$final/.build-complete
if [ -x "$nginx" ] && [ -f "$stamp" ]; then
    echo "openresty: reusing $final" >&2
    echo "$nginx"
    exit 0
fi

missing=""
for p in libpcre2-dev libssl-dev zlib1g-dev make gcc; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    [ "$(id -u)" -eq 0 ] || { echo "openresty: missing Debian packages:$missing (run as root, or install them)" >&2; exit 1; }
    echo "openresty: installing$missing" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

log=$out_base/build-$key.log
tmp=$(mktemp -d "$out_base/.build-XXXXXX")
placed=""
exec 4>&2
cleanup() {
    rc=$?; set +x
    rm -rf "$tmp"
    if [ $rc -ne 0 ]; then
        [ -z "$placed" ] || rm -rf "$final"
        echo "openresty: build FAILED (rc=$rc), last lines of $log:" >&4
        tail -n 40 "$log" >&4 || true
    fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

echo "openresty: building $NGINX + $LUA_MOD + $LUAJIT into $final (~1 min, log: $log)" >&2
exec 3>&1 >"$log" 2>&1
set -x

cd "$tmp"
for t in $tarballs; do tar xzf "$vendor/$t.tar.gz"; done
# Everything installs with DESTDIR into a stage under $tmp, baking in the final paths, then one mv puts it in place.
stage=$tmp/stage
lj=$final/luajit

(cd $LUAJIT && make -j2 PREFIX="$lj" && make install PREFIX="$lj" DESTDIR="$stage")

# A git-tree export of nginx has auto/configure instead of ./configure; it runs from the top dir either way.
cd $NGINX
configure=./configure
[ -x "$configure" ] || configure=auto/configure
LUAJIT_LIB=$stage$lj/lib LUAJIT_INC=$stage$lj/include/luajit-2.1 LD_LIBRARY_PATH=$stage$lj/lib \
    $configure --prefix="$final/nginx" --with-ld-opt="-Wl,-rpath,$lj/lib" \
    --with-pcre --with-http_realip_module --with-http_ssl_module --with-stream \
    --add-module="$tmp/$NDK" --add-module="$tmp/$LUA_MOD"
make -j2
make install DESTDIR="$stage"
cd "$tmp"

for m in lua-resty-core-0.1.32 lua-resty-lrucache-0.15; do
    make -C $m install LUA_LIB_DIR="$lj/share/lua/5.1" DESTDIR="$stage"
done
install -m 644 lua-resty-redis-0.33/lib/resty/redis.lua "$stage$lj/share/lua/5.1/resty/redis.lua"

rm -rf "$final"
placed=1
mv -T "$stage$final" "$final"

# Verify in place: nginx runs, and resty.core / resty.redis load from LuaJIT's default package.path.
"$nginx" -V
smoke=$tmp/smoke
mkdir -p "$smoke/conf" "$smoke/logs"
cat > "$smoke/conf/nginx.conf" <<EOF
pid logs/nginx.pid;
error_log logs/error.log;
events {}
http {
    client_body_temp_path tmp_client_body;
    proxy_temp_path tmp_proxy;
    fastcgi_temp_path tmp_fastcgi;
    uwsgi_temp_path tmp_uwsgi;
    scgi_temp_path tmp_scgi;
    init_by_lua_block {
        require "resty.core"
        require "resty.redis"
        assert(package.searchpath("resty.redis", package.path):find("$lj/", 1, true), package.path)
    }
}
EOF
"$nginx" -t -p "$smoke" -c conf/nginx.conf

date -u +%FT%TZ > "$stamp"
set +x
exec 1>&3 2>&4
echo "openresty: built $final" >&2
echo "$nginx"
