"""The span model: a run's events as a tree of timed spans (run → model call → tool execution).

One model serves every view of a run's timing — the notebook's waterfall timeline and the
OpenTelemetry exporter (``rxinvoke.otel``) — so they agree by construction. :func:`spans` is a pure function
of an event list (live or stored): a span still open when the list ends is ``running``.

- ``run``: ``run_started`` → the terminal event; status ``ok`` / ``error`` / ``cancelled``.
- ``model_call``: ``model_started`` → its ``usage_recorded`` (or the run's end); attributes
  ``iteration``, ``provider``, ``model``, ``first_fragment_ms`` (time to the first text or
  tool-call fragment), ``streaming_ms``, token counts and ``finish_reason``; after a
  ``model_retried``, ``retries`` (failed attempts) and ``retry_error`` (the last one's error).
- ``tool_execution``: ``tool_execution_started`` → ``tool_execution_finished``; attributes
  ``tool_name``, ``call_id``, ``lane`` (0, 1, … so overlapping executions get their own rows)
  and, on failure, ``error`` / ``error_type``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

from .events import (
    ChatFinished,
    InvocationEvent,
    ModelRetried,
    ModelStarted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    TextDelta,
    ToolCallDelta,
    ToolCallStarted,
    ToolExecutionFinished,
    ToolExecutionStarted,
    ToolFailure,
    UsageRecorded,
)

__all__ = ("Span", "SpanBuilder", "SpanKind", "SpanStatus", "spans")

SpanKind = Literal["run", "model_call", "tool_execution"]
SpanStatus = Literal["ok", "error", "cancelled", "running"]


@dataclass(frozen=True)
class Span:
    """One timed step of a run."""

    kind: SpanKind
    name: str
    """``run``, ``chat {model}`` or ``execute_tool {tool}``."""
    span_id: str
    parent_id: str | None
    run_id: str
    start: datetime
    end: datetime | None
    """None while the span is still open (``running``)."""
    status: SpanStatus
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def duration_ms(self) -> float | None:
        """Milliseconds from start to end (None while running)."""
        if self.end is None:
            return None
        return (self.end - self.start).total_seconds() * 1000.0


def spans(events: Iterable[InvocationEvent]) -> list[Span]:
    """The spans of the runs in ``events`` (in order of their start): per run, its run span,
    then its model calls and tool executions."""
    builders: dict[str, SpanBuilder] = {}
    order: list[str] = []
    for event in events:
        run_id = event.run_id
        if run_id is None:
            continue
        builder = builders.get(run_id)
        if builder is None:
            builder = builders[run_id] = SpanBuilder(run_id)
            order.append(run_id)
        builder.add(event)
    result: list[Span] = []
    for run_id in order:
        result.extend(builders[run_id].finish())
    return result


class _Open:
    __slots__ = ("attributes", "first_at", "kind", "name", "span_id", "start")

    def __init__(self, kind: SpanKind, name: str, span_id: str, start: datetime) -> None:
        self.kind, self.name, self.span_id, self.start = kind, name, span_id, start
        self.attributes: dict[str, Any] = {}
        self.first_at: datetime | None = None  # a model call's first fragment


class SpanBuilder:
    """One run's spans, built event by event (what :func:`spans` does for a list; the
    OpenTelemetry exporter feeds it live): :meth:`add` each event of the run, then
    :meth:`finish` gives its spans."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.run: _Open | None = None
        self.run_span: Span | None = None
        self.model: _Open | None = None
        self.tools: dict[str, _Open] = {}
        self.lanes: list[datetime | None] = []  # per lane: when its last execution ended
        self.done: list[Span] = []

    def _root(self, at: datetime) -> _Open:
        if self.run is None:
            self.run = _Open("run", "run", f"{self.run_id}:run", at)
        return self.run

    def add(self, event: InvocationEvent) -> None:
        self._root(event.timestamp)  # any event of the run opens its run span
        kind = type(event)
        step = _STEPS.get(kind)
        if step is None:
            step = _STEPS[kind] = _step_of(kind)
        step(self, event)

    def _run_started(self, event: RunStarted) -> None:
        at = event.timestamp
        root = self._root(at)
        root.start = at
        root.attributes.update(session_id=event.session_id, provider=event.provider, model=event.model)
        if event.runtime is not None:
            root.attributes["runtime"] = event.runtime

    def _run_resumed(self, event: RunResumed) -> None:
        """The attempt before this one died: what it left open ends here, interrupted."""
        at = event.timestamp
        root = self._root(at)
        root.attributes.setdefault("session_id", event.session_id)
        root.attributes["attempts"] = event.attempt
        if event.runtime is not None:
            root.attributes["runtime"] = event.runtime
        if self.model is not None:
            self.model.attributes["error"] = "interrupted"
        self._close_model(at, "error")
        self._close_tools(at, "error", error="interrupted")

    def _model_started(self, event: ModelStarted) -> None:
        at = event.timestamp
        self._close_model(at)
        self.model = _Open(
            "model_call", f"chat {event.model}", f"{self.run_id}:model:{event.iteration}", at
        )
        self.model.attributes.update(iteration=event.iteration, provider=event.provider, model=event.model)

    def _model_retried(self, event: ModelRetried) -> None:
        model = self.model
        if model is not None:
            model.attributes.update(retries=event.attempt, retry_error=event.error)

    def _fragment(self, event: InvocationEvent) -> None:
        at = event.timestamp
        model = self.model
        if model is not None and model.first_at is None:
            model.first_at = at
            model.attributes["first_fragment_ms"] = _ms(model.start, at)

    def _chat_finished(self, event: ChatFinished) -> None:
        if self.model is not None:
            self.model.attributes["finish_reason"] = event.finish_reason.value

    def _usage_recorded(self, event: UsageRecorded) -> None:
        at = event.timestamp
        model = self.model
        if model is not None:
            usage = event.usage
            model.attributes.update(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                total_tokens=usage.total_tokens,
            )
        self._close_model(at)

    def _tool_started(self, event: ToolExecutionStarted) -> None:
        at = event.timestamp
        lane = next((i for i, free in enumerate(self.lanes) if free is not None and free <= at), None)
        if lane is None:
            lane = len(self.lanes)
            self.lanes.append(None)
        self.lanes[lane] = None  # busy
        span = _Open(
            "tool_execution", f"execute_tool {event.tool_name}", f"{self.run_id}:tool:{event.call_id}", at
        )
        span.attributes.update(tool_name=event.tool_name, call_id=event.call_id, lane=lane)
        self.tools[event.call_id] = span

    def _tool_finished(self, event: ToolExecutionFinished) -> None:
        at = event.timestamp
        finished = self.tools.pop(event.call_id, None)
        if finished is None:
            return
        status: SpanStatus = "ok"
        if isinstance(event.result, ToolFailure):
            status = "error"
            finished.attributes.update(error=event.result.error, error_type=event.result.error_type)
        self.lanes[finished.attributes["lane"]] = at
        self.done.append(self._closed(finished, at, status))

    def _run_ended(self, event: RunCompleted | RunFailed | RunCancelled) -> None:
        at = event.timestamp
        root = self._root(at)
        self._close_model(at, "cancelled" if isinstance(event, RunCancelled) else None)
        self._close_tools(at, "cancelled")
        final: SpanStatus = "cancelled"
        if isinstance(event, RunCompleted):
            final = "ok"
            root.attributes.update(finish_reason=event.finish_reason.value, iterations=event.iterations)
        elif isinstance(event, RunFailed):
            final = "error"
            root.attributes["error"] = event.error
        self.run_span = self._closed(root, at, final, parent=None)

    def _other(self, event: InvocationEvent) -> None:
        pass  # read by no span (its run span is opened by add)

    def _close_model(self, at: datetime, status: SpanStatus | None = None) -> None:
        model = self.model
        if model is None:
            return
        first = model.first_at
        if first is not None:
            model.attributes["streaming_ms"] = _ms(first, at)
        self.done.append(self._closed(model, at, status or "ok"))
        self.model = None

    def _close_tools(self, at: datetime, status: SpanStatus, *, error: str | None = None) -> None:
        """End every tool execution still open (their lanes free from ``at``)."""
        for span in self.tools.values():
            if error is not None:
                span.attributes["error"] = error
            self.lanes[span.attributes["lane"]] = at
            self.done.append(self._closed(span, at, status))
        self.tools.clear()

    def _closed(
        self, span: _Open, end: datetime | None, status: SpanStatus, parent: str | None = ""
    ) -> Span:
        return Span(
            kind=span.kind,
            name=span.name,
            span_id=span.span_id,
            parent_id=(f"{self.run_id}:run" if parent == "" else parent),
            run_id=self.run_id,
            start=span.start,
            end=end,
            status=status,
            attributes=MappingProxyType(dict(span.attributes)),
        )

    def finish(self) -> list[Span]:
        still_open = [*([self.model] if self.model is not None else []), *self.tools.values()]
        open_spans = [self._closed(span, None, "running") for span in still_open]
        root = self.run_span
        if root is None:
            assert self.run is not None
            root = self._closed(self.run, None, "running", parent=None)
        children = sorted([*self.done, *open_spans], key=lambda s: s.start)
        return [root, *children]


