"""Providers: the demo one and one OpenAI-compatible streaming client."""

from __future__ import annotations

from shared.settings import DEMO_MODEL, Settings
from worker.providers.base import Provider


def is_demo_model(model: str) -> bool:
    """Model ids that start with `demo` are served by the built-in demo provider."""
    return model.startswith(DEMO_MODEL)


def provider_for(model: str, settings: Settings) -> Provider:
    """The provider that serves `model`."""
    if is_demo_model(model):
        from worker.providers.demo import DemoProvider

        return DemoProvider(settings.provider.demo_tokens_per_s, settings.provider.demo_max_tokens)
    from worker.providers.chat_completions import ChatCompletionsProvider

    return ChatCompletionsProvider(settings)
