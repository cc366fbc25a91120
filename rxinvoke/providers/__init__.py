"""Providers: chat models that stream their answer as chat events.

- ``base``      the :class:`ChatProvider` protocol and the :class:`ProviderRegistry`
- ``offline``   :class:`OfflineProvider`: the embedded rule-based model (no network, no key)
- ``scripted``  :class:`ScriptedProvider`: replays scripted turns (tests, notebooks)
- ``openai``    :class:`~rxinvoke.providers.openai.OpenAIProvider`: OpenAI-compatible
                ``/chat/completions`` over httpx (extra ``[openai]``; imported on first use)

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


def __getattr__(name: str) -> Any:
    # OpenAIProvider needs httpx: imported on first use, so importing rxinvoke stays light.
    if name == "OpenAIProvider":
        from .openai import OpenAIProvider

        return OpenAIProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "OpenAIProvider"])
