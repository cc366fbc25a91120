"""The event contract (DESIGN.md section 2) and the value types events and requests are made of."""

from __future__ import annotations

import re
import typing
import uuid
from datetime import datetime, timedelta, timezone

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxinvoke import (
    INVOCATION_EVENT,
    AgentEvent,
    ApprovalDecided,
    ApprovalRequested,
    AssistantMessageCommitted,
    ChatFinished,
    ChatRequest,
    ChatStarted,
    ChatStreamEvent,
    ChatTextDelta,
    ChatToolCallArgumentsDelta,
    ChatToolCallCompleted,
    ChatToolCallStarted,
    CompactionCircuitOpened,
    CompactionFinished,
    CompactionStarted,
    ContextBuilt,
    DoomLoopDetected,
    EmitRequest,
    EventBase,
    EventKind,
    FinishReason,
    InvocationEvent,
    Message,
    ModelRetried,
    ModelStarted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunRequest,
    RunResumed,
    RunStarted,
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolCallCompleted,
    ToolCallDelta,
    ToolCallStarted,
    ToolChoice,
    ToolExecutionFinished,
    ToolExecutionStarted,
    ToolFailure,
    ToolMessageCommitted,
    ToolSuccess,
    UsageRecorded,
)
from rxinvoke._frozen import trusted_builder
from rxinvoke.events import (
    AGENT_EVENT,
    CHAT_STREAM_EVENT,
    agent_text,
    assistant_committed,
    context_built,
    model_started,
    run_completed,
    run_started,
    text_fragment,
    text_twin,
    tool_execution_finished,
    tool_execution_started,
    tool_message_committed,
    usage_recorded,
)
from rxinvoke.messages import TextJoiner, ToolSpec, chat_request, new_id, new_message

RUN = "run-7f3a"
SESSION = "4a6b7c1e-8a8e-4c38-9a52-2a7d6f1e0b11"
WHEN = datetime(2025, 3, 14, 15, 9, 26, 535897, tzinfo=timezone.utc)
CALL = ToolCall(id="call_1", name="calculate", arguments='{"expression": "2 + 3"}')
USAGE = TokenUsage(input_tokens=42, output_tokens=7, total_tokens=49)

AGENT_EXAMPLES: tuple[EventBase, ...] = (
    RunStarted(
        run_id=RUN, timestamp=WHEN, session_id=SESSION, provider="offline", model="offline"
    ),
    ContextBuilt(run_id=RUN, timestamp=WHEN, message_count=3),
    ModelStarted(run_id=RUN, timestamp=WHEN, provider="offline", model="offline", iteration=1),
    TextDelta(run_id=RUN, timestamp=WHEN, delta="2 + 3 = "),
    ToolCallStarted(run_id=RUN, timestamp=WHEN, call_id="call_1", tool_name="calculate"),
    ToolCallDelta(run_id=RUN, timestamp=WHEN, call_id="call_1", delta='{"expression": '),
    ToolCallCompleted(run_id=RUN, timestamp=WHEN, call=CALL),
    ToolExecutionStarted(run_id=RUN, timestamp=WHEN, call_id="call_1", tool_name="calculate"),
    ToolExecutionFinished(
        run_id=RUN,
        timestamp=WHEN,
        call_id="call_1",
        tool_name="calculate",
        result=ToolSuccess(output="5"),
        duration_ms=0.25,
    ),
    AssistantMessageCommitted(run_id=RUN, timestamp=WHEN, message_id="msg_1"),
    ToolMessageCommitted(run_id=RUN, timestamp=WHEN, message_id="msg_2", call_id="call_1"),
    UsageRecorded(run_id=RUN, timestamp=WHEN, usage=USAGE),
    RunCompleted(run_id=RUN, timestamp=WHEN, finish_reason=FinishReason.STOP, iterations=2),
    RunFailed(run_id=RUN, timestamp=WHEN, error="offline/offline: HTTP 503: overloaded"),
    RunCancelled(run_id=RUN, timestamp=WHEN),
    DoomLoopDetected(
        run_id=RUN,
        timestamp=WHEN,
        description="calculate was called 3 times in a row with the same arguments",
        pattern=("calculate",),
        count=3,
        action="warn",
    ),
    ApprovalRequested(
        run_id=RUN, timestamp=WHEN, call_id="call_1", tool_name="deploy", arguments='{"env": "prod"}', expires_at=WHEN
    ),
    ApprovalDecided(
        run_id=RUN, timestamp=WHEN, call_id="call_1", tool_name="deploy", approved=False, reason="not on Friday"
    ),
    CompactionStarted(run_id=RUN, timestamp=WHEN, reason="proactive", tokens_before=9000, messages=12),
    CompactionFinished(
        run_id=RUN,
        timestamp=WHEN,
        reason="reactive",
        succeeded=True,
        tokens_before=9000,
        tokens_after=1200,
        messages_summarized=12,
        duration_ms=812.5,
        usage=USAGE,
    ),
    CompactionCircuitOpened(run_id=RUN, timestamp=WHEN, consecutive_failures=3),
    RunResumed(run_id=RUN, timestamp=WHEN, session_id=SESSION, after_seq=7, attempt=2, runtime="worker-2"),
    ModelRetried(
        run_id=RUN, timestamp=WHEN, attempt=1, error="openai/gpt: HTTP 429: slow down", status=429, delay_ms=7000.0
    ),
)

