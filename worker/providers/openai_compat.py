"""An OpenAI-compatible streaming chat-completions client over `requests`.

Serves OpenRouter (the default), OpenAI, vLLM, Ollama, llama.cpp's server and LM Studio:
the base URL, the key and OpenRouter's attribution headers come from `Settings`.

Errors before the first token that may pass (5xx, 429, timeouts, refused connections) are
retried with capped exponential backoff and full jitter; once text has been yielded nothing
is retried, because the answer is append-only and a second attempt would repeat it.
"""

from __future__ import annotations

import codecs
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests
import urllib3

from shared.errors import ProviderError, ProviderRateLimited
from shared.jobs import GenerationRequest
from shared.settings import Settings
from worker.providers.base import Finished, Resume, TextDelta

log = logging.getLogger(__name__)

STOP_POLL_S = 0.1  # how often a backoff sleep looks at `should_stop`
READ_SIZE = 65536
_MAX_MESSAGE = 500


class _Stopped(Exception):
    """`should_stop()` turned true while reading."""


def _data_value(line: str) -> str | None:
    """The value of a `data` field line, or None for any other field."""
    name, colon, value = line.partition(":")
    if name != "data":
        return None
    if colon and value.startswith(" "):
        value = value[1:]
    return value


def iter_sse_data(chunks: Iterator[bytes], on_line: Callable[[], None] | None = None) -> Iterator[str]:
    """The `data` of each Server-Sent Event in a byte stream, as text.

    Decodes UTF-8 incrementally (a character may be cut between network reads); lines end
    with LF, CRLF or CR; `:` lines are comments; the `data` lines of one event join with
    `\\n`; other fields (`event`, `id`, `retry`) are ignored. `on_line` runs after every
    line, comments included, and may raise to stop reading.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    data: list[str] = []

    def take(line: str) -> str | None:
        if on_line is not None:
            on_line()
        if line == "":
            if not data:
                return None
            event = "\n".join(data)
            data.clear()
            return event
        if line.startswith(":"):
            return None
        value = _data_value(line)
        if value is not None:
            data.append(value)
        return None

    for chunk in chunks:
        pending += decoder.decode(chunk)
        start = 0
        while True:
            lf, cr = pending.find("\n", start), pending.find("\r", start)
            cut = lf if cr < 0 else cr if lf < 0 else min(lf, cr)
            if cut < 0:
                break
            if pending[cut] == "\r":
                if cut + 1 == len(pending):
                    break  # a CR at the end of a read may be the first half of a CRLF
                end = cut + 2 if pending[cut + 1] == "\n" else cut + 1
            else:
                end = cut + 1
            event = take(pending[start:cut])
            start = end
            if event is not None:
                yield event
        pending = pending[start:]
    pending += decoder.decode(b"", final=True)
    # The body ended: a last line without its line end still counts, and so does an event
    # whose blank line never came.
    for line in pending.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line:
            event = take(line)
            if event is not None:
                yield event
    if data:
        yield "\n".join(data)


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives, whatever its framing.

    `iter_lines()` can hold back the last line (psf/requests#3577), and
    `iter_content(chunk_size=None)` reads a body that is not chunked (HTTP/1.0 style,
    ended by closing the connection) to its very end before yielding anything; `read1`
    returns what the socket has, chunked or not.
    """
    while piece := response.raw.read1(READ_SIZE, decode_content=True):
        yield piece


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "[redacted]") if secret else text


