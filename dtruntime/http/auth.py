"""Bearer tokens for the HTTP API's POST endpoints, derived from the job's shared secret.

``token = hex(HMAC-SHA256(key=secret, msg=b"dtruntime-http"))``: anyone holding the
secret (``DTRUNTIME_SECRET``) can compute it, nobody can recover the secret from it, and
it differs from the key that authenticates control-plane frames. Comparison is
constant-time.
"""

from __future__ import annotations

import hashlib
import hmac

LABEL = b"dtruntime-http"


def bearer_token(secret: bytes | str) -> str:
    """The token a client sends as ``Authorization: Bearer <token>``."""
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    return hmac.new(key, LABEL, hashlib.sha256).hexdigest()


def authorized(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` (scheme case-insensitive)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
