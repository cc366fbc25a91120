"""The notebook layer's renderings, parsed (issue 10): RunView, Events, value HTML, tables."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rxinvoke import (
    AgentRuntime,
    EmitRequest,
    InvocationEvent,
    OfflineProvider,
    RuntimeInvocation,
    RunView,
    ScriptedProvider,
    SqliteStore,
    builtin_tools,
    to_dataframe,
    to_records,
    tool,
)
from rxinvoke.notebook import Events, install, to_html
from rxinvoke.notebook._timeline import FAILURE_COLOUR

REPO_ROOT = Path(__file__).resolve().parents[1]
SVG = "{http://www.w3.org/2000/svg}"
EVIL = "<script>alert(1)</script><img src=x onerror=alert(2)>"


class Tags(HTMLParser):
    """Every start tag (with attributes) and the text, to assert on structure."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Tags:
    parser = Tags()
    parser.feed(html)
    parser.close()
    return parser


def svg_of(html: str) -> ET.Element:
    start = html.index("<svg")
    end = html.index("</svg>") + len("</svg>")
    return ET.fromstring(html[start:end])


def groups(svg: ET.Element, klass: str) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if klass in (g.get("class") or "").split()]


async def offline_run() -> tuple[RuntimeInvocation, list[InvocationEvent], Any]:
    inv = RuntimeInvocation(AgentRuntime(providers=[OfflineProvider()], tools=builtin_tools()))
    events: list[InvocationEvent] = []
    inv.observe().subscribe(events.append)
    out = await inv.emit(EmitRequest("what is 2 + 3?"))
    return inv, events, out


async def test_a_run_view_has_header_transcript_timeline_and_events() -> None:
    inv, events, out = await offline_run()
    view = await inv.view(out.run_id)
    html = view.html()
    tags = parse(html)
    text = "".join(tags.text)
    assert "completed" in text and "2 + 3 = 5." in text and "what is 2 + 3?" in text
    assert "11 / 13 / 24" in text  # tokens in/out/total
    svg = svg_of(html)
    assert len(groups(svg, "rxi-model-call")) == 2
    assert len(groups(svg, "rxi-tool-execution")) == 1
    titles = [t.text or "" for t in svg.iter(f"{SVG}title")]
    assert any(t.startswith("execute_tool calculate") and " ms" in t for t in titles)
    assert any(t.startswith("chat offline") and "first fragment" in t for t in titles)
    assert int(svg.get("width") or 0) > 0 and int(svg.get("height") or 0) > 0
    assert not any(tag == "script" for tag, _ in tags.tags)
    # chat-stream twins collapsed by default, shown with chat=True
    assert "chat_text_delta" not in html and "chat-stream twins hidden" in html
    assert "chat_text_delta" in (await inv.view(out.run_id, chat=True)).html()
    data, metadata = view._repr_mimebundle_()
    assert set(data) == {"text/plain", "text/html", "application/json"}
    assert data["application/json"]["status"] == "completed" and metadata["application/json"] == {"expanded": False}
    assert data["text/plain"].startswith(f"RunView(run {out.run_id[:8]}, completed")


def test_overlapping_tools_get_lanes_and_failures_are_red() -> None:
    from tests_support_spans import one_run_with_overlapping_tools  # type: ignore[import-not-found]

    view = RunView.from_events(one_run_with_overlapping_tools())
    svg = svg_of(view.html())
    tools = groups(svg, "rxi-tool-execution")
    ys = sorted({float(g.find(f"{SVG}rect").get("y")) for g in tools})  # type: ignore[union-attr]
    assert len(ys) == 2  # two lanes: the overlapping executions do not share a row
    failed = groups(svg, "rxi-error")
    assert len(failed) == 1 and failed[0].find(f"{SVG}rect").get("fill") == FAILURE_COLOUR  # type: ignore[union-attr]
    assert "404" in (failed[0].find(f"{SVG}title").text or "")  # type: ignore[union-attr]


def test_a_run_view_of_envelopes_is_the_view_of_their_events() -> None:
    import uuid

    from tests_support_spans import one_run_with_overlapping_tools

    from rxinvoke.stores import EventEnvelope

    events = one_run_with_overlapping_tools()
    session = uuid.uuid4()
    envelopes = [EventEnvelope.of(e, e.run_id or "", session, seq) for seq, e in enumerate(events, 1)]
    view, expected = RunView.from_events(envelopes), RunView.from_events(events)  # as observe_run gives them
    assert list(view.events) == list(expected.events) and view.spans == expected.spans
    assert view.status == expected.status and view.run_id == expected.run_id


