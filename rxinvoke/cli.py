"""The ``rxinvoke`` command line: ``rxinvoke run PROMPT [--session UUID] [--json]
[--provider offline|openai --model NAME --base-url URL --api-key-env VAR]``."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TextIO

from ._version import __version__
from .errors import RxInvokeError, UserError
from .events import (
    INVOCATION_EVENT,
    EventKind,
    InvocationEvent,
    RunFailed,
    TextDelta,
    ToolCallCompleted,
    ToolExecutionFinished,
    ToolSuccess,
)
from .invocation import RuntimeInvocation
from .operators import to_async_iterator
from .providers import ChatProvider, OfflineProvider
from .request import EmitRequest, RunOutput
from .runtime import AgentRuntime
from .stores import EventEnvelope, RunRecord, SqliteStore, Store, default_db_path
from .tools import builtin_tools

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
    run.add_argument("--json", action="store_true", help="print one JSON event per line")
    run.add_argument(
        "--delay", type=_seconds, default=0.02, metavar="SECONDS",
        help="pause between streamed fragments of the offline model (default 0.02)",
    )
    run.add_argument(
        "--provider", choices=("offline", "openai"), default="offline",
        help="offline: the embedded model (default); openai: an OpenAI-compatible server",
    )
    run.add_argument(
        "--model", metavar="NAME", help="the model name (required with --provider openai)"
    )
    run.add_argument(
        "--base-url", metavar="URL",
        help=f"API root of the OpenAI-compatible server (default {_OPENAI_URL})",
    )
    run.add_argument(
        "--api-key-env", metavar="VAR",
        help="environment variable holding the API key (default OPENAI_API_KEY; "
        "a server other than OpenAI's may need none)",
    )
    _add_db_option(run)
    _add_store_commands(commands)
    return parser


_OPENAI_URL = "https://api.openai.com/v1"


def _openai_provider(args: argparse.Namespace) -> ChatProvider:
    try:
        from .providers.openai import OpenAIProvider
    except ImportError as exc:
        raise UserError(
            f"--provider openai needs the openai extra (pip install 'rxinvoke[openai]'): {exc}"
        ) from exc
    variable = args.api_key_env or "OPENAI_API_KEY"
    base_url = args.base_url or _OPENAI_URL
    if not os.environ.get(variable) and (args.api_key_env or base_url == _OPENAI_URL):
        raise UserError(f"no API key: the environment variable {variable} is not set")
    return OpenAIProvider(base_url=base_url, api_key_env=variable)


_ECHO_LIMIT = 200
"""Characters of a tool call's arguments or result echoed on one line."""