CHAT_EXAMPLES: tuple[EventBase, ...] = (
    ChatStarted(run_id=RUN, timestamp=WHEN, provider="offline", model="offline"),
    ChatTextDelta(run_id=RUN, timestamp=WHEN, delta="Hello"),
    ChatToolCallStarted(run_id=RUN, timestamp=WHEN, id="call_1", name="calculate"),
    ChatToolCallArgumentsDelta(run_id=RUN, timestamp=WHEN, id="call_1", delta='"2 + 3"}'),
    ChatToolCallCompleted(run_id=RUN, timestamp=WHEN, call=CALL),
    ChatFinished(
        run_id=RUN, timestamp=WHEN, finish_reason=FinishReason.TOOL_CALLS, usage=USAGE
    ),
)

ALL_EXAMPLES = AGENT_EXAMPLES + CHAT_EXAMPLES
TERMINAL_TYPES = {"run_completed", "run_failed", "run_cancelled"}


def _union_members(annotated: object) -> set[type]:
    (union, *_metadata) = typing.get_args(annotated)
    return set(typing.get_args(union))


def _type_value(cls: type) -> str:
    default = cls.model_fields["type"].default  # type: ignore[attr-defined]
    assert isinstance(default, str)
    return default


def _ids(events: tuple[EventBase, ...]) -> list[str]:
    return [type(event).__name__ for event in events]


# --- the unions, the kinds and the examples agree ---------------------------------------------


def test_examples_cover_every_event_type() -> None:
    assert {type(e) for e in AGENT_EXAMPLES} == _union_members(AgentEvent)
    assert {type(e) for e in CHAT_EXAMPLES} == _union_members(ChatStreamEvent)
    assert len(AGENT_EXAMPLES) == 23
    assert len(CHAT_EXAMPLES) == 6


def test_invocation_event_is_agent_plus_chat_events() -> None:
    invocation = _union_members(InvocationEvent)
    assert invocation == _union_members(AgentEvent) | _union_members(ChatStreamEvent)
    assert not _union_members(AgentEvent) & _union_members(ChatStreamEvent)


def test_every_event_type_has_exactly_one_kind_and_every_kind_an_event() -> None:
    types = [_type_value(cls) for cls in _union_members(InvocationEvent)]
    assert len(types) == len(set(types)), "two event classes share a `type` value"
    kinds = {member.value for member in EventKind if member is not EventKind.ANY}
    assert set(types) == kinds


@pytest.mark.parametrize("cls", sorted(_union_members(InvocationEvent), key=lambda c: c.__name__))
def test_type_literal_is_snake_case_of_class_name(cls: type) -> None:
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
    assert _type_value(cls) == snake
    assert EventKind[snake.upper()].value == snake


# --- JSON round trip --------------------------------------------------------------------------


@pytest.mark.parametrize("event", ALL_EXAMPLES, ids=_ids(ALL_EXAMPLES))
def test_round_trips_through_invocation_event_json(event: EventBase) -> None:
    text = INVOCATION_EVENT.dump_json(event)  # type: ignore[arg-type]
    back = INVOCATION_EVENT.validate_json(text)
    assert back == event
    assert type(back) is type(event)
    assert INVOCATION_EVENT.dump_json(back) == text


@pytest.mark.parametrize("event", AGENT_EXAMPLES, ids=_ids(AGENT_EXAMPLES))
def test_agent_events_round_trip_through_agent_event_json(event: EventBase) -> None:
    back = AGENT_EVENT.validate_json(AGENT_EVENT.dump_json(event))  # type: ignore[arg-type]
    assert back == event
    assert type(back) is type(event)


@pytest.mark.parametrize("event", CHAT_EXAMPLES, ids=_ids(CHAT_EXAMPLES))
def test_chat_events_round_trip_through_chat_stream_event_json(event: EventBase) -> None:
    text = CHAT_STREAM_EVENT.dump_json(event)  # type: ignore[arg-type]
    back = CHAT_STREAM_EVENT.validate_json(text)
    assert back == event
    assert type(back) is type(event)


