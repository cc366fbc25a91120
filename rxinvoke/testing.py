"""rxinvoke.testing: test event pipelines and whole runs, in virtual time.

Opt in with ``pytest_plugins = ["rxinvoke.testing"]`` (in a ``conftest.py``) to get the
fixtures; everything else is importable on its own (``pip install rxinvoke[test]``).

- :class:`EventProbe` — pull events out of an Observable in a test: ``await probe.next("run_started")``,
  ``await probe.until_terminal()``, ``probe.expect_no_events()``. Assertions inside a reactivex
  subscriber are swallowed by the publisher; a probe raises them in the test instead, and a
  probe left with unconsumed events fails the test at teardown (unless allowed).
- Virtual time for whole runs: give ``AgentRuntime(scheduler=...)`` and
  ``ScriptedProvider(scheduler=...)`` one ``reactivex.testing.TestScheduler`` and the run's
  own timing (run deadline, provider timeout, tool timeout, retry backoff, scripted latency)
  follows it; :func:`advance` moves it and lets the loop catch up (no ``sleep(0)`` dance).
- Marbles whose alphabet is event kinds: :func:`marbles_of` turns events or a
  ``TestScheduler``'s recorded messages into ``"run_started-text_delta-run_completed|"``, and
  :func:`turn_from_marbles` builds a scripted model turn from ``"Hel-lo-|"``. RxPY reads
  adjacent letters as *one* value, so items are always separated by ``-``.

Fixtures: ``scripted`` (a factory of a runtime + invocation over a ScriptedProvider, closed
after the test), ``virtual_clock`` (a TestScheduler), ``event_capture`` (every event of an
invocation, in a list), ``probe`` (EventProbes checked at teardown), ``no_network`` (httpx
requests to hosts that are not loopback fail the test).

Example (a whole run with a 30 s model latency and a refused first call, in virtual time)::

    async def test_slow_model(scripted, virtual_clock):
        run = scripted([[Refuse(ProviderHTTPError("scripted", "scripted", 503, "busy"))],
                        [Pause(30.0), *ScriptedProvider.text_turn("hi")]], scheduler=virtual_clock)
        result = asyncio.ensure_future(run.inv.emit(EmitRequest("hello")))
        await advance(virtual_clock, 60.0)
        assert (await result).output_text == "hi"
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from reactivex import Observable, abc
from reactivex.testing import TestScheduler

from .conformance import Calls, Failure, Hold, ProviderConformance, Text, Turn
from .errors import ProviderStreamError
from .events import ChatFinished, ChatTextDelta, EventBase, EventKind, InvocationEvent
from .invocation import RuntimeInvocation
from .messages import FinishReason
from .policy import RuntimePolicy
from .providers.scripted import Pause, ScriptedProvider, TurnItem
from .runtime import AgentRuntime
from .stores import MemoryStore

__all__ = (
    "Calls",
    "EventProbe",
    "Failure",
    "Hold",
    "OutboundRequestRefused",
    "ProviderConformance",
    "Scripted",
    "Text",
    "Turn",
    "advance",
    "event_capture",
    "marbles_of",
    "no_network",
    "probe",
    "refuse_outbound_http",
    "scripted",
    "settle",
    "turn_from_marbles",
    "virtual_clock",
)

__test__ = False  # nothing here is a test


async def settle(turns: int = 20) -> None:
    """Let the loop run ``turns`` rounds (callbacks and the tasks they woke)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def advance(scheduler: TestScheduler, seconds: float, *, steps: int = 100) -> None:
    """Move ``scheduler`` ``seconds`` ahead, letting the loop catch up after every due item,
    so work a timer wakes (the next fragment's delay, a retry's backoff) is timed from the
    moment it was woken — exactly as on a real clock.

    It jumps from one due item to the next (the scheduler's queue is peeked); on a scheduler
    without one it moves in ``steps`` equal steps instead.
    """
    await settle()
    target = scheduler.now + timedelta(seconds=seconds)
    queue = getattr(scheduler, "_queue", None)
    if queue is None or not hasattr(queue, "peek"):
        for _ in range(steps):
            scheduler.advance_by(seconds / steps)
            await settle()
        return
    for _ in range(1_000_000):  # bounded: a timer that reschedules itself forever stops here
        if not queue:
            break
        due = queue.peek().duetime
        if due > target:
            break
        scheduler.advance_to(max(due, scheduler.now + _EPSILON))
        await settle()
    if scheduler.now < target:
        scheduler.advance_to(target)
        await settle()


_EPSILON = timedelta(microseconds=1)  # runs items due "now" (advance_to(now) runs nothing)


