"""Retry delays and background threads: the one backoff every retry loop uses (as
dramatiq's `compute_backoff`) and the one way a component keeps its daemon thread running.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

# Readers of streams (the API's fan-out readers, `api.fanout.follow_reconnecting`) while Redis is
# unreachable or a read failed.
READ_RETRY_START_S = 0.1
READ_RETRY_MAX_S = 2.0

# 2**62 times any start already exceeds every cap; a larger int would overflow the float.
_MAX_EXPONENT = 62


def compute_backoff(attempt: int, *, start_s: float, max_s: float, jitter: bool = False) -> float:
    """The delay before retry `attempt` (0 for the first): `start_s` doubled per attempt,
    capped at `max_s`; with `jitter`, uniform between 0 and that ("full jitter")."""
    delay = min(max_s, start_s * 2 ** min(max(attempt, 0), _MAX_EXPONENT))
    return random.uniform(0, delay) if jitter else delay


def ensure_running(
    thread: threading.Thread | None,
    target: Callable[..., Any],
    name: str,
    args: tuple[Any, ...] = (),
) -> threading.Thread:
    """`thread` if it is alive; otherwise a new daemon thread running `target`, started.

    The caller holds whatever lock guards the attribute it stores the answer in.
    """
    if thread is not None and thread.is_alive():
        return thread
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread
