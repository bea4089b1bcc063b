"""Writes the chunks of every generation in this worker process, a batch at a time.

Generations queue their chunks here (through their `Sink`). One thread per process takes
whatever is queued, sends it as one non-transactional pipeline of the atomic append
script (one call per chunk, each on its own session's keys, so redis-py's cluster
pipeline can split it by node), and hands every answer back to its sink. The next batch
goes out as soon as the previous one returned: under load batches grow by themselves,
and an idle process sends a chunk at once. Only a sink's backoff after an error waits.

A chunk stays queued here until Redis answered it, and a batch goes out only after the
previous one returned, so each session's chunks are written in order; after a connection
error they are sent again from the first unanswered one, and the script's index check
drops those that had been written already.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import redis

from shared import metrics, streams

if TYPE_CHECKING:
    from worker.generate import Sink

log = logging.getLogger(__name__)

# Chunks in one pipeline: bounds the memory and the time of one round trip after an
# outage, when every session has a buffer to write.
BATCH_MAX = 2000

Batch = list[tuple["Sink", list[tuple[int, str]]]]


class Appender:
    """The process's one writer of chunks."""

    def __init__(self, r: redis.Redis, tally: metrics.Tally | None = None) -> None:
        self.r = r
        # The process's metrics: what is pending rides on each pipeline of chunks.
        self.tally = tally or metrics.Tally()
        self._queued: queue.SimpleQueue[tuple[Sink, int, str]] = queue.SimpleQueue()
        # Chunks not yet written, per sink; only the appender's thread touches it.
        self._unsent: dict[Sink, deque[tuple[int, str]]] = {}
        self._script_loaded = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def put(self, sink: Sink, index: int, text: str) -> None:
        """Queue chunk `index` of `sink`'s session."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="appender", daemon=True)
                    self._thread.start()
        self._queued.put((sink, index, text))

    def _run(self) -> None:
        while True:
            self._collect()
            batch = self._take()
            if not batch:
                continue
            try:
                self._send(batch)
            except Exception as e:  # a bug here must not leave generations waiting forever
                log.exception("appender failed; failing the sessions of this batch")
                for sink, _items in batch:
                    sink.fail(e)
                    self._unsent.pop(sink, None)

    def _collect(self) -> None:
        """Move what was queued to the per-sink queues; wait if there is nothing to send."""
        now = time.monotonic()
        retry_at = min((s.retry_at for s in self._unsent), default=None)
        try:
            if retry_at is None:
                item = self._queued.get()
            else:
                item = self._queued.get(timeout=max(0.0, retry_at - now))
            while True:
                sink, index, text = item
                self._unsent.setdefault(sink, deque()).append((index, text))
                item = self._queued.get_nowait()
        except queue.Empty:
            pass

    def _take(self) -> Batch:
        """The chunks to send now: every writable sink's that is not backing off."""
        batch: Batch = []
        size = 0
        now = time.monotonic()
        for sink, chunks in list(self._unsent.items()):
            if not sink.is_writable():
                del self._unsent[sink]
            elif sink.retry_at <= now and size < BATCH_MAX:
                items = list(itertools.islice(chunks, BATCH_MAX - size))
                batch.append((sink, items))
                size += len(items)
        return batch

    def _send(self, batch: Batch) -> None:
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
        sent = sum(len(items) for _sink, items in batch)
        tallied = self.tally.queue_into(pipe)
        answers: list[object]
        try:
            if not self._script_loaded:
                streams.load_scripts(self.r)
                self._script_loaded = True
            answers = pipe.execute(raise_on_error=False)
        except redis.RedisError as e:
            answers = [e] * (sent + len(tallied))
        finally:
            pipe.reset()
        if any(isinstance(a, Exception) for a in answers[sent:]):
            self.tally.restore(tallied)
        answers = answers[:sent]
        # A restarted Redis has forgotten the script: load it before the next batch.
        if any(isinstance(a, redis.exceptions.NoScriptError) for a in answers):
            self._script_loaded = False
        start = 0
        for sink, items in batch:
            written = sink.answered(answers[start : start + len(items)])
            start += len(items)
            chunks = self._unsent.pop(sink)
            for _ in range(written):
                chunks.popleft()
            if chunks:
                self._unsent[sink] = chunks  # at the end: the others go first next time
