"""The provider conformance suite: the tests every :class:`~rxinvoke.providers.ChatProvider`
passes, whoever wrote it (``from rxinvoke.testing import ProviderConformance``).

Subclass :class:`ProviderConformance` in a test module, set ``__test__ = True`` and implement
two hooks; pytest then runs every ``test_*`` method against your provider::

    class TestMyProvider(ProviderConformance):
        __test__ = True
        model = "my-model"

        async def provider(self, turns):      # a provider that answers with these turns, in order
            self.server.script(*[my_reply(t) for t in turns])
            return MyProvider(base_url=self.server.url, api_key=KEY)

        async def disconnected(self):         # after a Hold turn was cancelled: did it close?
            return self.server.saw_disconnect

Turns are neutral descriptions of a model response — :class:`Text`, :class:`Calls`,
:class:`Failure` (an HTTP error status) and :class:`Hold` (a stream that stalls until the
client goes away) — that your hook turns into whatever your server or fake speaks. A provider
that cannot produce a kind of turn leaves it out of ``supports`` (those tests are skipped).

What is checked: the event order (``chat_started`` first, ``chat_finished`` last, nothing
after it), text deltas that join into the answer, tool calls assembled from their deltas
(started before their fragments, completed with the joined arguments, ids unique), usage and
finish reasons, error statuses raised as the :class:`~rxinvoke.errors.ProviderError` tree
(before any event, retryable exactly for 408/429/5xx), cancellation mid-stream closing the
stream (and its connection), a whole run through the runtime with a tool round trip, and — with
``secret`` set — that the key appears in no event, error or repr.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from ._model_call import is_retryable
from .errors import InvocationFailed, ProviderError, ProviderHTTPError
from .events import (
    INVOCATION_EVENT,
    ChatFinished,
    ChatStarted,
    ChatStreamEvent,
    ChatTextDelta,
    ChatToolCallArgumentsDelta,
    ChatToolCallCompleted,
    ChatToolCallStarted,
    InvocationEvent,
)
from .messages import ChatRequest, FinishReason, Message, TokenUsage, ToolSpec
from .providers.base import ChatProvider
from .request import RunRequest
from .runtime import AgentRuntime
from .stores import MemoryStore
from .tools import tool

__all__ = ("Calls", "Failure", "Hold", "ProviderConformance", "Text", "Turn")


@dataclass(frozen=True)
class Text:
    """A text answer streamed in ``parts``, ending with ``finish`` and reporting ``usage``."""

    parts: tuple[str, ...]
    finish: FinishReason = FinishReason.STOP
    usage: TokenUsage | None = None


@dataclass(frozen=True)
class Calls:
    """Tool calls ``(id, name, argument fragments)``, in order, then a tool_calls finish."""

    calls: tuple[tuple[str, str, tuple[str, ...]], ...]
    usage: TokenUsage | None = None


@dataclass(frozen=True)
class Failure:
    """The server answers an HTTP error ``status`` with ``message``."""

    status: int
    message: str


@dataclass(frozen=True)
class Hold:
    """``parts`` of text, then nothing until the client goes away."""

    parts: tuple[str, ...]


Turn = Text | Calls | Failure | Hold

USAGE = TokenUsage(input_tokens=11, output_tokens=7, total_tokens=18)

_SPECS = tuple(
    ToolSpec(name=name, description=f"{name} tool", parameters={"type": "object", "properties": {}})
    for name in ("add", "lookup", "calculate")
)

_KINDS = frozenset({"text", "calls", "usage", "length", "failure", "hold"})


class ProviderConformance:
    """The conformance tests; subclass, set ``__test__ = True``, implement the hooks."""

    __test__: ClassVar[bool] = False
    model: ClassVar[str] = "model"
    """The model name requests use."""
    secret: ClassVar[str | None] = None
    """The provider's key, to prove it leaks nowhere (None: no key, the check is skipped)."""
    supports: ClassVar[frozenset[str]] = _KINDS
    """What the provider can be made to produce: text, calls, usage, length, failure, hold."""
    exact: ClassVar[bool] = True
    """False for a provider that cannot be scripted (a rule-based or real model): the text and
    tool-call tests check the shape of what it answers to :meth:`prompt_for`, not its words."""

    def prompt_for(self, turn: Turn) -> str:
        """The user message sent for ``turn`` (what makes an unscripted provider answer that
        kind of turn)."""
        return "hello"

    async def provider(self, turns: Sequence[Turn]) -> ChatProvider:
        """A provider that answers its next requests with ``turns``, in order."""
        raise NotImplementedError

    async def disconnected(self) -> bool:
        """After a :class:`Hold` turn was cancelled: whether the provider closed its stream
        (for an HTTP provider: whether the server saw the client go away)."""
        raise NotImplementedError

    # --- helpers ----------------------------------------------------------------------------

    def _needs(self, *kinds: str) -> None:
        missing = [k for k in kinds if k not in self.supports]
        if missing:
            pytest.skip(f"{type(self).__name__} cannot produce {', '.join(missing)}")

    def request(self, *messages: Message, **fields: Any) -> ChatRequest:
        provider = fields.pop("provider", "conformance")
        return ChatRequest(
            provider=provider,
            model=self.model,
            messages=messages or (Message(role="user", content="hello"),),
            **fields,
        )

    async def collect(self, provider: ChatProvider, request: ChatRequest | None = None) -> list[ChatStreamEvent]:
        chat = request or self.request(provider=provider.id)
        return [event async for event in provider.stream(chat)]

    @staticmethod
    def assert_order(events: Sequence[ChatStreamEvent]) -> ChatFinished:
        assert events, "the stream yielded nothing"
        assert isinstance(events[0], ChatStarted), f"the first event is {events[0].type}"
        assert isinstance(events[-1], ChatFinished), f"the last event is {events[-1].type}"
        assert not any(isinstance(e, (ChatStarted, ChatFinished)) for e in events[1:-1])
        return events[-1]

    # --- the tests ----------------------------------------------------------------------------

    def ask(self, provider: ChatProvider, turn: Turn, **fields: Any) -> ChatRequest:
        message = Message(role="user", content=self.prompt_for(turn))
        return self.request(message, provider=provider.id, **fields)

    async def test_a_text_answer_streams_in_order(self) -> None:
        self._needs("text")
        turn = Text(("Hel", "lo, ", "world"))
        provider = await self.provider([turn])
        events = await self.collect(provider, self.ask(provider, turn))
        finished = self.assert_order(events)
        text = "".join(e.delta for e in events if isinstance(e, ChatTextDelta))
        assert text == "Hello, world" if self.exact else text.strip()
        assert finished.finish_reason is FinishReason.STOP
        assert not any(isinstance(e, ChatToolCallStarted) for e in events)

    async def test_tool_calls_are_assembled_from_their_deltas(self) -> None:
        self._needs("calls")
        calls = (
            ("call_a", "add", ('{"a": 2,', ' "b": 3}')),
            ("call_b", "lookup", ('{"key": ', '"version"}')),
        )
        turn = Calls(calls)
        provider = await self.provider([turn])
        events = await self.collect(provider, self.ask(provider, turn, tools=_SPECS))
        finished = self.assert_order(events)
        assert finished.finish_reason is FinishReason.TOOL_CALLS
        completed = [e.call for e in events if isinstance(e, ChatToolCallCompleted)]
        if self.exact:
            assert [(c.name, json.loads(c.arguments)) for c in completed] == [
                ("add", {"a": 2, "b": 3}), ("lookup", {"key": "version"})
            ]
        else:
            assert completed and all(isinstance(json.loads(c.arguments), dict) for c in completed)
        assert len({c.id for c in completed}) == len(completed)
        for call in completed:
            mine = [
                e for e in events
                if (isinstance(e, ChatToolCallStarted) and e.id == call.id)
                or (isinstance(e, ChatToolCallArgumentsDelta) and e.id == call.id)
                or (isinstance(e, ChatToolCallCompleted) and e.call.id == call.id)
            ]
            assert isinstance(mine[0], ChatToolCallStarted) and mine[0].name == call.name
            assert isinstance(mine[-1], ChatToolCallCompleted)
            fragments = "".join(e.delta for e in mine if isinstance(e, ChatToolCallArgumentsDelta))
            assert json.loads(fragments or "{}") == json.loads(call.arguments)

    async def test_usage_is_reported_with_the_finish(self) -> None:
        self._needs("text", "usage")
        provider = await self.provider([Text(("ok",), usage=USAGE)])
        finished = self.assert_order(await self.collect(provider))
        assert finished.usage == USAGE

    async def test_a_length_stop_is_reported(self) -> None:
        self._needs("text", "length")
        provider = await self.provider([Text(("cut o",), finish=FinishReason.LENGTH)])
        finished = self.assert_order(await self.collect(provider))
        assert finished.finish_reason is FinishReason.LENGTH

    @pytest.mark.parametrize(("status", "retryable"), [(429, True), (503, True), (400, False), (401, False)])
    async def test_error_statuses_are_provider_errors_before_any_event(
        self, status: int, retryable: bool
    ) -> None:
        self._needs("failure")
        provider = await self.provider([Failure(status, "no, thank you")])
        seen: list[ChatStreamEvent] = []
        with pytest.raises(ProviderError) as caught:
            async for event in provider.stream(self.request(provider=provider.id)):
                seen.append(event)
        assert seen == [], "an error status must be raised before chat_started (so it can be retried)"
        assert isinstance(caught.value, ProviderHTTPError) and caught.value.status_code == status
        assert is_retryable(caught.value) is retryable
        assert "no, thank you" in str(caught.value)

    async def test_cancelling_mid_stream_closes_the_stream(self) -> None:
        self._needs("hold")
        turn = Hold(("partial",))
        provider = await self.provider([turn])
        stream = provider.stream(self.ask(provider, turn))
        iterator = stream.__aiter__()
        first: list[ChatStreamEvent] = []
        while not any(isinstance(e, ChatTextDelta) for e in first):
            first.append(await asyncio.wait_for(iterator.__anext__(), 30))
        await asyncio.wait_for(stream.aclose(), 30)  # type: ignore[attr-defined]  # what the runtime does on cancel
        for _ in range(300):
            if await self.disconnected():
                break
            await asyncio.sleep(0.01)
        assert await self.disconnected(), "the provider did not close its stream when cancelled"

    async def test_a_whole_run_with_a_tool_round_trip(self) -> None:
        self._needs("text", "calls")
        if not self.exact:
            pytest.skip(f"{type(self).__name__} cannot be scripted")
        ran: list[int] = []

        @tool
        def add(a: int, b: int) -> int:
            """Add two integers."""
            ran.append(a + b)
            return a + b

        provider = await self.provider(
            [Calls((("call_1", "add", ('{"a": 2, "b": 3}',)),)), Text(("2 + 3 = 5",))]
        )
        runtime = AgentRuntime(providers=[provider], tools=[add], store=MemoryStore())
        events: list[InvocationEvent] = []
        runtime.events.subscribe(events.append)
        output = await runtime.run(
            RunRequest(provider=provider.id, model=self.model, input="what is 2 + 3?")
        )
        assert ran == [5]
        assert output.output_text == "2 + 3 = 5"
        assert [e.type for e in events if e.type in ("run_started", "run_completed")] == [
            "run_started", "run_completed"
        ]

    async def test_the_key_appears_in_no_event_error_or_repr(self) -> None:
        secret = self.secret
        if secret is None:
            pytest.skip(f"{type(self).__name__} has no key")
        self._needs("failure")
        provider = await self.provider([Failure(401, f"invalid key {secret}")])
        runtime = AgentRuntime(providers=[provider], store=MemoryStore())
        events: list[InvocationEvent] = []
        runtime.events.subscribe(events.append)
        with pytest.raises(InvocationFailed) as failed:
            await runtime.run(RunRequest(provider=provider.id, model=self.model, input="hi"))
        cause = failed.value.cause
        texts = [
            str(failed.value), repr(failed.value), repr(provider), str(cause), repr(cause),
            *(repr(a) for a in getattr(cause, "args", ())),
            *(INVOCATION_EVENT.dump_json(e).decode() for e in events),
        ]
        assert not [t for t in texts if secret in t]

    async def test_tool_specs_reach_the_provider_without_breaking_it(self) -> None:
        self._needs("text")
        provider = await self.provider([Text(("fine",))])
        spec = ToolSpec(name="lookup", description="Look up a key.", parameters={
            "type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]
        })
        events = await self.collect(provider, self.request(provider=provider.id, tools=(spec,)))
        assert self.assert_order(events).finish_reason is FinishReason.STOP
