"""The Store protocol, its records (RunRecord, EventEnvelope) and MemoryStore.

A store keeps what a runtime wants to outlive a run: each session's message history, one
:class:`RunRecord` per run (status, request, output, usage, timestamps, idempotency key) and
the run's event log, a sequence of :class:`EventEnvelope` numbered by ``seq`` from 1 without
gaps. :class:`MemoryStore` keeps everything in dicts (lost with the process);
:class:`~rxinvoke.store_sqlite.SqliteStore` keeps it in a SQLite file.

Contract shared by every store (``tests/test_store.py`` runs the same tests on both):

- ``append_messages`` commits its messages whole or not at all (with the envelopes passed
  along: the runtime writes a step's messages and events in one transaction).
- ``start_run`` is the idempotency claim: if a run with the same ``client_request_id`` is
  already stored, nothing is written and that run's record is returned.
- ``begin_run`` is how the runtime opens a run, in one transaction: the claim (as
  ``start_run``; a duplicate ``client_request_id`` writes nothing and returns that run with
  an empty history), the session's history read, and the run's opening messages appended to
  it (``preamble``, the system prompt, only when the history is empty). It returns the
  stored record and the history ending with the appended messages. The runtime calls it
  holding the session's gate, before it publishes ``run_started``: the run's first events
  are written with its next write (a step's messages, or ``finish_run``).
- ``append_events`` / ``finish_run`` accept, per run, only the next ``seq`` (``last + 1``);
  a batch is written in one transaction. Usage rows are derived from the log: a
  ``usage_recorded`` envelope records the usage of one model call in the same transaction, so
  usage and its event are never out of step.
- ``finish_run`` writes the run's last events and its terminal status in one transaction
  (with the run's last messages, if given): a stored run has a terminal event exactly when
  its status is not ``running``.
- A store keeps an envelope's event, run and seq: ``event_id``, ``session_id``, ``type`` and
  ``emitted_at`` may be derived when it is read (``"{run_id}:{seq}"``, the run's session, the
  event's type and timestamp), as :meth:`EventEnvelope.of` builds them.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from .errors import StoreError, UnknownRun
from .events import InvocationEvent, RunFailed, RunStarted, UsageRecorded
from .messages import Message, TokenUsage, utcnow
from .request import RunOutput, RunRequest

__all__ = ("EventEnvelope", "MemoryStore", "RunRecord", "RunStatus", "Store")

RunStatus = Literal["running", "completed", "failed", "cancelled"]
"""A stored run's status; every status but ``running`` is terminal."""

TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class EventEnvelope(BaseModel):
    """One event of a run's durable log, with its position in the run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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


class RunRecord(BaseModel):
    """What a store knows about one run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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
    total_usage: TokenUsage = Field(default_factory=TokenUsage)
    """The sum of the recorded usage of the run's model calls."""
    owner: str | None = None
    """``host:pid`` of the process running it (stores shared between processes only)."""

    @property
    def is_finished(self) -> bool:
        """True once the run has a terminal status."""
        return self.status != "running"


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

    async def start_run(self, record: RunRecord) -> RunRecord:
        """Store a new running run, or return the stored run with its ``client_request_id``.

        Raises:
            StoreError: a run with ``record.run_id`` is already stored.
        """
        ...

    async def begin_run(
        self,
        record: RunRecord,
        messages: Sequence[Message],
        *,
        preamble: Sequence[Message] = (),
    ) -> tuple[RunRecord, list[Message]]:
        """Claim the run (as :meth:`start_run`), read the session's history and append
        ``messages`` to it (after ``preamble`` if the history is empty), in one transaction.

        Returns the stored record and the session's history ending with the appended
        messages; if a run with ``record.client_request_id`` is stored, nothing is written
        and that run's record is returned with an empty history.

        Raises:
            StoreError: a run with ``record.run_id`` is already stored (nothing is written).
        """
        ...

    async def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        *,
        output: RunOutput | None = None,
        error: str | None = None,
        events: Sequence[EventEnvelope] = (),
        messages: Sequence[Message] = (),
        session_id: uuid.UUID | None = None,
    ) -> None:
        """Append ``events``, commit ``messages`` to the end of the history of ``session_id``
        (default: the run's session) and set the terminal ``status``, in one transaction."""
        ...

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run ``run_id``, or None."""
        ...

    async def find_run(self, client_request_id: str) -> RunRecord | None:
        """The run started with this idempotency key, or None."""
        ...

    async def list_runs(
        self, *, limit: int = 20, session_id: uuid.UUID | None = None
    ) -> list[RunRecord]:
        """The most recently started runs first (of one session when ``session_id`` is set)."""
        ...

    async def load_usage(self, run_id: str) -> list[TokenUsage]:
        """The usage of each model call of the run, in order."""
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
            provider=record.request.provider,
            model=record.request.model,
            timestamp=record.started_at,
        )
        envelopes.append(EventEnvelope.of(started, run_id, session_id, 1))
    failed = RunFailed(run_id=run_id, error="interrupted", timestamp=utcnow())
    envelopes.append(EventEnvelope.of(failed, run_id, session_id, last_seq + len(envelopes) + 1))
    return envelopes


class MemoryStore:
    """Everything in dicts; lost when the process ends. The in-process default.

    Args:
        max_finished_runs: how many finished runs (record, usage and event log: ~100 kB for
            a run of ~100 events) are kept; the oldest finished run is forgotten beyond that,
            so a long-lived process does not grow without bound. None keeps every run. Session
            histories are always kept.
    """

    def __init__(self, *, max_finished_runs: int | None = 1000) -> None:
        if max_finished_runs is not None and max_finished_runs < 1:
            raise ValueError(f"max_finished_runs must be >= 1 or None, got {max_finished_runs!r}")
        self._max_finished = max_finished_runs
        self._finished: deque[str] = deque()
        self._sessions: dict[uuid.UUID, list[Message]] = {}
        self._runs: dict[str, RunRecord] = {}
        self._by_request: dict[str, str] = {}
        self._events: dict[str, list[EventEnvelope]] = {}
        self._usage: dict[str, list[TokenUsage]] = {}

    async def load_history(self, session_id: uuid.UUID) -> list[Message]:
        return list(self._sessions.get(session_id, ()))

    async def append_messages(
        self,
        session_id: uuid.UUID,
        messages: Sequence[Message],
        *,
        events: Sequence[EventEnvelope] = (),
    ) -> None:
        self._check_seqs(events)
        self._sessions.setdefault(session_id, []).extend(messages)
        self._append(events)

    @property
    def session_ids(self) -> tuple[uuid.UUID, ...]:
        """Sessions that have history."""
        return tuple(self._sessions)

    async def start_run(self, record: RunRecord) -> RunRecord:
        existing = self._existing(record)
        if existing is not None:
            return existing
        self._claim(record)
        return record

    async def begin_run(
        self,
        record: RunRecord,
        messages: Sequence[Message],
        *,
        preamble: Sequence[Message] = (),
    ) -> tuple[RunRecord, list[Message]]:
        existing = self._existing(record)
        if existing is not None:
            return existing, []
        history = self._sessions.get(record.session_id)
        opening = [*preamble, *messages] if not history else list(messages)
        self._claim(record)  # nothing can fail from here on: the three steps are one
        self._sessions.setdefault(record.session_id, []).extend(opening)
        return record, list(self._sessions[record.session_id])

    def _existing(self, record: RunRecord) -> RunRecord | None:
        """The stored run with the record's ``client_request_id``; StoreError if its
        ``run_id`` is taken."""
        key = record.client_request_id
        if key is not None and key in self._by_request:
            return self._record(self._by_request[key])
        if record.run_id in self._runs:
            raise StoreError(f"run {record.run_id!r} is already stored")
        return None

    def _claim(self, record: RunRecord) -> None:
        key = record.client_request_id
        self._runs[record.run_id] = record
        self._events[record.run_id] = []
        self._usage[record.run_id] = []
        if key is not None:
            self._by_request[key] = record.run_id

    async def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        *,
        output: RunOutput | None = None,
        error: str | None = None,
        events: Sequence[EventEnvelope] = (),
        messages: Sequence[Message] = (),
        session_id: uuid.UUID | None = None,
    ) -> None:
        record = self._runs.get(run_id)
        if record is None:
            raise UnknownRun(run_id)
        if record.is_finished:
            raise StoreError(f"run {run_id!r} is already {record.status}")
        if status not in TERMINAL_STATUSES:
            raise StoreError(f"not a terminal status: {status!r}")
        self._check_seqs(events)
        if messages:
            self._sessions.setdefault(session_id or record.session_id, []).extend(messages)
        self._append(events)
        self._runs[run_id] = record.model_copy(
            update={"status": status, "output": output, "error": error, "finished_at": utcnow()}
        )
        self._finished.append(run_id)
        if self._max_finished is not None and len(self._finished) > self._max_finished:
            self._forget(self._finished.popleft())

    def _forget(self, run_id: str) -> None:
        record = self._runs.pop(run_id)
        self._events.pop(run_id, None)
        self._usage.pop(run_id, None)
        key = record.client_request_id
        if key is not None and self._by_request.get(key) == run_id:
            del self._by_request[key]

    async def get_run(self, run_id: str) -> RunRecord | None:
        return self._record(run_id) if run_id in self._runs else None

    async def find_run(self, client_request_id: str) -> RunRecord | None:
        run_id = self._by_request.get(client_request_id)
        return None if run_id is None else self._record(run_id)

    async def list_runs(
        self, *, limit: int = 20, session_id: uuid.UUID | None = None
    ) -> list[RunRecord]:
        runs = [
            r for r in self._runs.values() if session_id is None or r.session_id == session_id
        ]
        runs.reverse()  # insertion order is start order; newest first, stable for equal times
        runs.sort(key=lambda r: r.started_at, reverse=True)
        return [self._record(r.run_id) for r in runs[: max(limit, 0)]]

    async def load_usage(self, run_id: str) -> list[TokenUsage]:
        return list(self._usage.get(run_id, ()))

    async def append_events(self, events: Sequence[EventEnvelope]) -> None:
        self._check_seqs(events)
        self._append(events)

    async def read_events(self, run_id: str, *, after_seq: int | None = None) -> list[EventEnvelope]:
        log = self._events.get(run_id)
        if log is None:
            raise UnknownRun(run_id)
        return log[max(after_seq or 0, 0) :]  # seq n is at index n - 1

    async def recover_interrupted(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None

    def _record(self, run_id: str) -> RunRecord:
        record = self._runs[run_id]
        usage = self._usage.get(run_id, [])
        total = TokenUsage()
        for item in usage:
            total = total + item
        return record.model_copy(update={"iterations": len(usage), "total_usage": total})

    def _check_seqs(self, events: Sequence[EventEnvelope]) -> None:
        last: dict[str, int] = {}
        for envelope in events:
            run_id = envelope.run_id
            if run_id not in self._events:
                raise UnknownRun(run_id)
            previous = last.get(run_id, len(self._events[run_id]))
            if envelope.seq != previous + 1:
                raise StoreError(
                    f"run {run_id!r}: event seq {envelope.seq} does not follow {previous}"
                )
            last[run_id] = envelope.seq

    def _append(self, events: Sequence[EventEnvelope]) -> None:
        for envelope in events:
            self._events[envelope.run_id].append(envelope)
            event = envelope.event
            if isinstance(event, UsageRecorded):
                self._usage[envelope.run_id].append(event.usage)
