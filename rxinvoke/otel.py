"""OpenTelemetry export: a runtime's runs as GenAI spans and metrics (extra ``[otel]``).

``disposable = rxinvoke.otel.instrument(runtime, tracer_provider=None, meter_provider=None,
capture_content=False)`` observes the runtime's event stream and, when a run ends, emits its
spans — built by the same span model as the notebook timeline (:class:`rxinvoke.spans.
SpanBuilder`), so both show one tree by construction — with the times of the events:

- ``invoke_agent {agent}`` (INTERNAL), the run: ``gen_ai.operation.name=invoke_agent``,
  ``gen_ai.agent.name`` (the runtime's name, else ``rxinvoke``), ``gen_ai.provider.name``,
  ``gen_ai.request.model``, ``gen_ai.conversation.id`` (the session); ``rxinvoke.run_id``,
  ``rxinvoke.finish_reason``, ``rxinvoke.iterations``;
- ``chat {model}`` (CLIENT), each model call, its child: ``gen_ai.operation.name=chat``,
  provider, request model, conversation, ``rxinvoke.iteration``,
  ``gen_ai.response.finish_reasons``, ``gen_ai.usage.input_tokens`` / ``output_tokens``,
  ``gen_ai.response.time_to_first_chunk`` (seconds), ``rxinvoke.retries`` (failed attempts
  retried before it answered, when any);
- ``execute_tool {tool}`` (INTERNAL), each tool execution, a child of the run:
  ``gen_ai.tool.name``, ``gen_ai.tool.call.id``, ``gen_ai.tool.type=function`` (the agent and
  the conversation are on its parent, as the conventions list them).

Never a span per text fragment. Failures and cancellations set the span status to ERROR with
``error.type`` (``cancelled``, ``timeout``, ``run_failed``, or the tool error's type); success
leaves it UNSET, as the conventions ask. Usage is on the chat spans only (no run totals: a
backend summing ``gen_ai.usage.*`` would count it twice). Content — the model's answer text
(``gen_ai.output.messages``) and tool arguments and results (``gen_ai.tool.call.arguments`` /
``result``) — only with ``capture_content=True``; the input messages are not in the events and
are not exported.

Metrics: ``gen_ai.client.operation.duration`` (seconds) and ``gen_ai.client.token.usage``
(``{token}``, ``gen_ai.token.type`` input/output) histograms, per model call.

A run's ``invoke_agent`` span is a child of the span current where the run started (the
caller's; for a run submitted to workers, the submitter's: ``submit`` sends the trace context
with the job), else the root of a trace of its own.

Follows the OpenTelemetry GenAI semantic conventions as of semantic-conventions 1.37
(``gen_ai.provider.name``, agent spans; Development status). Spans are emitted when the run
ends (their times are the events'), so a span processor sees a run once it is over.

Cost: the exporter takes the kinds it reads as plain callbacks in the bus's kind index (no
reactivex chain per event) and a model call's text and tool-call fragments only until its
first has arrived (the route is detached while no model call awaits one), so a streamed
answer costs it nothing per fragment; an exporter fault (or the SDK's) is reported on
``runtime.bus.errors`` and never reaches the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from reactivex import abc
from reactivex.disposable import Disposable

from .errors import SubscriberError
from .events import (
    EventKind,
    InvocationEvent,
    ModelStarted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    TextDelta,
    ToolCallCompleted,
    ToolCallDelta,
    ToolCallStarted,
    ToolExecutionFinished,
    ToolFailure,
)
from .runtime import AgentRuntime
from .spans import Span, SpanBuilder

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ("SEMCONV_VERSION", "instrument")

SEMCONV_VERSION = "1.37.0"
"""The OpenTelemetry semantic conventions version the attribute names follow (GenAI)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_STEPS = frozenset({
    EventKind.RUN_STARTED, EventKind.RUN_RESUMED, EventKind.MODEL_STARTED, EventKind.MODEL_RETRIED,
    EventKind.CHAT_FINISHED,
    EventKind.USAGE_RECORDED, EventKind.TOOL_EXECUTION_STARTED, EventKind.TOOL_EXECUTION_FINISHED,
    EventKind.RUN_COMPLETED, EventKind.RUN_FAILED, EventKind.RUN_CANCELLED,
})
"""What the span model reads (``rxinvoke.spans``) besides a model call's first fragment."""
_FRAGMENT_KINDS = (EventKind.TEXT_DELTA, EventKind.TOOL_CALL_STARTED)
"""A model call's fragments that can come first (a tool call's argument fragments come after
its ``tool_call_started``): routed to the exporter only while a model call awaits its first."""
_TERMINAL = frozenset({RunCompleted, RunFailed, RunCancelled})
_FRAGMENTS = frozenset({TextDelta, ToolCallStarted, ToolCallDelta})