_Step = Callable[[SpanBuilder, Any], None]

_BY_CLASS: tuple[tuple[type[InvocationEvent], _Step], ...] = (
    (RunStarted, SpanBuilder._run_started),
    (RunResumed, SpanBuilder._run_resumed),
    (ModelStarted, SpanBuilder._model_started),
    (ModelRetried, SpanBuilder._model_retried),
    (TextDelta, SpanBuilder._fragment),
    (ToolCallStarted, SpanBuilder._fragment),
    (ToolCallDelta, SpanBuilder._fragment),
    (ChatFinished, SpanBuilder._chat_finished),
    (UsageRecorded, SpanBuilder._usage_recorded),
    (ToolExecutionStarted, SpanBuilder._tool_started),
    (ToolExecutionFinished, SpanBuilder._tool_finished),
    (RunCompleted, SpanBuilder._run_ended),
    (RunFailed, SpanBuilder._run_ended),
    (RunCancelled, SpanBuilder._run_ended),
)
_STEPS: dict[type, _Step] = dict(_BY_CLASS)
"""Event class → what it does to the spans (one dict lookup per event, where a chain of
``isinstance`` checks cost up to twelve); filled in for subclasses by :func:`_step_of`."""


def _step_of(kind: type) -> _Step:
    for base, step in _BY_CLASS:
        if issubclass(kind, base):
            return step
    return SpanBuilder._other


def _ms(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() * 1000.0
