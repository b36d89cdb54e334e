"""Browser-side cost of the dashboard page: main-thread milliseconds per second in headless chromium.

    python benchmarks/bench_dashboard_page.py [--workers 4,256] [--seconds 10]

For each size N the page polls a contract-shaped observer (tests/fake_observer.py)
serving N workers, each case in a fresh browser, first with a document that never changes (the floor: fetch, parse,
compare), then with every worker's step and heartbeat age changing several times per
poll (the worst case of a real job: every row's cells change each poll). Chrome's
``Performance.getMetrics`` gives ScriptDuration, LayoutDuration, RecalcStyleDuration and
TaskDuration (all main-thread work) over ``--seconds``; the anchor is the same page at 4
workers in the same run. Needs chromium, chromedriver and selenium.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fake_observer import FakeObserver, dashboard, worker  # noqa: E402


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)


def _metrics(session) -> dict[str, float]:
    return {m["name"]: m["value"] for m in session.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]}


def measure(session, n: int, seconds: float, churn: bool) -> dict[str, float]:
    workers = [worker(rank, step=100 + rank) for rank in range(n)]
    with FakeObserver(dashboard(workers)) as server:
        session.get(server.url + "/")
        session.execute_cdp_cmd("Performance.enable", {})
        time.sleep(3)  # first render and a few polls
        stop = threading.Event()

        def change() -> None:
            k = 0
            while churn and not stop.wait(0.2):
                k += 1
                server.document = dashboard([dict(w, step=w["step"] + k, heartbeat_age_s=0.01 * ((w["rank"] + k) % 20))
                                             for w in workers])

        thread = threading.Thread(target=change)
        thread.start()
        before, started = _metrics(session), time.perf_counter()
        time.sleep(seconds)
        after, elapsed = _metrics(session), time.perf_counter() - started
        stop.set()
        thread.join()
    return {key: 1000 * (after[key] - before[key]) / elapsed
            for key in ("ScriptDuration", "LayoutDuration", "RecalcStyleDuration", "TaskDuration")}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="4,256")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(f"{'workers':>8} {'document':>10} {'script':>8} {'layout':>8} {'style':>8} {'all main':>9}  (ms per s)")
    for n in (int(x) for x in args.workers.split(",")):
        for churn in (False, True):
            session = _browser()  # a fresh browser per case: nothing carried over
            try:
                m = measure(session, n, args.seconds, churn)
            finally:
                session.quit()
            print(f"{n:>8} {'changing' if churn else 'unchanged':>10} {m['ScriptDuration']:8.1f} "
                  f"{m['LayoutDuration']:8.1f} {m['RecalcStyleDuration']:8.1f} {m['TaskDuration']:9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
