"""Log levels from the environment: ``DTRUNTIME_LOG`` (or the original ``RUST_LOG``).

Both take a level (``trace``/``debug``, ``info``, ``warn``/``warning``, ``error``,
``critical``, ``off``; any case) or a Rust ``env_logger``/``tracing`` env-filter:
comma-separated directives, each ``level``, ``target`` or ``target=level``
(``RUST_LOG=info,hyper=warn``, ``dtruntime=debug``, ``dtruntime::driver=trace``). A bare
level sets the ``dtruntime`` logger unless a ``dtruntime`` directive does; a
``dtruntime::x`` directive sets the ``dtruntime.x`` logger; a bare target means
``trace``; other targets are not ours and are left alone. Span filters
(``target[span]=level``) and a ``/regex`` suffix are ignored.

A log filter never fails a job: a directive whose level cannot be read is skipped with
one warning. dtruntime logs through the stdlib ``logging`` module under the
``dtruntime`` logger; when a level is applied and that logger has no handler yet, a
stderr handler is added so the level takes effect in a plain script.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}
_TARGET = "dtruntime"

log = logging.getLogger(_TARGET)


def parse_filter(value: str, *, foreign_targets: bool = True) -> tuple[dict[str, int], list[str]]:
    """({logger name: level} that ``value`` sets under ``dtruntime``, directives that could not be read).

    ``foreign_targets=False`` (``DTRUNTIME_LOG``, which is ours alone) counts directives
    for other targets as unreadable, so a misspelt level (``loud``) is reported.
    """
    default: int | None = None
    levels: dict[str, int] = {}
    unreadable = []
    for directive in value.split("/", 1)[0].split(","):
        directive = directive.strip()
        if not directive:
            continue
        target, sep, level_name = directive.rpartition("=")
        if not sep:  # a bare level, or a bare target (everything for it)
            target, level_name = ("", directive) if directive.lower() in _LEVELS else (directive, "trace")
        level = _LEVELS.get(level_name.strip().lower())
        target = target.split("[", 1)[0].strip().replace("::", ".")
        if level is None:
            unreadable.append(directive)
        elif not target:
            default = level
        elif target == _TARGET or target.startswith(_TARGET + "."):
            levels[target] = level
        elif not foreign_targets:
            unreadable.append(directive)
    if default is not None:
        levels.setdefault(_TARGET, default)
    return levels, unreadable


def configure_from_env(env: Mapping[str, str]) -> int | None:
    """Apply ``DTRUNTIME_LOG`` (else ``RUST_LOG``) to the ``dtruntime`` loggers; return the level it
    gave the ``dtruntime`` logger itself (None: left as it was)."""
    name = "DTRUNTIME_LOG" if env.get("DTRUNTIME_LOG") else "RUST_LOG"
    value = env.get(name, "").strip()
    if not value:
        return None
    levels, unreadable = parse_filter(value, foreign_targets=name == "RUST_LOG")
    for logger_name, level in levels.items():
        logging.getLogger(logger_name).setLevel(level)
    if levels and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
    if unreadable:
        log.warning(
            "%s=%r: ignored %s (levels: %s)", name, value, ", ".join(map(repr, unreadable)), ", ".join(_LEVELS)
        )
    return levels.get(_TARGET)
