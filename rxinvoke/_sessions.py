"""SessionGate: one active run per session; later runs of the session wait, in arrival order."""

from __future__ import annotations

import asyncio
import uuid
from types import TracebackType

__all__ = ("SessionGate",)


class SessionGate:
    """Per-session FIFO locks, created on first use and dropped when nobody waits."""

    def __init__(self) -> None:
        self._locks: dict[uuid.UUID, _Entry] = {}

    def hold(self, session_id: uuid.UUID) -> _Hold:
        """Hold the session for the duration of an ``async with`` block (waiting for earlier
        holders)."""
        return _Hold(self._locks, session_id)


class _Entry:
    """A session's lock and how many hold it or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _Hold:
    """One ``async with gate.hold(session_id)`` (a class, not a generator-based context
    manager: a run waiting on its model keeps one object alive here instead of five)."""

    __slots__ = ("_entry", "_locks", "_session_id")

    def __init__(self, locks: dict[uuid.UUID, _Entry], session_id: uuid.UUID) -> None:
        self._locks, self._session_id = locks, session_id

    async def __aenter__(self) -> None:
        entry = self._locks.get(self._session_id)
        if entry is None:
            entry = self._locks[self._session_id] = _Entry()
        self._entry = entry
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._entry.lock.release()
        self._leave()

    def _leave(self) -> None:
        entry = self._entry
        entry.users -= 1
        if entry.users == 0:
            del self._locks[self._session_id]
