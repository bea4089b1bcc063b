"""Validate the body of `POST /api/streams/generate` into a `GenerationRequest`."""

from __future__ import annotations

import json
import re
from typing import Any, TypeGuard

from shared.errors import InvalidRequest, UnknownModel
from shared.jobs import PASSED_ON, ROLES, GenerationRequest, Message
from shared.settings import Settings

FIELDS = ("prompt", "messages", "model", "max_tokens", "temperature", *PASSED_ON)
MAX_MODEL_LEN = 200
# What providers accept (OpenAI's limits): function names, stop sequences.
TOOL_NAME_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
_TOOL_NAME_RE = re.compile(TOOL_NAME_PATTERN)
MAX_STOP = 4
MAX_STOP_CHARS = 200
MAX_ID_LEN = 200  # a tool call's id
IMAGE_URL_PATTERN = "^(https?://|data:image/(png|jpeg|gif|webp);base64,)"
_IMAGE_URL_RE = re.compile(IMAGE_URL_PATTERN, re.IGNORECASE)
IMAGE_DETAILS = ("auto", "low", "high")
TOOL_CHOICES = ("none", "auto", "required")
REASONING_EFFORTS = ("low", "medium", "high")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
MAX_SEED = 2**63 - 1
MIN_MAX_TOKENS = 1  # the most is the setting MAX_TOKENS_CAP
MIN_TEMPERATURE = 0
MAX_TEMPERATURE = 2
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


