"""What `make bench` and `make chaos` share: starting and always stopping redis-server and nginx
on loopback, talking to them, and reading a process's resources from /proc.

Every process started through `spawn` is stopped by `stop_all`, which the runners call in a
`finally`, so a failed run leaves nothing behind.
"""

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB_DIR = os.path.join(TOP, "target", "release")
MODULES = ["/usr/lib/nginx/modules/ndk_http_module.so", "/usr/lib/nginx/modules/ngx_http_lua_module.so"]
HOST = "127.0.0.1"

PROCESSES = []


def log(name, *args):
    print(f"{name}:", *args, file=sys.stderr, flush=True)


# --- processes --------------------------------------------------------------------------------

def spawn(args, **kwargs):
    proc = subprocess.Popen(args, **kwargs)
    PROCESSES.append(proc)
    return proc


def stop(proc, sig=signal.SIGTERM, timeout=15):
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in PROCESSES:
        PROCESSES.remove(proc)


def stop_all(*_):
    for proc in list(PROCESSES):
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
        stop(proc, signal.SIGQUIT if "nginx" in str(proc.args) else signal.SIGTERM, timeout=5)


@contextlib.contextmanager
def run_dir(prefix):
    """A scratch directory for one run; when the run ends, also by an exception or SIGTERM, every
    process `spawn` started is stopped and the directory removed."""
    path = tempfile.mkdtemp(prefix=prefix)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        yield path
    finally:
        stop_all()
        shutil.rmtree(path, ignore_errors=True)


def finish(name, failures, passed):
    """Ends a check: each failure said, exit 1 if any; else what passed."""
    for failure in failures:
        log(name, "FAILED:", failure)
    if failures:
        sys.exit(1)
    log(name, passed)


