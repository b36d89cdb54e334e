"""The dashboard page in headless chromium against a contract-shaped observer (tests/fake_observer.py).

What the page does with the document: 256 workers sorted problems first with each status
marked, summary counts, the leader, charts, log tail, and the run-control buttons
(including the bearer-token round trip). The live-job test is test_dashboard_browser.py.
"""

from __future__ import annotations

from .browser import chrome, console_errors, wait_for, worker_rows  # noqa: F401 - chrome is a fixture
from .fake_observer import FakeObserver, dashboard, worker

TIMEOUT = 30


def _cluster_of_256() -> list[dict]:
    workers = [worker(rank) for rank in range(256)]
    workers[7] = worker(7, "lost")
    workers[200] = worker(200, "hung")
    workers[31] = worker(31, "suspect")
    workers[90] = worker(90, straggler=True)
    workers[255] = worker(255, "left")
    return workers


def _text(session, element_id: str) -> str:
    return session.execute_script(f"return document.getElementById({element_id!r}).textContent;")


def test_256_workers_sorted_problems_first_with_counts_and_leader(chrome):
    with FakeObserver(dashboard(_cluster_of_256(), leader_rank=0, term=7)) as server:
        chrome.get(server.url + "/")
        rows = wait_for(chrome, lambda: worker_rows(chrome), lambda r: len(r) == 256, TIMEOUT, "256 worker rows")
        assert [(r["id"], r["status"]) for r in rows[:5]] == [
            ("worker-7", "lost"), ("worker-200", "hung"), ("worker-31", "suspect"),
            ("worker-90", "alive"), ("worker-255", "left")]
        assert rows[3]["straggler"] == "true" and rows[3]["text"] == "straggling"
        assert [r["rank"] for r in rows[5:]] == [str(r) for r in range(256) if r not in (7, 200, 31, 90, 255)]
        assert {r["id"] for r in rows if r["leader"] == "true"} == {"worker-0"}
        counts = {name: _text(chrome, f"count-{name}") for name in ("alive", "suspect", "hung", "lost", "left", "straggler")}
        assert counts == {"alive": "252", "suspect": "1", "hung": "1", "lost": "1", "left": "1", "straggler": "1"}
        assert _text(chrome, "leader").startswith("worker-0") and _text(chrome, "term") == "7"
        assert "epoch_3" in _text(chrome, "barriers") and "worker-2" in _text(chrome, "barriers")
        assert "120.6 KiB" in _text(chrome, "checkpoints") and "310.5 MiB/s" in _text(chrome, "checkpoints")
        assert "epoch 2, 256 ranks" in _text(chrome, "datasets")
        assert chrome.find_element("id", "chart-barrier_wait_s").get_attribute("data-count") == "9"
        assert "n=9" in _text(chrome, "stats-barrier_wait_s")
        assert "worker-2 is suspect" in _text(chrome, "logs")
        assert chrome.find_element("id", "conn").get_attribute("data-state") == "ok"
        assert console_errors(chrome) == []


def test_a_poll_updates_rows_in_place_and_an_unchanged_document_writes_nothing(chrome):
    workers = _cluster_of_256()
    with FakeObserver(dashboard(workers)) as server:
        chrome.get(server.url + "/")
        wait_for(chrome, lambda: worker_rows(chrome), lambda r: len(r) == 256, TIMEOUT, "256 worker rows")
        # Tag every row element and count DOM mutations in the table from now on.
        chrome.execute_script(
            "document.querySelectorAll('#workers tr').forEach(r => r.__tag = r.dataset.workerId);"
            "window.__mutations = 0; new MutationObserver(m => { window.__mutations += m.length; })"
            ".observe(document.getElementById('workers'), {subtree: true, childList: true, attributes: true,"
            " characterData: true});"
            "window.__polls = 0; const f = window.fetch; window.fetch = (...a) => { window.__polls++; return f(...a); };"
        )
        wait_for(chrome, lambda: chrome.execute_script("return window.__polls;"), lambda n: n >= 3, TIMEOUT, "3 polls")
        assert chrome.execute_script("return window.__mutations;") == 0

        workers[5] = worker(5, "lost")
        server.document = dashboard(workers)
        rows = wait_for(chrome, lambda: worker_rows(chrome), lambda r: r[0]["id"] == "worker-5", TIMEOUT,
                        "worker-5 moved up as lost")
        assert rows[0]["status"] == "lost" and _text(chrome, "count-lost") == "2"
        untouched = chrome.execute_script(
            "return [...document.querySelectorAll('#workers tr')].every(r => r.__tag === r.dataset.workerId);")
        assert untouched, "rows were rebuilt instead of updated in place"
        # One row changed status and moved: a handful of mutations, not 256 rows' worth.
        assert chrome.execute_script("return window.__mutations;") < 20


