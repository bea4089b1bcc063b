"""The AI SDK's UI messages in, its UI message chunks out (DESIGN.md 2.6).

In: the body `DefaultChatTransport` posts (and the `send` frame of `WebSocketChatTransport`):
a chat id, UI messages with their parts, a trigger, and the transport's extra body fields.
The parts become the messages of a generation request, which `api.validation.parse_generate`
then checks exactly as for `POST /api/streams/generate`.

Out: a session's stored events become UI message chunks by one pure function of the
event list (`ChunkMapper`), so that every connection, API instance and replay gives the
same chunks with the same ids and the same sequence numbers (a chunk's 0-based position).
`web/ai-sdk/src/mapping.ts` is the same function in TypeScript.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from api.validation import MAX_ID_LEN, TOOL_NAME_PATTERN, parse_generate
from shared.errors import InvalidRequest
from shared.jobs import GenerationRequest
from shared.settings import Settings

# Fields of the chat body itself; every other field is a generation option
# (`model`, `max_tokens`, `tools`, ...) as POST /api/streams/generate takes it.
CHAT_FIELDS = ("id", "messages", "trigger", "messageId")
TRIGGERS = ("submit-message", "regenerate-message")
UI_ROLES = ("system", "user", "assistant")
# Chat and message ids are the client's: they reach a Redis key, a URL path and a header.
ID_PATTERN = "^[A-Za-z0-9_.:@~+=-]{1,128}$"
_ID_RE = re.compile(ID_PATTERN)
_TOOL_NAME_RE = re.compile(TOOL_NAME_PATTERN)
# Parts that carry nothing for the model: `convertToModelMessages` drops them too.
IGNORED_PARTS = ("step-start", "source-url", "source-document", "reasoning-file")
PART_TYPES = "text, reasoning, file (images), tool-<name>, dynamic-tool, step-start"
# Tool parts whose call has no outcome yet: nothing the model could be sent.
PENDING_TOOL_STATES = (
    "input-streaming",
    "input-available",
    "approval-requested",
    "approval-responded",
)
TOOL_STATES = (*PENDING_TOOL_STATES, "output-available", "output-error", "output-denied")

STREAM_HEADER = "x-vercel-ai-ui-message-stream"
STREAM_VERSION = "v1"

FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "content_filter": "content-filter",
}

Chunk = dict[str, Any]


def is_chat_id(value: Any) -> bool:
    """Whether `value` can be a chat id (or an assistant message id)."""
    return isinstance(value, str) and bool(_ID_RE.fullmatch(value))


def check_chat_id(value: Any, name: str = "id") -> str:
    """`value` as a chat id; raises `InvalidRequest` naming `name`."""
    if not is_chat_id(value):
        raise InvalidRequest(
            f"{name} must be a chat id: 1 to 128 characters of A-Z, a-z, 0-9 and _.:@~+=-"
        )
    return str(value)


def default_message_id(session_id: str) -> str:
    """The assistant message id of a session started without one."""
    return f"msg-{session_id}"


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat request: the chat, the generation, and the assistant message id
    the request asked for (`messageId` of a `regenerate-message`; else None)."""

    chat_id: str
    trigger: str
    generation: GenerationRequest
    message_id: str | None = None

    def message_id_for(self, session_id: str) -> str:
        """The id of the assistant message that `session_id` streams."""
        return self.message_id or default_message_id(session_id)


@dataclass
class _Converted:
    """Chat-completions messages, and for each the UI path it came from (for errors)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)

    def add(self, message: dict[str, Any], origin: str) -> None:
        self.messages.append(message)
        self.origins.append(origin)


def parse_chat(body: Any, settings: Settings) -> ChatRequest:
    """Check a chat body and convert its UI messages; raises `InvalidRequest` naming the
    field (`messages[1].parts[0].type`)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    chat_id = check_chat_id(body.get("id"))
    trigger = body.get("trigger", "submit-message")
    if trigger not in TRIGGERS:
        raise InvalidRequest(f"trigger must be one of {', '.join(TRIGGERS)}")
    message_id = body.get("messageId")
    if message_id is not None:
        check_chat_id(message_id, "messageId")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages must be a non-empty array of UI messages")
    if len(raw) > settings.limits.max_messages:
        raise InvalidRequest(
            f"messages may hold at most {settings.limits.max_messages} messages (MAX_MESSAGES)"
        )
    if "prompt" in body:
        raise InvalidRequest("prompt is not a chat field: send the conversation as messages")
    converted = _Converted()
    for n, message in enumerate(raw):
        _convert_message(message, f"messages[{n}]", converted)
    options = {k: v for k, v in body.items() if k not in CHAT_FIELDS}
    try:
        generation = parse_generate({**options, "messages": converted.messages}, settings)
    except InvalidRequest as e:
        raise type(e)(_in_ui_terms(e.message, converted.origins), code=e.code) from None
    return ChatRequest(
        chat_id,
        str(trigger),
        generation,
        message_id=message_id if trigger == "regenerate-message" else None,
    )


