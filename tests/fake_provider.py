"""A local server that speaks the OpenAI streaming chat-completions wire format.

The behaviour follows the request's model name (after any `vendor/` prefix):

- `fake-ok`: a comment line, a role-only delta, one word per delta (`max_tokens` of them,
  default 8), a `finish_reason` chunk, a usage chunk with `choices: []`, `[DONE]`.
- `fake-crlf`: the same with CRLF line ends; `fake-split`: the same written a few bytes at
  a time, so lines and UTF-8 characters arrive cut in two.
- `fake-slow`: the same with 50 ms between deltas; `fake-http10` too, its body ended by
  closing the connection instead of chunked encoding.
- `fake-length`: as `fake-ok`, finishing with `length` (the answer hit `max_tokens`).
- `fake-error-mid`: three deltas, then an `error` object, then the body ends.
- `fake-truncated`: three deltas, then the body ends (no finish reason, no `[DONE]`).
- `fake-401`, `fake-429` (`Retry-After: 1`), `fake-500`: that status before any event.
- `fake-429-once`, `fake-500-once`: that status the first time, then as `fake-ok`.
- `fake-silent`: the headers and a comment, then nothing for 30 s.
- `fake-tools-slow`: one call of `get_weather` whose arguments come in 60 pieces, 50 ms
  apart, then `tool_calls`.
- `QUIRKS`' scenarios: reasoning and tool calls as OpenRouter, OpenAI, vLLM and others
  stream them, written as those servers write them; a `-split` suffix writes any scenario
  a few bytes at a time.

A trailing assistant message (a prefill) makes every scenario continue after its words.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAKE_WORDS = (
    "Streams survive restarts because every chunk lands in Redis before anyone reads it, "
    "and a cursor says exactly where a reader stopped — café ✓ naïve"
).split()


def expected_text(n: int) -> str:
    """The text `fake-ok` streams in `n` deltas."""
    return "".join(_word(i) for i in range(n))


def _word(i: int) -> str:
    word = FAKE_WORDS[i % len(FAKE_WORDS)]
    return word if i == 0 else " " + word


def _raw(delta: str, finish: str = "null", extra: str = "") -> str:
    """A chunk's JSON text, written by hand so that a string can be cut anywhere."""
    return (
        '{"id":"gen-2","object":"chat.completion.chunk","created":1,"model":"m",'
        f'"choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]{extra}}}'
    )


_OPENAI_USAGE = (
    '{"id":"gen-2","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
    '"usage":{"prompt_tokens":9,"completion_tokens":30,"total_tokens":39,'
    '"completion_tokens_details":{"reasoning_tokens":0}}}'
)

