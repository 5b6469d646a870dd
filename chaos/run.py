#!/usr/bin/env python3
"""`make chaos`: faults and bad input under a steady wrk load against a two-worker gateway, every
response counted. Prints a table (fault, requests, non-2xx, socket errors, misrouted, recovered
after) and the checks behind it (also into --report FILE), and exits 1 when any figure is off.

Loopback only, about two minutes; every process it starts is stopped when it ends, also on Ctrl-C.
The gateway runs gray with its defaults (refresh 1 s, timeout 1 s, max_bytes 32 MiB), trusting
X-Forwarded-For from 127.0.0.1 so that one wrk can speak for many clients; a second gateway that
trusts only 127.0.0.2 receives the spoofed headers.
"""

import argparse
import datetime
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from harness import (HOST, LIB_DIR, PROCESSES, TOP, Redis, alive, get, load_modules, peak_rss_mib,  # noqa: E402
                     redis_cli, nginx_prefix, preamble, rss_mib, signal_nginx, spawn, start_nginx,
                     start_responders, wait_until, worker_pids)
import harness  # noqa: E402

REDIS_PORT = 16579
GATEWAY_PORT = 16580
BACKEND_PROD_PORT = 16581
BACKEND_GRAY_PORT = 16582
SPOOF_PORT = 16583
# The Sentinel group (a master, its replica, three sentinels) and the gateway that reads through it.
HA_MASTER_PORT = 16584
HA_REPLICA_PORT = 16585
HA_SENTINEL_PORTS = (16586, 16587, 16588)
HA_GATEWAY_PORT = 16589
# The black-holing proxy in front of the file's Redis, and the gateway that reads through it.
PROXY_PORT = 16590
PROXIED_GATEWAY_PORT = 16591
DRIVER_PORTS = (16592, 16593)
# The gateway whose session holder is killed and stopped (its log then holds the kill's alert).
HOLDER_PORT = 16594

REFRESH = 1.0    # gray's default
RECOVERY_BOUND = REFRESH + 0.5
# From a failover's end (the sentinels name the new master) to a change written there routed.
FAILOVER_BOUND = 1.0
RELOADS = 20
WRK_CONNECTIONS = 32
LOAD_LUA = os.path.join(TOP, "chaos", "load.lua")

# The good list: 1,000 entries (IPv4 hosts, IPv6 hosts, IPv4 CIDRs). Non-members include
# addresses a substring match would take for members (10.1.7.1 in "10.1.7.10").
MEMBER_HOSTS_V4 = [f"10.1.{a}.{b}" for a in range(100) for b in range(1, 6)]
MEMBER_HOSTS_V6 = [f"2001:db8:1::{i:x}" for i in range(1, 251)]
MEMBER_NETS = [f"10.2.{a}.0/24" for a in range(250)]
GOOD = MEMBER_HOSTS_V4 + MEMBER_HOSTS_V6 + MEMBER_NETS
MEMBERS = MEMBER_HOSTS_V4[::5] + MEMBER_HOSTS_V6[::5] + [f"10.2.{a}.77" for a in range(0, 250, 5)]
NON_MEMBERS = ([f"10.1.{a}.{b}0" for a in range(0, 100, 4) for b in (1, 2)] + [f"110.1.{a}.1" for a in range(25)]
               + [f"2001:db8:1::1:{i:x}" for i in range(25)] + [f"10.3.{a}.77" for a in range(25)])
PROBE = "10.9.9.9"   # not in the good list: a change that adds it is "the new state"

RUN_DIR = None


def log(*args):
    harness.log("chaos", *args)


# --- gateways ---------------------------------------------------------------------------------

def start_backends():
    """nginx answering "<route> <expected> <the X-Gray-Lane it got>"; returns how to reload it."""
    _, prefix = start_responders(RUN_DIR, {BACKEND_PROD_PORT: "prod $http_x_expect $http_x_gray_lane",
                                           BACKEND_GRAY_PORT: "gray $http_x_expect $http_x_gray_lane"})
    return lambda: signal_nginx(prefix, "reload")


class Gateway:
    """nginx with two workers routing with gray and proxying to the backends."""

    def __init__(self, name, port, trusted, redis=f'redis = "redis://{HOST}:{REDIS_PORT}/0"', options=""):
        self.port = port
        self.prefix = nginx_prefix(RUN_DIR, name)
        proxy = "proxy_http_version 1.1; proxy_set_header Connection \"\";"
        conf = f"""
{load_modules()}
worker_processes 2;
daemon off;
{preamble(self.prefix, "notice")}
    lua_package_cpath "{LIB_DIR}/lib?.so;;";
    init_by_lua_block {{ require "gray" }}
    init_worker_by_lua_block {{
        require("gray").configure{{
            {redis}, trusted_proxies = "{trusted}", count_responses = true, {options}
        }}
    }}
    upstream prod1 {{ server {HOST}:{BACKEND_PROD_PORT}; keepalive 16; }}
    upstream prod2-grey {{ server {HOST}:{BACKEND_GRAY_PORT}; keepalive 16; }}
    server {{
        listen {HOST}:{port}; keepalive_requests 1000000;
        location / {{ content_by_lua_block {{ return require("gray").route() }} }}
        location @prod1 {{ proxy_pass http://prod1; {proxy} }}
        location @prod2-grey {{ proxy_pass http://prod2-grey; {proxy} }}
        location = /__ready {{ return 200; }}
        location = /gray/metrics {{ content_by_lua_block {{ require("gray").metrics() }} }}
        location = /__holder {{ content_by_lua_block {{ ngx.say(require("gray").status().session_holder) }} }}
    }}
}}
"""
        self.proc = start_nginx(self.prefix, conf, port)
        self.error_log = os.path.join(self.prefix, "logs", "error.log")

    def route(self, client, conn=None):
        status, body = get(self.port, "/", conn, headers={"X-Forwarded-For": client, "X-Expect": "-"})
        return body.split()[0] if status == 200 else f"status {status}"

    def signal(self, name):
        signal_nginx(self.prefix, name)

    def workers(self):
        return worker_pids(self.prefix)

    def log_text(self, since=0):
        with open(self.error_log, errors="replace") as f:
            f.seek(since)
            return f.read()

    def log_size(self):
        return os.path.getsize(self.error_log)

    def session_holder(self):
        """The pid of the worker holding the Redis session, as a worker says."""
        _, body = get(self.port, "/__holder")
        return int(body.strip()) if body.strip().isdigit() else None

    def versions_by_pid(self, key):
        """The version of `key` each running worker serves, by pid, as the metrics publish it."""
        _, text = get(self.port, "/gray/metrics")
        running = set(self.workers())
        return {int(pid): version for pid, version in re.findall(
            r'^gray_loaded_info\{worker="\d+",pid="(\d+)",key="' + re.escape(key)
            + r'",kind="[^"]*",version="([^"]*)"\} 1$', text, re.M) if int(pid) in running}

    def loaded_versions(self, key):
        """The version of `key` each worker serves, by worker id, as the metrics publish it."""
        _, text = get(self.port, "/gray/metrics")
        return dict(re.findall(r'^gray_loaded_info\{worker="(\d+)",pid="\d+",key="' + re.escape(key)
                               + r'",kind="[^"]*",version="([^"]*)"\} 1$', text, re.M))

    def counted(self):
        """The requests gray counted (all series) and their responses counted, so far."""
        _, text = get(self.port, "/gray/metrics")
        def total(name):
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith(name + "{"))
        return int(total("gray_requests_total")), int(total("gray_response_seconds_count"))