@pytest.mark.parametrize("event", CHAT_EXAMPLES, ids=_ids(CHAT_EXAMPLES))
def test_agent_adapter_rejects_chat_events(event: EventBase) -> None:
    with pytest.raises(pydantic.ValidationError):
        AGENT_EVENT.validate_json(INVOCATION_EVENT.dump_json(event))  # type: ignore[arg-type]


def test_json_uses_type_as_discriminator() -> None:
    data = INVOCATION_EVENT.dump_python(AGENT_EXAMPLES[3], mode="json")
    assert data["type"] == "text_delta"
    data["type"] = "chat_text_delta"
    assert isinstance(INVOCATION_EVENT.validate_python(data), ChatTextDelta)
    data["type"] = "no_such_event"
    with pytest.raises(pydantic.ValidationError):
        INVOCATION_EVENT.validate_python(data)


def test_tool_failure_round_trips_and_is_not_success() -> None:
    event = ToolExecutionFinished(
        run_id=RUN,
        call_id="call_9",
        tool_name="calculate",
        result=ToolFailure(error="tool 'calculate' raised ValueError", error_type="ToolError"),
        duration_ms=1.5,
    )
    back = INVOCATION_EVENT.validate_json(INVOCATION_EVENT.dump_json(event))
    assert back == event
    assert isinstance(back, ToolExecutionFinished)
    assert isinstance(back.result, ToolFailure)
    assert back.is_success is False
    assert isinstance(AGENT_EXAMPLES[8], ToolExecutionFinished)
    assert AGENT_EXAMPLES[8].is_success is True


def test_chat_finished_without_usage_round_trips() -> None:
    event = ChatFinished(finish_reason=FinishReason.LENGTH)
    assert event.usage is None
    assert event.run_id is None
    assert CHAT_STREAM_EVENT.validate_json(CHAT_STREAM_EVENT.dump_json(event)) == event


@settings(max_examples=200, deadline=None, database=None)
@given(delta=st.text(), run_id=st.text(min_size=1))
def test_text_delta_round_trips_any_text(delta: str, run_id: str) -> None:
    event = TextDelta(run_id=run_id, delta=delta)
    back = INVOCATION_EVENT.validate_json(INVOCATION_EVENT.dump_json(event))
    assert back == event
    assert isinstance(back, TextDelta)
    assert back.delta == delta


# --- EventKind --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EventKind), ids=[k.value for k in EventKind])
@pytest.mark.parametrize("event", ALL_EXAMPLES, ids=_ids(ALL_EXAMPLES))
def test_kind_matches_iff_same_type_or_any(kind: EventKind, event: EventBase) -> None:
    expected = kind is EventKind.ANY or kind.value == event.type  # type: ignore[attr-defined]
    assert kind.matches(event) is expected


@pytest.mark.parametrize("kind", list(EventKind), ids=[k.value for k in EventKind])
def test_parse_accepts_members_and_their_string_values(kind: EventKind) -> None:
    assert EventKind.parse(kind) is kind
    assert EventKind.parse(kind.value) is kind


def test_parse_unknown_kind_names_the_valid_kinds() -> None:
    with pytest.raises(ValueError, match="unknown event kind 'text_deltas'") as info:
        EventKind.parse("text_deltas")
    message = str(info.value)
    for member in EventKind:
        assert member.value in message


def test_parse_is_case_sensitive() -> None:
    with pytest.raises(ValueError):
        EventKind.parse("TEXT_DELTA")


# --- immutability and strictness --------------------------------------------------------------


@pytest.mark.parametrize("event", ALL_EXAMPLES, ids=_ids(ALL_EXAMPLES))
def test_events_are_frozen(event: EventBase) -> None:
    with pytest.raises(pydantic.ValidationError):
        event.run_id = "other"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        event.timestamp = WHEN + timedelta(seconds=1)  # type: ignore[misc]
    assert event.run_id == RUN
    assert hash(event) == hash(event.model_copy())


@pytest.mark.parametrize("event", ALL_EXAMPLES, ids=_ids(ALL_EXAMPLES))
def test_events_reject_extra_fields(event: EventBase) -> None:
    data = event.model_dump()
    data["unexpected"] = 1
    with pytest.raises(pydantic.ValidationError, match="unexpected"):
        type(event)(**data)
    with pytest.raises(pydantic.ValidationError, match="unexpected"):
        INVOCATION_EVENT.validate_python(data)


def test_agent_events_require_a_run_id() -> None:
    with pytest.raises(pydantic.ValidationError, match="run_id"):
        TextDelta(delta="x")  # type: ignore[call-arg]
    assert ChatTextDelta(delta="x").run_id is None


