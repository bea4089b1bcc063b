"""The project's error tree. Map to HTTP status or WebSocket close codes only in `api/`."""

from __future__ import annotations


class StreamsError(Exception):
    """Root of every error this project raises on purpose."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(StreamsError):
    """A setting from the environment is missing or malformed."""

    code = "bad_setting"


class InvalidRequest(StreamsError):
    """A client sent something the contract does not allow."""

    code = "invalid_request"


class UnknownModel(InvalidRequest):
    """The requested model is not on the allowlist."""

    code = "unknown_model"


class Unauthorized(StreamsError):
    """The caller presented no credential this endpoint accepts, or a wrong or expired one."""

    code = "unauthorized"


class ForbiddenOrigin(StreamsError):
    """A page of an origin that may not use the API (neither its own nor ALLOWED_ORIGINS)."""

    code = "forbidden_origin"


class SessionNotFound(StreamsError):
    """No session with that id (never created, or expired)."""

    code = "not_found"


class BadCursor(StreamsError):
    """A cursor that is not a stream entry id (`<ms>-<seq>`)."""

    code = "bad_cursor"


class IdempotencyConflict(StreamsError):
    """An Idempotency-Key was reused with a different request body."""

    code = "idempotency_conflict"


class RequestInProgress(StreamsError):
    """An earlier request with the same Idempotency-Key has not stored its session yet;
    `retry_after_s` says when to try again."""

    code = "request_in_progress"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueUnavailable(StreamsError):
    """The generate job could not be queued (the broker is down); nothing was generated."""

    code = "unavailable"


class TooManyRequests(StreamsError):
    """A per-caller limit refused the request; `retry_after_s` says when to try again."""

    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class AppendRefused(StreamsError):
    """The atomic append refused a write; `code` says why (terminal, lease_lost, ...)."""


class ProviderError(StreamsError):
    """The LLM provider failed; `retryable` says whether trying again may help."""

    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.retryable = retryable


class ProviderRateLimited(ProviderError):
    """The provider answered 429; `retry_after_s` is its Retry-After, when it sent one."""

    code = "provider_rate_limited"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message, status=429, retryable=True)
        self.retry_after_s = retry_after_s
