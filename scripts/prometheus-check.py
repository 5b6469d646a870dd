"""A real Prometheus (Debian's) scrapes a real gateway under traffic, with a rollout plan running
and the rules of contrib/prometheus/gray.rules.yml loaded: every rule evaluates without error,
every recording rule returns series, and so does every query of the Grafana dashboard
contrib/grafana/gray.json (its variable and each panel's). Everything on loopback, on ports of its
own, stopped at the end."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (HOST, TOP, Redis, finish, get, log, run_dir, spawn,  # noqa: E402
                     start_gray_gateway, wait_until)

REDIS_PORT, GATEWAY_PORT, PROMETHEUS_PORT = 16640, 16641, 16642
RULES = os.path.join(TOP, "contrib", "prometheus", "gray.rules.yml")
DASHBOARD = os.path.join(TOP, "contrib", "grafana", "gray.json")
GRAYCTL = os.path.join(TOP, "target", "release", "grayctl")
RULE_SET = {"format": 1, "default": "@prod1",
            "rules": [{"name": "ramp", "percent": 50, "by": ["header:X-User"], "to": "@prod2-grey",
                       "guard": {"max_error_rate": 50, "min_requests": 1000000}}]}


def prometheus(directory):
    config = os.path.join(directory, "prometheus.yml")
    with open(config, "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: gray
    metrics_path: /gray/metrics
    static_configs:
      - targets: ["{HOST}:{GATEWAY_PORT}"]
""")
    spawn(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={directory}/tsdb",
           f"--web.listen-address={HOST}:{PROMETHEUS_PORT}", "--log.level=warn"],
          stdout=open(os.path.join(directory, "prometheus.log"), "w"), stderr=subprocess.STDOUT)


def api(path, **params):
    url = f"http://{HOST}:{PROMETHEUS_PORT}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body}")
    return body["data"]


def answers(path, **params):
    try:
        return api(path, **params)
    except OSError:
        return None


def panel_queries():
    """Each query of the dashboard, its variables as a test gateway has them: (where, PromQL)."""
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$rule_set", "gray:rules").replace("$__rate_interval", "1m")
            yield f"panel \"{panel['title']}\"", expr


def traffic(stop):
    n = 0
    while not stop.is_set():
        get(GATEWAY_PORT, "/", headers={"X-User": f"u{n}"})
        n += 1
        time.sleep(0.01)


def main():
    failures = []
    with run_dir("gray-prometheus-") as directory:
        redis = Redis(REDIS_PORT, directory)
        redis.cli("SET", "gray:rules", json.dumps(RULE_SET))
        start_gray_gateway(directory, REDIS_PORT, GATEWAY_PORT, """
        location = /gray/metrics { content_by_lua_block { require("gray").metrics() } }""")
        subprocess.run([GRAYCTL, "--redis", f"redis://{HOST}:{REDIS_PORT}/0", "rollout", "start", "ramp",
                        "--steps", "50,100", "--hold", "10m", "--max-error-rate", "50"],
                       check=True, capture_output=True)
        stop = threading.Event()
        sender = threading.Thread(target=traffic, args=(stop,), daemon=True)
        sender.start()
        try:
            prometheus(directory)
            if not wait_until(lambda: answers("rules") is not None, 60):
                raise RuntimeError("Prometheus never answered")
            groups = api("rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            recorded = [r["name"] for r in rules if r["type"] == "recording"]
            log("prometheus-check", f"{len(rules)} rules loaded, {len(recorded)} recording")

            def all_recorded():
                return all(answers("query", query=name) and answers("query", query=name)["result"]
                           for name in recorded)
            if not wait_until(all_recorded, 90, interval=1):
                for name in recorded:
                    if not (answers("query", query=name) or {}).get("result"):
                        failures.append(f"recording rule {name} returns no series")
            for rule in (r for g in api("rules")["groups"] for r in g["rules"]):
                if rule["health"] != "ok":
                    failures.append(f"rule {rule['name']}: {rule['health']}: {rule.get('lastError')}")
            rule_sets = api("label/rule_set/values", **{"match[]": "gray_requests_total"})
            if "gray:rules" not in rule_sets:
                failures.append(f"the dashboard's rule_set variable offers {rule_sets}")
            queries = list(panel_queries())
            for where, expr in queries:
                try:
                    if not api("query", query=expr)["result"]:
                        failures.append(f"{where}: no series for {expr}")
                except (OSError, RuntimeError) as e:
                    failures.append(f"{where}: {expr}: {e}")
            log("prometheus-check", f"{len(queries)} dashboard queries evaluated")
        finally:
            stop.set()
            sender.join(5)
    finish("prometheus-check", failures,
           "every rule evaluates; every recording rule and dashboard query returns series")


if __name__ == "__main__":
    main()
