#!/bin/sh
# make dist: a portable tarball whose binaries need at most glibc 2.28 (Debian 10+, Ubuntu 18.10+,
# RHEL 8): the module and grayctl linked by cargo-zigbuild against zig's glibc 2.28 stubs,
# route.lua, the examples, the README. Its tools (zig from PyPI's ziglang package, in a venv, and
# cargo-zigbuild from crates.io) are installed once under target/dist-tools. Prints the path.
set -eu

GLIBC=2.28
ZIGLANG=0.13.0
ZIGBUILD=0.24.1
top=$(cd "$(dirname "$0")/.." && pwd)
cargo=${CARGO:-cargo}
tools=$top/target/dist-tools
target=x86_64-unknown-linux-gnu

if [ ! -x "$tools/venv/bin/python3" ] || ! "$tools/venv/bin/python3" -m ziglang version >/dev/null 2>&1; then
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install -q "ziglang==$ZIGLANG" >&2
fi
if [ ! -x "$tools/bin/cargo-zigbuild" ]; then
    "$cargo" install -q --locked --root "$tools" --version "$ZIGBUILD" cargo-zigbuild >&2
fi

# cargo-zigbuild runs zig as `python3 -m ziglang` when no zig is on PATH: the venv's python3.
PATH="$tools/bin:$tools/venv/bin:$PATH" "$cargo" zigbuild -q --release --locked --workspace \
    --target "$target.$GLIBC" >&2

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -n 1)
name=gray-$version-x86_64-linux-gnu
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dir=$stage/$name
built=$top/target/$target/release
install -D -s -m 0755 "$built/libgray.so" "$dir/lib/lua/5.1/gray.so"
install -D -s -m 0755 "$built/grayctl" "$dir/bin/grayctl"
install -D -m 0644 "$top/lua/route.lua" "$dir/share/gray/route.lua"
install -D -m 0644 "$top/contrib/prometheus/gray.rules.yml" "$dir/share/gray/prometheus/gray.rules.yml"
install -D -m 0644 "$top/contrib/grafana/gray.json" "$dir/share/gray/grafana/gray.json"
install -D -m 0644 "$top/nginx-conf/nginx.conf" "$dir/examples/nginx.conf"
install -D -m 0644 "$top/nginx-conf/rules/example.json" "$dir/examples/rules/example.json"
install -D -m 0644 "$top/README.md" "$dir/README.md"
needed=$("$top/scripts/glibc-needed.sh" "$dir/lib/lua/5.1/gray.so" "$dir/bin/grayctl")
echo "glibc >= $needed (built against $GLIBC by cargo-zigbuild)" > "$dir/GLIBC"
mkdir -p "$top/target/dist"
tarball=$top/target/dist/$name.tar.gz
tar -C "$stage" -czf "$tarball" "$name"
echo "$tarball"
