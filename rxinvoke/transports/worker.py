"""Worker: executes queued runs on a runtime, under leases, with crash recovery and remote cancel.

A worker takes jobs from the transport's run queue (at most ``concurrency`` at a time) and runs
each on its runtime, whose envelopes an :class:`~rxinvoke.transports.mirror.EventMirror`
mirrors to the run's stream. Around each run:

- **Lease.** Before it runs a job the worker takes the run's lease (``lease_ttl`` seconds,
  refreshed every third of it). A refresh that fails — the lease expired, or another worker
  holds it now — cancels the run at once: a run never goes on without its lease (fencing).
  One exception: a lease that expired while this worker was paused (a GC pause, a frozen VM),
  that no one took meanwhile, of a run the store still records as running here, is taken
  again and the run goes on (the others' reapers leave a run to its live owner).
- **Recovery.** A job whose worker died stays pending in the queue; a live worker keeps its
  own jobs fresh with every heartbeat, so only a dead worker's jobs go idle, and the reaper
  (every ``lease_ttl``) reclaims those idle for two lease lifetimes *whose lease is gone*.
  What the worker then finds in the store decides: a run never begun is run now; a finished
  run is only acknowledged; a run still ``running`` whose owner is gone is settled by the
  store's recovery (``run_failed`` "interrupted": ``on_worker_loss="fail"``), or, with
  ``on_worker_loss="retry"``, taken over and continued here from its last committed step
  (``run_resumed``, then the rest of the run) — one terminal event either way, mirrored to
  the stream; a run still ``running`` under a live owner (a worker that lost its lease but
  not its life) is left to it (with ``"retry"``, a run not taken over yet stays pending and
  is taken again later). A job delivered more than ``max_deliveries`` times goes to the dead
  letters, its run settled as failed — unless its run still runs under a live owner (a
  paused worker's jobs are reclaimed, and left, at every look): it stays pending, its owner's.
- **Cancel.** A cancel request (marker + notice) cancels the run where it runs; the worker also
  checks the markers of its runs at every heartbeat (a notice missed while reconnecting), and
  before it starts one. A run cancelled before it began, or whose request is invalid, gets a
  ``run_started`` and its terminal event on its stream (nothing is stored: it never began).
- **Ends.** A run's terminal event goes on its stream once ``run()`` is over — the store has
  committed the run's end (``EventMirror.hold_end``) — so a submitter's result, like a local
  ``emit``, comes when the end is durable; its other events go as they come.
- **Decisions.** A job may be a decision on a call of a paused run
  (:meth:`~rxinvoke.transports.remote.RemoteRuns.decide`): the worker records it on its
  store (``AgentRuntime.decide``) and answers the decider by the transport's replies; the
  decision that completes the batch makes the job's run the continuation, which then runs as
  any job (a decision whose continuation is stored already was taken before: settled as a
  redelivered job's; one whose cancel was requested before it was taken is not recorded). A
  continuation the runtime starts by itself — a paused run whose approval timed out — is
  queued as a job too (``AgentRuntime.continuations``), never run beside the leased ones.
- **Runs that never began here.** A run whose claim the store refused (unreachable), or that
  was cancelled while it waited for its session, published nothing: its stream gets
  ``run_started`` and the terminal event ``run()`` ended with (``run_failed`` "the store
  failed: …", ``run_cancelled``). A job whose request has the ``client_request_id`` of an
  earlier run gets that run's stored events on its own stream (``run()`` gave that run's
  outcome, as a local ``emit`` does). A run left stored as ``running`` when ``run()`` was over
  (a claim committed while the store was too far away to say so, an end the store could not
  record) is settled by this worker from its stream at its next reaping (every
  ``lease_ttl``), whoever holds its job: no other worker's reaper would, its owner — this
  process — being alive.

Workers need a store shared with each other (a :class:`~rxinvoke.stores.SqliteStore` file on
one host, a :class:`~rxinvoke.stores.PostgresStore` across machines): recovery reads it. A
worker marks its store's runs as a worker's (``store.mark_as_worker()``), so that the stores'
own recoveries — when any process opens the store, say — leave a dead worker's run to the
reapers (for the store's ``resume_grace``): only a reaper salvages what the run's stream showed
beyond the stored log, events the dead process published but never committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Literal

import pydantic

from .._futures import retrieve
from ..control import Control
from ..errors import (
    InvalidRequest,
    InvocationCancelled,
    InvocationError,
    RunAlreadyStored,
    StoreError,
    UserError,
)
from ..events import InvocationEvent, RunCancelled, RunFailed, RunStarted
from ..request import RunRequest
from ..runtime import AgentRuntime
from ..stores.base import EventEnvelope, RunRecord, log_entries
from ..stores.memory import MemoryStore
from . import _tracing
from ._decisions import Answer, Decision, decision_of
from ._wire import TERMINAL, decode, segments_of
from .base import Job, Lease, Transport, checked
from .mirror import EventMirror

__all__ = ("Worker", "WorkerStats")

_log = logging.getLogger("rxinvoke")

_HELPER_STOP = 5.0
"""Seconds the worker waits, when it stops, for its heartbeat, reaper and cancel listener to
end once cancelled."""

_RETAKE_TRIES = 5
_RETAKE_WAIT = 0.02
"""An expired lease that another worker holds is tried again this often, this many seconds
apart, before the run is stopped: a reaper that takes a look at a run (and leaves it to its
live owner) holds its lease for a few milliseconds."""


@dataclass(frozen=True)
class WorkerStats:
    """Counters of one worker."""

    executed: int = 0
    """Runs it executed to their end."""
    recovered: int = 0
    """Runs of dead workers it settled as failed (``on_worker_loss="fail"``)."""
    resumed: int = 0
    """Runs of dead workers it went on with to their end (``on_worker_loss="retry"``)."""
    dead_lettered: int = 0
    lease_lost: int = 0
    """Runs it cancelled because their lease was lost."""
    leases_retaken: int = 0
    """Expired leases it took again because no one had taken their run over (it went on)."""
    cancelled_remotely: int = 0


@dataclass
class _Held:
    job: Job
    lease: Lease
    control: Control | None = None
    cancel_requested: bool = False
    lease_lost: bool = False


def _terminal_of(failed: InvocationError) -> InvocationEvent:
    """The terminal event of a run that ended as ``failed`` before it began."""
    run_id = failed.run_id or ""
    if isinstance(failed, InvocationCancelled):
        return RunCancelled(run_id=run_id)
    cause = getattr(failed, "cause", None)
    if isinstance(cause, StoreError):
        return RunFailed(run_id=run_id, error=f"the store failed: {cause.message}")
    return RunFailed(run_id=run_id, error=failed.message.removeprefix(f"run {run_id}: "))


def _request_of(job: Job) -> RunRequest | Decision | None:
    """The job's request, or its decision (None if it reads as neither: its run fails as
    invalid)."""
    decision = decision_of(job.request)
    if decision is not None:
        return decision
    try:
        return RunRequest.model_validate_json(job.request)
    except pydantic.ValidationError:
        return None


def _control_of(request: RunRequest | Decision | None) -> Control:
    """The run's Control: the submitter's timeout and concurrency limit, as they came."""
    if request is None:
        return Control()
    return Control(timeout=request.timeout, concurrency_limit=request.concurrency_limit)


class Worker:
    """Executes queued runs (see the module docstring).

    Args:
        runtime: the runtime the runs execute on (its providers, tools, policy and store).
        transport: the queue, the run streams and the cancel requests.
        name: this worker's consumer name (default ``host:pid:random``).
        concurrency: runs executing at once at most.
        lease_ttl: seconds a lease lives without a refresh.
        on_worker_loss: what becomes of a run whose worker died mid-run: ``"fail"`` (it
            ends with ``run_failed`` "interrupted"), or ``"retry"`` (it goes on here from its
            last committed step, after ``run_resumed``: see
            :meth:`~rxinvoke.runtime.AgentRuntime.resume_interrupted`; a run whose cancel was
            requested, or whose stream lost events to retention, fails as with ``"fail"``).
        max_deliveries: deliveries of one job before it goes to the dead letters.
    """

    def __init__(
        self,
        runtime: AgentRuntime,
        transport: Transport,
        *,
        name: str | None = None,
        concurrency: int = 4,
        lease_ttl: float = 10.0,
        on_worker_loss: Literal["fail", "retry"] = "fail",
        max_deliveries: int = 5,
    ) -> None:
        if isinstance(runtime.store, MemoryStore):
            raise UserError(
                "a worker needs a store shared with the other workers (SqliteStore on one "
                "host, PostgresStore across machines), not a MemoryStore"
            )
        if concurrency < 1 or lease_ttl <= 0 or max_deliveries < 1:
            raise ValueError("concurrency, lease_ttl and max_deliveries must be positive")
        if on_worker_loss not in ("fail", "retry"):
            raise ValueError(f"on_worker_loss must be 'fail' or 'retry', got {on_worker_loss!r}")
        transport = checked(transport)
        store = runtime.store
        mark = getattr(store, "mark_as_worker", None)
        if on_worker_loss == "retry" and (
            getattr(store, "resume_run", None) is None
            or (mark is None and getattr(store, "recover_on_open", False))
        ):
            raise UserError(
                "on_worker_loss='retry' needs a store that can take a dead worker's run over "
                "(resume_run) and leaves it to the workers (mark_as_worker, or "
                "recover_on_open=False): SqliteStore or PostgresStore"
            )
        if mark is not None:  # its runs are left to the reapers when this process dies
            mark()
        self.runtime = runtime
        self.transport = transport
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.concurrency = concurrency
        self.lease_ttl = lease_ttl
        self.on_worker_loss = on_worker_loss
        self.max_deliveries = max_deliveries
        self.mirror = EventMirror(transport)
        runtime.continuations = self._queue_continuation  # an approval timeout's, say
        self._held: dict[str, _Held] = {}
        # runs this worker's runtime left stored as running when run() was over (see
        # _abandoned_here), with their jobs: settled by this worker at its next reaping
        self._abandoned: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stats = WorkerStats()

    async def _queue_continuation(self, request: RunRequest) -> None:
        """Queue a continuation the runtime started by itself (a paused run's approval timed
        out): a worker takes it as any job, before the runs not begun yet (urgent)."""
        await self.transport.enqueue(request.run_id or "", request.model_dump_json().encode(), urgent=True)

    @property
    def stats(self) -> WorkerStats:
        return self._stats

    @property
    def active(self) -> list[str]:
        """Ids of the runs this worker holds now."""
        return list(self._held)

    def _count(self, **more: int) -> None:
        stats = self._stats
        self._stats = dataclasses.replace(
            stats, **{name: getattr(stats, name) + n for name, n in more.items()}
        )

    # --- the loops --------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Take and run jobs until ``stop`` is set (then finish the runs going) or the task is
        cancelled (then cancel them: each ends with ``run_cancelled``)."""
        stop = stop or asyncio.Event()
        await self._warn_of_the_broker()
        attachment = self.mirror.attach(self.runtime)
        helpers = [
            asyncio.ensure_future(self._listen_for_cancels()),
            asyncio.ensure_future(self._heartbeats()),
            asyncio.ensure_future(self._reaper()),
        ]
        try:
            await self._take_loop(stop)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            for helper in helpers:
                helper.cancel()
            # bounded: a client library that swallows a cancellation must not hang the stop
            _, stuck = await asyncio.wait(helpers, timeout=_HELPER_STOP)
            for helper in stuck:
                _log.warning("rxinvoke worker %s: %r did not stop when cancelled", self.name, helper)
            for helper in helpers:
                if helper.done() and not helper.cancelled():
                    helper.exception()  # retrieved: never "exception was never retrieved"
            attachment.dispose()
            await self.mirror.aclose()

    async def _warn_of_the_broker(self) -> None:
        """Log what the broker's settings put at risk (nothing if it cannot say yet: the take
        loop waits for it)."""
        try:
            warnings = await self.transport.warnings()
        except Exception:  # away now: the take loop backs off and retries
            return
        for warning in warnings:
            _log.warning("rxinvoke worker %s: %s", self.name, warning)

    async def _take_loop(self, stop: asyncio.Event) -> None:
        delay = 0.05
        while not stop.is_set():
            free = self.concurrency - len(self._tasks)
            if free <= 0:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                jobs = await self.transport.take(self.name, free, wait=0.5)
            except Exception as exc:  # the broker is away: back off and try again
                _log.warning("rxinvoke worker %s: taking jobs failed (%s); retrying", self.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05
            for job in jobs:
                self._spawn(job)

    def _spawn(self, job: Job) -> None:
        task = asyncio.ensure_future(self._handle(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(retrieve)

    async def _listen_for_cancels(self) -> None:
        async for run_id in self.transport.cancel_notices():
            held = self._held.get(run_id)
            if held is not None:
                self._cancel(held, remote=True)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            with contextlib.suppress(Exception):
                await self.beat()

    async def beat(self) -> None:
        """One heartbeat: refresh every lease (cancelling runs whose lease is lost), keep their
        jobs fresh, look at their cancel markers."""
        held = list(self._held.values())
        if not held:
            return
        kept = await self.transport.refresh([h.lease for h in held], self.lease_ttl)
        asked = await self.transport.cancel_requested([h.lease.run_id for h in held])
        for item, still_held, cancel in zip(held, kept, asked, strict=True):
            if self._held.get(item.lease.run_id) is not item:
                continue  # the run ended while the heartbeat was away: its lease was given back
            if not still_held and not item.lease_lost and await self._retake(item):
                still_held = True
            if not still_held:
                if not item.lease_lost:
                    item.lease_lost = True
                    self._count(lease_lost=1)
                    _log.warning(
                        "rxinvoke worker %s: lost the lease of run %s; cancelling it",
                        self.name, item.lease.run_id,
                    )
                    self._cancel(item, remote=False)
            elif cancel:
                self._cancel(item, remote=True)
        await self.transport.heartbeat(self.name, [h.job.job_id for h in held if not h.lease_lost])

    async def _retake(self, held: _Held) -> bool:
        """Take a run's expired lease again if no one took it meanwhile and the store still
        records the run as running here (this worker was paused — a long GC pause, a frozen
        VM — and the others' reapers left the run to its owner, which lives): the run goes on
        instead of being cancelled. False (the run is stopped) when another worker holds the
        lease, or the run was settled or taken over meanwhile, or never begun."""
        run_id = held.lease.run_id
        lease = await self.transport.acquire(run_id, self.lease_ttl)
        for _ in range(_RETAKE_TRIES - 1):
            if lease is not None:
                break
            await asyncio.sleep(_RETAKE_WAIT)  # a reaper taking a look holds it a moment
            lease = await self.transport.acquire(run_id, self.lease_ttl)
        if lease is None:
            return False  # another worker holds it now
        try:
            record = await self.runtime.store.get_run(run_id)
        except Exception as exc:  # the store cannot say whose the run is: stop it (fencing)
            _log.warning("rxinvoke worker %s: run %s: %s", self.name, run_id, exc)
            record = None
        owner = getattr(self.runtime.store, "owner", None)
        if record is None or record.is_finished or owner is None or record.owner != owner:
            await self.transport.release(lease)
            return False
        held.lease = lease
        self._count(leases_retaken=1)
        _log.warning(
            "rxinvoke worker %s: the lease of run %s expired (this worker was paused?); "
            "no one took the run over: taken again, the run goes on", self.name, run_id,
        )
        return True

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl)
            with contextlib.suppress(Exception):
                await self.reap()

    async def reap(self, min_idle: float | None = None) -> int:
        """Reclaim dead workers' jobs (idle ``min_idle`` seconds, default two lease lifetimes,
        and without a lease) and handle them; returns how many were reclaimed."""
        free = max(self.concurrency - len(self._tasks), 1)
        idle = 2 * self.lease_ttl if min_idle is None else min_idle
        jobs = await self.transport.reclaim(self.name, idle, free)
        for job in jobs:
            self._spawn(job)
        # and this worker's own abandoned runs, whoever holds their jobs now (no other worker
        # settles them: their owner lives); handled as redelivered jobs (the store is asked)
        for run_id, job in list(self._abandoned.items()):
            if run_id not in self._held:
                self._spawn(dataclasses.replace(job, deliveries=max(job.deliveries, 2)))
        return len(jobs)

    def _cancel(self, held: _Held, *, remote: bool) -> None:
        if remote and not held.cancel_requested:
            held.cancel_requested = True
            self._count(cancelled_remotely=1)
        if held.control is not None:
            held.control.cancel()

    # --- one job ----------------------------------------------------------------------------

    async def _handle(self, job: Job) -> None:
        try:
            lease = await self.transport.acquire(job.run_id, self.lease_ttl)
        except Exception as exc:
            _log.warning("rxinvoke worker %s: no lease for run %s (%s)", self.name, job.run_id, exc)
            return
        if lease is None:
            return  # another worker holds the run: the job stays pending
        held = self._held[job.run_id] = _Held(job, lease)
        try:
            await self._run_job(job, held)
        except Exception as exc:  # the store or the broker failed: the job stays pending
            _log.warning(
                "rxinvoke worker %s: run %s: %s: %s (the job is retried)",
                self.name, job.run_id, type(exc).__name__, exc,
            )
        finally:
            self._held.pop(job.run_id, None)
            with contextlib.suppress(Exception):
                await self.transport.release(held.lease)  # the lease taken again, if it was

    async def _run_job(self, job: Job, held: _Held) -> None:
        store = self.runtime.store
        decision = decision_of(job.request)
        # a job delivered for the first time was never taken: its run is not in the store
        # (unless the job was queued twice, which begin_run refuses: looked at then; a
        # decision queued twice would decide again, so its continuation is looked up)
        taken = job.deliveries > 1 or decision is not None
        record = await store.get_run(job.run_id) if taken else None
        if job.deliveries > self.max_deliveries:
            await self._dead_letter(job, record)
            return
        if record is not None:
            await self._settle_stored(job, held, record)
            return
        self._abandoned.pop(job.run_id, None)  # not stored after all: it runs now
        try:
            if decision is not None:  # a decision on a paused run: its continuation runs
                continuation = await self._continuation(job, held, decision)
                if continuation is None:
                    await self.transport.ack(job.job_id)
                    return
                request = continuation
            else:
                request = RunRequest.model_validate_json(job.request)
            if request.run_id != job.run_id:
                raise ValueError(f"the request's run_id is {request.run_id!r}")
            self.runtime.validate(request)
        except (pydantic.ValidationError, ValueError, InvocationError) as exc:
            reason = str(exc).splitlines()[0][:300]
            await self._end_unstarted(job, RunFailed(run_id=job.run_id, error=f"invalid request: {reason}"))
            await self.transport.ack(job.job_id)
            return
        if (await self.transport.cancel_requested([job.run_id]))[0]:
            if job.deliveries == 1 and (stored := await store.get_run(job.run_id)) is not None:
                await self._settle_stored(job, held, stored)  # queued twice: it ran already
                return
            held.cancel_requested = True
            self._count(cancelled_remotely=1)
            await self._end_unstarted(job, RunCancelled(run_id=job.run_id), request)
            await self.transport.ack(job.job_id)
            return
        held.control = _control_of(request)
        # the run's end goes on its stream once the store has it: a submitter's result never
        # comes before the run's end is durable (as a local emit returns after the commit)
        self.mirror.hold_end(job.run_id)
        try:
            try:
                with _tracing.entered(request.trace_context):  # the submitter's trace goes on
                    ran = (await self.runtime.run(request, held.control)).run_id
            finally:
                self.mirror.release_end(job.run_id)
        except InvocationError as exc:  # the outcome is in the run's events (and the store)
            await self.mirror.flush()  # its end on the stream before anything is settled
            if exc.run_id in (None, job.run_id):
                if await self._settled_after(job, held, exc, request):
                    return
            ran = exc.run_id or job.run_id
        if ran != job.run_id:  # an earlier run with the same client_request_id: its outcome
            await self._mirror_rejoined(job, ran)
            await self.transport.ack(job.job_id)
            return
        self._count(executed=1)
        await self.mirror.flush()
        await self.transport.ack(job.job_id)

    async def _continuation(self, job: Job, held: _Held, decision: Decision) -> RunRequest | None:
        """Record ``decision`` on the store and answer its submitter; the continuation's
        request when the decision was the batch's last (to run as the job's run), else None
        (the job is done). A decision whose continuation was cancelled before this worker
        took it is not recorded: its stream ends cancelled."""
        runtime = self.runtime
        if (await self.transport.cancel_requested([job.run_id]))[0]:
            held.cancel_requested = True
            self._count(cancelled_remotely=1)
            await self._answer(job, Answer(outcome="refused", error="cancelled before it was decided"))
            await self._end_unstarted(job, RunCancelled(run_id=job.run_id))
            return None
        try:
            ready = await runtime.decide(
                decision.decide, decision.call_id, decision.approved, decision.reason
            )
            request = await runtime.continuation_of(decision.decide, job.run_id) if ready else None
        except InvalidRequest as exc:
            await self._answer(job, Answer(outcome="refused", error=exc.message))
            return None
        if request is None:
            await self._answer(job, Answer(outcome="waiting"))
            return None
        await self._answer(job, Answer(outcome="continues", session_id=str(request.session_id)))
        # the continuation runs under the decider's Control and trace, as a local approve's
        return request.model_copy(
            update={
                "timeout": decision.timeout,
                "concurrency_limit": decision.concurrency_limit,
                "trace_context": decision.trace_context,
            }
        )

    async def _answer(self, job: Job, answer: Answer) -> None:
        await self.transport.reply(job.run_id, answer.wire())

    async def _settled_after(
        self, job: Job, held: _Held, failed: InvocationError, request: RunRequest
    ) -> bool:
        """After ``run()`` raised ``failed`` for the job's run: settle what the run's events
        do not (True), or leave it to :meth:`_run_job`'s end (False: the run ended, its events
        and store say how). Raises (the job left for later) if the store cannot say."""
        store = self.runtime.store
        if isinstance(getattr(failed, "cause", None), RunAlreadyStored):
            # its job was queued twice and the run began from the other one: nothing was
            # written or published now; settled as a redelivered job's
            stored = await store.get_run(job.run_id)
            if stored is None:
                return False
            await self._settle_stored(job, held, stored)
            return True
        try:
            stored = await store.get_run(job.run_id)
        except StoreError:  # the job is left for later; its claim may have landed
            self._abandoned[job.run_id] = job
            raise
        if stored is None:
            # it never began — its claim failed (the store unreachable), or it was stopped
            # while it waited for its session — so nothing was published: its stream ends
            # as run() ended here (unless it has events: a store that lost what it committed)
            if await self.transport.tail(job.run_id) is None:
                await self._end_unstarted(job, _terminal_of(failed), request)
            await self.transport.ack(job.job_id)
            return True
        if stored.is_finished:
            return False
        # stored running, though run() is over here: its claim landed unseen, or its end
        # could not be recorded — settled from its stream, as a dead worker's run (no other
        # worker would: its owner, this process, lives)
        self._abandoned[job.run_id] = job
        await self._settle_stored(job, held, stored)
        return True

    async def _settle_stored(self, job: Job, held: _Held, record: RunRecord) -> None:
        """A job whose run is in the store already: finished (acknowledged), or running — under
        a dead owner (recovered or resumed per policy) or a live one (left to it)."""
        if not record.is_finished:
            mine = self._abandoned_here(record)  # settled from its stream, never resumed
            retry = self.on_worker_loss == "retry" and not mine
            resumed = await self._resume(job, held) if retry else "fail"
            if resumed == "leave":
                return  # not taken over: its owner still holds it (the job stays pending)
            if resumed == "ended":
                self._count(resumed=1)
                await self.mirror.flush()
            elif not await self._recover(job.run_id, mine):
                return  # its owner lives (it lost its lease, not its life): its run
            else:
                self._count(recovered=1)
        self._abandoned.pop(job.run_id, None)
        await self._mirror_stored(job.run_id)
        await self.transport.ack(job.job_id)

    async def _resume(self, job: Job, held: _Held) -> Literal["ended", "fail", "leave"]:
        """Go on with a dead worker's run here (``on_worker_loss="retry"``): ``"ended"`` once
        it is finished (here, or settled meanwhile); ``"fail"`` to settle it as failed instead
        (its cancel was requested, its stream lost events to retention, this worker lacks its
        provider or model); ``"leave"`` when it was not taken over (its owner still holds it:
        the job stays pending, and is taken again later)."""
        run_id = job.run_id
        if (await self.transport.cancel_requested([run_id]))[0]:
            return "fail"
        stored = await self.runtime.store.read_events(run_id)
        salvage, whole = await self._stream_after(run_id, stored[-1].seq if stored else 0)
        if not whole:  # the stream has events past a gap: the seqs cannot go on from here
            _log.warning(
                "rxinvoke worker %s: run %s: its stream lost events to retention; failing it",
                self.name, run_id,
            )
            return "fail"
        await self._mirror_missing(run_id)  # what the dead worker stored but never mirrored
        request = _request_of(job)
        held.control = _control_of(request)
        self.mirror.hold_end(run_id)  # as a run's end in _run_job: once the store has it
        try:
            try:
                with _tracing.entered(request.trace_context if request is not None else None):
                    await self.runtime.resume_interrupted(run_id, salvage=salvage, control=held.control)
            finally:
                self.mirror.release_end(run_id)
        except InvalidRequest as exc:
            _log.warning("rxinvoke worker %s: cannot resume run %s: %s", self.name, run_id, exc)
            return "fail"
        except InvocationError:
            pass  # the outcome is in its events (and the store)
        await self.mirror.flush()  # its end on the stream before anything is settled
        record = await self.runtime.store.get_run(run_id)
        return "ended" if record is not None and record.is_finished else "leave"

    def _abandoned_here(self, record: RunRecord) -> bool:
        """Whether ``record`` is a running run that this worker's runtime left stored as
        running when its ``run()`` was over: a claim committed whose reply was lost while the
        store was away (the runtime could not ask whether it landed: it never began), or a run
        whose end the store could not record. Its owner lives — this process — so no other
        worker's reaper would ever settle it; this worker does (the owner alone does not tell:
        stores of one process may share it)."""
        owner = getattr(self.runtime.store, "owner", None)
        return (
            record.run_id in self._abandoned
            and owner is not None
            and record.owner == owner
            and self.runtime.outcome_of(record.run_id) is None
        )

    async def _recover(self, run_id: str, mine: bool = False) -> bool:
        """Settle a dead worker's run in the store (``on_worker_loss="fail"``), keeping what its
        stream shows beyond the stored log: events observers saw but the dead process never
        committed are salvaged into the store first. False if its owner lives (unless
        ``mine``: one abandoned here, see :meth:`_abandoned_here`)."""
        store = self.runtime.store
        recover_run = getattr(store, "recover_run", None)
        if recover_run is None:  # a store without it: its own recovery, nothing salvaged
            await store.recover_interrupted()
            record = await store.get_run(run_id)
            return record is not None and record.is_finished
        stored = await store.read_events(run_id)
        salvage, _whole = await self._stream_after(run_id, stored[-1].seq if stored else 0)
        # (``mine`` only when set: a store of another library may not know the keyword)
        if await (recover_run(run_id, salvage, mine=True) if mine else recover_run(run_id, salvage)):
            return True
        record = await store.get_run(run_id)
        return record is not None and record.is_finished  # settled meanwhile by another process

    async def _stream_after(
        self, run_id: str, after_seq: int
    ) -> tuple[list[EventEnvelope], bool]:
        """The envelopes the run's stream holds after ``after_seq`` without a gap (what is
        kept now), and whether they reach the stream's last one."""
        tail = await self.transport.tail(run_id)
        if tail is None or tail.last_seq <= after_seq:
            return [], True
        found: list[EventEnvelope] = []
        cursor = after_seq
        async for segment in self.transport.read(run_id, after_seq):
            if segment.first_seq > cursor + 1 and segment.last_seq > cursor:
                break  # trimmed: nothing to salvage past a gap
            for envelope in decode(run_id, None, segment, cursor):
                found.append(envelope)
                cursor = envelope.seq
            if cursor >= tail.last_seq:
                break
        return found, cursor >= tail.last_seq

    async def _mirror_missing(self, run_id: str) -> None:
        """Append to the run's stream the stored envelopes beyond its last one."""
        tail = await self.transport.tail(run_id)
        envelopes = await self.runtime.store.read_events(
            run_id, after_seq=tail.last_seq if tail is not None else 0
        )
        if envelopes:
            await self.transport.append(list(segments_of(list(log_entries(envelopes)))))

    async def _mirror_stored(self, run_id: str) -> None:
        """Complete the run's stream from the store: what it has beyond the stream, or, if the
        stream went further than the store's log (events of a dead process that were never
        committed) and holds no terminal event, the store's terminal event after the stream's
        last seq — so every stream ends with exactly one terminal event."""
        tail = await self.transport.tail(run_id)
        if tail is not None and TERMINAL.intersection(tail.types):
            return
        last = tail.last_seq if tail is not None else 0
        store = self.runtime.store
        envelopes = await store.read_events(run_id, after_seq=last)
        if not envelopes:
            stored = await store.read_events(run_id)
            if not stored or stored[-1].type not in TERMINAL:
                return  # still running: its owner mirrors the rest
            terminal = stored[-1]
            envelopes = [EventEnvelope.of(terminal.event, run_id, terminal.session_id, last + 1)]
        await self.transport.append(list(segments_of(list(log_entries(envelopes)))))

    async def _mirror_rejoined(self, job: Job, earlier: str) -> None:
        """The stored events of ``earlier`` on this job's stream, numbered as its own: the run
        made by an earlier submit with the same ``client_request_id``, whose outcome ``run()``
        gave instead (as a local ``emit`` gives it) — so the submitter gets that outcome."""
        tail = await self.transport.tail(job.run_id)
        if tail is not None and TERMINAL.intersection(tail.types):
            return  # mirrored already (this job was delivered again)
        after = tail.last_seq if tail is not None else 0
        stored = await self.runtime.store.read_events(earlier)
        envelopes = [
            EventEnvelope.of(e.event, job.run_id, e.session_id, seq)
            for seq, e in enumerate(stored, 1)
            if seq > after
        ]
        if envelopes:
            await self.transport.append(list(segments_of(list(log_entries(envelopes)))))

    async def _end_unstarted(
        self, job: Job, terminal: InvocationEvent, request: RunRequest | None = None
    ) -> None:
        """``run_started`` and ``terminal`` on the stream of a run that never began."""
        session = request.session_id if request is not None else None
        started = RunStarted(
            run_id=job.run_id,
            session_id=str(session) if session else "",
            provider=request.provider or "" if request is not None else "",
            model=request.model or "" if request is not None else "",
            runtime=self.runtime.name,
        )
        envelopes = [
            EventEnvelope.of(started, job.run_id, session, 1),
            EventEnvelope.of(terminal, job.run_id, session, 2),
        ]
        await self.transport.append(list(segments_of(list(log_entries(envelopes)))))

    async def _dead_letter(self, job: Job, record: RunRecord | None) -> None:
        running = record is not None and not record.is_finished
        mine = record is not None and running and self._abandoned_here(record)
        if running and not await self._recover(job.run_id, mine):  # salvaged as any recovery
            # its owner lives (paused, not dead): its run, not a poison one; the job stays
            # pending (acknowledged, no worker would settle the run if its owner died later)
            return
        self._abandoned.pop(job.run_id, None)
        reason = f"delivered {job.deliveries} times (max_deliveries={self.max_deliveries})"
        _log.warning("rxinvoke worker %s: run %s %s: dead letter", self.name, job.run_id, reason)
        await self.transport.dead_letter(job, reason)  # before the terminal event is seen
        self._count(dead_lettered=1)
        record = await self.runtime.store.get_run(job.run_id)
        if record is None:
            await self._end_unstarted(job, RunFailed(run_id=job.run_id, error=f"dead letter: {reason}"))
        else:
            await self._mirror_stored(job.run_id)
