"""Pipeable operators for event streams, and a bridge from Observable to ``async for``.

All operators are factories returning ``Callable[[Observable[A]], Observable[B]]`` for use
with ``observable.pipe(...)``; time-based ones accept ``scheduler=`` (virtual time in tests).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from reactivex import Observable, abc
from reactivex import operators as ops

from .events import EventKind, InvocationEvent, TextDelta

__all__ = ("coalesce_text", "for_run", "of_kind", "text_of", "to_async_iterator", "until_terminal")

_T = TypeVar("_T")

EventOperator = Callable[[Observable[InvocationEvent]], Observable[InvocationEvent]]


def of_kind(kind: EventKind | str) -> EventOperator:
    """Keep the events of ``kind`` (``ANY`` keeps all).

    .. marble::
        :alt: of_kind

        ---a--b--a--|
        [ of_kind(a)]
        ---a-----a--|
    """
    member = EventKind.parse(kind)
    return ops.filter(member.matches)


def for_run(run_id: str) -> EventOperator:
    """Keep the events of one run."""
    return ops.filter(lambda event: event.run_id == run_id)


def until_terminal() -> EventOperator:
    """Complete after the first terminal event (``run_completed``/``failed``/``cancelled``), included.

    .. marble::
        :alt: until_terminal

        --s--d--d--T--x--
        [until_terminal()]
        --s--d--d--T|
    """
    return ops.take_while(lambda event: not event.is_terminal, inclusive=True)


def text_of() -> Callable[[Observable[InvocationEvent]], Observable[str]]:
    """The text fragments (``text_delta``) as strings."""

    def delta(event: InvocationEvent) -> str:
        return event.delta if isinstance(event, TextDelta) else ""

    def is_text(event: InvocationEvent) -> bool:
        return isinstance(event, TextDelta)

    def _text(source: Observable[InvocationEvent]) -> Observable[str]:
        return source.pipe(ops.filter(is_text), ops.map(delta))

    return _text


def coalesce_text(
    quiet: float, scheduler: abc.SchedulerBase | None = None
) -> Callable[[Observable[InvocationEvent]], Observable[str]]:
    """Join text deltas into chunks, each flushed after ``quiet`` seconds without a new delta.

    .. marble::
        :alt: coalesce_text

        --He-llo------!----|
        [ coalesce_text(q) ]
        ------Hello------!-|
    """

    def _coalesce(source: Observable[InvocationEvent]) -> Observable[str]:
        deltas: Observable[str] = source.pipe(text_of(), ops.share())

        def closing() -> Observable[str]:
            return deltas.pipe(ops.debounce(quiet, scheduler=scheduler))

        def joined(chunk: list[str]) -> str:
            return "".join(chunk)

        chunks: Observable[list[str]] = deltas.pipe(ops.buffer_when(closing))
        return chunks.pipe(ops.filter(bool), ops.map(joined))

    return _coalesce


def to_async_iterator(observable: Observable[_T]) -> AsyncIterator[_T]:
    """Iterate an Observable with ``async for`` on the running loop (any publishing thread).

    Subscribes at once (call it inside the running loop), so items a hot source publishes
    before the first step are not lost; they are buffered until consumed. ``on_error`` is
    raised from the iteration. Leaving the loop early disposes the subscription when the
    iterator is closed: at once with ``contextlib.aclosing(...)``, else when asyncio finalises it.
    """
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    queue: asyncio.Queue[tuple[int, _T | Exception | None]] = asyncio.Queue()

    def put(item: tuple[int, _T | Exception | None]) -> None:
        if threading.get_ident() == loop_thread:
            queue.put_nowait(item)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(queue.put_nowait, item)

    subscription = observable.subscribe(
        on_next=lambda value: put((0, value)),
        on_error=lambda error: put((1, error)),
        on_completed=lambda: put((2, None)),
    )
    return _drain(queue, subscription)


async def _drain(
    queue: asyncio.Queue[tuple[int, _T | Exception | None]], subscription: abc.DisposableBase
) -> AsyncIterator[_T]:
    try:
        while True:
            tag, value = await queue.get()
            if tag == 0:
                yield value  # type: ignore[misc]
            elif tag == 1:
                raise value  # type: ignore[misc]
            else:
                return
    finally:
        subscription.dispose()
