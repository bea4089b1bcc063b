"""The protocol routes with their own clients: the official `openai` SDK on the
Responses API, and the AI SDK's chat route read as SSE.

    .venv/bin/python -m bench.protocols

One redis-server, one API and one worker (`DEMO_TOKENS_PER_S=0`: the demo model writes as
fast as it can) of its own. Prints the median of 5 with the lowest and highest:
`retrieve(id)` of an 8,000-token response and the replay of its whole event stream
through the SDK; the first `text-delta` and the whole answer of a 2,000-token
`POST /api/chat`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from openai import OpenAI

from bench.stats import median_spread
from rstreams.localredis import LocalRedis
from tests.procs import Api, Worker, child_env


def ms(values: list[float]) -> str:
    return median_spread(values) + " ms"


def timed_ms(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def chat_once(url: str, n: int) -> tuple[float, float, int]:
    """(first text-delta ms, whole answer ms, chunks) of one 2,000-token chat answer."""
    body: dict[str, Any] = {
        "id": f"chat-{n}-{time.time_ns()}",
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
        "trigger": "submit-message",
        "model": "demo",
        "max_tokens": 2000,
    }
    started = time.perf_counter()
    first, chunks = float("nan"), 0
    with requests.post(url + "/api/chat", json=body, stream=True, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith(b"data: "):
                chunks += 1
                if b"text-delta" in line and first != first:  # the first (nan != nan)
                    first = (time.perf_counter() - started) * 1000
    return first, (time.perf_counter() - started) * 1000, chunks


def main() -> None:
    server = LocalRedis().start()
    env = child_env(
        REDIS_URL=server.url,
        CELERY_BROKER_URL=server.url,
        DEMO_TOKENS_PER_S="0",
        RATE_CREATES_PER_MIN="0",
        MAX_RUNNING_PER_CALLER="0",
        MAX_TOKENS_CAP="20000",
    )
    logs = Path(tempfile.mkdtemp(prefix="rstreams-protocols-"))
    api = Api(env, logs, name="api").start()
    worker = Worker(env, logs, name="worker").start()
    try:
        sdk = OpenAI(base_url=api.url + "/v1", api_key="any-key-in-open-mode")
        created = sdk.responses.create(
            model="demo", input="measure", background=True, max_output_tokens=8000
        )
        while sdk.responses.retrieve(created.id).status in ("queued", "in_progress"):
            time.sleep(0.1)
        events = sum(1 for _ in sdk.responses.retrieve(created.id, stream=True))
        gets = [timed_ms(lambda: sdk.responses.retrieve(created.id)) for _ in range(5)]
        replays = [
            timed_ms(lambda: sum(1 for _ in sdk.responses.retrieve(created.id, stream=True)))
            for _ in range(5)
        ]
        print(
            f"responses, 8,000 tokens: retrieve {ms(gets)}; replay of {events} events {ms(replays)}"
        )
        chats = [chat_once(api.url, n) for n in range(5)]
        print(
            f"chat, 2,000 tokens ({chats[0][2]} chunks): first text-delta "
            f"{ms([c[0] for c in chats])}; whole answer {ms([c[1] for c in chats])}"
        )
    finally:
        worker.stop()
        api.stop()
        server.close()


if __name__ == "__main__":
    main()
