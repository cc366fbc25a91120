"""The event segment codec every durable store and the Redis run streams share: a run's
consecutive events as one JSON array, each agent twin that follows its chat event as ``null``."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydantic_core
import pytest
from test_events import ALL_EXAMPLES, CHAT_EXAMPLES, RUN, WHEN

from rxinvoke import AgentRuntime, EmitRequest, RuntimeInvocation, SqliteStore, TextDelta
from rxinvoke.errors import StoreError
from rxinvoke.events import ChatTextDelta, EventBase, InvocationEvent
from rxinvoke.providers.scripted import ScriptedProvider
from rxinvoke.stores._packed import kept, twin_item
from rxinvoke.stores._rows import TWINS, decode_segment, encode_segment, encode_typed
from rxinvoke.transports._wire import decode, segments_of


def _answering(text: str) -> ScriptedProvider:
    return ScriptedProvider([ScriptedProvider.text_turn(text, pieces=4)])


def _request() -> EmitRequest:
    return EmitRequest(provider="scripted", model="scripted", input="hi")


def _with_twins(events: tuple[EventBase, ...]) -> list[InvocationEvent]:
    """Each chat event followed by its agent twin, as the runtime publishes them."""
    out: list[InvocationEvent] = []
    for event in events:
        out.append(event)  # type: ignore[arg-type]
        twin = event.as_agent()
        if twin is not None and twin is not event:
            out.append(twin)
    return out


def test_the_twin_table_is_what_each_chat_event_as_agent_builds() -> None:
    overriding = {
        type(e) for e in CHAT_EXAMPLES if type(e).as_agent is not EventBase.as_agent
    }
    assert overriding == set(TWINS)  # every chat event with a twin is in the table
    for chat in CHAT_EXAMPLES:
        if type(chat) not in TWINS:
            continue
        twin_class, fields = TWINS[type(chat)]
        twin = chat.as_agent()
        assert type(twin) is twin_class
        expected = {"run_id", "timestamp", "type", *(field for field, _ in fields)}
        assert set(twin.__dict__) == expected  # the twin holds nothing the table misses
        for field, source in fields:
            assert getattr(twin, field) == getattr(chat, source)


def test_twins_are_encoded_once_and_decode_equal() -> None:
    events = _with_twins(ALL_EXAMPLES)
    text = encode_segment(events)
    items = json.loads(text)
    assert items.count(None) == len(TWINS)  # one twin per chat example with one
    assert all(items[i - 1]["type"].startswith("chat_") for i, item in enumerate(items) if item is None)
    assert len(text) < len(pydantic_core.to_json(events))
    restored = decode_segment(text)
    assert restored == events
    assert [type(e) for e in restored] == [type(e) for e in events]
    assert [e.model_dump_json() for e in restored] == [e.model_dump_json() for e in events]


def test_events_as_the_log_keeps_them_encode_to_the_same_segment() -> None:
    events = _with_twins(ALL_EXAMPLES)
    assert encode_segment([kept(e) for e in events]) == encode_segment(events)  # twins as null too


def _aliased(events: list[InvocationEvent]) -> list[object]:
    """``events`` as the event log keeps them, each text twin an alias of its fragment."""
    items: list[object] = []
    for event in events:
        item = kept(event)
        if type(event) is TextDelta and items and type(items[-1]) is tuple and twin_item(items[-1]) == item:
            item = items[-1]
        items.append(item)
    return items


def test_twin_aliases_as_the_log_keeps_them_encode_to_the_same_segment() -> None:
    events = _with_twins(ALL_EXAMPLES)
    items = _aliased(events)
    assert any(a is b for a, b in zip(items, items[1:], strict=False))  # the text twin is an alias
    assert encode_typed(items) == encode_typed(events)  # type: ignore[arg-type]
    assert decode_segment(encode_segment(items)) == events  # type: ignore[arg-type]


def test_an_alias_after_a_twin_is_spelled_out_not_a_null_after_a_null() -> None:
    chat = ChatTextDelta(run_id=RUN, timestamp=WHEN, delta="x")
    fragment = kept(chat)
    # published by hand: the fragment, its twin, and the twin again (the log aliases both)
    items = [fragment, fragment, fragment]
    expected = [chat, chat.as_agent(), chat.as_agent()]
    text, types = encode_typed(items)  # type: ignore[arg-type]
    assert json.loads(text)[1] is None and json.loads(text)[2] is not None
    assert types == ("chat_text_delta", "text_delta", "text_delta")
    assert decode_segment(text) == expected


def test_a_segment_with_every_twin_spelled_out_still_decodes() -> None:
    events = _with_twins(ALL_EXAMPLES)
    assert decode_segment(pydantic_core.to_json(events)) == events  # what earlier versions wrote


@pytest.mark.parametrize(
    "follower",
    [
        TextDelta(run_id=RUN, timestamp=WHEN, delta="other text"),
        TextDelta(run_id=RUN, timestamp=WHEN + timedelta(microseconds=1), delta="Hello"),
        TextDelta(run_id="another-run", timestamp=WHEN, delta="Hello"),
        # the same instant at another offset: equal as datetimes, not the same JSON
        TextDelta(run_id=RUN, timestamp=WHEN.astimezone(timezone(timedelta(hours=2))), delta="Hello"),
    ],
    ids=["other-delta", "other-time", "other-run", "other-offset"],
)
def test_an_agent_event_that_is_not_the_twin_is_encoded_whole(follower: TextDelta) -> None:
    chat = ChatTextDelta(run_id=RUN, timestamp=WHEN, delta="Hello")
    events: list[InvocationEvent] = [chat, follower]
    text = encode_segment(events)
    assert None not in json.loads(text)
    assert encode_segment([kept(chat), kept(follower)]) == text  # as the log keeps them
    restored = decode_segment(text)
    assert restored == events and restored[1].model_dump_json() == follower.model_dump_json()


@pytest.mark.parametrize(
    "text",
    [b"[null]", b'[{"type": "context_built", "run_id": "r", "timestamp": "2025-01-01T00:00:00Z", '
     b'"message_count": 1}, null]'],
    ids=["first", "after-a-non-chat-event"],
)
def test_a_null_that_follows_no_chat_fragment_is_refused(text: bytes) -> None:
    with pytest.raises(ValueError, match="follows no chat fragment"):
        decode_segment(text)


async def test_a_stored_segment_with_a_stray_null_is_a_store_error_naming_the_run(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SqliteStore(path) as store:
        runtime = AgentRuntime(providers=[_answering("fine")], store=store)
        output = await RuntimeInvocation(runtime).emit(_request())
        await runtime.aclose()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE event_segments SET events = '[null]'")
    conn.commit()
    conn.close()
    async with SqliteStore(path) as store:
        with pytest.raises(StoreError, match=f"run {output.run_id!r}: its stored event segment"):
            await store.read_events(output.run_id)


async def test_a_real_run_is_stored_with_its_twins_elided_and_read_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    seen: list[InvocationEvent] = []
    async with SqliteStore(path) as store:
        runtime = AgentRuntime(providers=[_answering("one two three four")], store=store)
        runtime.events.subscribe(seen.append)
        output = await RuntimeInvocation(runtime).emit(_request())
        stored = await store.read_events(output.run_id)
        await runtime.aclose()
    assert [e.event for e in stored] == seen
    conn = sqlite3.connect(path)
    rows = [json.loads(text) for (text,) in conn.execute("SELECT events FROM event_segments")]
    conn.close()
    written = [item for row in rows for item in row]
    fragments = sum(isinstance(e, ChatTextDelta) for e in seen)
    assert fragments >= 2 and written.count(None) == fragments  # every text_delta twin elided
    assert len(written) == len(seen)


def test_wire_segments_use_the_same_codec() -> None:
    session = uuid.uuid4()
    events = _with_twins(CHAT_EXAMPLES)
    entries = [(RUN, session, seq, e) for seq, e in enumerate(events, start=1)]
    [(run_id, segment)] = list(segments_of(entries))
    assert run_id == RUN and segment.types == tuple(e.type for e in events)
    assert json.loads(segment.events).count(None) == len(TWINS)
    envelopes = decode(RUN, session, segment, after_seq=2)
    assert [e.seq for e in envelopes] == list(range(3, len(events) + 1))
    assert [e.event for e in envelopes] == events[2:]


def test_a_stretch_cut_into_segments_at_an_alias_spells_the_twin_out_in_the_next() -> None:
    from rxinvoke.stores.base import Stretch
    from rxinvoke.transports._wire import MAX_SEGMENT, stretch_segments

    session = uuid.uuid4()
    events = [TextDelta(run_id=RUN, delta="lead")] + _with_twins(
        tuple(ChatTextDelta(run_id=RUN, delta=f"d{i}") for i in range(MAX_SEGMENT // 2 + 10))
    )
    items = _aliased(events)
    assert items[MAX_SEGMENT] is items[MAX_SEGMENT - 1]  # the cut falls on an alias
    stretch: Stretch = (RUN, str(session), 1, items)  # type: ignore[assignment]
    segments = [segment for _, segment in stretch_segments([stretch])]
    assert [(s.first_seq, s.last_seq) for s in segments] == [(1, MAX_SEGMENT), (MAX_SEGMENT + 1, len(events))]
    assert json.loads(segments[1].events)[0] is not None  # the twin is written whole there
    decoded = [e.event for s in segments for e in decode(RUN, session, s, after_seq=0)]
    assert decoded == events


def test_decoding_keeps_the_twin_s_moment_that_of_its_chat_event() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    events = _with_twins((ChatTextDelta(run_id=RUN, timestamp=moment, delta="x"),))
    restored = decode_segment(encode_segment(events))
    assert restored[1].timestamp == moment and restored[1].timestamp is restored[0].timestamp
