"""The ``dtruntime`` CLI as a subprocess against a live 4-process job (tests/live_job.py)."""

from __future__ import annotations

import json
import re

import pytest

from dtruntime import TrainingOrchestrator

from dtruntime.http.auth import bearer_token

from .cluster import kill
from .live_job import LiveJob
from .test_cli import assert_one_line_error, dtruntime

TIMEOUT = 60
SECRET = "a-secret-of-the-cli-test"


def _rows(out: str) -> dict[str, str]:
    return {re.search(r"worker-\d\*?", line).group(0).rstrip("*"): line
            for line in out.splitlines() if re.search(r"127\.0\.0\.1:\d+", line)}


def test_status_of_a_live_job_on_every_rank_and_after_a_kill(tmp_path):
    with LiveJob(tmp_path, extra=["--secret", SECRET]) as job:
        for rank, url in enumerate(job.urls):
            result = dtruntime("status", url)
            assert result.returncode == 0, result.stderr
            assert f"answered by worker-{rank} (rank {rank})" in result.stdout
            assert "leader worker-0 (rank 0)" in result.stdout and "world 4, ready" in result.stdout
            rows = _rows(result.stdout)
            assert set(rows) == {f"worker-{r}" for r in range(4)}
            assert all(" alive " in row or " straggling " in row for row in rows.values()), result.stdout
        doc = json.loads(dtruntime("status", job.urls[2], "--json").stdout)
        assert doc["answered_by"] == {"worker_id": "worker-2", "rank": 2} and len(doc["workers"]) == 4

        kill(job.cluster.workers[3])
        job.wait(lambda: job.statuses(1)["worker-3"] == "lost", TIMEOUT, "worker-3 lost on rank 1")
        after = dtruntime("status", job.urls[1])
        assert after.returncode == 0, after.stderr
        assert _rows(after.stdout)["worker-3"].startswith("!") and " lost " in _rows(after.stdout)["worker-3"]
        assert_one_line_error(dtruntime("status", job.urls[3]), 3, "cannot reach", "connection refused")

        # POSTs need the token derived from the job's secret: refused without it.
        refused = dtruntime("checkpoint", job.urls[0])
        assert_one_line_error(refused, 1, "answered 401", "DTRUNTIME_SECRET")
        assert_one_line_error(dtruntime("stop", job.urls[0], "--token", bearer_token("wrong")), 1, "answered 401")
        token = dtruntime("token", env={"DTRUNTIME_SECRET": SECRET})
        assert token.returncode == 0 and token.stdout.strip() == bearer_token(SECRET)


@pytest.mark.skipif(not hasattr(TrainingOrchestrator, "step_boundary"), reason="this checkout has no run control")
def test_checkpoint_wait_then_stop_on_a_live_job(tmp_path):
    with LiveJob(tmp_path) as job:
        done = dtruntime("checkpoint", job.urls[2], "--wait", "60")
        assert done.returncode == 0, (done.stdout, done.stderr)
        step = int(re.search(r"done on 4 rank\(s\) at step (\d+)", done.stdout).group(1))
        listed = dtruntime("checkpoints", str(job.storage), "--verify", "--json")
        assert listed.returncode == 0, listed.stderr
        assert step in [s["step"] for s in json.loads(listed.stdout)["committed"] if s["verified"]]

        stopped = dtruntime("stop", job.urls[0])
        assert stopped.returncode == 0 and stopped.stdout.startswith("stop submitted as task ")
        job.cluster.wait_exit(list(range(4)), TIMEOUT)
        assert [w.process.returncode for w in job.cluster.workers] == [0, 0, 0, 0]
        final = json.loads(dtruntime("checkpoints", str(job.storage), "--verify", "--json").stdout)["committed"]
        assert final[-1]["step"] > step and final[-1]["verified"] and final[-1]["world_size"] == 4
