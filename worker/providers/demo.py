"""The demo provider: deterministic answers derived from the prompt, no key, no network.

`demo` (and any other `demo*` model) streams text. `demo-reasoning` streams reasoning, then
text. `demo-tools`, given `tools`, streams one call of the first tool with JSON arguments
derived from the prompt and finishes with `tool_calls`; when the conversation's last
message is a `tool` message, it streams text that quotes that result instead. A text or
reasoning answer is `max_tokens` content events; a call, as many pieces as its arguments
need.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Generator
from typing import Any

from shared.jobs import GenerationRequest
from worker.providers.base import (
    Delta,
    Finished,
    ReasoningDelta,
    Resume,
    ShouldStop,
    StreamItem,
    TextDelta,
    ToolCallDelta,
)

REASONING_MODEL = "demo-reasoning"
TOOLS_MODEL = "demo-tools"
_ARGUMENT_PIECE = 7  # characters of a tool call's arguments per piece

_WORDS = (
    "stream resumes cursor token worker redis answer client replay follow live chunk "
    "session socket reconnect order gap duplicate lease model prompt text network tab "
    "device server queue event entry status deploy restart survive steady exact"
).split()
_SENTENCE = 12
_PROMPT_WORDS = 10


def _seed(prompt: str) -> str:
    return hashlib.blake2b(prompt.encode(), digest_size=8).hexdigest()


def demo_chunk(prompt: str, index: int, opening: str = "You asked:") -> str:
    """Chunk `index` of the demo answer to `prompt`: the same for the same inputs, always."""
    echo = prompt.split()[:_PROMPT_WORDS]
    if index == 0:
        return opening
    if index <= len(echo):
        word = echo[index - 1]
        return f" {word}." if index == len(echo) else f" {word}"
    n = index - len(echo) - 1
    digest = hashlib.blake2b(f"{_seed(prompt)}:{n}".encode(), digest_size=4).digest()
    word = _WORDS[int.from_bytes(digest, "big") % len(_WORDS)]
    if n % _SENTENCE == 0:
        word = word.capitalize()
    if n % _SENTENCE == _SENTENCE - 1:
        word += "."
    return " " + word


def demo_text(prompt: str, chunks: int) -> str:
    """The whole demo answer of `chunks` chunks."""
    return "".join(demo_chunk(prompt, i) for i in range(chunks))


def _tool_call(request: GenerationRequest, tool: dict[str, Any]) -> list[Delta]:
    """One call of `tool`: its first argument (a string one if it has one) set to the
    prompt's first words; the arguments in pieces of a few characters."""
    function = tool.get("function") or {}
    properties = (function.get("parameters") or {}).get("properties") or {}
    strings = [
        k for k, v in properties.items() if isinstance(v, dict) and v.get("type") == "string"
    ]
    argument = (strings or list(properties) or ["input"])[0]
    arguments = json.dumps({argument: " ".join(request.prompt.split()[:_PROMPT_WORDS])})
    call_id = "call_" + hashlib.blake2b(request.to_json().encode(), digest_size=12).hexdigest()
    pieces: list[Delta] = [ToolCallDelta(0, call_id, str(function.get("name", "")), "")]
    for at in range(0, len(arguments), _ARGUMENT_PIECE):
        pieces.append(ToolCallDelta(0, None, None, arguments[at : at + _ARGUMENT_PIECE]))
    return pieces


def demo_answer(request: GenerationRequest, total: int) -> tuple[list[Delta], str]:
    """The demo's deltas for `request` (at most `total`) and its finish reason."""
    prompt = request.prompt
    last = request.messages[-1]
    tools = request.options.get("tools") or []
    if request.model == TOOLS_MODEL and last.role == "tool":
        words = [f" {w}" for w in last.text.split()]
        text = ["The tool answered:", *words[: max(0, total - 2)], "."][:total]
        return [TextDelta(t) for t in text], "stop"
    if request.model == TOOLS_MODEL and tools:
        return _tool_call(request, tools[0]), "tool_calls"
    reasoning = total // 4 if request.model == REASONING_MODEL else 0
    deltas: list[Delta] = [
        ReasoningDelta(demo_chunk(prompt, i, "Thinking about")) for i in range(reasoning)
    ]
    deltas += [TextDelta(demo_chunk(prompt, i)) for i in range(total - reasoning)]
    return deltas, "stop"


class DemoProvider:
    """Streams `max_tokens` chunks (or `default_max_tokens`) at `tokens_per_s` (0: unpaced)."""

    def __init__(
        self,
        tokens_per_s: float,
        default_max_tokens: int,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = 1.0 / tokens_per_s if tokens_per_s > 0 else 0.0
        self.default_max_tokens = default_max_tokens
        self.sleep = sleep
        self.clock = clock

    def stream(
        self, request: GenerationRequest, should_stop: ShouldStop, resume: Resume | None = None
    ) -> Generator[StreamItem, None, None]:
        """Yield the demo answer's deltas (after `resume.chunks`), paced, then `Finished`."""
        deltas, finish_reason = demo_answer(request, request.max_tokens or self.default_max_tokens)
        next_at = self.clock()
        for delta in deltas[resume.chunks if resume else 0 :]:
            if self.interval_s:
                next_at += self.interval_s
                delay = next_at - self.clock()
                if delay > 0:
                    self.sleep(delay)
            if should_stop():
                return
            yield delta
        prompt_tokens = sum(len(m.text.split()) for m in request.messages)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(deltas),
            "total_tokens": prompt_tokens + len(deltas),
        }
        if reasoning := sum(isinstance(d, ReasoningDelta) for d in deltas):
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        yield Finished(finish_reason, usage)
