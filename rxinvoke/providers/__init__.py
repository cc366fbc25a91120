"""Providers: chat models that stream their answer as chat events.

- ``base``      the :class:`ChatProvider` protocol and the :class:`ProviderRegistry`
- ``offline``   :class:`OfflineProvider`: the embedded rule-based model (no network, no key)
- ``scripted``  :class:`ScriptedProvider`: replays scripted turns (tests, notebooks)
- ``openai``    :class:`~rxinvoke.providers.openai.OpenAIProvider`: OpenAI-compatible
                ``/chat/completions`` over httpx (extra ``[openai]``; imported on first use)
- ``anthropic`` :class:`~rxinvoke.providers.anthropic.AnthropicProvider`: the Anthropic
                Messages API over httpx (extra ``[anthropic]``; imported on first use)
- ``_http``     what the HTTP providers share (client per loop, secrets, error translation)

Providers import values only: never a store, the bus or the runtime.
"""

from typing import Any

from .base import ChatProvider as ChatProvider
from .base import ProviderRegistry as ProviderRegistry
from .offline import OfflineProvider as OfflineProvider
from .scripted import Pause as Pause
from .scripted import Refuse as Refuse
from .scripted import ScriptedProvider as ScriptedProvider
from .scripted import TurnItem as TurnItem

__all__ = (
    "ChatProvider",
    "OfflineProvider",
    "Pause",
    "ProviderRegistry",
    "Refuse",
    "ScriptedProvider",
    "TurnItem",
)


_LAZY = {"AnthropicProvider": "anthropic", "OpenAIProvider": "openai"}


def __getattr__(name: str) -> Any:
    # the HTTP providers need httpx: imported on first use, so importing rxinvoke stays light
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_LAZY])
