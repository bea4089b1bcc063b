"""Web origins (RFC 6454): the one normal form that settings and requests are compared in."""

from __future__ import annotations

from urllib.parse import urlsplit

ANY = "*"
DEFAULT_PORTS = {"http": 80, "https": 443}
# A WebSocket handshake is an HTTP request: its page's origin is http(s).
_SCHEME_OF = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def normalize(value: str) -> str | None:
    """`scheme://host[:port]` lowercased, without a default port; None if `value` is no origin."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = _SCHEME_OF.get(parts.scheme.lower())
    host = (parts.hostname or "").lower()
    if (
        scheme is None
        or not host
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "?" in value
        or "#" in value
    ):
        return None
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"