def wait_until(check, timeout, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


def wait_port(port, timeout=120):
    def answers():
        try:
            get(port, "/__ready", timeout=1)
            return True
        except OSError:
            return False
    if not wait_until(answers, timeout):
        raise RuntimeError(f"nothing answers on {HOST}:{port}")


def get(port, path, conn=None, headers=None, timeout=10):
    conn = conn or http.client.HTTPConnection(HOST, port, timeout=timeout)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read().decode()


# --- /proc ------------------------------------------------------------------------------------

def worker_pids(prefix):
    with open(os.path.join(prefix, "nginx.pid")) as f:
        master = f.read().strip()
    with open(f"/proc/{master}/task/{master}/children") as f:
        return [int(p) for p in f.read().split()]


def commit():
    """The commit a report measured, as `git describe --always --dirty` names it."""
    described = subprocess.run(["git", "-C", TOP, "describe", "--always", "--dirty"], capture_output=True, text=True)
    return described.stdout.strip() or "unknown"


# --- figures the README quotes ----------------------------------------------------------------

def markers(name):
    """The lines around the figures of a `make NAME` run that README.md quotes from its report."""
    return (f"<!-- quoted by README.md from the last `make {name}`: begin -->",
            f"<!-- quoted by README.md from the last `make {name}`: end -->")


def quoted(name, text):
    """`text` between the markers of `make NAME`'s quoted figures."""
    begin, end = markers(name)
    return f"{begin}\n{text}\n{end}"


def quote_in_readme(name, report):
    """Puts the quoted figures of `report` (text holding `quoted(name, ...)`) in README.md in place
    of the ones there: the README's figures are always the last run's (tests/readme_figures.rs)."""
    begin, end = markers(name)
    block = report[report.index(begin):report.index(end) + len(end)]
    path = os.path.join(TOP, "README.md")
    with open(path) as f:
        readme = f.read()
    start, stop = readme.index(begin), readme.index(end) + len(end)
    with open(path, "w") as f:
        f.write(readme[:start] + block + readme[stop:])


def rss_mib(pid):
    return status_mib(pid, "VmRSS")


def peak_rss_mib(pid):
    """The process's resident-set high-water mark."""
    return status_mib(pid, "VmHWM")


def status_mib(pid, field):
    """A memory field of /proc/<pid>/status (reported in kB), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def cpu_seconds(pid, threads="all"):
    """CPU time (user + system) of a process: all its threads, or only the ones other than its
    main thread (threads="others": in an nginx worker, gray's refresher)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        if threads == "others" and int(tid) == pid:
            continue
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def alive(pid):
    """Running, not a zombie: a container's PID 1 may reap exited daemons late."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- redis ------------------------------------------------------------------------------------

def redis_cli(port, *args, check=True):
    """One redis-cli command to the Redis (or sentinel) on loopback `port`: its output."""
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"redis-cli {args[:2]}: {out.stderr}")
    return out.stdout.strip()


class Redis:
    """A private redis-server on loopback. `start` again after `kill` restarts it on the same
    port and directory, from its dump if one was saved, as a real restart would."""

    def __init__(self, port, run_dir, *args):
        self.port = port
        self.args = args
        self.dir = os.path.join(run_dir, f"redis-{port}")
        os.makedirs(self.dir, exist_ok=True)
        self.start()

    def start(self):
        self.proc = spawn(["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "",
                           "--appendonly", "no", "--dir", self.dir, "--logfile", "redis.log",
                           "--proto-max-bulk-len", "1gb", *self.args])
        if not wait_until(lambda: self.cli("PING", check=False) == "PONG", 10):
            raise RuntimeError("redis-server did not start")

    def kill(self):
        stop(self.proc, signal.SIGKILL)

    def forget_dump(self):
        try:
            os.remove(os.path.join(self.dir, "dump.rdb"))
        except FileNotFoundError:
            pass

    def cli(self, *args, check=True):
        return redis_cli(self.port, *args, check=check)

    def pipe(self, *commands):
        """Runs commands (each a list of str or bytes words) in one `redis-cli --pipe`."""
        def word(w):
            return w if isinstance(w, bytes) else w.encode()
        payload = b"".join(
            f"*{len(c)}\r\n".encode() + b"".join(b"$%d\r\n%s\r\n" % (len(word(w)), word(w)) for w in c)
            for c in commands)
        subprocess.run(["redis-cli", "-p", str(self.port), "--pipe"], input=payload,
                       capture_output=True, check=True)

    def put_list(self, entries, kind, key="gray"):
        """Replaces `key` with `entries`, as a string or a SET, in one transaction: a reader never
        sees the key missing or half filled."""
        commands = [["MULTI"], ["DEL", key]]
        if kind == "string":
            commands.append(["SET", key, ",".join(entries)])
        else:
            commands += [["SADD", key, *entries[i:i + 1000]] for i in range(0, len(entries), 1000)]
        self.pipe(*commands, ["EXEC"])

    def publish(self):
        self.cli("PUBLISH", "gray:changed", "1")

    def connect(self):
        return RespConnection(self.port)

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)


class RespConnection:
    """A persistent Redis connection, so timings do not include starting redis-cli."""

    def __init__(self, port):
        self.sock = socket.create_connection((HOST, port))
        self.reader = self.sock.makefile("rb")

    def call(self, *words):
        payload = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        self.sock.sendall(payload.encode())
        reply = self.reader.readline()
        if not reply[:1] in (b"+", b":"):
            raise RuntimeError(f"redis: {words[0]}: {reply!r}")

    def close(self):
        self.reader.close()
        self.sock.close()


# --- nginx ------------------------------------------------------------------------------------

def nginx_prefix(run_dir, name):
    prefix = os.path.join(run_dir, name)
    shutil.rmtree(prefix, ignore_errors=True)
    os.makedirs(os.path.join(prefix, "logs"))
    return prefix


def preamble(prefix, log_level, worker_connections=4096):
    """What every nginx here starts with: its files under `prefix`, then `http {` opened."""
    temp = "\n".join(f"    {kind}_temp_path {prefix}/{kind}_temp;"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log {log_level};
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
{temp}"""


def load_modules():
    return "\n".join(f"load_module {m};" for m in MODULES)


def start_nginx(prefix, conf, ready_port, timeout=120):
    """Writes `conf` into `prefix` and runs nginx in the foreground until `ready_port` answers."""
    path = os.path.join(prefix, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    proc = spawn(["nginx", "-p", prefix + "/", "-c", path])
    wait_port(ready_port, timeout)
    return proc


def signal_nginx(prefix, name):
    """`nginx -s name` (reload, quit, ...) for the nginx `start_nginx` started in `prefix`."""
    subprocess.run(["nginx", "-p", prefix + "/", "-c", os.path.join(prefix, "nginx.conf"), "-s", name],
                   check=True, capture_output=True)


def start_responders(directory, answers):
    """One nginx worker answering `return 200 <body>` on each port of `answers` ({port: body}, the
    body in nginx syntax); returns the process and its prefix."""
    prefix = nginx_prefix(directory, "backends")
    servers = "".join(f"""
    server {{ listen {HOST}:{port}; keepalive_requests 1000000;
             location / {{ return 200 "{body}\\n"; }} }}""" for port, body in answers.items())
    conf = f"""
worker_processes 1;
daemon off;
{preamble(prefix, "warn")}{servers}
}}
"""
    return start_nginx(prefix, conf, next(iter(answers))), prefix


def start_gray_gateway(directory, redis_port, port, locations=""):
    """A gateway of 2 workers routing by gray (responses counted, rollouts driven), @prod1 and
    @prod2-grey answering "prod" and "gray", with `locations` added to its server; its prefix."""
    prefix = nginx_prefix(directory, "gateway")
    conf = f"""
{load_modules()}
worker_processes 2;
daemon off;
{preamble(prefix, "notice")}
    lua_package_cpath "{LIB_DIR}/lib?.so;;";
    init_by_lua_block {{ require "gray" }}
    init_worker_by_lua_block {{
        require("gray").configure{{ redis = "redis://{HOST}:{redis_port}/0", count_responses = true,
                                    rollouts = true }}
    }}
    server {{
        listen {HOST}:{port};
        location / {{ content_by_lua_block {{ require("gray").route() }} }}
        location @prod1 {{ return 200 "prod\\n"; }}
        location @prod2-grey {{ return 200 "gray\\n"; }}
        location = /__ready {{ return 200; }}
{locations}
    }}
}}
"""
    start_nginx(prefix, conf, port)
    return prefix
