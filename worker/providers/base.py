"""What a provider is: something that streams an answer's parts for a request until it finishes."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.jobs import GenerationRequest


@dataclass(frozen=True)
class TextDelta:
    """A piece of generated text, in order."""

    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the model's reasoning, in order."""

    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call: `index` is the call's position in the answer; its first
    piece carries `id` and `name` (None on the others), every piece a fragment of the
    JSON `arguments`."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True)
class Finished:
    """The provider ended the answer normally."""

    finish_reason: str
    usage: dict[str, Any] | None = field(default=None)


@dataclass(frozen=True)
class Resume:
    """Where an earlier attempt stopped: continue after `chunks` chunks that read `text`."""

    chunks: int
    text: str


Delta = TextDelta | ReasoningDelta | ToolCallDelta
StreamItem = Delta | Finished
ShouldStop = Callable[[], bool]


class Provider(Protocol):
    """Streams a generation; raises `shared.errors.ProviderError` when the provider fails."""

    def stream(
        self, request: GenerationRequest, should_stop: ShouldStop, resume: Resume | None = None
    ) -> Generator[StreamItem, None, None]:
        """Yield deltas then one `Finished`; return early once `should_stop()` is true.

        With `resume`, yield only what comes after the text an earlier attempt wrote.
        """
        ...
