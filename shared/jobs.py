"""The job contract between the API and the workers.

The API enqueues `GENERATE` by name with one argument, the session id; the request itself
lives in Redis (`rs:{<id>}:meta`, field `request`), so the broker carries no prompts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from celery import Celery

from shared.settings import Settings

GENERATE = "rstreams.generate"

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """A validated generation request as stored in Redis and read by the worker."""

    model: str
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None

    @property
    def prompt(self) -> str:
        """The last user message: what the demo provider answers."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return self.messages[-1].content

    def to_json(self) -> str:
        """Encode for storage in the session's meta hash."""
        data = asdict(self)
        data["messages"] = [asdict(m) for m in self.messages]
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> GenerationRequest:
        """Decode what `to_json` wrote."""
        data = json.loads(raw)
        return cls(
            model=data["model"],
            messages=tuple(Message(m["role"], m["content"]) for m in data["messages"]),
            max_tokens=data.get("max_tokens"),
            temperature=data.get("temperature"),
        )


def make_celery(settings: Settings, name: str = "rstreams") -> Celery:
    """A Celery app with the settings both sides must agree on (JSON only, one queue)."""
    app = Celery(name, broker=settings.redis.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
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