def _ns(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


class _Run:
    __slots__ = ("builder", "calls", "model_calls", "parent", "results", "session", "texts")

    def __init__(self, run_id: str, parent: Any = None) -> None:
        self.builder = SpanBuilder(run_id)
        self.parent = parent  # the OpenTelemetry context current where the run started
        self.model_calls = 0
        self.session: str | None = None
        self.texts: dict[int, list[str]] = {}  # model call index → answer text (content only)
        self.calls: dict[str, str] = {}  # call id → arguments (content only)
        self.results: dict[str, str] = {}


class _Exporter:
    def __init__(
        self,
        runtime: AgentRuntime,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        capture_content: bool,
    ) -> None:
        from opentelemetry import context, metrics, trace

        from ._version import __version__

        self._trace = trace
        self._current = context.get_current
        self._tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(
            "rxinvoke", __version__, schema_url=f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
        )
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("rxinvoke", __version__)
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration"
        )
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Measures number of input and output tokens used"
        )
        self._agent = runtime.name or "rxinvoke"
        self._capture = capture_content
        self._bus = runtime.bus
        self._runs: dict[str, _Run] = {}
        # runs whose current model call has had no fragment yet: the span model reads a model
        # call's first fragment only, so the fragment kinds are routed here only while this
        # is not empty (with content captured, always: the answer text is kept)
        self._awaiting: set[str] = set()
        self._routes: list[abc.DisposableBase] = []
        self._fragment_routes: list[abc.DisposableBase] = []
        # (provider, model, error type) → the histograms' point attributes, built once
        self._points: dict[tuple[Any, Any, str | None], tuple[dict[str, Any], ...]] = {}

    # --- routing -------------------------------------------------------------------------------

    def attach(self) -> None:
        """Route the kinds the span model reads here: plain callbacks in the bus's kind index
        (no reactivex chain per event); the chat twins and other kinds are never delivered."""
        kinds: set[EventKind] = set(_STEPS)
        if self._capture:
            kinds |= {*_FRAGMENT_KINDS, EventKind.TOOL_CALL_COMPLETED}
        self._routes = [self._bus.attach(kind, self._deliver) for kind in kinds]

    def dispose(self) -> None:
        routes, self._routes = self._routes + self._fragment_routes, []
        self._fragment_routes = []
        for route in routes:
            route.dispose()

    def _await_fragment(self, run_id: str) -> None:
        self._awaiting.add(run_id)
        if not self._fragment_routes and not self._capture and self._routes:  # attached
            self._fragment_routes = [self._bus.attach(kind, self._deliver) for kind in _FRAGMENT_KINDS]

    def _fragment_seen(self, run_id: str) -> None:
        awaiting = self._awaiting
        awaiting.discard(run_id)
        if not awaiting and self._fragment_routes:
            routes, self._fragment_routes = self._fragment_routes, []
            for route in routes:
                route.dispose()

    def _deliver(self, event: InvocationEvent, context: object) -> None:
        try:
            self.on_event(event)
        except Exception as exc:  # the exporter's fault (or the SDK's) never reaches the run
            self._bus.report(
                SubscriberError(
                    f"the OpenTelemetry exporter raised {type(exc).__name__}: {exc}",
                    subscription="otel",
                    event=event,
                    cause=exc,
                )
            )

    # --- events --------------------------------------------------------------------------------

    def on_event(self, event: InvocationEvent) -> None:
        run_id = event.run_id
        if run_id is None:
            return
        kind = type(event)
        if kind in _FRAGMENTS:
            if self._capture and run_id in self._runs:
                self._keep_content(self._runs[run_id], event)
            if run_id not in self._awaiting:
                return
            self._fragment_seen(run_id)
        run = self._runs.get(run_id)
        if run is None:
            if not isinstance(event, (RunStarted, RunResumed)):
                return  # a run that began before the exporter was attached
            # (a run taken over from a dead process: its span is the new attempt's)
            run = self._runs[run_id] = _Run(run_id, self._current())
            run.session = event.session_id
        elif kind is ModelStarted:
            self._await_fragment(run_id)
        run.builder.add(event)
        if self._capture and kind not in _FRAGMENTS:
            self._keep_content(run, event)
        if kind in _TERMINAL:
            del self._runs[run_id]
            self._fragment_seen(run_id)
            self._emit(run, run.builder.finish())

    def _keep_content(self, run: _Run, event: InvocationEvent) -> None:
        if isinstance(event, ModelStarted):
            run.model_calls += 1
        elif isinstance(event, TextDelta):
            run.texts.setdefault(run.model_calls - 1, []).append(event.delta)
        elif isinstance(event, ToolCallCompleted):
            run.calls[event.call.id] = event.call.arguments
        elif isinstance(event, ToolExecutionFinished):
            result = event.result
            run.results[event.call_id] = result.error if isinstance(result, ToolFailure) else result.output

    # --- spans ---------------------------------------------------------------------------------

    def _emit(self, run: _Run, spans: list[Span]) -> None:
        trace = self._trace
        kinds = trace.SpanKind
        tracer = self._tracer
        root = spans[0]
        found = root.attributes
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": self._agent,
            "gen_ai.provider.name": found.get("provider", ""),
            "gen_ai.request.model": found.get("model", ""),
            "rxinvoke.run_id": root.run_id,
        }
        if run.session:
            attributes["gen_ai.conversation.id"] = run.session
        if "finish_reason" in found:
            attributes["rxinvoke.finish_reason"] = found["finish_reason"]
        if "iterations" in found:
            attributes["rxinvoke.iterations"] = found["iterations"]
        parent = tracer.start_span(
            f"invoke_agent {self._agent}", context=run.parent, kind=kinds.INTERNAL,
            attributes=attributes, start_time=_ns(root.start),
        )
        context = trace.set_span_in_context(parent)
        calls = 0
        for span in spans[1:]:
            found = span.attributes
            if span.kind == "model_call":
                attributes = self._chat_attributes(found, run.session)
                if self._capture and calls in run.texts:
                    attributes["gen_ai.output.messages"] = json.dumps(
                        [{"role": "assistant", "parts": [{"type": "text", "content": "".join(run.texts[calls])}]}]
                    )
                calls += 1
                kind = kinds.CLIENT
            else:
                call_id = str(found.get("call_id", ""))
                attributes = {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": found.get("tool_name", ""),
                    "gen_ai.tool.call.id": call_id,
                    "gen_ai.tool.type": "function",
                }
                if self._capture:
                    if call_id in run.calls:
                        attributes["gen_ai.tool.call.arguments"] = run.calls[call_id]
                    if call_id in run.results:
                        attributes["gen_ai.tool.call.result"] = run.results[call_id]
                kind = kinds.INTERNAL
            otel_span = tracer.start_span(
                span.name, context=context, kind=kind, attributes=attributes, start_time=_ns(span.start)
            )
            self._finish(span, otel_span)
            if span.kind == "model_call":
                self._record(span)
        self._finish(root, parent)

    @staticmethod
    def _chat_attributes(found: Mapping[str, Any], session: str | None) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": found.get("provider", ""),
            "gen_ai.request.model": found.get("model", ""),
            "rxinvoke.iteration": found.get("iteration", 0),
        }
        if session:
            attributes["gen_ai.conversation.id"] = session
        if "finish_reason" in found:
            attributes["gen_ai.response.finish_reasons"] = (str(found["finish_reason"]),)
        if "input_tokens" in found:
            attributes["gen_ai.usage.input_tokens"] = found["input_tokens"]
            attributes["gen_ai.usage.output_tokens"] = found["output_tokens"]
        if "first_fragment_ms" in found:
            attributes["gen_ai.response.time_to_first_chunk"] = float(found["first_fragment_ms"]) / 1000.0
        if "retries" in found:
            attributes["rxinvoke.retries"] = found["retries"]
        return attributes

    def _finish(self, span: Span, otel_span: Any) -> None:
        trace = self._trace
        if span.status in ("error", "cancelled", "running"):
            error = self._error_type(span)
            otel_span.set_attribute("error.type", error)
            description = str(span.attributes.get("error", error))
            otel_span.set_status(trace.Status(trace.StatusCode.ERROR, description))
        otel_span.end(end_time=_ns(span.end or span.start))

    @staticmethod
    def _error_type(span: Span) -> str:
        if span.status in ("cancelled", "running"):
            return "cancelled"
        if "error_type" in span.attributes:
            return str(span.attributes["error_type"])
        error = str(span.attributes.get("error", ""))
        return "timeout" if error.startswith("timed out after") else "run_failed"

    def _record(self, span: Span) -> None:
        found = span.attributes
        error = None if span.status == "ok" else self._error_type(span)
        key = (found.get("provider", ""), found.get("model", ""), error)
        points = self._points.get(key)
        if points is None:  # built once, never changed after (the SDK may keep a reference)
            attributes = {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": key[0],
                "gen_ai.request.model": key[1],
            }
            if error is not None:
                attributes["error.type"] = error
            points = self._points[key] = (
                attributes,
                {**attributes, "gen_ai.token.type": "input"},
                {**attributes, "gen_ai.token.type": "output"},
            )
        if span.duration_ms is not None:
            self._duration.record(span.duration_ms / 1000.0, points[0])
        if "input_tokens" in found:
            self._tokens.record(found["input_tokens"], points[1])
            self._tokens.record(found["output_tokens"], points[2])


def instrument(
    runtime: AgentRuntime,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    *,
    capture_content: bool = False,
) -> abc.DisposableBase:
    """Export ``runtime``'s runs as OpenTelemetry GenAI spans and metrics (the global
    providers unless given); dispose the result to stop. Runs that began before are not
    exported. Needs the ``[otel]`` extra (``opentelemetry-api``; an SDK to see anything)."""
    exporter = _Exporter(runtime, tracer_provider, meter_provider, capture_content)
    exporter.attach()
    return Disposable(exporter.dispose)
