"""The dashboard page in a real browser: Debian's chromium (headless, driven by Debian's
selenium and chromedriver) loads gray.dashboard() from a real gateway under traffic, with a rollout
plan running and a rule whose name carries markup. After the page's scripts ran, it must show each
target with the request rate the test sent within 20%, the rule's name as text (its markup never
run), the plan's step, no sideways scrolling at a phone's width, and, once the gateway is gone,
say that it cannot fetch. Screenshots are saved as target/dashboard.png and
target/dashboard-phone.png for a person to look at. Run with Debian's python3 (its selenium)."""

import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (HOST, TOP, Redis, finish, get, log, run_dir, signal_nginx,  # noqa: E402
                     start_gray_gateway, wait_until)
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

REDIS_PORT, GATEWAY_PORT = 16650, 16651
GRAYCTL = os.path.join(TOP, "target", "release", "grayctl")
SCREENSHOT = os.path.join(TOP, "target", "dashboard.png")
PHONE_SCREENSHOT = os.path.join(TOP, "target", "dashboard-phone.png")
RULE = 'canary <script>window.__ran = "script"</script><img src=x onerror="window.__ran = \'img\'">'
RULE_SET = {"format": 1, "default": "@prod1",
            "rules": [{"name": RULE, "percent": 0, "by": ["header:X-User"], "to": "@prod2-grey",
                       "guard": {"max_error_rate": 50, "min_requests": 1000000}}]}
PACE = 0.025  # 40 requests a second
WATCH_S = 16


def traffic(stop, sent):
    n = 0
    while not stop.is_set():
        status, body = get(GATEWAY_PORT, "/", headers={"X-User": f"u{n}"})
        if status == 200:
            sent.append((time.time(), body.strip()))
        n += 1
        time.sleep(PACE)


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1800", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def main():
    failures = []
    with run_dir("gray-dashboard-") as directory:
        redis = Redis(REDIS_PORT, directory)
        redis.cli("SET", "gray:rules", json.dumps(RULE_SET))
        prefix = start_gray_gateway(directory, REDIS_PORT, GATEWAY_PORT, """
        location = /gray/dashboard { content_by_lua_block { require("gray").dashboard() } }""")
        subprocess.run([GRAYCTL, "--redis", f"redis://{HOST}:{REDIS_PORT}/0", "rollout", "start", RULE,
                        "--steps", "30,60,100", "--hold", "10m", "--max-error-rate", "50"],
                       check=True, capture_output=True)
        stop, sent = threading.Event(), []
        sender = threading.Thread(target=traffic, args=(stop, sent), daemon=True)
        sender.start()
        driver = browser()
        try:
            driver.get(f"http://{HOST}:{GATEWAY_PORT}/gray/dashboard")
            time.sleep(WATCH_S)
            # The page redraws every 2 s: what it shows is read in one go, as one frame.
            shown = driver.execute_script("""
                const all = s => [...document.querySelectorAll(s)];
                return {
                    rates: Object.fromEntries(all("tr[data-target]").map(r => [r.dataset.target, r.dataset.rate])),
                    windows: Object.fromEntries(all("tr[data-target]").map(r => [r.dataset.target, [r.dataset.from, r.dataset.to]])),
                    names: all("td.rule-name").map(e => e.textContent),
                    steps: all("[data-step]").map(e => e.textContent),
                    states: all("[data-state]").map(e => e.textContent),
                    ran: window.__ran === undefined ? null : window.__ran,
                };""")
            for target, body in (("@prod1", "prod"), ("@prod2-grey", "gray")):
                if not shown["rates"].get(target):
                    failures.append(f"the page shows no rate for target {target}: {shown['rates']}")
                    continue
                # What the test sent over the page's own window (the gateway's clock, this host's):
                # a page whose polls a busy machine delays averages over more than 10 s.
                since, until = (float(at) for at in shown["windows"][target])
                sent_rate = sum(1 for at, b in sent if b == body and since < at <= until) / (until - since)
                rate = float(shown["rates"][target])
                log("dashboard-check", f"{target}: the page shows {rate:.1f}/s, the test sent {sent_rate:.1f}/s")
                if not abs(rate - sent_rate) <= 0.2 * sent_rate:
                    failures.append(f"{target}: the page shows {rate}/s, the test sent {sent_rate:.1f}/s")
            if RULE not in shown["names"]:
                failures.append(f"the rule's name is not shown as text: {shown['names']}")
            if shown["ran"] is not None:
                failures.append(f"markup in a rule name ran: {shown['ran']}")
            if shown["steps"] != ["step 1 of 3"]:
                failures.append(f"the plan's step: {shown['steps']}")
            if shown["states"] not in (["running"], ["holding"]):
                failures.append(f"the plan's state: {shown['states']}")
            driver.save_screenshot(SCREENSHOT)
            log("dashboard-check", f"screenshot: {SCREENSHOT}")
            # A phone's width: the page reflows into one column, wide tables scroll in their box,
            # the page itself never sideways.
            driver.set_window_size(390, 844)
            time.sleep(2.5)
            overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            if overflow > 0:
                failures.append(f"at a phone's width the page is {overflow} px wider than the screen")
            driver.save_screenshot(PHONE_SCREENSHOT)
            stop.set()
            sender.join(5)
            signal_nginx(prefix, "stop")
            def says_it_cannot_fetch():
                problem = driver.find_element(By.ID, "problem")
                return problem.is_displayed() and "Cannot fetch" in problem.text
            if not wait_until(says_it_cannot_fetch, 10):
                failures.append("with the gateway gone, the page does not say it cannot fetch")
        finally:
            stop.set()
            driver.quit()
    finish("dashboard-check", failures,
           "the page shows the targets' rates, the rule as text, the plan's step, and a fetch failure")


if __name__ == "__main__":
    main()