def _in_ui_terms(message: str, origins: list[str]) -> str:
    """A validation message about converted message `k`, about the UI message it came from."""
    match = re.match(r"messages\[(\d+)\]", message)
    if match is None or int(match[1]) >= len(origins):
        return message
    return origins[int(match[1])] + message[match.end() :]


def _convert_message(message: Any, at: str, out: _Converted) -> None:
    if not isinstance(message, dict):
        raise InvalidRequest(f"{at} must be a UI message: an object with role and parts")
    role = message.get("role")
    if role not in UI_ROLES:
        raise InvalidRequest(f"{at}.role must be one of {', '.join(UI_ROLES)}")
    parts = message.get("parts")
    if not isinstance(parts, list):
        raise InvalidRequest(f"{at}.parts must be an array of UI message parts")
    for n, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(f"{at}.parts[{n}].type must be a string")
    if role == "assistant":
        _convert_assistant(parts, at, out)
        return
    content: list[dict[str, Any]] = []
    for n, part in enumerate(parts):
        here, kind = f"{at}.parts[{n}]", part["type"]
        if kind == "text":
            text = _text(part, here)
            if text.strip():
                content.append({"type": "text", "text": text})
        elif kind == "file" and role == "user":
            content.append(_image(part, here))
        elif _is_ignored(kind):
            continue
        elif kind in ("reasoning", "file") or _is_tool(kind):
            raise InvalidRequest(f"{here}.type {kind!r} is not allowed in a {role} message")
        else:
            raise _unknown_part(here, kind)
    if not content:
        raise InvalidRequest(f"{at}.parts must hold a non-empty text part")
    if role == "system" or (len(content) == 1 and content[0]["type"] == "text"):
        text = "\n".join(p["text"] for p in content if p["type"] == "text")
        if role == "system" and len(content) != sum(p["type"] == "text" for p in content):
            raise InvalidRequest(f"{at}: a system message holds text only")
        out.add({"role": role, "content": text}, at)
    else:
        out.add({"role": role, "content": content}, at)


def _convert_assistant(parts: list[dict[str, Any]], at: str, out: _Converted) -> None:
    """An assistant message: one chat-completions message per step (`step-start` parts
    divide them), each followed by the `tool` messages answering its calls.

    Reasoning parts become the message's `reasoning`, which the validator accepts and the
    provider is never sent (as for POST /api/streams/generate).
    """
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    answers: list[tuple[dict[str, Any], str]] = []

    def flush() -> None:
        said = "".join(text)
        if not said.strip() and not calls:
            text.clear()
            reasoning.clear()
            return
        message: dict[str, Any] = {"role": "assistant", "content": said if said.strip() else None}
        if calls:
            message["tool_calls"] = list(calls)
        if reasoning:
            message["reasoning"] = "".join(reasoning)
        out.add(message, at)
        for answer, origin in answers:
            out.add(answer, origin)
        for pending in (text, reasoning, calls, answers):
            pending.clear()

    for n, part in enumerate(parts):
        here, kind = f"{at}.parts[{n}]", part["type"]
        if kind == "text":
            text.append(_text(part, here))
        elif kind == "reasoning":
            reasoning.append(_text(part, here))
        elif kind == "step-start":
            flush()
        elif _is_tool(kind):
            call = _tool_call(part, here)
            if call is not None:
                calls.append(call[0])
                answers.append((call[1], here))
        elif _is_ignored(kind):
            continue
        elif kind == "file":
            raise InvalidRequest(f"{here}.type 'file' is not allowed in an assistant message")
        else:
            raise _unknown_part(here, kind)
    flush()


def _text(part: dict[str, Any], at: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"{at}.text must be a string")
    return text


def _image(part: dict[str, Any], at: str) -> dict[str, Any]:
    media_type = part.get("mediaType")
    if not isinstance(media_type, str) or media_type.split("/")[0].lower() != "image":
        raise InvalidRequest(f"{at}.mediaType must be an image type (image/png, ...)")
    url = part.get("url")
    if not isinstance(url, str):
        raise InvalidRequest(f"{at}.url must be a string (an http(s) or data: URL)")
    return {"type": "image_url", "image_url": {"url": url}}


def _is_tool(kind: str) -> bool:
    return kind.startswith("tool-") or kind == "dynamic-tool"


def _is_ignored(kind: str) -> bool:
    return kind in IGNORED_PARTS or kind.startswith("data-")


def _unknown_part(at: str, kind: str) -> InvalidRequest:
    return InvalidRequest(
        f"{at}.type {kind[:64]!r} is not a part type this API takes ({PART_TYPES})"
    )


