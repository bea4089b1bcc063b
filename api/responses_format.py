"""A session as OpenAI's Response object and its event stream (DESIGN.md 2.7).

`Projection` reads a session's stored events in order and turns each into the Responses
API's events (`response.created`, `response.output_item.added`,
`response.output_text.delta`, ...), keeping the Response object they build up. What it
makes of an event depends only on the events before it, and it numbers what it makes
from 0: a sequence number is therefore a pure function of the stored stream, the same on
every API instance and in every replay, and `starting_after=n` is "replay from the
start, skip up to n". The same projection, run over all stored events, is the Response
object `GET /v1/responses/{id}` answers, so its `output_text` is exactly what the deltas
of the stream add up to.

Output items follow the stored parts: a run of `reasoning` events is a `reasoning` item
(its text as `content` of type `reasoning_text`; `summary` stays empty), a run of
`chunk`s a `message` with one `output_text` part, each tool call a `function_call`. Item
ids derive from the session id and the item's position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared import store
from shared.store import EventType, SessionMeta, Status
from shared.store.events import dumps

RESPONSE_PREFIX = "resp_"
# Our finish reasons that end a response `incomplete`, with OpenAI's reason.
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_id(session_id: str) -> str:
    """The Response id of a session."""
    return RESPONSE_PREFIX + session_id


def session_id_of(resp_id: str) -> str | None:
    """The session id in a Response id; None when it is not one."""
    if not resp_id.startswith(RESPONSE_PREFIX):
        return None
    return resp_id[len(RESPONSE_PREFIX) :]


@dataclass
class _Item:
    """An output item being built: its kind, id, position and what it has so far."""

    kind: str  # "reasoning", "message" or "function_call"
    id: str
    output_index: int
    pieces: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    status: str = "in_progress"

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def part(self) -> dict[str, Any]:
        """The item's content part as it stands."""
        if self.kind == "reasoning":
            return {"type": "reasoning_text", "text": self.text}
        return {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}

    def json(self) -> dict[str, Any]:
        """The output item as it stands."""
        if self.kind == "function_call":
            return {
                "type": "function_call",
                "id": self.id,
                "call_id": self.call_id,
                "name": self.name,
                "arguments": self.text,
                "status": self.status,
            }
        content = [self.part()] if self.status != "in_progress" or self.pieces else []
        if self.kind == "reasoning":
            return {
                "type": "reasoning",
                "id": self.id,
                "summary": [],
                "content": content,
                "status": self.status,
            }
        return {
            "type": "message",
            "id": self.id,
            "role": "assistant",
            "status": self.status,
            "content": content,
        }


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat-completions usage (what providers report) in the Responses API's terms."""
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(cached), "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(reasoning)},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


