"""MemoryStore: every session, run and event log in dicts; lost when the process ends.

A run's log is kept packed from the moment each event is stored (``stores._packed``: a tuple of
plain values per event, JSON bytes for the few events that hold models; envelopes and events
are built again when the log is read), which the garbage collector stops tracking: a run,
running or kept after it finished, costs it a handful of objects instead of a few hundred, and
the events themselves die young. A finished run's record, and the history of a session with no
run running, are kept as JSON bytes too (decoded when read, or when the session's next run
begins): the collector never walks what the store merely keeps.
"""

from __future__ import annotations

import uuid
from collections import Counter, deque
from collections.abc import Sequence
from typing import NoReturn

from pydantic import TypeAdapter

from .._frozen import trusted
from ..errors import RunAlreadyStored, SessionAwaitingApproval, StoreError, UnknownRun
from ..events import UsageRecorded
from ..messages import NO_USAGE, Message, TokenUsage, utcnow
from ._packed import PackedEvent, PackedLog, pack_one, unpack
from ._rows import decided
from .base import EventEnvelope, RunOutcome, RunRecord, log_stretches

__all__ = ("MemoryStore",)

_MESSAGES: TypeAdapter[list[Message]] = TypeAdapter(list[Message])


class MemoryStore:
    """Everything in dicts; lost when the process ends. The in-process default.

    Memory: a kept finished run of ~120 events (one tool call, a 50-fragment answer) with its
    short session takes ~12 kB (``python -m benchmarks.store``, line 3), of which ~60 bytes
    are objects the garbage collector tracks; the defaults keep at most 1000 of each, ~12 MB
    for runs of that size (the bound grows with the size of the runs, about 100 bytes per
    event). A session's next run decodes its history (~2 µs per message).

    Args:
        max_finished_runs: how many finished runs (record, usage and event log) are kept;
            the oldest finished run is forgotten beyond that, so a long-lived process does
            not grow without bound. None keeps every run.
        max_sessions: how many session histories are kept; beyond that the least recently
            used session without a running run is forgotten (a later run of it starts a new
            history). None keeps every session.
    """

    ordered_calls = True
    """Every call completes before it returns: calls take effect in call order."""

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
        # sessions by their UUID's int (a UUID hashes in Python, an int in C: a run looks its
        # session up a dozen times), least recently used first (a plain dict: iterating an
        # OrderedDict hashes every key); a session with a run running: its messages; an idle
        # one: them as JSON bytes
        self._sessions: dict[int, list[Message] | bytes] = {}
        self._running: Counter[int] = Counter()  # sessions with running runs
        self._runs: dict[str, RunRecord | bytes] = {}  # finished: the record as JSON bytes
        self._by_request: dict[str, str] = {}
        self._key_of: dict[str, str] = {}  # run id -> its client_request_id
        # each run's log, packed, seq n at index n - 1: a list while the run runs, a tuple
        # once it finished
        self._logs: dict[str, list[PackedEvent] | PackedLog] = {}
        self._usage: dict[str, list[TokenUsage]] = {}  # running runs (folded into the record)
        self._paused: dict[int, str] = {}  # session -> its run awaiting approval

    async def load_history(self, session_id: uuid.UUID) -> list[Message]:
        history = self._sessions.get(session_id.int)
        if history is None:
            return []
        return _MESSAGES.validate_json(history) if isinstance(history, bytes) else list(history)

    async def append_messages(
        self,
        session_id: uuid.UUID,
        messages: Sequence[Message],
        *,
        events: Sequence[EventEnvelope] = (),
    ) -> None:
        self._append(events)
        key = session_id.int
        self._history_of(key).extend(messages)
        if not self._running.get(key):
            self._pack(key)

    def _pack(self, key: int) -> None:
        """Keep the history of the session ``key``, which has no run running, as JSON bytes."""
        history = self._sessions.get(key)
        if isinstance(history, list):
            self._sessions[key] = _MESSAGES.dump_json(history)

    def _history_of(self, key: int) -> list[Message]:
        """The session's history (created if new, decoded if packed), marked as the most
        recently used."""
        sessions = self._sessions
        stored = sessions.pop(key, None)
        if stored is None:
            history: list[Message] = []
            sessions[key] = history
            self._forget_idle_sessions()
            return history
        history = _MESSAGES.validate_json(stored) if isinstance(stored, bytes) else stored
        sessions[key] = history  # now the most recently used
        return history

    def _forget_idle_sessions(self) -> None:
        limit, sessions = self._max_sessions, self._sessions
        if limit is None or len(sessions) <= limit:
            return
        excess = len(sessions) - limit
        idle: list[int] = []
        for key in sessions:  # least recently used first
            if not self._running[key]:
                idle.append(key)
                if len(idle) == excess:
                    break
        for key in idle:
            del sessions[key]

    @property
    def session_ids(self) -> tuple[uuid.UUID, ...]:
        """Sessions that have history."""
        return tuple(uuid.UUID(int=key) for key in self._sessions)


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
        session_id = record.session_id
        key = session_id.int
        resumes = record.request.resumes
        paused = self._paused.get(key)
        if resumes is not None:
            if paused != resumes:
                status = self._record(resumes).status if resumes in self._runs else "unknown"
                raise StoreError(f"run {resumes!r} is {status}, not awaiting approval")
        elif paused is not None:
            raise SessionAwaitingApproval(str(session_id), paused)
        self._claim(record)  # nothing can fail from here on: the three steps are one
        self._running[key] += 1
        if resumes is not None:
            self._resumed(resumes)
        stored = self._history_of(key)
        stored.extend([*preamble, *messages] if not stored else messages)
        return record, list(stored)

    def _existing(self, record: RunRecord) -> RunRecord | None:
        """The stored run with the record's ``client_request_id``; StoreError if its
        ``run_id`` is taken."""
        key = record.client_request_id
        if key is not None and key in self._by_request:
            return self._record(self._by_request[key])
        if record.run_id in self._runs:
            raise RunAlreadyStored(record.run_id)
        return None

    def _claim(self, record: RunRecord) -> None:
        key = record.client_request_id
        self._runs[record.run_id] = record
        self._logs[record.run_id] = []
        self._usage[record.run_id] = []
        if key is not None:
            self._by_request[key] = record.run_id
            self._key_of[record.run_id] = key

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
        if isinstance(record, bytes):
            raise StoreError(f"run {run_id!r} is already {self._record(run_id).status}")
        self._append(events)
        key = record.session_id.int
        if messages:
            self._history_of(key).extend(messages)
        self._logs[run_id] = tuple(self._logs[run_id])
        if outcome.status == "awaiting_approval":
            self._paused[key] = run_id  # kept, with its session, until resumed
        else:
            self._settled(key)
        usage = self._usage.pop(run_id, [])
        finished = trusted(  # the record with the outcome's checked values: nothing to validate
            RunRecord,
            {
                **record.__dict__,
                "status": outcome.status,
                "output": outcome.output,
                "error": outcome.error,
                "finished_at": utcnow(),
                "iterations": len(usage),
                "total_usage": sum(usage, NO_USAGE),
            },
        )
        self._runs[run_id] = finished.__pydantic_serializer__.to_json(finished)
        if outcome.status != "awaiting_approval":
            self._finished_run(run_id)

    def _settled(self, key: int) -> None:
        running = self._running
        left = running[key] - 1
        if left > 0:
            running[key] = left
            return
        del running[key]
        self._pack(key)
        self._forget_idle_sessions()

    def _finished_run(self, run_id: str) -> None:
        self._finished.append(run_id)
        if self._max_finished is not None and len(self._finished) > self._max_finished:
            self._forget(self._finished.popleft())

    def _resumed(self, run_id: str) -> None:
        """The paused ``run_id`` is continued: completed, its session free, forgettable."""
        record = self._record(run_id)
        del self._paused[record.session_id.int]
        done = record.model_copy(update={"status": "completed"})
        self._runs[run_id] = done.__pydantic_serializer__.to_json(done)
        self._settled(record.session_id.int)
        self._finished_run(run_id)

    async def decide(
        self, run_id: str, call_id: str, *, approved: bool, reason: str | None = None
    ) -> tuple[RunRecord, bool]:
        if run_id not in self._runs:
            raise UnknownRun(run_id)
        record = self._record(run_id)
        output, changed, ready = decided(record, call_id, approved, reason)
        if changed:
            record = record.model_copy(update={"output": output})
            self._runs[run_id] = record.__pydantic_serializer__.to_json(record)
        return record, ready

    def _forget(self, run_id: str) -> None:
        del self._runs[run_id]
        self._logs.pop(run_id, None)
        self._usage.pop(run_id, None)
        key = self._key_of.pop(run_id, None)
        if key is not None and self._by_request.get(key) == run_id:
            del self._by_request[key]

    async def get_run(self, run_id: str) -> RunRecord | None:
        return self._record(run_id) if run_id in self._runs else None


    async def list_runs(
        self, *, limit: int = 20, session_id: uuid.UUID | None = None
    ) -> list[RunRecord]:
        runs = [self._record(run_id) for run_id in self._runs]
        if session_id is not None:
            runs = [r for r in runs if r.session_id == session_id]
        runs.reverse()  # insertion order is start order; newest first, stable for equal times
        runs.sort(key=lambda r: r.started_at, reverse=True)
        return runs[: max(limit, 0)]


    async def append_events(self, events: Sequence[EventEnvelope]) -> None:
        self._append(events)

    async def read_events(self, run_id: str, *, after_seq: int | None = None) -> list[EventEnvelope]:
        after = max(after_seq or 0, 0)
        log = self._logs.get(run_id)
        if log is None:
            raise UnknownRun(run_id)
        events = unpack(log, after)
        session_id = self._record(run_id).session_id
        of = EventEnvelope.of
        return [of(event, run_id, session_id, seq) for seq, event in enumerate(events, after + 1)]

    async def recover_interrupted(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None

    def _record(self, run_id: str) -> RunRecord:
        record = self._runs[run_id]
        if isinstance(record, bytes):  # finished: its usage is in the record
            return RunRecord.model_validate_json(record)
        usage = self._usage[run_id]
        return record.model_copy(
            update={"iterations": len(usage), "total_usage": sum(usage, NO_USAGE)}
        )

    def _append(self, events: Sequence[EventEnvelope]) -> None:
        """Append each envelope to its run's log (each must be ``last + 1``): all of them, or
        none (a refused envelope takes back the ones appended before it)."""
        logs = self._logs
        # (its log, its usage, their lengths before): what a refusal takes back
        appended: list[tuple[list[PackedEvent], list[TokenUsage], int, int]] = []
        for run_id, _key, first, items in log_stretches(events):  # a log looked up per stretch
            log = logs.get(run_id)
            if type(log) is not list or first != len(log) + 1:
                self._take_back(appended)
                self._refuse(run_id, first, log)
            usage = self._usage[run_id]
            appended.append((log, usage, len(log), len(usage)))
            append = log.append
            for event in items:
                if type(event) is tuple:
                    append(event)  # kept: as it is
                else:
                    append(pack_one(event))
                    if type(event) is UsageRecorded:
                        usage.append(event.usage)

    @staticmethod
    def _refuse(run_id: str, seq: int, log: PackedLog | list[PackedEvent] | None) -> NoReturn:
        if log is None:
            raise UnknownRun(run_id)
        if type(log) is tuple:
            raise StoreError(f"run {run_id!r} is finished: its log takes no more events")
        raise StoreError(f"run {run_id!r}: event seq {seq} does not follow {len(log)}")

    @staticmethod
    def _take_back(appended: list[tuple[list[PackedEvent], list[TokenUsage], int, int]]) -> None:
        for log, usage, logged, used in appended:
            del log[logged:]
            del usage[used:]