def test_nested_values_are_frozen_too() -> None:
    with pytest.raises(pydantic.ValidationError):
        CALL.name = "other"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        USAGE.input_tokens = 0  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        ToolSuccess(output="5").output = "6"  # type: ignore[misc]


# --- behaviour --------------------------------------------------------------------------------


@pytest.mark.parametrize("event", ALL_EXAMPLES, ids=_ids(ALL_EXAMPLES))
def test_is_terminal_exactly_for_the_three_terminal_events(event: EventBase) -> None:
    assert event.is_terminal is (event.type in TERMINAL_TYPES)  # type: ignore[attr-defined]


@pytest.mark.parametrize("event", AGENT_EXAMPLES, ids=_ids(AGENT_EXAMPLES))
def test_as_agent_of_an_agent_event_is_itself(event: EventBase) -> None:
    assert event.as_agent() is event


def test_as_agent_maps_chat_deltas_and_tool_calls_keeping_run_id_and_timestamp() -> None:
    started, text, call_started, args, call_done, finished = CHAT_EXAMPLES
    assert text.as_agent() == TextDelta(run_id=RUN, timestamp=WHEN, delta="Hello")
    assert call_started.as_agent() == ToolCallStarted(
        run_id=RUN, timestamp=WHEN, call_id="call_1", tool_name="calculate"
    )
    assert args.as_agent() == ToolCallDelta(
        run_id=RUN, timestamp=WHEN, call_id="call_1", delta='"2 + 3"}'
    )
    assert call_done.as_agent() == ToolCallCompleted(run_id=RUN, timestamp=WHEN, call=CALL)
    assert started.as_agent() is None
    assert finished.as_agent() is None


def test_as_agent_results_are_valid_agent_events() -> None:
    for event in CHAT_EXAMPLES:
        agent = event.as_agent()
        if agent is not None:
            assert AGENT_EVENT.validate_python(agent.model_dump()) == agent
            assert agent.run_id == event.run_id


def test_default_timestamp_is_timezone_aware_utc_now() -> None:
    before = datetime.now(timezone.utc)
    events = [
        RunCancelled(run_id=RUN),
        ChatStarted(provider="offline", model="offline"),
        TextDelta(run_id=RUN, delta="x"),
    ]
    after = datetime.now(timezone.utc)
    for event in events:
        assert event.timestamp.tzinfo is not None
        assert event.timestamp.utcoffset() == timedelta(0)
        assert before <= event.timestamp <= after


def test_timestamp_survives_json_as_utc() -> None:
    back = INVOCATION_EVENT.validate_json(INVOCATION_EVENT.dump_json(AGENT_EXAMPLES[0]))
    assert back.timestamp == WHEN
    assert back.timestamp.utcoffset() == timedelta(0)


# --- value types ------------------------------------------------------------------------------


def _emit(**overrides: object) -> EmitRequest:
    fields: dict[str, object] = {"provider": "offline", "model": "offline", "input": "hi"}
    fields.update(overrides)
    return EmitRequest(**fields)  # type: ignore[arg-type]


def test_provider_and_model_names_are_stripped() -> None:
    request = _emit(provider=" offline ", model="\tgpt-4o-mini\n")
    assert request.provider == "offline"
    assert request.model == "gpt-4o-mini"


