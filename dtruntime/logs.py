"""Log level from the environment: ``DTRUNTIME_LOG`` (or the original ``RUST_LOG``).

Values: ``trace``/``debug``, ``info``, ``warn``/``warning``, ``error``, ``critical``
(any case). dtruntime logs through the stdlib ``logging`` module under the
``dtruntime`` logger; when the variable is set and that logger has no handler yet, a
stderr handler is added so the level takes effect in a plain script.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from .errors import ConfigError

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def configure_from_env(env: Mapping[str, str]) -> int | None:
    """Apply ``DTRUNTIME_LOG`` (else ``RUST_LOG``) to the ``dtruntime`` logger; return the level."""
    name = "DTRUNTIME_LOG" if env.get("DTRUNTIME_LOG") else "RUST_LOG"
    value = env.get(name, "").strip().lower()
    if not value:
        return None
    if value not in _LEVELS:
        raise ConfigError(name, f"unknown log level {value!r} (use one of {', '.join(_LEVELS)})")
    logger = logging.getLogger("dtruntime")
    logger.setLevel(_LEVELS[value])
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    return _LEVELS[value]
