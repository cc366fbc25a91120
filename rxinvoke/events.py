"""The event contract: every step of a run is one frozen, JSON-round-trippable event.

Each event class has a ``type`` literal (the snake_case of its name) used as the JSON
discriminator and as the value of its :class:`EventKind`. Agent events describe what the
runtime did; chat events are what a provider stream yields, republished by the runtime with
the ``run_id`` they belong to.

Ordering, per run: ``run_started`` first; exactly one terminal event (``run_completed``,
``run_failed`` or ``run_cancelled``) last; for each tool call ``tool_call_started`` <
``tool_call_completed`` < ``tool_execution_started`` < ``tool_execution_finished`` <
``tool_message_committed``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import Field, TypeAdapter

from ._clock import stamp
from ._display import clip, clock, field_texts, short_id
from ._frozen import Frozen, fill_trusted, trusted, trusted_builder
from .messages import FinishReason, TokenUsage, ToolCall

__all__ = (
    "ApprovalDecided",
    "ApprovalRequested",
    "AGENT_EVENT",
    "CHAT_STREAM_EVENT",
    "CHAT_TWINS",
    "INVOCATION_EVENT",
    "AgentEvent",
    "AssistantMessageCommitted",
    "ChatFinished",
    "ChatStarted",
    "ChatStreamEvent",
    "ChatTextDelta",
    "ChatToolCallArgumentsDelta",
    "ChatToolCallCompleted",
    "ChatToolCallStarted",
    "CompactionCircuitOpened",
    "CompactionFinished",
    "CompactionStarted",
    "ContextBuilt",
    "DoomLoopDetected",
    "EventBase",
    "EventKind",
    "InvocationEvent",
    "ModelRetried",
    "ModelStarted",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunResumed",
    "RunStarted",
    "TextDelta",
    "ToolCallCompleted",
    "ToolCallDelta",
    "ToolCallStarted",
    "ToolExecutionFinished",
    "ToolExecutionStarted",
    "ToolFailure",
    "ToolMessageCommitted",
    "ToolResult",
    "ToolSuccess",
    "UsageRecorded",
)


_E = TypeVar("_E", bound="EventBase")


_ABSENT: Any = object()
_DELTA_SET = {"delta"}  # the fields set of ChatTextDelta(delta=...) (shared: never changed)
_RUN_DELTA_SET = {"run_id", "delta"}


class EventBase(Frozen):
    """Fields and behaviour every event shares."""

    run_id: str | None = None
    """The run the event belongs to (chat events carry it once republished by the runtime)."""
    timestamp: datetime = Field(default_factory=stamp)
    """When the event was created, UTC: on the wall clock, or, in a run of a runtime on a
    virtual-time scheduler (``TestScheduler``), that scheduler's virtual time."""

    terminal: ClassVar[bool] = False

    def __repr__(self) -> str:
        # one line, under 160 characters: kind, short run id, the fields that matter, time
        fields = ", ".join(field_texts(self))
        run = f"run {short_id(self.run_id)}, " if self.run_id else ""
        kind = getattr(self, "type", type(self).__name__)
        return clip(f"{kind}({run}{fields}{', ' if fields else ''}at {clock(self.timestamp)})", 159)

    @property
    def is_terminal(self) -> bool:
        """True for ``run_completed``, ``run_failed`` and ``run_cancelled``."""
        return self.terminal

    def with_run_id(self: _E, run_id: str) -> _E:
        """A copy of this event carrying ``run_id`` (how the runtime republishes chat events)."""
        return trusted(type(self), {**self.__dict__, "run_id": run_id})

    def as_agent(self) -> AgentEvent | None:
        """This event as an agent event: itself, or the agent event a chat event maps to.

        None for ``chat_started``/``chat_finished`` and for chat events without a ``run_id``
        (not yet republished by a runtime).
        """
        return None


class _AgentEventBase(EventBase):
    run_id: str

    def as_agent(self) -> AgentEvent | None:
        return self  # type: ignore[return-value]