# The `data:` of each event, in order, then `[DONE]`; tests/test_provider_client.py
# says what each must read as.
QUIRKS: dict[str, list[str]] = {
    # OpenRouter: `reasoning` and `reasoning_details` carry the same text; Anthropic's
    # signature comes as a detail without text; the usage chunk has an empty delta.
    "fake-openrouter-reasoning": [
        _raw(
            '{"role":"assistant","content":"","reasoning":"Two","reasoning_details":'
            '[{"type":"reasoning.text","text":"Two","format":"anthropic-claude-v1","index":0}]}'
        ),
        _raw(
            '{"role":"assistant","content":"","reasoning":" and two.","reasoning_details":'
            '[{"type":"reasoning.text","text":" and two.","index":0}]}'
        ),
        _raw(
            '{"role":"assistant","content":"","reasoning":null,"reasoning_details":'
            '[{"type":"reasoning.text","signature":"EqQBCkYIBRgCKkD","index":0}]}'
        ),
        _raw('{"role":"assistant","content":"It is"}'),
        _raw('{"role":"assistant","content":" 4."}'),
        _raw('{"role":"assistant","content":""}', '"stop"', ',"native_finish_reason":"end_turn"'),
        _raw(
            '{"role":"assistant","content":""}',
            "null",
            ',"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30,'
            '"completion_tokens_details":{"reasoning_tokens":12},"cost":0.0001}',
        ),
    ],
    # OpenAI's o-series through OpenRouter: summaries and encrypted details only.
    "fake-details-only": [
        _raw(
            '{"role":"assistant","content":null,"reasoning_details":'
            '[{"type":"reasoning.summary","summary":"Adding.","index":0}]}'
        ),
        _raw(
            '{"content":null,"reasoning_details":'
            '[{"type":"reasoning.encrypted","data":"gAAAAB","index":1}]}'
        ),
        _raw('{"content":"4"}', '"stop"'),
        _OPENAI_USAGE,
    ],
    # vLLM, DeepSeek, llama.cpp's server: `reasoning_content`, the other field null.
    "fake-vllm-reasoning": [
        _raw('{"role":"assistant","content":"","reasoning_content":null}'),
        _raw('{"content":null,"reasoning_content":"Hmm, "}'),
        _raw('{"content":null,"reasoning_content":"caf\\u00e9 \\ud83d"}'),
        _raw('{"content":null,"reasoning_content":"\\ude00."}'),
        _raw('{"content":"Done","reasoning_content":null}', "null", ',"stop_reason":null'),
        _raw('{"content":"","reasoning_content":null}', '"stop"', ',"stop_reason":null'),
        _OPENAI_USAGE,
    ],
    # OpenAI: two calls, interleaved; arguments cut inside a surrogate pair and a word.
    "fake-tools": [
        _raw('{"role":"assistant","content":"Checking \\ud83d"}'),
        _raw('{"content":"\\ude00"}'),
        _raw(
            '{"content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function",'
            '"function":{"name":"get_weather","arguments":""}}],"refusal":null}'
        ),
        _raw(
            '{"tool_calls":[{"index":1,"id":"call_b","type":"function",'
            '"function":{"name":"get_time","arguments":""}}]}'
        ),
        _raw('{"tool_calls":[{"index":0,"function":{"arguments":"{\\"ci"}}]}'),
        _raw('{"tool_calls":[{"index":1,"function":{"arguments":"{\\"zone\\": \\"C"}}]}'),
        _raw('{"tool_calls":[{"index":0,"function":{"arguments":"ty\\": \\"Paris \\ud83d"}}]}'),
        _raw('{"tool_calls":[{"index":0,"function":{"arguments":"\\udcf7 na\\u00efve\\"}"}}]}'),
        _raw('{"tool_calls":[{"index":1,"function":{"arguments":"ET\\"}"}}]}'),
        _raw("{}", '"tool_calls"'),
        _OPENAI_USAGE,
    ],
    # vLLM (some versions, and some OpenRouter upstreams): the id on every piece, text
    # before the call, the finish reason on the last piece.
    "fake-tools-vllm": [
        _raw('{"role":"assistant","content":"Let me look."}'),
        _raw(
            '{"content":"","tool_calls":[{"id":"chatcmpl-tool-1","type":"function","index":0,'
            '"function":{"name":"search","arguments":"{\\"q\\": "}}]}'
        ),
        _raw(
            '{"content":"","tool_calls":[{"id":"chatcmpl-tool-1","index":0,'
            '"function":{"arguments":"\\"redis\\"}"}}]}',
            '"tool_calls"',
        ),
        _OPENAI_USAGE,
    ],
    # Gemini's and Ollama's OpenAI layers: each call whole, no `index`, arguments once as
    # an object, and `stop` as the finish reason.
    "fake-tools-whole": [
        _raw(
            '{"role":"assistant","tool_calls":[{"id":"c1","type":"function",'
            '"function":{"name":"get_weather","arguments":"{\\"city\\":\\"Oslo\\"}"}}]}'
        ),
        _raw(
            '{"role":"assistant","tool_calls":[{"id":"c2","type":"function",'
            '"function":{"name":"get_time","arguments":{"zone":"CET"}}}]}'
        ),
        _raw("{}", '"stop"'),
    ],
}


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _prompt(body: Any) -> str:
    """The content of a request's first message."""
    messages = (body or {}).get("messages") or [{}]
    return str(messages[0].get("content", ""))


