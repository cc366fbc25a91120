"""The ChatProvider protocol and the registry the runtime looks providers up in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Protocol, runtime_checkable

from ..errors import UserError
from ..events import ChatStreamEvent
from ..messages import ChatRequest

__all__ = ("ChatProvider", "ProviderRegistry")


@runtime_checkable
class ChatProvider(Protocol):
    """A chat model that streams its response as chat events.

    ``stream`` yields ``chat_started`` first and ``chat_finished`` last; a stream that ends
    without ``chat_finished`` is a broken stream. ``models`` lists the model names it serves;
    an empty sequence means any name is accepted.
    """

    @property
    def id(self) -> str: ...

    @property
    def models(self) -> Sequence[str]: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatStreamEvent]: ...


class ProviderRegistry:
    """Providers by id."""

    def __init__(self, providers: Iterable[ChatProvider] = ()) -> None:
        self._providers: dict[str, ChatProvider] = {}
        for provider in providers:
            self.add(provider)

    def add(self, provider: ChatProvider) -> None:
        """Register ``provider`` under its id."""
        if not isinstance(provider, ChatProvider):
            raise UserError(f"{provider!r} is not a ChatProvider (id, models, stream)")
        if provider.id in self._providers:
            raise UserError(f"a provider with id {provider.id!r} is already registered")
        self._providers[provider.id] = provider

    def get(self, provider_id: str) -> ChatProvider | None:
        """The provider registered as ``provider_id``, or None."""
        return self._providers.get(provider_id)

    @property
    def ids(self) -> tuple[str, ...]:
        """Registered provider ids."""
        return tuple(self._providers)
