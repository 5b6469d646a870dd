#!/bin/sh
# Installs the Debian packages gray's build and demo need, plus any named as arguments (the test
# targets add Test::Nginx's Perl dependencies, make bench wrk and valgrind); does nothing when all
# are there.
set -eu

packages="nginx libnginx-mod-http-lua libnginx-mod-http-ndk lua-resty-core lua-resty-lrucache
lua-nginx-redis redis-server curl $*"

missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing Debian packages:$missing (run as root, or install them)" >&2
    exit 1
fi
echo "deps: installing$missing"
apt-get update -qq
# Package scripts must not start system services on their default ports (redis-server on 6379,
# prometheus on 9090 of every interface): invoke-rc.d asks policy-rc.d, and 101 says no.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