def wait_routes(gateway, client, route, timeout=10):
    return wait_until(lambda: gateway.route(client) == route, timeout, 0.02)


def put_good(redis, gateway, kind="string"):
    """Back to the good list (plus nothing else) and wait until both workers route by it."""
    redis.put_list(GOOD, kind)
    redis.publish()
    for client, route in ((MEMBERS[0], "gray"), (PROBE, "prod")):
        # Several tries: the two workers take turns answering.
        for _ in range(4):
            assert wait_routes(gateway, client, route), f"{client} never routed to {route}"


# --- load ---------------------------------------------------------------------------------------

def member_requests():
    """The steady load: members and non-members, IPv4 and IPv6, through the trusted proxy."""
    lines = [f"gray\tX-Forwarded-For: {c}" for c in MEMBERS] + [f"prod\tX-Forwarded-For: {c}" for c in NON_MEMBERS]
    random.Random(1).shuffle(lines)
    return lines


class Load:
    """wrk in the background until `finish`; its counts are judged by `accept`."""

    def __init__(self, port, requests):
        self.dir = tempfile.mkdtemp(dir=RUN_DIR)
        requests_file = os.path.join(self.dir, "requests")
        with open(requests_file, "w") as f:
            f.write("\n".join(requests) + "\n")
        self.result_file = os.path.join(self.dir, "result")
        env = dict(os.environ, CHAOS_REQUESTS=requests_file, CHAOS_RESULT=self.result_file)
        self.proc = spawn(["wrk", "-t2", f"-c{WRK_CONNECTIONS}", "-d600s", "--timeout", "5s", "-s", LOAD_LUA,
                           f"http://{HOST}:{port}/"], env=env, stdout=subprocess.DEVNULL)
        time.sleep(1)   # steady before the fault

    def finish(self):
        time.sleep(1)   # steady after it
        self.proc.send_signal(signal.SIGINT)   # wrk stops, reports, and runs done()
        self.proc.wait(30)
        PROCESSES.remove(self.proc)
        counts, errors = [], 0
        with open(self.result_file) as f:
            for line in f:
                fields = line.split()
                if fields[0] == "errors":
                    errors = sum(map(int, fields[1:]))
                else:
                    bucket, status, expected, route, n = fields
                    counts.append((int(bucket) / 10, int(status), expected, route, int(n)))
        return counts, errors


def same(expected, route, _start):
    return route == expected


class Row:
    def __init__(self, fault, counts, errors, accept=same, recovered=None, bound=RECOVERY_BOUND,
                 errors_allowed=0):
        self.fault = fault
        # A worker killed under load resets the connections it held: wrk counts them.
        self.errors_allowed = errors_allowed
        self.bound = bound
        self.requests = sum(n for *_, n in counts) + errors
        self.non_2xx = sum(n for _, status, _, _, n in counts if not 200 <= status < 300)
        self.errors = errors
        self.misrouted = sum(n for start, status, expected, route, n in counts
                             if 200 <= status < 300 and not accept(expected, route, start))
        self.recovered = recovered
        self.checks = []
        self.notes = []

    def check(self, ok, what):
        self.checks.append((bool(ok), what))
        return ok

    def note(self, what):
        """A figure the report shows beside the checks, judged by nothing."""
        self.notes.append(what)

    @property
    def ok(self):
        if self.requests is None:
            return all(ok for ok, _ in self.checks)
        return (self.requests > 0 and self.non_2xx == 0 and self.errors <= self.errors_allowed and self.misrouted == 0
                and (self.recovered is None or self.recovered <= self.bound)
                and all(ok for ok, _ in self.checks))


def recovery(gateway, client, route, since):
    """Seconds from `since` until `client` is routed to `route` (a client of our own, not wrk's)."""
    assert wait_routes(gateway, client, route, 30), f"{client} never routed to {route}"
    return time.time() - since


def logged(gateway, pattern, since=0):
    return re.search(pattern, gateway.log_text(since)) is not None


# --- faults -------------------------------------------------------------------------------------

def baseline(redis, gw):
    load = Load(gw.port, member_requests())
    return Row("none (baseline)", *load.finish())


def redis_away(redis, gw, fault, take_away, bring_back, log_checks):
    """Redis gone for three refresh intervals under load, then back with a new state (the probe
    client added): the last good list routes meanwhile, the new one within the bound after."""
    since = gw.log_size()
    load = Load(gw.port, member_requests())
    take_away()
    time.sleep(3 * REFRESH)
    bring_back()
    back = time.time()
    redis.pipe(["SET", "gray", ",".join(GOOD + [PROBE])], ["PUBLISH", "gray:changed", "1"])
    recovered = recovery(gw, PROBE, "gray", back)
    row = Row(fault, *load.finish(), recovered=recovered)
    for pattern, what in log_checks:
        row.check(logged(gw, pattern, since), f"error log: {what}")
    put_good(redis, gw)
    return row


def redis_killed(redis, gw):
    redis.cli("SAVE")   # a restarted Redis comes back with its data, as one with persistence does
    return redis_away(redis, gw, "Redis killed (SIGKILL) 3 s, restarted", redis.kill, redis.start,
                      [(r"gray: failed to (connect to redis|read key gray)", "gray says Redis is away"),
                       (r"gray: redis is back after \d+ failed attempts", "redis is back")])


def redis_hung(redis, gw):
    return redis_away(redis, gw, "Redis hung (SIGSTOP) 3 s, continued", redis.pause, redis.resume,
                      [(r"timed out after 1\.0s", "gray names the timeout")])


def redis_restarted_empty(redis, gw):
    since = gw.log_size()
    load = Load(gw.port, member_requests())
    redis.kill()
    redis.forget_dump()
    time.sleep(REFRESH)
    redis.start()
    back = time.time()
    recovered = recovery(gw, MEMBERS[0], "prod", back)

    def accept(expected, route, start):
        # Members go to production once the empty key is seen, within `refresh` of Redis back
        # (the reconnect backoff is capped at it): either route in the 0.1 s buckets until then.
        if start + 0.1 <= back:
            return route == expected
        if start < back + REFRESH:
            return True
        return route == "prod"
    row = Row("Redis restarted empty (key gone)", *load.finish(), accept=accept, recovered=recovered,
              bound=REFRESH)
    row.check(logged(gw, r"loaded whitelist from missing key gray: 0 entries", since), "error log: the empty list loaded")
    put_good(redis, gw)
    return row


