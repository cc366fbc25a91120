"""Doom loops (issue 14 §1): fingerprints, the detector against a brute-force oracle, and the
runtime stopping (or warning) before the batch that closes a loop runs."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rxinvoke import (
    AgentRuntime,
    ChatRequest,
    DoomLoopPolicy,
    FinishReason,
    InvocationEvent,
    MemoryStore,
    RunRequest,
    RuntimePolicy,
    ScriptedProvider,
    ToolCall,
    tool,
)
from rxinvoke._doom import DoomLoopDetector, fingerprint

tool_call_turn = ScriptedProvider.tool_call_turn
tool_calls_turn = ScriptedProvider.tool_calls_turn
text_turn = ScriptedProvider.text_turn


def call(name: str, arguments: Any = None) -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return ToolCall(id=f"call_{uuid.uuid4().hex[:8]}", name=name, arguments=text)


# --- fingerprints ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


def shuffled(value: Any, rng: random.Random) -> Any:
    """The same value with every object's keys in another order (arrays untouched)."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=4), json_values, max_size=5), st.randoms())
def test_key_order_never_changes_a_fingerprint(arguments: dict[str, Any], rng: random.Random) -> None:
    assert fingerprint(call("t", arguments)) == fingerprint(call("t", shuffled(arguments, rng)))


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, min_size=2, max_size=5, unique_by=lambda v: json.dumps(v, sort_keys=True)))
def test_array_order_and_the_tool_name_do_change_it(items: list[Any]) -> None:
    assert fingerprint(call("t", {"x": items})) != fingerprint(call("t", {"x": items[::-1]}))
    assert fingerprint(call("t", {"x": items})) != fingerprint(call("u", {"x": items}))


def test_nested_objects_are_sorted_and_arguments_that_are_not_json_count_as_text() -> None:
    a = call("open", '{"b": {"y": 1, "x": [2, {"q": 1, "p": 0}]}, "a": 0}')
    b = call("open", '{"a":0,"b":{"x":[2,{"p":0,"q":1}],"y":1}}')
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(call("open", "not json{")) == ("open", "not json{")


# --- the detector against a brute-force oracle -------------------------------------------------


def oracle(calls: Sequence[tuple[str, str]], policy: DoomLoopPolicy) -> list[tuple[int, tuple[str, ...], int]]:
    """Every trip over the flat call sequence, by definition: (index, pattern names, count);
    the record starts afresh after each."""
    trips: list[tuple[int, tuple[str, ...], int]] = []
    start = 0
    for i in range(len(calls)):
        seen = list(calls[start : i + 1])
        n = policy.consecutive_threshold
        if len(seen) >= n and all(c == seen[-1] for c in seen[-n:]):
            trips.append((i, (seen[-1][0],), n))
            start = i + 1
            continue
        for length in range(policy.min_cycle, policy.max_cycle + 1):
            span = length * (policy.repetitions + 1)
            tail = seen[-span:]
            if len(tail) == span and len(set(tail[:length])) > 1 and all(
                tail[k] == tail[k % length] for k in range(span)
            ):
                trips.append((i, tuple(c[0] for c in tail[-length:]), span))
                start = i + 1
                break
    return trips


policies = st.builds(
    lambda threshold, low, extra, reps: DoomLoopPolicy(
        consecutive_threshold=threshold, min_cycle=low, max_cycle=low + extra, repetitions=reps
    ),
    st.integers(2, 5), st.integers(2, 3), st.integers(0, 2), st.integers(1, 3),
)
alphabet = st.sampled_from([("search", '{"q":1}'), ("search", '{"q":2}'), ("open", "{}")])


# sequences made of runs of repeated patterns, so loops (and near-loops) are common
loopy = st.lists(
    st.tuples(st.lists(alphabet, min_size=1, max_size=4), st.integers(1, 6)), max_size=8
).map(lambda chunks: [c for pattern, times in chunks for c in pattern * times][:40])


