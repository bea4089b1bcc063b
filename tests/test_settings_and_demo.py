"""Settings from the environment, and the demo provider's determinism."""

from __future__ import annotations

import itertools
import json
import re
import runpy
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.jobs import GenerationRequest, Message
from shared.settings import OPENAI_BASE_URL, OPENROUTER_BASE_URL, Settings, declared
from worker.providers.base import Finished, ReasoningDelta, Resume, TextDelta, ToolCallDelta
from worker.providers.demo import DemoProvider, demo_text

ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"
# Read by docker compose, not by our processes.
NOT_SETTINGS = {"FLOWER_BASIC_AUTH"}


def test_env_example_lists_every_setting_with_its_default() -> None:
    text = ENV_EXAMPLE.read_text()
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, re.M)) - NOT_SETTINGS
    names = {f.metadata["env"] for f in declared(Settings)}
    others = {n for f in declared(Settings) for n in f.metadata["also"]}
    assert names - listed == set(), "declared but not in .env.example"
    assert listed - names - others == set(), "in .env.example but not declared"
    # The values it sets (uncommented) are the defaults.
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]+)=(\S*)", text, re.M))
    assert Settings.from_env(values) == Settings.from_env({}) == Settings()


def test_gunicorn_reads_the_web_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    conf_path = str(ENV_EXAMPLE.parent / "api" / "gunicorn_conf.py")
    for name, value in {
        "HOST": "127.0.0.1",
        "PORT": "9001",
        "WEB_CONCURRENCY": "3",
        "WEB_KEEPALIVE_S": "7",
        "WEB_ACCESS_LOG": "-",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": " JSON",
    }.items():
        monkeypatch.setenv(name, value)
    conf = runpy.run_path(conf_path)
    assert (conf["bind"], conf["workers"], conf["keepalive"]) == ("127.0.0.1:9001", 3, 7)
    assert (conf["accesslog"], conf["loglevel"]) == ("-", "warning")
    assert conf["logconfig_dict"]["root"]["level"] == "WARNING"
    monkeypatch.setenv("WEB_CONCURRENCY", "0")
    with pytest.raises(ConfigError, match="WEB_CONCURRENCY must be at least 1"):
        runpy.run_path(conf_path)


def test_defaults_run_the_demo_model_without_a_key() -> None:
    settings = Settings.from_env({})
    assert settings.limits.default_model == "demo"
    assert settings.stream_ttl_s == 86400
    assert settings.provider.demo_tokens_per_s == 20
    assert settings.redis.broker_url == settings.redis.url
    assert settings.limits.is_model_allowed("demo")
    assert settings.limits.is_model_allowed("demo-fast")
    assert not settings.limits.is_model_allowed("openai/gpt-4o")


def test_a_provider_key_opens_every_model_on_openrouter() -> None:
    settings = Settings.from_env({"OPENROUTER_API_KEY": "sk-or-1", "REDIS_URL": "redis://r:1/2"})
    assert settings.provider.base_url == OPENROUTER_BASE_URL
    assert settings.limits.is_model_allowed("anthropic/claude-sonnet-4")
    assert settings.limits.default_model == "openai/gpt-4o-mini"
    assert settings.redis.broker_url == "redis://r:1/2"
    assert "sk-or-1" not in repr(settings)


def test_an_openai_key_alone_points_at_openai() -> None:
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-1"})
    assert settings.provider.base_url == OPENAI_BASE_URL
    assert settings.limits.default_model == "gpt-4o-mini"


def test_cluster_mode_with_its_own_broker() -> None:
    settings = Settings.from_env(
        {
            "REDIS_CLUSTER": "yes",
            "REDIS_URL": "redis://n1:7000",
            "CELERY_BROKER_URL": "amqp://guest@mq//",
        }
    )
    assert settings.redis.cluster
    assert settings.redis.broker_url == "amqp://guest@mq//"
    assert not Settings.from_env({}).redis.cluster


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"STREAM_TTL_S": "a day"}, "STREAM_TTL_S"),
        ({"STREAM_TTL_S": "0"}, "STREAM_TTL_S"),
        ({"DEMO_TOKENS_PER_S": "-1"}, "DEMO_TOKENS_PER_S"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"PROVIDER_BASE_URL": "ftp://x"}, "PROVIDER_BASE_URL"),
        ({"TRUST_PROXY_HEADERS": "maybe"}, "TRUST_PROXY_HEADERS"),
        ({"DEFAULT_MODEL": "gpt-4o"}, "DEFAULT_MODEL"),
        ({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER"),
        # Celery's Redis broker cannot use a cluster: it must be named on its own.
        ({"REDIS_CLUSTER": "true", "REDIS_URL": "redis://n1:7000"}, "CELERY_BROKER_URL"),
        (
            {
                "REDIS_CLUSTER": "true",
                "REDIS_URL": "redis://n1:7000",
                "CELERY_BROKER_URL": "redis://n1:7000",
            },
            "CELERY_BROKER_URL",
        ),
        (
            {
                "REDIS_CLUSTER": "true",
                "REDIS_URL": "unix:///tmp/r.sock",
                "CELERY_BROKER_URL": "redis://broker:6379/0",
            },
            "REDIS_URL",
        ),
    ],
)
def test_bad_settings_fail_at_start_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def request(prompt: str, max_tokens: int | None = None) -> GenerationRequest:
    return GenerationRequest(
        model="demo", messages=(Message("user", prompt),), max_tokens=max_tokens
    )


