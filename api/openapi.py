"""The OpenAPI 3.1 document of the HTTP contract (DESIGN.md 2.1), served at `/openapi.json`.

One dict, built from settings and from the constants the code enforces: the validator's
limits (`api/validation.py`, the settings' maxima, the model allowlist, the body size) and
the WebSocket close codes (`api/errors.py` `Close`), never numbers of its own. With API
keys configured
it states the credentials every operation but the public ones needs (docs/API.md). To add
an endpoint, add an entry to `paths()`.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from api import auth, chatws, uimessages, validation
from api.backend import backend
from api.errors import Close
from api.routes import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, MAX_IDEMPOTENCY_KEY_LEN
from api.websocket import MAX_MESSAGE_BYTES
from shared.keys import SESSION_ID_RE
from shared.settings import Settings
from shared.store import EventType, Status

bp = Blueprint("openapi", __name__)

JSON = "application/json"
Schema = dict[str, Any]

# With API keys: every operation needs a key, the followers take a stream token instead.
SECURITY_SCHEMES: dict[str, Schema] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key"},
    "streamToken": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "The `streamToken` of a POST's answer: reads its one session only",
    },
}
FOLLOWERS = {"followSse", "followWebSocket"}

_REGEX_SPECIAL = set("\\.^$+{}()|/")


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def glob_regex(pattern: str) -> str:
    """An anchored regular expression (ECMA and Python alike) for an fnmatch pattern."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        end = pattern.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out.append(r"[\s\S]*")  # fnmatch's * takes newlines too; a regex's . does not
        elif c == "?":
            out.append(r"[\s\S]")
        elif end != -1:
            inner = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[^" + inner[1:] + "]" if inner.startswith("!") else "[" + inner + "]")
            i = end
        elif c in _REGEX_SPECIAL or c in "[]*?":
            out.append("\\" + c)
        else:
            out.append(c)
        i += 1
    return "^" + "".join(out) + "$"


def _message_schemas(settings: Settings, non_blank: Schema) -> dict[str, Schema]:
    """A request's messages (DESIGN.md 2.5): text, image parts, tool calls and results."""
    limits = settings.limits
    text = {**non_blank, "maxLength": limits.max_messages_chars}

    def content(*parts: str) -> Schema:
        return {
            "oneOf": [
                text,
                {"type": "array", "minItems": 1, "items": {"oneOf": [_ref(p) for p in parts]}},
            ]
        }

    def message(role: str, body: Schema, required: list[str], **more: Any) -> Schema:
        return {
            "type": "object",
            "required": ["role", *required],
            "additionalProperties": False,
            "properties": {"role": {"const": role}, **body},
            **more,
        }

    calls = {"type": "array", "minItems": 1, "maxItems": limits.max_tools}
    return {
        "TextPart": {
            "type": "object",
            "required": ["type", "text"],
            "additionalProperties": False,
            "properties": {"type": {"const": "text"}, "text": text},
        },
        "ImagePart": {
            "type": "object",
            "required": ["type", "image_url"],
            "additionalProperties": False,
            "description": f"At most {limits.max_images} images in all the messages.",
            "properties": {
                "type": {"const": "image_url"},
                "image_url": {
                    "type": "object",
                    "required": ["url"],
                    "additionalProperties": False,
                    "properties": {
                        "url": {"type": "string", "pattern": validation.IMAGE_URL_PATTERN},
                        "detail": {"enum": list(validation.IMAGE_DETAILS)},
                    },
                },
            },
        },
        "ToolCall": {
            "type": "object",
            "required": ["id", "type", "function"],
            "additionalProperties": False,
            "properties": {
                "id": {**non_blank, "maxLength": validation.MAX_ID_LEN},
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "pattern": validation.TOOL_NAME_PATTERN},
                        "arguments": {"type": "string", "description": "JSON"},
                    },
                },
            },
        },
        "Message": {
            "oneOf": [
                message("system", {"content": content("TextPart")}, ["content"]),
                message("user", {"content": content("TextPart", "ImagePart")}, ["content"]),
                message(
                    "assistant",
                    {
                        "content": {
                            "oneOf": [
                                *content("TextPart")["oneOf"],
                                {"const": ""},
                                {"type": "null"},
                            ]
                        },
                        "tool_calls": {**calls, "items": _ref("ToolCall")},
                        "reasoning": {
                            "type": ["string", "null"],
                            "description": "What GET /message gives back; not sent on.",
                        },
                    },
                    [],
                    # Without tool calls, text; with them, the content may be empty.
                    anyOf=[
                        {"required": ["tool_calls"]},
                        {"required": ["content"], "properties": {"content": content("TextPart")}},
                    ],
                ),
                message(
                    "tool",
                    {
                        "tool_call_id": {
                            **non_blank,
                            "maxLength": validation.MAX_ID_LEN,
                            "description": "The id of a tool call of an earlier assistant "
                            "message (else 400).",
                        },
                        "content": {
                            "oneOf": [
                                *content("TextPart")["oneOf"],
                                {"const": ""},
                                {"type": "null"},
                            ]
                        },
                    },
                    ["tool_call_id"],
                ),
            ],
        },
    }


