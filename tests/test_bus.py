"""EventBus: kind-indexed routing, fault-isolated observers, the errors stream, take_until."""

from __future__ import annotations

import pytest
import reactivex
from reactivex import operators as ops
from reactivex.testing import ReactiveTest, TestScheduler

from rxinvoke import (
    Control,
    EventKind,
    RunCompleted,
    RunStarted,
    SessionContext,
    SubscriberError,
    TextDelta,
    ToolCallStarted,
)
from rxinvoke._bus import EventBus
from rxinvoke.messages import FinishReason

on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed


def _delta(i: int, run_id: str = "r") -> TextDelta:
    return TextDelta(run_id=run_id, delta=str(i))


def _mixed() -> list:
    """A short run's worth of events of several kinds, in publication order."""
    return [
        RunStarted(run_id="r", session_id="s", provider="p", model="m"),
        _delta(0),
        ToolCallStarted(run_id="r", call_id="c1", tool_name="t"),
        _delta(1),
        _delta(2),
        RunCompleted(run_id="r", finish_reason=FinishReason.STOP, iterations=1),
    ]


def _collect_errors(bus: EventBus) -> list[SubscriberError]:
    errors: list[SubscriberError] = []
    bus.errors.subscribe(on_next=errors.append)
    return errors


# --- routing --------------------------------------------------------------------------------


def test_observers_get_only_their_kind_and_any_gets_everything_in_order() -> None:
    bus = EventBus()
    deltas: list = []
    tools: list = []
    everything: list = []
    bus.observe(EventKind.TEXT_DELTA).subscribe(on_next=deltas.append)
    bus.observe("tool_call_started").subscribe(on_next=tools.append)
    bus.observe(EventKind.ANY).subscribe(on_next=everything.append)
    events = _mixed()

    for event in events:
        bus.publish(event)

    assert everything == events
    assert [e.delta for e in deltas] == ["0", "1", "2"]
    assert all(e.type == "text_delta" for e in deltas)
    assert [e.call_id for e in tools] == ["c1"]


def test_observe_defaults_to_any() -> None:
    bus = EventBus()
    seen: list = []
    bus.observe().subscribe(on_next=seen.append)
    events = _mixed()
    for event in events:
        bus.publish(event)
    assert seen == events


def test_publish_without_observers_is_a_no_op() -> None:
    bus = EventBus()
    for event in _mixed():
        bus.publish(event)


def test_kind_observer_and_any_observer_both_see_an_event() -> None:
    bus = EventBus()
    order: list[str] = []
    bus.observe(EventKind.ANY).subscribe(on_next=lambda e: order.append("any"))
    bus.observe(EventKind.TEXT_DELTA).subscribe(on_next=lambda e: order.append("kind"))
    bus.publish(_delta(0))
    assert sorted(order) == ["any", "kind"]


@pytest.mark.parametrize("kind", ["nope", "TEXT_DELTA", "", "textdelta"])
def test_observe_unknown_kind_raises_value_error_naming_valid_kinds(kind: str) -> None:
    bus = EventBus()
    with pytest.raises(ValueError, match="valid kinds") as info:
        bus.observe(kind)
    assert "text_delta" in str(info.value)
    assert "run_started" in str(info.value)


def test_indexed_subscribers_come_and_go_beside_plain_ones() -> None:
    # publish skips the kind and run indexes while only plain subscribers listen: each kind of
    # subscription must switch them on when it comes and leave plain delivery when it goes
    bus = EventBus()
    every: list = []
    bus.observe(EventKind.ANY).subscribe(on_next=every.append)
    bus.publish(_delta(0))
    attachers = [
        (lambda sink: bus.observe(EventKind.TEXT_DELTA).subscribe(on_next=sink.append), ["1", "2"]),
        (lambda sink: bus.attach(EventKind.ANY, lambda event, context: sink.append(event)), ["1", "2"]),
        (lambda sink: bus.attach_run("r", lambda event, context: sink.append(event)), ["1"]),
    ]
    for attach, expected in attachers:
        sink: list = []
        subscription = attach(sink)
        bus.publish(_delta(1))
        bus.publish(_delta(2, run_id="other"))
        subscription.dispose()
        bus.publish(_delta(3))
        assert [e.delta for e in sink] == expected
    assert [e.delta for e in every] == ["0"] + ["1", "2", "3"] * 3


def test_an_event_of_a_class_of_its_own_reaches_its_kinds_subscribers() -> None:
    # the kind index is compiled per event class; a provider's subclass goes by its kind
    class Tagged(TextDelta):
        tag: str = "t"

    bus = EventBus()
    by_kind: list = []
    every: list = []
    bus.observe(EventKind.TEXT_DELTA).subscribe(on_next=by_kind.append)
    bus.attach(EventKind.ANY, lambda event, context: every.append(event))
    bus.observe(EventKind.RUN_STARTED).subscribe(on_next=by_kind.append)  # another kind: recompiled
    tagged, plain = Tagged(run_id="r", delta="x"), _delta(1)
    bus.publish(tagged)
    bus.publish(plain)
    assert by_kind == [tagged, plain] and every == [tagged, plain]


