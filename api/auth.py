"""Who is calling: an API key (`Authorization: Bearer`), or a stream token (`?token=`).

With no key configured the API is open: every caller is the empty owner and sees every
session. With keys, every endpoint needs a key except those marked `@public`; those
marked `@takes_stream_token` (the followers) also take a token for their one session.
A failure is a 401 before the handler runs, except on a WebSocket, whose handler sends
it as a frame after the upgrade (`failure()`), since browsers cannot read a refused
handshake's status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, current_app, g, request

from api import apikeys, tokens
from api.backend import backend
from shared import store
from shared.errors import Unauthorized
from shared.settings import Settings

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: `owner` is its key id ("" in open mode); a stream token
    also names the one session it may read."""

    owner: str
    token_session: str | None = None


OPEN = Caller(owner="")


def public(view: F) -> F:
    """Mark a view as open to anyone, keys or not."""
    view.is_public = True  # type: ignore[attr-defined]
    return view


def takes_stream_token(view: F) -> F:
    """Mark a follower view as accepting `?token=` for its `<session_id>`."""
    view.takes_stream_token = True  # type: ignore[attr-defined]
    return view


def register(app: Flask, settings: Settings) -> None:
    """Check credentials before every request; warn once when there are none to check."""
    if not settings.api.has_api_keys:
        log.warning(
            "no API keys configured (API_KEYS, API_KEYS_FILE): the API is open to anyone "
            "who can reach it"
        )
    app.before_request(_authenticate)


def caller() -> Caller:
    """The current request's caller."""
    found: Caller = g.get("caller", OPEN)
    return found


def failure() -> Unauthorized | None:
    """The credential failure a WebSocket handler must report, if any."""
    found: Unauthorized | None = g.get("auth_failure")
    return found


def check_owner(session_id: str) -> None:
    """Raise `SessionNotFound` unless the caller may see the session (always, in open mode)."""
    b = backend()
    if b.settings.api.has_api_keys:
        store.check_owner(b.redis, session_id, caller().owner)


def _authenticate() -> None:
    settings = backend().settings
    if not settings.api.has_api_keys:
        return
    view = current_app.view_functions.get(request.endpoint or "")
    if request.endpoint == "static" or getattr(view, "is_public", False):
        return
    if request.method == "OPTIONS":
        return  # a CORS preflight never carries credentials, and OPTIONS reads nothing
    takes_token = bool(getattr(view, "takes_stream_token", False))
    try:
        g.caller = _identify(settings, takes_token)
    except Unauthorized as e:
        if takes_token and request.headers.get("Upgrade", "").lower() == "websocket":
            g.auth_failure = e
            return
        raise


def from_authorization(settings: Settings, header: str) -> Caller:
    """The caller of an `Authorization: Bearer <API key>` value; raises `Unauthorized`."""
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("the Authorization header must be `Bearer <API key>`")
    key_id = apikeys.key_id_of(key.strip(), settings.api.api_keys)
    if key_id is None:
        raise Unauthorized("the API key is not valid")
    return Caller(key_id)


def act_as(caller: Caller) -> None:
    """Make `caller` the current request's caller: a WebSocket whose frames carry their
    own credentials (`api/chatws.py`)."""
    g.caller = caller


def _identify(settings: Settings, takes_token: bool) -> Caller:
    header = request.headers.get("Authorization", "")
    if header:
        return from_authorization(settings, header)
    token = request.args.get("token") if takes_token else None
    if not token:
        raise Unauthorized(
            "this endpoint needs `Authorization: Bearer <API key>`"
            + (" or a stream token as ?token=" if takes_token else "")
        )
    grant = tokens.verify(settings.api.stream_token_secret, token)
    if grant.session_id != (request.view_args or {}).get("session_id"):
        raise Unauthorized("the stream token is for another session")
    if all(key_id != grant.key_id for key_id, _digest in settings.api.api_keys):
        raise Unauthorized("the stream token's API key is no longer accepted")
    return Caller(grant.key_id, token_session=grant.session_id)