def test_checkpoint_now_asks_for_a_token_on_401_and_sends_it(chrome):
    with FakeObserver(dashboard([worker(r) for r in range(4)]), token="c0ffee") as server:
        chrome.get(server.url + "/")
        wait_for(chrome, lambda: worker_rows(chrome), lambda r: len(r) == 4, TIMEOUT, "4 worker rows")
        assert not chrome.find_element("id", "token").is_displayed()
        chrome.find_element("id", "btn-checkpoint-now").click()
        wait_for(chrome, lambda: chrome.find_element("id", "control-result").get_attribute("data-state"),
                 lambda s: s == "unauthorized", TIMEOUT, "the 401 answer")
        assert chrome.find_element("id", "token").is_displayed()
        chrome.find_element("id", "token").send_keys("c0ffee")
        chrome.find_element("id", "btn-checkpoint-now").click()
        wait_for(chrome, lambda: chrome.find_element("id", "control-result").get_attribute("data-state"),
                 lambda s: s == "ok", TIMEOUT, "the 201 answer")
        assert "task t1" in _text(chrome, "control-result")
        assert [(path, body) for path, body, _ in server.posts] == [("/api/tasks", {"name": "checkpoint-now"})] * 2
        assert "Authorization" not in server.posts[0][2]
        assert server.posts[1][2]["Authorization"] == "Bearer c0ffee"

        chrome.find_element("id", "log-level-select").send_keys("WARNING")
        chrome.find_element("id", "btn-log-level").click()
        wait_for(chrome, lambda: len(server.posts), lambda n: n == 3, TIMEOUT, "the log-level POST")
        assert server.posts[2][1] == {"name": "log-level", "args": {"level": "WARNING"}}


def test_an_unreachable_job_is_shown_and_the_page_recovers(chrome):
    with FakeObserver(dashboard([worker(r) for r in range(4)])) as server:
        chrome.get(server.url + "/")
        wait_for(chrome, lambda: worker_rows(chrome), lambda r: len(r) == 4, TIMEOUT, "4 worker rows")
        server.document = {"workers": "not a list"}  # a document the page cannot use
        wait_for(chrome, lambda: chrome.find_element("id", "conn").get_attribute("data-state"),
                 lambda s: s != "ok", TIMEOUT, "the page to flag the bad answer")
        server.document = dashboard([worker(r) for r in range(3)])
        wait_for(chrome, lambda: worker_rows(chrome), lambda r: len(r) == 3, TIMEOUT, "3 worker rows after recovery")
        assert chrome.find_element("id", "conn").get_attribute("data-state") == "ok"


def test_stop_asks_for_confirmation_first(chrome):
    with FakeObserver(dashboard([worker(r) for r in range(4)])) as server:
        chrome.get(server.url + "/")
        wait_for(chrome, lambda: worker_rows(chrome), lambda r: len(r) == 4, TIMEOUT, "4 worker rows")
        chrome.find_element("id", "btn-stop").click()
        alert = wait_for(chrome, lambda: chrome.switch_to.alert, lambda a: not isinstance(a, Exception), TIMEOUT,
                         "the confirmation")
        assert "Stop the job?" in alert.text
        alert.dismiss()
        chrome.find_element("id", "btn-checkpoint-now").click()  # a later POST, to know the dismissal sent none
        wait_for(chrome, lambda: len(server.posts), lambda n: n == 1, TIMEOUT, "the checkpoint-now POST")
        chrome.find_element("id", "btn-stop").click()
        wait_for(chrome, lambda: chrome.switch_to.alert, lambda a: not isinstance(a, Exception), TIMEOUT,
                 "the confirmation").accept()
        wait_for(chrome, lambda: len(server.posts), lambda n: n == 2, TIMEOUT, "the stop POST")
        assert [body for _, body, _ in server.posts] == [{"name": "checkpoint-now"}, {"name": "stop"}]