class Projection:
    """The Responses API's view of one session, built event by event.

    `feed(event)` returns the Responses events the stored event makes after
    `starting_after`, each as `(sequence_number, type, JSON bytes)`, encoded at once (a
    later event changes the objects an earlier one showed); `response()` is the Response
    object so far. Events up to `starting_after` are numbered but not built.
    """

    def __init__(self, meta: SessionMeta, starting_after: int = -1) -> None:
        self.session_id = meta.session_id
        # Events numbered up to this are counted, not encoded (nobody will send them).
        self.starting_after = starting_after
        echo = meta.response or {}
        self._response: dict[str, Any] = {
            "id": response_id(meta.session_id),
            "object": "response",
            "created_at": (meta.created_ms or 0) // 1000,
            "status": Status.QUEUED.value,
            "background": bool(echo.get("background", False)),
            "error": None,
            "incomplete_details": None,
            "instructions": echo.get("instructions"),
            "max_output_tokens": echo.get("max_output_tokens"),
            "metadata": echo.get("metadata") or {},
            "model": meta.model or "",
            "output": [],
            "parallel_tool_calls": True,
            "reasoning": echo.get("reasoning"),
            "store": True,
            "temperature": echo.get("temperature"),
            "text": echo.get("text") or {"format": {"type": "text"}},
            "tool_choice": echo.get("tool_choice") or "auto",
            "tools": echo.get("tools") or [],
            "top_p": echo.get("top_p"),
            "truncation": "disabled",
            "usage": None,
        }
        self._items: list[_Item] = []
        self._open: list[_Item] = []  # items not done yet, in output order
        self._calls: dict[int, _Item] = {}  # open function_call items by the call's index
        self._seq = 0
        self._out: list[tuple[int, str, bytes]] = []
        self.is_terminal = False

    def response(self) -> dict[str, Any]:
        """The Response object as it stands."""
        return {**self._response, "output": [item.json() for item in self._items]}

    def output_text(self) -> str:
        """The text of the message items, as the SDKs' `output_text` joins it."""
        return "".join(i.text for i in self._items if i.kind == "message")

    def feed(self, event: store.Event) -> list[tuple[int, str, bytes]]:
        """The Responses events one stored event makes, numbered on from the last."""
        self._out = []
        kind = event["type"]
        if kind == EventType.STATUS:
            self._status(event.get("status", ""))
        elif kind == EventType.CHUNK:
            self._text(event["text"])
        elif kind == EventType.REASONING:
            self._reasoning(event["text"])
        elif kind == EventType.TOOL_CALL:
            self._tool_call(event["call"])
        elif kind == EventType.DONE:
            self._done(event.get("finishReason", "stop"), event.get("usage"))
        elif kind == EventType.ERROR:
            error = event.get("error") or {}
            self._failed(str(error.get("code", "error")), str(error.get("message", "")))
        elif kind == EventType.CANCELLED:
            self._close_all("incomplete")
            self._response["status"] = Status.CANCELLED.value
            self.is_terminal = True  # OpenAI's stream has no event for it: it ends
        return self._out

    def _emit(self, etype: str, **data: Any) -> None:
        if self._seq > self.starting_after:
            body = {"type": etype, "sequence_number": self._seq, **data}
            self._out.append((self._seq, etype, dumps(body).encode()))
        self._seq += 1

    def _emit_response(self, etype: str) -> None:
        if self._seq > self.starting_after:
            self._emit(etype, response=self.response())
        else:
            self._seq += 1

    def _status(self, status: str) -> None:
        if status == Status.QUEUED and self._seq == 0:
            self._emit_response("response.created")
            self._emit_response("response.queued")
        elif status in ("running", "resumed") and self._response["status"] == "queued":
            self._response["status"] = "in_progress"
            self._emit_response("response.in_progress")

    def _begin(self, kind: str, prefix: str) -> _Item:
        index = len(self._items)
        item = _Item(kind, f"{prefix}_{self.session_id}_{index}", index)
        self._items.append(item)
        self._open.append(item)
        self._emit("response.output_item.added", output_index=index, item=item.json())
        if kind != "function_call":
            self._emit(
                "response.content_part.added",
                item_id=item.id,
                output_index=index,
                content_index=0,
                part=item.part(),
            )
        return item

    def _current(self, kind: str, prefix: str) -> _Item:
        """The open item of `kind` the next piece goes to, after closing any other."""
        if len(self._open) == 1 and self._open[0].kind == kind:
            return self._open[0]
        self._close_all("completed")
        return self._begin(kind, prefix)

    def _text(self, text: str) -> None:
        item = self._current("message", "msg")
        item.pieces.append(text)
        self._emit(
            "response.output_text.delta",
            item_id=item.id,
            output_index=item.output_index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _reasoning(self, text: str) -> None:
        item = self._current("reasoning", "rs")
        item.pieces.append(text)
        self._emit(
            "response.reasoning_text.delta",
            item_id=item.id,
            output_index=item.output_index,
            content_index=0,
            delta=text,
        )

    def _tool_call(self, call: dict[str, Any]) -> None:
        item = self._calls.get(call.get("index", 0))
        if item is None:
            if any(i.kind != "function_call" for i in self._open):
                self._close_all("completed")
            index = len(self._items)
            item = _Item("function_call", f"fc_{self.session_id}_{index}", index)
            item.call_id, item.name = call.get("id") or "", call.get("name") or ""
            self._calls[call.get("index", 0)] = item
            self._items.append(item)
            self._open.append(item)
            self._emit("response.output_item.added", output_index=index, item=item.json())
        arguments = call.get("arguments") or ""
        if arguments:
            item.pieces.append(arguments)
            self._emit(
                "response.function_call_arguments.delta",
                item_id=item.id,
                output_index=item.output_index,
                delta=arguments,
            )

    def _close_all(self, status: str) -> None:
        for item in self._open:
            item.status = status
            at = {"item_id": item.id, "output_index": item.output_index}
            if item.kind == "function_call":
                self._emit(
                    "response.function_call_arguments.done",
                    **at,
                    name=item.name,
                    arguments=item.text,
                )
            else:
                if item.kind == "message":
                    self._emit(
                        "response.output_text.done",
                        **at,
                        content_index=0,
                        text=item.text,
                        logprobs=[],
                    )
                else:
                    self._emit(
                        "response.reasoning_text.done", **at, content_index=0, text=item.text
                    )
                self._emit("response.content_part.done", **at, content_index=0, part=item.part())
            self._emit(
                "response.output_item.done", output_index=item.output_index, item=item.json()
            )
        self._open = []
        self._calls = {}

    def _done(self, finish_reason: str, usage: dict[str, Any] | None) -> None:
        incomplete = INCOMPLETE_REASONS.get(finish_reason)
        self._close_all("incomplete" if incomplete else "completed")
        self._response["usage"] = _usage(usage)
        self.is_terminal = True
        if incomplete:
            self._response["status"] = "incomplete"
            self._response["incomplete_details"] = {"reason": incomplete}
            self._emit_response("response.incomplete")
        else:
            self._response["status"] = "completed"
            self._emit_response("response.completed")

    def _failed(self, code: str, message: str) -> None:
        self._close_all("incomplete")
        self.is_terminal = True
        self._response["status"] = "failed"
        # OpenAI's error codes are a closed set; ours goes into the message.
        self._response["error"] = {"code": "server_error", "message": f"{message} ({code})"}
        self._emit_response("response.failed")


def sse(etype: str, data: bytes) -> bytes:
    """One Responses event as Server-Sent Events text."""
    return b"event: %s\ndata: %s\n\n" % (etype.encode(), data)
