# gray: gray (canary) release routing for nginx/OpenResty. `make help` lists the targets.

PREFIX ?= /usr/local
DESTDIR ?=
LUA_CMOD_DIR ?= $(PREFIX)/lib/lua/5.1
SHARE_DIR ?= $(PREFIX)/share/gray
CARGO ?= $(shell command -v cargo 2>/dev/null || echo $(HOME)/.cargo/bin/cargo)
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := whitelist client_ip rule_set flat_ipset flat_idset manifest set_delta
# Test::Nginx's Perl dependencies (Test::Nginx itself comes from ../shared/vendor or CPAN), and
# Prometheus's Python client, whose parser checks the metrics t/009 scrapes, the sentinels t/012
# fails over, and openssl, which makes t/013's CA and certificates.
TEST_PACKAGES := libtest-base-perl libtext-diff-perl libtest-longstring-perl libipc-run-perl \
	liblist-moreutils-perl liburi-perl libwww-perl libhttp-message-perl \
	python3-prometheus-client redis-sentinel openssl
# OpenResty's components as source tarballs, for the second Test::Nginx leg.
OPENRESTY_VENDOR ?= $(abspath $(CURDIR)/../shared/vendor/openresty)
# The nginx test-nginx runs against: empty for Debian's (on PATH, Lua module loaded dynamically).
NGINX ?=
GATEWAY_PORT ?= 8080
REDIS_PORT ?= 6379

LIB := target/release/libgray.so
GRAYCTL := target/release/grayctl

.PHONY: help deps build run test test-unit test-nginx test-openresty test-chaos test-grayctl test-install test-deb test-dist test-valgrind deb dist lint check-conf check-prometheus check-dashboard bench chaos fuzz install uninstall clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

deps: ## Install the Debian packages (nginx, Lua module, Redis) if missing
	@scripts/deps.sh

build: ## Build the module (target/release/libgray.so) and grayctl (target/release/grayctl)
	$(CARGO) build --release --locked --workspace

$(LIB): build

run: deps build ## Redis, two demo backends and the gateway on 127.0.0.1:8080 (GATEWAY_PORT=, REDIS_PORT=); Ctrl-C stops
	@GATEWAY_PORT=$(GATEWAY_PORT) REDIS_PORT=$(REDIS_PORT) scripts/run-demo.sh

test: deps build lint test-unit test-grayctl check-conf check-prometheus check-dashboard test-install test-deb test-dist test-nginx test-openresty test-chaos ## Everything: lint, unit tests, grayctl against Redis, config check, the Prometheus rules, the dashboard in a browser, install check, the .deb and the portable tarball, Test::Nginx on Debian's nginx and on OpenResty, fault suite

lint: ## rustfmt, clippy and luacheck, warnings are errors
	@scripts/deps.sh lua-check
	luacheck -q --std ngx_lua+luajit --no-max-line-length lua/gray.lua lua/route.lua t/lua/gray_test.lua t/lua/canary.lua t/lua/rollout_test.lua
	$(CARGO) fmt --check
	$(CARGO) clippy --release --locked --workspace -- -D warnings
	$(CARGO) clippy --locked --workspace --no-default-features --all-targets -- -D warnings

test-unit: ## cargo test of the core and the module (no nginx, no Lua)
	$(CARGO) test --locked --no-default-features -p gray-core -p gray-io -p gray

test-grayctl: deps build ## grayctl's tests: its commands against a real redis-server, status/wait with two real gateways, top in tmux
	@scripts/deps.sh tmux
	$(CARGO) test --locked -p grayctl

check-prometheus: deps build ## contrib/prometheus/gray.rules.yml and contrib/grafana/gray.json: promtool's checks and unit tests, then a real Prometheus scraping a gateway under traffic evaluates every rule and panel
	@scripts/deps.sh prometheus
	promtool check rules contrib/prometheus/gray.rules.yml
	cd contrib/prometheus && promtool test rules gray.rules.test.yml
	python3 scripts/prometheus-check.py

check-dashboard: deps build ## gray.dashboard() in Debian's chromium (headless) from a gateway under traffic: rates, rule names as text, the plan, a fetch failure; a screenshot in target/dashboard.png
	@scripts/deps.sh chromium chromium-driver python3-selenium
	/usr/bin/python3 scripts/dashboard-check.py

check-conf: deps ## nginx -t on the example and demo configs
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	sed -e "s|@RUN_DIR@|$$tmp|g" -e "s|@CPATH@|$(CURDIR)/$(LIB)|g" -e "s|@ROUTE_LUA@|$(CURDIR)/lua/route.lua|g" \
	    -e "s|@GATEWAY_PORT@|18080|" -e "s|@PROD_PORT@|18081|" -e "s|@GRAY_PORT@|18082|" -e "s|@REDIS_PORT@|16379|" \
	    nginx-conf/demo.conf > $$tmp/demo.conf && \
	nginx -q -t -p $$tmp/ -c $$tmp/demo.conf && \
	sed -e "s|/run/nginx.pid|$$tmp/nginx.pid|" -e "s|/var/log/nginx/|$$tmp/|g" nginx-conf/nginx.conf > $$tmp/nginx.conf && \
	nginx -q -t -p /usr/share/nginx/ -c $$tmp/nginx.conf && echo "check-conf: nginx-conf/*.conf are valid"

test-nginx: deps build ## t/*.t under Test::Nginx against Debian's nginx, or NGINX=/path/to/nginx (e.g. OpenResty's)
	@scripts/deps.sh $(TEST_PACKAGES)
	scripts/prove-nginx.sh $(NGINX)

