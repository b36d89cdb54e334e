"""Run control on real processes: checkpoint-now, stop and log-level act at step boundaries
on every rank (dtruntime.control.commands); bad commands are refused clearly."""

from __future__ import annotations

import json
import time

import pytest

from dtruntime import CheckpointManager, TrainingOrchestrator
from dtruntime.control.commands import validate
from dtruntime.errors import DtruntimeError, InvalidCommandArgs, UnknownCommand

from .cluster import Cluster

WORLD = 3


def start(storage, extra_for_rank=lambda rank: []) -> Cluster:
    return Cluster(WORLD, lambda rank: ["--storage", str(storage), *extra_for_rank(rank)],
                   module="tests.workers.control_worker")


def committed(storage) -> list[int]:
    with CheckpointManager(str(storage), config=None) as manager:
        return manager.list_checkpoints_sync(verify=True)


def parts_of(storage, step: int) -> list[dict]:
    with CheckpointManager(str(storage)) as manager:
        return [json.loads(manager.load_bytes(step, rank)) for rank in range(WORLD)]


def test_checkpoint_now_saves_one_step_on_every_rank_and_tasks_show_it(tmp_path):
    with start(tmp_path, lambda rank: ["--steps", "120"] + (["--submit-at", "20"] if rank == 1 else [])) as cluster:
        cluster.wait_exit(list(range(WORLD)), 120)
        for worker in cluster.workers:
            assert worker.process.returncode == 0, worker.stderr[-10:]
        steps = committed(tmp_path)
        assert len(steps) == 1 and steps[0] >= 21, steps
        assert parts_of(tmp_path, steps[0]) == [{"rank": r, "step": steps[0]} for r in range(WORLD)]
        for worker in cluster.workers:
            (finished,) = worker.events("finished")
            (task,) = finished["tasks"]
            assert task["name"] == "checkpoint-now" and task["submitted_by"] == "worker-1"
            assert task["step"] == steps[0]
            assert task["state_by_rank"] == {str(r): "done" for r in range(WORLD)}


def test_log_level_reaches_every_rank(tmp_path):
    extra = lambda rank: ["--steps", "60"] + (["--submit-at", "10", "--command", "log-level", "--level", "ERROR"]  # noqa: E731
                                               if rank == 2 else [])
    with start(tmp_path, extra) as cluster:
        cluster.wait_exit(list(range(WORLD)), 120)
        for worker in cluster.workers:
            (finished,) = worker.events("finished")
            assert finished["level"] == 40, worker.stderr[-10:]
            assert finished["tasks"][0]["state_by_rank"] == {str(r): "done" for r in range(WORLD)}
        assert committed(tmp_path) == []


def test_stop_checkpoints_one_step_then_every_rank_exits_0_and_a_relaunch_resumes_there(tmp_path):
    with start(tmp_path, lambda rank: ["--submit-at", "15", "--command", "stop"] if rank == 0 else []) as cluster:
        cluster.wait_exit(list(range(WORLD)), 120)
        stops = []
        for worker in cluster.workers:
            assert worker.process.returncode == 0, worker.stderr[-10:]
            (stopped,) = worker.events("stopped")
            stops.append(stopped["step"])
        assert len(set(stops)) == 1 and committed(tmp_path) == [stops[0]]
        assert any("committed on every rank; exiting 0" in line for line in cluster.workers[1].stderr)
    with start(tmp_path, lambda rank: ["--steps", str(stops[0] + 5)]) as cluster:
        cluster.wait_exit(list(range(WORLD)), 120)
        assert [w.events("resumed")[0]["step"] for w in cluster.workers] == [stops[0]] * WORLD


def test_unknown_commands_and_bad_args_are_refused_with_the_reason():
    with pytest.raises(UnknownCommand, match="unknown command 'reboot'.*checkpoint-now"):
        validate("reboot", None)
    with pytest.raises(InvalidCommandArgs, match="args.level must be one of DEBUG, INFO, WARNING, ERROR"):
        validate("log-level", {"level": "LOUD"})
    with pytest.raises(InvalidCommandArgs, match="unknown argument 'force'"):
        validate("stop", {"force": True})
    with pytest.raises(InvalidCommandArgs, match="JSON object"):
        validate("stop", ["x"])
    assert issubclass(UnknownCommand, ValueError) and issubclass(InvalidCommandArgs, DtruntimeError)
    assert validate("log-level", {"level": "INFO"}) == {"level": "INFO"}
    orch = TrainingOrchestrator("w0", "tcp://127.0.0.1:1", 1, 0, env={})
    with pytest.raises(DtruntimeError, match="register_worker"):
        orch.run_control.submit("stop")
    assert orch.run_control.tasks() == []


class _FakeOrchestrator:
    """Just what RunControl's step boundary touches (no driver: states are not published)."""

    def __init__(self) -> None:
        from dtruntime import Config

        self.config = Config.load(env={})
        self.worker_id, self.rank, self._driver = "w0", 0, None
        self.published: list[int] = []

    def set_progress(self, key: str, value: int) -> None:
        self.published.append(value)


def _update(number: int, name: str = "checkpoint-now", target: int = 0, acked: int | None = None,
            cancelled: bool = False):
    from dtruntime.protocol.events import CommandUpdate
    from dtruntime.protocol.messages import CommandEntry

    entry = CommandEntry(f"c{number}", name, '{"level": "ERROR"}' if name == "log-level" else "{}", "w1", 0,
                         name != "log-level", target, cancelled)
    return CommandUpdate(entry, (), acked)


def test_the_boundary_acts_at_the_target_only_and_never_past_it():
    from dtruntime.control.commands import RunControl

    control = RunControl(_FakeOrchestrator())
    saved: list[int] = []
    control.on_event(_update(1, target=12))
    control.on_event(_update(2, target=10))  # this rank is already past it at its next boundary
    control.on_event(_update(3, acked=None))  # undecided, not acked: no wait
    control.on_event(_update(4, target=12, cancelled=True))
    control.step_boundary(11, save=saved.append)
    assert saved == [] and "c2" in control._acted and "c4" in control._acted
    control.step_boundary(12, save=saved.append)
    assert saved == [12]  # one save for the command due at 12
    control.step_boundary(13, save=saved.append)
    assert saved == [12] and "c3" not in control._acted
    control.target_wait_s = 0.2
    control.on_event(_update(5, acked=13))  # acked at 13: boundary 14 waits for the target, then fails it
    started = time.monotonic()
    control.step_boundary(14, save=saved.append)
    assert time.monotonic() - started >= 0.2 and "c5" in control._acted and saved == [12]
