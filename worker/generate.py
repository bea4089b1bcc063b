"""Generate one session: take its lease, stream from the provider, append every chunk."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import redis

from shared import streams
from shared.errors import AppendRefused, ProviderError
from shared.settings import Settings
from worker.leases import LeaseKeeper
from worker.providers.base import Finished, Provider, TextDelta

log = logging.getLogger(__name__)

ProviderFor = Callable[[str, Settings], Provider]


def run(
    r: redis.Redis,
    settings: Settings,
    session_id: str,
    *,
    keeper: LeaseKeeper,
    provider_for: ProviderFor,
) -> str:
    """Generate `session_id` to its end; returns what happened (completed, failed, held, ...).

    Stands down without writing when another worker holds the lease or the session is
    already terminal or gone. Stops at the next chunk once the session is cancelled or the
    lease is lost: the atomic append refuses the write, and leaving the `with` block closes
    the provider's stream, which closes the upstream HTTP response.
    """
    state, held = keeper.acquire(session_id)
    if held is None:
        log.info("session %s not generated here: %s", session_id, state)
        return state
    ttl_s = settings.stream_ttl_s
    token = held.token
    try:
        meta = streams.read_meta(r, session_id)
        request = streams.read_request(r, session_id)
        index = int(meta.get("chunks", 0))
        if index > 0:
            # An earlier attempt died after writing text. The text is append-only, so
            # starting over would garble it; end the session and keep the partial text.
            streams.append_error(
                r,
                session_id,
                "worker_lost",
                "The worker generating this answer stopped; the partial answer stays readable.",
                token=token,
                ttl_s=ttl_s,
            )
            return "failed"
        streams.append_status(
            r, session_id, "running", token=token, ttl_s=ttl_s, attempt=int(token)
        )
        provider = provider_for(request.model, settings)
        with contextlib.closing(provider.stream(request, held.is_lost)) as items:
            for item in items:
                if isinstance(item, TextDelta):
                    streams.append_chunk(
                        r,
                        session_id,
                        index,
                        item.text,
                        token=token,
                        maxlen=settings.stream_maxlen,
                        ttl_s=ttl_s,
                    )
                    index += 1
                elif isinstance(item, Finished):
                    streams.append_done(
                        r,
                        session_id,
                        token=token,
                        ttl_s=ttl_s,
                        finish_reason=item.finish_reason,
                        chunks=index,
                        usage=item.usage,
                    )
                    log.info("session %s completed: %d chunks", session_id, index)
                    return "completed"
        log.info("session %s stopped by its lease: %s", session_id, "lost")
        return "stopped"
    except AppendRefused as e:
        log.info("session %s stopped: %s", session_id, e.code)
        return e.code
    except ProviderError as e:
        log.warning("session %s failed at the provider: %s (%s)", session_id, e.code, e.message)
        _end_with_error(r, session_id, e.code, e.message, token=token, ttl_s=ttl_s)
        return "failed"
    except Exception:
        log.exception("session %s failed in the worker", session_id)
        _end_with_error(
            r,
            session_id,
            "internal_error",
            "The worker failed while generating this answer.",
            token=token,
            ttl_s=ttl_s,
        )
        raise
    finally:
        keeper.release(held)


def _end_with_error(
    r: redis.Redis, session_id: str, code: str, message: str, *, token: str, ttl_s: int
) -> None:
    try:
        streams.append_error(r, session_id, code, message, token=token, ttl_s=ttl_s)
    except AppendRefused as e:
        log.info("error event for %s not written: %s", session_id, e.code)
    except redis.RedisError:
        log.exception("error event for %s not written: Redis failed", session_id)
