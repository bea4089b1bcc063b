"""One OpenAI-compatible streaming chat-completions client over `requests`.

Serves OpenRouter (the default), OpenAI, vLLM, Ollama, LM Studio and llama.cpp's server:
base URL, key and attribution headers are settings.
"""

from __future__ import annotations

import codecs
import json
import logging
import time
from collections.abc import Generator, Iterator
from typing import Any

import requests
import urllib3

from shared.backoff import compute_backoff
from shared.errors import ProviderError, ProviderRateLimited
from shared.jobs import GenerationRequest
from shared.settings import Settings
from worker.providers.base import Finished, Resume, ShouldStop, StreamItem
from worker.providers.deltas import DeltaReader

log = logging.getLogger(__name__)

_STOP_POLL_S = 0.1


class _Stopped(Exception):
    """`should_stop()` turned true."""


def sse_data(chunks: Iterator[bytes], should_stop: ShouldStop) -> Iterator[str]:
    """The `data` of each Server-Sent Event in a byte stream.

    Lines end with LF, CRLF or CR; `:` lines are comments (OpenRouter sends
    `: OPENROUTER PROCESSING`); several `data:` lines of one event join with a newline.
    `should_stop` is checked after every network read, comments included.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    data: list[str] = []
    for chunk in chunks:
        if should_stop():
            raise _Stopped
        pending += decoder.decode(chunk)
        while True:
            cut = min((i for i in (pending.find("\n"), pending.find("\r")) if i >= 0), default=-1)
            if cut < 0:
                break
            if pending[cut] == "\r" and cut + 1 == len(pending):
                break  # a CR at the end may be the first half of a CRLF
            line = pending[:cut]
            skip = 2 if pending.startswith("\r\n", cut) else 1
            pending = pending[cut + skip :]
            if line == "":
                if data:
                    yield "\n".join(data)
                    data = []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                if field == "data":
                    data.append(value[1:] if value.startswith(" ") else value)
    pending += decoder.decode(b"", final=True)
    if pending.startswith("data"):
        _, _, value = pending.rstrip("\r\n").partition(":")
        data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _pieces(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives.

    `iter_lines()` can hold back the last line (psf/requests#3577), and
    `iter_content(chunk_size=None)` reads a body without chunked encoding to its end
    before it yields; `read1` returns whatever the socket has, chunked or not.
    """
    while piece := response.raw.read1(65536):
        yield piece


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300].strip() or response.reason
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:500]
    if isinstance(error, str):
        return error[:500]
    return response.reason or f"HTTP {response.status_code}"


def _retry_after_s(response: requests.Response) -> float | None:
    raw = response.headers.get("Retry-After", "").strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def _status_error(response: requests.Response, api_key: str) -> ProviderError:
    status = response.status_code
    reason = _error_message(response)
    if api_key:
        reason = reason.replace(api_key, "[redacted]")  # some providers echo the key back
    message = f"The provider answered {status}: {reason}"
    if status == 429:
        return ProviderRateLimited(message, retry_after_s=_retry_after_s(response))
    if status in (401, 403):
        return ProviderError(message, code="provider_auth", status=status)
    if status >= 500 or status in (408, 409):
        return ProviderError(message, code="provider_unavailable", status=status, retryable=True)
    return ProviderError(message, code="provider_rejected", status=status)


