"""Value types shared by requests, providers, tools and stores. All frozen."""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from os import urandom
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from ._display import clip, clock, short_id
from ._frozen import Frozen as _Frozen
from ._frozen import trusted

__all__ = (
    "ChatRequest",
    "Compaction",
    "FinishReason",
    "Message",
    "ModelName",
    "ProviderId",
    "Role",
    "TokenUsage",
    "ToolCall",
    "ToolChoice",
    "ToolSpec",
    "TextJoiner",
    "valid_text",
)

ProviderId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
"""The id a provider is registered under (non-empty, stripped)."""

ModelName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
"""A model name as the provider knows it (non-empty, stripped)."""

Role = Literal["system", "user", "assistant", "tool"]


utcnow: Callable[[], datetime] = functools.partial(datetime.now, timezone.utc)
"""The current time, timezone-aware UTC (never the scheduler clock): messages' and records'
times. Events are stamped by ``_clock.stamp`` (a virtual-time run's on its clock)."""


def new_id() -> str:
    """A fresh random identifier: a version 4 UUID's text, as ``str(uuid.uuid4())`` (built
    from the random hex directly, without a ``UUID`` object: 2.5× faster)."""
    h = urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_VARIANT = "89ab"
"""The RFC 4122 variant's first hex digit, chosen by two random bits."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` as valid Unicode: surrogate pairs joined, lone surrogates as U+FFFD."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class TextJoiner:
    """Joins text fragments whose UTF-16 surrogate pairs may be split between two fragments
    (a JSON stream may send ``"\\ud83d"`` and ``"\\ude00"`` apart)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = ""
        """A high surrogate waiting for its pair (empty: none). While it is empty, an ASCII
        fragment is its own valid text: the stream's hot path reads it without a call."""

    def feed(self, fragment: str) -> str:
        """The valid text of ``fragment`` (a trailing high surrogate is held for the next)."""
        if self.held:
            fragment, self.held = self.held + fragment, ""
        elif fragment.isascii() or _SURROGATE.search(fragment) is None:  # isascii: a flag read
            return fragment
        if fragment and "\ud800" <= fragment[-1] <= "\udbff":
            fragment, self.held = fragment[:-1], fragment[-1]
        return valid_text(fragment)

    def flush(self) -> str:
        """What is held (a lone high surrogate: U+FFFD), or empty."""
        held, self.held = self.held, ""
        return valid_text(held) if held else ""


class FinishReason(str, enum.Enum):
    """Why a model turn or a whole run ended."""

    STOP = "stop"
    TOOL_CALLS = "tool_calls"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    ERROR = "error"
    CANCELLED = "cancelled"
    DOOM_LOOP = "doom_loop"
    MAX_ITERATIONS = "max_iterations"
    AWAITING_APPROVAL = "awaiting_approval"
    """The run paused: tool calls wait for a person's decision (``RunOutput.pending``)."""


class TokenUsage(_Frozen):
    """Token counts of one model call, or a sum of several (``a + b``)."""

    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    total_tokens: int = Field(default=0, ge=0)

    def __repr__(self) -> str:
        return f"TokenUsage(in {self.input_tokens}, out {self.output_tokens}, total {self.total_tokens})"

    def _brief(self) -> str:
        return f"{self.input_tokens}/{self.output_tokens}/{self.total_tokens}"

    def __add__(self, other: TokenUsage) -> TokenUsage:
        if not isinstance(other, TokenUsage):
            return NotImplemented
        return trusted(  # sums of counts ≥ 0 are counts ≥ 0: nothing to validate
            TokenUsage,
            {
                "input_tokens": self.input_tokens + other.input_tokens,
                "output_tokens": self.output_tokens + other.output_tokens,
                "total_tokens": self.total_tokens + other.total_tokens,
            },
        )


NO_USAGE = TokenUsage()
"""Zero tokens: the usage of a run before its first model call, the start of usage sums
(frozen: one shared instance)."""