def _fields(item: dict[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    extra = set(item) - set(allowed)
    if extra:
        raise InvalidRequest(f"{where} has unknown field {str(sorted(extra)[0])[:64]!r}")


def _content(raw: Any, where: str, *, images: bool, empty_ok: bool) -> tuple[Any, int]:
    """A message's content: a string or an array of content parts (text, and images where
    `images`); with the images it holds."""
    if raw is None and empty_ok:
        return None, 0
    if isinstance(raw, str):
        if not (_is_text(raw) or (empty_ok and raw == "")):
            raise InvalidRequest(f"{where} must be a non-empty string or an array of parts")
        return raw, 0
    kinds = "text and image_url" if images else "text"
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest(f"{where} must be a non-empty string or an array of {kinds} parts")
    count = 0
    for n, part in enumerate(raw):
        at = f"{where}[{n}]"
        if (
            not isinstance(part, dict)
            or part.get("type") not in (("text", "image_url")[: 1 + images])
        ):
            raise InvalidRequest(f'{at} must be a {kinds} part ({{"type": "text", ...}})')
        if part["type"] == "text":
            _fields(part, at, ("type", "text"))
            if not _is_text(part.get("text")):
                raise InvalidRequest(f"{at}.text must be a non-empty string")
            continue
        _fields(part, at, ("type", "image_url"))
        image = part.get("image_url")
        if not isinstance(image, dict):
            raise InvalidRequest(f"{at}.image_url must be an object with a url")
        _fields(image, f"{at}.image_url", ("url", "detail"))
        url = image.get("url")
        if not isinstance(url, str) or not _IMAGE_URL_RE.match(url) or _LONE_SURROGATE.search(url):
            raise InvalidRequest(
                f"{at}.image_url.url must be an http(s) URL or a data:image/(png|jpeg|gif|webp);"
                "base64 URL"
            )
        if image.get("detail", "auto") not in IMAGE_DETAILS:
            raise InvalidRequest(f"{at}.image_url.detail must be auto, low or high")
        count += 1
    return raw, count


def _text_length(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    return sum(len(p["text"]) for p in content or [] if p.get("type") == "text")


def _tool_calls(raw: Any, where: str, settings: Settings) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw or len(raw) > settings.limits.max_tools:
        raise InvalidRequest(
            f"{where} must be an array of 1 to {settings.limits.max_tools} tool calls (MAX_TOOLS)"
        )
    for n, call in enumerate(raw):
        at = f"{where}[{n}]"
        if not isinstance(call, dict):
            raise InvalidRequest(f"{at} must be an object with id, type and function")
        _fields(call, at, ("id", "type", "function"))
        if not _is_id(call.get("id")) or call.get("type") != "function":
            raise InvalidRequest(f'{at} must have an id (a string) and type "function"')
        function = call.get("function")
        if not isinstance(function, dict):
            raise InvalidRequest(f"{at}.function must be an object with name and arguments")
        _fields(function, f"{at}.function", ("name", "arguments"))
        if not isinstance(function.get("name"), str) or not _TOOL_NAME_RE.match(function["name"]):
            raise InvalidRequest(f"{at}.function.name must match {TOOL_NAME_PATTERN}")
        arguments = function.get("arguments")
        if not isinstance(arguments, str) or _LONE_SURROGATE.search(arguments):
            raise InvalidRequest(f"{at}.function.arguments must be a string (of JSON)")
    return raw


def _is_id(value: Any) -> bool:
    return _is_text(value) and len(value) <= MAX_ID_LEN


def _message(item: Any, at: str, settings: Settings, call_ids: set[str]) -> tuple[Message, int]:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{at} must be an object with role and content")
    role = item.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"{at}.role must be one of {', '.join(ROLES)}")
    if role == "assistant":
        # `reasoning` is what GET /api/streams/<id>/message gives back: accepted, not sent on.
        _fields(item, at, ("role", "content", "tool_calls", "reasoning"))
        reasoning = item.get("reasoning")
        if reasoning is not None and not isinstance(reasoning, str):
            raise InvalidRequest(f"{at}.reasoning must be a string or null")
        calls = item.get("tool_calls")
        if calls is not None:
            calls = _tool_calls(calls, f"{at}.tool_calls", settings)
            call_ids.update(c["id"] for c in calls)
        content, _ = _content(
            item.get("content"), f"{at}.content", images=False, empty_ok=calls is not None
        )
        return Message(role, content, tool_calls=calls), 0
    if role == "tool":
        _fields(item, at, ("role", "content", "tool_call_id"))
        call_id = item.get("tool_call_id")
        if not _is_id(call_id):
            raise InvalidRequest(f"{at}.tool_call_id must name the tool call it answers")
        if call_id not in call_ids:
            raise InvalidRequest(
                f"{at}.tool_call_id {str(call_id)[:64]!r} names no tool call of an earlier "
                "assistant message"
            )
        content, _ = _content(item.get("content"), f"{at}.content", images=False, empty_ok=True)
        return Message(role, content, tool_call_id=call_id), 0
    _fields(item, at, ("role", "content"))
    content, images = _content(
        item.get("content"), f"{at}.content", images=role == "user", empty_ok=False
    )
    return Message(role, content), images


def _messages(raw: Any, settings: Settings) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages must be a non-empty array of {role, content} objects")
    if len(raw) > settings.limits.max_messages:
        raise InvalidRequest(
            f"messages may hold at most {settings.limits.max_messages} messages (MAX_MESSAGES)"
        )
    out = []
    images = 0
    call_ids: set[str] = set()
    for n, item in enumerate(raw):
        message, count = _message(item, f"messages[{n}]", settings, call_ids)
        out.append(message)
        images += count
    if images > settings.limits.max_images:
        raise InvalidRequest(
            f"the messages may hold at most {settings.limits.max_images} images (MAX_IMAGES), "
            f"got {images}"
        )
    total = sum(
        _text_length(m.content) + sum(len(c["function"]["arguments"]) for c in m.tool_calls or [])
        for m in out
    )
    if total > settings.limits.max_messages_chars:
        raise InvalidRequest(
            f"the messages' contents may hold at most {settings.limits.max_messages_chars} "
            f"characters in all (MAX_MESSAGES_CHARS), got {total}"
        )
    return tuple(out)


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _tools(raw: Any, settings: Settings) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw or len(raw) > settings.limits.max_tools:
        raise InvalidRequest(
            f"tools must be an array of 1 to {settings.limits.max_tools} tools (MAX_TOOLS)"
        )
    names: set[str] = set()
    for n, tool in enumerate(raw):
        at = f"tools[{n}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidRequest(
                f'{at} must be a function tool: {{"type": "function", "function"}}'
            )
        _fields(tool, at, ("type", "function"))
        function = tool.get("function")
        if not isinstance(function, dict):
            raise InvalidRequest(f"{at}.function must be an object with a name")
        _fields(function, f"{at}.function", ("name", "description", "parameters", "strict"))
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME_RE.match(name):
            raise InvalidRequest(f"{at}.function.name must match {TOOL_NAME_PATTERN}")
        if name in names:
            raise InvalidRequest(f"{at}.function.name {name!r} is declared twice")
        names.add(name)
        if "description" in function and not isinstance(function["description"], str):
            raise InvalidRequest(f"{at}.function.description must be a string")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise InvalidRequest(f"{at}.function.parameters must be a JSON Schema object")
        if "strict" in function and not isinstance(function["strict"], bool):
            raise InvalidRequest(f"{at}.function.strict must be true or false")
    size = _json_size(raw)
    if size > settings.limits.max_tools_chars:
        raise InvalidRequest(
            f"tools may take at most {settings.limits.max_tools_chars} characters as JSON "
            f"(MAX_TOOLS_CHARS), got {size}"
        )
    return raw


def _tool_choice(raw: Any, tools: list[dict[str, Any]] | None) -> Any:
    names = {t["function"]["name"] for t in tools or []}
    if raw in TOOL_CHOICES:
        if raw == "required" and not names:
            raise InvalidRequest('tool_choice "required" needs tools')
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function" and set(raw) == {"type", "function"}:
        function = raw["function"]
        if isinstance(function, dict) and set(function) == {"name"} and function["name"] in names:
            return raw
    raise InvalidRequest(
        'tool_choice must be "none", "auto", "required" or {"type": "function", '
        '"function": {"name"}} naming one of tools'
    )


def _response_format(raw: Any) -> dict[str, Any]:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in RESPONSE_FORMATS:
        raise InvalidRequest(f"response_format.type must be one of {', '.join(RESPONSE_FORMATS)}")
    if kind != "json_schema":
        _fields(raw, "response_format", ("type",))
        return raw
    _fields(raw, "response_format", ("type", "json_schema"))
    schema = raw.get("json_schema")
    if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
        raise InvalidRequest("response_format.json_schema must be an object with a name")
    _fields(schema, "response_format.json_schema", ("name", "description", "schema", "strict"))
    if "schema" in schema and not isinstance(schema["schema"], dict):
        raise InvalidRequest("response_format.json_schema.schema must be a JSON Schema object")
    return raw


def _stop(raw: Any) -> Any:
    stops = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(stops, list)
        or not 1 <= len(stops) <= MAX_STOP
        or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS and not _LONE_SURROGATE.search(s)
            for s in stops
        )
    ):
        raise InvalidRequest(
            f"stop must be a string or an array of 1 to {MAX_STOP} strings of 1 to "
            f"{MAX_STOP_CHARS} characters"
        )
    return raw


