"""The provider conformance suite (``rxinvoke.testing.ProviderConformance``) run against every
provider: the scripted fake, the offline model (unscripted: shapes only), the OpenAI and the
Anthropic provider against their real loopback servers, and a third-party provider written in
this file against the ``ChatProvider`` protocol alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from test_provider_anthropic import KEY as ANTHROPIC_KEY
from test_provider_anthropic import Error as AnthropicError
from test_provider_anthropic import MessagesServer, Reply, end, start, text_block, tool_block
from test_provider_openai import KEY as OPENAI_KEY
from test_provider_openai import ChatServer, Error, Stream, chunk, usage_chunk

from rxinvoke import (
    ChatFinished,
    ChatRequest,
    ChatStarted,
    ChatStreamEvent,
    ChatTextDelta,
    ChatToolCallArgumentsDelta,
    ChatToolCallCompleted,
    ChatToolCallStarted,
    FinishReason,
    OfflineProvider,
    ProviderHTTPError,
    ScriptedProvider,
    ToolCall,
)
from rxinvoke.providers import ChatProvider, Refuse
from rxinvoke.providers.anthropic import AnthropicProvider
from rxinvoke.providers.openai import OpenAIProvider
from rxinvoke.testing import Calls, Failure, Hold, ProviderConformance, Text, Turn

_FINISH = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}


def events_of(turn: Turn) -> list[Any]:
    """A turn as the chat events a well-behaved provider yields (after chat_started)."""
    if isinstance(turn, Text):
        return [*(ChatTextDelta(delta=p) for p in turn.parts), ChatFinished(finish_reason=turn.finish, usage=turn.usage)]
    if isinstance(turn, Calls):
        items: list[Any] = []
        for call_id, name, fragments in turn.calls:
            items.append(ChatToolCallStarted(id=call_id, name=name))
            items += [ChatToolCallArgumentsDelta(id=call_id, delta=f) for f in fragments]
            items.append(ChatToolCallCompleted(call=ToolCall(id=call_id, name=name, arguments="".join(fragments))))
        return [*items, ChatFinished(finish_reason=FinishReason.TOOL_CALLS, usage=turn.usage)]
    if isinstance(turn, Hold):
        return [ChatTextDelta(delta=p) for p in turn.parts]
    raise AssertionError(turn)


# --- the scripted fake ----------------------------------------------------------------------------


class Tracked(ScriptedProvider):
    """A ScriptedProvider that records whether a stream was closed before its end."""

    closed_early = False

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatStreamEvent]:
        finished = False
        try:
            async for event in super().stream(request):
                finished = finished or isinstance(event, ChatFinished)
                yield event
        finally:
            if not finished:
                self.closed_early = True


class TestScriptedProvider(ProviderConformance):
    __test__ = True
    model = "scripted"

    async def provider(self, turns: Sequence[Turn]) -> ChatProvider:
        script: list[list[Any]] = []
        for turn in turns:
            if isinstance(turn, Failure):
                script.append([Refuse(ProviderHTTPError("scripted", self.model, turn.status, turn.message))])
            elif isinstance(turn, Hold):
                script.append([*events_of(turn), asyncio.Event()])  # an event never set: it stalls
            else:
                script.append(events_of(turn))
        self.fake = Tracked(script)
        return self.fake

    async def disconnected(self) -> bool:
        return self.fake.closed_early


# --- the offline model (rule-based: it cannot be scripted) ------------------------------------------


class TestOfflineProvider(ProviderConformance):
    __test__ = True
    model = "offline"
    exact = False
    supports = frozenset({"text", "calls", "hold"})

    def prompt_for(self, turn: Turn) -> str:
        return "what is 2 + 3?" if isinstance(turn, Calls) else "tell me a story"

    async def provider(self, turns: Sequence[Turn]) -> ChatProvider:
        held = any(isinstance(t, Hold) for t in turns)
        self.offline = OfflineProvider(delay=1.0 if held else 0.0)  # held: still streaming when cancelled
        self.closed = False
        outer = self

        class Watched:  # the offline model, with its stream's closing recorded
            id = "offline"
            models = ("offline",)

            async def stream(self, request: ChatRequest) -> AsyncIterator[ChatStreamEvent]:
                try:
                    async for event in outer.offline.stream(request):
                        yield event
                finally:
                    outer.closed = True

        return Watched()

    async def disconnected(self) -> bool:
        return self.closed


# --- the HTTP providers against their loopback servers -------------------------------------------


class TestOpenAIProvider(ProviderConformance):
    __test__ = True
    model = "test-model"
    secret = OPENAI_KEY

    @pytest.fixture(autouse=True)
    async def _server(self) -> AsyncIterator[None]:
        self.server = ChatServer()
        self.made: list[Any] = []
        await self.server.start()
        yield
        for provider in self.made:
            await provider.aclose()
        await self.server.stop()

    def reply(self, turn: Turn) -> Stream | Error:
        if isinstance(turn, Failure):
            return Error(turn.status, {"error": {"message": turn.message}})
        chunks: list[Any] = [chunk({"role": "assistant", "content": ""})]
        if isinstance(turn, (Text, Hold)):
            chunks += [chunk({"content": p}) for p in turn.parts]
        if isinstance(turn, Hold):
            return Stream(chunks, hold_after=len(chunks))
        if isinstance(turn, Calls):
            for index, (call_id, name, fragments) in enumerate(turn.calls):
                chunks.append(chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}))
                chunks += [chunk({"tool_calls": [{"index": index, "function": {"arguments": f}}]}) for f in fragments]
            chunks.append(chunk({}, "tool_calls"))
        else:
            assert isinstance(turn, Text)
            chunks.append(chunk({}, _FINISH[turn.finish]))
        if turn.usage is not None:
            chunks.append(usage_chunk(turn.usage.input_tokens, turn.usage.output_tokens))
        return Stream(chunks)

    async def provider(self, turns: Sequence[Turn]) -> ChatProvider:
        self.server.script(*[self.reply(t) for t in turns])
        self.made.append(OpenAIProvider(base_url=self.server.url, api_key=OPENAI_KEY, models=(self.model,)))
        return self.made[-1]

    async def disconnected(self) -> bool:
        return self.server.disconnected.is_set()


class TestAnthropicProvider(ProviderConformance):
    __test__ = True
    model = "claude-test"
    secret = ANTHROPIC_KEY

    @pytest.fixture(autouse=True)
    async def _server(self) -> AsyncIterator[None]:
        self.server = MessagesServer()
        self.made: list[Any] = []
        await self.server.start()
        yield
        for provider in self.made:
            await provider.aclose()
        await self.server.stop()

    def reply(self, turn: Turn) -> Reply | AnthropicError:
        if isinstance(turn, Failure):
            return AnthropicError(turn.status, {"type": "error", "error": {"type": "api_error", "message": turn.message}})
        usage = getattr(turn, "usage", None)
        head = start(input_tokens=usage.input_tokens if usage else 0)
        if isinstance(turn, Hold):
            return Reply([head, *text_block(0, *turn.parts)[:-1]], hold=True)
        if isinstance(turn, Calls):
            blocks = [e for i, (cid, name, frags) in enumerate(turn.calls) for e in tool_block(i, cid, name, *frags)]
            return Reply([head, *blocks, *end("tool_use", usage.output_tokens if usage else 0)])
        assert isinstance(turn, Text)
        stop = "max_tokens" if turn.finish is FinishReason.LENGTH else "end_turn"
        return Reply([head, *text_block(0, *turn.parts), *end(stop, usage.output_tokens if usage else 0)])

    async def provider(self, turns: Sequence[Turn]) -> ChatProvider:
        self.server.script(*[self.reply(t) for t in turns])
        self.made.append(AnthropicProvider(base_url=self.server.url, api_key=ANTHROPIC_KEY))
        return self.made[-1]

    async def disconnected(self) -> bool:
        return self.server.disconnected.is_set()


# --- a third-party provider, written against the protocol only ------------------------------------


class EchoModel:
    """What a user writes for their own model: ``id``, ``models`` and ``stream`` — no rxinvoke
    base class, no ScriptedProvider. It replays queued responses."""

    id = "echo"
    models = ("echo-1",)

    def __init__(self, responses: Sequence[Turn]) -> None:
        self.responses = list(responses)
        self.closed_early = False

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatStreamEvent]:
        response = self.responses.pop(0)
        if isinstance(response, Failure):
            raise ProviderHTTPError(self.id, request.model, response.status, response.message)
        yield ChatStarted(provider=self.id, model=request.model)
        done = False
        try:
            for event in events_of(response):
                await asyncio.sleep(0)
                yield event
            if isinstance(response, Hold):
                await asyncio.Event().wait()
            done = True
        finally:
            self.closed_early = not done


class TestThirdPartyProvider(ProviderConformance):
    __test__ = True
    model = "echo-1"

    async def provider(self, turns: Sequence[Turn]) -> ChatProvider:
        self.echo = EchoModel(turns)
        return self.echo

    async def disconnected(self) -> bool:
        return self.echo.closed_early