class ToolCall(_Frozen):
    """A tool call requested by the model; ``arguments`` is the raw JSON text it produced
    (a dict is accepted too, and stored as its JSON text)."""

    id: str
    name: str
    arguments: str = "{}"

    def _brief(self) -> str:
        return f"{self.name}({clip(self.arguments, 40)})"

    def __repr__(self) -> str:
        return f"ToolCall({short_id(self.id)}, {self._brief()})"

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_as_json(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return json.dumps(value)
        return value


class ToolChoice(_Frozen):
    """How the model may use tools: ``auto``, ``none``, ``required`` or one named tool.

    Strings ``"auto"``, ``"none"`` and ``"required"`` are accepted wherever a ToolChoice is.
    """

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: Annotated[str, StringConstraints(strip_whitespace=True)] | None = None
    """The tool the model must call, when ``mode == "tool"``."""

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"mode": value}
        return value

    @model_validator(mode="after")
    def _check_name(self) -> ToolChoice:
        if (self.mode == "tool") != bool(self.name):
            raise ValueError("a tool name is required exactly when mode is 'tool'")
        return self

    @classmethod
    def auto(cls) -> ToolChoice:
        """The model decides whether to call tools (one shared instance: it is frozen)."""
        return _AUTO if cls is ToolChoice else cls(mode="auto")

    @classmethod
    def none(cls) -> ToolChoice:
        """The model must not call tools."""
        return cls(mode="none")

    @classmethod
    def required(cls) -> ToolChoice:
        """The model must call at least one tool."""
        return cls(mode="required")

    @classmethod
    def tool(cls, name: str) -> ToolChoice:
        """The model must call the tool ``name``."""
        return cls(mode="tool", name=name)


_AUTO = ToolChoice(mode="auto")


class Compaction(_Frozen):
    """What a checkpoint message (a stored summary of earlier turns) stands for.

    The checkpoint is a ``system`` message whose content is the summary; the session's next
    context is its leading system messages, the summary, and every message from
    ``keeps_from`` on (nothing is deleted from the store)."""

    keeps_from: str
    """The id of the first message kept verbatim (a user message: turns are never split)."""
    messages_summarized: int = Field(ge=0)
    """Messages the summary replaces in the context (an earlier summary's included)."""
    tokens_before: int = Field(ge=0)
    tokens_after: int = Field(ge=0)


class Message(_Frozen):
    """One message of a session's history."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    """Tool calls an assistant message requested."""
    tool_call_id: str | None = None
    """For a tool message: the call it answers."""
    id: str = Field(default_factory=new_id)
    run_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    compaction: Compaction | None = None
    """Set on a checkpoint: this ``system`` message summarises the turns before
    ``compaction.keeps_from`` (context compaction)."""

    def __repr__(self) -> str:
        extra = ""
        if self.tool_calls:
            count = len(self.tool_calls)
            extra = f", {count} tool call{'s' if count > 1 else ''}: " + ", ".join(
                c._brief() for c in self.tool_calls[:2]
            )
        if self.tool_call_id:
            extra += f", answers {short_id(self.tool_call_id)}"
        if self.compaction is not None:
            extra += f", checkpoint of {self.compaction.messages_summarized} messages"
        text = f"Message({self.role}, {clip(self.content, 60)!r}{extra}, at {clock(self.created_at)})"
        return clip(text, 159)


def new_message(
    role: Role,
    content: str,
    run_id: str,
    *,
    tool_calls: tuple[ToolCall, ...] = (),
    tool_call_id: str | None = None,
) -> Message:
    """A new :class:`Message` of run ``run_id`` from values the runtime checked (a validated
    request's input, a model call's accumulated answer, a tool's reply): no validation on the
    messages every run makes."""
    return trusted(
        Message,
        {
            "role": role, "content": content, "tool_calls": tool_calls, "tool_call_id": tool_call_id,
            "id": new_id(), "run_id": run_id, "created_at": utcnow(), "compaction": None,
        },
    )


class ToolSpec(_Frozen):
    """What a provider is told about a tool: its name, description and JSON schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ChatRequest(_Frozen):
    """One model call: the context, the tools on offer and the tool choice."""

    provider: ProviderId
    model: ModelName
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = Field(default_factory=ToolChoice.auto)
    run_id: str | None = None


def chat_request(
    provider: str,
    model: str,
    messages: tuple[Message, ...],
    tools: tuple[ToolSpec, ...],
    tool_choice: ToolChoice,
    run_id: str,
) -> ChatRequest:
    """A ``ChatRequest`` from values the runtime checked (its validated run request's provider,
    model and tool choice, the session's messages, the registry's specs): no validation on
    every model call."""
    return trusted(
        ChatRequest,
        {
            "provider": provider, "model": model, "messages": messages, "tools": tools,
            "tool_choice": tool_choice, "run_id": run_id,
        },
    )
