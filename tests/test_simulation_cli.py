"""`python -m simulations`: its help defines what it prints (issue 10 item 15) and long
runs show a progress bar on a terminal only (item 16)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from simulations.__main__ import SCENARIOS

from .cluster import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}


def words(text: str) -> str:
    return " ".join(text.split())


def simulations(*args: str, **popen: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulations", *args], cwd=ROOT, env=ENV, text=True,
                          timeout=120, **popen)


def test_help_describes_every_scenario_and_defines_every_figure_it_prints():
    from simulations.__main__ import SCENARIO_FIGURES, description
    from simulations.common import COMMON_FIGURES

    done = simulations("--help", capture_output=True)
    assert done.returncode == 0, done.stderr
    text = words(done.stdout)
    for name, scenario in SCENARIOS.items():
        assert f"{name} {description(scenario)}" in text, name
        for figure, definition in SCENARIO_FIGURES[name].items():
            assert f"{figure} {words(definition)}" in text, (name, figure)
    for figure, definition in COMMON_FIGURES.items():
        assert f"{figure} {words(definition)}" in text, figure
    assert "failover_s from the crash until every survivor follows one new leader. It can be below detect_s" in text
    for default in ("--seed SEED first seed (default: 1)", "(default: 100)", "(default: 1000)"):
        assert default in text


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_figure_a_scenario_reports_is_defined(name):
    from simulations.__main__ import SCENARIO_FIGURES
    from simulations.common import COMMON_FIGURES

    result = SCENARIOS[name](8 if name == "swarm" else 5, 1, 100, 1000)
    undefined = set(result.metrics) - set(SCENARIO_FIGURES[name]) - set(COMMON_FIGURES)
    assert not undefined, f"{name} prints figures --help does not define: {sorted(undefined)}"


def run_with_terminal_stderr(*args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal; (exit status, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    job = subprocess.Popen([sys.executable, "-m", "simulations", *args], cwd=ROOT, env=ENV, text=True,
                           stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    received = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if job.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            received += chunk
        stdout, _ = job.communicate(timeout=60)
    finally:
        os.close(master)
        if job.poll() is None:
            job.kill()
            job.wait(timeout=30)
    return job.returncode, stdout, received.decode(errors="replace")


def test_a_multi_seed_run_shows_progress_on_a_terminal():
    status, stdout, terminal = run_with_terminal_stderr("leader-crash", "--workers", "5", "--seeds", "4")
    assert status == 0, terminal
    assert "4/4" in terminal and "seed/s" in terminal, terminal
    assert "seed/s" not in stdout and "failover_s" in stdout  # the table stays clean


def test_quiet_turns_the_progress_bar_off():
    status, stdout, terminal = run_with_terminal_stderr("leader-crash", "--workers", "5", "--seeds", "4", "--quiet")
    assert status == 0, terminal
    assert terminal.strip() == "" and "failover_s" in stdout


def test_no_progress_bar_when_stderr_is_not_a_terminal():
    done = simulations("leader-crash", "--workers", "5", "--seeds", "4", capture_output=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and "failover_s" in done.stdout
