"""Writes the chunks of every generation in this worker process, a batch at a time.

Generations queue their chunks here through their `Sink` (below: a session's handle on
the appender, which `worker.generate` uses and this module alone defines, so the two do
not import each other). One thread per process takes
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
from collections.abc import Callable

import redis

from shared import logs, metrics, store
from shared.backoff import compute_backoff, ensure_running
from shared.errors import AppendRefused
from shared.settings import Settings
from shared.store import Part

log = logging.getLogger(__name__)

# A sink's backoff while Redis is unreachable (`Sink._failed`), and `worker.generate`'s.
BACKOFF_START_S = 0.05
BACKOFF_MAX_S = 2.0

# Chunks in one pipeline: bounds the memory and the time of one round trip after an
# outage, when every session has a buffer to write.
BATCH_MAX = 2000

Batch = list[tuple["Sink", list[tuple[int, Part]]]]


class Appender:
    """The process's one writer of chunks."""

    def __init__(self, r: redis.Redis, tally: metrics.Tally | None = None) -> None:
        self.r = r
        # The process's metrics: what is pending rides on each pipeline of chunks.
        self.tally = tally or metrics.Tally()
        self._queued: queue.SimpleQueue[tuple[Sink, int, Part]] = queue.SimpleQueue()
        # Chunks not yet written, per sink; only the appender's thread touches it.
        self._unsent: dict[Sink, deque[tuple[int, Part]]] = {}
        self._script_loaded = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def put(self, sink: Sink, index: int, part: Part) -> None:
        """Queue chunk `index` of `sink`'s session."""
        if self._thread is None:
            with self._start_lock:
                self._thread = ensure_running(self._thread, self._run, "appender")
        self._queued.put((sink, index, part))

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
                sink, index, part = item
                self._unsent.setdefault(sink, deque()).append((index, part))
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
            for index, part in items:
                store.queue_content(
                    pipe,
                    sink.session_id,
                    index,
                    part,
                    token=sink.token,
                    maxlen=sink.settings.stream_maxlen,
                    ttl_s=sink.settings.stream_ttl_s,
                )
        sent = sum(len(items) for _sink, items in batch)
        tallied = self.tally.queue_into(pipe)
        answers: list[object]
        try:
            if not self._script_loaded:
                store.load_scripts(self.r)
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


class StoreUnavailable(Exception):
    """Redis stayed unreachable longer than `REDIS_OUTAGE_MAX_S`."""


class Sink:
    """Queues a session's chunks for the process's appender, which writes them in order,
    and bounds how many may wait unwritten while Redis is unreachable, so the worker keeps
    reading from the provider through a Redis restart.

    The appender reports back through `answered` and `fail`, from its own thread; a refusal
    or a failure it reports is raised in the generation at its next `chunk` or `flush`.
    """

    def __init__(
        self,
        r: redis.Redis,
        appender: Appender,
        session_id: str,
        token: str,
        first_index: int,
        settings: Settings,
    ) -> None:
        self.r = r
        self.appender = appender
        self.session_id = session_id
        self.token = token
        self.index = first_index  # the next chunk's index
        self.written = first_index  # every chunk before this one is in Redis
        self.settings = settings
        self.retry_at = 0.0
        self._failures = 0  # consecutive failed writes
        self._down_since: float | None = None
        self._failure: Exception | None = None  # AppendRefused, StoreUnavailable, ...
        self._closed = False
        self._changed = threading.Condition()

    def add(self, part: Part) -> None:
        """Queue the next content event (a chunk, reasoning, a tool call's piece); raises
        what stopped an earlier one (a refusal, an outage)."""
        self._check()
        if self.index - self.written >= self.settings.worker.buffer_chunks:
            # The buffer is full: wait for Redis rather than grow.
            self._wait(lambda: self.index - self.written < self.settings.worker.buffer_chunks)
        self.appender.put(self, self.index, part)
        self.index += 1

    def flush(self) -> None:
        """Wait until every queued chunk is written, up to `REDIS_OUTAGE_MAX_S` of outage."""
        self._wait(lambda: self.written >= self.index)

    def close(self) -> None:
        """The generation has ended: the appender drops what it still holds of it."""
        self._closed = True

    def is_writable(self) -> bool:
        """Whether the appender should still write this sink's chunks."""
        return self._failure is None and not self._closed

    def answered(self, answers: list[object]) -> int:
        """Take Redis's answers to the first unwritten chunks; returns how many were written.

        Called by the appender. A connection error leaves this chunk and the later ones
        to be sent again after a backoff.
        """
        written = 0
        for answer in answers:
            if isinstance(answer, redis.RedisError):
                try:
                    self._failed(answer)
                except StoreUnavailable as e:
                    self.fail(e)
                break
            try:
                store.content_result(self.r, self.session_id, answer)
            except AppendRefused as e:
                self.fail(e)
                break
            written += 1
            self._recovered()
        if written:
            self.written += written
            # Before the generation hears of it: its final flush of the metrics counts them.
            self.appender.tally.add(metrics.CHUNKS_APPENDED, written)
            with self._changed:
                self._changed.notify_all()
        return written

    def fail(self, error: Exception) -> None:
        """Stop writing; the generation raises `error` at its next step (called by the appender)."""
        self._failure = error
        with self._changed:
            self._changed.notify_all()

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _wait(self, is_done: Callable[[], bool]) -> None:
        with self._changed:
            while True:
                self._check()
                if is_done():
                    return
                self._changed.wait()

    def terminal(self, write: Callable[[], object]) -> None:
        """Flush, then write the terminal event, retrying through a Redis outage."""
        self.flush()
        first = True
        while True:
            try:
                write()
                self._recovered()
                return
            except AppendRefused as e:
                # A retry after a lost reply finds the session already ended by our write.
                if first or e.code != "terminal":
                    raise
                return
            except redis.RedisError as e:
                first = False
                self._failed(e)
                time.sleep(max(0.0, self.retry_at - time.monotonic()))

    def _failed(self, error: redis.RedisError) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "session %s: Redis unreachable (%s); holding chunks",
                self.session_id,
                error,
                extra=logs.about(self.session_id),
            )
        elif now - self._down_since > self.settings.redis.outage_max_s:
            raise StoreUnavailable(
                f"Redis unreachable for over {self.settings.redis.outage_max_s} s"
            ) from error
        self.retry_at = now + compute_backoff(
            self._failures, start_s=BACKOFF_START_S, max_s=BACKOFF_MAX_S
        )
        self._failures += 1

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning(
                "session %s: Redis back after %.1f s",
                self.session_id,
                time.monotonic() - self._down_since,
                extra=logs.about(self.session_id),
            )
        self._down_since = None
        self._failures = 0
        self.retry_at = 0.0