class EventProbe:
    """Events of an Observable, pulled one by one by a test (with a timeout).

    Args:
        observable: what to probe (subscribed at once).
        timeout: the default wait of :meth:`next` (real seconds).
        name: a label for failure messages.
    """

    __test__ = False

    def __init__(self, observable: Observable[Any], *, timeout: float = 5.0, name: str = "probe") -> None:
        self.name = name
        self._timeout = timeout
        self._items: deque[Any] = deque()
        self._error: Exception | None = None
        self._completed = False
        self._arrived = asyncio.Event()
        self._subscription = observable.subscribe(self._on_next, self._on_error, self._on_completed)

    def _on_next(self, item: Any) -> None:
        self._items.append(item)
        self._arrived.set()

    def _on_error(self, error: Exception) -> None:
        self._error = error
        self._arrived.set()

    def _on_completed(self) -> None:
        self._completed = True
        self._arrived.set()

    @property
    def pending(self) -> list[Any]:
        """Items received and not consumed yet."""
        return list(self._items)

    @property
    def is_completed(self) -> bool:
        """True once the source completed (its items may still be pending)."""
        return self._completed

    async def next(self, kind: EventKind | str | None = None, *, timeout: float | None = None) -> Any:
        """The next item; with ``kind``, it must be an event of that kind (AssertionError).

        Raises the source's error; AssertionError if the source completed, or nothing
        arrived within ``timeout`` seconds.
        """
        wait = self._timeout if timeout is None else timeout
        while not self._items:
            if self._error is not None:
                raise self._error
            if self._completed:
                raise AssertionError(f"{self.name}: completed; no next item")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except asyncio.TimeoutError:
                raise AssertionError(f"{self.name}: nothing within {wait:g}s") from None
        item = self._items.popleft()
        if kind is not None:
            member = EventKind.parse(kind)
            if not (isinstance(item, EventBase) and member.matches(item)):
                shown = getattr(item, "type", repr(item))
                raise AssertionError(f"{self.name}: expected {member.value}, got {shown}")
        return item

    async def until_terminal(self, *, timeout: float | None = None) -> list[InvocationEvent]:
        """Every item up to and including the next terminal event."""
        taken: list[InvocationEvent] = []
        while True:
            item = await self.next(timeout=timeout)
            taken.append(item)
            if isinstance(item, EventBase) and item.is_terminal:
                return taken

    def expect_no_events(self) -> None:
        """Assert nothing is pending now."""
        if self._items:
            raise AssertionError(f"{self.name}: unexpected {marbles_of(self._items)}")

    def close(self, *, allow_unconsumed: bool = False) -> None:
        """Stop probing; unless allowed, assert nothing was left unconsumed."""
        self._subscription.dispose()
        if not allow_unconsumed:
            self.expect_no_events()


@dataclass
class Scripted:
    """What the ``scripted`` fixture makes: a runtime, its invocation and its provider."""

    __test__ = False

    runtime: AgentRuntime
    inv: RuntimeInvocation
    provider: ScriptedProvider
    events: list[InvocationEvent] = field(default_factory=list)
    """Every event the runtime published."""


# --- marbles --------------------------------------------------------------------------------


def _label(item: Any) -> str:
    kind = getattr(item, "type", None) if isinstance(item, EventBase) else None
    return str(kind) if kind is not None else str(item)


def marbles_of(items: Iterable[Any], *, tick: float | None = None) -> str:
    """Items (events, or a TestScheduler's recorded messages) as a marble string whose
    values are event kinds: ``"run_started-text_delta-run_completed|"``.

    With ``tick`` (seconds) the items keep their timing, one ``-`` per tick between two
    (at least one): recorded messages by their virtual time from 0, events by their
    timestamps from the first one's (a run on a ``TestScheduler`` is stamped with its virtual
    time). Otherwise items are separated by a single ``-``. ``|`` is completion, ``#`` an error.
    """
    parts: list[str] = []
    last_time: float | None = None
    last_stamp: datetime | None = None
    for item in items:
        notification = getattr(item, "value", None)
        time = getattr(item, "time", None)
        if notification is not None and hasattr(notification, "kind") and time is not None:
            if tick is not None:
                gap = int(round((time - (last_time if last_time is not None else 0)) / tick))
                parts.append("-" * max(gap, 0 if last_time is None else 1))
            elif parts:
                parts.append("-")
            last_time = time
            kind = notification.kind
            parts.append(
                _label(notification.value) if kind == "N" else "|" if kind == "C" else "#"
            )
            continue
        stamp = getattr(item, "timestamp", None)
        stamp = stamp if isinstance(stamp, datetime) else None
        if tick is not None and stamp is not None and last_stamp is not None:
            parts.append("-" * max(int(round((stamp - last_stamp).total_seconds() / tick)), 1))
        elif parts:
            parts.append("-")
        last_stamp = stamp or last_stamp
        parts.append(_label(item))
    text = "".join(parts)
    return text.replace("-|", "|").replace("-#", "#")