async def test_every_renderer_escapes_model_tool_and_user_text() -> None:
    @tool
    def echo(text: str) -> str:
        """Echo."""
        return text

    provider = ScriptedProvider([
        ScriptedProvider.tool_call_turn("echo", {"text": EVIL}),
        ScriptedProvider.text_turn(EVIL),
    ])
    inv = RuntimeInvocation(AgentRuntime(providers=[provider], tools=[echo]))
    events: list[InvocationEvent] = []
    inv.observe().subscribe(events.append)
    out = await inv.emit(EmitRequest(EVIL))
    view = await inv.view(out.run_id)
    record = await inv.runtime.store.get_run(out.run_id)
    envelopes = await inv.runtime.store.read_events(out.run_id)
    history = await inv.runtime.history(out.session_id)
    renderings = [view.html(), Events(events)._repr_html_() or "", to_html(out), to_html(record)]
    renderings += [to_html(e) for e in events] + [to_html(e) for e in envelopes] + [to_html(m) for m in history]
    for html in renderings:
        assert "<script" not in html.lower() and "<img" not in html.lower()
        tags = parse(html)
        assert not any(tag in ("script", "img") for tag, _ in tags.tags)
        assert not any(name.startswith("on") for _, attrs in tags.tags for name in attrs)
    assert "&lt;script&gt;" in view.html()


def test_a_failing_renderer_falls_back_to_plain_text(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from tests_support_spans import one_run_with_overlapping_tools

    import rxinvoke.notebook.view as view_module

    def broken(spans: Any) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(view_module, "timeline_svg", broken)
    view = RunView.from_events(one_run_with_overlapping_tools())
    with caplog.at_level(logging.ERROR, logger="rxinvoke"):
        data, _ = view._repr_mimebundle_()
        assert view._repr_html_() is None
    assert set(data) == {"text/plain"}
    assert "rendering a RunView failed" in caplog.text


def test_values_render_through_ipythons_formatter() -> None:
    from IPython.core.formatters import DisplayFormatter
    from tests_support_spans import one_run_with_overlapping_tools

    formatter = DisplayFormatter()
    assert install(SimpleNamespace(display_formatter=formatter))
    event = one_run_with_overlapping_tools()[6]
    data, _ = formatter.format(event)
    assert "text/html" in data and "tool_execution_finished" in data["text/html"]
    assert data["text/plain"] == repr(event)


def _run_in_another_process(db: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "rxinvoke", "run", "what is 6 * 7?", "--delay", "0", "--db", str(db)],
        check=True, capture_output=True, cwd=REPO_ROOT, timeout=60,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8"},
    )


async def test_a_view_of_a_run_stored_by_another_process(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    _run_in_another_process(db)
    async with SqliteStore(db) as store:
        run_id = (await store.list_runs())[0].run_id
        view = await RunView.load(store, run_id)
    assert view.status == "completed" and "6 * 7 = 42." in view.html()
    assert view.summary()["input"] == "what is 6 * 7?"


async def test_records_collapse_twins_and_keep_common_columns() -> None:
    inv, events, out = await offline_run()
    records = to_records(events)
    assert all(set(r) == set(records[0]) for r in records)
    assert not any(r["type"].startswith("chat_") and r["type"] not in ("chat_started", "chat_finished") for r in records)
    assert "".join(r["text"] for r in records if r["type"] == "text_delta") == out.output_text
    finished = next(r for r in records if r["type"] == "tool_execution_finished")
    assert (finished["tool_name"], finished["status"], finished["text"]) == ("calculate", "success", "5")
    assert records[0]["timestamp"].endswith("+00:00")
    with_chat = to_records(events, chat=True)
    assert len(with_chat) == len(events)
    envelopes = await inv.runtime.store.read_events(out.run_id)
    assert [r["seq"] for r in to_records(envelopes)][:3] == [1, 2, 3]


async def test_to_dataframe_with_and_without_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    _, events, _ = await offline_run()
    try:
        import pandas  # noqa: F401
    except ImportError:
        pass
    else:
        frame = to_dataframe(events)
        assert len(frame) == len(to_records(events)) and str(frame["timestamp"].dtype).startswith("datetime64")
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"rxinvoke\[notebook\]"):
        to_dataframe(events)


def test_events_render_as_a_compact_elided_table() -> None:
    from tests_support_spans import one_run_with_overlapping_tools

    many = Events(one_run_with_overlapping_tools() * 20)
    html = many._repr_html_() or ""
    assert "more events" in html and html.count("<details>") == 120  # 60 first, 60 last
    assert repr(many).startswith("Events(260:")


# --- live() and marbles() -----------------------------------------------------------------------


class FakeDisplay:
    """IPython's display/update_display, recorded."""

    def __init__(self) -> None:
        self.shown: dict[str, list[Any]] = {}

    def display(self, obj: Any, *, display_id: str) -> None:
        self.shown.setdefault(display_id, []).append(obj)

    def update(self, obj: Any, *, display_id: str) -> None:
        assert display_id in self.shown, "update before display"
        self.shown[display_id].append(obj)


