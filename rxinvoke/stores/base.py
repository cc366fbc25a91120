"""The Store protocol and its records (RunRecord, EventEnvelope, RunOutcome).

A store keeps what a runtime wants to outlive a run: each session's message history, one
:class:`RunRecord` per run (status, request, output, usage, timestamps, idempotency key) and
the run's event log, a sequence of :class:`EventEnvelope` numbered by ``seq`` from 1 without
gaps. :class:`~rxinvoke.stores.MemoryStore` keeps everything in dicts (lost with the process);
:class:`~rxinvoke.stores.SqliteStore` keeps it in a SQLite file.

Contract shared by every store (``tests/test_store.py`` runs the same tests on both):

- ``append_messages`` commits its messages whole or not at all (with the envelopes passed
  along: the runtime writes a step's messages and events in one transaction).
- ``begin_run`` is how the runtime opens a run, in one transaction: the idempotency claim (a
  duplicate ``client_request_id`` writes nothing and returns that run's record with an empty
  history), the session's history read, and the run's opening messages appended to
  it (``preamble``, the system prompt, only when the history is empty). It returns the
  stored record and the history ending with the appended messages. The runtime calls it
  holding the session's gate, before it publishes ``run_started``: the run's first events
  are written with its next write (a step's messages, or ``finish_run``).
- ``append_events`` / ``finish_run`` accept, per run, only the next ``seq`` (``last + 1``);
  a batch is written in one transaction. Usage rows are derived from the log: a
  ``usage_recorded`` envelope records the usage of one model call in the same transaction, so
  usage and its event are never out of step.
- ``finish_run`` writes the run's last events and its :class:`RunOutcome` in one transaction
  (with the run's last messages, if given, committed to the run's session): a stored run has
  a terminal event exactly when its status is not ``running``.
- Optional: a store whose calls take effect in call order, one at a time (one worker thread,
  one connection), says so with a class attribute ``ordered_calls = True``; the runtime then
  hands it a write without waiting for the write before (its worker can commit concurrent
  runs' writes together). Without it, the runtime's writes wait for each other.
- A store shared between processes keeps one run per session running at a time across
  them: while another process's run of the session is running, ``begin_run`` writes nothing
  and raises :class:`~rxinvoke.errors.SessionBusy`, and the store's optional
  ``wait_session(session_id)`` coroutine returns when it is worth trying again (the runtime
  waits 0.1 s without it). Runs of one process are ordered by its runtime.
- Optional, for stores shared between processes: ``resume_run(run_id, salvage)`` takes over
  a ``running`` run whose owner process is gone, so that this process goes on with it
  (``Worker(on_worker_loss="retry")``): in one transaction it appends the envelopes of
  ``salvage`` that continue the run's log, makes this process the run's owner and returns
  ``(record, session history, last seq)`` (0: the log is empty, and the runtime publishes
  ``run_started`` first); None (the status settled if the log ends with a terminal event)
  when the run is not running or its owner lives. ``recover_run(run_id, salvage)`` settles
  such a run as interrupted after appending ``salvage`` the same way. ``mark_as_worker()``
  tags the runs the store begins from then on as a worker's: the store's own recoveries
  (which cannot salvage) leave a dead worker's run to the workers' reapers for a grace period.
- Writes are handed over as :class:`EventBatch` (a sequence of envelopes built on demand);
  :func:`log_entries` gives a store the plain ``(run_id, session key, seq, event)`` entries
  (each event as the log keeps it: the event, or the tuple of field values of one whose
  fields are all plain values; ``stores._packed.revive`` gives the event back).
- A store keeps an envelope's event, run and seq: ``event_id``, ``session_id``, ``type`` and
  ``emitted_at`` may be derived when it is read (``"{run_id}:{seq}"``, the run's session, the
  event's type and timestamp), as :meth:`EventEnvelope.of` builds them.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Literal, Protocol, overload, runtime_checkable

from pydantic import Field

from .._display import clip, clock, short_id
from .._frozen import Frozen, trusted
from ..events import InvocationEvent, RunFailed, RunStarted
from ..messages import NO_USAGE, Message, TokenUsage, utcnow
from ..request import RunOutput, RunRequest
from ._packed import SegmentItem, dealias, revive

__all__ = (
    "EventBatch",
    "EventEnvelope",
    "LogEntry",
    "RunOutcome",
    "RunRecord",
    "RunStatus",
    "Store",
    "Stretch",
    "log_entries",
    "log_stretches",
    "runs_in",
    "session_of",
    "stretches_of",
)

RunStatus = Literal["running", "completed", "failed", "cancelled", "awaiting_approval"]
"""A stored run's status; every status but ``running`` is terminal (``awaiting_approval``: the
run ended paused, with ``run_completed(finish_reason=awaiting_approval)``; the run that
continues it moves it to ``completed``)."""


class EventEnvelope(Frozen):
    """One event of a run's durable log, with its position in the run."""

    event_id: str
    """A unique id of this envelope."""
    run_id: str
    session_id: uuid.UUID | None = None
    seq: int = Field(ge=1)
    """Position in the run's log: 1, 2, 3, … without gaps."""
    type: str
    """The event's ``type`` (its :class:`~rxinvoke.events.EventKind` value)."""
    event: InvocationEvent
    emitted_at: datetime
    """When the event was published (UTC)."""

    def __repr__(self) -> str:
        return clip(f"EventEnvelope(seq {self.seq}, {self.event!r})", 159)

    @classmethod
    def of(
        cls, event: InvocationEvent, run_id: str, session_id: uuid.UUID | None, seq: int
    ) -> EventEnvelope:
        """The envelope of ``event`` at ``seq``: id ``"{run_id}:{seq}"``, emitted at its timestamp.

        Built without validation (every field is known-good): this is on the publish path
        of every logged event, where ``model_construct`` alone would cost several µs.
        """
        envelope = cls.__new__(cls)
        _set = object.__setattr__
        _set(
            envelope,
            "__dict__",
            {
                "event_id": f"{run_id}:{seq}",
                "run_id": run_id,
                "session_id": session_id,
                "seq": seq,
                "type": event.type,
                "event": event,
                "emitted_at": event.timestamp,
            },
        )
        _set(envelope, "__pydantic_fields_set__", _ENVELOPE_FIELDS)
        _set(envelope, "__pydantic_extra__", None)
        _set(envelope, "__pydantic_private__", None)
        return envelope