@pytest.mark.parametrize("field", ["provider", "model"])
@pytest.mark.parametrize("value", ["", "  ", "\n"])
def test_blank_provider_or_model_is_rejected(field: str, value: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        _emit(**{field: value})


def test_chat_request_names_are_validated_too() -> None:
    message = Message(role="user", content="hi")
    request = ChatRequest(provider=" offline", model="m ", messages=(message,))
    assert (request.provider, request.model) == ("offline", "m")
    assert request.tool_choice == ToolChoice.auto()
    with pytest.raises(pydantic.ValidationError):
        ChatRequest(provider=" ", model="m", messages=(message,))


def test_tool_choice_constructors() -> None:
    assert ToolChoice.auto().mode == "auto"
    assert ToolChoice.none().mode == "none"
    assert ToolChoice.required().mode == "required"
    named = ToolChoice.tool("calculate")
    assert (named.mode, named.name) == ("tool", "calculate")
    assert ToolChoice() == ToolChoice.auto()


@pytest.mark.parametrize("mode", ["auto", "none", "required"])
def test_tool_choice_strings_are_coerced(mode: str) -> None:
    assert ToolChoice.model_validate(mode) == ToolChoice(mode=mode)  # type: ignore[arg-type]
    message = Message(role="user", content="hi")
    request = ChatRequest(
        provider="p",
        model="m",
        messages=(message,),
        tool_choice=mode,  # type: ignore[arg-type]
    )
    assert request.tool_choice.mode == mode
    assert request.tool_choice.name is None


@pytest.mark.parametrize(
    "value",
    ["tool", {"mode": "tool"}, {"mode": "tool", "name": ""}, {"mode": "auto", "name": "x"}, "bogus"],
)
def test_tool_choice_name_exactly_when_mode_is_tool(value: object) -> None:
    with pytest.raises(pydantic.ValidationError):
        ToolChoice.model_validate(value)


def test_tool_choice_round_trips() -> None:
    choice = ToolChoice.tool("now")
    assert ToolChoice.model_validate_json(choice.model_dump_json()) == choice


def test_token_usage_addition() -> None:
    total = USAGE + TokenUsage(input_tokens=8, output_tokens=3, total_tokens=11)
    assert total == TokenUsage(input_tokens=50, output_tokens=10, total_tokens=60)
    assert USAGE + TokenUsage() == USAGE
    assert sum([USAGE, USAGE], TokenUsage()) == TokenUsage(
        input_tokens=84, output_tokens=14, total_tokens=98
    )
    assert USAGE == TokenUsage(input_tokens=42, output_tokens=7, total_tokens=49)  # unchanged
    with pytest.raises(TypeError):
        USAGE + 1  # type: ignore[operator]


def test_a_sum_of_usages_is_a_usage_like_a_validated_one() -> None:
    total = USAGE + USAGE  # built without validation: the same model in every respect
    assert total.model_fields_set == TokenUsage(input_tokens=1, output_tokens=1, total_tokens=1).model_fields_set
    assert TokenUsage.model_validate_json(total.model_dump_json()) == total
    assert hash(total) == hash(TokenUsage(input_tokens=84, output_tokens=14, total_tokens=98))
    with pytest.raises(pydantic.ValidationError):
        total.input_tokens = 1  # type: ignore[misc]  # frozen


def test_the_automatic_tool_choice_is_shared_and_frozen() -> None:
    assert ToolChoice.auto() is ToolChoice.auto() and ToolChoice.auto() == ToolChoice(mode="auto")
    with pytest.raises(pydantic.ValidationError):
        ToolChoice.auto().mode = "none"  # type: ignore[misc]


def test_new_ids_are_version_4_uuids_as_text() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(i) for i in ids]
    assert all(str(u) == i and u.version == 4 and u.variant == uuid.RFC_4122 for u, i in zip(parsed, ids, strict=True))
    assert {i[19] for i in ids} == set("89ab")  # the variant digit takes each of its values
    assert len({i[0] for i in ids}) == 16  # random digits elsewhere


def test_token_usage_rejects_negative_counts() -> None:
    with pytest.raises(pydantic.ValidationError):
        TokenUsage(input_tokens=-1)


def test_finish_reason_members() -> None:
    assert {reason.value for reason in FinishReason} == {
        "stop",
        "tool_calls",
        "length",
        "content_filter",
        "error",
        "cancelled",
        "doom_loop",
        "max_iterations",
        "awaiting_approval",
    }
    assert FinishReason("tool_calls") is FinishReason.TOOL_CALLS
    assert RunCompleted(run_id=RUN, finish_reason="doom_loop", iterations=3).finish_reason is (  # type: ignore[arg-type]
        FinishReason.DOOM_LOOP
    )


def test_with_session_id_accepts_uuid_and_str_and_copies() -> None:
    original = _emit()
    session = uuid.UUID(SESSION)
    from_uuid = original.with_session_id(session)
    from_str = original.with_session_id(SESSION)
    assert from_uuid.session_id == session
    assert from_str.session_id == session
    assert isinstance(from_str.session_id, uuid.UUID)
    assert original.session_id is None
    assert from_uuid is not original


def test_with_session_id_rejects_a_malformed_id() -> None:
    with pytest.raises(ValueError):
        _emit().with_session_id("not-a-uuid")


def test_with_client_request_id_and_metadata_copy() -> None:
    original = _emit()
    keyed = original.with_client_request_id("req-1")
    metadata = {"user": "ada"}
    tagged = keyed.with_metadata(metadata)
    metadata["user"] = "mallory"
    assert keyed.client_request_id == "req-1"
    assert tagged.client_request_id == "req-1"
    assert tagged.metadata == {"user": "ada"}
    assert original.client_request_id is None
    assert original.metadata is None
    assert keyed.metadata is None


def test_emit_request_is_frozen() -> None:
    request = _emit()
    with pytest.raises(pydantic.ValidationError):
        request.input = "other"  # type: ignore[misc]


def test_into_run_request_defaults() -> None:
    emit = _emit(provider=" offline ", input="what is 2 + 3?").with_session_id(SESSION)
    run = emit.into_run_request()
    assert run.provider == "offline"
    assert run.model == "offline"
    assert run.input == "what is 2 + 3?"
    assert run.session_id == uuid.UUID(SESSION)
    assert run.tool_choice == ToolChoice.auto()
    assert run.run_id is None
    assert run.metadata is None
    assert run.client_request_id is None
    assert run.system_prompt is None


