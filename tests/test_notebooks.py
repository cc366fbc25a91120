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
