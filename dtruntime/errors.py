"""The one error hierarchy of dtruntime.

Every error the package raises on purpose derives from :class:`DtruntimeError`, so
``except dtruntime.DtruntimeError`` catches all of them. :class:`CheckpointNotFoundError`
(``CheckpointManager.load`` when no checkpoint, or not the step asked for, is committed)
is also a ``FileNotFoundError``, which is what the original API promised.

Two kinds, as in h11: a peer's bad input is a :class:`RemoteProtocolError`, counted and
dropped, never raised to the user and never crashing us; the caller's own misuse (a bad
argument, a call out of order) is a local error raised at once: :class:`ArgumentError`,
:class:`ConfigError`, :class:`ProtocolError`. Each error that is also a standard one
(``ValueError``, ``TimeoutError``, ``TypeError``, ``OSError``) derives from it too, so
code written against the standard classes keeps working.
"""

from __future__ import annotations

from collections.abc import Sequence


class DtruntimeError(Exception):
    """Base class of every error dtruntime raises on purpose."""


class ArgumentError(DtruntimeError, ValueError):
    """An argument of a call is invalid: the caller's misuse; the message names it."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of a call has the wrong type; the message names it."""


class JoinTimeout(DtruntimeError, TimeoutError):
    """``register_worker`` did not join the cluster within its timeout."""


class DriverStopped(DtruntimeError):
    """The control plane's driver thread has stopped (closed, or ended by a bug it logged):
    nothing more can be asked of this orchestrator."""


class ConfigError(DtruntimeError, ValueError):
    """A configuration value is missing or invalid; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config {key}: {problem}")
        self.key = key
        self.problem = problem


class BindError(DtruntimeError, OSError):
    """An endpoint could not be bound: its port is held by another process, or the address
    is not this host's. Not a configuration error: the same settings work once the port
    is free. The message names the endpoint and, from the orchestrator, how to pick another."""


class ProtocolError(DtruntimeError):
    """The control-plane protocol was used incorrectly by local code."""


class RemoteProtocolError(ProtocolError):
    """A message from the network could not be decoded or failed validation.

    The codec raises only this for bad input; the receiving node drops the message,
    counts it, and keeps running.
    """


class WorkerLostError(DtruntimeError):
    """A worker that a barrier (or commit) waited for was declared dead."""

    def __init__(self, message: str, workers: Sequence[str] = (), ranks: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.workers = tuple(workers)
        self.ranks = tuple(ranks)


class BarrierTimeout(DtruntimeError, TimeoutError):
    """A barrier did not release within its timeout; ``missing`` names who had not arrived."""

    def __init__(self, message: str, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


class NoQuorumError(DtruntimeError):
    """Fewer than a majority of the expected world is reachable, so there is no leader."""


class CheckpointError(DtruntimeError):
    """A checkpoint could not be written, committed, or verified."""


class CorruptCheckpoint(CheckpointError, ValueError):
    """A checkpoint file's bytes do not parse as what they claim to be (the message says
    which file and what); a ``ValueError`` too, for the parsers that raise it."""


class CheckpointTimeout(CheckpointError, TimeoutError):
    """A bounded wait for the checkpoint writer (``flush``, ``close``) ran out."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint is committed (or not the step asked for): ``except FileNotFoundError``,
    the original API's way to start from scratch, catches it."""


class DatasetError(DtruntimeError, ValueError):
    """A dataset registration or shard request is invalid."""


class UnknownCommand(DtruntimeError, ValueError):
    """A run-control command name that does not exist; the message lists the known ones."""


class InvalidCommandArgs(DtruntimeError, ValueError):
    """A run-control command's arguments are invalid; the message names the argument."""


class RunStopped(SystemExit):
    """Raised at a step boundary by a ``stop`` command (or SIGTERM) once its checkpoint is
    committed: ``code`` 0 then, 1 when the checkpoint could not be committed in time.

    A ``SystemExit``, so an ``except Exception`` in the training loop does not swallow
    it and an uncaught one ends the process with ``code``; ``step`` is the stop's step.
    """

    def __init__(self, code: int, message: str, step: int | None) -> None:
        super().__init__(code)
        self.message = message
        self.step = step

    def __str__(self) -> str:
        return self.message