class SentinelGroup:
    """A master, its replica and three sentinels watching them (failover after 1 s down)."""

    NAME = "grays"

    def __init__(self):
        self.master = Redis(HA_MASTER_PORT, RUN_DIR)
        self.replica = Redis(HA_REPLICA_PORT, RUN_DIR, "--replicaof", HOST, str(HA_MASTER_PORT))
        for port in HA_SENTINEL_PORTS:
            conf = os.path.join(RUN_DIR, f"sentinel-{port}.conf")
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind {HOST}\ndir {RUN_DIR}\nlogfile sentinel-{port}.log\n"
                        f"sentinel monitor {self.NAME} {HOST} {HA_MASTER_PORT} 2\n"
                        f"sentinel down-after-milliseconds {self.NAME} 1000\n"
                        f"sentinel failover-timeout {self.NAME} 5000\n")
            spawn(["redis-sentinel", conf])
        synced = wait_until(lambda: "master_link_status:up" in self.replica.cli("INFO", "replication"), 10)
        known = wait_until(lambda: all(
            "master-link-status" in redis_cli(p, "SENTINEL", "REPLICAS", self.NAME, check=False)
            and redis_cli(p, "SENTINEL", "SENTINELS", self.NAME, check=False).count(HOST) >= 2
            for p in HA_SENTINEL_PORTS), 30)
        if not (synced and known):
            raise RuntimeError("the sentinel group did not form")

    def master_port(self):
        lines = redis_cli(HA_SENTINEL_PORTS[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.NAME,
                          check=False).split()
        return int(lines[1]) if len(lines) == 2 else None

    def options(self):
        sentinels = ", ".join(f'"{HOST}:{p}"' for p in HA_SENTINEL_PORTS)
        return f'sentinels = {{ {sentinels} }}, sentinel_master = "{self.NAME}"'


def sentinel_failover(group, gw):
    """The master SIGKILLed under load: the sentinels promote the replica; meanwhile the last list
    routes; a plain SET on the new master (no PUBLISH) is routed within FAILOVER_BOUND of the
    sentinels naming it."""
    for client, route in ((MEMBERS[0], "gray"), (PROBE, "prod")):
        assert wait_routes(gw, client, route), f"{client} never routed to {route} through the sentinels"
    since = gw.log_size()
    load = Load(gw.port, member_requests())
    group.master.kill()
    killed = time.time()
    if not wait_until(lambda: group.master_port() == HA_REPLICA_PORT, 30, 0.01):
        raise RuntimeError("the sentinels did not fail over")
    failed_over = time.time()
    group.replica.cli("SET", "gray", ",".join(GOOD + [PROBE]))
    recovered = recovery(gw, PROBE, "gray", failed_over)
    row = Row("Sentinel: master killed (SIGKILL), replica promoted", *load.finish(),
              recovered=recovered, bound=FAILOVER_BOUND)
    row.note(f"the sentinels named the new master {failed_over - killed:.1f} s after the kill")
    row.check(logged(gw, r"gray: redis is back after \d+ failed attempts", since), "error log: redis is back")
    return row


class BlackHoleProxy:
    """A loopback TCP proxy to Redis that, told to, stops forwarding in both directions without
    closing anything (new connections are still accepted, then nothing flows), and forwards again
    on the same connections when told."""

    def __init__(self, port, upstream):
        self.upstream = upstream
        self.forwarding = threading.Event()
        self.forwarding.set()
        self.server = socket.create_server((HOST, port))
        self.sockets = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection((HOST, self.upstream))
            except OSError:
                return
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pump, args=(source, sink), daemon=True).start()

    def pump(self, source, sink):
        try:
            while True:
                self.forwarding.wait()
                data = source.recv(65536)
                if not data:
                    break
                self.forwarding.wait()
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.server.close()
        for sock in self.sockets:
            sock.close()


def black_holed(redis, proxy, gw):
    """Redis black-holed for three refresh intervals under load, then forwarded again with a new
    state: the last good list routes meanwhile, the new one within the bound after."""
    put_good(redis, gw)
    since = gw.log_size()
    load = Load(gw.port, member_requests())
    proxy.forwarding.clear()
    time.sleep(3 * REFRESH)
    redis.pipe(["SET", "gray", ",".join(GOOD + [PROBE])], ["PUBLISH", "gray:changed", "1"])
    proxy.forwarding.set()
    back = time.time()
    recovered = recovery(gw, PROBE, "gray", back)
    row = Row("Redis black-holed by a proxy 3 s (nothing forwarded, nothing closed)", *load.finish(),
              recovered=recovered)
    row.check(logged(gw, r"timed out after 1\.0s", since), "error log: gray names the timeout")
    put_good(redis, gw)
    return row


