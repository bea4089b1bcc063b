"""gunicorn's access log without credentials and without a line a client wrote.

gunicorn's access log takes the decoded path (`%0A` becomes a line break in a text log),
the query string (where stream tokens travel), the Basic-auth user name and any request
header as the client sent them. This logger gives the format the raw path with every
control character, quote and non-ASCII character percent-encoded, no query string and no
credential, whatever `access_log_format` asks for.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gunicorn import glogging

from shared.logs import printable

# Atoms that carry a credential or a query string: never written.
HIDDEN = frozenset(
    {
        "q",
        "u",
        "{authorization}i",
        "{proxy-authorization}i",
        "{cookie}i",
        "{set-cookie}o",
        "{query_string}e",
        "{raw_uri}e",
        "{request_uri}e",
        "{http_authorization}e",
        "{http_cookie}e",
    }
)
# Atoms a client wrote (method, protocol, user agent, referer; request headers and the
# environ are `{name}i` and `{name}e`).
CLIENT = frozenset({"m", "H", "a", "f"})


class Logger(glogging.Logger):
    """gunicorn's logger, whose access lines hold only printable ASCII and no credential."""

    def atoms(
        self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta
    ) -> dict[str, Any]:
        """The access log's atoms, made safe for one log line."""
        atoms = super().atoms(resp, req, environ, request_time)
        raw_uri = str(environ.get("RAW_URI") or getattr(req, "uri", "") or "-")
        path = printable(raw_uri.partition("?")[0].partition("#")[0]) or "-"
        referer = str(atoms.get("f") or "-").partition("?")[0]
        safe: dict[str, Any] = {}
        for name, value in atoms.items():
            if name in HIDDEN:
                safe[name] = "-"
            elif isinstance(value, str) and (name in CLIENT or name.endswith(("}i", "}e"))):
                safe[name] = printable(value)
            else:
                safe[name] = value
        safe.update(
            U=path,
            f=printable(referer),
            r=f"{safe.get('m') or '-'} {path} {safe.get('H') or '-'}",
        )
        return safe