class ChatCompletionsProvider:
    """Streams `POST {base}/chat/completions` with `stream: true`."""

    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.session = session or requests.Session()

    def _body(self, request: GenerationRequest, resume: Resume | None) -> dict[str, Any]:
        messages = [m.to_dict() for m in request.messages]
        if resume and resume.text:
            # Assistant prefill: the model continues this text instead of starting over.
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
        body.update(request.options)
        return body

    def _headers(self) -> dict[str, str]:
        s = self.settings
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if s.provider.api_key:
            headers["Authorization"] = f"Bearer {s.provider.api_key}"
        if s.provider.http_referer:
            headers["HTTP-Referer"] = s.provider.http_referer
        if s.provider.x_title:
            headers["X-Title"] = s.provider.x_title
        return headers

    def stream(
        self, request: GenerationRequest, should_stop: ShouldStop, resume: Resume | None = None
    ) -> Generator[StreamItem, None, None]:
        """Yield the answer's deltas (text, reasoning, tool calls), then `Finished`; retry only
        before the first one.

        With `resume`, the text written so far goes as a trailing assistant message, which
        models that support prefill continue (`PREFILL_MODELS` says which).
        """
        attempt = 0
        while True:
            started = False
            try:
                for item in self._attempt(request, should_stop, resume):
                    started = started or not isinstance(item, Finished)
                    yield item
                return
            except _Stopped:
                return
            except ProviderError as e:
                if started or not e.retryable or attempt >= self.settings.provider.max_retries:
                    raise
                delay = self._backoff_s(attempt, e)
                attempt += 1
                log.warning(
                    "provider failed before the first token (%s); retry %d in %.2f s",
                    e.code,
                    attempt,
                    delay,
                )
                if self._sleep_unless_stopped(delay, should_stop):
                    return

    def _backoff_s(self, attempt: int, error: ProviderError) -> float:
        s = self.settings
        delay = compute_backoff(
            attempt, start_s=s.provider.backoff_base_s, max_s=s.provider.backoff_max_s, jitter=True
        )
        if isinstance(error, ProviderRateLimited) and error.retry_after_s is not None:
            delay = max(delay, error.retry_after_s)
        return min(delay, s.provider.backoff_max_s)

    @staticmethod
    def _sleep_unless_stopped(delay_s: float, should_stop: ShouldStop) -> bool:
        deadline = time.monotonic() + delay_s
        while (left := deadline - time.monotonic()) > 0:
            if should_stop():
                return True
            time.sleep(min(_STOP_POLL_S, left))
        return should_stop()

    def _attempt(
        self, request: GenerationRequest, should_stop: ShouldStop, resume: Resume | None
    ) -> Iterator[StreamItem]:
        s = self.settings
        url = f"{s.provider.base_url}/chat/completions"
        try:
            response = self.session.post(
                url,
                json=self._body(request, resume),
                headers=self._headers(),
                stream=True,
                timeout=(s.provider.connect_timeout_s, s.provider.read_timeout_s),
            )
        except requests.Timeout as e:
            raise ProviderError(
                "The provider did not answer in time.", code="provider_timeout", retryable=True
            ) from e
        except requests.RequestException as e:
            raise ProviderError(
                f"The provider could not be reached ({type(e).__name__}).",
                code="provider_unreachable",
                retryable=True,
            ) from e
        # Closed here, in the thread that reads it: closing from another thread blocks
        # until bytes arrive (psf/requests#5372).
        with response:
            if response.status_code != 200:
                raise _status_error(response, s.provider.api_key)
            yield from self._read(response, should_stop)

    def _read(self, response: requests.Response, should_stop: ShouldStop) -> Iterator[StreamItem]:
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        reader = DeltaReader()
        produced = done = False
        try:
            for data in sse_data(_pieces(response), should_stop):
                if data.strip() == "[DONE]":
                    done = True
                    break
                event = _event(data)
                if isinstance(event.get("usage"), dict):
                    usage = event["usage"]
                for choice in event.get("choices") or []:
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    for item in reader.items(choice.get("delta")):
                        produced = True
                        yield item
                    if choice.get("finish_reason"):
                        finish_reason = str(choice["finish_reason"])
        except (urllib3.exceptions.HTTPError, OSError) as e:
            timed_out = isinstance(e, urllib3.exceptions.ReadTimeoutError | TimeoutError)
            raise ProviderError(
                "The provider went silent mid-answer."
                if timed_out
                else f"The connection to the provider broke ({type(e).__name__}).",
                code="provider_timeout" if timed_out else "provider_unreachable",
                retryable=not produced,
            ) from e
        if finish_reason is None and not done:
            raise ProviderError(
                "The provider's stream ended before the answer was finished.",
                code="provider_incomplete",
                retryable=not produced,
            )
        yield from reader.flush()
        # Some servers say `stop` for an answer that calls tools (OpenAI itself when
        # `tool_choice` names the function): a tool loop waits for `tool_calls`.
        if reader.has_tool_calls and finish_reason in (None, "stop", "function_call"):
            finish_reason = "tool_calls"
        yield Finished(finish_reason or "stop", usage)


def _event(data: str) -> dict[str, Any]:
    """One event's JSON; a provider's error object raises."""
    try:
        event = json.loads(data)
    except ValueError as e:
        raise ProviderError(
            "The provider sent an event that is not JSON.", code="provider_bad_response"
        ) from e
    if not isinstance(event, dict):
        return {}
    error = event.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else str(error)
        code = error.get("code") if isinstance(error, dict) else None
        raise ProviderError(
            f"The provider failed mid-answer: {message}",
            code="provider_error",
            status=code if isinstance(code, int) else None,
        )
    return event
