"""An installed wheel carries the dashboard page and the ``dtruntime`` console script.

Builds a wheel of a copy of the package (so the checkout gets no build/ or egg-info) with
``pip wheel --no-deps --no-build-isolation`` and reads its file list and entry points.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from .cluster import ROOT


def test_the_wheel_ships_the_dashboard_files_and_the_console_script(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "dtruntime", source / "dtruntime", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [wheel] = (tmp_path / "dist").glob("dtruntime-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    static = {f"dtruntime/http/static/{name}" for name in ("index.html", "app.js", "style.css")}
    assert static <= names, sorted(n for n in names if "http" in n)
    assert {"dtruntime/__main__.py", "dtruntime/cli/__init__.py", "dtruntime/http/server.py"} <= names
    assert "[console_scripts]" in scripts and "dtruntime = dtruntime.cli:main" in scripts