def test_run_subscriptions_alone_are_delivered_with_their_context() -> None:
    bus = EventBus()
    seen: list = []
    subscription = bus.attach_run("r", lambda event, context: seen.append((event.delta, context.run_id)))
    bus.publish(_delta(1))
    bus.publish(_delta(2, run_id="other"))
    subscription.dispose()
    bus.publish(_delta(3))
    assert seen == [("1", "r")]


# --- fault isolation ------------------------------------------------------------------------


def test_raising_observer_does_not_stop_later_observers_and_is_reported() -> None:
    bus = EventBus()
    errors = _collect_errors(bus)
    before: list = []
    after: list = []
    bus.observe(EventKind.ANY).subscribe(on_next=before.append)

    def explode(event: object) -> None:
        raise RuntimeError("boom")

    bus.observe(EventKind.ANY).subscribe(on_next=explode)
    bus.observe(EventKind.ANY).subscribe(on_next=after.append)
    events = [_delta(i) for i in range(3)]

    for event in events:
        bus.publish(event)  # never raises

    assert before == events
    assert after == events
    assert len(errors) == 3
    for error, event in zip(errors, events, strict=True):
        assert isinstance(error, SubscriberError)
        assert error.subscription == "observe(any)"
        assert error.event is event
        assert isinstance(error.cause, RuntimeError)
        assert "boom" in error.message


def test_raising_kind_observer_reports_its_kind_label() -> None:
    bus = EventBus()
    errors = _collect_errors(bus)
    later: list = []

    def explode(event: object) -> None:
        raise ValueError("bad delta")

    bus.observe("text_delta").subscribe(on_next=explode)
    bus.observe("text_delta").subscribe(on_next=later.append)
    event = _delta(7)
    bus.publish(event)

    assert later == [event]
    assert [(e.subscription, e.event) for e in errors] == [("observe(text_delta)", event)]


def test_raising_errors_observer_does_not_break_publish() -> None:
    bus = EventBus()

    def explode_on_error(error: SubscriberError) -> None:
        raise RuntimeError("errors observer broke")

    bus.errors.subscribe(on_next=explode_on_error)

    def explode(event: object) -> None:
        raise RuntimeError("observer broke")

    seen: list = []
    bus.observe(EventKind.ANY).subscribe(on_next=explode)
    bus.observe(EventKind.ANY).subscribe(on_next=seen.append)
    events = [_delta(i) for i in range(3)]
    for event in events:
        bus.publish(event)

    assert seen == events


def test_report_publishes_on_errors() -> None:
    bus = EventBus()
    errors = _collect_errors(bus)
    error = SubscriberError("x", subscription="s")
    bus.report(error)
    assert errors == [error]


def test_raising_operator_in_a_pipe_chain_is_reported_not_raised_into_publish() -> None:
    bus = EventBus()
    errors = _collect_errors(bus)
    mapped: list = []
    others: list = []

    def mapper(event: TextDelta) -> str:
        if event.delta == "1":
            raise KeyError("mapper failed")
        return event.delta

    bus.observe(EventKind.TEXT_DELTA).pipe(ops.map(mapper)).subscribe(on_next=mapped.append)
    bus.observe(EventKind.TEXT_DELTA).subscribe(on_next=others.append)
    events = [_delta(i) for i in range(3)]

    for event in events:
        bus.publish(event)

    assert mapped == ["0"]  # the chain ended with its error
    assert others == events
    assert len(errors) == 1
    assert errors[0].event is events[1]
    assert isinstance(errors[0].cause, KeyError)


def test_pipe_chain_with_on_error_receives_the_operator_error_itself() -> None:
    bus = EventBus()
    errors = _collect_errors(bus)
    received: list[Exception] = []

    def mapper(event: TextDelta) -> str:
        raise RuntimeError("nope")

    bus.observe().pipe(ops.map(mapper)).subscribe(on_error=received.append)
    bus.publish(_delta(0))

    assert [str(e) for e in received] == ["nope"]
    assert errors == []


# --- subscription lifecycle -----------------------------------------------------------------


def test_disposing_an_observe_subscription_stops_delivery() -> None:
    bus = EventBus()
    seen: list = []
    kept: list = []
    subscription = bus.observe(EventKind.TEXT_DELTA).subscribe(on_next=seen.append)
    bus.observe(EventKind.TEXT_DELTA).subscribe(on_next=kept.append)

    bus.publish(_delta(0))
    subscription.dispose()
    bus.publish(_delta(1))

    assert [e.delta for e in seen] == ["0"]
    assert [e.delta for e in kept] == ["0", "1"]


def test_observe_is_hot_late_subscribers_miss_earlier_events() -> None:
    bus = EventBus()
    bus.publish(_delta(0))
    seen: list = []
    bus.observe().subscribe(on_next=seen.append)
    bus.publish(_delta(1))
    assert [e.delta for e in seen] == ["1"]


