"""Standard EventSource clients (Chromium's and Node's `eventsource` package) against the
real stack: they stop once a session has ended, and can tell a generation error from a
transport error."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import requests

from tests import client
from tests.node import NODE_ENV, WEB, install_web, tool
from tests.procs import Api

# EventSource reconnects 3 s after a response ends (Chromium's default, and the package's):
# an EventSource still open this long after the terminal event reconnects for ever.
WATCH_MS = 9_000

# Opens an EventSource, notes what it sees, and reports once it has stopped for good (or
# WATCH_MS has passed). Shared by the page and the Node script.
WATCH = """
(EventSource, url, watchMs) => new Promise((resolve) => {
  const log = { opens: 0, types: [], streamErrors: [], errorsWithData: [], bareErrors: 0 };
  const es = new EventSource(url);
  es.onopen = () => { log.opens += 1; };
  for (const type of ["status", "chunk", "done", "cancelled"]) {
    es.addEventListener(type, () => log.types.push(type));
  }
  es.addEventListener("stream_error", (e) => {
    log.types.push("stream_error");
    log.streamErrors.push(JSON.parse(e.data));
  });
  es.onerror = (e) => {
    if (e.data) log.errorsWithData.push(JSON.parse(e.data));
    else log.bareErrors += 1;
  };
  const started = Date.now();
  const poll = setInterval(() => {
    if (es.readyState === 2 || Date.now() - started > watchMs) {
      clearInterval(poll);
      log.readyState = es.readyState;
      es.close();
      resolve(log);
    }
  }, 50);
})
"""

NODE_SCRIPT = f"""
import {{ EventSource }} from "eventsource";
const watch = {WATCH};
const urls = JSON.parse(process.env.URLS);
const logs = await Promise.all(urls.map((url) => watch(EventSource, url, {WATCH_MS})));
console.log(JSON.stringify(logs));
"""


def completed(api: Api, **body: Any) -> str:
    session_id = client.create(api.url, **body)["sessionId"]
    client.wait_terminal(api.url, session_id)
    return session_id


def assert_stopped_after_done(log: dict[str, Any]) -> None:
    assert log["readyState"] == 2, log  # CLOSED: the follow-up request got a 204
    assert log["opens"] == 1, log  # and it opened no second response
    assert log["types"][-1] == "done" and log["types"].count("done") == 1, log
    assert log["streamErrors"] == [] and log["errorsWithData"] == [], log


def assert_stopped_after_error(log: dict[str, Any], code: str) -> None:
    assert log["readyState"] == 2 and log["opens"] == 1, log
    assert [e["error"]["code"] for e in log["streamErrors"]] == [code], log
    assert log["streamErrors"][0]["type"] == "error" and log["streamErrors"][0]["id"], log
    assert log["types"][-1] == "stream_error", log


def test_a_follow_with_nothing_left_answers_204(api: Api) -> None:
    session_id = completed(api, prompt="ended", max_tokens=4)
    full = client.sse_follow(api.url, session_id)
    assert full.types[-1] == "done"
    last_ms, last_seq = map(int, full.ids[-1].split("-"))
    url = f"{api.url}/api/streams/{session_id}"
    for headers, params in (
        ({"Last-Event-ID": full.ids[-1]}, {}),  # at the terminal event
        ({}, {"after": full.ids[-1]}),
        ({}, {"after": f"{last_ms}-{last_seq + 1}"}),  # past it
        ({}, {"after": f"{2**64 - 1}-{2**64 - 1}"}),
    ):
        response = requests.get(url, headers=headers, params=params, timeout=10)
        assert response.status_code == 204, (headers, params, response.text)
        assert response.content == b""
    # Before the terminal event there is something to send: the rest, as ever.
    rest = client.sse_follow(api.url, session_id, last_event_id=full.ids[-2])
    assert rest.types == ["done"] and rest.ids == full.ids[-1:]


def test_a_live_follow_at_its_newest_event_is_not_204(api: Api) -> None:
    session_id = client.create(api.url, prompt="live", max_tokens=100)["sessionId"]
    first = client.sse_follow(api.url, session_id, max_events=2)
    rest = client.sse_follow(api.url, session_id, last_event_id=first.ids[-1])
    assert rest.types[-1] == "done"


def test_an_error_event_is_repeated_as_stream_error(api: Api) -> None:
    session_id = completed(api, prompt="refused", model="fake-401")
    result = client.sse_follow(api.url, session_id)
    assert result.types[-2:] == ["error", "stream_error"]
    assert result.events[-1] == result.events[-2]
    assert result.ids[-1] == result.ids[-2]
    assert result.events[-1]["error"]["code"] == "provider_auth"
    # Resuming from either of the two gets a 204: the session has nothing after them.
    response = requests.get(
        f"{api.url}/api/streams/{session_id}", headers={"Last-Event-ID": result.ids[-1]}
    )
    assert response.status_code == 204


@pytest.mark.slow
def test_chromium_eventsource_stops_after_the_session_ends(browser: Any, api: Api) -> None:
    done_id = client.create(api.url, prompt="chromium", max_tokens=5)["sessionId"]
    failed_id = client.create(api.url, prompt="chromium", model="fake-401")["sessionId"]
    page = browser.new_context().new_page()
    try:
        page.goto(api.url + "/healthz")
        logs = page.evaluate(
            f"""([urls, watchMs]) => Promise.all(
                urls.map((url) => ({WATCH})(EventSource, url, watchMs)))""",
            [[f"/api/streams/{done_id}", f"/api/streams/{failed_id}"], WATCH_MS],
        )
    finally:
        page.context.close()
    assert_stopped_after_done(logs[0])
    assert_stopped_after_error(logs[1], "provider_auth")
    # Chromium hands the server's `error` event to onerror too, with its data.
    assert [e["error"]["code"] for e in logs[1]["errorsWithData"]] == ["provider_auth"]


@pytest.mark.slow
def test_node_eventsource_package_stops_after_the_session_ends(api: Api) -> None:
    install_web()
    done_id = client.create(api.url, prompt="node", max_tokens=5)["sessionId"]
    failed_id = client.create(api.url, prompt="node", model="fake-401")["sessionId"]
    urls = [f"{api.url}/api/streams/{done_id}", f"{api.url}/api/streams/{failed_id}"]
    result = subprocess.run(
        [tool("node"), "--input-type=module", "-e", NODE_SCRIPT],
        cwd=WEB,  # resolves `eventsource` from web/node_modules
        env={**NODE_ENV, "URLS": json.dumps(urls)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    logs = json.loads(result.stdout)
    assert_stopped_after_done(logs[0])
    assert_stopped_after_error(logs[1], "provider_auth")
