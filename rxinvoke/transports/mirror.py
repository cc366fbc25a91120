"""EventMirror: a runtime's envelopes mirrored to a transport's run streams, batched, off the run.

:meth:`EventMirror.attach` collects the runtime's numbered events (``runtime.log.collect``: the
seq of the durable log, no envelope built): the log itself appends each event to its run's
list in the mirror's buffer, without a call into the mirror or an entry per event — the run
never waits for the transport. A flusher task on the loop takes everything buffered (a list
per run), encodes each run's consecutive envelopes as segments (a burst of a streamed answer's
fragments becomes one entry) and writes them in one pipelined round trip; what arrives
meanwhile waits for the next write. A batch
waits ``interval`` seconds (3 ms by default) from its first envelope, and writes are at least
that far apart: under any load the mirror makes at most ~300 round trips a second (each costs
the loop a few hundred µs), and an observer in another process sees an event within about
``interval`` plus one round trip (measured: ``benchmarks/scale_out.py``). ``interval=0``
writes on the next loop iteration and back to back (lowest latency, most round trips).

The buffer holds each event as the log keeps it (the tuple of its plain values when it has
only those — most events: the GC does not track them while they wait; a text fragment's twin
as an alias of it), and a write's envelopes are encoded before it is sent (the events are not
kept alive while it is away).

:meth:`EventMirror.hold_end` keeps a run's terminal event back until
:meth:`EventMirror.release_end` (a worker: until the store has committed the run's end); it is
then written after the run's other events.
A slow or unreachable transport never blocks a run: the buffer keeps up to ``max_buffer``
envelopes; past that the oldest are dropped (a failed write's envelopes are kept encoded, as
its segments, and dropped a segment at a time), counted in :attr:`EventMirror.stats` and reported
once per overflow on the runtime's ``errors`` (a :class:`~rxinvoke.errors.SubscriberOverflow`
of the subscription ``"mirror"``); a reader of the run's stream then meets a gap in the seqs
(:class:`~rxinvoke.errors.ResumeGap`) and can read the durable store instead. A failed write is
retried with exponential backoff (50 ms doubling to 2 s), its envelopes kept in order.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from reactivex import abc
from reactivex.disposable import Disposable

from .._eventlog import Collector
from ..errors import SubscriberOverflow
from ..runtime import AgentRuntime
from ..stores.base import LogEntry
from ._wire import TERMINAL, split_end, stretch_segments
from .base import Segment, Transport

__all__ = ("EventMirror", "MirrorStats")

_log = logging.getLogger("rxinvoke")


@dataclass(frozen=True)
class MirrorStats:
    """Counters of one mirror."""

    mirrored: int = 0
    """Envelopes written to the transport."""
    dropped: int = 0
    """Envelopes dropped because the buffer was full."""
    failed_writes: int = 0
    """Writes that failed (and were retried)."""
    buffered: int = 0
    """Envelopes not written yet: waiting, or in a write that has not returned."""


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class EventMirror:
    """Mirrors every envelope of one runtime to ``transport`` (see the module docstring).

    Args:
        transport: where the run streams live.
        interval: seconds the first envelope of a batch waits for others, and the least time
            between two writes (0: the next loop iteration, back to back).
        max_buffer: envelopes kept at most while the transport is slow or away (waiting, or
            in a write that has not returned).
    """

    def __init__(
        self, transport: Transport, *, interval: float = 0.003, max_buffer: int = 100_000
    ) -> None:
        if interval < 0 or max_buffer < 1:
            raise ValueError("interval must be >= 0 and max_buffer >= 1")
        self.transport = transport
        self.interval = interval
        self.max_buffer = max_buffer
        # the log's events per run (each as the log keeps it: the tuple of its plain values
        # for most events, no object the GC tracks), appended by the log itself
        # (EventLog.collect: a list per run, no call per event)
        self._buffer = Collector(self._first_buffered, self._overflowed, max_buffer)
        # a failed write's segments, encoded already (written first at the next attempt)
        self._retry: list[tuple[str, Segment]] = []
        self._retrying = 0  # the envelopes in them
        # runs whose terminal event waits for release_end (hold_end), their held terminal
        # segments, and the ones released (written after what is buffered now)
        self._holding: set[str] = set()
        self._held_ends: dict[str, tuple[str, Segment]] = {}
        self._released: list[tuple[str, Segment]] = []
        self._mirrored = 0
        self._dropped = 0
        self._unreported = 0
        self._failed = 0
        self._writing = 0
        self._runtime: AgentRuntime | None = None
        self._subscription: abc.DisposableBase | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Handle | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._pace: asyncio.Future[None] | None = None  # the wait between two writes
        self._hurry = False  # flush() waits: no wait between writes until the buffer is empty
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def stats(self) -> MirrorStats:
        return MirrorStats(
            self._mirrored,
            self._dropped,
            self._failed,
            len(self._buffer) + self._writing + self._retrying + len(self._held_ends) + len(self._released),
        )

    def attach(self, runtime: AgentRuntime) -> abc.DisposableBase:
        """Mirror ``runtime``'s envelopes from now on (call inside its running loop); dispose
        the result to stop observing (what is buffered is still written: :meth:`aclose`)."""
        if self._subscription is not None:
            raise RuntimeError("this mirror is attached already")
        self._runtime = runtime
        self._loop = asyncio.get_running_loop()
        self._subscription = runtime.log.collect(self._buffer)

        def detach() -> None:
            if self._subscription is not None:
                self._subscription.dispose()
                self._subscription = None

        return Disposable(detach)

    def add(self, entry: LogEntry) -> None:
        """Mirror one ``(run_id, session key, seq, event)`` entry (by hand: once attached, the
        runtime's log hands over each numbered event itself)."""
        self._buffer.add(entry)

    def _first_buffered(self) -> None:
        if self._timer is None and self._flusher is None and self._loop is not None:
            self._idle.clear()  # (set only when neither is: the flusher found nothing left)
            self._timer = self._later(self._loop)

    def _overflowed(self) -> None:
        # the bound counts what is in flight (a write not returned, a failed write kept)
        self._trim()

    def _in_flight(self, writing: int, retrying: int) -> None:
        """Record what is kept outside the buffer (it counts against the bound)."""
        self._writing, self._retrying = writing, retrying
        self._buffer.limit = self.max_buffer - writing - retrying

    def _later(self, loop: asyncio.AbstractEventLoop) -> asyncio.Handle:
        if self.interval:
            return loop.call_later(self.interval, self._start_flush)
        return loop.call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._timer = None
        if self._flusher is None and self._loop is not None:
            self._flusher = self._loop.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        delay = 0.05
        try:
            while self._pending():
                self._report_drops()
                taken = self._buffer.take()
                # encoded before the write: the events are not kept alive while it is away
                fresh = list(stretch_segments(taken))
                count = self._retrying + sum(len(stretch[3]) for stretch in taken)
                del taken
                if self._holding:
                    fresh, held = self._hold_back(fresh)
                    count -= held
                released, self._released = self._released, []
                segments = [*self._retry, *fresh, *released]
                count += len(released)
                self._retry = []
                self._in_flight(count, 0)
                try:
                    await self.transport.append(segments)
                except asyncio.CancelledError:
                    self._in_flight(0, 0)
                    self._requeue(segments, count)
                    raise
                except Exception as exc:
                    self._in_flight(0, 0)
                    self._failed += 1
                    _log.warning("rxinvoke: mirroring %d events failed (%s); retrying", count, exc)
                    self._requeue(segments, count)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                self._in_flight(0, 0)
                delay = 0.05
                self._mirrored += count
                if self.interval and len(self._buffer):
                    await self._paced()  # at most one write per interval
        finally:
            self._flusher = None
            if self._pending() and self._loop is not None and not self._loop.is_closed():
                self._timer = self._later(self._loop)
            else:
                self._hurry = False
                self._idle.set()

    def _pending(self) -> bool:
        """Whether anything waits to be written."""
        return bool(len(self._buffer) or self._retry or self._released)

    def hold_end(self, run_id: str) -> None:
        """Keep the run's terminal event off its stream until :meth:`release_end` (a worker
        holds it until the store has committed the run's end, so that a submitter's result
        never comes before the run's end is durable); its other events go as they come."""
        self._holding.add(run_id)

    def release_end(self, run_id: str) -> None:
        """Let the run's terminal event go: written with the next write if it is held (after
        the run's other events), as it comes otherwise."""
        self._holding.discard(run_id)
        end = self._held_ends.pop(run_id, None)
        if end is None:
            return
        self._released.append(end)
        if self._timer is None and self._flusher is None and self._loop is not None:
            self._idle.clear()
            self._timer = self._later(self._loop)

    def _hold_back(self, segments: list[tuple[str, Segment]]) -> tuple[list[tuple[str, Segment]], int]:
        """``segments`` without the terminal events of the runs held (kept until released),
        and how many were kept."""
        kept: list[tuple[str, Segment]] = []
        held = 0
        for run_id, segment in segments:
            if run_id in self._holding and segment.types[-1] in TERMINAL:
                rest, end = split_end(segment)
                self._held_ends[run_id] = (run_id, end)
                held += 1
                if rest is None:
                    continue
                segment = rest
            kept.append((run_id, segment))
        return kept, held

    async def _paced(self) -> None:
        """Wait ``interval`` seconds, or less if :meth:`flush` asks for a write now."""
        assert self._loop is not None
        if self._hurry:
            return
        pace = self._pace = self._loop.create_future()
        timer = self._loop.call_later(self.interval, _settle, pace)
        try:
            await pace
        finally:
            timer.cancel()
            self._pace = None

    def _requeue(self, segments: list[tuple[str, Segment]], count: int) -> None:
        """Keep a failed write's segments to be written first, within the bound."""
        self._retry = segments
        self._in_flight(self._writing, count)
        self._trim()

    def _trim(self) -> None:
        """Drop the oldest envelopes kept past the bound: a failed write's segments first (a
        segment at a time), then the buffer's."""
        while self._retry and len(self._buffer) + self._writing + self._retrying > self.max_buffer:
            _, segment = self._retry.pop(0)
            dropped = segment.last_seq - segment.first_seq + 1
            self._in_flight(self._writing, self._retrying - dropped)
            self._dropped += dropped
            self._unreported += dropped
        excess = len(self._buffer) - self._buffer.limit
        if excess > 0:
            dropped = self._buffer.drop(excess)
            self._dropped += dropped
            self._unreported += dropped

    def _report_drops(self) -> None:
        if not self._unreported or self._runtime is None:
            return
        dropped, self._unreported = self._unreported, 0
        self._runtime.bus.report(
            SubscriberOverflow(
                f"mirror to {self.transport!r}: buffer of {self.max_buffer} events full; "
                f"dropped the {dropped} oldest",
                subscription="mirror",
                dropped=dropped,
            )
        )

    async def flush(self) -> None:
        """Write everything buffered now and wait until it is written (or dropped): a flusher
        waiting out ``interval`` between two writes writes at once, and back to back until
        the buffer is empty."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flusher is None and not self._pending():
            return  # nothing to write (and no flusher to hurry)
        self._hurry = True
        if self._pace is not None:
            _settle(self._pace)  # a flusher waiting between two writes writes now
        if self._pending() and self._flusher is None:
            self._start_flush()
        await self._idle.wait()

    async def aclose(self) -> None:
        """Stop observing, write what is buffered (waiting for the transport) and stop."""
        if self._subscription is not None:
            self._subscription.dispose()
            self._subscription = None
        for run_id in list(self._held_ends):  # no stream is left without its end
            self.release_end(run_id)
        self._holding.clear()
        await self.flush()