def fd_profile(pid):
    """Threads and file descriptors of a process, by kind. Connections to clients and upstreams
    come and go with the load; everything else must be the same in every generation of workers."""
    sockets = {}
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in list(f)[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                state = fields[3]
                sockets[fields[9]] = ("listen" if state == "0A" else "redis" if remote_port == REDIS_PORT
                                      else "upstream" if remote_port in (BACKEND_PROD_PORT, BACKEND_GRAY_PORT)
                                      else "client" if local_port in (GATEWAY_PORT, SPOOF_PORT) else "tcp")
    profile = {"threads": len(os.listdir(f"/proc/{pid}/task"))}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        m = re.match(r"socket:\[(\d+)\]", target)
        kind = (sockets.get(m.group(1), "unix socket") if m else "pipe" if target.startswith("pipe:")
                else "anon" if target.startswith("anon_inode:") else "file")
        profile[kind] = profile.get(kind, 0) + 1
    return profile


def fixed(profile):
    return {k: v for k, v in profile.items() if k not in ("client", "upstream")}


def describe(profile):
    return ", ".join(f"{k} {v}" for k, v in sorted(profile.items()))


def reloads(redis, gw):
    master = gw.proc.pid
    first = gw.workers()
    connections_before = redis.cli("CLIENT", "LIST").count("addr=")
    master_before = fd_profile(master)
    workers_before = [fixed(fd_profile(w)) for w in first]
    exits_before = gw.log_text().count("exited with code 0")
    requests_before, responses_before = gw.counted()
    # One connection per request: see keepalive_reference for why.
    load = Load(gw.port, [f"{line}\tConnection: close" for line in member_requests()])
    seen, current = set(first), first
    for _ in range(RELOADS):
        gw.signal("reload")
        # A reload is done when a new generation of two workers runs; then reload again.
        assert wait_until(lambda: len(set(gw.workers()) - seen) >= 2, 30), "reload never finished"
        current = [w for w in gw.workers() if w not in seen]
        seen.update(current)
        time.sleep(0.3)
    old = sorted(seen - set(current))
    exited = wait_until(lambda: not any(alive(w) for w in old), 30)
    counts, errors = load.finish()
    row = Row(f"{RELOADS} x nginx -s reload (a new connection per request)", counts, errors)
    answered = sum(n for *_, n in counts)
    # Counted when routed and in the log phase; wrk stops with up to one request per connection
    # routed, perhaps answered, but not read.
    in_flight = WRK_CONNECTIONS
    counted = None
    def settled():
        nonlocal counted
        requests, responses = gw.counted()
        counted = (requests - requests_before, responses - responses_before)
        return all(0 <= n - answered <= in_flight for n in counted)
    row.check(wait_until(settled, 5, 0.2),
              f"metrics across the reloads: {counted[0]} requests and {counted[1]} responses counted, "
              f"{answered} answered (at most {in_flight} more in flight)")
    row.check(exited, f"all {len(old)} old workers exited")
    exits = gw.log_text().count("exited with code 0") - exits_before
    row.check(exits == len(old), f"master logged {exits} of {len(old)} 'exited with code 0'")
    row.check(not logged(gw, r"exited on signal|\[alert\]|\[crit\]|\[emerg\]"), "no crash, alert or crit in the error log")
    master_after = fd_profile(master)
    workers_after = [fixed(fd_profile(w)) for w in gw.workers()]
    row.check(master_after == master_before,
              f"master: {describe(master_before)} before; {describe(master_after)} after")
    def key(profiles):
        return sorted(sorted(p.items()) for p in profiles)
    row.check(key(workers_after) == key(workers_before),
              "workers: " + " / ".join(map(describe, workers_before)) + " before; "
              + " / ".join(map(describe, workers_after)) + " after")
    # The session went to the last configuration: one session, and a change reaches its workers.
    connections = []
    row.check(wait_until(lambda: connections.append(redis.cli("CLIENT", "LIST").count("addr="))
                         or connections[-1] <= connections_before, 5, 0.2),
              f"Redis connections: {connections_before} before the storm, {connections[-1]} after (one session)")
    before = gw.versions_by_pid("gray")
    written = time.time()
    redis.pipe(["SET", "gray", ",".join(GOOD + [PROBE])])
    served = wait_until(lambda: all(gw.versions_by_pid("gray").get(w) not in (None, before.get(w))
                                    for w in gw.workers()), 10, 0.01)
    took = time.time() - written
    row.check(served and took <= RECOVERY_BOUND,
              f"a change after the storm served by every worker {took:.2f} s after it was written "
              f"(bound {RECOVERY_BOUND:.1f} s)")
    put_good(redis, gw)
    return row


def keepalive_reference(gw, reload_backends):
    """Not judged, reported: the same reloads under keep-alive load, for gray and for nginx alone.
    An old worker closes its idle keep-alive connections when it shuts down; a request sent on one
    at that moment fails. Browsers and HTTP libraries retry it (RFC 9112, 9.3.1); wrk does not and
    counts a read error, with or without gray."""
    figures = []
    for name, port, reload in (("gray gateway", gw.port, lambda: gw.signal("reload")),
                               ("nginx alone (return 200, no Lua)", BACKEND_PROD_PORT, reload_backends)):
        load = Load(port, member_requests())
        for _ in range(RELOADS):
            reload()
            time.sleep(0.6)
        counts, errors = load.finish()
        figures.append((name, sum(n for *_, n in counts) + errors, errors))
    return figures


def quit_gateway(gw, name, expected_exits):
    workers = gw.workers()
    exits_before = gw.log_text().count("exited with code 0")
    gw.signal("quit")
    try:
        gw.proc.wait(30)
        master_exited = True
    except subprocess.TimeoutExpired:
        master_exited = False
    PROCESSES.remove(gw.proc)
    row = Row(f"nginx -s quit ({name})", [], 0)
    row.requests = None
    row.check(master_exited and gw.proc.returncode == 0, f"master exited with code {gw.proc.returncode}")
    row.check(not any(alive(w) for w in workers), f"its {len(workers)} workers are gone")
    exits = gw.log_text().count("exited with code 0") - exits_before
    row.check(exits == expected_exits, f"master logged {exits} of {expected_exits} 'exited with code 0'")
    row.check(not logged(gw, r"exited on signal|\[alert\]|\[crit\]|\[emerg\]"), "no crash, alert or crit in the error log")
    return row


# --- bad input ----------------------------------------------------------------------------------

def garbage_entries(rng, n):
    shapes = [lambda: f"{rng.randrange(256, 1000)}.{rng.randrange(256)}.0.1",
              lambda: f"10.{rng.randrange(256)}.{rng.randrange(256)}",
              lambda: f"10.5.{rng.randrange(256)}.0/{rng.randrange(33, 99)}",
              lambda: f"2001:db8::{rng.randrange(1 << 16):x}::{rng.randrange(1 << 16):x}",
              lambda: "".join(rng.choice("ghijklmnopqrstuvwxyz-_./") for _ in range(rng.randrange(1, 30))),
              lambda: f"10.6.{rng.randrange(256)}.{rng.randrange(256)}/-1"]
    return [rng.choice(shapes)() for _ in range(n)]


def rss(gw):
    return {w: rss_mib(w) for w in gw.workers()}


def rss_floor(gw, seconds=2.0):
    """Each worker's lowest RSS over `seconds`: what it keeps, without a read that happens to be in
    flight (a re-read holds the value and the reply buffer for a few hundred ms)."""
    floor = {}
    end = time.time() + seconds
    while time.time() < end:
        for w, mib in rss(gw).items():
            floor[w] = min(mib, floor.get(w, mib))
        time.sleep(0.05)
    return floor


def reset_peak_rss(gw):
    """Starts each worker's resident-set high-water mark (VmHWM) over from its RSS now."""
    for w in gw.workers():
        with open(f"/proc/{w}/clear_refs", "w") as f:
            f.write("5")


def peak_growth(gw, before):
    """The largest growth of one worker's peak RSS (VmHWM) over its RSS `before`, MiB."""
    peaks = {w: peak_rss_mib(w) for w in gw.workers()}
    return rss_growth(before, peaks)


def rss_growth(before, after):
    """The largest growth of one worker's RSS, MiB; infinite if the workers changed (one died)."""
    if set(after) != set(before):
        return float("inf")
    return max(after[w] - before[w] for w in before)


def abuse(gw, fault, redis_commands, log_pattern, log_what, max_growth_mib=16):
    """Bad input under load: the good entries stay in effect, the log says what was wrong, memory
    stays bounded, no worker dies. The returned row's `since` is where this fault's log starts."""
    since = gw.log_size()
    before = rss(gw)
    load = Load(gw.port, member_requests())
    redis_commands()
    # Long enough for a publish and a poll either way.
    time.sleep(2 * REFRESH)
    after = rss_floor(gw)
    row = Row(fault, *load.finish())
    row.since = since
    row.check(logged(gw, log_pattern, since), f"error log: {log_what}")
    row.check(set(after) == set(before), "the same workers before and after (no crash)")
    growth = rss_growth(before, after)
    row.check(growth <= max_growth_mib, f"worker RSS grew {growth:.1f} MiB (bound {max_growth_mib})")
    return row


def garbage(redis, gw):
    rng = random.Random(2)
    entries = GOOD + garbage_entries(rng, 10_000)
    rng.shuffle(entries)
    row = abuse(gw, "10,000 garbage + 1,000 good entries",
                lambda: redis.pipe(["SET", "gray", ",".join(entries)], ["PUBLISH", "gray:changed", "1"]),
                r"loaded whitelist from string key gray: 1000 entries \(750 IPv4, 250 IPv6\), 10000 rejected",
                "1000 entries loaded, 10000 rejected, samples quoted")
    row.check(logged(gw, r"\.\.\. and 9990 more rejected entries in key gray", row.since), "error log: the rest counted")
    return row


def huge_value(redis, gw):
    good = ",".join(GOOD) + ","
    value = (good * (50 * 1024 * 1024 // len(good) + 1))[:50 * 1024 * 1024]
    # The peak, not the floor: a value read and freed again would leave the floor where it was.
    before = rss(gw)
    reset_peak_rss(gw)
    row = abuse(gw, "a 50 MB value",
                lambda: redis.pipe(["SET", "gray", value], ["PUBLISH", "gray:changed", "1"]),
                r"ignoring key gray: value is 52428800 bytes, over max_bytes \(33554432 bytes\); keeping the last good list",
                "refused, over max_bytes, last good list kept", max_growth_mib=8)
    peak = peak_growth(gw, before)
    row.check(peak <= 8, f"worker peak RSS (VmHWM) grew {peak:.1f} MiB while it was refused (bound 8)")
    put_good(redis, gw)
    return row


def binary_value(redis, gw):
    rng = random.Random(3)
    parts = [e.encode() for e in GOOD]
    # Bytes that can never spell an address: controls and non-ASCII, some invalid UTF-8.
    alphabet = [0, 1, 0x7f] + list(range(0x80, 0x100))
    parts += [bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 24))) for _ in range(2000)]
    rng.shuffle(parts)
    value = b",".join(parts)
    row = abuse(gw, "binary bytes around the good entries",
                lambda: redis.pipe([b"SET", b"gray", value], ["PUBLISH", "gray:changed", "1"]),
                r"rejected whitelist entry \"[^\"]*\" \(not text\)", "binary entries rejected as not text")
    row.check(logged(gw, r"loaded whitelist from string key gray: 1000 entries", row.since),
              "error log: the 1000 good entries loaded")
    return row