def _reasoning(raw: Any, settings: Settings) -> dict[str, Any]:
    if isinstance(raw, dict) and set(raw) == {"effort"} and raw["effort"] in REASONING_EFFORTS:
        return raw
    if isinstance(raw, dict) and set(raw) == {"max_tokens"}:
        n = raw["max_tokens"]
        if _is_int(n) and 1 <= n <= settings.limits.max_tokens_cap:
            return {"max_tokens": int(n)}
    raise InvalidRequest(
        f'reasoning must be {{"effort": "low"|"medium"|"high"}} or {{"max_tokens": n}} with n '
        f"from 1 to {settings.limits.max_tokens_cap}"
    )


def _options(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The optional fields passed on to the provider, checked."""
    out: dict[str, Any] = {}
    tools = _tools(body["tools"], settings) if body.get("tools") is not None else None
    if tools is not None:
        out["tools"] = tools
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"], tools)
    if body.get("response_format") is not None:
        out["response_format"] = _response_format(body["response_format"])
    top_p = body.get("top_p")
    if top_p is not None:
        if not _is_number(top_p) or not 0 <= top_p <= 1:
            raise InvalidRequest("top_p must be a number from 0 to 1")
        out["top_p"] = float(top_p)
    if body.get("stop") is not None:
        out["stop"] = _stop(body["stop"])
    seed = body.get("seed")
    if seed is not None:
        if not _is_int(seed) or not -MAX_SEED - 1 <= seed <= MAX_SEED:
            raise InvalidRequest("seed must be a whole number (64-bit)")
        out["seed"] = int(seed)
    if body.get("reasoning") is not None:
        out["reasoning"] = _reasoning(body["reasoning"], settings)
    return out


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
    cap = settings.limits.max_tokens_cap
    if max_tokens is not None and (
        not _is_int(max_tokens) or not MIN_MAX_TOKENS <= max_tokens <= cap
    ):
        raise InvalidRequest(f"max_tokens must be a whole number from {MIN_MAX_TOKENS} to {cap}")

    temperature = body.get("temperature")
    if temperature is not None and (
        not _is_number(temperature) or not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE
    ):
        raise InvalidRequest(
            f"temperature must be a number from {MIN_TEMPERATURE} to {MAX_TEMPERATURE}"
        )

    return GenerationRequest(
        model=model,
        messages=messages,
        max_tokens=int(max_tokens) if max_tokens is not None else None,
        temperature=float(temperature) if temperature is not None else None,
        options=_options(body, settings),
    )
