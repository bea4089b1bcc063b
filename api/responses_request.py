"""The body of `POST /v1/responses` (DESIGN.md 2.7) as our generation request.

The Responses API's fields are checked here under their own names, turned into the
body `POST /api/streams/generate` takes (input items to chat messages, flat function
tools to chat tools) and validated once more by `api.validation.parse_generate`, so both
routes share every limit. What the Responses API has and this service does not serve is
a 400 naming the parameter (`ParamError.param`), never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.validation import parse_generate
from shared.errors import InvalidRequest, UnknownModel
from shared.jobs import GenerationRequest
from shared.settings import Settings

# Served: sent on to the provider, or shaping the answer.
FIELDS = (
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning",
    "text",
    "metadata",
    "background",
    "stream",
    "stream_options",
    "store",
    "include",
    "truncation",
)
# Hints for OpenAI's own service, meaningless to other providers: accepted, not sent on.
IGNORED = ("user", "safety_identifier", "prompt_cache_key", "service_tier")
METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512
# OpenAI's reasoning efforts that a chat-completions provider understands.
REASONING_EFFORTS = ("low", "medium", "high")
INPUT_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}


class ParamError(InvalidRequest):
    """A 400 about one request parameter (`param`, as OpenAI's error names it)."""

    def __init__(self, param: str | None, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.param = param


def _unsupported(param: str, what: str) -> ParamError:
    return ParamError(param, f"{what} is not supported here", code="unsupported_parameter")


@dataclass(frozen=True)
class ResponsesRequest:
    """A checked `POST /v1/responses`: the generation, and the fields that shape the
    Response object (`echo`, stored with the session) and the HTTP answer."""

    generation: GenerationRequest
    echo: dict[str, Any]
    background: bool
    stream: bool


def _text_parts(raw: Any, at: str, kinds: tuple[str, ...]) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        raise ParamError(at, f"{at} must be a string or a non-empty array of content parts")
    out = []
    for n, part in enumerate(raw):
        if not isinstance(part, dict) or part.get("type") not in kinds:
            raise ParamError(f"{at}[{n}].type", f"{at}[{n}] must be a {' or '.join(kinds)} part")
        if not isinstance(part.get("text"), str):
            raise ParamError(f"{at}[{n}].text", f"{at}[{n}].text must be a string")
        out.append(part["text"])
    return out


def _user_content(raw: Any, at: str) -> Any:
    """A user or system message's content as chat content parts."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list) or not raw:
        raise ParamError(at, f"{at} must be a string or a non-empty array of content parts")
    parts: list[dict[str, Any]] = []
    for n, part in enumerate(raw):
        where = f"{at}[{n}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_text":
            if not isinstance(part.get("text"), str):
                raise ParamError(f"{where}.text", f"{where}.text must be a string")
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            if part.get("file_id") is not None or not isinstance(part.get("image_url"), str):
                raise ParamError(
                    f"{where}.image_url",
                    f"{where} must carry an image_url (an http(s) or data: URL); file_id is "
                    "not supported here",
                )
            image = {"url": part["image_url"]}
            if part.get("detail") is not None:
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            raise _unsupported(f"{where}.type", "input_file")
        else:
            raise ParamError(f"{where}.type", f"{where} must be an input_text or input_image part")
    return parts


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """`instructions` and `input` as chat messages."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ParamError("instructions", "instructions must be a string")
        messages.append({"role": "system", "content": instructions})
    raw = body.get("input")
    if isinstance(raw, str):
        if not raw.strip():
            raise ParamError("input", "input must not be empty")
        messages.append({"role": "user", "content": raw})
        return messages
    if not isinstance(raw, list) or not raw:
        raise ParamError("input", "input must be a string or a non-empty array of input items")
    for n, item in enumerate(raw):
        at = f"input[{n}]"
        if not isinstance(item, dict):
            raise ParamError(at, f"{at} must be an input item (an object)")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            role = INPUT_ROLES.get(role) if isinstance(role, str) else None
            if role is None:
                raise ParamError(f"{at}.role", f"{at}.role must be one of {', '.join(INPUT_ROLES)}")
            if role == "assistant":
                kinds = ("output_text", "input_text", "refusal")
                text = "".join(_text_parts(item.get("content"), f"{at}.content", kinds))
                _assistant(messages)["content"] = (_assistant(messages)["content"] or "") + text
            else:
                content = _user_content(item.get("content"), f"{at}.content")
                messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
            if not all(isinstance(v, str) for v in (call_id, name, arguments)):
                raise ParamError(at, f"{at} must have call_id, name and arguments (strings)")
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            _assistant(messages).setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(item.get("call_id"), str):
                raise ParamError(f"{at}.call_id", f"{at}.call_id must name the function call")
            text = "".join(_text_parts(output, f"{at}.output", ("input_text", "output_text")))
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind == "reasoning":
            continue  # a previous answer's reasoning, given back: not sent on
        else:
            raise _unsupported(f"{at}.type", f"input item type {str(kind)[:64]!r}")
    return messages


def _assistant(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message at the end of `messages`, appended if there is none: an
    answer's text and its function calls are one chat message."""
    if not messages or messages[-1]["role"] != "assistant":
        messages.append({"role": "assistant", "content": None})
    return messages[-1]


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise ParamError("tools", "tools must be an array of function tools")
    out = []
    for n, tool in enumerate(raw):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise _unsupported(
                f"tools[{n}].type",
                f"tool type {str(kind)[:64]!r} (only function tools are; no built-in tools)",
            )
        extra = set(tool) - {"type", "name", "description", "parameters", "strict"}
        if extra:
            raise _unsupported(f"tools[{n}].{sorted(extra)[0]}", f"tools[{n}].{sorted(extra)[0]}")
        function = {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool
        }
        if function.get("parameters") is None:
            function.pop("parameters", None)
        if function.get("strict") is None:
            function.pop("strict", None)
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(raw: Any) -> Any:
    if raw in ("none", "auto", "required"):
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("name"), str):
        return {"type": "function", "function": {"name": raw["name"]}}
    raise ParamError(
        "tool_choice",
        'tool_choice must be "none", "auto", "required" or {"type": "function", "name"}',
    )


def _reasoning(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        raise ParamError("reasoning", "reasoning must be an object")
    extra = set(raw) - {"effort", "summary", "generate_summary"}
    if extra:
        raise _unsupported(f"reasoning.{sorted(extra)[0]}", f"reasoning.{sorted(extra)[0]}")
    effort = raw.get("effort")
    if effort is None:
        return None
    if effort not in REASONING_EFFORTS:
        raise ParamError(
            "reasoning.effort", f"reasoning.effort must be one of {', '.join(REASONING_EFFORTS)}"
        )
    return {"effort": effort}


def _response_format(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or set(raw) - {"format", "verbosity"}:
        raise ParamError("text", 'text must be {"format": {...}}')
    if raw.get("verbosity") is not None:
        raise _unsupported("text.verbosity", "text.verbosity")
    fmt = raw.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise ParamError(
        "text.format.type", "text.format.type must be text, json_object or json_schema"
    )


def _metadata(raw: Any) -> dict[str, str]:
    if (
        not isinstance(raw, dict)
        or len(raw) > METADATA_MAX_KEYS
        or not all(
            isinstance(k, str)
            and len(k) <= METADATA_MAX_KEY_CHARS
            and isinstance(v, str)
            and len(v) <= METADATA_MAX_VALUE_CHARS
            for k, v in raw.items()
        )
    ):
        raise ParamError(
            "metadata",
            f"metadata must be an object of at most {METADATA_MAX_KEYS} string values, keys of "
            f"at most {METADATA_MAX_KEY_CHARS} and values of at most {METADATA_MAX_VALUE_CHARS} "
            "characters",
        )
    return raw


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ParamError(name, f"{name} must be true or false")
    return value


def _check_served(body: dict[str, Any]) -> None:
    """Refuse what the Responses API has and this service does not serve."""
    for name in body:
        if name not in FIELDS and name not in IGNORED and body[name] is not None:
            raise _unsupported(str(name)[:64], str(name)[:64])
    if body.get("store") is False:
        raise _unsupported("store", "store: false (every response is stored, for STREAM_TTL_S)")
    if body.get("parallel_tool_calls") is False:
        raise _unsupported("parallel_tool_calls", "parallel_tool_calls: false")
    if body.get("include"):
        raise _unsupported("include", "include")
    if body.get("truncation") not in (None, "disabled"):
        raise _unsupported("truncation", 'truncation other than "disabled"')
    options = body.get("stream_options")
    if options is not None and (
        not isinstance(options, dict) or set(options) - {"include_obfuscation"}
    ):
        raise ParamError("stream_options", 'stream_options takes only "include_obfuscation"')


def parse_responses(body: Any, settings: Settings) -> ResponsesRequest:
    """Check a `POST /v1/responses` body; raises `ParamError` (or `UnknownModel`)."""
    if not isinstance(body, dict):
        raise ParamError(None, "the body must be a JSON object")
    _check_served(body)
    if "model" not in body:
        raise ParamError("model", "model is required")
    if "input" not in body:
        raise ParamError("input", "input is required")
    generate: dict[str, Any] = {"model": body["model"], "messages": _messages(body)}
    tools = _tools(body["tools"]) if body.get("tools") else None
    if tools:
        generate["tools"] = tools
    if body.get("tool_choice") is not None:
        generate["tool_choice"] = _tool_choice(body["tool_choice"])
    reasoning = _reasoning(body["reasoning"]) if body.get("reasoning") is not None else None
    if reasoning is not None:
        generate["reasoning"] = reasoning
    if body.get("text") is not None:
        response_format = _response_format(body["text"])
        if response_format is not None:
            generate["response_format"] = response_format
    for ours, theirs in (
        ("max_tokens", "max_output_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
    ):
        if body.get(theirs) is not None:
            generate[ours] = body[theirs]
    metadata = _metadata(body["metadata"]) if body.get("metadata") is not None else {}
    background = _flag(body, "background", False)
    stream = _flag(body, "stream", False)
    try:
        generation = parse_generate(generate, settings)
    except UnknownModel as e:
        raise ParamError("model", e.message, code="model_not_found") from e
    except ParamError:
        raise
    except InvalidRequest as e:
        raise ParamError(None, e.message, code=e.code) from e
    echo = {
        "instructions": body.get("instructions"),
        "max_output_tokens": generation.max_tokens,
        "temperature": generation.temperature,
        "top_p": generation.options.get("top_p"),
        "tools": [{"type": "function", **t["function"]} for t in tools or []],
        "tool_choice": body.get("tool_choice") or "auto",
        "reasoning": reasoning,
        "text": body.get("text") or {"format": {"type": "text"}},
        "metadata": metadata,
        "background": background,
    }
    return ResponsesRequest(generation, echo, background, stream)
