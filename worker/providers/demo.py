"""The demo provider: deterministic text derived from the prompt, no key, no network."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Generator

from shared.jobs import GenerationRequest
from worker.providers.base import Finished, Resume, ShouldStop, StreamItem, TextDelta

_WORDS = (
    "stream resumes cursor token worker redis answer client replay follow live chunk "
    "session socket reconnect order gap duplicate lease model prompt text network tab "
    "device server queue event entry status deploy restart survive steady exact"
).split()
_SENTENCE = 12
_PROMPT_WORDS = 10


def _seed(prompt: str) -> str:
    return hashlib.blake2b(prompt.encode(), digest_size=8).hexdigest()


def demo_chunk(prompt: str, index: int) -> str:
    """Chunk `index` of the demo answer to `prompt`: the same for the same inputs, always."""
    echo = prompt.split()[:_PROMPT_WORDS]
    if index == 0:
        return "You asked:"
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
        """Yield the demo answer's chunks (after `resume.chunks`), paced, then `Finished`."""
        start = resume.chunks if resume else 0
        total = request.max_tokens or self.default_max_tokens
        prompt = request.prompt
        next_at = self.clock()
        for index in range(start, total):
            if self.interval_s:
                next_at += self.interval_s
                delay = next_at - self.clock()
                if delay > 0:
                    self.sleep(delay)
            if should_stop():
                return
            yield TextDelta(demo_chunk(prompt, index))
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
        yield Finished(
            "stop",
            {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": total,
                "total_tokens": prompt_tokens + total,
            },
        )
