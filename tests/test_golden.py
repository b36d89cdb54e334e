"""Golden scenario transcripts, in the style of etcd raft's datadriven ``testdata/``.

Each file in ``tests/testdata/golden/`` is a list of commands, each followed by ``----``
and the events the simulated cluster reported while it ran (one line each:
``time worker Event(...)``; the start-up flood of ``MemberJoined`` is left out). A change
to the protocol that changes what happens shows up as a readable diff of a transcript.
To accept such a change, run ``DTRUNTIME_REWRITE_GOLDEN=1 pytest tests/test_golden.py``
and review the diff.

Commands::

    cluster workers=N seed=S [heartbeat_ms=100 timeout_ms=1000]
    run SECONDS
    crash W | restart W | pause W | resume W | heal
    partition W,W|W,W
    arrive W[,W...] barrier=ID [elastic] [timeout=SECONDS]
    save W[,W...] step=N [fail]
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dtruntime.protocol.events import Event, MemberJoined
from dtruntime.protocol.settings import ProtocolSettings
from dtruntime.testing import SimCluster

GOLDEN = Path(__file__).parent / "testdata" / "golden"
REWRITE = os.environ.get("DTRUNTIME_REWRITE_GOLDEN") == "1"


class Transcript:
    """Runs the commands of one file against one simulated cluster."""

    def __init__(self) -> None:
        self.cluster: SimCluster | None = None
        self.lines: list[str] = []

    def _record(self, worker_id: str, event: Event) -> None:
        if not isinstance(event, MemberJoined):
            assert self.cluster is not None
            self.lines.append(f"{self.cluster.now:.3f} {worker_id} {event!r}")

    def run(self, command: str) -> str:
        name, *args = command.split()
        options = dict(a.split("=", 1) if "=" in a else (a, "") for a in args[1:] if name in ("arrive", "save"))
        self.lines = []
        if name == "cluster":
            kv = dict(a.split("=", 1) for a in args)
            settings = ProtocolSettings.from_millis(int(kv.get("heartbeat_ms", 100)), int(kv.get("timeout_ms", 1000)))
            self.cluster = SimCluster(int(kv["workers"]), int(kv["seed"]), settings)
            self.cluster.listeners.append(self._record)
            return self._output()
        cluster = self.cluster
        assert cluster is not None, "the first command must be `cluster`"
        if name == "run":
            cluster.run_for(float(args[0]))
        elif name in ("crash", "restart", "pause", "resume"):
            getattr(cluster, name)(args[0])
        elif name == "heal":
            cluster.heal()
        elif name == "partition":
            cluster.partition([group.split(",") for group in args[0].split("|")])
        elif name == "arrive":
            timeout = float(options["timeout"]) if "timeout" in options else None
            for worker_id in args[0].split(","):
                cluster.arrive(worker_id, options["barrier"], timeout=timeout, elastic="elastic" in options)
        elif name == "save":
            for worker_id in args[0].split(","):
                cluster.save(worker_id, int(options["step"]), ok="fail" not in options)
        else:
            raise ValueError(f"unknown command {command!r}")
        return self._output()

    def _output(self) -> str:
        return "\n".join(self.lines)


def parse(text: str) -> list[tuple[str, str]]:
    """``[(command, expected output)]``; comments (``#``) and blank lines between blocks are skipped."""
    blocks: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        assert i < len(lines) and lines[i].strip() == "----", f"`{line}` must be followed by ----"
        i += 1
        output = []
        while i < len(lines) and lines[i].strip():
            output.append(lines[i])
            i += 1
        blocks.append((line, "\n".join(output)))
    return blocks


def render(header: list[str], blocks: list[tuple[str, str]]) -> str:
    parts = ["\n".join(header)] if header else []
    parts += [f"{command}\n----\n{output}".rstrip("\n") for command, output in blocks]
    return "\n\n".join(parts) + "\n"


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.txt")), ids=lambda p: p.stem)
def test_golden_transcript(path: Path):
    text = path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    transcript = Transcript()
    actual = [(command, transcript.run(command)) for command, _ in parse(text)]
    if REWRITE:
        path.write_text(render(header, actual))
        return
    for (command, expected), (_, got) in zip(parse(text), actual):
        assert got == expected, f"{path.name}: `{command}` reported\n{got}\n\nexpected\n{expected}"
    cluster = transcript.cluster
    assert cluster is not None
    cluster.invariants.check()


def test_the_golden_files_are_there():
    assert {p.stem for p in GOLDEN.glob("*.txt")} >= {"election", "barrier_with_loss", "commit_on_takeover"}
