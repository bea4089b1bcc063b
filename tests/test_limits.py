"""Limits: request sizes, creations per window, running generations and followers per caller,
against real API and worker processes (docs/API.md, "Limits")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.errors import ConfigError
from shared.settings import Settings
from tests.procs import Api


@pytest.fixture(scope="module")
def small(stack_env: dict[str, str], logs_dir: Path) -> Iterator[Api]:
    """An API with small request limits (nothing it refuses reaches a worker)."""
    env = {**stack_env, "MAX_PROMPT_CHARS": "10", "MAX_MESSAGES": "3", "MAX_MESSAGES_CHARS": "12"}
    proc = Api(env, logs_dir, name="api-small-limits").start()
    yield proc
    proc.stop()


def post(api: Api, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return requests.post(
        f"{api.url}/api/streams/generate", json=body, headers=headers or {}, timeout=10
    )


def assert_400(response: requests.Response, names: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert names in error["message"]


def test_prompt_and_messages_sizes_are_limited(small: Api) -> None:
    assert post(small, {"prompt": "x" * 10, "max_tokens": 1}).status_code == 202
    assert_400(post(small, {"prompt": "x" * 11}), "MAX_PROMPT_CHARS")

    def msgs(*contents: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": c} for c in contents], "max_tokens": 1}

    assert post(small, msgs("a", "b", "c")).status_code == 202
    assert_400(post(small, msgs("a", "b", "c", "d")), "MAX_MESSAGES")
    assert post(small, msgs("x" * 6, "y" * 6)).status_code == 202
    assert_400(post(small, msgs("x" * 6, "y" * 7)), "MAX_MESSAGES_CHARS")


def test_size_limits_are_settings_and_in_the_document() -> None:
    from api.openapi import build

    settings = Settings(max_prompt_chars=5, max_messages=2, max_messages_chars=9)
    schemas = build(settings)["components"]["schemas"]
    assert schemas["GenerateRequest"]["properties"]["prompt"]["maxLength"] == 5
    assert schemas["GenerateRequest"]["properties"]["messages"]["maxItems"] == 2
    assert schemas["Message"]["properties"]["content"]["maxLength"] == 9
    with pytest.raises(ConfigError, match="MAX_PROMPT_CHARS"):
        Settings.from_env({"MAX_PROMPT_CHARS": "0"})
    with pytest.raises(ConfigError, match="MAX_MESSAGES"):
        Settings.from_env({"MAX_MESSAGES": "many"})