def _function(**function: Schema) -> Schema:
    """`{"type": "function", "function": {...}}` with `function`'s fields, `name` required."""
    return {
        "type": "object",
        "required": ["type", "function"],
        "additionalProperties": False,
        "properties": {
            "type": {"const": "function"},
            "function": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": function,
            },
        },
    }


def _option_schemas(settings: Settings, non_blank: Schema) -> dict[str, Schema]:
    """The optional fields passed on to the provider (DESIGN.md 2.5)."""
    limits = settings.limits
    return {
        "tools": {
            "type": "array",
            "minItems": 1,
            "maxItems": limits.max_tools,
            "description": f"Names unique; at most {limits.max_tools_chars} characters as JSON.",
            "items": _function(
                name={"type": "string", "pattern": validation.TOOL_NAME_PATTERN},
                description={"type": "string"},
                parameters={"type": "object"},
                strict={"type": "boolean"},
            ),
        },
        "tool_choice": {
            "description": '"required" needs tools; a function names one of tools.',
            "oneOf": [
                {"enum": list(validation.TOOL_CHOICES)},
                _function(name={"type": "string"}),
            ],
        },
        "response_format": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["type"],
                    "additionalProperties": False,
                    "properties": {"type": {"enum": ["text", "json_object"]}},
                },
                {
                    "type": "object",
                    "required": ["type", "json_schema"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"const": "json_schema"},
                        "json_schema": {
                            "type": "object",
                            "required": ["name"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "description": {"type": "string"},
                                "schema": {"type": "object"},
                                "strict": {"type": "boolean"},
                            },
                        },
                    },
                },
            ],
        },
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "stop": {
            "oneOf": [
                {"type": "string", "minLength": 1, "maxLength": validation.MAX_STOP_CHARS},
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": validation.MAX_STOP,
                    "items": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": validation.MAX_STOP_CHARS,
                    },
                },
            ]
        },
        "seed": {
            "type": "integer",
            "minimum": -validation.MAX_SEED - 1,
            "maximum": validation.MAX_SEED,
        },
        "reasoning": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["effort"],
                    "additionalProperties": False,
                    "properties": {"effort": {"enum": list(validation.REASONING_EFFORTS)}},
                },
                {
                    "type": "object",
                    "required": ["max_tokens"],
                    "additionalProperties": False,
                    "properties": {
                        "max_tokens": {
                            "type": "integer",
                            "minimum": validation.MIN_MAX_TOKENS,
                            "maximum": limits.max_tokens_cap,
                        }
                    },
                },
            ]
        },
    }


