"""SessionGate: one active run per session; later runs of the session wait, in arrival order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ("SessionGate",)


class SessionGate:
    """Per-session FIFO locks, created on first use and dropped when nobody waits."""

    def __init__(self) -> None:
        self._locks: dict[uuid.UUID, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, session_id: uuid.UUID) -> AsyncIterator[None]:
        """Hold the session for the duration of the block (waiting for earlier holders)."""
        lock, users = self._locks.setdefault(session_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[session_id]
