"""The transport seam: what the event mirror, the remote client and the worker need of a broker.

A transport moves four things between processes, and nothing else (the durable state stays in
the :class:`~rxinvoke.stores.Store`):

- **run event streams**: per run, an append-only sequence of :class:`Segment` (consecutive
  envelopes of the run, by rxinvoke's own ``seq``), read from any position and followed live;
- **the run queue**: submitted :class:`RunRequest` jobs taken by workers, each held under a
  **lease** while it runs, re-delivered only when its lease is gone;
- **cancel requests** for runs executing anywhere;
- **replies** to the jobs that ask for one: a decision on a paused run's call, whose
  submitter learns from its worker whether the decision stood and the run goes on.

:class:`~rxinvoke.transports.redis.RedisTransport` implements it on Redis Streams; another
broker (NATS JetStream, say) implements this protocol and the mirror, client and worker work on
it unchanged. Implementations must be safe to use from many tasks of one event loop, and
raise :class:`~rxinvoke.errors.TransportError` (with ``where``: the broker, without secrets)
for the broker's own failures — a server away after the retries a call gets, a refused
command — never their client library's exceptions: those reach users through ``submit``'s
result, ``cancel`` and ``observe_run``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ("Job", "Lease", "Segment", "Transport", "checked")


@dataclass(frozen=True, slots=True)
class Segment:
    """Consecutive envelopes ``first_seq .. last_seq`` of one run, as sent: ``events`` is the
    JSON array of their events, ``types`` their types (a reader can spot a terminal event
    without decoding)."""

    first_seq: int
    last_seq: int
    types: tuple[str, ...]
    events: bytes


@dataclass(frozen=True, slots=True)
class Job:
    """A queued run: the transport's id of the delivery, the run, and how many times it was
    delivered (1 the first time)."""

    job_id: str
    run_id: str
    request: bytes
    """The :class:`~rxinvoke.request.RunRequest` as JSON."""
    deliveries: int = 1


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's hold on a run; ``token`` fences it (a refresh with a stale token fails)."""

    run_id: str
    token: str


@runtime_checkable
class Transport(Protocol):
    """A broker between runtimes, workers and observers (see the module docstring)."""

    # run event streams
    async def append(self, segments: Sequence[tuple[str, Segment]]) -> None:
        """Append each ``(run_id, segment)`` to its run's stream, in order (runs' streams
        expire some time after their last write)."""
        ...

    def read(self, run_id: str, after_seq: int) -> AsyncIterator[Segment]:
        """The run's kept segments in order (``after_seq`` is a hint: segments before it may
        come too), then live ones as they come, until the caller stops iterating; it ends if
        the run's stream expires. The caller skips what it has and detects gaps by seq.

        Raises (when iterated):
            UnknownRun: the transport never heard of the run (nor of its submission).
        """
        ...

    async def tail(self, run_id: str) -> Segment | None:
        """The last segment the run's stream holds (None if none)."""
        ...

    async def announce(self, run_id: str) -> None:
        """Note that the run exists before its first segment (submitted, or begun)."""
        ...

    # the run queue
    async def enqueue(self, run_id: str, request: bytes, *, urgent: bool = False) -> str:
        """Queue a run; returns its job id. An ``urgent`` job is taken before every job queued
        without it (a decision on a paused run, or its continuation: a run begun already goes
        on before runs not begun yet, as it would in one process)."""
        ...

    async def take(self, worker: str, count: int, wait: float) -> list[Job]:
        """Up to ``count`` new jobs for ``worker`` (urgent ones first, each kind in queue
        order), waiting up to ``wait`` seconds for one."""
        ...

    async def reclaim(self, worker: str, min_idle: float, count: int) -> list[Job]:
        """Jobs whose worker stopped heartbeating for ``min_idle`` seconds **and whose lease
        is gone**, now delivered to ``worker`` (their ``deliveries`` counted)."""
        ...

    async def heartbeat(self, worker: str, job_ids: Sequence[str]) -> None:
        """Keep ``job_ids`` (held by ``worker``) from looking idle."""
        ...

    async def ack(self, job_id: str) -> None:
        """The job is done (whatever its run's outcome): it is never delivered again."""
        ...

    async def dead_letter(self, job: Job, reason: str) -> None:
        """Move a job that keeps failing out of the queue, keeping it for inspection."""
        ...

    async def acquire(self, run_id: str, ttl: float) -> Lease | None:
        """Take the run's lease for ``ttl`` seconds, or None if someone holds it."""
        ...

    async def refresh(self, leases: Sequence[Lease], ttl: float) -> list[bool]:
        """Extend each lease (in one round trip); False for one that expired or that another
        holder has now (stop its run)."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give the lease back (only if it is still this holder's)."""
        ...

    # cancel requests
    async def request_cancel(self, run_id: str) -> None:
        """Ask whoever runs (or will run) the run to cancel it: a marker first, then a notice."""
        ...

    async def cancel_requested(self, run_ids: Sequence[str]) -> list[bool]:
        """For each run, whether its cancel marker is set (in one round trip)."""
        ...

    def cancel_notices(self) -> AsyncIterator[str]:
        """Run ids whose cancel was requested, as the notices arrive (reconnecting as needed)."""
        ...

    # replies
    async def reply(self, key: str, answer: bytes) -> None:
        """Leave ``answer`` for whoever waits under ``key`` (kept a while if no one waits
        yet; the seam's own retention)."""
        ...

    async def replied(self, key: str, wait: float) -> bytes | None:
        """The answer left under ``key`` (taken: each answer is read once), waiting up to
        ``wait`` seconds for it; None if none came."""
        ...

    async def warnings(self) -> list[str]:
        """The broker's settings that put runs at risk, one sentence each (empty: none known);
        a worker logs them as it starts."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


_METHODS = tuple(name for name, value in vars(Transport).items() if callable(value) and name[0] != "_")


def checked(transport: object) -> Transport:
    """``transport``, if it is a :class:`Transport` as this version's seam has it; TypeError
    saying what is missing otherwise (what ``RemoteRuns`` and ``Worker`` check at
    construction, rather than fail on the first call that needs it)."""
    missing = [name for name in _METHODS if not callable(getattr(transport, name, None))]
    if missing:
        raise TypeError(
            f"{type(transport).__name__} is not a Transport: it lacks {', '.join(missing)} "
            "(see rxinvoke.transports.base.Transport)"
        )
    try:
        parameters = inspect.signature(transport.enqueue).parameters  # type: ignore[attr-defined]
    except (TypeError, ValueError):  # no signature to read (a builtin): taken on trust
        return transport  # type: ignore[return-value]
    if "urgent" not in parameters and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    ):
        raise TypeError(
            f"{type(transport).__name__}.enqueue must accept the keyword urgent "
            "(enqueue(run_id, request, *, urgent=False): decisions on paused runs are urgent)"
        )
    return transport  # type: ignore[return-value]
