"""The one backoff and the one background-thread helper every loop uses."""

from __future__ import annotations

import threading

from shared.backoff import compute_backoff, ensure_running


def test_backoff_doubles_from_its_start_up_to_its_cap() -> None:
    delays = [compute_backoff(n, start_s=0.1, max_s=2.0) for n in range(7)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


def test_backoff_survives_an_attempt_count_beyond_any_float() -> None:
    assert compute_backoff(10_000, start_s=0.5, max_s=8.0) == 8.0


def test_full_jitter_stays_between_zero_and_the_capped_delay() -> None:
    delays = [compute_backoff(3, start_s=0.5, max_s=8.0, jitter=True) for _ in range(200)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 1


def test_a_running_thread_is_kept_and_a_finished_one_replaced() -> None:
    release = threading.Event()
    first = ensure_running(None, release.wait, "t")
    assert first.daemon and first.is_alive()
    assert ensure_running(first, release.wait, "t") is first
    release.set()
    first.join(5)
    second = ensure_running(first, lambda: None, "t")
    assert second is not first
    second.join(5)
