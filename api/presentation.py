"""How the API shows stored sessions: the contract's camelCase stream info object
(DESIGN.md 2.1) and its timestamps. The store returns records; this turns them into JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.store import Answer, SessionMeta


def iso_ms(ms: int | None) -> str | None:
    """`1700000000123` -> `2023-11-14T22:13:20.123Z`."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def stream_info(meta: SessionMeta) -> dict[str, Any]:
    """The contract's stream info object (`GET /api/streams/generate?sessionId=`)."""
    out: dict[str, Any] = {
        "sessionId": meta.session_id,
        "status": meta.status.value,
        "model": meta.model,
        "chunks": meta.chunks,
        "createdAt": iso_ms(meta.created_ms),
        "updatedAt": iso_ms(meta.updated_ms),
    }
    if meta.finish_reason:
        out["finishReason"] = meta.finish_reason
    if meta.usage is not None:
        out["usage"] = meta.usage
    if meta.error is not None:
        out["error"] = meta.error
    return out


def message(answer: Answer) -> dict[str, Any]:
    """The assistant message generated so far, as a client appends it to `messages` to
    continue the conversation (`GET /api/streams/<id>/message`, DESIGN.md 2.5)."""
    meta = answer.meta
    message: dict[str, Any] = {
        "role": "assistant",
        "content": answer.text or None,
        "reasoning": answer.reasoning or None,
    }
    if answer.tool_calls:
        message["tool_calls"] = answer.tool_calls
    out: dict[str, Any] = {"sessionId": meta.session_id, "status": meta.status.value}
    out["message"] = message
    if meta.finish_reason:
        out["finishReason"] = meta.finish_reason
    if meta.usage is not None:
        out["usage"] = meta.usage
    return out
