"""LOG_FORMAT=json: every log record of the API and the worker is one JSON object a line,
and the lines about a session carry its id."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from shared.errors import ConfigError
from shared.settings import Settings
from tests import client
from tests.procs import Proc

# The start of a record in Celery's or gunicorn's text format: `[2026-01-31 12:00:00,123: `
# or `[2026-01-31 12:00:00 +0000] [`.
TEXT_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")


def records(proc: Proc) -> list[dict[str, Any]]:
    """The process's log records; fails on a record that is not JSON."""
    found = []
    for line in proc.log().splitlines():
        assert not TEXT_RECORD.match(line), f"a text record in {proc.log_path}: {line}"
        if line.startswith("{"):
            record = json.loads(line)
            assert {"time", "level", "logger", "message"} <= record.keys(), line
            found.append(record)
    return found


def test_json_logs_carry_the_session_id(make_stack: Any) -> None:
    # Given a worker and an API (with its access log) logging JSON
    stack = make_stack(LOG_FORMAT="json", WEB_ACCESS_LOG="-")
    worker = stack.worker()  # waited for Celery's " ready." line, JSON now
    api = stack.api()
    # When a session is generated and followed, and another fails at the provider
    session_id = client.create(api.url, prompt="log me", max_tokens=10)["sessionId"]
    assert client.ws_follow(api.ws_url, session_id).events[-1]["type"] == "done"
    assert client.sse_follow(api.url, session_id).events[-1]["type"] == "done"
    failed_id = client.create(api.url, prompt="fail", model="fake-401")["sessionId"]
    assert client.ws_follow(api.ws_url, failed_id).events[-1]["type"] == "error"
    client.wait_terminal(api.url, failed_id)
    stack.stop()  # the shutdown's lines too

    # Then every record of both processes is JSON
    worker_records, api_records = records(worker), records(api)
    assert any(" ready." in r["message"] for r in worker_records)
    assert any(r["logger"] == "gunicorn.error" for r in api_records)
    # And every line that names a session carries its id
    for sid in (session_id, failed_id):
        for proc_records in (worker_records, api_records):
            about = [r for r in proc_records if sid in r["message"]]
            assert about, f"no line about {sid}"
            assert all(r.get("session_id") == sid for r in about), about
    # And the access log's lines too (gunicorn writes them after the request's context)
    access = [r for r in api_records if r["logger"] == "gunicorn.access"]
    assert any(r.get("session_id") == session_id for r in access)


def test_log_format_is_text_or_json() -> None:
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": "xml"})