# --- agent events ---------------------------------------------------------------------------


class RunStarted(_AgentEventBase):
    """A run began."""

    type: Literal["run_started"] = "run_started"
    session_id: str
    provider: str
    model: str
    runtime: str | None = None
    """The name of the runtime that runs it (``AgentRuntime(name=...)``), so merged streams
    of several runtimes say where each run came from."""
    resumes: str | None = None
    """The run paused for approval that this run continues."""


def _stamped(cls: type[_E]) -> Callable[..., _E]:
    """The trusted builder of the event class ``cls`` (``_frozen.trusted_builder``): its
    fields' values positionally after ``run_id``, its ``type`` tag fixed, its timestamp now."""
    return trusted_builder(cls, computed={"timestamp": stamp}, type=cls.model_fields["type"].default)


run_started: Callable[[str, str, str, str, str | None, str | None], RunStarted] = _stamped(RunStarted)
"""``run_started(run_id, session_id, provider, model, runtime, resumes)`` from values the
runtime checked (no validation: every run; the timestamp is now)."""


class RunResumed(_AgentEventBase):
    """The run goes on in another process after the one running it died
    (``Worker(on_worker_loss="retry")``): the events up to ``after_seq`` are the interrupted
    attempt's; what follows continues from the session's last committed step (a model call
    cut short is made again; tool calls whose results were not committed run again)."""

    type: Literal["run_resumed"] = "run_resumed"
    session_id: str
    after_seq: int
    """The seq of the interrupted attempt's last event."""
    attempt: int = 2
    """This attempt's number (the first resumption is the second attempt)."""
    runtime: str | None = None
    """The name of the runtime that goes on with it."""


class ContextBuilt(_AgentEventBase):
    """The context for the first model call was built from the session history."""

    type: Literal["context_built"] = "context_built"
    message_count: int


context_built: Callable[[str, int], ContextBuilt] = _stamped(ContextBuilt)
"""``context_built(run_id, message_count)``, as :data:`run_started` is built."""


class ModelStarted(_AgentEventBase):
    """A model call (one iteration of the loop) began."""

    type: Literal["model_started"] = "model_started"
    provider: str
    model: str
    iteration: int


class ModelRetried(_AgentEventBase):
    """The model call's attempt failed before its response began streaming (HTTP 408, 429 or
    5xx, a connection failure or a timeout) and is made again after ``delay_ms``: its
    ``model_started`` stands, and its events follow from the attempt that answers."""

    type: Literal["model_retried"] = "model_retried"
    attempt: int
    """The retry's number (1: the call's second attempt)."""
    error: str
    """The failed attempt's error (provider, model, status and the server's message)."""
    status: int | None = None
    """The failed attempt's HTTP status (None: no response, as a refused connection)."""
    delay_ms: float = 0.0
    """The wait before the retry: the server's ``Retry-After``, else the backoff."""


class TextDelta(_AgentEventBase):
    """A fragment of assistant text, in stream order."""

    type: Literal["text_delta"] = "text_delta"
    delta: str


model_started: Callable[[str, str, str, int], ModelStarted] = _stamped(ModelStarted)
"""``model_started(run_id, provider, model, iteration)``, as :data:`run_started` is built
(every model call)."""


class ToolCallStarted(_AgentEventBase):
    """The model began a tool call."""

    type: Literal["tool_call_started"] = "tool_call_started"
    call_id: str
    tool_name: str


class ToolCallDelta(_AgentEventBase):
    """A fragment of a tool call's JSON arguments."""

    type: Literal["tool_call_delta"] = "tool_call_delta"
    call_id: str
    delta: str


class ToolCallCompleted(_AgentEventBase):
    """The model finished a tool call; ``call.arguments`` is the whole JSON text."""

    type: Literal["tool_call_completed"] = "tool_call_completed"
    call: ToolCall


class ToolExecutionStarted(_AgentEventBase):
    """The runtime began executing a tool call."""

    type: Literal["tool_execution_started"] = "tool_execution_started"
    call_id: str
    tool_name: str