def _clip(text: str, limit: int = _ECHO_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Renderer:
    """Human-readable live rendering of a run's events.

    Writes in whatever encoding the terminal has: characters it cannot encode are replaced
    (``→ ← · …`` become ``-> <- | ...`` on an ASCII terminal), never an error.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._line_open = False
        self.run_id: str | None = None
        """The run being rendered (from its ``run_started``)."""
        encoding = getattr(out, "encoding", None) or "utf-8"
        try:
            "→←·…".encode(encoding)
            self._fancy = True
        except (UnicodeEncodeError, LookupError):
            self._fancy = False
        self._encoding = encoding

    def _write(self, text: str) -> None:
        if not self._fancy:
            for fancy, plain in (("→", "->"), ("←", "<-"), ("·", "|"), ("…", "...")):
                text = text.replace(fancy, plain)
            text = text.encode(self._encoding, "replace").decode(self._encoding)
        self._out.write(text)

    def __call__(self, event: InvocationEvent) -> None:
        if event.type == "run_started":
            self.run_id = event.run_id
        if isinstance(event, TextDelta):
            self._write(event.delta)
            self._line_open = True
        elif isinstance(event, ToolCallCompleted):
            self.newline()
            self._write(f"→ {event.call.name}({_clip(event.call.arguments)})\n")
        elif isinstance(event, ToolExecutionFinished):
            result = event.result
            shown = result.output if isinstance(result, ToolSuccess) else f"error: {result.error}"
            self._write(f"← {event.tool_name}: {_clip(shown)} ({event.duration_ms:.1f} ms)\n")
        elif isinstance(event, RunFailed):
            self.newline()
        self._out.flush()

    def newline(self) -> None:
        """End a partial line of streamed text."""
        if self._line_open:
            self._out.write("\n")
            self._line_open = False

    def finish(self, output: RunOutput) -> None:
        self.newline()
        usage = output.total_usage
        self._write(
            f"[{output.finish_reason.value} · {output.iterations} iteration(s) · tokens "
            f"in {usage.input_tokens} / out {usage.output_tokens} / total {usage.total_tokens} · "
            f"session {output.session_id} · run {output.run_id}]\n"
        )


async def _run(args: argparse.Namespace, out: TextIO, store: Store) -> int:
    session = uuid.UUID(args.session) if args.session else None
    if session is not None and not await store.load_history(session):
        if args.session_must_exist:
            raise UserError(f"session {session} has no stored history (--session-must-exist)")
        print(
            f"rxinvoke: warning: session {session} has no stored history; starting it",
            file=sys.stderr,
        )
    provider: ChatProvider
    if args.provider == "openai":
        provider = _openai_provider(args)
    else:
        provider = OfflineProvider(delay=args.delay)
    model = args.model or "offline"
    runtime = AgentRuntime(providers=[provider], tools=builtin_tools(), store=store)
    invocation = RuntimeInvocation(runtime)
    renderer: _Renderer = args.renderer

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
        request = EmitRequest(provider=provider.id, model=model, input=args.prompt)
        if session is not None:
            request = request.with_session_id(session)
        output = await invocation.emit(lambda ctx, control: request)
    finally:
        subscription.dispose()
        aclose = getattr(provider, "aclose", None)
        if aclose is not None:
            await aclose()
    if not args.json:
        try:
            renderer.finish(output)
        except BrokenPipeError:
            pass
    return 0


async def _interruptible(work: Awaitable[int]) -> int:
    """Run ``work`` so that Ctrl-C cancels it (the run ends with a stored ``run_cancelled``)
    and then raises KeyboardInterrupt, on every Python (3.10's asyncio.run would raise
    KeyboardInterrupt wherever the signal lands, even inside the run)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, interrupt)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / Windows
        return await task
    try:
        return await task
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rxinvoke`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    problem = _invalid_options(args)
    if problem is not None:
        print(f"rxinvoke: error: {problem}", file=sys.stderr)
        return 2
    if args.command != "run":
        return _store_command(args)
    if args.prompt == "-":
        args.prompt = sys.stdin.read()
    renderer = args.renderer = _Renderer(sys.stdout)
    try:
        return asyncio.run(_interruptible(_with_store(args, sys.stdout, _run, path=_db_path(args), create=True)))
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


def _add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", metavar="PATH",
        help=f"the database file (default: $RXINVOKE_DB or {default_db_path()})",
    )


_MAX_LIMIT = 1_000_000


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text[:40]!r}") from None
    if not 1 <= value <= _MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {_MAX_LIMIT:,}, got {text[:40]}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text[:40]!r}") from None
    if not (math.isfinite(value) and 0 <= value <= 3600):
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to 3600, got {text[:40]}")
    return value


def _add_store_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    runs = commands.add_parser(
        "runs",
        help="list recent stored runs",
        description="List the most recently started runs: id, session, status, iterations, "
        "tokens and start time (UTC).",
    )
    runs.add_argument("--limit", type=_positive, default=20, metavar="N", help="at most N runs (default 20)")
    runs.add_argument("--session", metavar="UUID", help="only the runs of this session")
    runs.add_argument("--json", action="store_true", help="print one JSON run record per line")
    _add_db_option(runs)
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
    _add_db_option(events)


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
    if getattr(args, "provider", None) == "openai" and not args.model:
        return "--provider openai needs --model NAME"
    return None


def _store_command(args: argparse.Namespace) -> int:
    command = _list_runs if args.command == "runs" else _replay_events
    try:
        return asyncio.run(
            _with_store(args, sys.stdout, command, path=_db_path(args), create=False)
        )
    except RxInvokeError as exc:
        print(f"rxinvoke: error: {exc.message}", file=sys.stderr)
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


def _describe(envelope: EventEnvelope) -> str:
    fields = envelope.event.model_dump(mode="json", exclude={"run_id", "timestamp", "type"})
    return " ".join(f"{name}={json.dumps(value, ensure_ascii=False)}" for name, value in fields.items())


async def _replay_events(args: argparse.Namespace, out: TextIO, store: Store) -> int:
    runtime = AgentRuntime(store=store)
    kind: EventKind | None = getattr(args, "kind_member", None)
    async for envelope in to_async_iterator(RuntimeInvocation(runtime).replay(args.run_id)):
        if kind is not None and not kind.matches(envelope.event):
            continue
        if args.json:
            out.write(envelope.model_dump_json() + "\n")
        else:
            moment = envelope.emitted_at.strftime("%H:%M:%S.%f")[:-3]
            out.write(f"{envelope.seq:>5}  {moment}  {envelope.type:<30}  {_describe(envelope)}\n")
    return 0