_ENVELOPE_FIELDS = frozenset(EventEnvelope.model_fields)

LogEntry = tuple[str, "str | None", int, SegmentItem]
"""``(run_id, session key, seq, event)``: an envelope's content before the envelope is built,
all plain values for most events (the garbage collector stops tracking such a tuple): the
session id as text (:func:`session_of` gives the UUID back), the event as the log keeps it
(``stores._packed.kept``: an event whose fields are all plain values as the tuple of their
values; ``revive`` gives the event back)."""


@functools.lru_cache(maxsize=256)
def session_of(key: str | None) -> uuid.UUID | None:
    """The session id of a :data:`LogEntry`'s session key."""
    return None if key is None else uuid.UUID(key)


Stretch = tuple[str, "str | None", int, list[SegmentItem]]
"""``(run_id, session key, first seq, events)``: consecutive envelopes of one run, the event at
index ``i`` numbered ``first + i``, each event as the log keeps it (:data:`LogEntry`). The
runtime's event log keeps what waits for a write in this form: one list item per event, no
tuple per event (what a burst of runs streaming at once keeps alive is what drives the
garbage collector's collections)."""


class EventBatch(Sequence[EventEnvelope]):
    """The envelopes of one write, built only when someone reads them.

    The runtime's event log hands its writes to a store as a batch: a store that knows it can
    take the :attr:`stretches` (or the :attr:`entries`) as they are (no envelope object per
    event, on the publish path of every streamed fragment); any other code sees an ordinary
    sequence of envelopes. Built from entries (``EventBatch(entries)``) or from stretches
    (:meth:`of_stretches`); each form is derived from the other on first use.
    """

    __slots__ = ("_entries", "_stretches", "_count")

    def __init__(self, entries: list[LogEntry]) -> None:
        self._entries: list[LogEntry] | None = entries
        self._stretches: list[Stretch] | None = None
        self._count = len(entries)

    @classmethod
    def of_stretches(cls, stretches: list[Stretch]) -> EventBatch:
        """A batch of ``stretches`` (each run's in seq order)."""
        batch = cls.__new__(cls)
        batch._entries = None
        batch._stretches = stretches
        batch._count = sum(len(stretch[3]) for stretch in stretches)
        return batch

    @property
    def entries(self) -> list[LogEntry]:
        """``(run_id, session key, seq, event)`` per envelope, in order."""
        if self._entries is None:  # each twin alias as its own tuple (stores._packed.twin_item)
            self._entries = [
                (run_id, key, first + i, event)
                for run_id, key, first, events in self._stretches or ()
                for i, event in enumerate(dealias(events))
            ]
        return self._entries

    @property
    def stretches(self) -> list[Stretch]:
        """The envelopes as :data:`Stretch` es: each run's consecutive seqs, in order (a
        ``text_delta`` may be kept as an alias of the fragment before it in its stretch:
        ``stores._packed.twin_item``)."""
        if self._stretches is None:
            self._stretches = stretches_of(self._entries or ())
        return self._stretches

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> EventEnvelope: ...

    @overload
    def __getitem__(self, index: slice) -> list[EventEnvelope]: ...

    def __getitem__(self, index: int | slice) -> EventEnvelope | list[EventEnvelope]:
        if isinstance(index, slice):
            return [_envelope(entry) for entry in self.entries[index]]
        return _envelope(self.entries[index])

    def __iter__(self) -> Iterator[EventEnvelope]:
        return map(_envelope, self.entries)

    def __repr__(self) -> str:
        return f"EventBatch({self._count} envelopes)"


