"""A Python client of the public contract (DESIGN.md 2): create, follow, inspect, cancel.

    from rstreams import Client, Chunk, Done

    client = Client()                       # RSTREAMS_URL, RSTREAMS_API_KEY from the env
    session = client.generate("Explain quantum computing", max_tokens=60)
    for event in client.follow(session.session_id):
        if isinstance(event, Chunk):
            print(event.text, end="", flush=True)

`follow` reads Server-Sent Events and, when the connection drops (an API restart, a
network blip), reconnects by itself with `Last-Event-ID` set to the last event it
yielded, with exponential backoff and jitter: nothing is lost or repeated, until a
terminal event (`Done`, `Error`, `Cancelled`) ends the iteration.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from rstreams import devstack

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "RSTREAMS_URL"
API_KEY_ENV = "RSTREAMS_API_KEY"

# Retryable answers while following: the API is restarting, Redis is back soon, or the
# session has too many followers for a moment (the answer says when to come back).
_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


class RstreamsError(Exception):
    """An HTTP error of the API (`status`, and `code`/`message` of its JSON body), or
    `status` None when the API could not be reached (`code` "unreachable")."""

    def __init__(
        self, status: int | None, code: str, message: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Session:
    """What `generate` answers: the new session (or the earlier one of an idempotent retry)."""

    session_id: str
    status: str
    model: str
    stream_url: str
    ws_url: str
    created_at: str | None
    stream_token: str | None = None
    token_expires_at: str | None = None


@dataclass(frozen=True)
class Chunk:
    """A piece of the answer's text; `index` counts content events (chunks, reasoning, tool
    calls) from 0."""

    id: str
    index: int
    text: str


@dataclass(frozen=True)
class Reasoning:
    """A piece of the model's reasoning; `index` as `Chunk`'s."""

    id: str
    index: int
    text: str


@dataclass(frozen=True)
class ToolCall:
    """A piece of a tool call: `call_index` is the call's position in the message, `call_id`
    and `name` come on its first piece (None on the others), `arguments` is a fragment of
    its JSON arguments; `index` as `Chunk`'s."""

    id: str
    index: int
    call_index: int
    call_id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True)
class Status:
    """A status change: `queued`, `running`, or `resumed` (another worker took over)."""

    id: str
    status: str
    attempt: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Done:
    """The answer is complete (terminal)."""

    id: str
    finish_reason: str | None
    chunks: int
    usage: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Cancelled:
    """The session was cancelled (terminal)."""

    id: str


@dataclass(frozen=True)
class Error:
    """The generation ended with an error (terminal); the partial text stays readable.

    `id` is None for an error that is not a stream entry (the session expired while followed).
    """

    id: str | None
    code: str
    message: str


Event = Chunk | Reasoning | ToolCall | Status | Done | Cancelled | Error
TERMINAL = (Done, Cancelled, Error)
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


def is_terminal(event: Event) -> bool:
    """Whether `event` ends the stream."""
    return isinstance(event, TERMINAL)


def parse_event(data: Mapping[str, Any]) -> Event | None:
    """The typed event of one WebSocket frame or SSE `data:` (None for a type we do not know)."""
    kind, cursor = data.get("type"), data.get("id")
    if kind == "chunk":
        return Chunk(str(cursor), int(data["index"]), str(data["text"]))
    if kind == "reasoning":
        return Reasoning(str(cursor), int(data["index"]), str(data["text"]))
    if kind == "tool_call":
        call = data.get("call") or {}
        return ToolCall(
            str(cursor),
            int(data["index"]),
            int(call.get("index", 0)),
            call.get("id"),
            call.get("name"),
            str(call.get("arguments", "")),
        )
    if kind == "error":
        error = data.get("error") or {}
        return Error(
            None if cursor is None else str(cursor),
            str(error.get("code", "error")),
            str(error.get("message", "")),
        )
    if kind == "done":
        return Done(
            str(cursor), data.get("finishReason"), int(data.get("chunks", 0)), data.get("usage")
        )
    if kind == "cancelled":
        return Cancelled(str(cursor))
    if kind == "status":
        extra = {k: v for k, v in data.items() if k not in ("type", "id", "status", "attempt")}
        attempt = data.get("attempt")
        return Status(
            str(cursor), str(data.get("status")), None if attempt is None else int(attempt), extra
        )
    return None