def test_into_run_request_carries_key_and_metadata() -> None:
    emit = _emit().with_client_request_id("req-1").with_metadata({"n": 1})
    run = emit.into_run_request()
    assert run.client_request_id == "req-1"
    assert run.metadata == {"n": 1}
    assert run.session_id is None


@given(st.booleans(), st.booleans())
@settings(max_examples=10)
def test_a_runs_request_from_an_emit_equals_the_validated_one(keyed: bool, with_metadata: bool) -> None:
    emit = _emit(provider=" offline ", input="what is 2 + 3?")
    if keyed:
        emit = emit.with_client_request_id("req-1").with_session_id(SESSION)
    if with_metadata:
        emit = emit.with_metadata({"n": [1]})
    session = emit.session_id or uuid.uuid4()
    run = emit.into_run_request(run_id="run-1", session_id=session)  # what emit does
    fields = {name: getattr(emit, name) for name in ("provider", "model", "input", "client_request_id", "metadata")}
    validated = RunRequest(**fields, run_id="run-1", session_id=session)
    assert run == validated and type(run) is RunRequest
    assert list(run.__dict__) == list(RunRequest.model_fields)  # every field, in order
    assert run.model_dump_json() == validated.model_dump_json()
    if with_metadata:
        assert run.metadata is not emit.metadata  # its own dict, as validation makes
    with pytest.raises(pydantic.ValidationError):  # other updates are validated
        emit.into_run_request(run_id="run-1", session_id=session, system_prompt=7)


def test_the_run_value_builders_equal_the_validated_values() -> None:
    from rxinvoke.control import SessionContext, session_context
    from rxinvoke.request import PendingApproval, RunOutput
    from rxinvoke.stores.base import RunOutcome, RunRecord

    session = uuid.UUID(SESSION)
    usage = TokenUsage(input_tokens=3, output_tokens=4, total_tokens=7)
    pending = (PendingApproval(call_id="c1", tool_name="add", arguments="{}"),)
    request = RunRequest(provider="p", model="m", input="hi", run_id="run-1", client_request_id="k")
    output = RunOutput.checked("run-1", session, 2, FinishReason.STOP, usage, "done", pending)
    record = RunRecord.begun("run-1", session, request)
    pairs = [
        (session_context(session, "run-1", "edge"), SessionContext(session_id=session, run_id="run-1", runtime="edge")),
        (output, RunOutput(run_id="run-1", session_id=session, iterations=2, finish_reason=FinishReason.STOP,
                           total_usage=usage, output_text="done", pending=pending)),
        (record, RunRecord(run_id="run-1", session_id=session, request=request, client_request_id="k",
                           started_at=record.started_at)),
        (RunOutcome.completed(output), RunOutcome(status="completed", output=output)),
        (RunOutcome.paused(output), RunOutcome(status="awaiting_approval", output=output)),
    ]
    for mine, theirs in pairs:
        assert mine == theirs and type(mine) is type(theirs)
        assert list(mine.__dict__) == list(type(theirs).model_fields)  # every field, in order
        assert mine.model_dump_json() == theirs.model_dump_json()
    assert record.started_at.tzinfo is not None and record.total_usage == TokenUsage()
    with pytest.raises(pydantic.ValidationError):  # what is not a run's output is validated
        RunOutcome.completed("not an output")  # type: ignore[arg-type]


@given(st.text(max_size=6), st.text(max_size=6), st.text(max_size=10))
@settings(max_examples=60)
def test_an_emit_request_of_three_texts_equals_the_validated_one(provider: str, model: str, text: str) -> None:
    # EmitRequest(provider=, model=, input=) skips the validator when the texts are valid as
    # they are: the same request (or the same error) either way
    data = {"provider": provider, "model": model, "input": text}
    try:
        validated = EmitRequest.model_validate(data)
    except pydantic.ValidationError:
        with pytest.raises(pydantic.ValidationError):
            EmitRequest(**data)
        return
    built = EmitRequest(**data)
    assert built == validated and built.model_fields_set == validated.model_fields_set == set(data)
    assert list(built.__dict__) == list(EmitRequest.model_fields)
    assert built.model_dump_json() == validated.model_dump_json()


def test_with_methods_validate_their_values() -> None:
    request = EmitRequest(provider="offline", model="offline", input="hi")
    with pytest.raises(pydantic.ValidationError):
        request.with_client_request_id(123)  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        request.with_session_id("not-a-uuid")


