"""The ``rxinvoke`` command line: ``rxinvoke run PROMPT [--session UUID] [--json]
[--approve-tool NAME] [--provider offline|openai --model NAME --base-url URL --api-key-env VAR]``,
``rxinvoke approve|deny RUN_ID CALL_ID``, ``runs``, ``events`` and the scale-out commands."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ._terminal import (
    Renderer,
    add_otel_option,
    add_provider_options,
    envelope_line,
    exported,
    interruptible,
    positive,
    provider_from_args,
)
from ._version import __version__
from .errors import RxInvokeError, UserError
from .events import (
    INVOCATION_EVENT,
    EventKind,
    InvocationEvent,
)
from .invocation import RuntimeInvocation
from .operators import to_async_iterator
from .policy import ApprovalPolicy, RuntimePolicy
from .request import EmitRequest, RunOutput
from .runtime import AgentRuntime
from .stores import RunRecord, SqliteStore, Store, default_db_path
from .tools import builtin_tools
from .transports import commands as scale_out

__all__ = ("main",)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxinvoke",
        description="Run an LLM agent loop and watch every step as it happens.",
        epilog=f"Runs, sessions and events are stored in\n  {default_db_path()}\n"
        "(set RXINVOKE_DB or pass --db PATH to use another file).",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the path on one line
    )
    parser.add_argument("--version", action="version", version=f"rxinvoke {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run one prompt, streaming the answer",
        description="Run PROMPT on the embedded offline model (no network, no key), or on an "
        "OpenAI-compatible server with --provider openai --model NAME.",
    )
    run.add_argument("prompt", metavar="PROMPT", help="the user message (- reads it from stdin)")
    run.add_argument("--session", metavar="UUID", help="continue this session id")
    run.add_argument(
        "--session-must-exist", action="store_true",
        help="with --session: fail if the session has no stored history (default: warn and "
        "start it)",
    )
    _add_run_options(run)
    for verb, what in (("approve", "run it"), ("deny", "tell the model it was denied")):
        decide = commands.add_parser(
            verb,
            help=f"{verb} a tool call of a run paused for approval",
            description=f"Decide CALL_ID of the paused RUN_ID ({what}); once every paused call "
            "is decided the run continues here, streaming its answer. A run paused on the "
            "workers (--redis, and not in the store here) is decided and continued by a worker, "
            "its answer streamed here.",
        )
        decide.add_argument("run_id", metavar="RUN_ID", help="the paused run")
        decide.add_argument("call_id", metavar="CALL_ID", help="the call waiting for approval")
        if verb == "deny":
            decide.add_argument("--reason", metavar="TEXT", help="why (the model reads it)")
        _add_run_options(decide)
        scale_out.add_redis_option(decide)
    _add_store_commands(commands)
    scale_out.add_commands(commands, _add_db_option)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """What every command that runs the loop takes (``run``, ``approve``, ``deny``)."""
    parser.add_argument("--json", action="store_true", help="print one JSON event per line")
    parser.add_argument(
        "--approve-tool", action="append", default=[], metavar="NAME",
        help="calls of tool NAME wait for `rxinvoke approve` / `deny` (repeatable)",
    )
    add_provider_options(parser)
    add_otel_option(parser)
    _add_db_option(parser, postgres=True)


async def _run(args: argparse.Namespace, out: TextIO, store: Store) -> int:
    session = uuid.UUID(args.session) if args.session else None
    if session is not None and not await store.load_history(session):
        if args.session_must_exist:
            raise UserError(f"session {session} has no stored history (--session-must-exist)")
        print(
            f"rxinvoke: warning: session {session} has no stored history; starting it",
            file=sys.stderr,
        )
    provider = provider_from_args(args)
    model = args.model or "offline"
    request = EmitRequest(provider=provider.id, model=model, input=args.prompt)
    if session is not None:
        request = request.with_session_id(session)
    return await _execute(args, out, store, lambda inv: inv.emit(lambda ctx, control: request))


async def _decide(args: argparse.Namespace, out: TextIO, store: Store) -> int:
    if args.redis and await store.get_run(args.run_id) is None:  # paused on the workers
        return await scale_out.decide_on_workers(args, out)
    if args.command == "approve":
        start = lambda inv: inv.approve(args.run_id, args.call_id)  # noqa: E731
    else:
        start = lambda inv: inv.deny(args.run_id, args.call_id, args.reason)  # noqa: E731
    return await _execute(args, out, store, start)


async def _execute(
    args: argparse.Namespace,
    out: TextIO,
    store: Store,
    start: Callable[[RuntimeInvocation], Awaitable[RunOutput | None]],
) -> int:
    """Start a run (``run``) or a continuation (``approve``/``deny``), rendering its events."""
    provider = provider_from_args(args)
    policy = RuntimePolicy(approval=ApprovalPolicy(tools=frozenset(args.approve_tool)))
    runtime = AgentRuntime(providers=[provider], tools=builtin_tools(), store=store, policy=policy)
    invocation = RuntimeInvocation(runtime)
    renderer: Renderer = args.renderer

    def print_json(event: InvocationEvent) -> None:
        out.write(INVOCATION_EVENT.dump_json(event).decode() + "\n")
        out.flush()

    render = print_json if args.json else renderer

    def safe_render(event: InvocationEvent) -> None:
        if event.type == "run_started":
            renderer.run_id = event.run_id  # named on Ctrl-C, whatever the output format
        try:
            render(event)
        except BrokenPipeError:  # e.g. piped into `head`: stop printing, let the run finish
            subscription.dispose()

    subscription = invocation.observe(EventKind.ANY).subscribe(safe_render)
    try:
        with exported(runtime, args):
            output = await start(invocation)
    finally:
        subscription.dispose()
        aclose = getattr(provider, "aclose", None)
        if aclose is not None:
            await aclose()
    if output is None:  # a decision recorded; other calls of the batch still wait
        print(f"rxinvoke: recorded; run {args.run_id} still waits for other calls", file=sys.stderr)
        return 0
    if not args.json:
        try:
            renderer.finish(output)
        except BrokenPipeError:
            pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rxinvoke`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    problem = _invalid_options(args)
    if problem is not None:
        print(f"rxinvoke: error: {problem}", file=sys.stderr)
        return 2
    if args.command not in ("run", "approve", "deny"):
        return _store_command(args)
    if args.command == "run" and args.prompt == "-":
        args.prompt = sys.stdin.read()
    renderer = args.renderer = Renderer(sys.stdout)
    command, create = (_run, True) if args.command == "run" else (_decide, False)
    path = _db_path(args)
    if args.command != "run" and args.redis and args.postgres is None and not path.exists():
        work = scale_out.decide_on_workers(args, sys.stdout)  # no store here: the workers'
    else:
        work = _with_store(args, sys.stdout, command, path=path, create=create)
    try:
        return asyncio.run(interruptible(work))
    except RxInvokeError as exc:
        renderer.newline()
        print(f"rxinvoke: error: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. an unwritable --db directory the store could not name
        renderer.newline()
        print(f"rxinvoke: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        renderer.newline()
        where = f" (run {renderer.run_id}: see `rxinvoke events {renderer.run_id}`)" if renderer.run_id else ""
        print(f"rxinvoke: interrupted{where}", file=sys.stderr)
        return 130


# --- the durable store: --db, `runs`, `events` ------------------------------------------------


def _add_db_option(parser: Any, *, postgres: bool = False) -> None:
    """``--db PATH``; with ``postgres``, or ``--postgres [DSN]`` (the workers' store)."""
    if postgres:
        parser = parser.add_mutually_exclusive_group()
        parser.add_argument(
            "--postgres", metavar="DSN", nargs="?", const="",
            help="a PostgreSQL store instead, the workers' (`rxinvoke worker --postgres`; DSN "
            "default $RXINVOKE_POSTGRES; the password from PGPASSWORD or ~/.pgpass)",
        )
    parser.add_argument(
        "--db", metavar="PATH",
        help=f"the database file (default: $RXINVOKE_DB or {default_db_path()})",
    )


def _add_store_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    runs = commands.add_parser(
        "runs",
        help="list recent stored runs",
        description="List the most recently started runs: id, session, status, iterations, "
        "tokens and start time (UTC).",
    )
    runs.add_argument("--limit", type=positive, default=20, metavar="N", help="at most N runs (default 20)")
    runs.add_argument("--session", metavar="UUID", help="only the runs of this session")
    runs.add_argument("--json", action="store_true", help="print one JSON run record per line")
    _add_db_option(runs, postgres=True)
    events = commands.add_parser(
        "events",
        help="replay the stored events of a run",
        description="Print the stored events of RUN_ID in order, one line each (seq, time, "
        "type, fields).",
    )
    events.add_argument("run_id", metavar="RUN_ID", help="the run (see `rxinvoke runs`)")
    events.add_argument("--kind", metavar="K", help="only events of this kind (e.g. text_delta)")
    events.add_argument(
        "--json", action="store_true", help="print one JSON envelope (seq, event, ...) per line"
    )
    _add_db_option(events, postgres=True)
    scale_out.add_follow_options(events)


def _db_path(args: argparse.Namespace) -> Path:
    return Path(args.db).expanduser() if args.db else default_db_path()


async def _with_store(
    args: argparse.Namespace,
    out: TextIO,
    command: Callable[[argparse.Namespace, TextIO, Store], Awaitable[int]],
    *,
    path: Path,
    create: bool,
) -> int:
    store: Store
    dsn = getattr(args, "postgres", None)
    if dsn is not None:  # --postgres [DSN]
        dsn = dsn or os.environ.get("RXINVOKE_POSTGRES")
        if not dsn:
            raise UserError("--postgres needs a DSN (or $RXINVOKE_POSTGRES)")
        from .stores.postgres import PostgresStore

        store = PostgresStore(dsn)
    else:
        store = SqliteStore(path, create=create)
    try:
        await store.open()
        return await command(args, out, store)
    finally:
        await store.close()


def _invalid_options(args: argparse.Namespace) -> str | None:
    """What is wrong with the options of any command, in one line (None: nothing)."""
    session = getattr(args, "session", None)
    if session is not None:
        try:
            uuid.UUID(session)
        except ValueError:
            return f"--session must be a UUID, got {session!r}"
    kind = getattr(args, "kind", None)
    if kind is not None:
        try:
            args.kind_member = EventKind.parse(kind)
        except ValueError:
            return f"unknown event kind {kind!r}"
    provider = getattr(args, "provider", None)
    if provider in ("openai", "anthropic") and not args.model:
        return f"--provider {provider} needs --model NAME"
    return None


def _store_command(args: argparse.Namespace) -> int:
    remote = args.command in scale_out.COMMANDS or (
        args.command == "events" and args.follow and args.redis
    )
    command = _list_runs if args.command == "runs" else _replay_events
    try:
        if remote:
            return scale_out.run_command(args, sys.stdout, _db_path)
        return asyncio.run(
            _with_store(args, sys.stdout, command, path=_db_path(args), create=False)
        )
    except RxInvokeError as exc:
        print(f"rxinvoke: error: {exc.message}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"rxinvoke: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except OSError as exc:
        print(f"rxinvoke: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rxinvoke: interrupted", file=sys.stderr)
        return 130


def _when(record: RunRecord) -> str:
    return record.started_at.strftime("%Y-%m-%d %H:%M:%S")


async def _list_runs(args: argparse.Namespace, out: TextIO, store: Store) -> int:
    session = uuid.UUID(args.session) if args.session else None
    records = await store.list_runs(limit=args.limit, session_id=session)
    if args.json:
        for record in records:
            out.write(record.model_dump_json() + "\n")
        return 0
    out.write(f"{'RUN':<36}  {'SESSION':<36}  {'STATUS':<9}  {'ITER':>4}  {'TOKENS':>7}  STARTED\n")
    for r in records:
        out.write(
            f"{r.run_id:<36}  {r.session_id!s:<36}  {r.status:<9}  {r.iterations:>4}  "
            f"{r.total_usage.total_tokens:>7}  {_when(r)}\n"
        )
    return 0


async def _replay_events(args: argparse.Namespace, out: TextIO, store: Store) -> int:
    runtime = AgentRuntime(store=store)
    kind: EventKind | None = getattr(args, "kind_member", None)
    invocation = RuntimeInvocation(runtime)
    after = args.after or None
    envelopes = (
        invocation.subscribe_run(args.run_id, after)
        if args.follow
        else invocation.replay(args.run_id, after)
    )
    async for envelope in to_async_iterator(envelopes):
        if kind is not None and not kind.matches(envelope.event):
            continue
        out.write(envelope_line(envelope, args.json))
        if args.follow:
            out.flush()
    return 0