class FakeProvider:
    """The server, on 127.0.0.1 and a free port, in a daemon thread."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.disconnects: list[str] = []  # models whose client went away mid-stream
        self.disconnected_prompts: list[str] = []  # and the first message of each
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"null")
                fake._record(self.path, dict(self.headers), body)
                try:
                    fake._answer(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    with fake._lock:
                        fake.disconnects.append(str(body.get("model")))
                        fake.disconnected_prompts.append(_prompt(body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()

    def _record(self, path: str, headers: dict[str, str], body: Any) -> None:
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "json": body})

    def requests_for(self, model: str, prompt: str | None = None) -> list[dict[str, Any]]:
        """The requests that asked for `model` (with `prompt` as the first message, if given)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (r["json"] or {}).get("model") == model
                and (prompt is None or _prompt(r["json"]) == prompt)
            ]

    def _answer(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        model = str(body.get("model", ""))
        scenario = model.rsplit("/", 1)[-1]
        with self._lock:
            self._seen[model] += 1
            first = self._seen[model] == 1
        if h.path != "/v1/chat/completions":
            return self._status(h, 404, "Not found", {})
        if scenario == "fake-401":
            return self._status(h, 401, "Invalid API key", {})
        if scenario == "fake-429" or (scenario == "fake-429-once" and first):
            return self._status(
                h, 429, "Rate limited", {"Retry-After": "1" if scenario == "fake-429" else "0"}
            )
        if scenario == "fake-500" or (scenario == "fake-500-once" and first):
            return self._status(h, 500, "Internal error", {})

        # Providers send chunked bodies; `fake-http10` ends its body by closing instead.
        chunked = scenario != "fake-http10"
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header(
            "Transfer-Encoding" if chunked else "Connection", "chunked" if chunked else "close"
        )
        h.end_headers()
        h.close_connection = True
        eol = "\r\n" if scenario == "fake-crlf" else "\n"

        def send(data: bytes) -> None:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            h.wfile.flush()

        def write(text: str) -> None:
            data = text.replace("\n", eol).encode()
            step = 3 if scenario.endswith("-split") else len(data)
            for i in range(0, len(data), step):
                send(data[i : i + step])

        def event(obj: Any) -> None:
            write(f"data: {json.dumps(obj, ensure_ascii=False)}\n\n")

        write(": OPENROUTER PROCESSING\n\n")
        if scenario == "fake-silent":
            time.sleep(30)
            return None
        try:
            self._events(h, model, scenario, body, event, write)
        finally:
            if chunked:
                h.wfile.write(b"0\r\n\r\n")

    def _events(self, h: Any, model: str, scenario: str, body: Any, event: Any, write: Any) -> None:
        if scenario == "fake-tools-slow":
            first = {"index": 0, "id": "call_slow", "type": "function"}
            event(_chunk(model, {"tool_calls": [{**first, "function": {"name": "get_weather"}}]}))
            for i in range(60):
                time.sleep(0.05)
                piece = '{"day": ' if i == 0 else ("0}" if i == 59 else "0")
                event(
                    _chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                )
            event(_chunk(model, {}, "tool_calls"))
            write("data: [DONE]\n\n")
            return None
        quirk = QUIRKS.get(scenario.removesuffix("-split"))
        if quirk is not None:
            for data in quirk:
                write(f"data: {data}\n\n")
            write("data: [DONE]\n\n")
            return None
        n = body.get("max_tokens") or 8
        if scenario in ("fake-error-mid", "fake-truncated"):
            n = 3
        event(_chunk(model, {"role": "assistant"}))
        # A trailing assistant message is a prefill: continue after its words.
        last = (body.get("messages") or [{}])[-1]
        start = len(last.get("content", "").split()) if last.get("role") == "assistant" else 0
        for i in range(start, n):
            if scenario in ("fake-slow", "fake-http10"):
                time.sleep(0.05)
            event(_chunk(model, {"content": _word(i)}))
        if scenario == "fake-error-mid":
            event({"error": {"code": 502, "message": "Upstream model overloaded"}})
            return None
        if scenario == "fake-truncated":
            return None
        event(_chunk(model, {}, "length" if scenario == "fake-length" else "stop"))
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
        event({"id": "gen-1", "object": "chat.completion.chunk", "choices": [], "usage": usage})
        write("data: [DONE]\n\n")
        return None

    @staticmethod
    def _status(
        h: BaseHTTPRequestHandler, status: int, message: str, headers: dict[str, str]
    ) -> None:
        payload = json.dumps({"error": {"message": message, "code": status}}).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(payload)
