"""Headless Debian chromium driven by selenium, for the dashboard tests.

``chrome`` is a pytest fixture (import it into a test module); it skips, naming what is
missing, only where chromium, chromedriver or selenium is not installed (``.ci/run``
installs them). Every wait is bounded: :func:`wait_for` polls a condition with a deadline
and fails with the page's connection state and the last value seen.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def _which(names: tuple[str, ...]) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


@pytest.fixture
def chrome() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium; it is in the dev extra)")
    browser, driver = _which(CHROMIUM), _which(DRIVERS)
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        pytest.skip(f"{missing} not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(60)
    session.set_script_timeout(30)
    try:
        yield session
    finally:
        session.quit()


def wait_for(session: Any, probe: Callable[[], Any], accept: Callable[[Any], bool], timeout: float, what: str) -> Any:
    """Poll ``probe()`` every 0.1 s until ``accept`` holds for its value; return that value."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except Exception as exc:  # noqa: BLE001 - a stale element mid-update: probe again
            value = exc
        else:
            if accept(value):
                return value
        time.sleep(0.1)
    conn = session.execute_script("const c = document.getElementById('conn'); return c && c.textContent;")
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value {repr(value)[:600]}; page says {conn!r}")


def worker_rows(session: Any) -> list[dict[str, str]]:
    """The dashboard's worker rows in page order, read from their data- attributes."""
    return session.execute_script(
        "return [...document.querySelectorAll('#workers tr')].filter(r => !r.hidden).map(r => ({"
        "id: r.dataset.workerId, rank: r.dataset.rank, status: r.dataset.status, step: r.dataset.step,"
        "straggler: r.dataset.straggler, leader: r.dataset.leader,"
        "text: r.querySelector('[data-field=status]').textContent}));"
    )


def console_errors(session: Any) -> list[str]:
    """SEVERE entries of the page's JavaScript console since the last call."""
    return [entry["message"] for entry in session.get_log("browser") if entry.get("level") == "SEVERE"]
