"""The generate task: a thin adapter over `worker.generate.run`."""

from __future__ import annotations

from shared import keys, logs
from shared.jobs import GENERATE
from worker import generate
from worker.app import app, hand_over, runtime
from worker.providers import provider_for


@app.task(name=GENERATE)
def generate_session(session_id: str) -> str:
    """Generate one session (its request is in Redis)."""
    if not isinstance(session_id, str) or not keys.is_session_id(session_id):
        return "bad_session_id"
    rt = runtime()
    with logs.session(session_id):
        return generate.run(
            rt.redis,
            rt.settings,
            session_id,
            keeper=rt.keeper,
            appender=rt.appender,
            provider_for=provider_for,
            stopping=rt.stopping,
            hand_over=hand_over,
        )