def stretches_of(entries: Iterable[LogEntry]) -> list[Stretch]:
    """``entries`` as stretches: a new one at each change of run or break in the seqs."""
    stretches: list[Stretch] = []
    events: list[SegmentItem] = []
    run: str | None = None
    next_seq = 0
    for run_id, key, seq, event in entries:
        if run_id != run or seq != next_seq or not stretches:
            events = []
            stretches.append((run_id, key, seq, events))
            run = run_id
        events.append(event)
        next_seq = seq + 1
    return stretches


def runs_in(stretches: Iterable[Stretch]) -> dict[str, list[tuple[int, list[SegmentItem]]]]:
    """Each run's ``(first seq, events)`` chunks of ``stretches``, in order: stretches that
    continue one another joined into one chunk (a new list: the stretches stay as they are), a
    break in the seqs starting the next."""
    by_run: dict[str, list[tuple[int, list[SegmentItem]]]] = {}
    for run_id, _key, first, items in stretches:
        chunks = by_run.get(run_id)
        if chunks is None:
            by_run[run_id] = [(first, items)]
        elif chunks[-1][0] + len(chunks[-1][1]) == first:
            chunks[-1] = (chunks[-1][0], chunks[-1][1] + items)
        else:
            chunks.append((first, items))
    return by_run


def _envelope(entry: LogEntry) -> EventEnvelope:
    run_id, key, seq, event = entry
    return EventEnvelope.of(revive(event), run_id, session_of(key), seq)


def log_entries(events: Sequence[EventEnvelope]) -> Iterable[LogEntry]:
    """``(run_id, session key, seq, event)`` of each envelope of ``events``, in order, without
    building envelopes for an :class:`EventBatch`."""
    if isinstance(events, EventBatch):
        return events.entries
    return ((e.run_id, _key(e.session_id), e.seq, e.event) for e in events)


def log_stretches(events: Sequence[EventEnvelope]) -> list[Stretch]:
    """The envelopes of ``events`` as :data:`Stretch` es, without building envelopes for an
    :class:`EventBatch`."""
    if isinstance(events, EventBatch):
        return events.stretches
    return stretches_of(log_entries(events))