def iter_sse(chunks: Iterator[bytes]) -> Iterator[dict[str, str]]:
    """Server-Sent Events (`id`, `event`, `data` fields) out of a byte stream.

    Splits lines itself: `requests`' `iter_lines` can hold the last line back until more
    bytes arrive (psf/requests#3577), which would delay the event before a quiet stretch.
    """
    buffer = b""
    fields: dict[str, str] = {}
    for piece in chunks:
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8")
            if not line:
                if "data" in fields:
                    yield fields
                fields = {}
            elif line.startswith(":"):
                continue  # a comment: ": ping", ": connected"
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                fields[name] = (
                    f"{fields[name]}\n{value}" if name == "data" and "data" in fields else value
                )


def _error_of(response: requests.Response) -> RstreamsError:
    """The contract's `{"error": {"code", "message"}}` of a failed answer."""
    code, message = f"http_{response.status_code}", response.reason or "request failed"
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        pass
    retry_after: float | None = None
    raw_retry_after = response.headers.get("Retry-After", "").strip()
    # isdigit() alone also takes "²", which float() refuses.
    if raw_retry_after.isascii() and raw_retry_after.isdigit():
        retry_after = float(raw_retry_after)
    return RstreamsError(response.status_code, code, message, retry_after)


class Client:
    """A client of one API: `base_url` and `api_key` default to RSTREAMS_URL and RSTREAMS_API_KEY;
    without either, the URL is that of the `rstreams dev` stack running now, else DEFAULT_URL.

    `timeout` bounds every plain request (seconds); `read_timeout_s` is the longest silence
    a follower accepts before it reconnects (the API sends `: ping` every SSE_PING_S, 15 s
    by default); `reconnect_for_s` is how long a follower keeps retrying a lost connection
    before `follow` raises.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        *,
        read_timeout_s: float = 60.0,
        reconnect_for_s: float = 300.0,
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 5.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        found = base_url or env.get(URL_ENV) or devstack.running_url(env) or DEFAULT_URL
        self.base_url = found.rstrip("/")
        self.api_key = api_key if api_key is not None else (env.get(API_KEY_ENV) or None)
        self.timeout = timeout
        self.read_timeout_s = read_timeout_s
        self.reconnect_for_s = reconnect_for_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.http = requests.Session()
        if self.api_key:
            self.http.headers["Authorization"] = f"Bearer {self.api_key}"

    def close(self) -> None:
        """Close the pooled connections."""
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.http.request(
                method, self.base_url + path, timeout=kwargs.pop("timeout", self.timeout), **kwargs
            )
        except requests.RequestException as e:
            raise RstreamsError(
                None, "unreachable", f"cannot reach the API at {self.base_url} ({type(e).__name__})"
            ) from e
        if response.status_code >= 400:
            error = _error_of(response)
            response.close()
            raise error
        return response

    def generate(
        self,
        prompt: str | None = None,
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        messages: list[dict[str, Any]] | None = None,
        temperature: float | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Session:
        """Start a generation of `prompt` (or of chat `messages`) and return its session.

        `options` are the request's other fields, sent as they are: `tools`, `tool_choice`,
        `response_format`, `top_p`, `stop`, `seed`, `reasoning`.
        """
        body: dict[str, Any] = dict(options)
        if prompt is not None:
            body["prompt"] = prompt
        if messages is not None:
            body["messages"] = messages
        if model is not None:
            body["model"] = model
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        data = self._request("POST", "/api/streams/generate", json=body, headers=headers).json()
        return Session(
            session_id=data["sessionId"],
            status=data["status"],
            model=data["model"],
            stream_url=data["streamUrl"],
            ws_url=data["wsUrl"],
            created_at=data.get("createdAt"),
            stream_token=data.get("streamToken"),
            token_expires_at=data.get("tokenExpiresAt"),
        )

    def status(self, session_id: str) -> dict[str, Any]:
        """The stream info: `sessionId`, `status`, `model`, `chunks`, `createdAt`, `updatedAt`,
        and `finishReason`, `usage`, `error` once known."""
        response = self._request("GET", "/api/streams/generate", params={"sessionId": session_id})
        info: dict[str, Any] = response.json()
        return info

    def message(self, session_id: str) -> dict[str, Any]:
        """The assistant message generated so far, in the shape a conversation's `messages`
        take it: `{"sessionId", "status", "message": {"role", "content", "reasoning",
        "tool_calls"?}, "finishReason"?, "usage"?}`."""
        answer: dict[str, Any] = self._request("GET", f"/api/streams/{session_id}/message").json()
        return answer

    def text(self, session_id: str) -> str:
        """Everything generated so far as one string."""
        return str(self._request("GET", f"/api/streams/{session_id}/text").json()["text"])

    def cancel(self, session_id: str) -> str:
        """Stop the generation; returns the session's status (`cancelled`, or how it had ended)."""
        return str(self._request("DELETE", f"/api/streams/{session_id}").json()["status"])

    def _backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Full jitter on a capped exponential; at least what a Retry-After asked for."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        return max(random.uniform(0, ceiling), retry_after_s or 0.0)

    def follow(
        self,
        session_id: str,
        after: str | None = None,
        *,
        on_reconnect: Callable[[int, RstreamsError], None] | None = None,
        on_frame: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> Iterator[Event]:
        """The session's events after the cursor `after` (from the start if None), live, until
        a terminal event, which is the last one yielded; nothing if `after` is the terminal
        event's cursor already.

        A lost connection is retried from the last event yielded (`Last-Event-ID`), with
        backoff, for up to `reconnect_for_s`; `on_reconnect(attempt, why)` is called before
        each retry. Raises `RstreamsError` for an answer no retry can change (`not_found`,
        `unauthorized`, `bad_cursor`, ...), when the API cannot be reached at the first
        attempt, or once `reconnect_for_s` has passed without a connection.
        `on_frame(frame)` sees each event's JSON as the server sent it, types this client
        does not know included.
        """
        cursor = after
        attempt = 0
        has_connected = False
        failing_since: float | None = None
        empty_ends = 0
        while True:
            is_empty = True
            try:
                response = self._open_follow(session_id, cursor)
                if response.status_code == 204:  # ended, and nothing after the cursor
                    response.close()
                    return
                for event in self._events_of(response, on_frame):
                    has_connected, attempt, failing_since = True, 0, None
                    is_empty, empty_ends = False, 0
                    if event.id is not None:
                        cursor = event.id
                    yield event
                    if is_terminal(event):
                        return
                has_connected = True
                why = RstreamsError(None, "disconnected", "the stream ended before its last event")
                # The API ends a follower without an event both when the cursor is already
                # past the terminal event and when it shuts down: only a session that has
                # ended tells them apart, and only twice in a row, since an API that shuts
                # down may not have sent what came after the cursor.
                if is_empty and self.status(session_id)["status"] in TERMINAL_STATUSES:
                    empty_ends += 1
                    if empty_ends >= 2:
                        return
            except RstreamsError as e:
                is_retryable = e.status is None or e.status in _RETRYABLE_STATUS
                if not is_retryable or not has_connected:
                    raise
                why = e
            now = time.monotonic()
            failing_since = failing_since if failing_since is not None else now
            if now - failing_since > self.reconnect_for_s:
                raise RstreamsError(
                    why.status,
                    why.code,
                    f"gave up reconnecting after {self.reconnect_for_s:.0f} s: {why.message}",
                    why.retry_after_s,
                )
            if on_reconnect is not None:
                on_reconnect(attempt + 1, why)
            log.info("reconnecting to %s after %s (attempt %d)", session_id, why, attempt + 1)
            time.sleep(self._backoff_s(attempt, why.retry_after_s))
            attempt += 1

    def _open_follow(self, session_id: str, after: str | None) -> requests.Response:
        """One SSE connection (a 204 when the session ended before `after`); raises
        `RstreamsError` when it cannot open."""
        headers = {"Accept": "text/event-stream"}
        if after is not None:
            headers["Last-Event-ID"] = after
        return self._request(
            "GET",
            f"/api/streams/{session_id}",
            headers=headers,
            stream=True,
            timeout=(self.timeout, self.read_timeout_s),
        )

    def _events_of(
        self,
        response: requests.Response,
        on_frame: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> Iterator[Event]:
        """One SSE connection's events; raises `RstreamsError` when it breaks."""
        with response:
            try:
                for fields in iter_sse(response.iter_content(chunk_size=None)):
                    if fields.get("event") == "stream_error":
                        continue  # the `error` event before it again, for EventSource users
                    frame = json.loads(fields["data"])
                    if on_frame is not None:
                        on_frame(frame)
                    event = parse_event(frame)
                    if event is not None:
                        yield event
            except (requests.RequestException, OSError) as e:
                raise RstreamsError(
                    None, "disconnected", f"the connection broke ({type(e).__name__})"
                ) from e
