"""EventLog: turns a runtime's published events into numbered envelopes and makes them durable.

Numbering: the log listens on the bus (every event, ``attach_plain``) and, for each event of a run it was told
about (:meth:`EventLog.begin`), gives it the run's next ``seq`` synchronously, inside
``publish``: the seq order is the publication order. Events of runs the log does not know
(published by hand for other runs) are not logged. The
:class:`~rxinvoke.stores.base.EventEnvelope` of a numbered event is built only when someone
reads it (a follower, an observer of :attr:`EventLog.envelopes`, a store that iterates its
batch): writes hand the store an :class:`~rxinvoke.stores.base.EventBatch` of plain entries.

Batching: envelopes wait in memory until a step boundary, where the runtime commits the
step's messages (a model turn with tool calls, tool results) with
:meth:`EventLog.commit_messages`: the messages and every waiting envelope of every run go in
one store transaction (group commit). A run's opening (its user message) is committed by
``Store.begin_run`` before its first event, so its first events (``run_started``,
``context_built``, …) go with its next write. :meth:`EventLog.flush` writes waiting envelopes
alone. Writes are strictly ordered: one at a time, or, for a store that runs its calls in call
order (``ordered_calls``: MemoryStore, SqliteStore), handed over at once behind the writes in
flight, so its worker commits concurrent runs' writes together; a failed write's envelopes go
back to the queue in seq order. A write outlives a cancelled flusher, so a cancelled run never
writes half a batch or the same batch twice.
:meth:`EventLog.finish` writes the last envelopes together with the run's terminal status
(``Store.finish_run``) and is awaited before ``run()`` returns: the stored log of a run is
always a prefix of what it published, and complete once it has ended. The run's last
messages (its final answer) may be handed over with :meth:`EventLog.defer_messages`: they
are then committed by ``finish``, in that same transaction (one write fewer per run).

Replay: :meth:`EventLog.replay` reads what is stored; :meth:`EventLog.subscribe_run` replays
what is stored after a seq and then continues live. It attaches to the live envelopes
*first*, snapshots the envelopes not yet written, then reads the store: every envelope is
either stored, in that snapshot, or arrives live afterwards, and a cursor on ``seq`` drops
duplicates, so the consumer sees each seq exactly once, in order. A run that is not running
in this process (another process writes it) is followed by polling the store.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable
from reactivex.subject import Subject

from ._bus import EventBus
from ._futures import retrieve, shielded, start_eagerly
from .errors import StoreError, SubscriberError, UnknownRun
from .events import InvocationEvent, TextDelta
from .messages import Message
from .stores._packed import KEEPERS, TEXT_TWIN_OF, SegmentItem, cut, dealias, revive, twin_item
from .stores.base import EventBatch, EventEnvelope, LogEntry, RunOutcome, Store, Stretch, session_of

__all__ = ("Collector", "EventLog")

_log = logging.getLogger("rxinvoke")

_MAX_POLL = 1.0

# bound once: a method looked up on an imported name is a bound-method object per call (3.11)
_keeper_of = KEEPERS.get
_TEXT_DELTA = TextDelta


class _RunLog:
    __slots__ = ("back", "first", "key", "pending", "run_id", "seq", "session_id", "tap", "waiting")

    def __init__(self, run_id: str, session_id: uuid.UUID | None, seq: int) -> None:
        self.run_id = run_id
        self.session_id = session_id
        self.key = None if session_id is None else str(session_id)  # for the entries
        self.seq = seq
        # the events numbered and not handed to a write yet, as the log keeps them: seq
        # ``first + i`` at index i (a list item per event, no tuple: see stores.base.Stretch)
        self.pending: list[SegmentItem] = []
        self.first = 0
        self.back: list[tuple[int, list[SegmentItem]]] = []  # failed writes' (first, events)
        self.waiting = False  # in EventLog._waiting
        self.tap: list[SegmentItem] | None = None  # the collectors' open list (EventLog._tapping)

    def take(self) -> list[Stretch]:
        """What waits for a write, as stretches in seq order (the failed writes' first)."""
        run_id, key = self.run_id, self.key
        self.waiting = False
        if not self.back:
            taken = [(run_id, key, self.first, self.pending)]
            self.pending = []
            return taken
        chunks = sorted((*self.back, (self.first, self.pending)) if self.pending else self.back)
        self.back, self.pending = [], []
        stretches: list[Stretch] = []
        for first, events in chunks:
            if stretches and stretches[-1][2] + len(stretches[-1][3]) == first:
                stretches[-1][3].extend(events)  # contiguous: one stretch
            else:
                stretches.append((run_id, key, first, list(events)))
        return stretches


class Collector:
    """Where :meth:`EventLog.collect` hands the numbered events: one list per run and window (a
    :data:`~rxinvoke.stores.base.Stretch`'s items: the event log appends each event to its
    run's open list itself, no call into the collector and no entry per event). :meth:`take`
    returns what is held, as stretches in numbering order per run, and closes the open lists
    (later events start new ones). ``on_first()`` is called when a list is opened for it (or
    :meth:`add` holds an entry) while it holds no event, ``on_full()`` when an event takes it
    past ``limit`` events (the owner then drops the oldest, :meth:`drop`, or moves ``limit``).
    Neither may raise.

    Each event is as the log keeps it (``stores._packed.kept``), a ``text_delta`` twin an alias
    of its fragment's tuple within a list (``stores._packed.twin_item``), never the first item
    of a list.
    """

    __slots__ = ("_base", "_held", "_limit", "_log", "on_first", "on_full")

    def __init__(self, on_first: Callable[[], None], on_full: Callable[[], None], limit: int) -> None:
        self.on_first, self.on_full = on_first, on_full
        self._limit = limit
        # [run_id, key, first seq, items, index of the first not dropped] per stretch held
        self._held: list[list[Any]] = []
        self._log: EventLog | None = None
        # the events held are the log's count of tapped events minus this (a take sets it to
        # that count; add() lowers it, drop() raises it)
        self._base = 0

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = value
        if self._log is not None:
            self._log._rebound()

    def __len__(self) -> int:
        """The events held."""
        return (0 if self._log is None else self._log._tap_count) - self._base

    def add(self, entry: LogEntry) -> None:
        """Hold one ``(run_id, session key, seq, event)`` entry (without a log: a tap fed by
        hand), joined to the stretch before it when it continues it."""
        run_id, key, seq, item = entry
        if not len(self):
            self.on_first()
        held = self._held
        last = held[-1] if held else None
        if last is not None and last[0] == run_id and last[2] + len(last[3]) == seq and last[4] == -1:
            last[3].append(item)
        else:  # a list of its own (index -1: not the log's, a join is allowed)
            held.append([run_id, key, seq, [item], -1])
        self._base -= 1
        if len(self) > self._limit:
            self.on_full()

    def _open(self, run_id: str, key: str | None, seq: int, items: list[SegmentItem]) -> None:
        if not len(self):
            self.on_first()
        self._held.append([run_id, key, seq, items, 0])

    def take(self) -> list[Stretch]:
        """Everything held, as stretches (the open lists closed: nothing is appended to them
        any more)."""
        if self._log is not None:
            self._log._close_taps()
        taken: list[Stretch] = []
        for run_id, key, first, items, start in self._held:
            start = max(start, 0)
            if start < len(items):  # (its fragment dropped, a twin is spelled out)
                taken.append((run_id, key, first + start, cut(items, start)))
        self._held = []
        self._reset()
        return taken

    def drop(self, count: int) -> int:
        """Drop up to ``count`` of the oldest events held; the number dropped."""
        dropped = 0
        held = self._held
        i = 0
        while i < len(held) and dropped < count:
            stretch = held[i]
            items, start = stretch[3], max(stretch[4], 0)
            n = min(len(items) - start, count - dropped)
            dropped += n
            if start + n < len(items):
                stretch[4] = start + n
            elif stretch[4] != -1 and items is self._open_list(stretch):
                stretch[4] = start + n  # all dropped; the log still appends to it: kept, empty
                i += 1
            else:
                del held[i]
        self._base += dropped
        if self._log is not None:
            self._log._rebound()
        return dropped

    def _open_list(self, stretch: list[Any]) -> list[SegmentItem] | None:
        """The run's open list, if ``stretch`` is of a run the log still appends to."""
        if self._log is None:
            return None
        run = self._log._runs.get(stretch[0])
        return None if run is None else run.tap

    def _reset(self) -> None:
        self._base = 0 if self._log is None else self._log._tap_count
        if self._log is not None:
            self._log._rebound()


class EventLog:
    """The durable, replayable log of the runs a runtime executes.

    Args:
        store: where envelopes are written.
        bus: the bus whose events are logged (the log attaches to it at once).
    """

    def __init__(self, store: Store, bus: EventBus) -> None:
        self.store = store
        self._bus = bus
        self._runs: dict[str, _RunLog] = {}
        # the runs with numbered events not handed to a write yet (each keeps them: an envelope
        # is built only when someone reads it: a follower, an observer of envelopes, a store
        # that wants one)
        self._waiting: list[_RunLog] = []
        # id(batch) -> (its runs, the batch, its write), in write order; a write removes its own
        self._in_flight: dict[int, tuple[list[_RunLog], EventBatch, asyncio.Future[None]]] = {}
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._written = 0
        self._deferred: dict[str, list[Message]] = {}
        self._live: Subject[EventEnvelope] = Subject()
        # run id -> followers (subscribe_run): indexed, so a follower costs nothing for the
        # envelopes of other runs
        self._followers: dict[str, tuple[Callable[[EventEnvelope], None], ...]] = {}
        self._collectors: tuple[Collector, ...] = ()
        self._tapping: list[_RunLog] = []  # the runs with an open list for the collectors
        self._tap_count = 0  # events appended to the collectors' lists, ever
        self._tap_bound = sys.maxsize  # past this count, some collector holds over its limit
        self._tapped = False  # any collector, follower or observer of envelopes
        self._envelopes: Observable[EventEnvelope] = reactivex.create(self._observe_live)
        self._attachment = bus.attach_plain(self._on_event)

    # --- numbering ---------------------------------------------------------------------------

    def begin(self, run_id: str, session_id: uuid.UUID | None, *, last_seq: int = 0) -> None:
        """Log the events of ``run_id`` from now on, numbered from ``last_seq + 1``."""
        self._runs[run_id] = _RunLog(run_id, session_id, last_seq)

    def end(self, run_id: str) -> None:
        """Stop logging ``run_id`` (its envelopes still waiting are written by the next flush;
        messages deferred and not written by :meth:`finish` are dropped)."""
        self._runs.pop(run_id, None)
        self._deferred.pop(run_id, None)

    def is_active(self, run_id: str) -> bool:
        """True while the events of ``run_id`` are being logged by this log."""
        return run_id in self._runs

    def follow(self, run_id: str, callback: Callable[[EventEnvelope], None]) -> abc.DisposableBase:
        """Call ``callback(envelope)`` for each envelope of ``run_id`` as it is numbered (it
        must not raise); dispose the result to stop."""
        self._followers[run_id] = (*self._followers.get(run_id, ()), callback)
        self._retap()

        def stop() -> None:
            left = tuple(c for c in self._followers.get(run_id, ()) if c is not callback)
            if left:
                self._followers[run_id] = left
            else:
                self._followers.pop(run_id, None)
            self._retap()

        return Disposable(stop)

    def collect(self, collector: Collector) -> abc.DisposableBase:
        """Hand every event to ``collector`` as it is numbered (its run's open list: a tap
        without a call per event); dispose the result to stop (what it holds stays)."""
        if collector._log is not None:
            raise RuntimeError("this collector collects from a log already")
        self._close_taps()  # a list open now has no place in the new collector's
        collector._log = self
        self._collectors = (*self._collectors, collector)
        collector._reset()
        self._retap()

        def stop() -> None:
            if collector._log is not self:
                return
            self._close_taps()  # nothing more is appended to what it holds
            collector._base = -len(collector)  # held without the log's count
            collector._log = None
            self._collectors = tuple(c for c in self._collectors if c is not collector)
            self._rebound()
            self._retap()

        return Disposable(stop)

    def _open_tap(self, run: _RunLog, seq: int, item: SegmentItem) -> None:
        """Open ``run``'s list for the collectors, with its first event."""
        tap = run.tap = [item]
        self._tapping.append(run)
        for collector in self._collectors:
            collector._open(run.run_id, run.key, seq, tap)

    def _close_taps(self) -> None:
        for run in self._tapping:
            run.tap = None
        self._tapping = []

    def _rebound(self) -> None:
        """Recompute the count past which a collector holds more than its limit."""
        self._tap_bound = min(
            (c._base + c._limit for c in self._collectors), default=sys.maxsize
        )

    def _tap_full(self) -> None:
        for collector in self._collectors:
            if len(collector) > collector._limit:
                collector.on_full()
        self._rebound()

    @property
    def envelopes(self) -> Observable[EventEnvelope]:
        """A hot Observable of every envelope as it is numbered (before it is stored)."""
        return self._envelopes

    def _observe_live(
        self, observer: abc.ObserverBase[EventEnvelope], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        subscription = self._live.subscribe(observer)
        self._retap()

        def stop() -> None:
            subscription.dispose()
            self._retap()

        return Disposable(stop)

    def _retap(self) -> None:
        """Note whether anything taps the numbered entries (after every change of the taps):
        while nothing does, numbering an event looks at none of them."""
        self._tapped = bool(self._collectors or self._followers or self._live.observers)

    def _on_event(self, event: InvocationEvent) -> None:
        run_id = event.run_id
        if run_id is None:
            return
        run = self._runs.get(run_id)
        if run is None:
            return
        seq = run.seq = run.seq + 1
        # kept until written in the run's list (no tuple per event), as a tuple of plain values
        # when it can be (stores._packed.kept): one the collector stops tracking, so many
        # runs' fragments waiting for their transactions cost it next to nothing
        pending = run.pending
        cls = type(event)
        alias = False
        item: SegmentItem
        # the twin of the fragment before it (the runtime builds it with the same moment and
        # delta): kept as that fragment's tuple, an alias (stores._packed.twin_item)
        if cls is _TEXT_DELTA and pending:
            last = pending[-1]
            values = event.__dict__
            alias = (
                type(last) is tuple
                and last[1] is values["timestamp"]
                and last[2] == TEXT_TWIN_OF
                and last[3] == values["delta"]
            )
        if alias:
            item = last
        else:
            keep = _keeper_of(cls)
            item = event if keep is None else keep(event.__dict__)
        if not pending:
            run.first = seq
            if not run.waiting:
                run.waiting = True
                self._waiting.append(run)
        pending.append(item)
        if not self._tapped:
            return
        if self._collectors:  # the run's open list (its callbacks never raise)
            tap = run.tap
            if tap is not None:
                tap.append(item)  # an alias too: the fragment is the item before it there
            else:  # a list's first item is never an alias
                self._open_tap(run, seq, twin_item(item) if alias else item)  # type: ignore[arg-type]
            count = self._tap_count = self._tap_count + 1
            if count > self._tap_bound:
                self._tap_full()
        followers = self._followers.get(run_id) if self._followers else None
        observed = self._live.observers
        if followers or observed:
            envelope = EventEnvelope.of(event, run_id, run.session_id, seq)
            if followers:
                for follow in followers:
                    follow(envelope)  # followers are guarded: they never raise
            if observed:
                self._live.on_next(envelope)  # observers of _live are guarded: they never raise

    # --- writing ----------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write every envelope numbered so far (one transaction per batch).

        Raises:
            StoreError: the write failed; the envelopes stay queued for the next flush.
        """
        target = self._written + self._unwritten()
        while self._written < target:
            if self._waiting:
                await self._serialized(self.store.append_events)
            elif self._in_flight:  # stores finish writes in order: the last one ends last
                await shielded(next(reversed(self._in_flight.values()))[2])
            else:
                return  # nothing left: a write failed and its envelopes were numbered over

    def _unwritten(self) -> int:
        waiting = sum(len(run.pending) + sum(len(e) for _, e in run.back) for run in self._waiting)
        return waiting + sum(len(batch) for _, batch, _ in self._in_flight.values())

    async def commit_messages(self, session_id: uuid.UUID, messages: Sequence[Message]) -> None:
        """Commit ``messages`` to the session together with every envelope numbered so far.

        One transaction (``Store.append_messages(..., events=...)``): a step's messages and
        its events are written at once, and the message is committed whole or not at all.
        """

        async def commit(batch: Sequence[EventEnvelope]) -> None:
            await self.store.append_messages(session_id, messages, events=batch)

        await self._serialized(commit, always=True)

    def defer_messages(self, run_id: str, messages: Sequence[Message]) -> None:
        """Commit ``messages`` (the run's last) with its terminal status, by :meth:`finish`.

        Until then they are not stored: the caller must not start another run of the session
        before ``finish`` returns.
        """
        self._deferred.setdefault(run_id, []).extend(messages)

    async def finish(self, run_id: str, outcome: RunOutcome) -> None:
        """Write the waiting envelopes, the run's deferred messages and its terminal
        ``outcome`` in one transaction."""
        await shielded(self.finishing(run_id, outcome))

    def finishing(self, run_id: str, outcome: RunOutcome) -> asyncio.Future[None]:
        """Start :meth:`finish`'s write; its outcome as a future (the write goes on when its
        waiter stops waiting). For a store that runs its calls in call order, the write itself
        (no task around it: a burst of runs waiting for their last writes keeps fewer objects)."""

        async def settle(batch: Sequence[EventEnvelope]) -> None:
            messages = self._deferred.get(run_id, [])
            await self.store.finish_run(run_id, outcome, events=batch, messages=messages)
            self._deferred.pop(run_id, None)

        if getattr(self.store, "ordered_calls", False):
            return self._start(settle, always=True)
        return start_eagerly(self._serialized(settle, always=True))

    async def _serialized(
        self, write_with: Callable[[Sequence[EventEnvelope]], Awaitable[None]], *, always: bool = False
    ) -> None:
        # A store that runs its calls in call order (``ordered_calls``) gets each write at
        # once, behind the writes in flight: its worker commits concurrent runs' writes
        # together. Any other store gets one write at a time, in arrival order: a FIFO lock
        # wakes one waiter per finished write (waiters polling the current write would wake
        # all of them each time: quadratic with many concurrent runs). The lock is released
        # when the write is done, not when this caller leaves: a cancelled caller does not
        # cancel its write (shield), and the next write cannot start before it ends.
        if getattr(self.store, "ordered_calls", False):
            await shielded(self._start(write_with, always=always))
            return
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:  # a lock belongs to one loop
            self._lock = (loop, asyncio.Lock())
        lock = self._lock[1]
        await lock.acquire()
        try:
            write = self._start(write_with, always=always)
        except BaseException:
            lock.release()
            raise
        if write.done():  # written at once (start_eagerly): the next write need not wait
            lock.release()
        else:
            write.add_done_callback(lambda _: lock.release())
        await shielded(write)

    def _start(
        self, write_with: Callable[[Sequence[EventEnvelope]], Awaitable[None]], *, always: bool = False
    ) -> asyncio.Future[None]:
        runs, self._waiting = self._waiting, []
        batch = EventBatch.of_stretches([stretch for run in runs for stretch in run.take()])
        write = start_eagerly(self._write_batch(runs, batch, write_with, always))
        if not write.done():
            self._in_flight[id(batch)] = (runs, batch, write)
            write.add_done_callback(retrieve)
        return write

    async def _write_batch(
        self,
        runs: list[_RunLog],
        batch: EventBatch,
        write_with: Callable[[Sequence[EventEnvelope]], Awaitable[None]],
        always: bool,
    ) -> None:
        try:
            if batch or always:
                await write_with(batch)
        except BaseException as exc:
            # retried by the next write, each run's envelopes still in seq order (with writes
            # in flight, envelopes numbered later may be back already: take() sorts them)
            by_run = {run.run_id: run for run in runs}
            for run_id, _key, first, events in batch.stretches:
                run = by_run[run_id]
                run.back.append((first, events))
                if not run.waiting:
                    run.waiting = True
                    self._waiting.append(run)
            if isinstance(exc, Exception):
                _log.warning("event log write failed (%d envelopes kept for retry): %s", len(batch), exc)
            raise
        else:
            self._written += len(batch)
        finally:
            self._in_flight.pop(id(batch), None)

    def unflushed(self, run_id: str) -> list[EventEnvelope]:
        """The envelopes of ``run_id`` numbered but not yet stored, in seq order."""
        stretches = [s for _, batch, _ in self._in_flight.values() for s in batch.stretches]
        for run in self._waiting:
            if run.run_id == run_id:
                stretches.extend((run_id, run.key, first, events) for first, events in run.back)
                if run.pending:
                    stretches.append((run_id, run.key, run.first, run.pending))
        return sorted(
            (
                EventEnvelope.of(revive(event), run_id, session_of(key), first + i)
                for rid, key, first, events in stretches
                if rid == run_id
                for i, event in enumerate(dealias(events))
            ),
            key=_seq_of,
        )

    # --- reading ----------------------------------------------------------------------------

    def replay(self, run_id: str, after_seq: int | None = None) -> Observable[EventEnvelope]:
        """A cold Observable of the stored envelopes of ``run_id`` with ``seq > after_seq``.

        It completes after the last stored envelope; an unknown run arrives as
        ``on_error(UnknownRun)``. Subscribe inside the running asyncio loop.
        """

        def subscribe(
            observer: abc.ObserverBase[EventEnvelope],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            async def read() -> None:
                try:
                    stored = await self.store.read_events(run_id, after_seq=after_seq)
                except Exception as exc:
                    observer.on_error(exc)
                    return
                for envelope in stored:
                    observer.on_next(envelope)
                observer.on_completed()

            task = asyncio.get_running_loop().create_task(read())
            task.add_done_callback(retrieve)

            def dispose() -> None:
                task.cancel()

            return Disposable(dispose)

        return reactivex.create(subscribe)

    def subscribe_run(
        self, run_id: str, after_seq: int | None = None, *, poll_interval: float = 0.05
    ) -> Observable[EventEnvelope]:
        """Replay the envelopes of ``run_id`` stored after ``after_seq``, then continue live.

        Every seq after ``after_seq`` is delivered exactly once, in order, even while the run
        publishes during the replay; the Observable completes after the terminal envelope.
        A run running in another process is followed by polling the store every
        ``poll_interval`` seconds (backing off to 1 s while nothing changes). An unknown run
        arrives as ``on_error(UnknownRun)``. Subscribe inside the running asyncio loop.
        """

        def subscribe(
            observer: abc.ObserverBase[EventEnvelope],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            cursor = max(after_seq or 0, 0)  # a negative seq: the whole log, as replay
            return _Follower(self, run_id, cursor, observer, poll_interval).start()

        return reactivex.create(subscribe)

    def _report(self, what: str, exc: Exception) -> None:
        self._bus.report(
            SubscriberError(
                f"{what} observer raised {type(exc).__name__}: {exc}", subscription=what, cause=exc
            )
        )


class _Follower:
    """One ``subscribe_run`` subscription: replay, then live, with a seq cursor."""

    def __init__(
        self,
        log: EventLog,
        run_id: str,
        cursor: int,
        observer: abc.ObserverBase[EventEnvelope],
        poll_interval: float,
    ) -> None:
        self._log = log
        self._run_id = run_id
        self._cursor = cursor
        self._observer = observer
        self._poll_interval = poll_interval
        self._held: list[EventEnvelope] | None = []  # live envelopes held during the replay
        self._done = False
        self._live: abc.DisposableBase | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> abc.DisposableBase:
        log = self._log
        self._live = log.follow(self._run_id, self._on_live)
        snapshot = log.unflushed(self._run_id)
        active = log.is_active(self._run_id)
        self._task = asyncio.get_running_loop().create_task(self._catch_up(snapshot, active))
        self._task.add_done_callback(retrieve)
        return Disposable(self._dispose)

    def _dispose(self) -> None:
        self._done = True
        if self._live is not None:
            self._live.dispose()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _on_live(self, envelope: EventEnvelope) -> None:
        if envelope.run_id != self._run_id or self._done:
            return
        if self._held is not None:
            self._held.append(envelope)
        else:
            self._deliver(envelope)

    def _deliver(self, envelope: EventEnvelope) -> None:
        if self._done:
            return
        if envelope.seq <= self._cursor:  # already delivered (stored and live, or a re-read)
            if envelope.event.is_terminal:  # the run ended at or before after_seq
                self._complete()
            return
        if envelope.seq != self._cursor + 1:
            self._fail(
                StoreError(
                    f"run {self._run_id!r}: seq {envelope.seq} follows {self._cursor} "
                    "(the log has a gap)"
                )
            )
            return
        self._cursor = envelope.seq
        try:
            self._observer.on_next(envelope)
        except Exception as exc:
            self._log._report(f"subscribe_run({self._run_id})", exc)
            self._dispose()
            return
        if envelope.event.is_terminal:
            self._complete()

    def _complete(self) -> None:
        self._dispose()
        self._observer.on_completed()

    def _fail(self, error: Exception) -> None:
        self._dispose()
        self._observer.on_error(error)

    async def _catch_up(self, snapshot: Sequence[EventEnvelope], active: bool) -> None:
        store = self._log.store
        try:
            stored = await store.read_events(self._run_id, after_seq=self._cursor)
        except UnknownRun as exc:
            if not active:
                self._fail(exc)
                return
            stored = []
        except Exception as exc:
            self._fail(exc)
            return
        held, self._held = self._held or [], None  # from here on live envelopes go straight out
        by_seq: dict[int, EventEnvelope] = {}
        for envelope in (*stored, *snapshot, *held):
            by_seq.setdefault(envelope.seq, envelope)
        for seq in sorted(by_seq):
            self._deliver(by_seq[seq])
        if self._done or active:
            return  # the rest arrives live, up to the terminal envelope
        # Not running here: finished already, or another process runs it. A finished run's
        # terminal envelope is stored with its status, so reading after the status is enough.
        delay = self._poll_interval
        while not self._done:
            try:
                await store.recover_interrupted()
                record = await store.get_run(self._run_id)
                fresh = await store.read_events(self._run_id, after_seq=self._cursor)
            except Exception as exc:
                self._fail(exc)
                return
            for envelope in fresh:
                self._deliver(envelope)
            if self._done:
                return
            if record is None or record.is_finished:
                self._complete()  # nothing after after_seq
                return
            await asyncio.sleep(delay)
            delay = self._poll_interval if fresh else min(delay * 2, _MAX_POLL)


def _seq_of(envelope: EventEnvelope) -> int:
    return envelope.seq
