"""Waiting, in a test, for what other processes and threads do."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(holds: Callable[[], object], what: str, timeout_s: float = 20) -> None:
    """Return once `holds()` is true; fail after `timeout_s`, saying what did not come.

    The deadline only bounds a hang: a test that waits must not depend on its length.
    """
    deadline = time.monotonic() + timeout_s
    while not holds():
        assert time.monotonic() < deadline, f"still not so after {timeout_s} s: {what}"
        time.sleep(0.02)
