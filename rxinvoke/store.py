"""The Store protocol and MemoryStore, the in-process default.

A store keeps each session's message history. The runtime loads it to build the context and
appends each committed message (user input, assistant messages, tool results) as it is
committed: a message is appended whole or not at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .messages import Message

__all__ = ("MemoryStore", "Store")


@runtime_checkable
class Store(Protocol):
    """Where session history lives."""

    async def load_history(self, session_id: uuid.UUID) -> list[Message]:
        """The session's messages in commit order (empty for a new session)."""
        ...

    async def append_messages(self, session_id: uuid.UUID, messages: Sequence[Message]) -> None:
        """Commit ``messages`` to the end of the session's history, atomically."""
        ...


class MemoryStore:
    """Session history in a dict; lost when the process ends."""

    def __init__(self) -> None:
        self._sessions: dict[uuid.UUID, list[Message]] = {}

    async def load_history(self, session_id: uuid.UUID) -> list[Message]:
        return list(self._sessions.get(session_id, ()))

    async def append_messages(self, session_id: uuid.UUID, messages: Sequence[Message]) -> None:
        self._sessions.setdefault(session_id, []).extend(messages)

    @property
    def session_ids(self) -> tuple[uuid.UUID, ...]:
        """Sessions that have history."""
        return tuple(self._sessions)