@settings(max_examples=600, deadline=None)
@example(  # a run of one call is never a cycle: 4 of them are not "open, open" repeated
    DoomLoopPolicy(consecutive_threshold=5, min_cycle=2, max_cycle=2, repetitions=1),
    [("open", "{}")] * 5,
    [1] * 40,
)
@given(policies, st.one_of(loopy, st.lists(alphabet, max_size=40)), st.lists(st.integers(1, 4), min_size=40, max_size=40))
def test_the_detector_trips_exactly_where_the_definition_says(
    policy: DoomLoopPolicy, flat: list[tuple[str, str]], sizes: list[int]
) -> None:
    detector = DoomLoopDetector(policy)
    found: list[tuple[int, tuple[str, ...], int]] = []
    i = 0
    for size in sizes:  # the same calls, cut into batches of random sizes
        batch = flat[i : i + size]
        if not batch:
            break
        trip = detector.check([call(name, args) for name, args in batch])
        if trip is not None:
            found.append((i + trip.at, trip.pattern, trip.count))
            i += trip.at + 1  # a tripping batch ends there: what follows is the next batch
        else:
            i += len(batch)
    expected = oracle(flat[:i], policy)
    assert found == expected


def test_a_disabled_detector_never_trips() -> None:
    detector = DoomLoopDetector(DoomLoopPolicy(enabled=False))
    assert detector.check([call("a")] * 10) is None


def test_the_cycle_bounds_are_checked() -> None:
    with pytest.raises(ValidationError, match="max_cycle"):
        DoomLoopPolicy(min_cycle=4, max_cycle=3)
    with pytest.raises(ValidationError):
        RuntimePolicy(doom_loop_threshold=3)  # type: ignore[call-arg]  # replaced by doom_loop=


# --- the runtime ---------------------------------------------------------------------------------


