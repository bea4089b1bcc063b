"""Writes the chunks of every generation in this worker process, a batch at a time.

Each generation queues its chunks in its `Sink`. One thread per process takes whatever
the sinks hold, sends it as one non-transactional pipeline of the atomic append script
(one call per chunk, each on its own session's keys, so redis-py's cluster pipeline can
split it by node), and hands every answer back to its sink. The next batch goes out as
soon as the previous one returned: under load, batches grow by themselves; when idle, a
chunk goes out at once. Nothing waits on a timer except a sink's backoff after an error.

A session's chunks stay in its sink until Redis answered them, and a batch is sent only
after the previous one returned, so they are written in order; after a connection error
they are sent again from the first unanswered one, and the script's index check drops
the ones that had been written already.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING

import redis

from shared import streams

if TYPE_CHECKING:
    from worker.generate import Sink

log = logging.getLogger(__name__)

# Chunks in one pipeline: bounds the memory and the time of one round trip after an
# outage, when every session has a buffer to write.
BATCH_MAX = 2000


class Appender:
    """The process's one writer of chunks; sinks queue chunks and call `wake`."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        # Guards every sink's queue and state; sinks wait on conditions of this lock.
        self.lock = threading.Lock()
        self._work = threading.Condition(self.lock)
        self._waiting: dict[Sink, None] = {}  # sinks with chunks to write, in arrival order
        self._thread: threading.Thread | None = None
        self._script_loaded = False

    def wake(self, sink: Sink) -> None:
        """Note that `sink` has chunks to write."""
        with self.lock:
            self._waiting[sink] = None
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="appender", daemon=True)
                self._thread.start()
            self._work.notify()

    def _run(self) -> None:
        while True:
            batch = self._take()
            try:
                self._send(batch)
            except Exception as e:  # a bug here must not leave generations waiting forever
                log.exception("appender failed; failing the sessions of this batch")
                with self.lock:
                    for sink, _items in batch:
                        sink.fail(e)

    def _take(self) -> list[tuple[Sink, list[tuple[int, str]]]]:
        with self.lock:
            while True:
                now = time.monotonic()
                due = [s for s in self._waiting if s.retry_at <= now]
                if due:
                    break
                wake_at = min((s.retry_at for s in self._waiting), default=None)
                self._work.wait(None if wake_at is None else wake_at - now)
            batch: list[tuple[Sink, list[tuple[int, str]]]] = []
            size = 0
            for sink in due:
                if size >= BATCH_MAX:
                    break
                del self._waiting[sink]
                if not sink.is_writable():
                    continue
                items = list(itertools.islice(sink.pending, BATCH_MAX - size))
                if items:
                    batch.append((sink, items))
                    size += len(items)
            return batch

    def _send(self, batch: list[tuple[Sink, list[tuple[int, str]]]]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for sink, items in batch:
            for index, text in items:
                streams.queue_chunk(
                    pipe,
                    sink.session_id,
                    index,
                    text,
                    token=sink.token,
                    maxlen=sink.settings.stream_maxlen,
                    ttl_s=sink.settings.stream_ttl_s,
                )
        answers: list[object]
        try:
            if not self._script_loaded:
                streams.load_append_script(self.r)
                self._script_loaded = True
            answers = pipe.execute(raise_on_error=False)
        except redis.RedisError as e:
            answers = [e] * sum(len(items) for _sink, items in batch)
        finally:
            pipe.reset()
        # A restarted Redis has forgotten the script: load it before the next batch.
        if any(isinstance(a, redis.exceptions.NoScriptError) for a in answers):
            self._script_loaded = False
        with self.lock:
            start = 0
            for sink, items in batch:
                sink.answered(answers[start : start + len(items)])
                start += len(items)
                if sink.pending and sink.is_writable():
                    self._waiting[sink] = None
