"""rstreams.js, the browser client, driven in headless Chromium against the real stack."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests import client
from tests.procs import Api

# Loads the module into a page of the API and records what a stream emits.
HARNESS = """async () => {
  window.rs = await import("/static/rstreams.js");
  window.track = (stream) => {
    const log = { events: [], finished: 0, final: null };
    for (const type of ["open", "status", "chunk", "done", "cancelled", "error", "reconnecting"]) {
      stream.on(type, (e) => log.events.push({ type, ...e }));
    }
    stream.finished.then((s) => { log.finished += 1; log.final = s; });
    return log;
  };
  // Wait for the end, then a little more: nothing may come after it.
  window.settle = async (stream, log) => {
    await stream.finished;
    await new Promise((r) => setTimeout(r, 300));
    return log;
  };
}"""


def open_page(browser: Any, api: Api) -> Any:
    """A fresh page of the API's origin with rstreams.js imported."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(api.url + "/healthz")
    page.evaluate(HARNESS)
    return page


@pytest.fixture
def page(browser: Any, api: Api) -> Iterator[Any]:
    """A page of the shared API with the harness loaded."""
    page = open_page(browser, api)
    yield page
    page.context.close()


def chunk_indexes(log: dict[str, Any]) -> list[int]:
    return [e["index"] for e in log["events"] if e["type"] == "chunk"]


def types(log: dict[str, Any]) -> list[str]:
    return [e["type"] for e in log["events"]]


def test_start_streams_over_a_websocket_to_the_end(page: Any, api: Api) -> None:
    log = page.evaluate(
        """async () => {
          const stream = await new rs.ResumableStreams().start("hello", { max_tokens: 30 });
          return settle(stream, track(stream));
        }"""
    )
    final = log["final"]
    assert final["status"] == "completed" and final["ended"] is True
    assert final["transport"] == "ws"
    assert final["chunks"] == 30 and chunk_indexes(log) == list(range(30))
    assert final["finishReason"] == "stop"
    assert final["text"] == client.text(api.url, final["sessionId"])["text"]
    assert types(log)[0] == "open"
    assert types(log)[-1] == "done" and types(log).count("done") == 1
    assert log["finished"] == 1
    statuses = [e["status"] for e in log["events"] if e["type"] == "status"]
    assert statuses[-1] == "completed" and "running" in statuses
