"""``python -m simulations partition --serve PORT``: the dashboard over a simulated cluster,
paced to the wall clock, shows the partition while it happens and the healed cluster after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from .browser import chrome, console_errors, wait_for, worker_rows  # noqa: F401 - chrome is a fixture
from .cluster import ROOT, free_port

TIMEOUT = 120


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def test_serve_shows_the_partition_then_the_healed_cluster():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "simulations", "partition", "--workers", "8", "--seed", "3", "--serve", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    seen: list[dict] = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while not any(line.startswith("scenario done") for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, (lines, process.stderr.read())
            try:
                seen.append(json.loads(_get(url + "/api/dashboard")))
            except OSError:  # not serving yet
                pass
            time.sleep(0.05)
        final = json.loads(_get(url + "/api/dashboard"))
        page = _get(url + "/").decode()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    assert len(seen) > 20, "the run was not paced: it ended before the page could follow it"
    served = {doc["answered_by"]["worker_id"] for doc in seen}
    assert served == {"w0"}, served  # w0 stays up in this scenario, so it answers throughout
    cut_off = [doc for doc in seen if any(w["status"] != "alive" for w in doc["workers"])
               or doc["status"]["leader"] is None]
    assert cut_off, "no view showed the partition (a worker not alive, or no leader)"
    assert all(w["status"] == "alive" for w in final["workers"]) and len(final["workers"]) == 8
    assert final["status"]["leader"] is not None and final["status"]["world_size"] == 8
    notes = [record["message"] for record in final["logs"]]
    assert any(n.startswith("partition") for n in notes) and "heal" in notes, notes
    assert 'id="workers"' in page and "static/app.js" in page
    # Simulated time: the log records are stamped with simulated seconds since the start.
    assert all(0 <= record["time"] < 120 for record in final["logs"])


def test_the_page_in_chromium_follows_a_leader_crash(chrome):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "simulations", "leader-crash", "--workers", "16", "--seed", "1", "--serve", str(port),
         "--speed", "0.5"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                _get(f"http://127.0.0.1:{port}/api/dashboard")
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
                time.sleep(0.05)
        chrome.get(f"http://127.0.0.1:{port}/")
        rows = wait_for(chrome, lambda: worker_rows(chrome),
                        lambda r: any(w["id"] == "w0" and w["status"] == "lost" for w in r), TIMEOUT,
                        "the crashed leader w0 marked lost")
        assert len(rows) == 16 and rows[0]["id"] == "w0"
        # w0 crashed, so the lowest-ranked worker up answers now.
        assert chrome.find_element("id", "answered-by").text.startswith("w1")
        wait_for(chrome, lambda: chrome.find_element("id", "leader").get_attribute("data-leader"),
                 lambda leader: leader not in ("", "w0"), TIMEOUT, "a new leader")
        assert console_errors(chrome) == []
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