def _tool_call(part: dict[str, Any], at: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The call and the `tool` message answering it; None for a call without an outcome."""
    kind = part["type"]
    name = part.get("toolName") if kind == "dynamic-tool" else kind[len("tool-") :]
    if not isinstance(name, str) or not _TOOL_NAME_RE.match(name):
        field_ = "toolName" if kind == "dynamic-tool" else "type"
        raise InvalidRequest(f"{at}.{field_}: the tool's name must match {TOOL_NAME_PATTERN}")
    call_id = part.get("toolCallId")
    if not isinstance(call_id, str) or not call_id.strip() or len(call_id) > MAX_ID_LEN:
        raise InvalidRequest(f"{at}.toolCallId must be a string of 1 to {MAX_ID_LEN} characters")
    state = part.get("state")
    if state not in TOOL_STATES:
        raise InvalidRequest(f"{at}.state must be one of {', '.join(TOOL_STATES)}")
    if state in PENDING_TOOL_STATES:
        return None  # no outcome yet: a provider refuses a call without its answer
    raw_input = part.get("input")
    arguments = raw_input if isinstance(raw_input, str) else json.dumps(raw_input or {})
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    if state == "output-available":
        output = part.get("output")
        content = output if isinstance(output, str) else json.dumps(output)
    elif state == "output-error":
        error = part.get("errorText")
        content = error if isinstance(error, str) and error.strip() else "The tool failed."
    else:
        content = "The user denied this tool call."
    return call, {"role": "tool", "tool_call_id": call_id, "content": content}


# Out: stored events -> UI message chunks.


def finish_reason(reason: Any) -> str:
    """The AI SDK's finish reason for a provider's (`tool_calls` -> `tool-calls`, ...)."""
    return FINISH_REASONS.get(str(reason or ""), "other")


def error_text(error: Any) -> str:
    """A failed session's message for `errorText`: readable, never empty."""
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or "").strip()
    if message:
        return message
    code = str(error.get("code") or "").strip()
    return f"The generation failed ({code})." if code else "The generation failed."


def _tool_input(arguments: str) -> Any:
    if not arguments.strip():
        return {}
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


class ChunkMapper:
    """The mapping one event at a time, for a stream still arriving: `push` gives the
    chunks an event adds; fed every event of a session, it gives `to_chunks`."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.is_ended = False
        self._started = False
        self._open: tuple[str, str] | None = None  # ("text" | "reasoning", block id)
        self._calls: dict[int, dict[str, Any]] = {}

    def start(self) -> list[Chunk]:
        """The chunks that open the message (also given by the first `push`)."""
        if self._started:
            return []
        self._started = True
        return [{"type": "start", "messageId": self.message_id}, {"type": "start-step"}]

    def push(self, event: dict[str, Any]) -> list[Chunk]:
        """The chunks one event adds (none after the session ended)."""
        if self.is_ended:
            return []
        out = self.start()
        kind = event.get("type")
        if kind in ("chunk", "reasoning"):
            block = "text" if kind == "chunk" else "reasoning"
            if self._open is None or self._open[0] != block:
                out += self._close_block()
                self._open = (block, f"{block[0]}{event['index']}")
                out.append({"type": f"{block}-start", "id": self._open[1]})
            out.append({"type": f"{block}-delta", "id": self._open[1], "delta": event["text"]})
        elif kind == "tool_call":
            out += self._close_block()
            piece = event["call"]
            call = self._calls.get(piece["index"])
            if call is None:
                call = {
                    "index": piece["index"],
                    "id": piece.get("id") or f"call_{piece['index']}",
                    "name": piece.get("name") or "",
                    "arguments": "",
                }
                self._calls[piece["index"]] = call
                out.append(
                    {"type": "tool-input-start", "toolCallId": call["id"], "toolName": call["name"]}
                )
            delta = piece.get("arguments") or ""
            if delta:
                call["arguments"] += delta
                out.append(
                    {"type": "tool-input-delta", "toolCallId": call["id"], "inputTextDelta": delta}
                )
        elif kind == "done":
            out += self._close_block()
            for index in sorted(self._calls):
                call = self._calls[index]
                out.append(
                    {
                        "type": "tool-input-available",
                        "toolCallId": call["id"],
                        "toolName": call["name"],
                        "input": _tool_input(call["arguments"]),
                    }
                )
            out.append({"type": "finish-step"})
            out.append({"type": "finish", "finishReason": finish_reason(event.get("finishReason"))})
            self.is_ended = True
        elif kind == "error":
            out += self._close_block()
            out.append({"type": "error", "errorText": error_text(event.get("error"))})
            self.is_ended = True
        elif kind == "cancelled":
            out += self._close_block()
            out.append({"type": "abort", "reason": "cancelled"})
            self.is_ended = True
        # `status` events (queued, running, resumed) and later kinds: no chunk.
        return out

    def _close_block(self) -> list[Chunk]:
        if self._open is None:
            return []
        block, block_id = self._open
        self._open = None
        return [{"type": f"{block}-end", "id": block_id}]


def to_chunks(events: list[dict[str, Any]], message_id: str) -> list[Chunk]:
    """Every chunk of a session's events, in order."""
    mapper = ChunkMapper(message_id)
    out = mapper.start()
    for event in events:
        out += mapper.push(event)
    return out


def encode(chunk: Chunk) -> str:
    """A chunk as compact JSON text."""
    return json.dumps(chunk, separators=(",", ":"), ensure_ascii=False)
