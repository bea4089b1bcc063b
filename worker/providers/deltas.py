"""The parts of an OpenAI-compatible streamed answer: text, reasoning and tool calls.

One `DeltaReader` per answer turns each chunk's `choices[0].delta` into stream items,
whatever spelling the provider uses:

- reasoning: `delta.reasoning` (OpenRouter), `delta.reasoning_content` (DeepSeek, vLLM,
  llama.cpp's server and others) or only `delta.reasoning_details` (OpenRouter's structured
  form, which repeats `delta.reasoning` when both come: one of them is read, never both);
- tool calls: `delta.tool_calls[n]`, the first piece of a call with its `id` and function
  `name`, the next ones with fragments of its JSON `arguments`, several calls interleaved
  by `index`. Some servers repeat the `id` on every piece, leave `index` out, send each
  call whole, or give `arguments` as an object; all of these read as the same calls.

A JSON string may be cut between the two halves of a surrogate pair (`"\\ud83d"` in one
piece, `"\\ude00"` in the next): each of text, reasoning and every call's arguments holds
a dangling first half back until its second half comes, so no piece ever carries half a
character; a half that never finds its pair becomes U+FFFD.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from worker.providers.base import ReasoningDelta, StreamItem, TextDelta, ToolCallDelta

_SURROGATE = re.compile("[\ud800-\udfff]")


def _whole(text: str) -> str:
    """`text` with surrogate pairs joined into characters and lone halves replaced."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class _Joiner:
    """Pieces of one JSON string, each given back without a dangling half character."""

    def __init__(self) -> None:
        self._held = ""

    def add(self, piece: str) -> str:
        text, self._held = self._held + piece, ""
        if text and "\ud800" <= text[-1] <= "\udbff":
            text, self._held = text[:-1], text[-1]
        return _whole(text)

    def flush(self) -> str:
        text, self._held = self._held, ""
        return _whole(text)


@dataclass
class _Call:
    index: int
    id: str
    name: str | None = None
    arguments: _Joiner = field(default_factory=_Joiner)
    # Arguments that came before the name: a call's first event carries its id and name.
    early: str = ""


def _reasoning_of(delta: dict[str, Any]) -> str:
    for name in ("reasoning", "reasoning_content"):
        value = delta.get(name)
        if isinstance(value, str) and value:
            return value
    details = delta.get("reasoning_details")
    if not isinstance(details, list):
        return ""
    out = []
    for detail in details:
        if not isinstance(detail, dict):
            continue
        # `reasoning.encrypted` carries no readable text.
        value = detail.get("text") if detail.get("type") == "reasoning.text" else None
        if detail.get("type") == "reasoning.summary":
            value = detail.get("summary")
        if isinstance(value, str):
            out.append(value)
    return "".join(out)


class DeltaReader:
    """Reads the deltas of one answer, in order; `items` for each, `flush` at the end."""

    def __init__(self) -> None:
        self._text = _Joiner()
        self._reasoning = _Joiner()
        self._calls: dict[int, _Call] = {}  # by the provider's index
        self._count = 0

    @property
    def has_tool_calls(self) -> bool:
        """Whether the answer so far holds a tool call."""
        return self._count > 0

    def items(self, delta: Any) -> Iterator[StreamItem]:
        """The stream items of one `delta` object."""
        if not isinstance(delta, dict):
            return
        reasoning = _reasoning_of(delta)
        if reasoning and (text := self._reasoning.add(reasoning)):
            yield ReasoningDelta(text)
        content = delta.get("content")
        if isinstance(content, str) and content and (text := self._text.add(content)):
            yield TextDelta(text)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for position, piece in enumerate(calls):
                if isinstance(piece, dict) and (item := self._call_piece(position, piece)):
                    yield item

    def flush(self) -> Iterator[StreamItem]:
        """What was held back at the end of the answer (half characters, as U+FFFD)."""
        if reasoning := self._reasoning.flush():
            yield ReasoningDelta(reasoning)
        if text := self._text.flush():
            yield TextDelta(text)
        for call in sorted(self._calls.values(), key=lambda c: c.index):
            arguments = call.arguments.flush()
            if call.name is None:  # never named: kept, so that nothing the model sent is lost
                call.name = ""
                yield ToolCallDelta(call.index, call.id, "", call.early + arguments)
            elif arguments:
                yield ToolCallDelta(call.index, None, None, arguments)

    def _call_piece(self, position: int, piece: dict[str, Any]) -> ToolCallDelta | None:
        raw_index = piece.get("index")
        key = raw_index if type(raw_index) is int and raw_index >= 0 else position
        function = piece.get("function")
        function = function if isinstance(function, dict) else {}
        call_id = piece.get("id") if isinstance(piece.get("id"), str) and piece["id"] else None
        name = function.get("name") if isinstance(function.get("name"), str) else None
        arguments = function.get("arguments")
        if isinstance(arguments, dict | list):
            arguments = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        elif not isinstance(arguments, str):
            arguments = ""
        call = self._calls.get(key)
        if call is None or (call_id is not None and call_id != call.id):
            # A new call; a different id at a known index is a server that sends every
            # call whole at the same index. A call without an id gets one: the `tool`
            # message that answers it must name it.
            call = _Call(self._count, call_id or f"call_{secrets.token_hex(12)}")
            self._calls[key] = call
            self._count += 1
        text = call.arguments.add(arguments)
        if call.name is None:
            if not name:
                call.early += text
                return None
            call.name = name
            return ToolCallDelta(call.index, call.id, name, call.early + text)
        return ToolCallDelta(call.index, None, None, text) if text else None