def _schemas(settings: Settings) -> dict[str, Schema]:
    # Not only white space, as Python's str.strip() sees it: ECMA's \s leaves out the
    # separators U+001C-U+001F and U+0085, which the validator strips.
    non_blank = {"type": "string", "minLength": 1, "pattern": r"[^\s\x1c-\x1f\x85]"}
    status = {"type": "string", "enum": [s.value for s in Status]}
    time = {"type": ["string", "null"], "description": "ISO 8601, UTC, milliseconds"}
    allowed = "|".join(f"(?:{glob_regex(p)})" for p in settings.limits.model_allowlist)
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                        "message": {"type": "string", "minLength": 1},
                    },
                },
            },
        },
        **_message_schemas(settings, non_blank),
        "GenerateRequest": {
            "type": "object",
            "description": "Exactly one of prompt or messages. A null max_tokens or "
            "temperature means the default.",
            "additionalProperties": False,
            "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
            "properties": {
                "prompt": {**non_blank, "maxLength": settings.limits.max_prompt_chars},
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.limits.max_messages,
                    "items": _ref("Message"),
                    "description": "The contents hold at most "
                    f"{settings.limits.max_messages_chars} characters in all.",
                },
                "model": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": validation.MAX_MODEL_LEN,
                    "allOf": [
                        {"pattern": non_blank["pattern"]},
                        {"pattern": allowed},
                        {"pattern": validation.MODEL_ID_PATTERN},
                    ],
                    "default": settings.limits.default_model,
                    "description": "Matches one of the model allowlist's patterns "
                    f"({', '.join(settings.limits.model_allowlist)}), else 400 unknown_model.",
                },
                "max_tokens": {
                    "type": ["integer", "null"],
                    "minimum": validation.MIN_MAX_TOKENS,
                    "maximum": settings.limits.max_tokens_cap,
                },
                "temperature": {
                    "type": ["number", "null"],
                    "minimum": validation.MIN_TEMPERATURE,
                    "maximum": validation.MAX_TEMPERATURE,
                },
                **_option_schemas(settings, non_blank),
            },
        },
        "ChatRequest": {
            "type": "object",
            "description": "What the AI SDK's DefaultChatTransport posts: the chat id, the "
            "UI messages with their parts, the trigger and messageId, and the transport's "
            "extra `body` fields, which are the options of GenerateRequest. Parts taken: "
            f"{uimessages.PART_TYPES}; `source-*`, `data-*` and `reasoning-file` parts are "
            "ignored. Reasoning parts are not sent on. `file` parts must be images (user "
            "messages); tool parts with an outcome (`output-available`, `output-error`, "
            "`output-denied`) become the assistant's tool_calls and the tool messages "
            "answering them, those without one are left out. The converted messages are "
            "checked as GenerateRequest's messages are; a 400 names the UI field "
            "(`messages[1].parts[0].type`).",
            "required": ["id", "messages"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": uimessages.ID_PATTERN},
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.limits.max_messages,
                    "items": _ref("UIMessage"),
                },
                "trigger": {"enum": list(uimessages.TRIGGERS), "default": "submit-message"},
                "messageId": {
                    "type": ["string", "null"],
                    "pattern": uimessages.ID_PATTERN,
                    "description": "With regenerate-message: the id the answer's message "
                    "takes (else `msg-<sessionId>`)",
                },
                "model": {"$ref": "#/components/schemas/GenerateRequest/properties/model"},
                "max_tokens": {
                    "$ref": "#/components/schemas/GenerateRequest/properties/max_tokens"
                },
                "temperature": {
                    "$ref": "#/components/schemas/GenerateRequest/properties/temperature"
                },
                **{
                    name: {"$ref": f"#/components/schemas/GenerateRequest/properties/{name}"}
                    for name in _option_schemas(settings, non_blank)
                },
            },
        },
        "UIMessage": {
            "type": "object",
            "required": ["role", "parts"],
            "properties": {
                "id": {"type": "string"},
                "role": {"enum": list(uimessages.UI_ROLES)},
                "parts": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"type": "string"}},
                    },
                },
            },
        },
        "UIMessageChunk": {
            "type": "object",
            "description": "One `data:` line of the UI message stream protocol (v1), valid "
            "against the `ai` package's uiMessageChunkSchema: start (messageId), start-step, "
            "reasoning-start/-delta/-end, text-start/-delta/-end, tool-input-start/-delta/"
            "-available, finish-step, finish (finishReason), error (errorText), abort. "
            "`data: [DONE]` ends the stream.",
            "required": ["type"],
            "properties": {"type": {"type": "string"}},
        },
        "Created": {
            "type": "object",
            "required": ["sessionId", "status", "model", "streamUrl", "wsUrl", "createdAt"],
            "additionalProperties": False,
            "properties": {
                "sessionId": _ref("SessionId"),
                "status": status,
                "model": {"type": "string"},
                "streamUrl": {"type": "string", "pattern": "^https?://"},
                "wsUrl": {"type": "string", "pattern": "^wss?://"},
                "createdAt": time,
                "streamToken": {
                    "type": "string",
                    "description": "With API keys: opens this session's WebSocket and SSE as "
                    "`?token=`, read only, until `tokenExpiresAt`",
                },
                "tokenExpiresAt": time,
            },
        },
        "Status": status,
        "SessionPage": {
            "type": "object",
            "required": ["sessions", "nextCursor"],
            "additionalProperties": False,
            "properties": {
                "sessions": {"type": "array", "items": _ref("Info")},
                "nextCursor": {"type": ["string", "null"]},
            },
        },
        "Info": {
            "type": "object",
            "required": ["sessionId", "status", "model", "chunks", "createdAt", "updatedAt"],
            "additionalProperties": False,
            "properties": {
                "sessionId": _ref("SessionId"),
                "status": status,
                "model": {"type": ["string", "null"]},
                "chunks": {"type": "integer", "minimum": 0},
                "createdAt": time,
                "updatedAt": time,
                "finishReason": {"type": "string"},
                "usage": {"type": "object"},
                "error": {"type": "object", "required": ["code", "message"]},
            },
        },
        "Text": {
            "type": "object",
            "required": ["sessionId", "status", "text", "chunks"],
            "additionalProperties": False,
            "properties": {
                "sessionId": _ref("SessionId"),
                "status": status,
                "text": {"type": "string"},
                "chunks": {"type": "integer", "minimum": 0},
            },
        },
        "AssistantMessage": {
            "type": "object",
            "required": ["sessionId", "status", "message"],
            "additionalProperties": False,
            "properties": {
                "sessionId": _ref("SessionId"),
                "status": status,
                "message": {
                    "type": "object",
                    "required": ["role", "content", "reasoning"],
                    "additionalProperties": False,
                    "description": "As a request's messages take it back.",
                    "properties": {
                        "role": {"const": "assistant"},
                        "content": {"type": ["string", "null"]},
                        "reasoning": {"type": ["string", "null"]},
                        "tool_calls": {"type": "array", "items": _ref("ToolCall")},
                    },
                },
                "finishReason": {"type": "string"},
                "usage": {"type": "object"},
            },
        },
        "Cancelled": {
            "type": "object",
            "required": ["sessionId", "status"],
            "additionalProperties": False,
            "properties": {"sessionId": _ref("SessionId"), "status": status},
        },
        "SessionId": {"type": "string", "pattern": f"^{SESSION_ID_RE.pattern}$"},
        "SseEvent": {
            "type": "object",
            "description": "One event of the stream (OpenAPI 3.2 would call this itemSchema).",
            "required": ["event", "data"],
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"},
                "event": {"enum": [t.value for t in EventType]},
                "data": {"type": "string", "contentMediaType": JSON},
            },
        },
        "Checks": {
            "type": "object",
            "required": ["redis", "broker"],
            "properties": {
                "redis": {"enum": ["ok", "down"]},
                "broker": {"enum": ["ok", "down"]},
            },
        },
    }


