"""A local server that speaks the OpenAI streaming chat-completions wire format.

`FakeOpenAI` answers `POST /v1/chat/completions` according to the request's model name,
compared after its last `/` (so `openai/fake-ok` is `fake-ok`):

- `fake-ok`: a `: OPENROUTER PROCESSING` comment, a role-only delta, one word of
  `FAKE_WORDS` per content delta (`max_tokens` of them, default 8), a chunk with
  `finish_reason: "stop"`, a usage chunk with `choices: []`, then `data: [DONE]`.
- `fake-crlf`: the same with every line ended by CRLF.
- `fake-split`: the same written 3 bytes at a time, so lines and UTF-8 characters arrive
  cut in two.
- `fake-chunked`: the same with `Transfer-Encoding: chunked` instead of a body ended by
  closing the connection (what most real providers send).
- `fake-slow`: the same with 50 ms between deltas; a client that goes away is recorded in
  `disconnects`.
- `fake-error-mid`: three deltas, then `data: {"error": {...}}`, then the body ends.
- `fake-truncated`: three deltas, then the body ends (no finish reason, no `[DONE]`).
- `fake-401`: 401 `{"error": {"message": "Invalid API key", "code": 401}}`.
- `fake-429`: 429 with `Retry-After: 1`, always. `fake-429-once`: 429 with
  `Retry-After: 0` the first time this exact model name is asked for, then as `fake-ok`.
- `fake-500`: 500, always. `fake-500-once`: 500 the first time, then as `fake-ok`.
- `fake-silent`: the 200 headers and the comment, then nothing for 30 s.
- any other model: 404 with an error object.

A trailing assistant message (a prefill) makes the streaming scenarios continue after its
words, as a model continuing an answer would.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAKE_WORDS: list[str] = (
    "Every chunk lands in Redis before anyone reads it, so a reader that drops can "
    "come back with its cursor and carry on exactly where it stopped — héllo ✓ naïve "
    "café, and the stream goes on until the model says stop"
).split()

DEFAULT_DELTAS = 8
SLOW_DELAY_S = 0.05
SILENT_S = 30.0
_SHORT_DELTAS = 3  # what fake-error-mid and fake-truncated send before failing


def _word(i: int) -> str:
    word = FAKE_WORDS[i % len(FAKE_WORDS)]
    return word if i == 0 else " " + word


def expected_text(n: int) -> str:
    """The exact text `fake-ok` streams in `n` content deltas."""
    return "".join(_word(i) for i in range(n))


def scenario_of(model: str) -> str:
    """The scenario a model name selects: the part after its last `/`."""
    return model.rsplit("/", 1)[-1]


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


class _Writer:
    """Writes SSE text to one response, framed and flushed as the scenario asks."""

    def __init__(self, handler: BaseHTTPRequestHandler, *, eol: str, chunked: bool, step: int):
        self.handler = handler
        self.eol = eol
        self.chunked = chunked
        self.step = step

    def raw(self, data: bytes) -> None:
        out = self.handler.wfile
        if self.chunked:
            out.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            out.write(data)
        out.flush()

    def text(self, text: str) -> None:
        data = text.replace("\n", self.eol).encode("utf-8")
        if self.step <= 0:
            self.raw(data)
            return
        for i in range(0, len(data), self.step):
            self.raw(data[i : i + self.step])
            time.sleep(0.001)  # keep the pieces apart on the wire

    def event(self, obj: Any) -> None:
        self.text(f"data: {json.dumps(obj, ensure_ascii=False)}\n\n")

    def end(self) -> None:
        if self.chunked:
            self.handler.wfile.write(b"0\r\n\r\n")
            self.handler.wfile.flush()


class FakeOpenAI:
    """The fake provider on 127.0.0.1 and a free port, served from a daemon thread."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.disconnects: list[str] = []  # model names whose client went away mid-answer
        self.delay_s = 0.0  # pause before each content delta in every streaming scenario
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                """Say nothing per request."""

            def do_POST(self) -> None:
                """Record the request, then answer it as its model's scenario says."""
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                fake._record(self.path, dict(self.headers.items()), body)
                model = str(body.get("model", "")) if isinstance(body, dict) else ""
                try:
                    fake._answer(self, body if isinstance(body, dict) else {})
                except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                    with fake._lock:
                        fake.disconnects.append(model)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="fake-openai", daemon=True
        )
        self._started = False

    def start(self) -> FakeOpenAI:
        """Start serving (the context manager does this)."""
        if not self._started:
            self._thread.start()
            self._started = True
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket; answers in flight are abandoned."""
        if self._started:
            self.server.shutdown()
            self._started = False
        self.server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests_for(self, model: str) -> list[dict[str, Any]]:
        """The recorded requests whose body asked for exactly `model`."""
        with self._lock:
            return [
                r for r in self.requests if isinstance(r["json"], dict) and r["json"].get("model") == model
            ]

    def _record(self, path: str, headers: dict[str, str], body: Any) -> None:
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "json": body})

    def _answer(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        model = str(body.get("model", ""))
        scenario = scenario_of(model)
        with self._lock:
            self._seen[model] += 1
            first = self._seen[model] == 1
        if h.path.rstrip("/") != "/v1/chat/completions":
            return self._status(h, 404, f"No route {h.path}")
        if scenario == "fake-401":
            return self._status(h, 401, "Invalid API key")
        if scenario == "fake-429":
            return self._status(h, 429, "Rate limit exceeded", {"Retry-After": "1"})
        if scenario == "fake-429-once" and first:
            return self._status(h, 429, "Rate limit exceeded", {"Retry-After": "0"})
        if scenario == "fake-500" or (scenario == "fake-500-once" and first):
            return self._status(h, 500, "Internal server error")
        if scenario not in _STREAMING:
            return self._status(h, 404, f"Unknown model {model}")

        chunked = scenario == "fake-chunked"
        if chunked:
            h.protocol_version = "HTTP/1.1"  # chunked framing needs it on the status line
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        if chunked:
            h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        w = _Writer(
            h,
            eol="\r\n" if scenario == "fake-crlf" else "\n",
            chunked=chunked,
            step=3 if scenario == "fake-split" else 0,
        )
        w.text(": OPENROUTER PROCESSING\n\n")
        if scenario == "fake-silent":
            time.sleep(SILENT_S)
            return None
        self._stream(w, model, scenario, body)
        w.end()
        return None

    def _stream(self, w: _Writer, model: str, scenario: str, body: dict[str, Any]) -> None:
        n = body.get("max_tokens") or DEFAULT_DELTAS
        if scenario in ("fake-error-mid", "fake-truncated"):
            n = _SHORT_DELTAS
        delay = SLOW_DELAY_S if scenario == "fake-slow" else self.delay_s
        messages = body.get("messages") or [{}]
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        start = len(str(last.get("content", "")).split()) if last.get("role") == "assistant" else 0
        w.event(_chunk(model, {"role": "assistant"}))
        for i in range(start, n):
            if delay:
                time.sleep(delay)
            w.event(_chunk(model, {"content": _word(i)}))
        if scenario == "fake-error-mid":
            w.event({"error": {"code": 502, "message": "Upstream model overloaded"}})
            return
        if scenario == "fake-truncated":
            return
        w.event(_chunk(model, {}, "stop"))
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
        w.event(
            {
                "id": "gen-1",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": usage,
            }
        )
        w.text("data: [DONE]\n\n")

    @staticmethod
    def _status(
        h: BaseHTTPRequestHandler, status: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        payload = json.dumps({"error": {"message": message, "code": status}}).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(payload)
        h.wfile.flush()


_STREAMING = frozenset(
    {
        "fake-ok",
        "fake-crlf",
        "fake-split",
        "fake-chunked",
        "fake-slow",
        "fake-error-mid",
        "fake-truncated",
        "fake-429-once",
        "fake-500-once",
        "fake-silent",
    }
)

SCENARIOS: frozenset[str] = _STREAMING | {"fake-401", "fake-429", "fake-500"}

__all__: list[str] = ["FAKE_WORDS", "SCENARIOS", "FakeOpenAI", "expected_text", "scenario_of"]