class Tools:
    """search/open tools recording what actually ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

        @tool
        def search(q: str) -> str:
            """Search."""
            self.ran.append(f"search:{q}")
            return f"results for {q}"

        @tool
        def open_page(url: str) -> str:
            """Open a page."""
            self.ran.append(f"open:{url}")
            return f"page {url}"

        self.all = [search, open_page]


def runtime_of(turns: Any, policy: DoomLoopPolicy | None = None) -> tuple[AgentRuntime, ScriptedProvider, Tools, list[InvocationEvent]]:
    tools = Tools()
    provider = ScriptedProvider(turns)
    runtime = AgentRuntime(
        providers=[provider],
        tools=tools.all,
        policy=RuntimePolicy(max_iterations=20, doom_loop=policy or DoomLoopPolicy()),
        store=MemoryStore(),
    )
    events: list[InvocationEvent] = []
    runtime.events.subscribe(events.append)
    return runtime, provider, tools, events


def request(session: uuid.UUID) -> RunRequest:
    return RunRequest(provider="scripted", model="scripted", input="go", session_id=session)


async def test_three_identical_calls_in_one_batch_trip_before_any_of_them_runs() -> None:
    batch = [("search", {"q": "x"}, f"c{i}") for i in range(3)] + [("open_page", {"url": "u"}, "c3")]
    runtime, provider, tools, events = runtime_of([tool_calls_turn(batch), text_turn("never")])
    session = uuid.uuid4()

    output = await runtime.run(request(session))

    assert output.finish_reason is FinishReason.DOOM_LOOP
    assert tools.ran == []  # none of the tripping batch ran, not even the call after the trip
    assert [e.type for e in events if e.type.startswith("tool_execution")] == []
    (detected,) = [e for e in events if e.type == "doom_loop_detected"]
    assert detected.pattern == ("search",) and detected.count == 3  # type: ignore[attr-defined]
    stored = await runtime.history(session)
    assert [m.tool_call_id for m in stored if m.role == "tool"] == ["c0", "c1", "c2", "c3"]
    assert all(m.content.startswith("Error: not run:") for m in stored if m.role == "tool")
    assert len(provider.requests) == 1


async def test_a_search_open_cycle_trips_at_its_sixth_call_before_it_runs() -> None:
    turns = []
    for _ in range(3):
        turns.append(tool_call_turn("search", {"q": "cats"}))
        turns.append(tool_call_turn("open_page", {"url": "https://a"}))
    runtime, provider, tools, events = runtime_of([*turns, text_turn("never")])

    output = await runtime.run(request(uuid.uuid4()))

    assert output.finish_reason is FinishReason.DOOM_LOOP
    assert output.iterations == 6
    assert tools.ran == ["search:cats", "open:https://a"] * 2 + ["search:cats"]
    (detected,) = [e for e in events if e.type == "doom_loop_detected"]
    assert detected.pattern == ("search", "open_page")  # type: ignore[attr-defined]
    assert detected.count == 6  # type: ignore[attr-defined]
    assert "search → open_page" in detected.description  # type: ignore[attr-defined]
    assert "3 times" in detected.description  # type: ignore[attr-defined]
    assert [e.type for e in events][-3:] == ["doom_loop_detected", "tool_message_committed", "run_completed"]


async def test_a_cycle_with_changing_arguments_is_not_a_loop() -> None:
    turns = []
    for i in range(4):
        turns.append(tool_call_turn("search", {"q": f"cats {i}"}))
        turns.append(tool_call_turn("open_page", {"url": "https://a"}))
    runtime, _, tools, events = runtime_of([*turns, text_turn("done")])

    output = await runtime.run(request(uuid.uuid4()))

    assert output.finish_reason is FinishReason.STOP
    assert len(tools.ran) == 8
    assert not [e for e in events if e.type == "doom_loop_detected"]


async def test_warn_tells_the_model_and_the_run_goes_on() -> None:
    turns = [tool_call_turn("search", {"q": "x"}, call_id=f"c{i}") for i in range(3)]
    seen: list[ChatRequest] = []

    def script(req: ChatRequest) -> Any:
        seen.append(req)
        return turns[len(seen) - 1] if len(seen) <= 3 else text_turn("giving up: no results")

    runtime, _, tools, events = runtime_of(script, DoomLoopPolicy(action="warn"))
    session = uuid.uuid4()

    output = await runtime.run(request(session))

    assert output.finish_reason is FinishReason.STOP
    assert output.output_text == "giving up: no results"
    assert tools.ran == ["search:x"] * 3  # warned, not stopped: the call ran
    (detected,) = [e for e in events if e.type == "doom_loop_detected"]
    assert detected.action == "warn"  # type: ignore[attr-defined]
    warned = [m for m in seen[-1].messages if m.tool_call_id == "c2"]
    assert warned[0].content.startswith("results for x")
    assert "Doom loop warning" in warned[0].content and "3 times in a row" in warned[0].content
    assert [e.type for e in events][-1] == "run_completed"


async def test_a_session_stopped_by_a_doom_loop_runs_again_with_a_valid_context() -> None:
    seen: list[ChatRequest] = []
    script = [tool_call_turn("search", {"q": "x"}) for _ in range(3)] + [text_turn("fresh start")]

    def provider_turns(req: ChatRequest) -> Any:
        seen.append(req)
        return script[len(seen) - 1]

    runtime, _, _, _ = runtime_of(provider_turns)
    session = uuid.uuid4()
    assert (await runtime.run(request(session))).finish_reason is FinishReason.DOOM_LOOP

    output = await runtime.run(request(session))

    assert output.output_text == "fresh start"
    context = seen[-1].messages
    calls = {c.id for m in context for c in m.tool_calls}
    answers = {m.tool_call_id for m in context if m.role == "tool"}
    assert calls == answers and len(calls) == 3  # every call answered, none by the repair path
    assert not any("no result: the run ended" in m.content for m in context)
