"""The notebooks under notebooks/ run as a newcomer would and show what they promise (issue 10):
every run rendered as an HTML run view with its SVG timeline and its final answer, marble
diagrams as SVG. (How long each takes is a benchmark figure, not an assertion: BENCHMARKS.md.)
Runs where the notebook extra (pandas) is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

pytest.importorskip("pandas", reason="the notebooks need the [notebook] extra (tox -e notebooks)")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def execute(name: str) -> Any:
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # timeout: a hang guard per cell, not a speed check
    nbclient.NotebookClient(book, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return book


def html_outputs(book: Any) -> list[str]:
    return [
        out["data"]["text/html"]
        for cell in book.cells if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "text/html" in out.get("data", {})
    ]


def test_every_notebook_is_checked() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == ["pipelines", "quickstart", "stored-runs", "testing"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("name", "answers", "views", "diagrams"),
    [
        ("quickstart", ["2 + 3 = 5.", "12 * 7 = 84."], 2, 0),
        ("pipelines", ["2 + 3 = 5.", "4 * 5 = 20."], 12, 5),
        ("stored-runs", ["7 * 6 = 42.", "2 + 3 = 5."], 4, 0),
        ("testing", ["hello"], 1, 1),
    ],
)
def test_a_notebook_runs_and_shows_its_runs(name: str, answers: list[str], views: int, diagrams: int) -> None:
    book = execute(name)
    html = html_outputs(book)
    run_views = [h for h in html if 'class="rxi-run-view"' in h]
    assert len(run_views) >= views
    for view in run_views:
        assert "<svg" in view and 'class="rxi-timeline"' in view and "rxi-transcript" in view
    for answer in answers:
        assert any(answer in view for view in run_views), answer
    assert sum('aria-label="marble diagram"' in h for h in html) >= diagrams
    assert not any("<script" in h.lower() for h in html)
    errors = [out for cell in book.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert errors == []


def test_the_saved_notebooks_hold_their_outputs() -> None:
    """The committed notebooks were executed: a person on GitHub sees the views unrun."""
    for name in ("quickstart", "stored-runs", "testing"):
        book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        assert any('class="rxi-run-view"' in h and "<svg" in h for h in html_outputs(book)), name
    pipelines = nbformat.read(NOTEBOOKS / "pipelines.ipynb", as_version=4)
    assert sum('aria-label="marble diagram"' in h for h in html_outputs(pipelines)) == 5
    testing = nbformat.read(NOTEBOOKS / "testing.ipynb", as_version=4)
    (view,) = [h for h in html_outputs(testing) if 'class="rxi-run-view"' in h]
    assert "35.00 s" in view  # the virtual-time run's timeline: saved since its events were stamped so


@pytest.mark.timeout(120)
def test_interrupting_a_cell_cancels_its_run_and_the_kernel_goes_on() -> None:
    """The kernel's stop button during ``await inv.emit(...)``, while the model is being called:
    the run ends cancelled (stored so), nothing is left running, and the next cell's run works
    — in a real kernel."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")

    def execute(code: str, interrupt_on: str | None = None) -> tuple[str, list[str]]:
        msg_id = client.execute(code)
        printed, errors = [], []
        while True:
            msg = client.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                printed.append(content["text"])
                if interrupt_on is not None and interrupt_on in content["text"]:
                    manager.interrupt_kernel()
            elif kind == "error":
                errors.append(content["ename"])
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(printed), errors

    try:
        _, errors = execute(
            "from rxinvoke import AgentRuntime, EmitRequest, RuntimeInvocation, ScriptedProvider\n"
            "from rxinvoke.providers import Pause\n"
            "provider = ScriptedProvider([[Pause(3600.0)], ScriptedProvider.text_turn('again')])\n"
            "runtime = AgentRuntime(providers=[provider])\n"
            "inv = RuntimeInvocation(runtime)\n"
            "events = []\n"
            "runtime.events.subscribe(events.append)\n"
            "inv.observe('model_started').subscribe(lambda e: print('model called', flush=True))\n"
            # ipykernel acts on an interrupt when its loop next wakes (ipykernel#881): a model
            # streaming (or a provider's keep-alive) wakes it; here a ticker stands for that
            "import asyncio\n"
            "def tick(): asyncio.get_running_loop().call_later(0.05, tick)\n"
            "tick()\n"
        )
        assert errors == []
        printed, errors = execute("await inv.emit(EmitRequest('wait'))", interrupt_on="model called")
        assert "model called" in printed and errors == ["CancelledError"]
        printed, errors = execute(
            "record = await runtime.store.get_run(events[0].run_id)\n"
            "print(events[-1].type, record.status, len(runtime._runs))\n"
            "print((await inv.emit(EmitRequest('next'))).output_text)\n"
        )
        said = printed.replace("model called\n", "").split()  # the next run calls it too
        assert errors == [] and said == ["run_cancelled", "cancelled", "0", "again"]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