async def test_live_shows_each_run_throttled_and_ends_on_its_final_state() -> None:
    from reactivex.testing import TestScheduler

    from rxinvoke.notebook import live
    from rxinvoke.testing import advance

    clock = TestScheduler()
    answer = " ".join(f"w{i}" for i in range(100))
    provider = ScriptedProvider(
        [ScriptedProvider.text_turn(answer, pieces=100), ScriptedProvider.text_turn("second")],
        delay=0.01, scheduler=clock,
    )
    inv = RuntimeInvocation(AgentRuntime(providers=[provider], scheduler=clock))
    screen = FakeDisplay()
    with live(inv, display=screen.display, update=screen.update) as view:
        first = asyncio.ensure_future(inv.emit(EmitRequest("one")))
        await advance(clock, 2.0)
        await first
        second = asyncio.ensure_future(inv.emit(EmitRequest("two")))
        await advance(clock, 1.0)
        await second
    assert len(screen.shown) == 2  # one output per run
    outputs = list(screen.shown.values())
    final = outputs[0][-1]
    assert isinstance(final, RunView) and final.status == "completed" and final.text == answer
    assert outputs[1][-1].status == "completed" and outputs[1][-1].text == "second"
    # ~1 s of streaming at most 10 updates per second (+ the first display and the final one)
    assert len(outputs[0]) <= 13 and view.updates <= 15


async def test_live_of_a_pipeline_shows_its_latest_item() -> None:
    from reactivex.subject import Subject

    from rxinvoke.notebook import live

    screen = FakeDisplay()
    source: Subject[str] = Subject()
    handle = live(source, interval=0.0, display=screen.display, update=screen.update)
    for text in ("a", "ab", "abc"):
        source.on_next(text)
    handle.dispose()
    (shown,) = screen.shown.values()
    assert repr(shown[-1]) == "'abc'" and "&#x27;abc&#x27;" in shown[-1]._repr_html_()


async def test_marbles_record_lanes_on_the_loop_and_render_svg() -> None:
    from reactivex import operators as ops
    from reactivex.testing import TestScheduler

    from rxinvoke import text_of, throttle_latest
    from rxinvoke.notebook import marbles
    from rxinvoke.testing import advance

    clock = TestScheduler()
    provider = ScriptedProvider([ScriptedProvider.text_turn("a b c d e f", pieces=6)], delay=0.05, scheduler=clock)
    inv = RuntimeInvocation(AgentRuntime(providers=[provider], scheduler=clock))
    stream = inv.stream(EmitRequest("go"))
    deltas = stream.pipe(text_of())
    lanes = {"deltas": deltas, "throttled": deltas.pipe(throttle_latest(0.1, scheduler=clock)), "kinds": stream.pipe(ops.filter(lambda e: e.type == "run_completed"))}
    recording = asyncio.ensure_future(marbles(lanes, until=1.0, scheduler=clock))
    await advance(clock, 1.5)
    diagram = await recording
    assert [m.label for m in diagram.lanes["deltas"] if m.kind == "N"] == ["a ", "b ", "c ", "d ", "e ", "f"]
    assert diagram.lanes["deltas"][-1].kind == "C"
    assert 2 <= sum(m.kind == "N" for m in diagram.lanes["throttled"]) < 6
    assert [m.label for m in diagram.lanes["kinds"] if m.kind == "N"] == ["run_completed"]
    svg = ET.fromstring(diagram.svg())
    assert len(groups(svg, "rxi-marble")) == sum(m.kind == "N" for marks in diagram.lanes.values() for m in marks)
    assert len(groups(svg, "rxi-completed")) == 3


def test_a_test_schedulers_messages_draw_the_same_picture() -> None:
    from reactivex.testing import ReactiveTest, TestScheduler

    from rxinvoke import throttle_latest
    from rxinvoke.notebook import MarbleDiagram

    scheduler = TestScheduler()
    source = scheduler.create_hot_observable(
        ReactiveTest.on_next(201, "a"), ReactiveTest.on_next(203, "b"), ReactiveTest.on_error(230, ValueError("x"))
    )
    results = scheduler.start(lambda: source.pipe(throttle_latest(10, scheduler=scheduler)))
    diagram = MarbleDiagram.from_messages({"throttled": results.messages}, start=200)
    assert [(m.time, m.kind, m.label) for m in diagram.lanes["throttled"]] == [(1, "N", "a"), (11, "N", "b"), (30, "E", "x")]
    svg = ET.fromstring(diagram._repr_html_())
    assert len(groups(svg, "rxi-error")) == 1


def test_marble_labels_and_subscription_stats_render_escaped() -> None:
    from rxinvoke import SubscriptionStats
    from rxinvoke.notebook import MarbleDiagram
    from rxinvoke.notebook.marbles import Mark

    diagram = MarbleDiagram({EVIL: [Mark(0.1, "N", EVIL, "#000"), Mark(0.2, "E", EVIL, "#f00")]})
    html = diagram._repr_html_() or ""
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;" in html
    ET.fromstring(html)  # well-formed SVG
    stats = to_html(SubscriptionStats(delivered=3, dropped=1))
    assert "delivered 3" in stats and "dropped 1" in stats
