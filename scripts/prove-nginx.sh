#!/bin/sh
# Runs the t/*.t suite under the real Test::Nginx against one nginx: `prove-nginx.sh [NGINX]`
# (default: the nginx on PATH, Debian's, with the Lua module loaded dynamically). An nginx with the
# Lua module built in (OpenResty) needs no load_module lines: TEST_NGINX_LOAD_MODULES is set empty.
# Test::Nginx comes from ../shared/vendor/test-nginx where that exists, else from @INC, else it
# is installed from CPAN (cpanm, Debian's cpanminus); its Perl dependencies are Debian packages.
set -eu

cd "$(dirname "$0")/.."
nginx=${1:-}

include=""
if [ -d ../shared/vendor/test-nginx/lib ]; then
    include="-I$(cd ../shared/vendor/test-nginx/lib && pwd)"
elif ! perl -MTest::Nginx::Socket::Lua -e 1 2>/dev/null; then
    scripts/deps.sh cpanminus
    echo "test-nginx: installing Test::Nginx from CPAN (cpanm --notest Test::Nginx)"
    cpanm --notest --quiet Test::Nginx
fi

if [ -n "$nginx" ]; then
    export TEST_NGINX_BINARY="$nginx"
    if "$nginx" -V 2>&1 | grep -q -- '--add-module=[^ ]*lua-nginx-module'; then
        export TEST_NGINX_LOAD_MODULES=""
    fi
fi
version=$("${nginx:-nginx}" -v 2>&1 | sed 's/.*: //')
echo "test-nginx: t/ under Test::Nginx against ${nginx:-nginx} ($version)"
exec prove $include -r t
