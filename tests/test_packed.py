"""Packed event logs (MemoryStore's run logs), events as the event log keeps them until written
(kept / revive), and event batches (the log's writes)."""

from __future__ import annotations

import gc
import uuid
from collections.abc import Sequence

import pytest
from test_events import ALL_EXAMPLES, RUN

from rxinvoke import TextDelta
from rxinvoke.events import EventBase
from rxinvoke.stores._packed import (
    PLAIN_EVENTS,
    PackedLog,
    kept,
    pack_one,
    plain_values,
    revive,
    unpack,
)
from rxinvoke.stores.base import EventBatch, EventEnvelope, log_entries


def pack(events: Sequence[EventBase]) -> PackedLog:
    return tuple(pack_one(e) for e in events)  # type: ignore[arg-type]


def test_every_event_type_round_trips_equal_with_its_fields_in_order() -> None:
    restored = unpack(pack(ALL_EXAMPLES))
    assert restored == list(ALL_EXAMPLES)
    for before, after in zip(ALL_EXAMPLES, restored, strict=True):
        assert type(after) is type(before)
        assert list(after.__dict__) == list(before.__dict__)  # field order kept (dict(model))
        assert after.model_dump_json() == before.model_dump_json()


def test_unpack_from_an_index_skips_the_first_events() -> None:
    packed = pack(ALL_EXAMPLES)
    assert unpack(packed, 5) == list(ALL_EXAMPLES[5:])
    assert unpack(packed, len(ALL_EXAMPLES)) == []


def test_plain_events_become_tuples_and_events_holding_models_json() -> None:
    packed = pack(ALL_EXAMPLES)
    by_type = {e.type: item for e, item in zip(ALL_EXAMPLES, packed, strict=True)}
    assert isinstance(by_type["text_delta"], tuple)
    assert isinstance(by_type["run_started"], tuple)
    assert isinstance(by_type["chat_finished"], bytes)  # an enum and a TokenUsage
    assert isinstance(by_type["tool_execution_finished"], bytes)


def test_a_packed_log_is_untracked_by_the_garbage_collector_after_a_collection() -> None:
    events = [TextDelta(run_id=RUN, delta=f"t{i} ") for i in range(100)]
    packed = pack(events)
    gc.collect()
    gc.collect()  # the outer tuple is untracked once its items are
    assert not gc.is_tracked(packed)
    assert not any(gc.is_tracked(item) for item in packed)
    assert unpack(packed) == events


@pytest.mark.parametrize("event", ALL_EXAMPLES[:3], ids=lambda e: e.type)
def test_an_event_batch_is_a_sequence_of_envelopes_built_on_read(event: EventBase) -> None:
    session = uuid.uuid4()
    entries = [(RUN, str(session), 1, event), (RUN, str(session), 2, event)]
    batch = EventBatch(entries)
    assert len(batch) == 2
    assert batch[1] == EventEnvelope.of(event, RUN, session, 2)
    assert [e.seq for e in batch] == [1, 2]
    assert [e.event_id for e in batch[0:1]] == [f"{RUN}:1"]
    assert log_entries(batch) is entries  # stores that know batches take the entries as they are
    assert list(log_entries(list(batch))) == entries  # any other sequence of envelopes


def test_a_kept_event_is_its_plain_values_or_itself_and_revives_equal() -> None:
    plain = [e for e in ALL_EXAMPLES if type(e) in PLAIN_EVENTS]
    assert plain and len(plain) < len(ALL_EXAMPLES)
    for event in ALL_EXAMPLES:
        item = kept(event)
        if type(event) in PLAIN_EVENTS:
            assert item == pack_one(event) and type(item) is tuple  # a packed log's item
            assert plain_values(item) == event.__dict__  # type: ignore[arg-type]
            gc.collect()
            assert not gc.is_tracked(item)  # invisible to the GC once a collection saw it
        else:
            assert item is event
        assert kept(item) is item
        revived = revive(item)
        assert revived == event and type(revived) is type(event)
        assert pack_one(item) == pack_one(event)  # type: ignore[arg-type]
        if revived is not event:
            assert revived.__dict__ is not event.__dict__  # a copy: never one dict for two models


@pytest.mark.parametrize("event", ALL_EXAMPLES, ids=lambda e: e.type)
def test_an_event_batch_of_kept_entries_builds_the_same_envelopes(event: EventBase) -> None:
    session = uuid.uuid4()
    batch = EventBatch([(RUN, str(session), 1, kept(event))])  # type: ignore[arg-type]
    assert list(batch) == [EventEnvelope.of(event, RUN, session, 1)]  # type: ignore[arg-type]
