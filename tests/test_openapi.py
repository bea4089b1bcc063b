"""The OpenAPI document matches the routes, and no generated request breaks the API."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api import validation
from api.app import create_app
from api.errors import Close
from api.openapi import build, glob_regex
from api.validation import parse_generate
from shared.errors import InvalidRequest
from shared.settings import ApiSettings, LimitsSettings, Settings
from tests import client
from tests.procs import Api

# Flask answers these itself on every route.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
# Generated examples per mode (positive, negative); the run stays well under a minute.
MAX_EXAMPLES = 200
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


TEXT = st.text(st.characters(exclude_categories=())) | st.sampled_from(
    ["\ud800", "demo\udfff", "demo", " ", "", "user", "x" * 300]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "robot"]), "content": JSON_VALUES}
)
BODIES = JSON_VALUES | st.dictionaries(
    st.sampled_from(["prompt", "messages", "model", "max_tokens", "temperature", "stream"]),
    JSON_VALUES | TEXT | st.lists(MESSAGE, max_size=3),
    max_size=5,
)


def cross_field_rule_broken(body: Any) -> str | None:
    """Which rule between fields (documented in the descriptions, beyond what JSON Schema
    states) a schema-valid body breaks: what the 400's message names; None if none."""
    if not isinstance(body, dict):
        return None
    ids: set[str] = set()
    for n, message in enumerate(body.get("messages") or []):
        ids.update(c["id"] for c in message.get("tool_calls") or [])
        if message.get("role") == "tool" and message["tool_call_id"] not in ids:
            return f"messages[{n}].tool_call_id"
    names = [t["function"]["name"] for t in body.get("tools") or []]
    if len(set(names)) < len(names):
        return "declared twice"
    choice = body.get("tool_choice")
    if choice == "required" and not names:
        return "tool_choice"
    if isinstance(choice, dict) and choice["function"]["name"] not in names:
        return "tool_choice"
    return None


