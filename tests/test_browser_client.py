"""rstreams.js, the browser client, driven in headless Chromium against the real stack."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from api.apikeys import hash_key
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


def open_page(browser: Any, origin: str, ws_route: Any = None) -> Any:
    """A fresh page of `origin` with rstreams.js imported; its WebSockets go through
    `ws_route` (a Playwright `route_web_socket` handler) when one is given."""
    page = browser.new_context().new_page()
    if ws_route is not None:
        page.route_web_socket(re.compile(r"/ws"), ws_route)
    page.goto(origin + "/healthz")
    page.evaluate(HARNESS)
    return page


@pytest.fixture
def page(browser: Any, api: Api) -> Iterator[Any]:
    """A page of the shared API with the harness loaded."""
    page = open_page(browser, api.url)
    yield page
    page.context.close()


def chunk_indexes(log: dict[str, Any]) -> list[int]:
    return [e["index"] for e in log["events"] if e["type"] == "chunk"]


def types(log: dict[str, Any]) -> list[str]:
    return [e["type"] for e in log["events"]]


def test_the_module_is_served_as_javascript_and_revalidated(api: Api) -> None:
    response = requests.get(f"{api.url}/static/rstreams.js", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert "export class ResumableStreams" in response.text
    again = requests.get(
        f"{api.url}/static/rstreams.js",
        headers={"If-None-Match": response.headers["ETag"]},
        timeout=10,
    )
    assert again.status_code == 304
    types = requests.get(f"{api.url}/static/rstreams.d.ts", timeout=10)
    assert types.status_code == 200
    assert types.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "export class Stream" in types.text


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


def test_forced_sse_streams_to_the_end(page: Any, api: Api) -> None:
    log = page.evaluate(
        """async () => {
          const client = new rs.ResumableStreams({ transport: "sse" });
          const stream = await client.start("over SSE", { max_tokens: 30 });
          return settle(stream, track(stream));
        }"""
    )
    final = log["final"]
    assert final["status"] == "completed" and final["transport"] == "sse"
    assert chunk_indexes(log) == list(range(30))
    assert final["text"] == client.text(api.url, final["sessionId"])["text"]
    assert types(log).count("done") == 1 and types(log)[-1] == "done"


def test_sse_resume_at_the_end_finishes_as_the_session_did(page: Any, api: Api) -> None:
    done_id = client.create(api.url, prompt="ended", max_tokens=5)["sessionId"]
    failed_id = client.create(api.url, prompt="ended", model="fake-401")["sessionId"]
    cursors = [client.sse_follow(api.url, s).ids[-1] for s in (done_id, failed_id)]
    logs = page.evaluate(
        """async (resumes) => {
          const client = new rs.ResumableStreams({ transport: "sse" });
          return Promise.all(resumes.map(async ([id, after]) => {
            const stream = client.resume(id, { after });
            const log = track(stream);
            const late = new Promise((r) => setTimeout(r, 8000, "still following"));
            log.outcome = await Promise.race([settle(stream, log).then(() => "ended"), late]);
            stream.close();
            return log;
          }));
        }""",
        [[done_id, cursors[0]], [failed_id, cursors[1]]],
    )
    done, failed = logs
    assert done["outcome"] == "ended" and "reconnecting" not in types(done), done
    assert done["final"]["status"] == "completed" and types(done)[-1] == "done"
    assert failed["outcome"] == "ended" and "reconnecting" not in types(failed), failed
    assert failed["final"]["status"] == "failed"
    assert failed["final"]["error"]["code"] == "provider_auth"


class NoWebSocketProxy:
    """An HTTP proxy in front of the API that refuses WebSocket upgrades with a 403, as
    some corporate proxies do, and passes everything else through."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.upgrades_refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(65536)
            if not data:
                conn.close()
                return
            head += data
        if b"upgrade: websocket" in head.lower():
            self.upgrades_refused += 1
            conn.sendall(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            conn.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        upstream.sendall(head)
        back = threading.Thread(target=self._pipe, args=(upstream, conn), daemon=True)
        back.start()
        self._pipe(conn, upstream)
        back.join()
        conn.close()
        upstream.close()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


def test_auto_falls_back_to_sse_where_websockets_are_refused(browser: Any, api: Api) -> None:
    proxy = NoWebSocketProxy(api.port)
    page = open_page(browser, proxy.url)
    try:
        log = page.evaluate(
            """async () => {
              const stream = await new rs.ResumableStreams().start("no WS", { max_tokens: 30 });
              return settle(stream, track(stream));
            }"""
        )
    finally:
        page.context.close()
        proxy.close()
    final = log["final"]
    assert final["status"] == "completed" and final["transport"] == "sse"
    assert proxy.upgrades_refused == 2
    assert chunk_indexes(log) == list(range(30))
    assert final["text"] == client.text(api.url, final["sessionId"])["text"]
    assert [e["transport"] for e in log["events"] if e["type"] == "open"] == ["sse"]


def cut_the_first_after(frames: int, connections: list[int]) -> Any:
    """A `route_web_socket` handler that relays, counting frames per connection in
    `connections`, and closes the first connection with 1013 after `frames` frames."""

    def handler(ws: Any) -> None:
        server = ws.connect_to_server()
        connections.append(0)
        number = len(connections)

        def relay(message: str | bytes) -> None:
            ws.send(message)
            connections[number - 1] += 1
            if number == 1 and connections[0] == frames:
                ws.close(code=1013, reason="try again later")

        server.on_message(relay)

    return handler


def test_a_dropped_websocket_reconnects_from_its_cursor_without_duplicates(
    browser: Any, api: Api
) -> None:
    connections: list[int] = []
    page = open_page(browser, api.url, ws_route=cut_the_first_after(10, connections))
    try:
        log = page.evaluate(
            """async () => {
              const client = new rs.ResumableStreams({ backoff: { initialMs: 50 } });
              const stream = await client.start("cut me", { max_tokens: 40 });
              return settle(stream, track(stream));
            }"""
        )
    finally:
        page.context.close()
    final = log["final"]
    assert len(connections) == 2
    assert types(log).count("reconnecting") == 1
    assert [e["transport"] for e in log["events"] if e["type"] == "open"] == ["ws", "ws"]
    assert chunk_indexes(log) == list(range(40))
    assert final["status"] == "completed" and final["chunks"] == 40
    assert final["text"] == client.text(api.url, final["sessionId"])["text"]


def test_resume_by_id_replays_from_the_start_or_from_a_cursor(page: Any, api: Api) -> None:
    session_id = client.create(api.url, prompt="resume me", max_tokens=40)["sessionId"]
    events = client.ws_follow(api.ws_url, session_id).events
    chunks = [e for e in events if e["type"] == "chunk"]
    full = client.text(api.url, session_id)["text"]
    logs = page.evaluate(
        """async ({ sessionId, after }) => {
          const client = new rs.ResumableStreams();
          const all = client.resume(sessionId);
          const rest = client.resume(sessionId, { after });
          const logs = [track(all), track(rest)];
          return [await settle(all, logs[0]), await settle(rest, logs[1])];
        }""",
        {"sessionId": session_id, "after": chunks[14]["id"]},
    )
    replayed, rest = logs
    assert chunk_indexes(replayed) == list(range(40))
    assert replayed["final"]["text"] == full
    assert chunk_indexes(rest) == list(range(15, 40))
    assert rest["final"]["text"] == "".join(c["text"] for c in chunks[15:])
    assert rest["final"]["status"] == "completed" and rest["final"]["chunks"] == 40


def test_stop_cancels_the_generation_and_the_stream_ends_cancelled(page: Any, api: Api) -> None:
    log = page.evaluate(
        """async () => {
          const stream = await new rs.ResumableStreams().start("stop me", { max_tokens: 500 });
          const log = track(stream);
          await new Promise((resolve) => stream.on("chunk", (e) => e.index >= 4 && resolve()));
          await stream.stop();
          return settle(stream, log);
        }"""
    )
    final = log["final"]
    assert final["status"] == "cancelled" and final["ended"] is True
    assert types(log).count("cancelled") == 1 and types(log)[-1] == "cancelled"
    assert 5 <= final["chunks"] < 500
    after = client.text(api.url, final["sessionId"])
    assert after["status"] == "cancelled" and after["text"] == final["text"]


@pytest.mark.parametrize("transport", ["ws", "sse", "auto"])
def test_an_unknown_session_fails_once_without_reconnecting(page: Any, transport: str) -> None:
    attempts: list[str] = []
    page.on("websocket", lambda ws: attempts.append(ws.url))
    page.on("request", lambda r: "/api/streams/" in r.url and attempts.append(r.url))
    log = page.evaluate(
        """async (transport) => {
          const stream = new rs.ResumableStreams({ transport }).resume("A".repeat(21));
          const log = track(stream);
          await settle(stream, log);
          await new Promise((r) => setTimeout(r, 700));  // longer than a first backoff
          return log;
        }""",
        transport,
    )
    final = log["final"]
    assert final["status"] == "failed" and final["error"]["code"] == "not_found"
    assert "reconnecting" not in types(log)
    assert [e["code"] for e in log["events"] if e["type"] == "error"] == ["not_found"]
    assert len(attempts) == 1


def test_a_refused_start_rejects_with_the_code_and_status(page: Any) -> None:
    error = page.evaluate(
        """async () => {
          try {
            await new rs.ResumableStreams().start("hi", { model: "no-such-model" });
          } catch (e) {
            return { name: e.name, code: e.code, httpStatus: e.httpStatus,
                     isError: e instanceof rs.ResumableStreamsError };
          }
        }"""
    )
    assert error == {
        "name": "ResumableStreamsError",
        "code": "unknown_model",
        "httpStatus": 400,
        "isError": True,
    }


def test_recent_sessions_keep_a_short_newest_first_list(page: Any) -> None:
    result = page.evaluate(
        """() => {
          const recent = new rs.RecentSessions({ storageKey: "test:recent", limit: 3 });
          for (const id of ["a", "b", "c", "d"]) {
            recent.add({ sessionId: id, title: id, createdAt: new Date().toISOString() });
          }
          recent.add({ sessionId: "c", title: "c again", createdAt: "" });
          recent.update("b", { status: "completed" });
          recent.remove("d");
          const again = new rs.RecentSessions({ storageKey: "test:recent" }).list();
          const other = new rs.RecentSessions({ storageKey: "test:other" }).list();
          return { again, other };
        }"""
    )
    assert [(s["sessionId"], s["title"], s.get("status")) for s in result["again"]] == [
        ("c", "c again", None),
        ("b", "b", "completed"),
    ]
    assert result["other"] == []


KEY = "rsk_browser-test-key-0123456789abcdefghijklmn"
SECRET = "browser-test-stream-token-secret-0123456789"


@pytest.fixture
def keyed(make_stack: Any) -> Api:
    """A stack of its own with one API key and stream tokens."""
    stack = make_stack(API_KEYS=f"web:{hash_key(KEY)}", STREAM_TOKEN_SECRET=SECRET)
    stack.worker()
    return stack.api()


def test_keyed_mode_with_an_api_key_and_with_a_stream_token(browser: Any, keyed: Api) -> None:
    for name in ("rstreams.js", "rstreams.d.ts", "demo.js", "demo.css"):
        assert requests.get(f"{keyed.url}/static/{name}", timeout=10).status_code == 200
    page = open_page(browser, keyed.url)
    try:
        result = page.evaluate(
            """async (key) => {
              const out = {};
              try {
                await new rs.ResumableStreams().start("no key");
              } catch (e) {
                out.noKey = { code: e.code, httpStatus: e.httpStatus };
              }
              const keyed = new rs.ResumableStreams({ apiKey: key });
              const started = await keyed.start("with a key", { max_tokens: 20 });
              out.started = (await settle(started, track(started))).final;
              // A page given only a session id and its stream token (no key) follows it,
              // over either transport.
              const res = await fetch("/api/streams/generate", {
                method: "POST",
                headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
                body: JSON.stringify({ prompt: "for a token", max_tokens: 20 }),
              });
              const { sessionId, streamToken } = await res.json();
              out.sessionId = sessionId;
              const follow = async (options, resume) => {
                const stream = new rs.ResumableStreams(options).resume(sessionId, resume);
                return (await settle(stream, track(stream))).final;
              };
              out.tokenWs = await follow({}, { token: streamToken });
              out.tokenSse = await follow({ transport: "sse" }, { token: streamToken });
              out.keyOnly = await follow({ apiKey: key }, {});
              const refused = new rs.ResumableStreams().resume(sessionId);
              const log = track(refused);
              out.noToken = (await settle(refused, log)).final;
              out.noTokenEvents = log.events.map((e) => e.type);
              return out;
            }""",
            KEY,
        )
    finally:
        page.context.close()
    assert result["noKey"] == {"code": "unauthorized", "httpStatus": 401}
    assert result["started"]["status"] == "completed" and result["started"]["chunks"] == 20
    assert result["started"]["transport"] == "ws"
    text = requests.get(
        f"{keyed.url}/api/streams/{result['sessionId']}/text",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    ).json()["text"]
    for name, transport in (("tokenWs", "ws"), ("tokenSse", "sse"), ("keyOnly", "sse")):
        final = result[name]
        assert (name, final["status"], final["transport"]) == (name, "completed", transport)
        assert final["text"] == text
    assert result["noToken"]["status"] == "failed"
    assert result["noToken"]["error"]["code"] == "unauthorized"
    assert "reconnecting" not in result["noTokenEvents"]


def test_an_expired_stream_token_gives_way_to_the_api_key(browser: Any, make_stack: Any) -> None:
    # Given stream tokens that last 1 s, and a first WebSocket cut after 1.5 s of chunks
    stack = make_stack(
        API_KEYS=f"web:{hash_key(KEY)}", STREAM_TOKEN_SECRET=SECRET, STREAM_TOKEN_TTL_S="1"
    )
    stack.worker()
    api = stack.api()
    connections: list[int] = []
    page = open_page(browser, api.url, ws_route=cut_the_first_after(75, connections))
    try:
        # When a client with an API key follows its start with the token, past its expiry
        log = page.evaluate(
            """async (key) => {
              const client = new rs.ResumableStreams({ apiKey: key, backoff: { initialMs: 50 } });
              const stream = await client.start("outlive my token", { max_tokens: 120 });
              return settle(stream, track(stream));
            }""",
            KEY,
        )
    finally:
        page.context.close()
    # Then the reconnect, refused for the token, goes on with the key over SSE to the end
    final = log["final"]
    # The second WebSocket opened (the server refuses after the upgrade: 4401), then SSE
    assert len(connections) == 2
    assert [e["transport"] for e in log["events"] if e["type"] == "open"] == ["ws", "ws", "sse"]
    assert "error" not in types(log)
    assert final["status"] == "completed" and final["transport"] == "sse"
    assert chunk_indexes(log) == list(range(120))
    text = requests.get(
        f"{api.url}/api/streams/{final['sessionId']}/text",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    ).json()["text"]
    assert final["text"] == text


def test_back_online_reconnects_without_waiting_out_the_backoff(browser: Any, api: Api) -> None:
    connections: list[int] = []

    def cut_the_first_at_once(ws: Any) -> None:
        server = ws.connect_to_server()
        connections.append(0)
        if len(connections) == 1:
            ws.close(code=1001, reason="going away")
        else:
            server.on_message(ws.send)

    page = open_page(browser, api.url, ws_route=cut_the_first_at_once)
    try:
        result = page.evaluate(
            """async () => {
              // A first retry 30 to 60 s away: only the `online` event can bring it sooner.
              const backoff = { initialMs: 60000, maxMs: 60000 };
              const client = new rs.ResumableStreams({ backoff });
              const stream = await client.start("back online", { max_tokens: 20 });
              const log = track(stream);
              await new Promise((resolve) => stream.on("reconnecting", resolve));
              window.dispatchEvent(new Event("online"));
              const late = new Promise((r) => setTimeout(() => r("still waiting"), 20000));
              const outcome = await Promise.race([stream.finished.then((s) => s.status), late]);
              return { outcome, events: log.events.map((e) => e.type) };
            }"""
        )
    finally:
        page.context.close()
    assert result["outcome"] == "completed"
    assert len(connections) == 2
    assert result["events"].count("reconnecting") == 1


def deliver_everything_twice(ws: Any) -> None:
    """A WebSocket route that hands the page every server frame twice."""
    server = ws.connect_to_server()

    def twice(message: str | bytes) -> None:
        ws.send(message)
        ws.send(message)

    server.on_message(twice)


def test_a_chunk_delivered_twice_is_shown_once(browser: Any, api: Api) -> None:

    page = open_page(browser, api.url, ws_route=deliver_everything_twice)
    try:
        log = page.evaluate(
            """async () => {
              const stream = await new rs.ResumableStreams().start("twice", { max_tokens: 20 });
              return settle(stream, track(stream));
            }"""
        )
    finally:
        page.context.close()
    assert chunk_indexes(log) == list(range(20))
    assert log["final"]["text"] == client.text(api.url, log["final"]["sessionId"])["text"]
    assert types(log).count("done") == 1


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_reasoning_and_tool_calls_land_in_the_state_once_each(
    browser: Any, api: Api, transport: str
) -> None:
    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"properties": {"city": {}}}},
    }
    page = open_page(browser, api.url, ws_route=deliver_everything_twice)
    try:
        finals = page.evaluate(
            """async ({ transport, weather }) => {
              const client = new rs.ResumableStreams({ transport });
              const out = [];
              for (const options of [
                { model: "demo-reasoning", max_tokens: 24 },
                { model: "demo-tools", tools: [weather] },
              ]) {
                const stream = await client.start("Weather in Oslo?", options);
                const log = track(stream);
                for (const type of ["reasoning", "toolCall"]) {
                  stream.on(type, (e) => log.events.push({ type, ...e }));
                }
                out.push(await settle(stream, log));
              }
              return out;
            }""",
            {"transport": transport, "weather": weather},
        )
    finally:
        page.context.close()
    for log in finals:
        final = log["final"]
        message = requests.get(
            f"{api.url}/api/streams/{final['sessionId']}/message", timeout=10
        ).json()["message"]
        indexes = [
            e["index"] for e in log["events"] if e["type"] in ("chunk", "reasoning", "toolCall")
        ]
        assert indexes == list(range(final["chunks"]))  # every part once, in order
        assert final["status"] == "completed"
        assert final["text"] == (message["content"] or "")
        assert final["reasoning"] == (message["reasoning"] or "")
        calls = message.get("tool_calls", [])
        assert final["toolCalls"] == [
            {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
            for c in calls
        ]
    reasoning, tools = finals
    assert reasoning["final"]["reasoning"] and not reasoning["final"]["toolCalls"]
    assert tools["final"]["toolCalls"] and not tools["final"]["text"]


class SilentSse:
    """An SSE server that answers 200, says `: connected`, then nothing, counting the
    connections: a response that died without closing (a stuck proxy)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            conn.recv(65536)
            # Counted before the answer: the browser may report `open` (and the test
            # read the count) before this thread runs again after sendall.
            self.connections += 1
            self._held.append(conn)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Access-Control-Allow-Origin: *\r\nCache-Control: no-cache\r\n\r\n: connected\n\n"
            )

    def close(self) -> None:
        self.server.close()
        for conn in self._held:
            conn.close()


def test_a_silent_sse_response_is_taken_as_dead_and_followed_again(page: Any) -> None:
    silent = SilentSse()
    try:
        result = page.evaluate(
            """async (baseUrl) => {
              // sseIdleMs: the 45 s watchdog, shortened for the test.
              const client = new rs.ResumableStreams({
                baseUrl, transport: "sse", sseIdleMs: 500, backoff: { initialMs: 50 },
              });
              const stream = client.resume("S".repeat(21));
              const log = track(stream);
              const second = new Promise((resolve) => {
                let opens = 0;
                stream.on("open", () => { if (++opens === 2) resolve("followed again"); });
              });
              const late = new Promise((r) => setTimeout(() => r("still waiting"), 20000));
              const outcome = await Promise.race([second, late]);
              stream.close();
              return { outcome, events: log.events.map((e) => e.type) };
            }""",
            silent.url,
        )
    finally:
        silent.close()
    assert result["outcome"] == "followed again"
    links = [e for e in result["events"] if e in ("open", "reconnecting", "error")]
    assert links == ["open", "reconnecting", "open"]
    assert silent.connections == 2


def test_the_backoff_grows_with_each_failure_and_resets_when_an_event_arrives(
    browser: Any, api: Api
) -> None:
    connections: list[int] = []

    def flaky(ws: Any) -> None:
        # Connections 1-4 close at once, the 5th after 5 frames, the 6th relays to the end.
        server = ws.connect_to_server()
        connections.append(0)
        number = len(connections)
        if number <= 4:
            ws.close(code=1013, reason="try again later")
            return

        def relay(message: str | bytes) -> None:
            ws.send(message)
            connections[number - 1] += 1
            if number == 5 and connections[4] == 5:
                ws.close(code=1013, reason="try again later")

        server.on_message(relay)

    page = open_page(browser, api.url, ws_route=flaky)
    try:
        log = page.evaluate(
            """async () => {
              const backoff = { initialMs: 100, factor: 2, maxMs: 400 };
              const client = new rs.ResumableStreams({ transport: "ws", backoff });
              const stream = await client.start("backoff", { max_tokens: 20 });
              return settle(stream, track(stream));
            }"""
        )
    finally:
        page.context.close()
    retries = [(e["attempt"], e["delayMs"]) for e in log["events"] if e["type"] == "reconnecting"]
    # 100 ms doubling, capped at 400, each jittered to 50-100 %; back to the first after the
    # 5th connection's events.
    assert [attempt for attempt, _ in retries] == [1, 2, 3, 4, 1]
    for (attempt, delay_ms), full_ms in zip(retries, [100, 200, 400, 400, 100], strict=True):
        assert full_ms / 2 <= delay_ms <= full_ms, (attempt, delay_ms)
    assert log["final"]["status"] == "completed"
    assert chunk_indexes(log) == list(range(20))


REFUSALS = {"forbidden_origin": (4403, 403), "bad_cursor": (4400, 400)}


@pytest.mark.parametrize("transport", ["ws", "sse"])
@pytest.mark.parametrize("code", sorted(REFUSALS))
def test_a_refusal_no_retry_can_change_ends_the_stream_at_once(
    browser: Any, api: Api, transport: str, code: str
) -> None:
    close_code, status = REFUSALS[code]
    attempts: list[str] = []

    def refuse_ws(ws: Any) -> None:
        attempts.append(ws.url)
        ws.close(code=close_code, reason=code)

    page = open_page(browser, api.url, ws_route=refuse_ws)

    def refuse_sse(route: Any) -> None:
        if route.request.method != "GET":
            route.continue_()
            return
        attempts.append(route.request.url)
        body = {"error": {"code": code, "message": f"refused: {code}"}}
        route.fulfill(status=status, json=body)

    page.route(re.compile(r"/api/streams/[A-Za-z0-9_-]{21}(\\?|$)"), refuse_sse)
    try:
        log = page.evaluate(
            """async (transport) => {
              const client = new rs.ResumableStreams({ transport, backoff: { initialMs: 10 } });
              const stream = client.resume("R".repeat(21));
              const log = track(stream);
              await Promise.race([stream.finished, new Promise((r) => setTimeout(r, 10000))]);
              await new Promise((r) => setTimeout(r, 500));  // 50 first backoffs
              stream.close();
              log.final = log.final || stream.state;
              return log;
            }""",
            transport,
        )
    finally:
        page.context.close()
    assert log["final"]["status"] == "failed" and log["final"]["error"]["code"] == code
    assert "reconnecting" not in types(log)
    assert len(attempts) == 1, attempts


def test_retry_after_floors_the_reconnect_delay_and_rides_on_refused_starts(
    browser: Any, api: Api
) -> None:
    follows: list[str] = []
    page = open_page(browser, api.url)

    def busy_once(route: Any) -> None:
        if route.request.method == "GET":
            follows.append(route.request.url)
        if route.request.method == "GET" and len(follows) == 1:
            body = {"error": {"code": "too_many_followers", "message": "full"}}
            route.fulfill(status=429, json=body, headers={"Retry-After": "2"})
        else:
            route.continue_()

    page.route(re.compile(r"/api/streams/[A-Za-z0-9_-]{21}(\\?|$)"), busy_once)

    def refuse_start(route: Any) -> None:
        body = {"error": {"code": "too_many_requests", "message": "slow down"}}
        route.fulfill(status=429, json=body, headers={"Retry-After": "7"})

    try:
        log = page.evaluate(
            """async () => {
              const backoff = { initialMs: 10 };
              const client = new rs.ResumableStreams({ transport: "sse", backoff });
              const stream = await client.start("busy", { max_tokens: 5 });
              return settle(stream, track(stream));
            }"""
        )
        page.route(re.compile(r"/api/streams/generate$"), refuse_start)
        refused = page.evaluate(
            """async () => {
              try {
                await new rs.ResumableStreams().start("refused");
              } catch (e) {
                return { code: e.code, httpStatus: e.httpStatus, retryAfterS: e.retryAfterS };
              }
            }"""
        )
    finally:
        page.context.close()
    # The first delay would be 5-10 ms: Retry-After (2 s) is its floor.
    assert [e["delayMs"] for e in log["events"] if e["type"] == "reconnecting"] == [2000]
    assert log["final"]["status"] == "completed" and chunk_indexes(log) == list(range(5))
    assert len(follows) == 2
    assert refused == {"code": "too_many_requests", "httpStatus": 429, "retryAfterS": 7}
