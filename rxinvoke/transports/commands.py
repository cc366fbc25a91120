"""The scale-out commands of ``rxinvoke``: ``worker``, ``submit``, ``cancel`` and ``events --follow``.

``rxinvoke worker --redis URL [--db PATH | --postgres DSN]`` executes queued runs until SIGINT
or SIGTERM (then it finishes the runs it holds and exits 0; a second signal exits at once with
status 130, leaving the runs it holds to the other workers' reapers, as if it had died: failed
or resumed per ``--on-worker-loss``); ``rxinvoke submit PROMPT --redis URL`` queues one and
streams it as ``rxinvoke run`` does (Ctrl-C cancels it on its worker; ``--detach``: print the
run id and exit); ``rxinvoke cancel RUN_ID --redis URL`` asks the workers to cancel a run and
waits for its terminal event; ``rxinvoke events RUN_ID --follow --redis URL [--after SEQ]``
follows a run's stream live from anywhere. ``--redis`` defaults to ``$RXINVOKE_REDIS``
(``--redis-prefix`` to ``$RXINVOKE_REDIS_PREFIX``, else ``rx:``), ``--postgres`` to
``$RXINVOKE_POSTGRES`` (keep the password out of the command line: ``PGPASSWORD`` or
``~/.pgpass`` are read by libpq).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from .._terminal import (
    Renderer,
    add_otel_option,
    add_provider_options,
    envelope_line,
    exported,
    interruptible,
    positive,
    provider_from_args,
    seconds,
)
from ..errors import InvocationError, ResumeGap, TransportError, UserError
from ..events import INVOCATION_EVENT, InvocationEvent
from ..invocation import RuntimeInvocation
from ..policy import ApprovalPolicy, RuntimePolicy
from ..request import EmitRequest
from ..runtime import AgentRuntime
from ..stores import EventEnvelope, SqliteStore, Store
from ..tools import builtin_tools

if TYPE_CHECKING:
    from .._runstream import RunStreamLike
    from .remote import RemoteRuns

__all__ = ("COMMANDS", "add_commands", "run_command")

COMMANDS = frozenset({"worker", "submit", "cancel"})
"""The commands this module runs (``events --follow --redis`` too)."""


def add_redis_option(parser: argparse.ArgumentParser) -> None:
    """``--redis URL`` and ``--redis-prefix`` (``worker``, ``submit``, ``cancel``, ``events
    --follow``, ``approve`` and ``deny``)."""
    parser.add_argument(
        "--redis", metavar="URL", default=os.environ.get("RXINVOKE_REDIS"),
        help="the Redis server of the run queue and the run streams (default $RXINVOKE_REDIS)",
    )
    parser.add_argument(
        "--redis-prefix", metavar="PREFIX", default=os.environ.get("RXINVOKE_REDIS_PREFIX", "rx:"),
        help="the prefix of rxinvoke's Redis keys (default $RXINVOKE_REDIS_PREFIX or rx:)",
    )


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    add_db_option: Callable[[Any], None],
) -> None:
    """Add ``worker``, ``submit`` and ``cancel`` to the ``rxinvoke`` parser."""
    worker = commands.add_parser(
        "worker",
        help="execute queued runs (scale-out: Redis + a shared store)",
        description="Take runs from the Redis queue and execute them, mirroring their events "
        "to their Redis streams. The store must be shared by all workers: --db (a SQLite file, "
        "workers on one host) or --postgres (machines).",
    )
    add_redis_option(worker)
    where = worker.add_mutually_exclusive_group()
    add_db_option(where)
    where.add_argument(
        "--postgres", metavar="DSN", default=os.environ.get("RXINVOKE_POSTGRES"),
        help="a PostgreSQL store (default $RXINVOKE_POSTGRES; password from PGPASSWORD)",
    )
    worker.add_argument("--concurrency", type=positive, default=4, metavar="N", help="runs at once (default 4)")
    worker.add_argument(
        "--lease-ttl", type=seconds, default=10.0, metavar="SECONDS",
        help="seconds a run's lease lives without a heartbeat (default 10)",
    )
    worker.add_argument(
        "--on-worker-loss", choices=("fail", "retry"), default="fail",
        help="a dead worker's run: fail it (run_failed \"interrupted\", the default) or go on "
        "with it here from its last committed step (run_resumed)",
    )
    worker.add_argument("--name", metavar="NAME", help="the worker's name (default host:pid:random)")
    worker.add_argument(
        "--approve-tool", action="append", default=[], metavar="NAME",
        help="calls of tool NAME wait for `rxinvoke approve` / `deny` (repeatable)",
    )
    add_provider_options(worker)
    add_otel_option(worker)

    submit = commands.add_parser(
        "submit",
        help="queue one prompt for a worker, streaming the answer",
        description=(
            "Queue PROMPT for `rxinvoke worker` and stream its events as `rxinvoke run` does "
            "(Ctrl-C cancels the run on its worker; --detach leaves it running)."
        ),
    )
    submit.add_argument("prompt", metavar="PROMPT", help="the user message (- reads it from stdin)")
    add_redis_option(submit)
    submit.add_argument("--session", metavar="UUID", help="continue this session id")
    submit.add_argument("--json", action="store_true", help="print one JSON event per line")
    submit.add_argument("--detach", action="store_true", help="print the run id and exit")
    submit.add_argument("--provider", default="offline", help="the provider id the worker uses (default offline)")
    submit.add_argument("--model", default=None, help="the model (default: the provider's)")

    cancel = commands.add_parser(
        "cancel",
        help="cancel a run a worker executes",
        description="Ask the workers to cancel RUN_ID and wait for its terminal event.",
    )
    cancel.add_argument("run_id", metavar="RUN_ID")
    add_redis_option(cancel)
    cancel.add_argument("--no-wait", action="store_true", help="do not wait for the outcome")


def add_follow_options(events: argparse.ArgumentParser) -> None:
    """``--follow``, ``--after`` and ``--redis`` of ``rxinvoke events``."""
    events.add_argument(
        "--follow", action="store_true",
        help="keep printing events as the run publishes them, until its end",
    )
    events.add_argument("--after", type=int, default=0, metavar="SEQ", help="only events after SEQ")
    add_redis_option(events)


def _transport(args: argparse.Namespace) -> Any:
    if not args.redis:
        raise UserError(f"{args.command} needs --redis URL (or $RXINVOKE_REDIS)")
    from .redis import RedisTransport

    return RedisTransport(args.redis, prefix=args.redis_prefix)


def run_command(args: argparse.Namespace, out: TextIO, db_path: Callable[[argparse.Namespace], Any]) -> int:
    """Run ``worker``, ``submit``, ``cancel`` or ``events --follow --redis``; the exit code."""
    work = {
        "worker": _worker,
        "submit": _submit,
        "cancel": _cancel,
        "events": _follow,
    }[args.command]
    if args.command == "submit":  # Ctrl-C cancels the run, as `rxinvoke run` does
        return asyncio.run(interruptible(work(args, out, db_path)))
    return asyncio.run(work(args, out, db_path))


async def _worker(args: argparse.Namespace, out: TextIO, db_path: Callable[[argparse.Namespace], Any]) -> int:
    from .worker import Worker

    transport = _transport(args)
    store: Store  # recovering on open: the dead workers' runs are left to the reapers
    if args.postgres:
        from ..stores.postgres import PostgresStore

        store = PostgresStore(args.postgres)
    else:
        store = SqliteStore(db_path(args))
    provider = provider_from_args(args)
    try:
        policy = RuntimePolicy(approval=ApprovalPolicy(tools=frozenset(args.approve_tool)))
        runtime = AgentRuntime(providers=[provider], tools=builtin_tools(), store=store, policy=policy)
        worker = Worker(
            runtime,
            transport,
            name=args.name,
            concurrency=args.concurrency,
            lease_ttl=args.lease_ttl,
            on_worker_loss=args.on_worker_loss,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():  # the second: now, as if it died (its leases expire)
                print(
                    f"rxinvoke worker {worker.name}: stopped at once; its {len(worker.active)} "
                    "run(s) are left to the other workers' reapers",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(130)
            print(
                f"rxinvoke worker {worker.name}: stopping once its {len(worker.active)} run(s) "
                "end (signal again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        print(
            f"rxinvoke worker {worker.name}: {transport.where}, store {store!r}, "
            f"concurrency {args.concurrency}, on worker loss: {args.on_worker_loss}",
            file=sys.stderr,
            flush=True,
        )
        with exported(runtime, args):
            await worker.serve(stop)
        stats = worker.stats
        print(
            f"rxinvoke worker {worker.name}: stopped ({stats.executed} runs executed, "
            f"{stats.recovered} recovered)",
            file=sys.stderr,
        )
        return 0
    finally:
        aclose = getattr(provider, "aclose", None)
        if aclose is not None:
            await aclose()
        await store.close()
        await transport.close()


_QUEUED_NOTICE = 3.0
"""Seconds ``submit`` (``cancel``) may show nothing before it says it waits for a worker."""


def _notice_later(text: str) -> asyncio.TimerHandle:
    """Print ``text`` on stderr in ``_QUEUED_NOTICE`` seconds unless cancelled first (why the
    terminal is quiet)."""
    return asyncio.get_running_loop().call_later(
        _QUEUED_NOTICE, lambda: print(f"rxinvoke: {text}", file=sys.stderr, flush=True)
    )


async def _submit(args: argparse.Namespace, out: TextIO, db_path: Callable[[argparse.Namespace], Any]) -> int:
    from .remote import RemoteRuns

    if args.prompt == "-":
        args.prompt = sys.stdin.read()
    session = uuid.UUID(args.session) if args.session else uuid.uuid4()
    transport = _transport(args)
    try:
        remote = RemoteRuns(transport)
        request = EmitRequest(
            provider=args.provider, model=args.model or args.provider, input=args.prompt,
            session_id=session,
        )
        if args.detach:
            run_request = request.into_run_request(run_id=str(uuid.uuid4()), session_id=session)
            await transport.enqueue(run_request.run_id or "", run_request.model_dump_json().encode())
            out.write(f"{run_request.run_id}\n")
            return 0
        stream = RuntimeInvocation(AgentRuntime(), remote=remote).submit(request)
        return await _watch(
            args, out, remote, stream,
            f"run {stream.run_id} is queued; no worker has taken it yet (start one: rxinvoke worker)",
        )
    finally:
        await transport.close()


async def _watch(
    args: argparse.Namespace, out: TextIO, remote: RemoteRuns, stream: RunStreamLike, quiet: str
) -> int:
    """Render a run on the workers as ``rxinvoke run`` renders one here (``--json``: a line
    per event), saying ``quiet`` if nothing shows for a while; Ctrl-C cancels the run."""
    renderer = Renderer(out)
    if args.redis != os.environ.get("RXINVOKE_REDIS"):  # its approve/deny need the server too
        renderer.decide_with = " --redis URL"
    notice = _notice_later(quiet)

    def show(event: InvocationEvent) -> None:
        notice.cancel()
        if args.json:
            out.write(INVOCATION_EVENT.dump_json(event).decode() + "\n")
            out.flush()
        else:
            renderer(event)

    stream.subscribe(on_next=show, on_error=lambda exc: None)
    try:
        output = await stream.result
    except InvocationError:
        renderer.newline()
        raise
    except asyncio.CancelledError:  # Ctrl-C: as `rxinvoke run`, the run is not wanted
        renderer.newline()
        await _cancel_interrupted(remote, stream.run_id)
        raise
    finally:
        notice.cancel()
    if not args.json:
        renderer.finish(output)
    return 0


async def decide_on_workers(args: argparse.Namespace, out: TextIO) -> int:
    """``rxinvoke approve|deny RUN_ID CALL_ID --redis URL`` of a run the store here does not
    have: a worker decides it on the workers' store and continues the run there, whose
    events stream here (Ctrl-C cancels the continuation)."""
    from .remote import RemoteRuns

    transport = _transport(args)
    try:
        remote = RemoteRuns(transport)
        notice = _notice_later(
            f"the decision on {args.call_id} is queued; no worker has taken it yet (start one: "
            "rxinvoke worker)"
        )
        try:
            stream = await remote.decision(
                args.run_id, args.call_id, args.command == "approve", getattr(args, "reason", None)
            )
        finally:
            notice.cancel()
        if stream is None:
            print(f"rxinvoke: recorded; run {args.run_id} still waits for other calls", file=sys.stderr)
            return 0
        return await _watch(args, out, remote, stream, f"run {stream.run_id} (continuing {args.run_id}) has shown nothing yet")
    finally:
        await transport.close()


async def _cancel_interrupted(remote: RemoteRuns, run_id: str) -> None:
    """Ask the workers to cancel the run of an interrupted ``submit`` and say so."""
    try:
        await remote.cancel(run_id)
    except TransportError as exc:
        print(f"rxinvoke: could not ask the workers to cancel run {run_id}: {exc.message}", file=sys.stderr)
        return
    print(
        f"rxinvoke: cancelling run {run_id} on its worker (rxinvoke events {run_id} --follow "
        "--redis URL shows how it ends)",
        file=sys.stderr,
    )


async def _cancel(args: argparse.Namespace, out: TextIO, db_path: Callable[[argparse.Namespace], Any]) -> int:
    from .remote import RemoteRuns

    transport = _transport(args)
    try:
        remote = RemoteRuns(transport)
        await remote.cancel(args.run_id)
        if args.no_wait:
            out.write(f"cancel requested: run {args.run_id}\n")
            return 0
        last: EventEnvelope | None = None
        tail = await transport.tail(args.run_id)
        start = max(tail.last_seq - 1, 0) if tail is not None else 0
        notice = _notice_later(
            f"cancel of run {args.run_id} requested; waiting for the worker that runs it (or "
            "takes it) to end it"
        )
        try:
            async for envelope in _iterate(remote.observe_run(args.run_id, after_seq=start)):
                last = envelope
        finally:
            notice.cancel()
        ended = last.type if last is not None else "no terminal event"
        out.write(f"run {args.run_id}: {ended}\n")
        return 0 if ended == "run_cancelled" else 1
    finally:
        await transport.close()


async def _follow(args: argparse.Namespace, out: TextIO, db_path: Callable[[argparse.Namespace], Any]) -> int:
    from .remote import RemoteRuns

    transport = _transport(args)
    kind = getattr(args, "kind_member", None)
    try:
        try:
            async for envelope in _iterate(RemoteRuns(transport).observe_run(args.run_id, after_seq=args.after)):
                if kind is not None and not kind.matches(envelope.event):
                    continue
                out.write(envelope_line(envelope, args.json))
                out.flush()
        except ResumeGap as gap:
            raise UserError(
                f"{gap.message}: read them from the store (`rxinvoke events {args.run_id}`) or "
                f"follow from there (--after {gap.first_available - 1})"
            ) from None
        return 0
    finally:
        await transport.close()


async def _iterate(observable: Any) -> Any:
    """An Observable's items as an async iterator (errors raised)."""
    from ..operators import to_async_iterator

    async for item in to_async_iterator(observable):
        yield item