def _error(description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


def _ok(description: str, schema: Schema, media: str = JSON) -> Schema:
    return {"description": description, "content": {media: {"schema": schema}}}


ERRORS = {
    "400": _error(
        "Malformed request: bad JSON, schema, unknown model or cursor; invalid_host for a "
        "`Host` that is not one of the service's own; bad_request for a request the HTTP "
        "parser refuses"
    ),
    "404": _error("No such session (or endpoint)"),
    "405": _error("The endpoint does not take this method; `Allow` names those it takes"),
    "401": _error("Missing or wrong credentials (only with API keys configured)"),
    "403": _error(
        "forbidden_origin: the request's `Origin` is neither the API's own nor in "
        "ALLOWED_ORIGINS (browsers only: a request without `Origin` is never refused for it)"
    ),
    "409": {
        **_error(
            "idempotency_conflict: the Idempotency-Key was used with a different body; "
            "request_in_progress: its first request has not stored the session yet (with "
            "Retry-After)"
        ),
        "headers": {
            "Retry-After": {
                "description": "With request_in_progress: seconds to wait before retrying",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        },
    },
    "413": _error("The body is larger than the limit"),
    "429": {
        **_error(
            "A per-caller limit (docs/API.md, Limits): too_many_requests (creations per "
            "window, running generations) or too_many_followers"
        ),
        "headers": {
            "Retry-After": {
                "required": True,
                "description": "Seconds to wait before trying again",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        },
    },
    "503": _error("Redis or the job queue is unavailable"),
    # Answered by the web server's HTTP parser, on any path, before the app sees it.
    "414": _error("uri_too_long: the request line is longer than the server reads"),
    "431": _error("headers_too_large: too many headers, or one too large"),
}


def _errors(*codes: str) -> dict[str, Schema]:
    return {code: {"$ref": f"#/components/responses/E{code}"} for code in codes}


def _public_file(operation_id: str, summary: str) -> Schema:
    """A file served to anyone under a path prefix (`{filename}`)."""
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "security": [],
            "parameters": [
                {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {"description": "The file", "content": {"*/*": {}}},
                **_errors("404"),
            },
        }
    }


def _session_param() -> Schema:
    return {"$ref": "#/components/parameters/sessionId"}


def _ws_description(settings: Settings) -> str:
    """What the WebSocket sends, and each close code of `Close` with its cause."""
    per_min = settings.api.ws_client_messages_per_min or "unlimited"
    return (
        "OpenAPI has no WebSocket: this is the upgrade request. After the 101 the server "
        "sends one JSON text frame per event and closes "
        f"{Close.NORMAL} after the terminal one. A refusal is an `error` frame and a close: "
        f"an unknown session not_found and {Close.NOT_FOUND}, a malformed cursor bad_cursor "
        f"and {Close.BAD_CURSOR}, missing or wrong credentials (with API keys) unauthorized "
        f"and {Close.UNAUTHORIZED}, a page of a foreign origin (not the API's own nor in "
        f"ALLOWED_ORIGINS) forbidden_origin and {Close.FORBIDDEN_ORIGIN}, too many followers "
        f"(of the session or the caller) too_many_followers and {Close.TOO_MANY}. Redis "
        f"unavailable closes with {Close.TRY_AGAIN_LATER}, a server restart with "
        f"{Close.SERVICE_RESTART} (reconnect with the cursor). The server ignores what the "
        f"client sends; a message over {MAX_MESSAGE_BYTES} bytes closes with "
        f"{Close.MESSAGE_TOO_BIG}, more than {per_min} messages, pings and pongs a minute "
        f"(or a missed pong) with {Close.POLICY_VIOLATION}, a frame that breaks the protocol "
        f"with {Close.PROTOCOL_ERROR}, text that is not UTF-8 with {Close.INVALID_DATA}."
    )


def _idempotency_param() -> Schema:
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "description": "A retried POST with the same key and body returns the same session.",
        "schema": {
            "type": "string",
            "pattern": r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$",
            "maxLength": MAX_IDEMPOTENCY_KEY_LEN,
        },
    }


def _chat_stream() -> Schema:
    """A UI message stream answer: its media type and headers."""
    text = {"required": True, "schema": {"type": "string"}}
    return {
        "headers": {
            uimessages.STREAM_HEADER: {**text, "schema": {"const": uimessages.STREAM_VERSION}},
            "X-Session-Id": {**text, "description": "The session answering"},
            "X-Message-Id": {**text, "description": "The assistant message's id"},
        },
        "content": {"text/event-stream": {"schema": _ref("UIMessageChunk")}},
    }


def paths(settings: Settings) -> dict[str, Schema]:
    """Every route: path -> method -> operation."""
    cursor = (
        "A stream entry id (`<ms>-<seq>`) to resume after; empty means the beginning. Parts of "
        "20 digits are taken too, up to 2^64-1; anything else is a 400 bad_cursor."
    )
    cursor_schema = {"type": "string", "pattern": "^([0-9]{1,19}-[0-9]{1,19})?$"}
    return {
        "/api/streams/generate": {
            "post": {
                "operationId": "createStream",
                "summary": "Validate, store the request, enqueue generation",
                "parameters": [_idempotency_param()],
                "requestBody": {
                    "required": True,
                    "description": f"At most {settings.limits.max_body_bytes} bytes.",
                    "content": {JSON: {"schema": _ref("GenerateRequest")}},
                },
                "responses": {
                    "202": {
                        "description": "Queued (or the earlier session of this Idempotency-Key)",
                        "headers": {
                            "Location": {
                                "required": True,
                                "schema": {"type": "string", "pattern": "^/api/streams/"},
                            }
                        },
                        "content": {JSON: {"schema": _ref("Created")}},
                    },
                    **_errors("400", "403", "409", "413", "429", "503"),
                },
            },
            "get": {
                "operationId": "streamInfo",
                "summary": "Status, chunk count and result of a session",
                "parameters": [
                    {
                        "name": "sessionId",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                    }
                ],
                "responses": {
                    "200": _ok("The session", _ref("Info")),
                    **_errors("400", "404", "503"),
                },
            },
        },
        "/api/streams": {
            "get": {
                "operationId": "listStreams",
                "summary": "The caller's sessions, newest first (with API keys only; else 404)",
                "parameters": [
                    {"name": "status", "in": "query", "schema": _ref("Status")},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                        "description": f"1 to {LIST_LIMIT_MAX}, default {LIST_LIMIT_DEFAULT}",
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "The `nextCursor` of the previous page",
                    },
                ],
                "responses": {
                    "200": _ok("A page of sessions", _ref("SessionPage")),
                    **_errors("400", "404", "503"),
                },
            }
        },
        "/api/streams/{sessionId}": {
            "parameters": [_session_param()],
            "get": {
                "operationId": "followSse",
                "summary": "Follow as Server-Sent Events until the terminal event",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "schema": cursor_schema,
                        "description": cursor,
                    },
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "schema": cursor_schema,
                        "description": cursor + " Wins over `after`.",
                    },
                ],
                "responses": {
                    "200": _ok(
                        "`id:`, `event:` and `data:` (the WebSocket frame's JSON) per event; "
                        "`: ping` comments keep it alive; an `error` event is followed by the "
                        "same data as a `stream_error` event",
                        _ref("SseEvent"),
                        "text/event-stream",
                    ),
                    "204": {
                        "description": "The session has ended and nothing comes after the "
                        "cursor: an EventSource stops reconnecting"
                    },
                    **_errors("400", "403", "404", "429", "503"),
                },
            },
            "delete": {
                "operationId": "stopStream",
                "summary": "Stop generation",
                "responses": {
                    "200": _ok("It had already ended: its final status", _ref("Cancelled")),
                    "202": _ok("It was live and is now cancelled", _ref("Cancelled")),
                    **_errors("403", "404", "503"),
                },
            },
        },
        "/api/streams/{sessionId}/ws": {
            "parameters": [_session_param()],
            "get": {
                "operationId": "followWebSocket",
                "summary": "Follow over WebSocket (DESIGN.md 2.2)",
                "description": _ws_description(settings),
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "schema": cursor_schema,
                        "description": cursor,
                    },
                ],
                "x-websocket": {
                    "frames": "application/json",
                    "closeCodes": sorted(int(code) for code in Close),
                },
                "responses": {
                    "101": {"description": "Switching Protocols: the WebSocket follows"},
                    "400": _error("Not an upgrade request, or a broken handshake"),
                },
            },
        },
        "/api/streams/{sessionId}/message": {
            "parameters": [_session_param()],
            "get": {
                "operationId": "streamMessage",
                "summary": "The assistant message so far: text, reasoning and tool calls",
                "responses": {
                    "200": _ok("The message so far", _ref("AssistantMessage")),
                    **_errors("404", "503"),
                },
            },
        },
        "/api/streams/{sessionId}/text": {
            "parameters": [_session_param()],
            "get": {
                "operationId": "streamText",
                "summary": "Everything generated so far as one string",
                "responses": {
                    "200": _ok("The text so far", _ref("Text")),
                    **_errors("404", "503"),
                },
            },
        },
        "/api/chat": {
            "post": {
                "operationId": "chat",
                "summary": "The AI SDK's chat request: start a session, answer it as UI "
                "message chunks (DESIGN.md 2.6)",
                "description": "Started, limited and credited as POST /api/streams/generate "
                "(Idempotency-Key included), and recorded as the chat's active stream. "
                "Closing the response never stops the generation; DELETE "
                "/api/chat/{chatId}/stream does.",
                "parameters": [_idempotency_param()],
                "requestBody": {
                    "required": True,
                    "description": f"At most {settings.limits.max_body_bytes} bytes.",
                    "content": {JSON: {"schema": _ref("ChatRequest")}},
                },
                "responses": {
                    "200": {**_chat_stream(), "description": "The session as UI message chunks"},
                    **_errors("400", "403", "409", "413", "429", "503"),
                },
            }
        },
        "/api/chat/{chatId}/stream": {
            "parameters": [
                {
                    "name": "chatId",
                    "in": "path",
                    "required": True,
                    "description": "The chat's id (the request's `id`); anything else is a 400.",
                    "schema": {"type": "string", "pattern": uimessages.ID_PATTERN},
                }
            ],
            "get": {
                "operationId": "chatStream",
                "summary": "The chat's active stream from its first chunk, then live "
                "(useChat's resume)",
                "responses": {
                    "200": {
                        **_chat_stream(),
                        "description": "The active session as UI message chunks",
                    },
                    "204": {
                        "description": "The chat has no active stream (none, ended, or "
                        "another caller's)"
                    },
                    **_errors("400", "403", "429", "503"),
                },
            },
            "delete": {
                "operationId": "stopChat",
                "summary": "Stop the chat's active generation, as DELETE /api/streams/{id}",
                "responses": {
                    "200": _ok("It had already ended: its final status", _ref("Cancelled")),
                    "202": _ok("It was live and is now cancelled", _ref("Cancelled")),
                    "404": _error("The chat has no recorded session (never, or cleared)"),
                    **_errors("400", "403", "503"),
                },
            },
        },
        "/api/chat/ws": {
            "get": {
                "operationId": "chatWebSocket",
                "summary": "The AI SDK's WebSocketChatTransport protocol (DESIGN.md 2.6)",
                "description": "OpenAPI has no WebSocket: this is the upgrade request. "
                "Client frames: send (a ChatRequest's fields, the extra ones in `body`, "
                "credentials and Idempotency-Key in `headers`), resume (`id`, "
                "`lastSequence`), abort (`requestId`: stop relaying it; the generation goes "
                "on). Server frames: start, chunk (`requestId`, `sequence` from 0: the "
                "chunk's position in the session's chunk list, the same on every connection, "
                "`chunk`: a UIMessageChunk), end, no-active, error (`errorText`). With API "
                "keys each frame's `headers.Authorization` (or the upgrade's) names the "
                f"caller. At most {chatws.MAX_REQUESTS} requests at once per connection; "
                f"messages up to {settings.limits.max_body_bytes} bytes "
                f"({Close.MESSAGE_TOO_BIG} past it); a frame without a requestId closes with "
                f"{Close.POLICY_VIOLATION}; a page of a foreign origin with "
                f"{Close.FORBIDDEN_ORIGIN}.",
                "security": [],
                "responses": {
                    "101": {"description": "Switching Protocols: the chat protocol follows"},
                    "400": _error("Not an upgrade request, or a broken handshake"),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is alive",
                "security": [],
                "responses": {
                    "200": _ok(
                        "Alive",
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        },
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Redis and the broker answer",
                "security": [],
                "responses": {
                    "200": _ok(
                        "Ready",
                        {
                            "type": "object",
                            "required": ["status", "checks"],
                            "properties": {"status": {"const": "ok"}, "checks": _ref("Checks")},
                        },
                    ),
                    "503": _ok(
                        "Not ready: the error names what is down",
                        {
                            "allOf": [_ref("Error")],
                            "required": ["checks"],
                            "properties": {"checks": _ref("Checks")},
                        },
                    ),
                },
            }
        },
        "/": {
            "get": {
                "operationId": "demoPage",
                "summary": "The demo page",
                "security": [],
                "responses": {"200": _ok("The page", {"type": "string"}, "text/html")},
            }
        },
        "/static/{filename}": _public_file(
            "staticFile", "The demo page's files and the browser client, rstreams.js"
        ),
        "/examples/react/": {
            "get": {
                "operationId": "reactExample",
                "summary": "The React example page (web/example), once built",
                "security": [],
                "responses": {
                    "200": _ok("The page", {"type": "string"}, "text/html"),
                    **_errors("404"),
                },
            }
        },
        "/examples/react/{filename}": _public_file(
            "reactExampleFile", "The React example page's files"
        ),
        "/examples/chat/": {
            "get": {
                "operationId": "chatExample",
                "summary": "The AI SDK chat example page (web/chat-example), once built",
                "security": [],
                "responses": {
                    "200": _ok("The page", {"type": "string"}, "text/html"),
                    **_errors("404"),
                },
            }
        },
        "/examples/chat/{filename}": _public_file(
            "chatExampleFile", "The AI SDK chat example page's files"
        ),
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Metrics in Prometheus text format (docs/OPERATIONS.md); with API "
                "keys configured, any valid key",
                "responses": {
                    "200": _ok("The metrics", {"type": "string"}, "text/plain"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": _ok("OpenAPI 3.1", {"type": "object"})},
            }
        },
    }


# OpenAI's Responses API (DESIGN.md 2.7, docs/API.md section 15): its own error shape.
RESPONSE_STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled", "incomplete")
RESPONSE_EVENT_TYPES = (
    "response.created",
    "response.queued",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.reasoning_text.delta",
    "response.function_call_arguments.delta",
    "response.output_text.done",
    "response.reasoning_text.done",
    "response.function_call_arguments.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
)


def _responses_schemas(settings: Settings) -> dict[str, Schema]:
    """The Responses API's request, Response object, events and error."""
    text_parts = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}
    item = {
        "type": "object",
        "description": 'An input item: a message (`type` "message" or absent; `role` user, '
        "system, developer or assistant; `content` a string or `input_text`/`input_image` "
        "parts, `output_text` in assistant messages), a `function_call` (`call_id`, `name`, "
        "`arguments`), a `function_call_output` (`call_id`, `output`) or a `reasoning` item "
        "(accepted, not sent on). Other types are a 400 unsupported_parameter.",
        "properties": {
            "type": {"enum": ["message", "function_call", "function_call_output", "reasoning"]},
            "role": {"enum": ["user", "system", "developer", "assistant"]},
            "content": text_parts,
            "call_id": {"type": "string"},
            "name": {"type": "string"},
            "arguments": {"type": "string"},
            "output": text_parts,
        },
    }
    nullable_number = {"type": ["number", "null"]}
    output_item = {
        "type": "object",
        "required": ["type", "id"],
        "description": "`reasoning` (`summary`, `content` of `reasoning_text`), `message` "
        "(`role` assistant, `content` of `output_text`) or `function_call` (`call_id`, "
        "`name`, `arguments`)",
        "properties": {
            "type": {"enum": ["reasoning", "message", "function_call"]},
            "id": {"type": "string"},
            "status": {"enum": ["in_progress", "completed", "incomplete"]},
        },
    }
    return {
        "ResponsesRequest": {
            "type": "object",
            "required": ["model", "input"],
            "description": "Fields not listed here (previous_response_id, conversation, "
            "prompt, ...) are a 400 unsupported_parameter naming them; user, "
            "safety_identifier, prompt_cache_key and service_tier are accepted and ignored.",
            "properties": {
                "model": {"type": "string"},
                "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": item}]},
                "instructions": {"type": "string"},
                "max_output_tokens": {
                    "type": "integer",
                    "minimum": validation.MIN_MAX_TOKENS,
                    "maximum": settings.limits.max_tokens_cap,
                },
                "temperature": {
                    "type": "number",
                    "minimum": validation.MIN_TEMPERATURE,
                    "maximum": validation.MAX_TEMPERATURE,
                },
                "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                "tools": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "name"],
                        "properties": {
                            "type": {"const": "function"},
                            "name": {"type": "string", "pattern": validation.TOOL_NAME_PATTERN},
                            "description": {"type": "string"},
                            "parameters": {"type": "object"},
                            "strict": {"type": "boolean"},
                        },
                    },
                },
                "tool_choice": {
                    "oneOf": [
                        {"enum": ["none", "auto", "required"]},
                        {
                            "type": "object",
                            "required": ["type", "name"],
                            "properties": {
                                "type": {"const": "function"},
                                "name": {"type": "string"},
                            },
                        },
                    ]
                },
                "reasoning": {
                    "type": "object",
                    "properties": {"effort": {"enum": list(validation.REASONING_EFFORTS)}},
                },
                "text": {"type": "object", "properties": {"format": {"type": "object"}}},
                "metadata": {
                    "type": "object",
                    "maxProperties": 16,
                    "additionalProperties": {"type": "string", "maxLength": 512},
                },
                "background": {"type": "boolean"},
                "stream": {"type": "boolean"},
                "store": {"const": True},
            },
        },
        "Response": {
            "type": "object",
            "required": ["id", "object", "created_at", "status", "model", "output"],
            "properties": {
                "id": {"type": "string", "pattern": "^resp_"},
                "object": {"const": "response"},
                "created_at": {"type": "number"},
                "status": {"enum": list(RESPONSE_STATUSES)},
                "model": {"type": "string"},
                "output": {"type": "array", "items": output_item},
                "usage": {"type": ["object", "null"]},
                "error": {"type": ["object", "null"]},
                "incomplete_details": {"type": ["object", "null"]},
                "background": {"type": "boolean"},
                "metadata": {"type": "object"},
                "temperature": nullable_number,
                "top_p": nullable_number,
            },
        },
        "ResponseEvent": {
            "type": "object",
            "required": ["type", "sequence_number"],
            "description": "One Server-Sent Event `event: <type>`, `data: <this>`; the "
            "sequence number is the same on every API process and replay.",
            "properties": {
                "type": {"enum": list(RESPONSE_EVENT_TYPES)},
                "sequence_number": {"type": "integer", "minimum": 0},
            },
        },
        "OpenAIError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "code", "param"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "code": {"type": ["string", "null"]},
                        "param": {"type": ["string", "null"]},
                    },
                }
            },
        },
    }