def turn_from_marbles(
    marbles: str, *, tick: float = 0.0, finish: FinishReason = FinishReason.STOP
) -> list[TurnItem]:
    """A scripted model turn from a marble string: each value is a text fragment, each ``-``
    a ``tick`` of latency (a :class:`Pause`, when ``tick`` > 0), ``|`` the end
    (``chat_finished``), ``#`` a broken stream.

    Example:
        >>> [type(i).__name__ for i in turn_from_marbles("Hel-lo-|")]
        ['ChatTextDelta', 'ChatTextDelta', 'ChatFinished']
    """
    items: list[TurnItem] = []
    value: list[str] = []

    def flush() -> None:
        if value:
            items.append(ChatTextDelta(delta="".join(value)))
            value.clear()

    for char in marbles:
        if char == "-":
            flush()
            if tick > 0:
                items.append(Pause(tick))
        elif char == "|":
            flush()
            items.append(ChatFinished(finish_reason=finish))
            return items
        elif char == "#":
            flush()
            items.append(ProviderStreamError("scripted", "scripted", "marble error"))
            return items
        else:
            value.append(char)
    flush()
    return items


# --- pytest fixtures ----------------------------------------------------------------------------


@pytest.fixture
def virtual_clock() -> TestScheduler:
    """A ``reactivex.testing.TestScheduler`` (times in seconds)."""
    return TestScheduler()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Scripted]]:
    """``scripted(turns, *, tools=(), policy=None, scheduler=None, **provider_options)``: a
    runtime (MemoryStore) over a ScriptedProvider sharing ``scheduler``; closed afterwards."""
    made: list[AgentRuntime] = []

    def make(
        turns: Any,
        *,
        tools: Sequence[Any] = (),
        policy: RuntimePolicy | None = None,
        scheduler: abc.SchedulerBase | None = None,
        **provider_options: Any,
    ) -> Scripted:
        provider = ScriptedProvider(turns, scheduler=scheduler, **provider_options)
        runtime = AgentRuntime(
            providers=[provider], tools=tools, policy=policy, store=MemoryStore(), scheduler=scheduler
        )
        made.append(runtime)
        result = Scripted(runtime, RuntimeInvocation(runtime), provider)
        runtime.events.subscribe(result.events.append)
        return result

    yield make
    for runtime in made:
        await runtime.aclose()


@pytest.fixture
def event_capture() -> Callable[[RuntimeInvocation], list[InvocationEvent]]:
    """``event_capture(inv)``: a list that receives every event ``inv`` publishes from now on."""

    def capture(inv: RuntimeInvocation) -> list[InvocationEvent]:
        events: list[InvocationEvent] = []
        inv.observe().subscribe(events.append)
        return events

    return capture


@pytest.fixture
def probe() -> Iterator[Callable[..., EventProbe]]:
    """``probe(observable, allow_unconsumed=False, timeout=5.0)``: an EventProbe; at teardown
    each one must have been consumed completely (unless allowed)."""
    made: list[tuple[EventProbe, bool]] = []

    def make(observable: Observable[Any], *, allow_unconsumed: bool = False, timeout: float = 5.0) -> EventProbe:
        created = EventProbe(observable, timeout=timeout, name=f"probe #{len(made) + 1}")
        made.append((created, allow_unconsumed))
        return created

    yield make
    for created, allowed in made:
        created.close(allow_unconsumed=allowed)


class OutboundRequestRefused(AssertionError):
    """A test tried to reach a host that is not on this machine (no real model calls)."""


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "127.0.0.1", "::1"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextmanager
def refuse_outbound_http() -> Iterator[None]:
    """While active, an httpx request to a host that is not loopback raises
    :class:`OutboundRequestRefused` (pydantic-ai's ``ALLOW_MODEL_REQUESTS`` idea, enforced at
    the transport)."""
    try:
        import httpx
    except ImportError:  # no httpx: nothing can call out through it
        yield
        return
    real = httpx.AsyncHTTPTransport.handle_async_request

    async def guarded(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> Any:
        if not _is_loopback(request.url.host):
            raise OutboundRequestRefused(
                f"tests may only call loopback servers, not {request.url.host!r}"
            )
        return await real(self, request)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", guarded)
        yield


@pytest.fixture
def no_network() -> Iterator[None]:
    """httpx requests to hosts that are not loopback fail the test (no real model calls)."""
    with refuse_outbound_http():
        yield