def _provider_message(response: requests.Response) -> str:
    """The provider's own words from an error response, shortened."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:_MAX_MESSAGE] if text else (response.reason or "")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:_MAX_MESSAGE]
    if isinstance(error, str) and error:
        return error[:_MAX_MESSAGE]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"][:_MAX_MESSAGE]
    return response.reason or ""


def parse_retry_after(raw: str | None) -> float | None:
    """Seconds from a `Retry-After` header; None when absent or an HTTP date."""
    if not raw:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if value != value or value < 0:  # NaN or negative
        return None
    return value


def _status_error(response: requests.Response, api_key: str) -> ProviderError:
    """The error for a non-200 answer that came before any event."""
    status = response.status_code
    said = _redact(_provider_message(response), api_key)
    message = f"The provider answered {status}" + (f": {said}" if said else "")
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return ProviderRateLimited(message, retry_after_s=retry_after)
    if status in (401, 403):
        return ProviderError(message, code="provider_auth", status=status, retryable=False)
    if status == 408:
        return ProviderError(message, code="provider_timeout", status=status, retryable=True)
    if status >= 500:
        return ProviderError(message, code="provider_unavailable", status=status, retryable=True)
    return ProviderError(message, code="provider_rejected", status=status, retryable=False)


class OpenAICompatProvider:
    """Streams `POST {provider_base_url}/chat/completions` with `stream: true`."""

    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        """Use `settings` for the endpoint, key, timeouts and retries; `session` for pooling."""
        self.settings = settings
        self.session = session if session is not None else requests.Session()

    def request_body(
        self, request: GenerationRequest, resume: Resume | None = None
    ) -> dict[str, Any]:
        """The JSON body for `request`; with `resume`, its text goes as an assistant prefill."""
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if resume is not None and resume.text:
            messages.append({"role": "assistant", "content": resume.text})
        body: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    def request_headers(self) -> dict[str, str]:
        """Headers for the request; no `Authorization` without a key (local servers)."""
        s = self.settings
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if s.provider_api_key:
            headers["Authorization"] = f"Bearer {s.provider_api_key}"
        if s.provider_http_referer:
            headers["HTTP-Referer"] = s.provider_http_referer
        if s.provider_x_title:
            headers["X-Title"] = s.provider_x_title
        return headers

    def stream(
        self,
        request: GenerationRequest,
        should_stop: Callable[[], bool],
        resume: Resume | None = None,
    ) -> Iterator[TextDelta | Finished]:
        """Yield the answer's `TextDelta`s then one `Finished`; retry only before the first."""
        attempt = 0
        while True:
            if should_stop():
                return
            started = False
            try:
                for item in self._attempt(request, should_stop, resume):
                    if isinstance(item, TextDelta):
                        started = True
                    yield item
                return
            except _Stopped:
                return
            except ProviderError as e:
                if started or not e.retryable or attempt >= self.settings.provider_max_retries:
                    raise
                attempt += 1
                delay = self._backoff_s(attempt, e)
                log.warning(
                    "provider %s failed before the first token (%s, status %s); "
                    "retry %d of %d in %.2f s",
                    request.model,
                    e.code,
                    e.status,
                    attempt,
                    self.settings.provider_max_retries,
                    delay,
                )
                if self._sleep_unless_stopped(delay, should_stop):
                    return

    def _backoff_s(self, attempt: int, error: ProviderError) -> float:
        """Full-jitter exponential backoff for retry `attempt` (1-based), capped."""
        s = self.settings
        cap = max(0.0, s.provider_backoff_max_s)
        delay = random.uniform(0.0, min(cap, s.provider_backoff_base_s * 2 ** (attempt - 1)))
        if isinstance(error, ProviderRateLimited) and error.retry_after_s is not None:
            delay = max(delay, error.retry_after_s)
        return min(delay, cap)

    @staticmethod
    def _sleep_unless_stopped(delay_s: float, should_stop: Callable[[], bool]) -> bool:
        """Sleep `delay_s`, looking at `should_stop` every 0.1 s; True when it turned true."""
        deadline = time.monotonic() + delay_s
        while (left := deadline - time.monotonic()) > 0:
            if should_stop():
                return True
            time.sleep(min(STOP_POLL_S, left))
        return should_stop()

    def _attempt(
        self,
        request: GenerationRequest,
        should_stop: Callable[[], bool],
        resume: Resume | None,
    ) -> Iterator[TextDelta | Finished]:
        """One HTTP request and its stream; raises `ProviderError` or `_Stopped`."""
        s = self.settings
        try:
            response = self.session.post(
                f"{s.provider_base_url.rstrip('/')}/chat/completions",
                json=self.request_body(request, resume),
                headers=self.request_headers(),
                stream=True,
                timeout=(s.provider_connect_timeout_s, s.provider_read_timeout_s),
            )
        except requests.Timeout as e:  # before ConnectionError: ConnectTimeout is both
            raise ProviderError(
                f"The provider did not answer within the timeout ({type(e).__name__}).",
                code="provider_timeout",
                retryable=True,
            ) from e
        except requests.ConnectionError as e:
            raise ProviderError(
                f"The provider could not be reached ({type(e).__name__}).",
                code="provider_unreachable",
                retryable=True,
            ) from e
        except requests.RequestException as e:
            raise ProviderError(
                f"The request to the provider failed ({type(e).__name__}).",
                code="provider_unreachable",
                retryable=False,
            ) from e
        # Closed here, in the thread that reads it: closing from another thread blocks
        # until bytes arrive (psf/requests#5372).
        try:
            if response.status_code != 200:
                raise _status_error(response, s.provider_api_key)
            yield from self._events(response, should_stop)
        finally:
            response.close()

    def _events(
        self, response: requests.Response, should_stop: Callable[[], bool]
    ) -> Iterator[TextDelta | Finished]:
        """Turn the SSE body into `TextDelta`s and one `Finished`."""

        def check_stop() -> None:
            if should_stop():
                raise _Stopped

        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        produced = False
        try:
            for data in iter_sse_data(_body_chunks(response), check_stop):
                if data.strip() == "[DONE]":
                    yield Finished(finish_reason or "stop", usage)
                    return
                try:
                    event = json.loads(data)
                except ValueError as e:
                    raise ProviderError(
                        "The provider sent an event that is not JSON.",
                        code="provider_bad_response",
                        retryable=False,
                    ) from e
                if not isinstance(event, dict):
                    continue
                error = event.get("error")
                if error:
                    raise self._event_error(error)
                if isinstance(event.get("usage"), dict):
                    usage = event["usage"]
                choices = event.get("choices")
                if not isinstance(choices, list) or not choices:
                    continue
                choice = choices[0]
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta")
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    produced = True
                    yield TextDelta(content)
                if choice.get("finish_reason"):
                    finish_reason = str(choice["finish_reason"])
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as e:
            timed_out = isinstance(
                e, urllib3.exceptions.TimeoutError | requests.Timeout | TimeoutError
            )
            raise ProviderError(
                "The provider went silent for longer than the read timeout."
                if timed_out
                else f"The connection to the provider broke ({type(e).__name__}).",
                code="provider_timeout" if timed_out else "provider_unreachable",
                retryable=not produced,
            ) from e
        if finish_reason is not None:
            yield Finished(finish_reason, usage)
            return
        raise ProviderError(
            "The provider's stream ended before the answer was finished.",
            code="provider_incomplete",
            retryable=not produced,
        )

    def _event_error(self, error: Any) -> ProviderError:
        """The error for an `error` object sent as an event after the 200."""
        if isinstance(error, dict):
            message = str(error.get("message") or error)
            code = error.get("code")
        else:
            message, code = str(error), None
        status = code if isinstance(code, int) and not isinstance(code, bool) else None
        return ProviderError(
            _redact(message, self.settings.provider_api_key)[:_MAX_MESSAGE],
            code="provider_error",
            status=status,
            retryable=False,
        )
