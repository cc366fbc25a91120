"""The ``rxinvoke`` command line: ``rxinvoke run PROMPT [--session UUID] [--json]``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence
from typing import TextIO

from . import __version__
from .errors import RxInvokeError
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
from .provider_offline import OfflineProvider
from .request import EmitRequest, RunOutput
from .runtime import AgentRuntime
from .tools_builtin import builtin_tools

__all__ = ("main",)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxinvoke",
        description="Run an LLM agent loop and watch every step as it happens.",
    )
    parser.add_argument("--version", action="version", version=f"rxinvoke {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run one prompt on the offline provider, streaming the answer",
        description="Run PROMPT on the embedded offline model (no network, no key).",
    )
    run.add_argument("prompt", metavar="PROMPT", help="the user message")
    run.add_argument("--session", metavar="UUID", help="continue this session id")
    run.add_argument("--json", action="store_true", help="print one JSON event per line")
    run.add_argument(
        "--delay", type=float, default=0.02, metavar="SECONDS",
        help="pause between streamed fragments of the offline model (default 0.02)",
    )
    return parser


class _Renderer:
    """Human-readable live rendering of a run's events."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._line_open = False

    def __call__(self, event: InvocationEvent) -> None:
        out = self._out
        if isinstance(event, TextDelta):
            out.write(event.delta)
            self._line_open = True
        elif isinstance(event, ToolCallCompleted):
            self._newline()
            out.write(f"→ {event.call.name}({event.call.arguments})\n")
        elif isinstance(event, ToolExecutionFinished):
            result = event.result
            shown = result.output if isinstance(result, ToolSuccess) else f"error: {result.error}"
            out.write(f"← {event.tool_name}: {shown} ({event.duration_ms:.1f} ms)\n")
        elif isinstance(event, RunFailed):
            self._newline()
        out.flush()

    def _newline(self) -> None:
        if self._line_open:
            self._out.write("\n")
            self._line_open = False

    def finish(self, output: RunOutput) -> None:
        self._newline()
        usage = output.total_usage
        self._out.write(
            f"[{output.finish_reason.value} · {output.iterations} iteration(s) · tokens "
            f"in {usage.input_tokens} / out {usage.output_tokens} / total {usage.total_tokens} · "
            f"session {output.session_id}]\n"
        )


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    session = uuid.UUID(args.session) if args.session else None
    runtime = AgentRuntime(providers=[OfflineProvider(delay=args.delay)], tools=builtin_tools())
    invocation = RuntimeInvocation(runtime)
    renderer = _Renderer(out)

    def print_json(event: InvocationEvent) -> None:
        out.write(INVOCATION_EVENT.dump_json(event).decode() + "\n")
        out.flush()

    render = print_json if args.json else renderer

    def safe_render(event: InvocationEvent) -> None:
        try:
            render(event)
        except BrokenPipeError:  # e.g. piped into `head`: stop printing, let the run finish
            subscription.dispose()

    subscription = invocation.observe(EventKind.ANY).subscribe(safe_render)
    try:
        request = EmitRequest(provider="offline", model="offline", input=args.prompt)
        if session is not None:
            request = request.with_session_id(session)
        output = await invocation.emit(lambda ctx, control: request)
    finally:
        subscription.dispose()
    if not args.json:
        try:
            renderer.finish(output)
        except BrokenPipeError:
            pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rxinvoke`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.session is not None:
        try:
            uuid.UUID(args.session)
        except ValueError:
            print(f"rxinvoke: error: --session must be a UUID, got {args.session!r}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(_run(args, sys.stdout))
    except RxInvokeError as exc:
        print(f"rxinvoke: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rxinvoke: interrupted", file=sys.stderr)
        return 130
