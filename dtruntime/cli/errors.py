"""The CLI's errors and exit codes: each error is one line on stderr, never a traceback.

Exit codes: 0 ok; 1 a job-side failure (the job answered with an error, a checkpoint does
not verify, a command failed on a rank); 2 usage (bad arguments, a path that does not
exist); 3 the job or store cannot be reached (or what answered is not a dtruntime peer).
"""

from __future__ import annotations

from ..errors import DtruntimeError

OK = 0
JOB_FAILURE = 1
USAGE = 2
UNREACHABLE = 3


class CliError(DtruntimeError):
    """A failure the CLI reports as one line and ``exit_code``."""

    exit_code = JOB_FAILURE


class JobError(CliError):
    """The job answered, with an error (or a checkpoint does not verify)."""

    exit_code = JOB_FAILURE


class UsageError(CliError, ValueError):
    """The arguments name something that cannot work (a bad URL, a missing path)."""

    exit_code = USAGE


class UnreachableError(CliError, OSError):
    """Nothing answered at the URL, or what answered is not a dtruntime peer."""

    exit_code = UNREACHABLE