def _shape(path: str) -> str:
    """`/a/<x>` and `/a/{y}` alike: `/a/{}`."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def _routes() -> dict[str, set[str]]:
    app = create_app(Settings())
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        methods = set(rule.methods or ()) - IMPLICIT_METHODS
        routes.setdefault(_shape(rule.rule), set()).update(methods)
    return routes


def test_every_route_is_documented_with_its_methods() -> None:
    documented = {
        _shape(path): {m.upper() for m in item if m in HTTP_METHODS}
        for path, item in build(Settings()).get("paths", {}).items()
    }
    assert documented == _routes()


def test_the_document_follows_the_settings() -> None:
    settings = Settings(
        limits=LimitsSettings(max_tokens_cap=77, model_allowlist=("demo*", "fake-?"))
    )
    body = build(settings)["components"]["schemas"]["GenerateRequest"]["properties"]
    assert body["max_tokens"]["maximum"] == 77
    allowed = re.compile(body["model"]["allOf"][1]["pattern"])
    assert allowed.search("demo-fast") and allowed.search("fake-1")
    assert not allowed.search("fake-12") and not allowed.search("xdemo")


def _refuses(body: dict[str, Any], settings: Settings) -> bool:
    try:
        parse_generate(body, settings)
    except InvalidRequest:
        return True
    return False


def test_the_documented_limits_are_the_ones_the_validator_enforces() -> None:
    settings = Settings(
        limits=LimitsSettings(
            max_tokens_cap=77,
            max_prompt_chars=50,
            max_messages=3,
            max_messages_chars=40,
            model_allowlist=("*",),
        )
    )
    schemas = build(settings)["components"]["schemas"]
    body = schemas["GenerateRequest"]["properties"]
    content = schemas["TextPart"]["properties"]["text"]
    for name, step in [("max_tokens", 1), ("temperature", 0.5)]:
        low, high = body[name]["minimum"], body[name]["maximum"]
        assert not _refuses({"prompt": "x", name: low}, settings)
        assert not _refuses({"prompt": "x", name: high}, settings)
        assert _refuses({"prompt": "x", name: low - step}, settings)
        assert _refuses({"prompt": "x", name: high + step}, settings)
    for name, make_long in [
        ("prompt", lambda n: {"prompt": "p" * n}),
        ("model", lambda n: {"prompt": "x", "model": "m" * n}),
    ]:
        longest = body[name]["maxLength"]
        assert not _refuses(make_long(longest), settings)
        assert _refuses(make_long(longest + 1), settings)
    most = body["messages"]["maxItems"]
    message = {"role": "user", "content": "c"}
    assert not _refuses({"messages": [message] * most}, settings)
    assert _refuses({"messages": [message] * (most + 1)}, settings)
    long_message = {"role": "user", "content": "c" * content["maxLength"]}
    assert not _refuses({"messages": [long_message]}, settings)
    assert _refuses(
        {"messages": [{**long_message, "content": long_message["content"] + "c"}]}, settings
    )
    assert body["model"]["allOf"][2]["pattern"] == validation.MODEL_ID_PATTERN


def test_a_validation_constant_shows_in_the_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "MAX_MODEL_LEN", 12)
    monkeypatch.setattr(validation, "MAX_TEMPERATURE", 1.5)
    body = build(Settings())["components"]["schemas"]["GenerateRequest"]["properties"]
    assert body["model"]["maxLength"] == 12
    assert body["temperature"]["maximum"] == 1.5


def test_the_documented_close_codes_are_the_close_code_table() -> None:
    ws = build(Settings())["paths"]["/api/streams/{sessionId}/ws"]["get"]
    assert ws["x-websocket"]["closeCodes"] == sorted(int(code) for code in Close)
    assert {1012, 4401} <= set(ws["x-websocket"]["closeCodes"])
    for code in Close:  # each with its cause
        assert str(int(code)) in ws["description"], code


def test_with_api_keys_the_document_states_the_credentials() -> None:
    open_doc = build(Settings())
    keyed = build(
        Settings(api=ApiSettings(api_keys=(("app", "0" * 64),), stream_token_secret="s" * 32))
    )
    assert "security" not in open_doc
    assert keyed["security"] == [{"bearer": []}]
    paths = keyed["paths"]
    assert paths["/healthz"]["get"]["security"] == []
    assert paths["/openapi.json"]["get"]["security"] == []
    assert "401" not in paths["/healthz"]["get"]["responses"]
    for path, method in [
        ("/api/streams/generate", "post"),
        ("/api/streams", "get"),
        ("/api/streams/{sessionId}/text", "get"),
        ("/api/streams/{sessionId}", "delete"),
    ]:
        assert "401" in paths[path][method]["responses"]
        assert "security" not in paths[path][method]  # the document's: a key
    for path in ("/api/streams/{sessionId}", "/api/streams/{sessionId}/ws"):
        assert paths[path]["get"]["security"] == [{"bearer": []}, {"streamToken": []}]


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("demo*", ["demo", "demo.x", "demo\nx"], ["dem", "ademo"]),
        ("a.b/c?", ["a.b/cd"], ["axb/cd", "a.b/c"]),
        ("m[0-9]", ["m7"], ["mx"]),
        ("m[!0-9]", ["mx"], ["m7"]),
        ("(x)|y+", ["(x)|y+"], ["x", "yy"]),
    ],
)
def test_glob_regex_matches_like_fnmatch(
    pattern: str, matches: list[str], misses: list[str]
) -> None:
    regex = re.compile(glob_regex(pattern))
    assert all(regex.search(m) for m in matches)
    assert not any(regex.search(m) for m in misses)


def test_the_served_document_is_valid_openapi(api: Api) -> None:
    response = requests.get(f"{api.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(m) for m in _routes().values())


def _undocumented_methods(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, url) pairs that no operation takes: `DELETE /api/streams/generate` is
    `DELETE /api/streams/{sessionId}`, so it is not one."""
    templates = [
        (re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$"), item)
        for path, item in doc["paths"].items()
    ]
    out = []
    for path in doc["paths"]:
        url = (
            path.replace("{sessionId}", "A" * 21)
            .replace("{filename}", "index.html")
            .replace("{chatId}", "a-chat")
        )
        for method in sorted(HTTP_METHODS):
            if not any(t.match(url) and method in item for t, item in templates):
                out.append((method.upper(), url))
    return out


@pytest.mark.slow
def test_generated_requests_get_documented_answers_and_no_5xx(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = requests.get(f"{api.url}/openapi.json", timeout=10).json()
    # A 200 of POST /api/chat is a stream as long as the generation it starts (up to
    # MAX_TOKENS_CAP chunks): tests/test_chat.py sends it good and bad bodies instead.
    # OpenAI's Responses API answers a created response once it has ended (or streams it
    # to the end): not for a fuzzer's requests. tests/test_responses.py drives it with the
    # official SDK; its methods not taken are still checked below.
    schema = (
        schemathesis.openapi.from_dict(doc)
        .exclude(path="/api/chat", method="POST")
        .exclude(path_regex="^/v1/")
    )
    http = requests.Session()
    counts: Counter[str] = Counter()
    failures: list[str] = []
    created: list[str] = []

    def send(case: schemathesis.Case, checks: list[Any]) -> None:
        response = case.call(base_url=api.url, session=http, timeout=10)
        counts["requests"] += 1
        counts["5xx"] += response.status_code >= 500
        counts[f"{case.method} {case.path} {response.status_code}"] += 1
        if response.status_code == 202 and case.method == "POST":
            created.append(response.json()["sessionId"])
        if case.path.endswith("/ws"):  # a plain GET, never the upgrade: a 400 is right
            checks = [c for c in checks if c is not positive_data_acceptance]
        positive = positive_data_acceptance in checks and case.method == "POST"
        broken = cross_field_rule_broken(case.body) if positive else None
        if broken is not None:
            # Valid field by field, but against a rule between fields: a 400 naming it.
            checks = [c for c in checks if c is not positive_data_acceptance]
            named = response.status_code == 400 and broken in response.json()["error"]["message"]
            if not named:
                failures.append(f"{case.body!r} breaks {broken}: {response.text[:300]}")
        try:
            case.validate_response(response, checks=checks)
        except BaseExceptionGroup as e:  # schemathesis's FailureGroup: collect them all
            failures.append(f"{case.method} {case.formatted_path} {case.body!r}: {str(e)[:600]}")

    def explore(
        mode: schemathesis.GenerationMode, checks: list[Any], fixed: dict[str, Any] | None = None
    ) -> None:
        @settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=schema.as_strategy(generation_mode=mode, **(fixed or {})))
        def run(case: schemathesis.Case) -> None:
            send(case, checks)

        run()

    explore(schemathesis.GenerationMode.POSITIVE, [*CHECKS, positive_data_acceptance])
    explore(schemathesis.GenerationMode.NEGATIVE, [*CHECKS, negative_data_rejection])
    # The same against a session that exists: its 200 answers must match their schemas too.
    ended = client.create(api.url, prompt="an ended session", max_tokens=3)["sessionId"]
    client.wait_terminal(api.url, ended)
    explore(
        schemathesis.GenerationMode.POSITIVE,
        [*CHECKS, positive_data_acceptance],
        {"path_parameters": {"sessionId": ended}, "query": {"sessionId": ended}},
    )

    # Bodies the schema cannot describe: any JSON at all, half surrogate pairs, NaN.
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=BODIES)
    def post_anything(body: Any) -> None:
        response = http.post(
            f"{api.url}/api/streams/generate",
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        counts["requests"] += 1
        counts["5xx"] += response.status_code >= 500
        counts[f"POST /api/streams/generate (any JSON) {response.status_code}"] += 1
        if response.status_code == 202:
            created.append(response.json()["sessionId"])
        elif response.status_code != 400 or "error" not in response.json():
            failures.append(f"POST {body!r}: {response.status_code} {response.text[:200]}")

    post_anything()

    # Methods no operation takes: a JSON 405 naming the ones it does.
    for method, url in _undocumented_methods(doc):
        response = http.request(method, api.url + url, data=b"\x00garbage", timeout=10)
        counts["requests"] += 1
        counts["5xx"] += response.status_code >= 500
        if response.status_code != 405 or "Allow" not in response.headers:
            failures.append(f"{method} {url}: {response.status_code} {response.text[:200]}")
        elif response.json()["error"]["code"] != "method_not_allowed":
            failures.append(f"{method} {url}: {response.text[:200]}")

    for session_id in created:  # don't leave generations running for the other tests
        http.delete(f"{api.url}/api/streams/{session_id}", timeout=10)
    with capsys.disabled():
        print(
            f"\nproperty-based run: {counts['requests']} requests, {counts['5xx']} 5xx, "
            f"{len(created)} sessions created, {len(failures)} check failures"
        )
        for key, n in sorted(counts.items()):
            print(f"  {key}: {n}")
    assert requests.get(f"{api.url}/healthz", timeout=10).status_code == 200
    assert counts["5xx"] == 0
    assert not failures, "\n".join(failures[:20])


def test_every_request_field_and_role_the_validator_takes_is_documented() -> None:
    from shared.jobs import ROLES

    schemas = build(Settings())["components"]["schemas"]
    assert set(schemas["GenerateRequest"]["properties"]) == set(validation.FIELDS)
    roles = {m["properties"]["role"]["const"] for m in schemas["Message"]["oneOf"]}
    assert roles == set(ROLES)
    assert "/api/streams/{sessionId}/message" in build(Settings())["paths"]
