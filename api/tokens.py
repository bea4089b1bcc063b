"""Stream tokens: short-lived, read-only credentials for one session, for browsers.

A browser cannot set an Authorization header on a WebSocket or an EventSource, so
`POST /api/streams/generate` hands out a token the page passes as `?token=`. It is
itsdangerous's URL-safe signed JSON of (session id, key id, expiry ms), HMAC-SHA256 with
`STREAM_TOKEN_SECRET`; the expiry is inside the signed payload, so a token's lifetime is
fixed when it is made.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

from shared.errors import Unauthorized
from shared.store import now_ms

SALT = "rs-stream-token"


@dataclass(frozen=True)
class StreamToken:
    """What a valid token grants: reading `session_id`, on behalf of `key_id`."""

    session_id: str
    key_id: str
    expires_ms: int


def _serializer(secret: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret, salt=SALT, signer_kwargs={"digest_method": hashlib.sha256})


def mint(secret: str, session_id: str, key_id: str, ttl_s: int) -> tuple[str, int]:
    """A token for reading `session_id` and its expiry (ms since the epoch)."""
    expires_ms = now_ms() + ttl_s * 1000
    token = _serializer(secret).dumps({"s": session_id, "k": key_id, "e": expires_ms})
    return str(token), expires_ms


def verify(secret: str, token: str) -> StreamToken:
    """The grant of a token that is intact and not expired; raises `Unauthorized`."""
    try:
        payload = _serializer(secret).loads(token)
        grant = StreamToken(str(payload["s"]), str(payload["k"]), int(payload["e"]))
    except (BadSignature, KeyError, TypeError, ValueError):
        raise Unauthorized("the stream token is not valid") from None
    if grant.expires_ms <= now_ms():
        raise Unauthorized("the stream token has expired")
    return grant