def test_observe_composes_with_pipe() -> None:
    bus = EventBus()
    text: list[str] = []
    bus.observe("text_delta").pipe(
        ops.filter(lambda e: e.run_id == "a"),
        ops.map(lambda e: e.delta),
        ops.scan(lambda acc, d: acc + d, ""),
    ).subscribe(on_next=text.append)
    for i, run_id in enumerate(["a", "b", "a", "a"]):
        bus.publish(_delta(i, run_id))
    assert text == ["0", "02", "023"]


# --- take_until(control.cancelled) in virtual time -----------------------------------------


def test_take_until_control_cancelled_in_virtual_time() -> None:
    scheduler = TestScheduler()
    e1, e2, e3, e4 = (_delta(i) for i in range(4))
    source = scheduler.create_hot_observable(
        on_next(150, e1),  # before subscription (t=200): not seen
        on_next(210, e2),
        on_next(290, e3),
        on_next(310, e4),  # after the cancel: not seen
        on_completed(500),
    )
    control = Control()
    scheduler.schedule_absolute(300, lambda *_: control.cancel())

    results = scheduler.start(lambda: source.pipe(ops.take_until(control.cancelled)))

    assert results.messages == [on_next(210, e2), on_next(290, e3), on_completed(300)]
    assert source.subscriptions == [ReactiveTest.subscribe(200, 300)]
    assert control.is_cancelled


def test_take_until_already_cancelled_control_completes_at_subscription() -> None:
    scheduler = TestScheduler()
    source = scheduler.create_hot_observable(on_next(210, _delta(0)), on_completed(500))
    control = Control()
    control.cancel()

    results = scheduler.start(lambda: source.pipe(ops.take_until(control.cancelled)))

    assert results.messages == [on_completed(200)]


def test_take_until_cancel_of_a_control_copy_in_virtual_time() -> None:
    scheduler = TestScheduler()
    e1, e2 = _delta(1), _delta(2)
    source = scheduler.create_hot_observable(on_next(250, e1), on_next(450, e2))
    control = Control()
    twin = control.copy()
    scheduler.schedule_absolute(400, lambda *_: twin.cancel())

    results = scheduler.start(lambda: source.pipe(ops.take_until(control.cancelled)))

    assert results.messages == [on_next(250, e1), on_completed(400)]


def test_bus_observe_through_take_until_stops_on_cancel_in_virtual_time() -> None:
    scheduler = TestScheduler()
    bus = EventBus()
    control = Control()
    events = [_delta(i) for i in range(4)]
    for time, event in zip((210, 260, 320, 380), events, strict=True):
        scheduler.schedule_absolute(time, lambda *_, ev=event: bus.publish(ev))
    scheduler.schedule_absolute(300, lambda *_: control.cancel())

    results = scheduler.start(
        lambda: bus.observe(EventKind.TEXT_DELTA).pipe(ops.take_until(control.cancelled))
    )

    assert results.messages == [
        on_next(210, events[0]),
        on_next(260, events[1]),
        on_completed(300),
    ]


def test_observe_returns_an_observable() -> None:
    assert isinstance(EventBus().observe(), reactivex.Observable)


def test_complete_completes_observers_and_errors_and_drops_later_events() -> None:
    bus = EventBus()
    completed: list[str] = []
    seen: list[str] = []
    bus.observe(EventKind.ANY).subscribe(on_completed=lambda: completed.append("any"))
    bus.observe("text_delta").subscribe(
        on_next=lambda e: seen.append(e.type), on_completed=lambda: completed.append("text")
    )
    bus.errors.subscribe(on_completed=lambda: completed.append("errors"))
    bus.complete()
    bus.publish(TextDelta(run_id="r", delta="late"))
    bus.observe("text_delta").subscribe(on_completed=lambda: completed.append("late subscriber"))
    assert sorted(completed) == ["any", "errors", "late subscriber", "text"]
    assert seen == []


def test_plain_subscribers_see_every_event_first_and_no_context_is_looked_up() -> None:
    lookups: list[str | None] = []

    def context_for(run_id: str | None) -> SessionContext:
        lookups.append(run_id)
        return SessionContext(run_id=run_id)

    bus = EventBus(context_for=context_for)
    order: list[str] = []
    done: list[bool] = []
    plain = bus.attach_plain(lambda e: order.append(f"plain {e.type}"), lambda: done.append(True))
    bus.publish(_delta(0))
    assert order == ["plain text_delta"] and lookups == []  # nobody needed a context
    bus.attach(EventKind.ANY, lambda e, ctx: order.append(f"any {ctx.run_id}"))
    bus.publish(_delta(1))
    assert order[1:] == ["plain text_delta", "any r"] and lookups == ["r"]
    plain.dispose()
    bus.publish(_delta(2))
    assert order[3:] == ["any r"]
    again = bus.attach_plain(lambda e: None, lambda: done.append(True))
    bus.complete()
    assert done == [True]  # only the attached one is completed
    again.dispose()
