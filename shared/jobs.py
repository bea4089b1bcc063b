"""The job contract between the API and the workers.

The API enqueues `GENERATE` by name with one argument, the session id; the request itself
lives in Redis (`rs:{<id>}:meta`, field `request`), so the broker carries no prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from shared.settings import Settings

GENERATE = "rstreams.generate"

ROLES = ("system", "user", "assistant", "tool")

# A message's content: text, OpenAI content parts (`{"type": "text", "text"}`,
# `{"type": "image_url", "image_url": {"url"}}`), or None (an assistant message that only
# calls tools). Validated by the API; the worker passes it on as it is.
Content = str | list[dict[str, Any]] | None

# The optional request fields passed to the provider as they are, after validation.
PASSED_ON = ("tools", "tool_choice", "response_format", "top_p", "stop", "seed", "reasoning")


@dataclass(frozen=True)
class Message:
    """One chat message; `tool_calls` on an assistant message, `tool_call_id` on a tool's."""

    role: str
    content: Content
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        """The message's text: its content, or its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        parts = self.content or []
        return "\n".join(str(p.get("text", "")) for p in parts if p.get("type") == "text")

    def to_dict(self) -> dict[str, Any]:
        """The message as a chat-completions request carries it (no empty fields)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls is not None:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True)
class GenerationRequest:
    """A validated generation request as stored in Redis and read by the worker."""

    model: str
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    # PASSED_ON's fields that the request set, by name.
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The last user message's text: what the demo provider answers."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text
        return self.messages[-1].text

    def to_json(self) -> str:
        """Encode for storage in the session's meta hash."""
        data: dict[str, Any] = {
            "model": self.model,
            "messages": [m.to_dict() for m in self.messages],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        data.update(self.options)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> GenerationRequest:
        """Decode what `to_json` wrote."""
        data = json.loads(raw)
        return cls(
            model=data["model"],
            messages=tuple(
                Message(m["role"], m.get("content"), m.get("tool_calls"), m.get("tool_call_id"))
                for m in data["messages"]
            ),
            max_tokens=data.get("max_tokens"),
            temperature=data.get("temperature"),
            options={name: data[name] for name in PASSED_ON if name in data},
        )


def make_celery(settings: Settings, name: str = "rstreams") -> Celery:
    """A Celery app with the settings both sides must agree on (JSON only, one queue)."""
    app = Celery(name, broker=settings.redis.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        # Celery builds a result backend per thread on first use (per greenlet in a gevent
        # API: per request), scanning every installed package's entry points each time,
        # about 7 ms of CPU (`python -m bench.creates`). No task stores a result (the
        # disabled backend): one shared instance will do.
        result_backend_thread_safe=True,
        task_default_queue=settings.worker.queue,
        broker_connection_retry_on_startup=True,
        # The Redis transport hands an unacknowledged job out again after this long; the
        # session lease makes such a second copy stand down (celery#5935).
        broker_transport_options={"visibility_timeout": settings.worker.visibility_timeout_s},
    )
    return app


def enqueue(app: Celery, session_id: str, queue: str) -> None:
    """Ask a worker to generate `session_id` (its request is stored with the session)."""
    app.send_task(GENERATE, args=[session_id], queue=queue)