tool_execution_started: Callable[[str, str, str], ToolExecutionStarted] = _stamped(
    ToolExecutionStarted
)
"""``tool_execution_started(run_id, call_id, tool_name)``, as :data:`run_started` is built
(every tool execution)."""


class ToolSuccess(Frozen):
    """A tool's output."""

    status: Literal["success"] = "success"
    output: str

    def _brief(self) -> str:
        return f"ok {clip(self.output, 30)!r}"


class ToolFailure(Frozen):
    """Why a tool call failed; ``error_type`` names the ToolError class."""

    status: Literal["failure"] = "failure"
    error: str
    error_type: str = "ToolError"

    def _brief(self) -> str:
        return f"{self.error_type} {clip(self.error, 40)!r}"


ToolResult = Annotated[ToolSuccess | ToolFailure, Field(discriminator="status")]
"""The outcome of a tool execution."""


class ToolExecutionFinished(_AgentEventBase):
    """A tool call finished, successfully or not."""

    type: Literal["tool_execution_finished"] = "tool_execution_finished"
    call_id: str
    tool_name: str
    result: ToolResult
    duration_ms: float

    @property
    def is_success(self) -> bool:
        """True when the tool returned normally."""
        return isinstance(self.result, ToolSuccess)


tool_execution_finished: Callable[[str, str, str, ToolResult, float], ToolExecutionFinished] = (
    _stamped(ToolExecutionFinished)
)
"""``tool_execution_finished(run_id, call_id, tool_name, result, duration_ms)``, as
:data:`run_started` is built (every tool execution)."""


class AssistantMessageCommitted(_AgentEventBase):
    """The assistant message of a model call was committed to the session history."""

    type: Literal["assistant_message_committed"] = "assistant_message_committed"
    message_id: str


class ToolMessageCommitted(_AgentEventBase):
    """A tool result message was committed to the session history."""

    type: Literal["tool_message_committed"] = "tool_message_committed"
    message_id: str
    call_id: str


tool_message_committed: Callable[[str, str, str], ToolMessageCommitted] = _stamped(
    ToolMessageCommitted
)
"""``tool_message_committed(run_id, message_id, call_id)``, as :data:`run_started` is built
(every tool reply)."""


class UsageRecorded(_AgentEventBase):
    """Token usage of one model call."""

    type: Literal["usage_recorded"] = "usage_recorded"
    usage: TokenUsage


assistant_committed: Callable[[str, str], AssistantMessageCommitted] = _stamped(
    AssistantMessageCommitted
)
"""``assistant_committed(run_id, message_id)``, as :data:`run_started` is built (every model
call)."""

usage_recorded: Callable[[str, TokenUsage], UsageRecorded] = _stamped(UsageRecorded)
"""``usage_recorded(run_id, usage)``, as :data:`run_started` is built (every model call)."""


class RunCompleted(_AgentEventBase):
    """The run ended normally (terminal)."""

    terminal: ClassVar[bool] = True
    type: Literal["run_completed"] = "run_completed"
    finish_reason: FinishReason
    iterations: int


run_completed: Callable[[str, FinishReason, int], RunCompleted] = _stamped(RunCompleted)
"""``run_completed(run_id, finish_reason, iterations)``, as :data:`run_started` is built."""


class RunFailed(_AgentEventBase):
    """The run failed (terminal)."""

    terminal: ClassVar[bool] = True
    type: Literal["run_failed"] = "run_failed"
    error: str


class RunCancelled(_AgentEventBase):
    """The run was cancelled (terminal)."""

    terminal: ClassVar[bool] = True
    type: Literal["run_cancelled"] = "run_cancelled"


