"""What the command line's commands share: the live rendering of a run, argument types, the
provider options, Ctrl-C handling (the ``rxinvoke`` commands of ``cli`` and ``transports``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING, TextIO

from .errors import UserError
from .events import (
    InvocationEvent,
    RunFailed,
    TextDelta,
    ToolCallCompleted,
    ToolExecutionFinished,
    ToolSuccess,
)
from .providers import ChatProvider, OfflineProvider
from .request import RunOutput
from .stores import EventEnvelope

if TYPE_CHECKING:
    from .runtime import AgentRuntime

OPENAI_URL = "https://api.openai.com/v1"


def openai_provider(args: argparse.Namespace) -> ChatProvider:
    try:
        from .providers.openai import OpenAIProvider
    except ImportError as exc:
        raise UserError(
            f"--provider openai needs the openai extra (pip install 'rxinvoke[openai]'): {exc}"
        ) from exc
    variable = args.api_key_env or "OPENAI_API_KEY"
    base_url = args.base_url or OPENAI_URL
    if not os.environ.get(variable) and (args.api_key_env or base_url == OPENAI_URL):
        raise UserError(f"no API key: the environment variable {variable} is not set")
    return OpenAIProvider(base_url=base_url, api_key_env=variable)


def anthropic_provider(args: argparse.Namespace) -> ChatProvider:
    try:
        from .providers.anthropic import DEFAULT_ANTHROPIC_URL, AnthropicProvider
    except ImportError as exc:
        raise UserError(
            "--provider anthropic needs the anthropic extra "
            f"(pip install 'rxinvoke[anthropic]'): {exc}"
        ) from exc
    variable = args.api_key_env or "ANTHROPIC_API_KEY"
    if not os.environ.get(variable):
        raise UserError(f"no API key: the environment variable {variable} is not set")
    try:
        return AnthropicProvider(base_url=args.base_url or DEFAULT_ANTHROPIC_URL, api_key_env=variable)
    except ValueError as exc:
        raise UserError(str(exc)) from None


ECHO_LIMIT = 200
"""Characters of a tool call's arguments or result echoed on one line."""


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Renderer:
    """Human-readable live rendering of a run's events.

    Writes in whatever encoding the terminal has: characters it cannot encode are replaced
    (``→ ← · …`` become ``-> <- | ...`` on an ASCII terminal), never an error.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._line_open = False
        self.run_id: str | None = None
        """The run being rendered (from its ``run_started``)."""
        self.decide_with = ""
        """What the approve/deny commands it suggests need besides the ids (a run on the
        workers: ``--redis URL`` unless ``$RXINVOKE_REDIS`` names them)."""
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
            self._write(f"→ {event.call.name}({clip(event.call.arguments)})\n")
        elif isinstance(event, ToolExecutionFinished):
            result = event.result
            shown = result.output if isinstance(result, ToolSuccess) else f"error: {result.error}"
            self._write(f"← {event.tool_name}: {clip(shown)} ({event.duration_ms:.1f} ms)\n")
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
        for item in output.pending:
            if item.approved is None:
                self._write(
                    f"awaiting approval: {item.tool_name}({item.arguments}) · "
                    f"rxinvoke approve {output.run_id} {item.call_id}{self.decide_with}  (or: "
                    f"rxinvoke deny {output.run_id} {item.call_id} --reason TEXT{self.decide_with})\n"
                )


async def interruptible(work: Awaitable[int]) -> int:
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


MAX_LIMIT = 1_000_000


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text[:40]!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_LIMIT:,}, got {text[:40]}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text[:40]!r}") from None
    if not (math.isfinite(value) and 0 <= value <= 3600):
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to 3600, got {text[:40]}")
    return value


def envelope_line(envelope: EventEnvelope, as_json: bool) -> str:
    """One line of ``rxinvoke events``: seq, time, type, fields (or the envelope as JSON)."""
    if as_json:
        return envelope.model_dump_json() + "\n"
    moment = envelope.emitted_at.strftime("%H:%M:%S.%f")[:-3]
    return f"{envelope.seq:>5}  {moment}  {envelope.type:<30}  {describe(envelope)}\n"


def describe(envelope: EventEnvelope) -> str:
    fields = envelope.event.model_dump(mode="json", exclude={"run_id", "timestamp", "type"})
    return " ".join(f"{name}={json.dumps(value, ensure_ascii=False)}" for name, value in fields.items())


def add_provider_options(parser: argparse.ArgumentParser) -> None:
    """``--delay``, ``--provider``, ``--model``, ``--base-url``, ``--api-key-env``."""
    parser.add_argument(
        "--delay", type=seconds, default=0.02, metavar="SECONDS",
        help="pause between streamed fragments of the offline model (default 0.02)",
    )
    parser.add_argument(
        "--provider", choices=("offline", "openai", "anthropic"), default="offline",
        help="offline: the embedded model (default); openai: an OpenAI-compatible server; "
        "anthropic: the Anthropic Messages API",
    )
    parser.add_argument(
        "--model", metavar="NAME",
        help="the model name (required with --provider openai or anthropic)",
    )
    parser.add_argument(
        "--base-url", metavar="URL",
        help=f"API root of the server (default {OPENAI_URL}, or https://api.anthropic.com)",
    )
    parser.add_argument(
        "--api-key-env", metavar="VAR",
        help="environment variable holding the API key (default OPENAI_API_KEY or "
        "ANTHROPIC_API_KEY; a server other than OpenAI's may need none)",
    )


def add_otel_option(parser: argparse.ArgumentParser) -> None:
    """``--otel``: export the runs to OpenTelemetry's global providers."""
    parser.add_argument(
        "--otel", action="store_true",
        help="export the runs as OpenTelemetry GenAI spans and metrics to the global providers "
        "(set up by opentelemetry-instrument or your sitecustomize; needs the [otel] extra)",
    )


@contextlib.contextmanager
def exported(runtime: AgentRuntime, args: argparse.Namespace) -> Iterator[None]:
    """With ``--otel``: the block's runs exported (``rxinvoke.otel.instrument``), flushed at
    its end; without, nothing."""
    if not getattr(args, "otel", False):
        yield
        return
    from .otel import instrument

    try:
        handle = instrument(runtime)
        from opentelemetry import metrics, trace
    except ImportError:
        raise UserError("--otel needs the [otel] extra: pip install 'rxinvoke[otel]'") from None
    try:
        yield
    finally:
        handle.dispose()
        for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
            flush = getattr(provider, "force_flush", None)
            if callable(flush):
                flush()


def provider_from_args(args: argparse.Namespace) -> ChatProvider:
    """The provider the options of :func:`add_provider_options` name."""
    if args.provider == "openai":
        return openai_provider(args)
    if args.provider == "anthropic":
        return anthropic_provider(args)
    return OfflineProvider(delay=args.delay)