def _openai_errors(*codes: str) -> dict[str, Schema]:
    described = {
        "400": "A field out of range, an unknown model or an unsupported parameter (`param`)",
        "401": "Missing or wrong API key (only with API keys configured)",
        "404": "No such response",
        "429": "A per-caller limit, with Retry-After",
        "503": "Redis or the job queue is unavailable",
    }
    return {
        code: {
            "description": described[code],
            "content": {JSON: {"schema": _ref("OpenAIError")}},
        }
        for code in codes
    }


def _responses_paths() -> dict[str, Schema]:
    """The Responses API's routes."""
    response_id = {
        "name": "responseId",
        "in": "path",
        "required": True,
        "description": "`resp_<sessionId>`; anything else is a 404.",
        "schema": {"type": "string"},
    }
    events = {"schema": _ref("ResponseEvent")}
    return {
        "/v1/responses": {
            "post": {
                "operationId": "createResponse",
                "summary": "Start a response: the event stream (`stream`), the queued Response "
                "(`background`), or the Response once it has ended (neither)",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("ResponsesRequest")}},
                },
                "responses": {
                    "200": {
                        "description": "The Response object, or its events",
                        "content": {
                            JSON: {"schema": _ref("Response")},
                            "text/event-stream": events,
                        },
                    },
                    **_openai_errors("400", "401", "429", "503"),
                },
            }
        },
        "/v1/responses/{responseId}": {
            "parameters": [response_id],
            "get": {
                "operationId": "retrieveResponse",
                "summary": "The Response object, or with stream=true its events after "
                "starting_after, then live",
                "parameters": [
                    {"name": "stream", "in": "query", "schema": {"enum": ["true", "false"]}},
                    {
                        "name": "starting_after",
                        "in": "query",
                        "description": "A sequence number: the events after it",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The Response object, or its events",
                        "content": {
                            JSON: {"schema": _ref("Response")},
                            "text/event-stream": events,
                        },
                    },
                    **_openai_errors("400", "401", "404", "429", "503"),
                },
            },
        },
        "/v1/responses/{responseId}/cancel": {
            "parameters": [response_id],
            "post": {
                "operationId": "cancelResponse",
                "summary": "Stop the generation: the Response with its final status",
                "responses": {
                    "200": _ok("The Response object", _ref("Response")),
                    **_openai_errors("401", "404", "503"),
                },
            },
        },
    }


