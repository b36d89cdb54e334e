"""A small HTTP client for a peer's observer API (stdlib ``urllib``; no extra dependency).

``base_url`` accepts ``http://host:port``, ``host:port`` (http is assumed) and a URL with
a path (``http://host:port/`` or the dashboard's own address): requests go to
``<scheme>://<host:port><path without trailing slash>/api/...``. Every request has a
timeout. Failures raise :mod:`.errors` types: no answer (refused, timed out, DNS) or an
answer that is not JSON is :class:`UnreachableError`; an HTTP error status is
:class:`JobError` carrying the server's ``error`` message when it sent one, except a 404
on a GET, which means no dtruntime API lives there (UnreachableError).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .errors import JobError, UnreachableError, UsageError

SECRET_ENV = "DTRUNTIME_SECRET"


def base_url(url: str) -> str:
    """The normalized base of ``url`` (no trailing slash); UsageError for a non-HTTP URL."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{url!r} is not an http(s) URL of a dtruntime peer (e.g. http://127.0.0.1:8080)")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise UsageError(f"{url!r} has an invalid port") from None
    path = parts.path.rstrip("/")
    for suffix in ("/index.html", "/api/dashboard"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def resolve_token(token: str | None) -> str | None:
    """``--token`` if given, else the token derived from ``$DTRUNTIME_SECRET``, else None."""
    if token:
        return token.strip()
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        return None
    from ..http.auth import bearer_token

    return bearer_token(secret)


class Client:
    """Requests to one peer. ``timeout`` bounds each request (connect and read)."""

    def __init__(self, url: str, *, timeout: float = 5.0, token: str | None = None) -> None:
        self.base = base_url(url)
        self.timeout = timeout
        self.token = token

    def get(self, path: str) -> Any:
        return self._request("GET", path, None)

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, body)

    def _request(self, method: str, path: str, body: Any) -> Any:
        url = self.base + path
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token and method == "POST":
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "GET":
                raise UnreachableError(f"{url} answered 404: is {self.base} a dtruntime peer?") from None
            raise JobError(f"{method} {url} answered {exc.code}: {_error_text(exc)}{_hint(exc.code)}") from None
        except urllib.error.URLError as exc:
            raise UnreachableError(f"cannot reach {url}: {_reason(exc.reason)}") from None
        except (socket.timeout, TimeoutError):
            raise UnreachableError(f"cannot reach {url}: no answer within {self.timeout:g} s") from None
        except (ConnectionError, http.client.HTTPException) as exc:
            raise UnreachableError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise UnreachableError(f"{url} did not answer JSON: is it a dtruntime peer?") from None


def _reason(reason: object) -> str:
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the job running with [http] port set?)"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    return str(getattr(reason, "strerror", None) or reason)


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read()
    except OSError:
        raw = b""
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        for key in ("error", "message", "detail"):
            if isinstance(answer.get(key), str):
                return answer[key]
    text = raw.decode("utf-8", "replace").strip().splitlines()
    return text[0][:200] if text else (exc.reason or "error")


def _hint(code: int) -> str:
    if code in (401, 403):
        return f" (pass --token TOKEN or set {SECRET_ENV})"
    return ""
