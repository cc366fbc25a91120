"""EventBus: the runtime's hot Subject, kind-indexed, with fault-isolated subscribers.

The bus owns the runtime's hot reactivex ``Subject`` (private: every event) and a kind index
beside it: publishing an event costs one dict lookup by its ``type`` plus the work
of the subscribers of that kind and of ``ANY``; subscribers of other kinds cost nothing per
event (a per-subscription ``filter`` would evaluate every predicate for every event).

Fault isolation: a reactivex Subject re-raises an observer's exception into the publisher and
skips every later observer, so everything the bus hands out (:meth:`EventBus.observe`,
:meth:`EventBus.attach`) is wrapped: an exception is caught, reported on
:attr:`EventBus.errors` as a :class:`~rxinvoke.errors.SubscriberError`, and delivery to
everyone else goes on. Nothing is ever sent as ``on_error``: an errored Subject is dead.

Ending: :meth:`EventBus.complete` (called by ``AgentRuntime.aclose``) completes every observer
and ``errors``; later publishes are dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import reactivex
from reactivex import Observable, abc
from reactivex.subject import Subject

from .control import SessionContext
from .errors import SubscriberError
from .events import EventKind, InvocationEvent

__all__ = ("Deliver", "EventBus", "PlainDeliver", "SubscriptionStats")

_log = logging.getLogger("rxinvoke")

_RUN_KEY = "\x00run:"  # index keys of attach_run (never an event kind)
_EVENT_KINDS = tuple(
    (cls, cls.model_fields["type"].default) for cls in get_args(get_args(InvocationEvent)[0])
)
"""(class, kind) of every event class."""
_CLASSES_OF: dict[str, tuple[type, ...]] = {}
for _cls, _kind in _EVENT_KINDS:
    _CLASSES_OF[_kind] = (*_CLASSES_OF.get(_kind, ()), _cls)
_PLAIN_KEY = "\x00plain"  # the index key of attach_plain

Deliver = Callable[[InvocationEvent, SessionContext], None]
"""A kind-index callback: ``deliver(event, context)``; it must not raise."""

PlainDeliver = Callable[[InvocationEvent], None]
"""A callback of every event that needs no session context: ``deliver(event)``."""


def _bare_context(run_id: str | None) -> SessionContext:
    return SessionContext.model_construct(session_id=None, run_id=run_id)


class _Detach(abc.DisposableBase):
    """Removes one callback from the kind index (a lean disposable: no lock, no closure)."""

    __slots__ = ("_bus", "_deliver", "_key", "on_completed")

    def __init__(
        self,
        bus: EventBus,
        key: str,
        deliver: Deliver | PlainDeliver,
        on_completed: Callable[[], None] | None = None,
    ) -> None:
        self._bus, self._key, self._deliver = bus, key, deliver
        self.on_completed = on_completed

    def dispose(self) -> None:
        self._bus._detach(self)


class EventBus:
    """The hot, kind-indexed event stream every runtime event is published on, plus ``errors``."""

    def __init__(self, context_for: Callable[[str | None], SessionContext] | None = None) -> None:
        self._context_for = context_for or _bare_context
        # The raw hot Subject (every event): private, since its observers are not
        # fault-isolated; everything handed out goes through observe()/attach().
        self._subject: Subject[InvocationEvent] = Subject()
        # kind value -> callbacks; tuples replaced on change (copy-on-write), never mutated,
        # so publish iterates them without a lock or a copy.
        self._routes: dict[str, tuple[Deliver, ...]] = {}
        self._any: tuple[Deliver, ...] = ()
        # every event, no context (the event log, observe("any")): first, and without the
        # context lookup when nobody else listens
        self._plain: tuple[PlainDeliver, ...] = ()
        self._plain_labels: dict[PlainDeliver, str] = {}  # the ones that may raise
        # run id -> callbacks (the run index): a subscription to one run costs nothing for
        # the events of other runs (a filter per subscription would see every event)
        self._by_run: dict[str, tuple[Deliver, ...]] = {}
        self._indexed = False  # any callback in _routes, _any or _by_run (set under the lock)
        self._runs_only: dict[str, tuple[Deliver, ...]] | None = None  # _by_run, if only it is
        self._compiled: dict[type, tuple[Deliver, ...]] = {}  # event class -> kind's + ANY's
        self._route_lock = threading.Lock()
        self._completers: set[_Detach] = set()  # observe() subscriptions, for complete()
        self._is_completed = False
        self._errors: Subject[SubscriberError] = Subject()

    def publish(self, event: InvocationEvent) -> None:
        """Deliver ``event`` synchronously to the plain subscribers (:meth:`attach_plain`),
        its kind's subscribers, ``ANY``'s, its run's subscribers (:meth:`attach_run`), and
        observers."""
        for plain in self._plain:
            try:
                plain(event)
            except Exception as exc:  # an observe("any") observer raised (the others never do)
                self._plain_raised(plain, event, exc)
        # what is indexed decides the lookups: none (only plain subscribers), the run index
        # alone (open RunStreams: one lookup), or the kinds too (their callbacks and ANY's per
        # event class, compiled at every change: one lookup)
        runs_only = self._runs_only
        if runs_only is not None:
            of_run = runs_only.get(event.run_id)  # type: ignore[arg-type]
            if of_run:
                context = self._context_for(event.run_id)
                for deliver in of_run:
                    deliver(event, context)
        elif self._indexed:
            routes = self._compiled.get(type(event))
            if routes is None:  # a class of its own (a provider's subclass): by its kind
                routes = self._routes.get(event.type, ()) + self._any
            of_run = self._by_run.get(event.run_id) if self._by_run else None  # type: ignore[arg-type]
            if routes or of_run:
                context = self._context_for(event.run_id)  # once per event, not per subscriber
                for deliver in routes:
                    deliver(event, context)
                if of_run:
                    for deliver in of_run:
                        deliver(event, context)
        subject = self._subject
        if subject.observers:
            try:
                subject.on_next(event)
            except Exception as exc:  # a raw Subject observer raised
                self.report(
                    SubscriberError(
                        f"a Subject observer raised {type(exc).__name__}: {exc}",
                        subscription="subject",
                        event=event,
                        cause=exc,
                    )
                )

    def attach(
        self,
        kind: EventKind | str,
        deliver: Deliver,
        on_completed: Callable[[], None] | None = None,
    ) -> abc.DisposableBase:
        """Call ``deliver(event, context)`` for each event of ``kind``; it must not raise.

        ``on_completed`` is called by :meth:`complete`. Dispose the result to detach.
        """
        key = EventKind.parse(kind).value

        def add() -> None:
            if key == "any":
                self._any = (*self._any, deliver)
            else:
                self._routes[key] = (*self._routes.get(key, ()), deliver)

        return self._register(_Detach(self, key, deliver, on_completed), add)

    def attach_plain(
        self,
        deliver: PlainDeliver,
        on_completed: Callable[[], None] | None = None,
        *,
        label: str | None = None,
    ) -> abc.DisposableBase:
        """Call ``deliver(event)`` for every event, before any context-taking subscriber; it
        must not raise, unless it has a ``label``: then what it raises is reported on
        :attr:`errors` as the ``label`` subscription's (an observer's ``on_next`` is attached
        as it is, without a guarding frame per event). ``on_completed`` is called by
        :meth:`complete`. Dispose to detach."""

        def add() -> None:
            self._plain = (*self._plain, deliver)
            if label is not None:
                self._plain_labels[deliver] = label

        return self._register(_Detach(self, _PLAIN_KEY, deliver, on_completed), add)

    def _plain_raised(self, deliver: PlainDeliver, event: InvocationEvent, exc: Exception) -> None:
        label = self._plain_labels.get(deliver)
        if label is None:  # pragma: no cover - rxinvoke's own plain subscribers never raise
            _log.exception("rxinvoke: a plain subscriber raised", exc_info=exc)
            return
        self._observer_raised(label, event, exc)

    def _observer_raised(self, label: str, event: InvocationEvent, exc: Exception) -> None:
        self.report(
            SubscriberError(
                f"{label} observer raised {type(exc).__name__}: {exc}",
                subscription=label,
                event=event,
                cause=exc,
            )
        )

    def attach_run(
        self,
        run_id: str,
        deliver: Deliver,
        on_completed: Callable[[], None] | None = None,
    ) -> abc.DisposableBase:
        """Call ``deliver(event, context)`` for each event of run ``run_id``; it must not raise.

        ``on_completed`` is called by :meth:`complete`. Dispose the result to detach.
        """

        def add() -> None:
            self._by_run[run_id] = (*self._by_run.get(run_id, ()), deliver)

        return self._register(_Detach(self, _RUN_KEY + run_id, deliver, on_completed), add)

    def _register(self, token: _Detach, add: Callable[[], None]) -> _Detach:
        """Index ``token``'s callback with ``add`` (under the lock); a completed bus completes
        the token at once instead."""
        with self._route_lock:
            if self._is_completed:
                on_completed, token.on_completed = token.on_completed, None
                if on_completed is not None:
                    on_completed()
                return token
            add()
            self._reindex(token._key)
            if token.on_completed is not None:
                self._completers.add(token)
        return token

    def _reindex(self, key: str | None = None) -> None:
        """Note what is indexed and compile each event class's kind and ANY callbacks (call
        under the lock, after every change; ``key``: the index that changed, None for all):
        a change of one kind recompiles its classes only."""
        kinds = bool(self._routes or self._any)
        self._indexed = kinds or bool(self._by_run)
        self._runs_only = self._by_run if self._by_run and not kinds else None
        if key is not None and (key.startswith(_RUN_KEY) or key == _PLAIN_KEY):
            return  # the kind index is as it was
        every, routes = self._any, self._routes
        if not kinds:
            self._compiled = {}
        elif key is None or key == "any" or not self._compiled:
            self._compiled = {cls: routes.get(kind, ()) + every for cls, kind in _EVENT_KINDS}
        else:  # in place: a publisher's lookup meanwhile sees the old entry or the new one
            compiled = self._compiled
            for cls in _CLASSES_OF.get(key, ()):
                compiled[cls] = routes.get(key, ()) + every

    def complete(self) -> None:
        """End the stream: complete every observer and ``errors``; later publishes are dropped."""
        with self._route_lock:
            self._is_completed = True
            completers, self._completers = list(self._completers), set()
            self._routes, self._any, self._by_run, self._plain = {}, (), {}, ()
            self._reindex()
        for token in completers:
            if token.on_completed is not None:
                token.on_completed()
        self._subject.on_completed()
        self._errors.on_completed()

    def _detach(self, token: _Detach) -> None:
        with self._route_lock:
            self._completers.discard(token)
            self._unindex(token._key, token._deliver)
            self._reindex(token._key)

    def _unindex(self, key: str, deliver: Deliver | PlainDeliver) -> None:
        """Remove ``deliver`` from the index ``key`` names (under the lock)."""
        if key.startswith(_RUN_KEY):
            run_id = key[len(_RUN_KEY) :]
            callbacks = self._by_run.get(run_id, ())
            if deliver in callbacks:
                index = callbacks.index(deliver)
                left = callbacks[:index] + callbacks[index + 1 :]
                if left:
                    self._by_run[run_id] = left
                else:
                    del self._by_run[run_id]
            return
        if key == _PLAIN_KEY:
            self._plain = tuple(p for p in self._plain if p is not deliver)
            self._plain_labels.pop(deliver, None)  # type: ignore[arg-type]
            return
        current = self._any if key == "any" else self._routes.get(key, ())
        if deliver not in current:
            return
        index = current.index(deliver)
        remaining = current[:index] + current[index + 1 :]
        if key == "any":
            self._any = remaining
        elif remaining:
            self._routes[key] = remaining
        else:
            del self._routes[key]

    def observe(self, kind: EventKind | str = EventKind.ANY) -> Observable[InvocationEvent]:
        """A hot Observable of the events of ``kind``; its observers are fault-isolated."""
        member = EventKind.parse(kind)
        label = f"observe({member.value})"

        def subscribe(
            observer: abc.ObserverBase[InvocationEvent],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            def deliver(event: InvocationEvent, context: SessionContext) -> None:
                try:
                    observer.on_next(event)
                except Exception as exc:
                    self._observer_raised(label, event, exc)

            if member is EventKind.ANY:  # no context: its on_next itself, guarded by publish
                return self.attach_plain(observer.on_next, observer.on_completed, label=label)
            return self.attach(member, deliver, observer.on_completed)

        return reactivex.create(subscribe)

    @property
    def errors(self) -> Observable[SubscriberError]:
        """Subscriber failures: raising or timed-out handlers, buffer overflows."""
        return self._errors

    def report(self, error: SubscriberError) -> None:
        """Log ``error`` and publish it on :attr:`errors` (an observer of errors cannot break it)."""
        _log.warning("%s", error.message)
        try:
            self._errors.on_next(error)
        except Exception:
            _log.exception("an observer of rxinvoke errors raised")


@dataclass(frozen=True)
class SubscriptionStats:
    """A snapshot of the counters of one ``on`` subscription."""

    delivered: int = 0
    """Handler calls that returned normally."""
    dropped: int = 0
    """Events dropped by the overflow policy."""
    failed: int = 0
    """Handler calls that raised or timed out."""
    in_flight: int = 0
    """Handler calls running now."""
    queued: int = 0
    """Events waiting in the buffer."""
