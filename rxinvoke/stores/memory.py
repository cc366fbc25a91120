"""MemoryStore: every session, run and event log in dicts; lost when the process ends.

A running run's log is a list of envelopes; when the run finishes, its log is packed into one
JSON byte string (decoded again when read): a kept finished run costs the garbage collector
a handful of objects instead of a few hundred, and its memory shrinks several-fold.
"""

from __future__ import annotations

import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence

from pydantic import TypeAdapter

from ..errors import StoreError, UnknownRun
from ..events import InvocationEvent, UsageRecorded
from ..messages import Message, TokenUsage, utcnow
from .base import EventEnvelope, RunOutcome, RunRecord

__all__ = ("MemoryStore",)

_EVENT_LIST: TypeAdapter[list[InvocationEvent]] = TypeAdapter(list[InvocationEvent])


class MemoryStore:
    """Everything in dicts; lost when the process ends. The in-process default.

    Args:
        max_finished_runs: how many finished runs (record, usage and event log: ~100 kB for
            a run of ~100 events) are kept; the oldest finished run is forgotten beyond that,
            so a long-lived process does not grow without bound. None keeps every run.
        max_sessions: how many session histories are kept (a short session is ~1–3 kB); beyond
            that the least recently used session without a running run is forgotten (a
            later run of it starts a new history). None keeps every session.
    """

    def __init__(
        self, *, max_finished_runs: int | None = 1000, max_sessions: int | None = 1000
    ) -> None:
        if max_finished_runs is not None and max_finished_runs < 1:
            raise ValueError(f"max_finished_runs must be >= 1 or None, got {max_finished_runs!r}")
        if max_sessions is not None and max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1 or None, got {max_sessions!r}")
        self._max_finished = max_finished_runs
        self._max_sessions = max_sessions
        self._finished: deque[str] = deque()
        self._sessions: OrderedDict[uuid.UUID, list[Message]] = OrderedDict()
        self._running: Counter[uuid.UUID] = Counter()  # sessions with running runs
        self._runs: dict[str, RunRecord] = {}
        self._by_request: dict[str, str] = {}
        self._events: dict[str, list[EventEnvelope]] = {}  # running runs
        self._packed: dict[str, bytes] = {}  # finished runs: their events as one JSON array
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
        self._history_of(session_id).extend(messages)
        self._append(events)

    def _history_of(self, session_id: uuid.UUID) -> list[Message]:
        """The session's history (created if new), marked as the most recently used."""
        history = self._sessions.get(session_id)
        if history is None:
            history = self._sessions[session_id] = []
            self._forget_idle_sessions()
        else:
            self._sessions.move_to_end(session_id)
        return history

    def _forget_idle_sessions(self) -> None:
        limit = self._max_sessions
        if limit is None or len(self._sessions) <= limit:
            return
        for session_id in list(self._sessions):
            if len(self._sessions) <= limit:
                return
            if not self._running[session_id]:
                del self._sessions[session_id]

    @property
    def session_ids(self) -> tuple[uuid.UUID, ...]:
        """Sessions that have history."""
        return tuple(self._sessions)


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
        self._running[record.session_id] += 1
        stored = self._history_of(record.session_id)
        stored.extend(opening)
        return record, list(stored)

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
        outcome: RunOutcome,
        *,
        events: Sequence[EventEnvelope] = (),
        messages: Sequence[Message] = (),
    ) -> None:
        record = self._runs.get(run_id)
        if record is None:
            raise UnknownRun(run_id)
        if record.is_finished:
            raise StoreError(f"run {run_id!r} is already {record.status}")
        self._check_seqs(events)
        if messages:
            self._history_of(record.session_id).extend(messages)
        self._append(events)
        log = self._events.pop(run_id)
        self._packed[run_id] = _EVENT_LIST.dump_json([envelope.event for envelope in log])
        self._running[record.session_id] -= 1
        if self._running[record.session_id] <= 0:
            del self._running[record.session_id]
            self._forget_idle_sessions()
        self._runs[run_id] = record.model_copy(
            update={
                "status": outcome.status,
                "output": outcome.output,
                "error": outcome.error,
                "finished_at": utcnow(),
            }
        )
        self._finished.append(run_id)
        if self._max_finished is not None and len(self._finished) > self._max_finished:
            self._forget(self._finished.popleft())

    def _forget(self, run_id: str) -> None:
        record = self._runs.pop(run_id)
        self._events.pop(run_id, None)
        self._packed.pop(run_id, None)
        self._usage.pop(run_id, None)
        key = record.client_request_id
        if key is not None and self._by_request.get(key) == run_id:
            del self._by_request[key]

    async def get_run(self, run_id: str) -> RunRecord | None:
        return self._record(run_id) if run_id in self._runs else None


    async def list_runs(
        self, *, limit: int = 20, session_id: uuid.UUID | None = None
    ) -> list[RunRecord]:
        runs = [
            r for r in self._runs.values() if session_id is None or r.session_id == session_id
        ]
        runs.reverse()  # insertion order is start order; newest first, stable for equal times
        runs.sort(key=lambda r: r.started_at, reverse=True)
        return [self._record(r.run_id) for r in runs[: max(limit, 0)]]


    async def append_events(self, events: Sequence[EventEnvelope]) -> None:
        self._check_seqs(events)
        self._append(events)

    async def read_events(self, run_id: str, *, after_seq: int | None = None) -> list[EventEnvelope]:
        after = max(after_seq or 0, 0)
        log = self._events.get(run_id)
        if log is not None:
            return log[after:]  # seq n is at index n - 1
        packed = self._packed.get(run_id)
        if packed is None:
            raise UnknownRun(run_id)
        session_id = self._runs[run_id].session_id
        events = _EVENT_LIST.validate_json(packed)
        of = EventEnvelope.of
        return [of(event, run_id, session_id, seq) for seq, event in enumerate(events[after:], after + 1)]

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
                if run_id in self._packed:
                    raise StoreError(f"run {run_id!r} is finished: its log takes no more events")
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
