"""Steering a running job: run-control commands, SIGTERM preemption, the progress watchdog."""

from .commands import RunControl

__all__ = ["RunControl"]
