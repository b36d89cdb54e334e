"""Log levels from DTRUNTIME_LOG / RUST_LOG: env-filter syntax is read, and never fails a job."""

from __future__ import annotations

import logging

import pytest

from dtruntime import TrainingOrchestrator
from dtruntime.logs import configure_from_env, parse_filter


@pytest.fixture(autouse=True)
def restore_levels():
    names = ("dtruntime", "dtruntime.driver")
    saved = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("debug", {"dtruntime": logging.DEBUG}),
        ("dtruntime=debug", {"dtruntime": logging.DEBUG}),
        ("info,hyper=warn", {"dtruntime": logging.INFO}),
        ("warn,dtruntime=debug", {"dtruntime": logging.DEBUG}),
        ("dtruntime=debug,warn", {"dtruntime": logging.DEBUG}),
        ("error,dtruntime::driver=trace", {"dtruntime": logging.ERROR, "dtruntime.driver": logging.DEBUG}),
        ("dtruntime", {"dtruntime": logging.DEBUG}),
        ("hyper=warn,tokio", {}),
        ("dtruntime[span{a=1}]=info/foo.*", {"dtruntime": logging.INFO}),
        ("INFO", {"dtruntime": logging.INFO}),
        ("off", {"dtruntime": logging.CRITICAL + 10}),
    ],
)
def test_env_filter_directives_give_dtruntime_its_level(value, expected):
    assert parse_filter(value) == (expected, [])


def test_rust_log_in_env_filter_syntax_sets_the_level_and_never_fails_the_job(caplog):
    """Issue 10 item 5: these crashed TrainingOrchestrator() with ConfigError."""
    assert TrainingOrchestrator(env={"RUST_LOG": "dtruntime=debug"}).worker_id == "worker-0"
    assert logging.getLogger("dtruntime").level == logging.DEBUG
    TrainingOrchestrator(env={"RUST_LOG": "info,hyper=warn"})
    assert logging.getLogger("dtruntime").level == logging.INFO
    with caplog.at_level(logging.WARNING, logger="dtruntime"):
        assert configure_from_env({"RUST_LOG": "dtruntime=loud,warn"}) == logging.WARNING
        assert configure_from_env({"DTRUNTIME_LOG": "loud"}) is None
    assert "RUST_LOG='dtruntime=loud,warn': ignored 'dtruntime=loud'" in caplog.text
    assert "DTRUNTIME_LOG='loud': ignored 'loud'" in caplog.text
