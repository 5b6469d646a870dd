#!/bin/sh
# Builds lua-gray_<version>_<arch>.deb from what `make build` built, the way libnginx-mod-*
# packages ship: the stripped module where Debian's LuaJIT looks (/usr/lib/<triplet>/lua/5.1,
# no lua_package_cpath needed), a link to it where OpenResty's looks (/usr/local/openresty/lualib,
# the tree OpenResty's own packages install to), grayctl, route.lua, the example nginx.conf and
# rule set, the README. Prints the package's path.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/target/deb}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -n 1)
arch=$(dpkg --print-architecture)
triplet=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
name=lua-gray
for f in "$top/target/release/libgray.so" "$top/target/release/grayctl"; do
    [ -f "$f" ] || { echo "package-deb: $f is missing (make build)" >&2; exit 1; }
done

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
lib=$root/usr/lib/$triplet/lua/5.1
doc=$root/usr/share/doc/$name
install -D -s -m 0644 "$top/target/release/libgray.so" "$lib/gray.so"
install -D -s -m 0755 "$top/target/release/grayctl" "$root/usr/bin/grayctl"
install -D -m 0644 "$top/lua/route.lua" "$root/usr/share/gray/route.lua"
install -D -m 0644 "$top/contrib/prometheus/gray.rules.yml" "$root/usr/share/gray/prometheus/gray.rules.yml"
install -D -m 0644 "$top/contrib/grafana/gray.json" "$root/usr/share/gray/grafana/gray.json"
mkdir -p "$root/usr/local/openresty/lualib"
ln -s "/usr/lib/$triplet/lua/5.1/gray.so" "$root/usr/local/openresty/lualib/gray.so"
install -D -m 0644 "$top/README.md" "$doc/README.md"
# The example as installed by this package: route.lua under /usr/share, gray.so on the default path.
sed -e 's|/usr/local/share/gray/route.lua|/usr/share/gray/route.lua|' \
    -e 's|`make install`|the lua-gray package|' \
    -e 's|(gray.so to /usr/local/lib/lua/5.1/, route.lua to /usr/local/share/gray/)|(gray.so to /usr/lib/'"$triplet"'/lua/5.1/, route.lua to /usr/share/gray/)|' \
    "$top/nginx-conf/nginx.conf" > "$root/nginx.conf.example"
install -D -m 0644 "$root/nginx.conf.example" "$doc/examples/nginx.conf"
rm "$root/nginx.conf.example"
install -D -m 0644 "$top/nginx-conf/rules/example.json" "$doc/examples/rules/example.json"
cat > "$doc/copyright" <<EOC
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: gray
Files: *
License: MIT
EOC

glibc=$("$top/scripts/glibc-needed.sh" "$lib/gray.so" "$root/usr/bin/grayctl")
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<EOC
Package: $name
Version: $version
Architecture: $arch
Maintainer: gray developers <gray@localhost>
Installed-Size: $size
Depends: libc6 (>= $glibc), libgcc-s1
Recommends: libnginx-mod-http-lua | openresty
Suggests: redis-server
Section: httpd
Priority: optional
Description: gray (canary) release routing for nginx/OpenResty
 A native Lua module written in Rust: require("gray").route() sends each request
 to the pre-release or the production location by a whitelist and rule set kept
 in memory and refreshed from Redis in the background, so no request touches
 Redis. grayctl operates a rollout: validated edits, explain, history, rollback,
 and which gateways serve the latest change.
EOC
mkdir -p "$out"
deb=$out/${name}_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