def wrong_type(redis, gw):
    row = abuse(gw, "a key of the wrong type (list)",
                lambda: redis.pipe(["MULTI"], ["DEL", "gray"], ["RPUSH", "gray", *GOOD[:10]], ["EXEC"],
                                   ["PUBLISH", "gray:changed", "1"]),
                r"ignoring key gray: key holds a list, expected a string or a set; keeping the last good list",
                "ignored, last good list kept")
    put_good(redis, gw)
    return row


def large_rereads(redis, gw):
    """A 20 MB list (the good entries and 1.4M others) read again on 5 new connections by the
    worker holding the session (the others read nothing from Redis): the nginx keeps one copy of
    the list, not one per read."""
    filler = [f"100.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(1_400_000)]
    value = ",".join(GOOD + filler)
    state = {}

    def run():
        redis.pipe(["SET", "gray", value], ["PUBLISH", "gray:changed", "1"])
        loaded = wait_until(lambda: gw.log_text(since).count("loaded whitelist from string key gray: 1401000") >= 2, 30)
        state["loaded"] = loaded
        state["rss"] = rss_floor(gw)
        state["rereads"] = 0
        for _ in range(5):
            cycle = gw.log_size()
            # The command connection first: a refresher waiting on its subscription reconnects
            # only when that goes, so no fresh connection is killed in between.
            redis.cli("CLIENT", "KILL", "TYPE", "normal")
            redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
            # The holder logs "redis is back" once its first read on the new connection is done.
            if wait_until(lambda: "redis is back" in gw.log_text(cycle), 10):
                state["rereads"] += 1
            time.sleep(0.5)
    since = gw.log_size()
    row = abuse(gw, f"a {len(value) / 1e6:.0f} MB list read again 5 times", run,
                r"loaded whitelist from string key gray: 1401000 entries", "1,401,000 entries loaded",
                max_growth_mib=64)
    row.check(state["loaded"], "both workers loaded it")
    row.check(state["rereads"] == 5, f"the session's holder read it again {state['rereads']} of 5 times")
    growth = rss_growth(state["rss"], rss_floor(gw))
    row.check(growth <= 4, f"worker RSS moved {growth:+.1f} MiB over the 5 re-reads (bound 4)")
    put_good(redis, gw)
    return row


def changing_every_10ms(redis, change):
    """A run for `abuse`: `change(con, rng)` applied and published every 10 ms for 3 s;
    the list returned holds the number of changes made once the run is over."""
    changes = [0]

    def run():
        stop_churn = threading.Event()

        def churner():
            con = redis.connect()
            rng = random.Random(4)
            while not stop_churn.is_set():
                change(con, rng)
                con.call("PUBLISH", "gray:changed", "1")
                changes[0] += 1
                time.sleep(0.01)
            con.close()
        thread = threading.Thread(target=churner)
        thread.start()
        time.sleep(3)
        stop_churn.set()
        thread.join()
    return run, changes


def versions_settle(gw, key, timeout):
    """Waits until every worker serves one version of `key`; returns it (None at the timeout)."""
    state = {}

    def settled():
        versions = gw.loaded_versions(key)
        state["version"] = next(iter(versions.values()), None)
        return len(versions) == 2 and len(set(versions.values())) == 1
    return state["version"] if wait_until(settled, timeout, 0.02) else None


def last_change_served(row, redis, gw, key, write_final, final):
    """After the churn, `write_final()` puts `final` (a version learned before the churn) back:
    every worker must serve it, and route the probe client to gray, within the recovery bound.
    A refresher that stopped during the churn keeps another version."""
    written = time.time()
    write_final()
    served = wait_until(lambda: set(gw.loaded_versions(key).values()) == {final}, 10, 0.01)
    took = time.time() - written
    row.check(served and took <= RECOVERY_BOUND,
              f"the last change served by both workers {took:.2f} s after it was written (bound {RECOVERY_BOUND:.1f} s)")
    row.check(wait_routes(gw, PROBE, "gray", RECOVERY_BOUND), "the last change routes the probe client to gray")


def learn_final(redis, gw, key, write_final):
    """The version every worker serves once `write_final()` is written (before the churn)."""
    before = set(gw.versions_by_pid(key).values())
    write_final()
    assert wait_until(lambda: not set(gw.versions_by_pid(key).values()) & before, 10, 0.02), \
        f"the workers never loaded the final state of {key}: {gw.versions_by_pid(key)}, {before} before"
    final = versions_settle(gw, key, 10)
    assert final, f"the workers never agreed on the final state of {key}"
    return final


def churn(redis, gw):
    """The good entries stay; 50 others come and go every 10 ms, each change published; then the
    probe client is added, and that last change is what every worker serves."""
    def write_final():
        redis.pipe(["SET", "gray", ",".join(GOOD + [PROBE])])
    final = learn_final(redis, gw, "gray", write_final)
    put_good(redis, gw, kind="set")

    def change(con, rng):
        con.call("SADD" if rng.random() < 0.5 else "SREM", "gray", f"10.7.0.{rng.randrange(50)}")
    run, changes = changing_every_10ms(redis, change)
    row = abuse(gw, "entries changing every 10 ms", run, r"loaded whitelist from set key gray",
                "set reloads logged")
    row.check(changes[0] >= 100, f"{changes[0]} published changes")
    last_change_served(row, redis, gw, "gray", write_final, final)
    put_good(redis, gw)
    return row


def holder_lost(redis, gw, sig, what):
    """The worker holding the Redis session SIGKILLed (or SIGSTOPped) under load, 1 s into 3 s of
    50 entries coming and going every 10 ms: another worker takes the session; the change written
    as the churn ends is served by every other worker within the recovery bound (the stopped one
    once resumed, at least 2 s after the stop), and nothing is routed by a list that never was."""
    def write_final():
        redis.pipe(["SET", "gray", ",".join(GOOD + [PROBE])])
    final = learn_final(redis, gw, "gray", write_final)
    put_good(redis, gw, kind="set")
    holder = gw.session_holder()
    assert holder in gw.workers(), f"no worker named the session's holder ({holder})"
    connections_before = redis.cli("CLIENT", "LIST").count("addr=")
    since = gw.log_size()
    load = Load(gw.port, member_requests())

    def change(con, rng):
        con.call("SADD" if rng.random() < 0.5 else "SREM", "gray", f"10.7.0.{rng.randrange(50)}")
    run, changes = changing_every_10ms(redis, change)
    churning = threading.Thread(target=run)
    churning.start()
    time.sleep(1)
    os.kill(holder, sig)
    signalled = time.time()
    churning.join()
    taken = wait_until(lambda: gw.session_holder() not in (None, holder), 5, 0.02)
    written = time.time()
    write_final()

    def serve_final(pids):
        versions = gw.versions_by_pid("gray")
        return all(versions.get(pid) == final for pid in pids)
    running = [w for w in gw.workers() if w != holder]
    served = wait_until(lambda: serve_final([w for w in gw.workers() if w != holder]), 10, 0.01)
    took = time.time() - written
    if sig == signal.SIGSTOP:
        time.sleep(max(0.0, signalled + 2 - time.time()))
        os.kill(holder, signal.SIGCONT)
    resumed = wait_until(lambda: serve_final(gw.workers()), 10, 0.01)
    counts, errors = load.finish()
    row = Row(what, counts, errors, recovered=took if served else None,
              errors_allowed=WRK_CONNECTIONS if sig == signal.SIGKILL else 0)
    row.check(changes[0] >= 100, f"{changes[0]} changes written and published during it")
    row.check(taken, "another worker took the session")
    row.check(served, f"the change written as the churn ended served by the {len(running)} other worker(s) "
                      f"{took:.2f} s after it was written (bound {RECOVERY_BOUND:.1f} s)")
    row.check(resumed, "then served by every worker")
    if sig == signal.SIGKILL:
        row.check(errors <= WRK_CONNECTIONS,
                  f"{errors} socket errors: the connections the killed worker held (at most {WRK_CONNECTIONS})")
    row.check(not logged(gw, r"\[(crit|emerg)\]|\[alert\](?!.*exited on signal 9)", since),
              "no crit, and no alert but the killed worker's exit, in the error log")
    connections = []
    row.check(wait_until(lambda: connections.append(redis.cli("CLIENT", "LIST").count("addr="))
                         or connections[-1] <= connections_before, 5, 0.2),
              f"Redis connections: {connections_before} before, {connections[-1]} after (one session)")
    put_good(redis, gw)
    return row


def holder_killed(redis, gw):
    return holder_lost(redis, gw, signal.SIGKILL, "session holder SIGKILLed, entries changing every 10 ms")


def holder_stopped(redis, gw):
    return holder_lost(redis, gw, signal.SIGSTOP, "session holder SIGSTOPped 2 s, entries changing every 10 ms")


def rule_set_churn(redis, gw):
    """A rule set replaced every 10 ms under load, with a lane and anonymous ids on: a percentage
    raised and lowered, the rules after the whitelist rule reordered. Every variant gives its ramp
    only to a network the load does not use and mints ids for a rule that sends to the default, so
    every live rule set routes each member to gray and each non-member to prod (minting an id for
    each): a response routed otherwise came from no rule set that was live."""
    put_good(redis, gw)
    lane = {"header": "X-Gray-Lane", "labels": {"@prod1": "stable", "@prod2-grey": "gray"}}
    anonymous = {"cookie": "gray_uid", "max_age": 3600}

    def rule_set(rules):
        return json.dumps({"format": 1, "default": "@prod1", "lane": lane, "anonymous": anonymous,
                           "rules": [{"name": "list", "ip_key": "gray", "to": "@prod2-grey"}, *rules]})

    def change(con, rng):
        rules = [{"name": "ramp", "ip": ["10.250.0.0/16"], "percent": rng.choice([0, 1, 5, 10, 50, 100]),
                  "to": "@prod2-grey"},
                 {"name": "anonymous", "percent": rng.choice([0, 10, 100]), "by": ["cookie:gray_uid"],
                  "to": "@prod1"}]
        rng.shuffle(rules)
        con.call("SET", "gray:rules", rule_set(rules))
    final_rules = rule_set([{"name": "probe", "ip": [PROBE], "to": "@prod2-grey"},
                            {"name": "anonymous", "percent": 10, "by": ["cookie:gray_uid"], "to": "@prod1"}])

    def write_final():
        redis.pipe(["SET", "gray:rules", final_rules])
    final = learn_final(redis, gw, "gray:rules", write_final)
    run, changes = changing_every_10ms(redis, change)
    row = abuse(gw, "rule sets changing every 10 ms (percent up and down, rules reordered; lanes, minted ids)",
                run, r"loaded rule set from key gray:rules: 3 rules", "rule set reloads logged")
    row.check(changes[0] >= 100, f"{changes[0]} published rule sets")
    last_change_served(row, redis, gw, "gray:rules", write_final, final)
    for client, route, label, minted in ((MEMBERS[0], "gray", "gray", False), (NON_MEMBERS[0], "prod", "stable", True)):
        conn = http.client.HTTPConnection(HOST, gw.port, timeout=5)
        conn.request("GET", "/", headers={"X-Forwarded-For": client, "X-Expect": "-", "X-Gray-Lane": "forged"})
        response = conn.getresponse()
        body = response.read().decode().split()
        cookie = response.getheader("Set-Cookie") or ""
        conn.close()
        row.check(body[:1] == [route] and body[2:] == [label],
                  f"{client} went to {route} carrying X-Gray-Lane: {label} (answer: {' '.join(body)})")
        row.check(cookie.startswith("gray_uid=") == minted,
                  f"{client} {'got an id' if minted else 'got no id'} (Set-Cookie: {cookie or 'none'})")
    redis.cli("DEL", "gray:rules")
    redis.publish()
    put_good(redis, gw)
    return row


# --- rollout -------------------------------------------------------------------------------------

GRAYCTL = os.path.join(TOP, "target", "release", "grayctl")


def grayctl(*args):
    return subprocess.run([GRAYCTL, "--redis", f"redis://{HOST}:{REDIS_PORT}/0", *args],
                          capture_output=True, text=True, check=True).stdout


def rollout_plan():
    """The plan as `grayctl rollout status --json` shows it; no step while Redis cannot say."""
    try:
        return json.loads(grayctl("rollout", "status", "--json"))
    except subprocess.CalledProcessError:
        return {"step": 0, "state": "unknown"}


def rollout(redis, gw, drivers):
    """A rollout plan stepping a percentage of the non-members to gray under load while Redis is
    killed and restarted and the worker driving the plan is SIGKILLed: it ends done, each step
    applied once. The loaded gateway counts the responses; two others, under no load (a killed
    worker's connections would fail wrk's requests), drive."""
    put_good(redis, gw)
    redis.cli("SET", "gray:rules", json.dumps({"format": 1, "default": "@prod1", "rules": [
        {"name": "list", "ip_key": "gray", "to": "@prod2-grey"},
        {"name": "canary", "percent": 0, "to": "@prod2-grey"}]}))
    redis.publish()
    steps = [5, 10, 25, 50, 100]
    load = Load(gw.port, member_requests())
    grayctl("rollout", "start", "canary", "--steps", ",".join(map(str, steps)), "--hold", "1s",
            "--interval", "1s", "--max-error-rate", "1", "--min-requests", "20", "-m", "chaos")
    wait_until(lambda: rollout_plan()["step"] >= 2, 30, 0.1)
    redis.cli("SAVE")   # a restarted Redis comes back with the plan, as one with persistence does
    redis.kill()
    time.sleep(REFRESH)
    redis.start()
    wait_until(lambda: rollout_plan()["step"] >= 3, 30, 0.1)
    holder = redis.cli("GET", "gray:rules:rollout:lease").strip()
    pid = int(holder.rsplit(":", 1)[1])
    # Asked before the kill: its master starts another worker in its place.
    was_driver = any(pid in d.workers() for d in drivers)
    os.kill(pid, signal.SIGKILL)
    done = wait_until(lambda: rollout_plan()["state"] in ("done", "aborted"), 60, 0.1)
    plan = rollout_plan()

    def accept(expected, route, _start):
        # Members always go to gray; non-members as the plan's percentage has them.
        return route == "gray" if expected == "gray" else True
    row = Row("a rollout plan under load, Redis killed and restarted, its driver SIGKILLed", *load.finish(),
              accept=accept)
    row.check(done and plan["state"] == "done", f"the plan ended {plan['state']}: {plan.get('reason')}")
    row.check(was_driver, f"the lease holder {holder} was a driver's worker")
    row.check(plan.get("driver") and not plan["driver"].endswith(f":{pid}"),
              f"another worker finished it ({plan.get('driver')})")
    history = json.loads(grayctl("history", "--json"))
    moves = [e["command"] for e in history if e.get("command", "").startswith("rollout step")]
    for n in range(2, len(steps) + 1):
        applied = sum(1 for m in moves if f"step {n} of {len(steps)}," in m)
        row.check(applied == 1, f"step {n} applied {applied} time(s)")
    redis.cli("DEL", "gray:rules", "gray:rules:rollout", "gray:rules:rollout:lease")
    redis.publish()
    put_good(redis, gw)
    return row


# --- spoofing -----------------------------------------------------------------------------------

def spoofed_headers():
    """Every one claims members; the peer (127.0.0.1) is not trusted by the spoof gateway."""
    m = MEMBERS
    many = ", ".join(m[i % len(m)] for i in range(200))
    headers = [f"X-Forwarded-For: {m[0]}", f"X-Real-IP: {m[1]}", f"X-Forwarded-For: {m[2]}, {m[3]}",
               f"X-Forwarded-For: {many}", f"X-Forwarded-For: {m[4]}\tX-Real-IP: {m[5]}",
               f"X-Forwarded-For: 127.0.0.2, {m[6]}", f"X-Forwarded-For: {m[7]}:443",
               "X-Forwarded-For: [2001:db8:1::5]:443", f"X-Real-IP: {m[8]}, {m[9]}",
               "X-Forwarded-For: " + "9" * 6000, f"X-Forwarded-For: {m[10]}" + ", x" * 1000]
    return [f"prod\t{h}" for h in headers]


def forwarded_headers():
    """Long, malformed and many-hop headers from the trusted proxy, with what they must derive."""
    m, n = MEMBERS, NON_MEMBERS
    many_ending_member = ", ".join(n[i % len(n)] for i in range(199)) + f", {m[0]}"
    many_ending_non_member = ", ".join(m[i % len(m)] for i in range(199)) + f", {n[0]}"
    cases = [("gray", many_ending_member), ("prod", many_ending_non_member),
             ("gray", f"{m[1]}, 127.0.0.1, 127.0.0.1"),       # trusted hops are skipped
             ("gray", f" , ,{m[2]} ,, "),                     # blanks and empty hops
             ("gray", f"{m[3]}:8080"), ("gray", "[2001:db8:1::5]:443"), ("gray", "[2001:db8:1::a]"),
             ("prod", f"{m[4]}, bogus"),                      # unparsable: the peer, as realip does
             ("prod", "9" * 6000), ("prod", f"{m[5]}0"), ("prod", f"::ffff:{n[1]}"),
             ("gray", f"::ffff:{m[6]}")]
    return [f"{want}\tX-Forwarded-For: {h}" for want, h in cases]


def spoofing(redis, spoof):
    load = Load(spoof.port, spoofed_headers())
    time.sleep(2)
    return Row("spoofed XFF / X-Real-IP from an untrusted peer", *load.finish())


def forwarded(redis, gw):
    load = Load(gw.port, forwarded_headers())
    time.sleep(2)
    return Row("long, malformed, many-hop XFF from the trusted proxy", *load.finish())


# --- report -------------------------------------------------------------------------------------

def run_row(fault, *args):
    """`fault`'s row; a row that could not run (its set-up failed) is a failed row, and the rest run."""
    try:
        return fault(*args)
    except (AssertionError, RuntimeError) as e:
        row = Row(fault.__name__, [], 0)
        row.check(False, f"could not run: {e}")
        return row


def table(rows):
    """The rows' table, as the README quotes it."""
    lines = ["| fault | requests | non-2xx | socket errors | misrouted | recovered after | result |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if r.requests is None:
            figures = "- | - | - | -"
        else:
            figures = f"{r.requests:,} | {r.non_2xx} | {r.errors} | {r.misrouted}"
        recovered = f"{r.recovered:.2f} s" if r.recovered is not None else "-"
        lines.append(f"| {r.fault} | {figures} | {recovered} | {'ok' if r.ok else 'FAILED'} |")
    return "\n".join(lines)


def failures(row):
    """What made `row` fail, for the last lines a CI log shows."""
    why = [f"FAILED: {what}" for ok, what in row.checks if not ok]
    if row.requests is not None:
        if row.requests == 0:
            why.append("no request answered")
        if row.non_2xx:
            why.append(f"{row.non_2xx} non-2xx")
        if row.errors > row.errors_allowed:
            why.append(f"{row.errors} socket errors (at most {row.errors_allowed})")
        if row.misrouted:
            why.append(f"{row.misrouted} misrouted")
        if row.recovered is not None and row.recovered > row.bound:
            why.append(f"recovered after {row.recovered:.2f} s (bound {row.bound:.1f} s)")
    return ["\n  " + w for w in why]


def details(rows, reference):
    """The keep-alive reference and the checks behind each row."""
    lines = [f"For reference, not judged: the same {RELOADS} reloads with keep-alive connections "
              "(wrk does not retry a request on a keep-alive connection the old worker closed):", ""]
    lines += [f"- {name}: {errors} socket errors in {requests:,} requests" for name, requests, errors in reference]
    lines += ["", "Checks behind each row:", ""]
    for r in rows:
        for ok, what in r.checks:
            lines.append(f"- {'ok' if ok else 'FAILED'}: {r.fault}: {what}")
        for what in r.notes:
            lines.append(f"- (not judged) {r.fault}: {what}")
    return "\n".join(lines)


def main():
    global RUN_DIR
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", metavar="FILE", help="also write the table, as Markdown, to FILE")
    opts = parser.parse_args()
    started = time.time()
    rows, reference = [], []
    with harness.run_dir("gray-chaos-") as RUN_DIR:
        redis = Redis(REDIS_PORT, RUN_DIR)
        redis.put_list(GOOD, "string")
        reload_backends = start_backends()
        gw = Gateway("gateway", GATEWAY_PORT, trusted="127.0.0.1")
        spoof = Gateway("spoof", SPOOF_PORT, trusted="127.0.0.2")
        put_good(redis, gw)
        for fault in (baseline, redis_killed, redis_hung, redis_restarted_empty, garbage, huge_value,
                      binary_value, wrong_type, large_rereads, churn, rule_set_churn, forwarded, reloads):
            log(fault.__name__)
            rows.append(run_row(fault, redis, gw))
        log("session holder")
        holding = Gateway("holder", HOLDER_PORT, trusted="127.0.0.1")
        put_good(redis, holding)
        for fault in (holder_killed, holder_stopped):
            rows.append(run_row(fault, redis, holding))
        holding.signal("quit")
        holding.proc.wait(30)
        PROCESSES.remove(holding.proc)
        log("rollout")
        drivers = [Gateway(f"driver{i}", port, trusted="127.0.0.1", options="rollouts = true,")
                   for i, port in enumerate(DRIVER_PORTS)]
        rows.append(run_row(rollout, redis, gw, drivers))
        for driver in drivers:
            driver.signal("quit")
            driver.proc.wait(30)
            PROCESSES.remove(driver.proc)
        log("sentinel_failover")
        group = SentinelGroup()
        group.master.put_list(GOOD, "string")
        ha = Gateway("ha", HA_GATEWAY_PORT, trusted="127.0.0.1", redis=group.options())
        rows.append(run_row(sentinel_failover, group, ha))
        log("black_holed")
        proxy = BlackHoleProxy(PROXY_PORT, REDIS_PORT)
        proxied = Gateway("proxied", PROXIED_GATEWAY_PORT, trusted="127.0.0.1",
                          redis=f'redis = "redis://{HOST}:{PROXY_PORT}/0"')
        rows.append(run_row(black_holed, redis, proxy, proxied))
        log("keep-alive reference")
        reference = keepalive_reference(gw, reload_backends)
        log("spoofing")
        rows.append(spoofing(redis, spoof))
        log("quit")
        rows.append(quit_gateway(gw, "gateway", expected_exits=2))
        rows.append(quit_gateway(spoof, "spoof gateway", expected_exits=2))
        rows.append(quit_gateway(ha, "Sentinel gateway", expected_exits=2))
        rows.append(quit_gateway(proxied, "proxied gateway", expected_exits=2))
        proxy.close()
    print(table(rows) + "\n\n" + details(rows, reference))
    failed = [r.fault for r in rows if not r.ok]
    if opts.report:
        write_report(opts.report, rows, reference, failed, time.time() - started)
    if failed:
        log("FAILED:", ", ".join(failed))
        for r in rows:
            if not r.ok:
                log(f"why {r.fault} failed:", *failures(r))
        sys.exit(1)


def write_report(out, rows, reference, failed, elapsed):
    """The report, whose run line and table README.md quotes (and is given here)."""
    run = (f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC of commit {harness.commit()}, "
           f"{elapsed:.0f} s, {os.cpu_count()} cores shared.")
    text = (f"# gray under faults (`make chaos`)\n\n{harness.quoted('chaos', run + chr(10) + chr(10) + table(rows))}\n\n"
            f"Gateway: nginx, 2 workers, gray with its defaults and `count_responses` "
            f"(refresh {REFRESH:.0f} s); load: `wrk -t2 -c{WRK_CONNECTIONS}`, members and non-members of a 1,000-entry "
            f"list through a trusted proxy; recovered after: Redis back to the new state routed (bound "
            f"{RECOVERY_BOUND:.1f} s; for the Sentinel row, from the sentinels naming the new master to a "
            f"change written there routed, bound {FAILOVER_BOUND:.1f} s).\n\n{details(rows, reference)}\n\n"
            f"{'FAILED: ' + ', '.join(failed) if failed else 'All passed.'}\n")
    with open(out, "w") as f:
        f.write(text)
    log(f"wrote {out}")
    harness.quote_in_readme("chaos", text)
    log("README.md quotes the new table")


if __name__ == "__main__":
    main()