def build(settings: Settings) -> dict[str, Any]:
    """The whole OpenAPI document for `settings`."""
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Resumable LLM streams",
            "version": "1",
            "description": "Generation runs on workers; every chunk is kept in a Redis Stream "
            "that any client can replay from its cursor and follow live. Every error is "
            '`{"error": {"code", "message"}}`; any endpoint answers 405 with `Allow` to a '
            "method it does not take. Browsers: CORS (preflights included) for the API's own "
            "origin and those of ALLOWED_ORIGINS; pages of any other origin get no CORS "
            "headers, and their POST, DELETE, SSE and WebSocket requests are refused "
            "(docs/API.md). Every endpoint but /healthz and /readyz answers 400 invalid_host "
            "to a `Host` that is not one of the service's own (PUBLIC_URL, ALLOWED_HOSTS, "
            "the loopback names); a request the HTTP parser refuses gets 400 bad_request, "
            "414 uri_too_long or 431 headers_too_large, JSON too.",
        },
        "paths": {**paths(settings), **_responses_paths()},
        "components": {
            "schemas": {**_schemas(settings), **_responses_schemas(settings)},
            "responses": {f"E{code}": response for code, response in ERRORS.items()},
            "parameters": {
                "sessionId": {
                    "name": "sessionId",
                    "in": "path",
                    "required": True,
                    "description": "A session id (21 characters); anything else is a 404.",
                    "schema": {"type": "string"},
                }
            },
            "securitySchemes": SECURITY_SCHEMES,
        },
    }
    if settings.api.has_api_keys:
        doc["security"] = [{"bearer": []}]
        for path_item in doc["paths"].values():
            for operation in path_item.values():
                if not isinstance(operation, dict) or operation.get("security") == []:
                    continue  # path parameters, or a public operation
                if operation.get("operationId") in FOLLOWERS:
                    operation["security"] = [{"bearer": []}, {"streamToken": []}]
                operation["responses"].setdefault("401", _errors("401")["401"])
    return doc


@bp.get("/openapi.json")
@auth.public
def openapi() -> Response:
    """This API's OpenAPI document."""
    return jsonify(build(backend().settings))