def _key(session_id: uuid.UUID | None) -> str | None:
    return None if session_id is None else str(session_id)


class RunRecord(Frozen):
    """What a store knows about one run."""

    run_id: str
    session_id: uuid.UUID
    request: RunRequest
    status: RunStatus = "running"
    client_request_id: str | None = None
    """The caller's idempotency key (``EmitRequest.client_request_id``)."""
    output: RunOutput | None = None
    """Set when the run completed."""
    error: str | None = None
    """Why the run failed (or ``"cancelled"``)."""
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    iterations: int = 0
    """Model calls whose usage was recorded."""
    total_usage: TokenUsage = NO_USAGE  # frozen: one shared zero, not one per record
    """The sum of the recorded usage of the run's model calls."""
    owner: str | None = None
    """``host:pid`` of the process running it (stores shared between processes only)."""

    @classmethod
    def begun(cls, run_id: str, session_id: uuid.UUID, request: RunRequest) -> RunRecord:
        """The record of a run beginning now (from values the runtime checked: no validation)."""
        return trusted(
            cls,
            {
                "run_id": run_id, "session_id": session_id, "request": request, "status": "running",
                "client_request_id": request.client_request_id, "output": None, "error": None,
                "started_at": utcnow(), "finished_at": None, "iterations": 0,
                "total_usage": NO_USAGE, "owner": None,
            },
        )

    @property
    def is_finished(self) -> bool:
        """True once the run has a terminal status."""
        return self.status != "running"

    def __repr__(self) -> str:
        usage = self.total_usage
        what = f", {self.error!r}" if self.error and self.status == "failed" else ""
        return clip(
            f"RunRecord(run {short_id(self.run_id)}, {self.status}{what}, session "
            f"{short_id(self.session_id)}, {self.iterations} iteration"
            f"{'s' if self.iterations != 1 else ''}, tokens {usage.total_tokens}, "
            f"{clip(self.request.input, 40)!r}, started {clock(self.started_at)})",
            159,
        )


class RunOutcome(Frozen):
    """How a run ended, as a store records it: the terminal status and what goes with it."""

    status: Literal["completed", "failed", "cancelled", "awaiting_approval"]
    output: RunOutput | None = None
    """The run's output (``completed`` and ``awaiting_approval``)."""
    error: str | None = None
    """Why the run failed (``"cancelled"`` for a cancelled run)."""

    @classmethod
    def completed(cls, output: RunOutput) -> RunOutcome:
        """The run completed with ``output``."""
        return cls._with_output("completed", output)

    @classmethod
    def paused(cls, output: RunOutput) -> RunOutcome:
        """The run paused for approval of ``output.pending``."""
        return cls._with_output("awaiting_approval", output)

    @classmethod
    def _with_output(
        cls, status: Literal["completed", "awaiting_approval"], output: RunOutput
    ) -> RunOutcome:
        if cls is RunOutcome and type(output) is RunOutput:  # nothing to check: every run
            return trusted(cls, {"status": status, "output": output, "error": None})
        return cls(status=status, output=output)

    @classmethod
    def failed(cls, error: str) -> RunOutcome:
        """The run failed because of ``error``."""
        return cls(status="failed", error=error)

    @classmethod
    def cancelled(cls) -> RunOutcome:
        """The run was cancelled."""
        return cls(status="cancelled", error="cancelled")


