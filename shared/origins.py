"""Web origins (RFC 6454) and host names: the one normal form that settings and requests
are compared in."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

ANY = "*"
DEFAULT_PORTS = {"http": 80, "https": 443}
# A WebSocket handshake is an HTTP request: its page's origin is http(s).
_SCHEME_OF = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
# Names that reach this machine only: a page of another site can never be addressed by
# one of them, whatever its DNS says, so the API always answers them.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# A DNS name or IPv4 address (ASCII letters, digits, hyphens, underscores, dots), or an
# IPv6 literal in brackets; then an optional port.
_HOST_RE = re.compile(
    r"(?P<host>[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?|\[[0-9a-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)


def split_host(value: str) -> tuple[str, int | None] | None:
    """A `Host` header's (lowercased name, port or None); None if it is not `host[:port]`."""
    found = _HOST_RE.fullmatch(value.lower())
    if found is None or ".." in found["host"]:
        return None
    port = int(found["port"]) if found["port"] else None
    if port is not None and not 0 < port < 65536:
        return None
    return found["host"], port


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