class DoomLoopDetected(_AgentEventBase):
    """The model kept repeating its tool calls (the same call, or a cycle of calls), detected
    before the batch that closes the loop runs. With ``action="stop"`` the run ends with
    ``finish_reason=doom_loop``; with ``"warn"`` it goes on (``RuntimePolicy.doom_loop``)."""

    type: Literal["doom_loop_detected"] = "doom_loop_detected"
    description: str
    pattern: tuple[str, ...] = ()
    """The tool names of the repeating pattern, in call order (one name: the same call)."""
    count: int = 0
    """Calls that form the loop."""
    action: Literal["stop", "warn"] = "stop"


class ApprovalRequested(_AgentEventBase):
    """A tool call needs a person's approval: the run pauses after its batch
    (``finish_reason=awaiting_approval``) until ``approve``/``deny``."""

    type: Literal["approval_requested"] = "approval_requested"
    call_id: str
    tool_name: str
    arguments: str
    expires_at: datetime | None = None


class ApprovalDecided(_AgentEventBase):
    """A person (or the approval timeout) decided a paused call; published by the run that
    continues the paused one, before the call runs (or is answered as denied)."""

    type: Literal["approval_decided"] = "approval_decided"
    call_id: str
    tool_name: str
    approved: bool
    reason: str | None = None


class CompactionStarted(_AgentEventBase):
    """The run's context is being compacted: older turns are summarised by a model call
    (``reason``: ``proactive`` before a call that would overflow the window, ``reactive`` after
    the provider refused the context as too long)."""

    type: Literal["compaction_started"] = "compaction_started"
    reason: Literal["proactive", "reactive"]
    tokens_before: int
    messages: int
    """Messages to be summarised."""


class CompactionFinished(_AgentEventBase):
    """A compaction ended: the summary is stored and the context shrank, or it failed (the run
    goes on with the context as it was; ``error`` says why)."""

    type: Literal["compaction_finished"] = "compaction_finished"
    reason: Literal["proactive", "reactive"]
    succeeded: bool
    tokens_before: int
    tokens_after: int
    messages_summarized: int
    duration_ms: float
    error: str | None = None
    usage: TokenUsage | None = None
    """What the summarising call cost (added to the run's ``total_usage``)."""


class CompactionCircuitOpened(_AgentEventBase):
    """Compaction of this run's session failed ``consecutive_failures`` times in a row: its
    breaker is open, proactive compaction is skipped until the policy's cooldown has passed."""

    type: Literal["compaction_circuit_opened"] = "compaction_circuit_opened"
    consecutive_failures: int


# --- chat stream events ---------------------------------------------------------------------


class ChatStarted(EventBase):
    """A provider began streaming a response."""

    type: Literal["chat_started"] = "chat_started"
    provider: str
    model: str


class ChatTextDelta(EventBase):
    """A fragment of response text."""

    type: Literal["chat_text_delta"] = "chat_text_delta"
    delta: str

    if not TYPE_CHECKING:  # type checkers keep the fields' signature pydantic gives them
        def __init__(self, /, **data: Any) -> None:
            # every provider's streamed fragment, ChatTextDelta(delta=text) (or with run_id=): a
            # str and a str or None are valid as they are, so the model is filled without the
            # validator (a third of its cost), equal to the validated one; anything else (or a
            # subclass) is validated
            delta = data.get("delta")
            if type(delta) is str and type(self) is ChatTextDelta:
                size = len(data)
                if size == 1:
                    fill_trusted(self, {"run_id": None, "timestamp": stamp(), "type": "chat_text_delta", "delta": delta}, _DELTA_SET)
                    return
                run_id = data.get("run_id", _ABSENT)
                if size == 2 and (run_id is None or type(run_id) is str):
                    fill_trusted(self, {"run_id": run_id, "timestamp": stamp(), "type": "chat_text_delta", "delta": delta}, _RUN_DELTA_SET)
                    return
            super().__init__(**data)

        # pydantic's own mark of its __init__: validation (model_validate, JSON, nested) never
        # calls this one, it builds models itself as it does for any model
        __init__.__pydantic_base_init__ = True

    def as_agent(self) -> AgentEvent | None:
        if self.run_id is None:
            return None
        return agent_text(self)