@runtime_checkable
class Store(Protocol):
    """Where sessions, runs and event logs live. Every method is a coroutine."""

    async def load_history(self, session_id: uuid.UUID) -> list[Message]:
        """The session's messages in commit order (empty for a new session)."""
        ...

    async def append_messages(
        self,
        session_id: uuid.UUID,
        messages: Sequence[Message],
        *,
        events: Sequence[EventEnvelope] = (),
    ) -> None:
        """Commit ``messages`` to the end of the session's history and append ``events``
        (envelopes of any run, as :meth:`append_events`), in one transaction."""
        ...


    async def begin_run(
        self,
        record: RunRecord,
        messages: Sequence[Message],
        *,
        preamble: Sequence[Message] = (),
    ) -> tuple[RunRecord, list[Message]]:
        """Claim the run (the idempotency check), read the session's history and append
        ``messages`` to it (after ``preamble`` if the history is empty), in one transaction.

        Returns the stored record and the session's history ending with the appended
        messages; if a run with ``record.client_request_id`` is stored, nothing is written
        and that run's record is returned with an empty history.

        A run whose request ``resumes`` a paused run moves that run from
        ``awaiting_approval`` to ``completed`` in the same transaction (exactly one run
        continues it).

        Raises:
            StoreError: a run with ``record.run_id`` is already stored, or the run it resumes
                is not awaiting approval (nothing is written).
            SessionAwaitingApproval: another run of the session awaits approval.
        """
        ...

    async def finish_run(
        self,
        run_id: str,
        outcome: RunOutcome,
        *,
        events: Sequence[EventEnvelope] = (),
        messages: Sequence[Message] = (),
    ) -> None:
        """Append ``events``, commit ``messages`` to the end of the run's session history and
        record the terminal ``outcome``, in one transaction.

        Raises:
            UnknownRun: no run ``run_id`` is stored.
            StoreError: the run is already finished (nothing is written).
        """
        ...

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run ``run_id``, or None."""
        ...

    async def decide(
        self, run_id: str, call_id: str, *, approved: bool, reason: str | None = None
    ) -> tuple[RunRecord, bool]:
        """Record a decision on a call of the paused run ``run_id``, in one transaction.

        Returns the updated record and whether every pending call is now decided (the run is
        ready to be continued). Deciding a decided call again the same way changes nothing.

        Raises:
            UnknownRun: no run ``run_id`` is stored.
            StoreError: the run is not awaiting approval, has no such pending call, or the
                call was decided the other way.
        """
        ...


    async def list_runs(
        self, *, limit: int = 20, session_id: uuid.UUID | None = None
    ) -> list[RunRecord]:
        """The most recently started runs first (of one session when ``session_id`` is set)."""
        ...


    async def append_events(self, events: Sequence[EventEnvelope]) -> None:
        """Append envelopes to their runs' logs in one transaction (each must be ``last + 1``)."""
        ...

    async def read_events(self, run_id: str, *, after_seq: int | None = None) -> list[EventEnvelope]:
        """The run's stored envelopes with ``seq > after_seq``, in order.

        Raises:
            UnknownRun: no run ``run_id`` is stored.
        """
        ...

    async def recover_interrupted(self) -> list[str]:
        """Fail runs whose process died mid-run (a terminal ``run_failed`` is appended).

        Returns the ids of the recovered runs. Stores that do not outlive their process have
        nothing to recover.
        """
        ...

    async def close(self) -> None:
        """Release the store's resources; it must not be used afterwards."""
        ...


def interrupted_envelopes(record: RunRecord, last_seq: int) -> list[EventEnvelope]:
    """What recovery appends to the log of a run whose process died after ``last_seq``.

    The terminal ``run_failed`` ("interrupted"); for a run that died before any of its events
    was written, ``run_started`` (rebuilt from the run record) first, so that every stored log
    starts with ``run_started`` and ends with exactly one terminal event.
    """
    run_id, session_id = record.run_id, record.session_id
    envelopes: list[EventEnvelope] = []
    if last_seq == 0:
        started = RunStarted(
            run_id=run_id,
            session_id=str(session_id),
            provider=record.request.provider or "",  # a stored request's are resolved
            model=record.request.model or "",
            timestamp=record.started_at,
        )
        envelopes.append(EventEnvelope.of(started, run_id, session_id, 1))
    failed = RunFailed(run_id=run_id, error="interrupted", timestamp=utcnow())
    envelopes.append(EventEnvelope.of(failed, run_id, session_id, last_seq + len(envelopes) + 1))
    return envelopes
