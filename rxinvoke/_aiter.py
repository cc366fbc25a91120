"""Observable → ``async for``, with a buffer policy that never loses an item silently.

An Observable pushes; an ``async for`` pulls. The iterator subscribes at once (so a hot
source's early items are kept) and buffers what the consumer has not taken yet. With
``buffer=N`` the policy says what happens to one more item:

- ``"block"`` (default): nothing is dropped. A publisher on another thread waits until there
  is room; one on the loop's own thread cannot wait without stopping the consumer too, so its
  items are queued past ``N``.
- ``"drop_oldest"`` / ``"drop_newest"``: the oldest queued / the new item is dropped.
- ``"latest"``: the queue is emptied and only the newest item kept (a UI shows the last state).

Every dropped item is counted (``iterator.dropped``); with ``markers=True`` the iteration also
yields a :class:`Dropped` marker (how many were dropped) before the next item. ``on_error`` is
raised from the iteration; leaving the loop early disposes the subscription once the iterator
is closed (``aclose()``, ``contextlib.aclosing``, or when it is garbage-collected).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from reactivex import Observable

__all__ = ("Dropped", "IterOverflow", "ObservableIterator", "to_async_iterator")

_T = TypeVar("_T")

IterOverflow = Literal["block", "drop_oldest", "drop_newest", "latest"]
"""What a full :func:`to_async_iterator` buffer does with one more item."""


@dataclass(frozen=True)
class Dropped:
    """Yielded (with ``markers=True``) where items were dropped: how many."""

    count: int


class _Channel(Generic[_T]):
    """The buffer between the subscription (any thread) and the iterator (the loop). The
    subscription holds it, never the iterator: an abandoned iterator can be collected, and
    collecting it disposes the subscription."""

    def __init__(self, buffer: int | None, overflow: IterOverflow, markers: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.buffer = buffer
        self.overflow = overflow
        self.markers = markers
        self.items: deque[_T] = deque()
        # the item path takes the plain lock (C); the Condition on it is for blocked publishers
        self.mutex = threading.RLock()
        self.lock = threading.Condition(self.mutex)
        self.blocked = 0  # publishers waiting for room
        self.ready = asyncio.Event()
        self.end: tuple[Exception | None] | None = None
        self.closed = False
        self.dropped = 0
        self.unreported = 0

    def on_next(self, value: _T) -> None:
        with self.mutex:
            if self.closed:
                return
            limit = self.buffer
            if limit is not None and len(self.items) >= limit:
                policy = self.overflow
                if policy == "drop_newest":
                    self._drop(1)
                    return
                if policy == "drop_oldest":
                    self.items.popleft()
                    self._drop(1)
                elif policy == "latest":
                    self._drop(len(self.items))
                    self.items.clear()
                elif threading.get_ident() != self.thread:  # block: wait for room
                    self.blocked += 1
                    try:
                        while len(self.items) >= limit and not self.closed:
                            self.lock.wait()
                    finally:
                        self.blocked -= 1
                    if self.closed:
                        return
            self.items.append(value)
        self.wake()

    def _drop(self, count: int) -> None:
        self.dropped += count
        self.unreported += count

    def on_error(self, error: Exception) -> None:
        with self.mutex:
            self.end = (error,)
        self.wake()

    def on_completed(self) -> None:
        with self.mutex:
            self.end = (None,)
        self.wake()

    def wake(self) -> None:
        if threading.get_ident() == self.thread:
            self.ready.set()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.ready.set)


class ObservableIterator(AsyncIterator[_T], Generic[_T]):
    """The iterator :func:`to_async_iterator` returns; ``dropped`` counts what it dropped."""

    def __init__(
        self,
        observable: Observable[_T],
        *,
        buffer: int | None,
        overflow: IterOverflow,
        markers: bool,
    ) -> None:
        if buffer is not None and (
            isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1
        ):
            raise ValueError(f"buffer must be an integer >= 1 or None, got {buffer!r}")
        if overflow not in ("block", "drop_oldest", "drop_newest", "latest"):
            raise ValueError(f"unknown overflow policy {overflow!r}")
        channel = self._channel = _Channel[_T](buffer, overflow, markers)
        subscription = observable.subscribe(
            channel.on_next, channel.on_error, channel.on_completed
        )
        self._finalizer = weakref.finalize(self, subscription.dispose)

    @property
    def dropped(self) -> int:
        """Items dropped by the overflow policy so far."""
        return self._channel.dropped

    def __aiter__(self) -> ObservableIterator[_T]:
        return self

    async def __anext__(self) -> Any:
        channel = self._channel
        while True:
            with channel.mutex:
                if channel.markers and channel.unreported:
                    count, channel.unreported = channel.unreported, 0
                    return Dropped(count)
                if channel.items:
                    value = channel.items.popleft()
                    if channel.blocked:
                        channel.lock.notify()
                    return value
                if channel.end is not None:
                    error = channel.end[0]
                    self._close()
                    if error is not None:
                        raise error
                    raise StopAsyncIteration
                channel.ready.clear()
            await channel.ready.wait()

    async def aclose(self) -> None:
        """Dispose the subscription and drop what is queued."""
        with self._channel.mutex:
            self._close()

    def _close(self) -> None:  # holding the lock
        channel = self._channel
        channel.closed = True
        channel.items.clear()
        channel.lock.notify_all()
        self._finalizer()


def to_async_iterator(
    observable: Observable[_T],
    *,
    buffer: int | None = None,
    overflow: IterOverflow = "block",
    markers: bool = False,
) -> ObservableIterator[_T]:
    """Iterate ``observable`` with ``async for`` on the running loop (any publishing thread).

    Subscribes at once (call it inside the running loop). ``buffer`` bounds the items
    waiting for the consumer (None: unbounded) and ``overflow`` says what a full buffer does
    (see the module policy); drops are counted in ``.dropped`` and, with ``markers=True``,
    announced by a :class:`Dropped` item.

    Example:
        >>> async for frame in to_async_iterator(stream.pipe(accumulate_text()), buffer=1, overflow="latest"):  # doctest: +SKIP
        ...     render(frame)
    """
    return ObservableIterator(observable, buffer=buffer, overflow=overflow, markers=markers)