def test_chat_events_without_a_run_have_no_agent_counterpart() -> None:
    assert ChatTextDelta(delta="x").as_agent() is None
    assert ChatToolCallStarted(id="c", name="t").as_agent() is None
    assert ChatToolCallArgumentsDelta(id="c", delta="{").as_agent() is None
    assert ChatToolCallCompleted(call=ToolCall(id="c", name="t")).as_agent() is None


def test_a_named_tool_choice_needs_a_non_blank_name() -> None:
    with pytest.raises(pydantic.ValidationError):
        ToolChoice.tool("   ")
    assert ToolChoice.tool(" calc ").name == "calc"


@given(st.text(max_size=20))
@settings(max_examples=50)
def test_the_hot_path_builders_equal_the_validated_events(delta: str) -> None:
    moment = datetime(2026, 12, 6, 21, 30, tzinfo=timezone.utc)
    fragment = text_fragment("run-1", moment, delta)
    assert fragment == ChatTextDelta(run_id="run-1", timestamp=moment, delta=delta)
    assert fragment.model_dump_json() == ChatTextDelta(run_id="run-1", timestamp=moment, delta=delta).model_dump_json()
    twin = agent_text(fragment)
    assert twin == fragment.as_agent() == TextDelta(run_id="run-1", timestamp=moment, delta=delta)
    assert twin == text_twin("run-1", moment, delta)
    for built in (fragment, twin):
        assert list(built.__dict__) == list(type(built).model_fields)  # every field, in order
        assert built.model_fields_set == set(type(built).model_fields)
    assert type(twin) is TextDelta and twin.model_dump_json() == TextDelta(
        run_id="run-1", timestamp=moment, delta=delta
    ).model_dump_json()


@given(st.text(min_size=1, max_size=10), st.integers(min_value=0, max_value=10**6), st.booleans())
@settings(max_examples=30)
def test_the_run_and_tool_builders_equal_the_validated_events(name: str, count: int, ok: bool) -> None:
    result = ToolSuccess(output=name) if ok else ToolFailure(error=name, error_type="ToolError")
    named = name if ok else None
    built = [
        run_started("run-1", "s-1", name, name, named, named),
        context_built("run-1", count),
        tool_execution_started("run-1", name, name),
        tool_execution_finished("run-1", name, name, result, count / 7),
        tool_message_committed("run-1", name, name),
        run_completed("run-1", FinishReason.STOP if ok else FinishReason.LENGTH, count),
    ]
    validated = [
        RunStarted(run_id="run-1", timestamp=built[0].timestamp, session_id="s-1", provider=name, model=name,
                   runtime=named, resumes=named),
        ContextBuilt(run_id="run-1", timestamp=built[1].timestamp, message_count=count),
        ToolExecutionStarted(run_id="run-1", timestamp=built[2].timestamp, call_id=name, tool_name=name),
        ToolExecutionFinished(run_id="run-1", timestamp=built[3].timestamp, call_id=name, tool_name=name,
                              result=result, duration_ms=count / 7),
        ToolMessageCommitted(run_id="run-1", timestamp=built[4].timestamp, message_id=name, call_id=name),
        RunCompleted(run_id="run-1", timestamp=built[5].timestamp, finish_reason=FinishReason.STOP if ok
                     else FinishReason.LENGTH, iterations=count),
    ]
    for mine, theirs in zip(built, validated, strict=True):
        assert mine == theirs and type(mine) is type(theirs)
        assert list(mine.__dict__) == list(type(theirs).model_fields)  # every field, in order
        assert mine.model_dump_json() == theirs.model_dump_json()
        assert INVOCATION_EVENT.validate_json(mine.model_dump_json()) == mine
        assert mine.timestamp.tzinfo is not None


@given(st.text(max_size=20), st.one_of(st.none(), st.text(max_size=8)), st.booleans())
@settings(max_examples=50)
def test_a_text_fragment_constructed_plainly_equals_the_validated_one(delta: str, run_id: str | None, stamped: bool) -> None:
    # ChatTextDelta(delta=...) (and with run_id=) skips the validator: the same model anyway
    data: dict[str, object] = {"delta": delta, "run_id": run_id} if stamped else {"delta": delta}
    built = ChatTextDelta(**data)
    validated = ChatTextDelta.model_validate({**data, "timestamp": built.timestamp})
    assert built == validated and built.model_fields_set == set(data)
    assert list(built.__dict__) == list(ChatTextDelta.model_fields)
    assert built.model_dump_json() == validated.model_dump_json()
    assert INVOCATION_EVENT.validate_json(built.model_dump_json()) == built
    assert built.timestamp.tzinfo is not None and built.type == "chat_text_delta"


