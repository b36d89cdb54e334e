"""`make demo` installs only what the demo needs (issue 10 item 14); `make test` the dev set."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from importlib.metadata import packages_distributions

import pytest

from .cluster import ROOT

BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed by the demo extra")
        return None

sys.meta_path.insert(0, Blocker())
sys.argv = sys.argv[:1]
import runpy
runpy.run_path("examples/train_ddp.py", run_name="not_main")  # its imports, not its main()
from simulations.__main__ import main
sys.exit(main(["leader-crash", "--workers", "4", "--seed", "1", "--seeds", "2", "--quiet"]))
"""


def requirement_names(lines: str) -> set[str]:
    """Distribution names of a setup.cfg requirement list, normalised (`moto[server]>=5` -> `moto`)."""
    names = set()
    for line in lines.splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower().replace("_", "-"))
    return names


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def make_installs(target: str) -> list[str]:
    """The `pip install` lines `make` would run for ``target`` in a fresh checkout."""
    done = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if "pip install" in line]


pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def test_make_demo_installs_the_demo_extra_and_not_the_dev_set():
    installs = make_installs("demo")
    assert any("'.[demo]'" in line for line in installs), installs
    assert not any("[dev]" in line for line in installs), installs


def test_make_test_still_installs_the_dev_set():
    assert any("'.[dev]'" in line for line in make_installs("test"))


def test_the_demo_extra_is_torch_and_progress_bars_not_the_test_tools():
    extras = setup_cfg()["options.extras_require"]
    demo = requirement_names(extras["demo"])
    assert {"torch", "tqdm"} <= demo
    assert not demo & {"moto", "hypothesis", "s3fs", "matplotlib", "pytest", "pyarrow"}, demo
    assert demo <= requirement_names(extras["dev"]), "make test after make demo must cover the demo too"


def test_the_demo_runs_without_any_package_outside_the_core_and_the_demo_extra():
    """Every dev-only distribution is made unimportable; the example's imports and the
    simulation report the demo prints must still work."""
    config = setup_cfg()
    extras = config["options.extras_require"]
    allowed = requirement_names(config["options"]["install_requires"]) | requirement_names(extras["demo"])
    dev_only = requirement_names(extras["dev"]) - allowed
    blocked = {module for module, dists in packages_distributions().items()
               if {d.lower().replace("_", "-") for d in dists} & dev_only and module.isidentifier()}
    assert {"moto", "hypothesis", "matplotlib"} <= blocked, blocked  # the check blocks something real
    done = subprocess.run([sys.executable, "-c", BLOCKER, ",".join(sorted(blocked))], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "failover_s" in done.stdout
