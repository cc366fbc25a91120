"""Context compaction (issue 14 §2): the context rules (turns, checkpoints, pruning), proactive
and reactive compaction through the runtime, the circuit breaker's every transition in virtual
time, and checkpoints that survive the process in a SqliteStore."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from reactivex.testing import TestScheduler

from rxinvoke import (
    AgentRuntime,
    ChatRequest,
    Compaction,
    CompactionPolicy,
    InvocationEvent,
    InvocationFailed,
    MemoryStore,
    Message,
    ModelLimits,
    ProviderContextOverflow,
    ProviderHTTPError,
    RunRequest,
    RuntimePolicy,
    ScriptedProvider,
    SqliteStore,
    TokenUsage,
    ToolCall,
)
from rxinvoke._compaction import SUMMARY_INSTRUCTIONS, is_context_overflow
from rxinvoke._context import (
    CHECKPOINT_PREFIX,
    build_context,
    estimate_tokens,
    prune_tool_outputs,
    split_for_compaction,
)
from rxinvoke.providers import Refuse

text_turn = ScriptedProvider.text_turn

WORDS = "lorem ipsum dolor sit amet " * 16  # 432 characters: 108 tokens + 4


def msg(role: str, content: str = "", **kw: Any) -> Message:
    return Message(role=role, content=content, **kw)  # type: ignore[arg-type]


def turn(n: int, *, tool: bool = False) -> list[Message]:
    """One turn: a user message, (a tool call and its result,) an answer."""
    out = [msg("user", f"question {n} {WORDS}")]
    if tool:
        call = ToolCall(id=f"call{n}", name="search", arguments='{"q": 1}')
        out += [msg("assistant", tool_calls=(call,)), msg("tool", f"result {n} {WORDS}", tool_call_id=f"call{n}")]
    out.append(msg("assistant", f"answer {n} {WORDS}"))
    return out


# --- the context rules -----------------------------------------------------------------------


def test_the_token_estimate_is_a_token_per_four_characters_plus_four_per_message_and_call() -> None:
    call = ToolCall(id="c", name="abcd", arguments="{}" * 6)  # 16 characters
    assert estimate_tokens([msg("user", "x" * 9)]) == 4 + 3
    assert estimate_tokens([msg("assistant", tool_calls=(call,))]) == 4 + 0 + 4 + 4
    assert estimate_tokens([]) == 0


def test_compaction_keeps_the_newest_turns_whole_and_never_splits_one() -> None:
    system = msg("system", "be brief")
    history = [system, *turn(1, tool=True), *turn(2, tool=True), *turn(3)]
    split = split_for_compaction(history, tail_turns=2)
    assert split is not None
    checkpoint, older, keep = split
    assert checkpoint is None
    assert older == history[1:5]  # turn 1, whole
    assert history[keep].content.startswith("question 2")  # the tail starts at a user message
    assert split_for_compaction(history, tail_turns=3) is None  # nothing older than the tail
    assert split_for_compaction([system, *turn(1)], tail_turns=1) is None


def test_a_checkpoint_stands_for_the_turns_before_its_boundary() -> None:
    system = msg("system", "be brief")
    one, two, three = turn(1), turn(2), turn(3)
    first = msg("system", CHECKPOINT_PREFIX + "s1", compaction=Compaction(
        keeps_from=two[0].id, messages_summarized=2, tokens_before=1, tokens_after=1))
    second = msg("system", CHECKPOINT_PREFIX + "s2", compaction=Compaction(
        keeps_from=three[0].id, messages_summarized=4, tokens_before=1, tokens_after=1))
    history = [system, *one, *two, first, *three, second]
    # the latest checkpoint wins; older checkpoints and summarised turns are left out
    assert build_context(history) == [system, second, *three]
    assert build_context([system, *one, *two, first]) == [system, first, *two]
    # re-compaction sees the current checkpoint and folds only the turns after it
    split = split_for_compaction([system, first, *two, *three], tail_turns=1)
    assert split is not None and split[0] == first and split[1] == two


def test_a_checkpoint_whose_boundary_is_missing_falls_back_to_the_whole_history() -> None:
    lost = msg("system", "s", compaction=Compaction(keeps_from="gone", messages_summarized=1, tokens_before=1, tokens_after=1))
    history = [*turn(1), lost]
    assert build_context(history) == history[:-1]


def test_old_tool_outputs_are_pruned_in_the_context_only_when_it_frees_enough() -> None:
    history = [*turn(1, tool=True), *turn(2, tool=True), *turn(3, tool=True)]  # 111-token outputs
    pruned = prune_tool_outputs(history, protect=120, minimum=100)
    tools = [m for m in pruned if m.role == "tool"]
    assert tools[2].content.startswith("result 3")  # the newest turn is never touched
    assert tools[1].content.startswith("result 2")  # within the protected budget
    assert tools[0].content.startswith("[rxinvoke: this tool output (111 tokens) was pruned")
    assert tools[0].tool_call_id == "call1" and tools[0].id == history[2].id
    assert history[2].content.startswith("result 1")  # the input is not changed
    assert prune_tool_outputs(history, protect=120, minimum=200) is history  # frees too little
    assert prune_tool_outputs(history, protect=1000, minimum=1) is history


def test_context_overflow_errors_are_recognised() -> None:
    assert is_context_overflow(ProviderContextOverflow("p", "m", 400, "too long"))
    assert is_context_overflow(
        ProviderHTTPError("p", "m", 400, '{"error": {"code": "context_length_exceeded"}}')
    )
    assert is_context_overflow(ProviderHTTPError("p", "m", 400, "prompt is too long: 210000 tokens"))
    assert not is_context_overflow(ProviderHTTPError("p", "m", 400, "bad request"))
    assert not is_context_overflow(ProviderHTTPError("p", "m", 500, "context length"))


# --- through the runtime ---------------------------------------------------------------------------


class Harness:
    """A runtime whose model answers every run with a long text and whose summariser is a
    separate scripted provider (so its requests are told apart)."""

    def __init__(
        self,
        summaries: Sequence[Any] = (),
        *,
        window: int | None = 1200,
        store: Any = None,
        scheduler: Any = None,
        answers: Any = None,
        summarizer: ScriptedProvider | None = None,
        **compaction: Any,
    ) -> None:
        self.summaries = list(summaries)
        self.model = ScriptedProvider(answers or (lambda req: text_turn(f"answer {WORDS}")), id="model")
        self.summarizer = summarizer or ScriptedProvider(self._summary, id="summarizer")
        limits = ModelLimits(context_window=window, max_output_tokens=200) if window else None
        policy = RuntimePolicy(
            max_retries=0,
            compaction=CompactionPolicy(limits=limits, provider="summarizer", tail_turns=1, **compaction),
        )
        self.runtime = AgentRuntime(
            providers=[self.model, self.summarizer],
            policy=policy,
            store=store if store is not None else MemoryStore(),
            scheduler=scheduler,
        )
        self.events: list[InvocationEvent] = []
        self.runtime.events.subscribe(self.events.append)
        self.session = uuid.uuid4()

    def _summary(self, req: ChatRequest) -> Any:
        item = self.summaries.pop(0) if self.summaries else "summary"
        if isinstance(item, BaseException):
            return [Refuse(item)]
        return text_turn(item, usage=TokenUsage(input_tokens=50, output_tokens=5, total_tokens=55))

    async def ask(self, text: str = "next") -> Any:
        return await self.runtime.run(
            RunRequest(provider="model", model="scripted", input=f"{text} {WORDS}", session_id=self.session,
                       system_prompt="You are terse.")
        )

    def kinds(self, prefix: str = "compaction") -> list[str]:
        return [e.type for e in self.events if e.type.startswith(prefix)]

    def of(self, kind: str) -> list[Any]:
        return [e for e in self.events if e.type == kind]


async def test_a_session_past_the_window_is_compacted_before_the_next_call() -> None:
    h = Harness(["the user asked about lorem ipsum, twice"])
    for n in range(4):  # each turn ~230 tokens: the 5th run's context would pass 900 (0.9 × 1000)
        await h.ask(f"q{n}")
    assert h.kinds() == []
    output = await h.ask("q4")

    assert h.kinds() == ["compaction_started", "compaction_finished"]
    (finished,) = h.of("compaction_finished")
    assert finished.succeeded and finished.reason == "proactive"
    assert finished.tokens_after < finished.tokens_before
    assert finished.messages_summarized == 8  # four whole turns
    # what the model received next: system prompt, the summary, the newest turn whole
    context = h.model.requests[-1].messages
    assert [m.role for m in context] == ["system", "system", "user"]
    assert context[0].content == "You are terse."
    assert context[1].content == CHECKPOINT_PREFIX + "the user asked about lorem ipsum, twice"
    assert context[2].content.startswith("q4")
    # the summariser saw the four older turns, not the newest
    prompt = h.summarizer.requests[-1].messages
    assert prompt[0].content == SUMMARY_INSTRUCTIONS
    assert "q0" in prompt[1].content and "q3" in prompt[1].content and "q4" not in prompt[1].content
    # nothing deleted: the store has every message plus the checkpoint
    stored = await h.runtime.history(h.session)
    assert sum(m.role == "user" for m in stored) == 5
    checkpoints = [m for m in stored if m.compaction is not None]
    assert len(checkpoints) == 1 and checkpoints[0].compaction.keeps_from == context[2].id  # type: ignore[union-attr]
    # the summariser's cost is the run's cost too
    assert output.total_usage.total_tokens >= 55
    # the order of the run: compaction before its model call
    kinds = [e.type for e in h.events if e.run_id == output.run_id]
    assert kinds.index("compaction_finished") < kinds.index("model_started")


async def test_re_compaction_updates_the_previous_summary() -> None:
    h = Harness(["summary one", "summary two"])
    for n in range(5):
        await h.ask(f"q{n}")
    assert len(h.of("compaction_finished")) == 1
    for n in range(5, 9):
        await h.ask(f"q{n}")

    assert [e.succeeded for e in h.of("compaction_finished")] == [True, True]
    prompt = h.summarizer.requests[-1].messages[1].content
    assert prompt.startswith("Previous summary:\nsummary one")
    assert "q3" not in prompt and "q4" in prompt  # only the turns after the first checkpoint
    assert h.of("compaction_finished")[-1].messages_summarized == 8 + 8
    context = h.model.requests[-1].messages
    assert context[1].content == CHECKPOINT_PREFIX + "summary two"
    assert sum(m.compaction is not None for m in context) == 1


async def test_a_provider_that_refuses_the_context_gets_one_compaction_and_one_retry() -> None:
    calls: list[ChatRequest] = []

    def answers(req: ChatRequest) -> Any:
        calls.append(req)
        if len(calls) == 4:  # the 4th run's call: refused as too long, once
            return [Refuse(ProviderContextOverflow("model", "scripted", 400, "maximum context length"))]
        return text_turn("ok")

    h = Harness(["short summary"], window=None, answers=answers)
    for n in range(4):
        output = await h.ask(f"q{n}")

    assert output.output_text == "ok"
    (started,) = h.of("compaction_started")
    assert started.reason == "reactive"
    assert len(calls) == 5 and len(calls[-1].messages) < len(calls[-2].messages)
    assert calls[-1].messages[1].content == CHECKPOINT_PREFIX + "short summary"


async def test_a_refused_context_with_nothing_to_compact_fails_the_run() -> None:
    overflow = ProviderContextOverflow("model", "scripted", 400, "maximum context length")
    h = Harness(window=None, answers=lambda req: [Refuse(overflow)])
    with pytest.raises(InvocationFailed, match="maximum context length"):
        await h.ask("the only turn")
    assert h.kinds() == []
    assert h.events[-1].type == "run_failed"


async def test_a_failed_compaction_is_not_fatal_and_the_context_stays() -> None:
    h = Harness([ProviderHTTPError("summarizer", "scripted", 400, "summariser down")])
    for n in range(5):
        output = await h.ask(f"q{n}")

    assert output.output_text.startswith("answer")
    (finished,) = h.of("compaction_finished")
    assert not finished.succeeded and "summariser down" in (finished.error or "")
    assert finished.tokens_after == finished.tokens_before
    assert len(h.model.requests[-1].messages) == 1 + 2 * 4 + 1  # uncompacted: 4 turns and the 5th question
    assert not [m for m in await h.runtime.history(h.session) if m.compaction is not None]


async def test_the_circuit_breaker_opens_half_opens_and_closes_in_virtual_time() -> None:
    scheduler = TestScheduler()
    down = ProviderHTTPError("summarizer", "scripted", 503, "down")
    h = Harness([down] * 4 + ["finally"], scheduler=scheduler, cooldown=60.0, circuit_breaker_threshold=3)
    compactor = h.runtime._compactor
    for n in range(4):
        await h.ask(f"q{n}")
    assert h.kinds() == []

    await h.ask("a")  # failure 1
    await h.ask("b")  # failure 2
    assert compactor.breaker_state(h.session) == "closed" and not h.of("compaction_circuit_opened")
    await h.ask("c")  # failure 3: opens
    (opened,) = h.of("compaction_circuit_opened")
    assert opened.consecutive_failures == 3
    assert compactor.breaker_state(h.session) == "open"

    before = len(h.of("compaction_started"))
    await h.ask("d")  # open: proactive compaction is skipped
    assert len(h.of("compaction_started")) == before

    scheduler.advance_by(59.0)
    assert compactor.breaker_state(h.session) == "open"
    scheduler.advance_by(1.0)
    assert compactor.breaker_state(h.session) == "half-open"
    await h.ask("e")  # half-open: one attempt, it fails: open again
    assert [e.consecutive_failures for e in h.of("compaction_circuit_opened")] == [3, 4]
    assert compactor.breaker_state(h.session) == "open"
    await h.ask("f")
    assert len(h.of("compaction_started")) == before + 1

    scheduler.advance_by(60.0)
    await h.ask("g")  # half-open: succeeds, closes
    assert h.of("compaction_finished")[-1].succeeded
    assert compactor.breaker_state(h.session) == "closed"
    other = uuid.uuid4()
    assert compactor.breaker_state(other) == "closed"  # per session


async def test_an_unregistered_compaction_provider_is_a_clear_failure() -> None:
    h = Harness()
    h.runtime = AgentRuntime(
        providers=[h.model],
        policy=RuntimePolicy(compaction=CompactionPolicy(
            limits=ModelLimits(context_window=1200, max_output_tokens=200), provider="nowhere", tail_turns=1)),
    )
    h.runtime.events.subscribe(h.events.append)
    for n in range(5):
        await h.ask(f"q{n}")
    (finished,) = h.of("compaction_finished")
    assert "nowhere" in (finished.error or "") and "not registered" in (finished.error or "")


async def test_a_checkpoint_outlives_the_process_in_a_sqlite_store(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    h = Harness(["durable summary"], store=store)
    for n in range(5):
        await h.ask(f"q{n}")
    await store.close()

    again = Harness(window=100_000, store=SqliteStore(path))  # another process: same file
    again.session = h.session
    await again.ask("after restart")
    context = again.model.requests[-1].messages
    assert [m.role for m in context][:2] == ["system", "system"]
    assert context[1].content == CHECKPOINT_PREFIX + "durable summary"
    assert [m.content.split()[0] for m in context[2:]] == ["q4", "answer", "after"]
    await again.runtime.store.close()


async def test_without_known_limits_nothing_is_compacted_proactively() -> None:
    h = Harness(window=None)
    for n in range(8):
        await h.ask(f"q{n}")
    assert h.kinds() == [] and h.summarizer.requests == []


async def test_the_runtime_sends_old_tool_outputs_pruned_and_stores_them_whole() -> None:
    from rxinvoke import tool

    @tool
    def fetch(n: int) -> str:
        """Fetch a long page."""
        return f"page {n} " + WORDS * 3

    script: list[Any] = []
    for n in range(3):
        script += [ScriptedProvider.tool_call_turn("fetch", {"n": n}), text_turn(f"read page {n}")]
    model = ScriptedProvider(script, id="model")
    runtime = AgentRuntime(
        providers=[model],
        tools=[fetch],
        policy=RuntimePolicy(compaction=CompactionPolicy(prune_protect_tokens=400, prune_minimum_tokens=300)),
    )
    session = uuid.uuid4()
    for n in range(3):
        await runtime.run(RunRequest(provider="model", model="scripted", input=f"read {n}", session_id=session))

    sent = [m for m in model.requests[-1].messages if m.role == "tool"]
    assert sent[0].content.startswith("[rxinvoke: this tool output")  # the oldest, beyond 400
    assert sent[1].content.startswith("page 1") and sent[2].content.startswith("page 2")
    stored = [m for m in await runtime.history(session) if m.role == "tool"]
    assert all(m.content.startswith("page") for m in stored)  # the store keeps every output


async def test_a_summarising_call_that_outlives_its_timeout_is_a_counted_failure() -> None:
    import asyncio

    from rxinvoke.providers import Pause

    scheduler = TestScheduler()
    slow = ScriptedProvider(lambda req: [Pause(3600.0), *text_turn("late")], id="summarizer", scheduler=scheduler)
    h = Harness(scheduler=scheduler, timeout=30.0, summarizer=slow)
    for n in range(4):
        await h.ask(f"q{n}")
    run = asyncio.ensure_future(h.ask("q4"))
    for _ in range(200):  # until the summarising call is under way
        await asyncio.sleep(0)
        if h.of("compaction_started"):
            break
    scheduler.advance_by(30.0)
    output = await asyncio.wait_for(run, 10)

    (finished,) = h.of("compaction_finished")
    assert not finished.succeeded and "30" in (finished.error or "")
    assert output.output_text.startswith("answer")  # the run went on, uncompacted