test-openresty: deps build ## t/*.t and the two-gateway rollout tests against OpenResty's components built from ../shared/vendor/openresty (built once, under target/)
	@if [ -d "$(OPENRESTY_VENDOR)" ]; then \
	    scripts/deps.sh $(TEST_PACKAGES) && \
	    nginx=$$(scripts/build-openresty.sh "$(OPENRESTY_VENDOR)" "$(CURDIR)/target/openresty" | tail -n 1) && \
	    scripts/prove-nginx.sh "$$nginx" && \
	    GRAY_TEST_NGINX="$$nginx" $(CARGO) test --locked -p grayctl --test rollout_fleet; \
	else \
	    echo "test-openresty: skipped, no OpenResty sources at $(OPENRESTY_VENDOR) (run make test-nginx NGINX=/usr/local/openresty/nginx/sbin/nginx against your own)"; \
	fi

test-install: build ## make install into a scratch DESTDIR: the module is stripped and still exports luaopen_gray, grayctl runs
	@dir=$$(mktemp -d) && trap 'rm -rf $$dir' EXIT && \
	$(MAKE) -s install DESTDIR=$$dir >/dev/null && so=$$dir$(LUA_CMOD_DIR)/gray.so && \
	if readelf -S $$so | grep -q '\.debug_'; then echo "test-install: $$so has debug sections"; exit 1; fi && \
	readelf --dyn-syms $$so | grep -q ' luaopen_gray$$' && test -f $$dir$(SHARE_DIR)/route.lua && \
	$$dir$(PREFIX)/bin/grayctl --version >/dev/null && \
	echo "test-install: gray.so stripped ($$(du -k $$so | cut -f1) KiB, debug build $$(du -k $(LIB) | cut -f1) KiB), luaopen_gray exported; grayctl runs"

deb: build ## The Debian package target/deb/lua-gray_<version>_<arch>.deb (module, grayctl, route.lua, examples, README)
	@scripts/package-deb.sh

test-deb: deps build ## make deb, its contents, and (as root) a real apt-get install: Debian's nginx loads gray with no lua_package_cpath; purged after
	@scripts/test-deb.sh

dist: ## The portable tarball target/dist/gray-<version>-x86_64-linux-gnu.tar.gz, binaries for glibc >= 2.28 (cargo-zigbuild; tools under target/dist-tools)
	@scripts/dist.sh

test-dist: deps ## make dist, then: no binary in it needs glibc > 2.28, Debian's nginx loads its module and routes
	@scripts/test-dist.sh

bench: build ## Benchmark side by side, report in bench/RESULTS.md (QUICK=1: a smoke run, bench/RESULTS.quick.md)
	@scripts/deps.sh wrk valgrind
	python3 bench/run.py $(if $(QUICK),--quick)

test-valgrind: deps build ## The t/*.t suite with nginx under valgrind memcheck (slow); fails on any memcheck report
	@scripts/deps.sh valgrind
	@dir=$$(mktemp -d) && trap 'rm -rf $$dir' EXIT && \
	GRAY_VALGRIND_DIR=$$dir TEST_NGINX_TIMEOUT=20 scripts/prove-nginx.sh $(CURDIR)/scripts/valgrind-nginx && \
	found=$$(find $$dir -type f -size +0) && \
	if [ -n "$$found" ]; then cat $$found; echo "test-valgrind: memcheck reports from $$(echo $$found | wc -w) nginx processes"; exit 1; fi && \
	echo "test-valgrind: $$(ls $$dir | wc -l) nginx processes, no memcheck report"

test-chaos: build ## The fault suite: faults and bad input under wrk load, every response counted; fails when a figure is off
	@scripts/deps.sh wrk
	python3 chaos/run.py

chaos: build ## The fault suite, and its table written to chaos/RESULTS.md
	@scripts/deps.sh wrk
	python3 chaos/run.py --report chaos/RESULTS.md

fuzz: ## Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of each parser for FUZZ_SECONDS (60)
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@# New inputs go to target/fuzz-corpus; fuzz/corpus holds the committed seeds only.
	@for t in $(FUZZ_TARGETS); do \
	    mkdir -p target/fuzz-corpus/$$t && \
	    (cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t ../target/fuzz-corpus/$$t corpus/$$t $$(test $$t = rule_set && echo ../nginx-conf/rules) -- \
	        -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1) || exit 1; \
	done

install: build ## gray.so (stripped) into PREFIX/lib/lua/5.1 (LuaJIT default cpath), grayctl into PREFIX/bin, route.lua into PREFIX/share/gray (PREFIX=/usr/local, DESTDIR)
	@# The build keeps debug info for make bench and profiling; what is installed is stripped.
	install -D -s -m 0755 $(LIB) $(DESTDIR)$(LUA_CMOD_DIR)/gray.so
	install -D -s -m 0755 $(GRAYCTL) $(DESTDIR)$(PREFIX)/bin/grayctl
	install -D -m 0644 lua/route.lua $(DESTDIR)$(SHARE_DIR)/route.lua

uninstall: ## Remove what install installed
	rm -f $(DESTDIR)$(LUA_CMOD_DIR)/gray.so $(DESTDIR)$(PREFIX)/bin/grayctl $(DESTDIR)$(SHARE_DIR)/route.lua

clean: ## Remove build and test output
	$(CARGO) clean
	rm -rf t/servroot .run