def test_demo_is_deterministic_and_counts_chunks() -> None:
    provider = DemoProvider(tokens_per_s=0, default_max_tokens=200)
    items = list(provider.stream(request("Why is the sky blue?"), lambda: False))
    deltas = [i for i in items if isinstance(i, TextDelta)]
    assert len(deltas) == 200
    assert items[-1] == Finished(
        "stop", {"prompt_tokens": 5, "completion_tokens": 200, "total_tokens": 205}
    )
    assert "".join(d.text for d in deltas) == demo_text("Why is the sky blue?", 200)
    assert demo_text("Why is the sky blue?", 200).startswith("You asked: Why is the sky blue?.")
    assert demo_text("another prompt", 50) != demo_text("Why is the sky blue?", 50)
    started = list(
        provider.stream(request("Why is the sky blue?", 30), lambda: False, Resume(10, "ignored"))
    )
    assert (
        "".join(i.text for i in started if isinstance(i, TextDelta))
        == demo_text("Why is the sky blue?", 30)[len(demo_text("Why is the sky blue?", 10)) :]
    )


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"days": {"type": "integer"}, "city": {"type": "string"}},
        },
    },
}


def test_demo_reasoning_thinks_then_answers_and_resumes_where_it_stopped() -> None:
    provider = DemoProvider(tokens_per_s=0, default_max_tokens=200)
    ask = GenerationRequest("demo-reasoning", (Message("user", "Why is the sky blue?"),), 20)
    items = list(provider.stream(ask, lambda: False))
    kinds = [type(i) for i in items]
    assert kinds == [ReasoningDelta] * 5 + [TextDelta] * 15 + [Finished]
    assert "".join(i.text for i in items if isinstance(i, ReasoningDelta)).startswith(
        "Thinking about Why is the sky"
    )
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == demo_text(
        "Why is the sky blue?", 15
    )
    assert items[-1] == Finished(
        "stop",
        {
            "prompt_tokens": 5,
            "completion_tokens": 20,
            "total_tokens": 25,
            "completion_tokens_details": {"reasoning_tokens": 5},
        },
    )
    assert list(provider.stream(ask, lambda: False, Resume(3, ""))) == items[3:]


def test_demo_tools_calls_the_first_tool_then_quotes_its_result() -> None:
    provider = DemoProvider(tokens_per_s=0, default_max_tokens=200)
    question = Message("user", "Weather in Oslo tomorrow?")
    ask = GenerationRequest("demo-tools", (question,), options={"tools": [WEATHER_TOOL]})
    items = list(provider.stream(ask, lambda: False))
    first, *pieces = [i for i in items if isinstance(i, ToolCallDelta)]
    assert first.index == 0 and first.id and first.name == "get_weather"
    assert len(pieces) > 1 and all(p.id is None and p.name is None for p in pieces)
    assert json.loads("".join(p.arguments for p in pieces)) == {"city": "Weather in Oslo tomorrow?"}
    assert isinstance(items[-1], Finished) and items[-1].finish_reason == "tool_calls"
    assert list(provider.stream(ask, lambda: False)) == items  # the same call every time

    call = {"id": first.id, "type": "function", "function": {"name": "get_weather"}}
    answered = GenerationRequest(
        "demo-tools",
        (
            question,
            Message("assistant", None, tool_calls=[call]),
            Message("tool", "Sunny, 21 degrees", tool_call_id=first.id),
        ),
        options={"tools": [WEATHER_TOOL]},
    )
    items = list(provider.stream(answered, lambda: False))
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == (
        "The tool answered: Sunny, 21 degrees."
    )
    assert isinstance(items[-1], Finished) and items[-1].finish_reason == "stop"


def test_demo_stops_when_asked() -> None:
    provider = DemoProvider(tokens_per_s=0, default_max_tokens=200)
    seen = []
    for item in provider.stream(request("stop early"), lambda: len(seen) >= 3):
        seen.append(item)
    assert len(seen) == 3 and all(isinstance(i, TextDelta) for i in seen)


def test_demo_paces_chunks_at_the_configured_rate() -> None:
    now = [100.0]
    emitted_at: list[float] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    provider = DemoProvider(20, 10, sleep=sleep, clock=lambda: now[0])
    for _item in provider.stream(request("paced"), lambda: False):
        emitted_at.append(now[0])
    gaps = [b - a for a, b in itertools.pairwise(emitted_at[:-1])]
    assert gaps == pytest.approx([0.05] * 9)


def test_a_base_url_alone_enables_the_provider_without_a_key() -> None:
    settings = Settings.from_env({"PROVIDER_BASE_URL": "http://localhost:11434/v1"})
    assert settings.provider.is_configured and not settings.provider.has_key
    assert settings.provider.base_url == "http://localhost:11434/v1"
    assert settings.limits.is_model_allowed("llama3.2") and settings.limits.default_model == "demo"
    assert not Settings.from_env({}).provider.is_configured