text_fragment: Callable[[str, datetime, str], ChatTextDelta] = trusted_builder(
    ChatTextDelta, type="chat_text_delta"
)
"""``text_fragment(run_id, timestamp, delta)``: a ``chat_text_delta`` of run ``run_id`` built
from values the runtime checked (the hot path of every streamed fragment: no validation)."""

text_twin: Callable[[str | None, datetime, str], TextDelta] = trusted_builder(TextDelta, type="text_delta")
"""``text_twin(run_id, timestamp, delta)``: the ``text_delta`` twin of the republished
``chat_text_delta`` of these values (same run, moment, text)."""


def agent_text(event: ChatTextDelta) -> TextDelta:
    """The ``text_delta`` twin of a republished ``chat_text_delta`` (same run, moment, text)."""
    return text_twin(event.run_id, event.timestamp, event.delta)


class ChatToolCallStarted(EventBase):
    """The response began a tool call."""

    type: Literal["chat_tool_call_started"] = "chat_tool_call_started"
    id: str
    name: str

    def as_agent(self) -> AgentEvent | None:
        if self.run_id is None:
            return None
        return trusted(
            ToolCallStarted,
            {
                "run_id": self.run_id, "timestamp": self.timestamp, "type": "tool_call_started",
                "call_id": self.id, "tool_name": self.name,
            },
        )


class ChatToolCallArgumentsDelta(EventBase):
    """A fragment of a tool call's JSON arguments."""

    type: Literal["chat_tool_call_arguments_delta"] = "chat_tool_call_arguments_delta"
    id: str
    delta: str

    def as_agent(self) -> AgentEvent | None:
        if self.run_id is None:
            return None
        return trusted(
            ToolCallDelta,
            {
                "run_id": self.run_id, "timestamp": self.timestamp, "type": "tool_call_delta",
                "call_id": self.id, "delta": self.delta,
            },
        )


class ChatToolCallCompleted(EventBase):
    """A tool call of the response is complete."""

    type: Literal["chat_tool_call_completed"] = "chat_tool_call_completed"
    call: ToolCall

    def as_agent(self) -> AgentEvent | None:
        if self.run_id is None:
            return None
        return trusted(
            ToolCallCompleted,
            {"run_id": self.run_id, "timestamp": self.timestamp, "type": "tool_call_completed", "call": self.call},
        )


class ChatFinished(EventBase):
    """The response ended; ``usage`` is None when the provider did not report it."""

    type: Literal["chat_finished"] = "chat_finished"
    finish_reason: FinishReason
    usage: TokenUsage | None = None


AgentEvent = Annotated[
    RunStarted | RunResumed | ContextBuilt | ModelStarted | ModelRetried | TextDelta | ToolCallStarted | ToolCallDelta | ToolCallCompleted | ToolExecutionStarted | ToolExecutionFinished | AssistantMessageCommitted | ToolMessageCommitted | UsageRecorded | RunCompleted | RunFailed | RunCancelled | DoomLoopDetected | ApprovalRequested | ApprovalDecided | CompactionStarted | CompactionFinished | CompactionCircuitOpened,
    Field(discriminator="type"),
]
"""Any event the runtime itself produces."""

ChatStreamEvent = Annotated[
    ChatStarted | ChatTextDelta | ChatToolCallStarted | ChatToolCallArgumentsDelta | ChatToolCallCompleted | ChatFinished,
    Field(discriminator="type"),
]
"""Any event a provider stream yields."""

InvocationEvent = Annotated[
    RunStarted | RunResumed | ContextBuilt | ModelStarted | ModelRetried | TextDelta | ToolCallStarted | ToolCallDelta | ToolCallCompleted | ToolExecutionStarted | ToolExecutionFinished | AssistantMessageCommitted | ToolMessageCommitted | UsageRecorded | RunCompleted | RunFailed | RunCancelled | DoomLoopDetected | ApprovalRequested | ApprovalDecided | CompactionStarted | CompactionFinished | CompactionCircuitOpened | ChatStarted | ChatTextDelta | ChatToolCallStarted | ChatToolCallArgumentsDelta | ChatToolCallCompleted | ChatFinished,
    Field(discriminator="type"),
]
"""Any event published on the runtime's subject."""

