"""Acceptance: headless chromium loads the dashboard of a live 4-process job.

The page shows 4 workers and the leader; the checkpoint-now button makes the job commit a
new step, checked in storage (pressed while all 4 ranks live: a checkpoint of a 4-rank job
needs every rank's part); after ``kill -9`` of one the page shows 3 alive and the lost one
marked. Skips only where chromium/chromedriver/selenium is missing (see tests/browser.py).
"""

from __future__ import annotations

import pytest

from dtruntime import TrainingOrchestrator
from dtruntime.cli.store import inspect_store, open_store

from .browser import chrome, console_errors, wait_for, worker_rows  # noqa: F401 - chrome is a fixture
from .cluster import kill
from .live_job import LiveJob

TIMEOUT = 60


def _committed(job: LiveJob) -> list[int]:
    if not job.storage.is_dir():
        return []
    return [s.step for s in inspect_store(open_store(str(job.storage), {}), verify=True).committed if s.problem is None]


def test_dashboard_of_a_live_job_shows_workers_a_kill_and_checkpoint_now(chrome, tmp_path):
    with LiveJob(tmp_path) as job:
        chrome.get(job.urls[1] + "/")  # any peer serves the page; not the leader's on purpose
        rows = wait_for(chrome, lambda: worker_rows(chrome),
                        lambda r: len(r) == 4 and all(w["status"] == "alive" for w in r), TIMEOUT, "4 alive workers")
        assert sorted(w["id"] for w in rows) == [f"worker-{r}" for r in range(4)]
        assert [w["id"] for w in rows if w["leader"] == "true"] == ["worker-0"]
        leader = chrome.find_element("id", "leader")
        assert leader.get_attribute("data-leader") == "worker-0" and leader.text.startswith("worker-0")
        assert chrome.find_element("id", "count-alive").text == "4"

        if hasattr(TrainingOrchestrator, "step_boundary"):  # run control in this checkout
            before = set(_committed(job))
            chrome.find_element("id", "btn-checkpoint-now").click()
            wait_for(chrome, lambda: chrome.find_element("id", "control-result").get_attribute("data-state"),
                     lambda s: s == "ok", TIMEOUT, "checkpoint-now accepted")
            job.wait(lambda: set(_committed(job)) - before, TIMEOUT, "a new committed step in storage")
            new = sorted(set(_committed(job)) - before)
            assert len(new) == 1, new
            saving = {w.rank: [e["step"] for e in w.events("saving")] for w in job.cluster.workers}
            assert all(new[0] in steps for steps in saving.values()), saving
            wait_for(chrome, lambda: chrome.execute_script(
                "return [...document.querySelectorAll('#checkpoints tr')].map(r => Number(r.dataset.step));"),
                lambda steps: new[0] in steps, TIMEOUT, f"step {new[0]} in the page's committed checkpoints")
            wait_for(chrome, lambda: chrome.execute_script(
                "return [...document.querySelectorAll('#tasks tr')].map(r => [r.dataset.name, r.dataset.state]);"),
                lambda tasks: ["checkpoint-now", "done"] in tasks, TIMEOUT, "the task shown done on every rank")
            checkpoint_checked = True
        else:
            checkpoint_checked = False

        kill(job.cluster.workers[3])
        rows = wait_for(chrome, lambda: worker_rows(chrome),
                        lambda r: sum(w["status"] == "alive" for w in r) == 3
                        and any(w["id"] == "worker-3" and w["status"] == "lost" for w in r),
                        TIMEOUT, "3 alive and worker-3 marked lost")
        assert rows[0]["id"] == "worker-3", "the lost worker sorts first"
        lost_row = chrome.find_element("css selector", "#workers tr[data-worker-id='worker-3']")
        assert "status-lost" in lost_row.get_attribute("class") and lost_row.find_element(
            "css selector", "[data-field=status]").text == "lost"
        assert chrome.find_element("id", "count-alive").text == "3"
        assert chrome.find_element("id", "count-lost").text == "1"

        assert console_errors(chrome) == []
        chrome.save_screenshot(str(tmp_path / "dashboard.png"))
        if not checkpoint_checked:
            pytest.skip("the checkout has no run control (TrainingOrchestrator.step_boundary): "
                        "the checkpoint-now button was not checked")