def test_a_text_fragment_constructed_otherwise_is_validated() -> None:
    assert not ChatTextDelta.__pydantic_custom_init__  # validation never goes through __init__
    for bad in ({"delta": 3}, {"delta": "x", "run_id": 3}, {"delta": "x", "other": 1}, {}):
        with pytest.raises(pydantic.ValidationError):
            ChatTextDelta(**bad)
    moment = datetime(2026, 12, 7, tzinfo=timezone.utc)
    assert ChatTextDelta(delta="x", timestamp=moment).timestamp == moment

    class Tagged(ChatTextDelta):
        tag: str = "t"

    tagged = Tagged(delta="x")  # a subclass: validated, its own fields kept
    assert tagged.tag == "t" and type(tagged) is Tagged and tagged.model_fields_set == {"delta"}


def test_a_trusted_builder_takes_the_fields_it_does_not_fix_in_field_order() -> None:
    build = trusted_builder(ToolCallStarted, type="tool_call_started")
    moment = datetime(2026, 12, 7, 2, 0, tzinfo=timezone.utc)
    event = build("run-1", moment, "call-1", "add")
    assert event == ToolCallStarted(run_id="run-1", timestamp=moment, call_id="call-1", tool_name="add")
    assert hash(event) == hash(ToolCallStarted(run_id="run-1", timestamp=moment, call_id="call-1", tool_name="add"))
    with pytest.raises(TypeError):  # it builds only whole models
        build("run-1", moment, "call-1")
    with pytest.raises(TypeError, match="tool"):
        trusted_builder(ToolCallStarted, tool="x")  # not a field
    stamps = iter([moment, moment + timedelta(seconds=1)])
    stamped = trusted_builder(ToolCallStarted, computed={"timestamp": lambda: next(stamps)}, type="tool_call_started")
    assert [stamped("run-1", "c", "add").timestamp for _ in range(2)] == [moment, moment + timedelta(seconds=1)]
    with pytest.raises(TypeError, match="when"):
        trusted_builder(ToolCallStarted, computed={"when": lambda: moment})  # not a field


@given(st.text(min_size=1, max_size=10), st.integers(min_value=0, max_value=10**6))
@settings(max_examples=30)
def test_the_model_call_builders_equal_the_validated_events(name: str, count: int) -> None:
    usage = TokenUsage(input_tokens=count, output_tokens=1, total_tokens=count + 1)
    built = [model_started("run-1", name, name, count), assistant_committed("run-1", name),
             usage_recorded("run-1", usage)]
    validated = [
        ModelStarted(run_id="run-1", timestamp=built[0].timestamp, provider=name, model=name, iteration=count),
        AssistantMessageCommitted(run_id="run-1", timestamp=built[1].timestamp, message_id=name),
        UsageRecorded(run_id="run-1", timestamp=built[2].timestamp, usage=usage),
    ]
    for mine, theirs in zip(built, validated, strict=True):
        assert mine == theirs and type(mine) is type(theirs)
        assert list(mine.__dict__) == list(type(theirs).model_fields)  # every field, in order
        assert mine.model_dump_json() == theirs.model_dump_json()
        assert mine.timestamp.tzinfo is not None


def test_a_chat_request_built_by_the_runtime_equals_the_validated_one() -> None:
    messages = (Message(role="user", content="hi"),)
    specs = (add_spec := ToolSpec(name="add"),)
    built = chat_request("p", "m", messages, specs, ToolChoice.required(), "run-1")
    assert built == ChatRequest(
        provider="p", model="m", messages=messages, tools=specs, tool_choice=ToolChoice.required(), run_id="run-1"
    )
    assert list(built.__dict__) == list(ChatRequest.model_fields) and built.tools[0] is add_spec


def test_the_runtime_s_new_messages_equal_the_validated_ones() -> None:
    call = ToolCall(id="c1", name="add", arguments="{}")
    for role, extra in (("user", {}), ("assistant", {"tool_calls": (call,)}), ("tool", {"tool_call_id": "c1"})):
        built = new_message(role, "text", "run-1", **extra)  # type: ignore[arg-type]
        validated = Message(role=role, content="text", run_id="run-1", id=built.id, created_at=built.created_at, **extra)
        assert built == validated and list(built.__dict__) == list(Message.model_fields)
        assert built.model_dump_json() == validated.model_dump_json()
    first, second = new_message("user", "a", "r"), new_message("user", "a", "r")
    assert first.id != second.id and uuid.UUID(first.id).version == 4  # fresh ids, as new_id makes


def test_the_text_joiner_hands_plain_text_back_as_it_is_and_still_joins_split_pairs() -> None:
    joiner = TextJoiner()
    for text in ("ascii ", "déjà vu ", "😀 "):
        assert joiner.feed(text) is text
    assert joiner.feed("a\ud83d") == "a"  # the high surrogate is held
    assert joiner.feed("\ude00b") == "😀b"