CHAT_TWINS: frozenset[str] = frozenset(
    {"chat_text_delta", "chat_tool_call_started", "chat_tool_call_arguments_delta", "chat_tool_call_completed"}
)
"""The chat event kinds the runtime republishes as agent events (``as_agent``): views and
tables show one of each pair."""

AGENT_EVENT: TypeAdapter[AgentEvent] = TypeAdapter(AgentEvent)
CHAT_STREAM_EVENT: TypeAdapter[ChatStreamEvent] = TypeAdapter(ChatStreamEvent)
INVOCATION_EVENT: TypeAdapter[InvocationEvent] = TypeAdapter(InvocationEvent)
"""Validates and serialises any event: ``INVOCATION_EVENT.validate_json(text)``."""


class EventKind(str, enum.Enum):
    """One member per event type (value = the ``type`` field) plus ``ANY``."""

    ANY = "any"
    RUN_STARTED = "run_started"
    RUN_RESUMED = "run_resumed"
    CONTEXT_BUILT = "context_built"
    MODEL_STARTED = "model_started"
    MODEL_RETRIED = "model_retried"
    TEXT_DELTA = "text_delta"
    TOOL_CALL_STARTED = "tool_call_started"
    TOOL_CALL_DELTA = "tool_call_delta"
    TOOL_CALL_COMPLETED = "tool_call_completed"
    TOOL_EXECUTION_STARTED = "tool_execution_started"
    TOOL_EXECUTION_FINISHED = "tool_execution_finished"
    ASSISTANT_MESSAGE_COMMITTED = "assistant_message_committed"
    TOOL_MESSAGE_COMMITTED = "tool_message_committed"
    USAGE_RECORDED = "usage_recorded"
    RUN_COMPLETED = "run_completed"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    DOOM_LOOP_DETECTED = "doom_loop_detected"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_DECIDED = "approval_decided"
    COMPACTION_STARTED = "compaction_started"
    COMPACTION_FINISHED = "compaction_finished"
    COMPACTION_CIRCUIT_OPENED = "compaction_circuit_opened"
    CHAT_STARTED = "chat_started"
    CHAT_TEXT_DELTA = "chat_text_delta"
    CHAT_TOOL_CALL_STARTED = "chat_tool_call_started"
    CHAT_TOOL_CALL_ARGUMENTS_DELTA = "chat_tool_call_arguments_delta"
    CHAT_TOOL_CALL_COMPLETED = "chat_tool_call_completed"
    CHAT_FINISHED = "chat_finished"

    @classmethod
    def parse(cls, kind: EventKind | str | type[EventBase]) -> EventKind:
        """``kind`` as a member: a member, its value, or an event class (``TextDelta``: the
        kind of its ``type``). An unknown string, or a class that is not one kind's (a base
        class), raises ValueError naming the valid kinds."""
        if isinstance(kind, EventKind):
            return kind
        if isinstance(kind, type):
            field = kind.model_fields.get("type") if issubclass(kind, EventBase) else None
            tag = field.default if field is not None else None
            if not isinstance(tag, str) or tag not in cls._value2member_map_:
                raise ValueError(
                    f"{kind.__name__} is not the class of one event kind (a concrete event "
                    "class, such as TextDelta, or an EventKind)"
                )
            return cls(tag)
        try:
            return cls(kind)
        except ValueError:
            valid = ", ".join(member.value for member in cls)
            raise ValueError(f"unknown event kind {kind!r}; valid kinds: {valid}") from None

    def matches(self, event: EventBase) -> bool:
        """True when ``event`` is of this kind (``ANY`` matches every event)."""
        return self is EventKind.ANY or getattr(event, "type", None) == self.value
