"""Validate the body of `POST /api/streams/generate` into a `GenerationRequest`."""

from __future__ import annotations

import re
from typing import Any, TypeGuard

from shared.errors import InvalidRequest, UnknownModel
from shared.jobs import ROLES, GenerationRequest, Message
from shared.settings import Settings

FIELDS = ("prompt", "messages", "model", "max_tokens", "temperature")
MAX_MODEL_LEN = 200
# A model id has no control character or line separator: it is logged and sent upstream,
# where a line break could forge a line. ECMA and Python regular expressions alike (the
# lookahead stops Python's `$` from matching before a final newline).
MODEL_ID_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]+$(?!\\n)"
_MODEL_ID_RE = re.compile(MODEL_ID_PATTERN)
# JSON may escape half a surrogate pair ("\ud800"); Python decodes it to a string that
# has no UTF-8 form, which Redis (and every client) would then choke on.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_whole_number(raw: str, name: str, lowest: int, highest: int) -> int:
    """A query parameter's whole number from `lowest` to `highest`; raises `InvalidRequest`."""
    # ASCII digits only: str.isdigit() also takes "²" and "¹⁰", which int() refuses; and
    # few of them: int() refuses more than 4300 digits.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18 and lowest <= int(raw) <= highest):
        raise InvalidRequest(f"{name} must be a whole number from {lowest} to {highest}")
    return int(raw)


def _is_int(value: Any) -> bool:
    # JSON has one number type: 8.0 is the integer 8 (JSON Schema says so too).
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value: Any) -> TypeGuard[str]:
    """A string with something besides whitespace, and valid Unicode throughout."""
    return isinstance(value, str) and bool(value.strip()) and not _LONE_SURROGATE.search(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _messages(raw: Any, settings: Settings) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages must be a non-empty array of {role, content} objects")
    if len(raw) > settings.limits.max_messages:
        raise InvalidRequest(
            f"messages may hold at most {settings.limits.max_messages} messages (MAX_MESSAGES)"
        )
    out = []
    for n, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidRequest(f"messages[{n}] must be an object with role and content")
        extra = set(item) - {"role", "content"}
        if extra:
            raise InvalidRequest(f"messages[{n}] has unknown field {sorted(extra)[0]!r}")
        role, content = item.get("role"), item.get("content")
        if role not in ROLES:
            raise InvalidRequest(f"messages[{n}].role must be one of {', '.join(ROLES)}")
        if not _is_text(content):
            raise InvalidRequest(f"messages[{n}].content must be a non-empty string")
        out.append(Message(role, content))
    total = sum(len(m.content) for m in out)
    if total > settings.limits.max_messages_chars:
        raise InvalidRequest(
            f"the messages' contents may hold at most {settings.limits.max_messages_chars} "
            f"characters in all (MAX_MESSAGES_CHARS), got {total}"
        )
    return tuple(out)


def parse_generate(body: Any, settings: Settings) -> GenerationRequest:
    """Check a decoded JSON body against the contract; raises `InvalidRequest`."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = [k for k in body if k not in FIELDS]
    if unknown:
        raise InvalidRequest(
            f"unknown field {str(unknown[0])[:64]!r}; allowed: {', '.join(FIELDS)}"
        )
    has_prompt, has_messages = "prompt" in body, "messages" in body
    if has_prompt == has_messages:
        raise InvalidRequest("send exactly one of prompt or messages")
    if has_prompt:
        prompt = body["prompt"]
        if not _is_text(prompt):
            raise InvalidRequest("prompt must be a non-empty string")
        if len(prompt) > settings.limits.max_prompt_chars:
            raise InvalidRequest(
                f"prompt may hold at most {settings.limits.max_prompt_chars} characters "
                f"(MAX_PROMPT_CHARS), got {len(prompt)}"
            )
        messages: tuple[Message, ...] = (Message("user", prompt),)
    else:
        messages = _messages(body["messages"], settings)

    model = body.get("model", settings.limits.default_model)
    if not _is_text(model) or len(model) > MAX_MODEL_LEN or not _MODEL_ID_RE.match(model):
        raise InvalidRequest(
            f"model must be a non-empty string of at most {MAX_MODEL_LEN} characters, "
            "without control characters or line breaks"
        )
    if not settings.limits.is_model_allowed(model):
        raise UnknownModel(f"model {model!r} is not available here")

    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        not _is_int(max_tokens) or not 1 <= max_tokens <= settings.limits.max_tokens_cap
    ):
        raise InvalidRequest(
            f"max_tokens must be a whole number from 1 to {settings.limits.max_tokens_cap}"
        )

    temperature = body.get("temperature")
    if temperature is not None and (not _is_number(temperature) or not 0 <= temperature <= 2):
        raise InvalidRequest("temperature must be a number from 0 to 2")

    return GenerationRequest(
        model=model,
        messages=messages,
        max_tokens=int(max_tokens) if max_tokens is not None else None,
        temperature=float(temperature) if temperature is not None else None,
    )
