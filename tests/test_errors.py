"""One error hierarchy: everything dtruntime raises on purpose is a DtruntimeError."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from dtruntime import errors
from dtruntime.errors import ArgumentError, ArgumentTypeError, CheckpointTimeout, DtruntimeError, JoinTimeout
from dtruntime.protocol.codec import encode, validate_worker_id
from dtruntime.protocol.events import FailureCause
from dtruntime.protocol.messages import Outcome

PACKAGE = Path(__file__).resolve().parents[1] / "dtruntime"
BUILTIN = {"ValueError", "TypeError", "TimeoutError", "RuntimeError", "KeyError", "Exception", "AssertionError"}
# Raised on purpose but mirroring a standard contract that callers catch by that name.
ALLOWED = {("checkpoint/storage.py", "OSError"), ("testing/storage.py", "FileNotFoundError")}


def raised_builtins() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                name = node.exc.func.id
                if name in BUILTIN and (relative, name) not in ALLOWED:
                    found.append(f"{relative}:{node.lineno} raises {name}")
    return found


def test_no_module_raises_a_bare_builtin_error():
    assert raised_builtins() == []


def test_every_error_class_derives_from_dtruntime_error():
    """Except RunStopped: an exit, not an error, and a SystemExit so that a training loop's
    ``except Exception`` cannot swallow a coordinated stop."""
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, BaseException) and c is not errors.RunStopped]
    assert len(classes) > 10
    assert all(issubclass(c, DtruntimeError) for c in classes), [c for c in classes if not issubclass(c, DtruntimeError)]


def test_local_errors_are_also_the_standard_ones_callers_expect():
    with pytest.raises(ArgumentError) as caught:
        validate_worker_id("")
    assert isinstance(caught.value, ValueError)
    with pytest.raises(ArgumentTypeError) as caught_type:
        encode("not a message")  # type: ignore[arg-type]
    assert isinstance(caught_type.value, TypeError)
    assert issubclass(JoinTimeout, TimeoutError) and issubclass(CheckpointTimeout, TimeoutError)


def test_every_barrier_failure_cause_is_an_enum_and_the_leaders_match_the_outcomes():
    assert FailureCause.LOST == Outcome.LOST and FailureCause.TIMEOUT == Outcome.TIMEOUT
    assert len({c.value for c in FailureCause}) == len(FailureCause) >= 6
