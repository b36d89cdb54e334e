"""The HTTP API, Prometheus metrics and dashboard every worker may serve (issue 12).

Needs the ``http`` extra (``aiohttp``, ``prometheus_client``). Off unless ``[http] port``
(``DTRUNTIME_HTTP_PORT``) is set; :class:`~dtruntime.TrainingOrchestrator` starts it in
``register_worker`` and stops it in ``close``.
"""

from .auth import bearer_token
from .documents import JobView
from .logring import LogRing
from .metrics import Metrics
from .server import HttpServer

__all__ = ["HttpServer", "JobView", "LogRing", "Metrics", "bearer_token"]
