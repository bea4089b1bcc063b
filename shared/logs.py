"""Log lines as text or as JSON (`LOG_FORMAT`), with the session a line is about.

A JSON line has `time`, `level`, `logger`, `message`, `session_id` when the line is about
a session, and `exc_info` (the traceback's text) when there is one. The session id comes
from the record's `session_id` (`log.info(..., extra=logs.about(session_id))`, for code
that serves many sessions, like the appender) or else from a context variable that the
API's handlers of `/api/streams/<id>...` and the worker's generate task set while they
work on one session.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_session: ContextVar[str | None] = ContextVar("session_id", default=None)
# gunicorn writes an access line after the request's context is gone: take the id from
# its path.
_ACCESS_PATH_RE = re.compile(r"/api/streams/([A-Za-z0-9_-]{21})(?![A-Za-z0-9_-])")


_UNPRINTABLE = re.compile(r'[^\x20-\x7e]|["\\]')


def printable(value: str) -> str:
    """`value` with every control character, non-ASCII character, quote and backslash
    percent-encoded (UTF-8): what a client sent, safe inside one quoted field of a log line."""
    return _UNPRINTABLE.sub(
        lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass")),
        value,
    )


def bind(session_id: str | None) -> None:
    """Mark what this context logs from now on as about `session_id` (None: no session)."""
    _session.set(session_id)


@contextmanager
def session(session_id: str) -> Iterator[None]:
    """Mark what is logged inside the block as about `session_id`."""
    token = _session.set(session_id)
    try:
        yield
    finally:
        _session.reset(token)


def about(session_id: str) -> dict[str, str]:
    """`extra=` for a log call about `session_id` made outside its context."""
    return {"session_id": session_id}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        session_id = getattr(record, "session_id", None) or _session.get()
        if not session_id and record.name == "gunicorn.access":
            found = _ACCESS_PATH_RE.search(line["message"])
            session_id = found.group(1) if found else None
        if session_id:
            line["session_id"] = session_id
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


class SendTimeouts(logging.Filter):
    """Turns gunicorn's traceback for a write that timed out into one INFO line.

    The API times out writes to a client that stopped reading (`WS_SEND_TIMEOUT_S`); the
    `TimeoutError` reaches gunicorn, which logs every socket error but a reset or a broken
    pipe as an ERROR with its traceback. A dropped slow client is routine, not an error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record of a timed-out write; pass every record on."""
        if record.exc_info and isinstance(record.exc_info[1], TimeoutError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "dropped a client that stopped reading (send timed out)", ()
            record.exc_info, record.exc_text = None, None
        return True


# One instance: `Logger.addFilter` adds it once however often an app is built.
SEND_TIMEOUTS = SendTimeouts()


def use_json(logger: logging.Logger) -> None:
    """Give every handler of `logger` the JSON formatter."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def configure(log_format: str, level: int | str = logging.INFO) -> None:
    """In JSON mode, send the root logger's records to stderr as JSON lines, unless a
    handler is already there (gunicorn's `logconfig_dict` installs one).

    In text mode under gunicorn, the app's lines go where gunicorn's error log goes, in
    its format and at its level (`LOG_LEVEL`): without a handler of its own the root
    logger would write warnings only, and a dropped follower or a shutdown's progress
    would never be seen.
    """
    root = logging.getLogger()
    if log_format != "json":
        gunicorn_log = logging.getLogger("gunicorn.error")
        if not root.handlers and gunicorn_log.handlers:
            for handler in gunicorn_log.handlers:
                root.addHandler(handler)
            root.setLevel(gunicorn_log.level)
        return
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        root.addHandler(handler)
        root.setLevel(level)
    use_json(root)
