"""The executed notebooks as a person sees them (issue 10): converted to HTML with nbconvert,
loaded in a real headless Chromium, the timeline and marble SVGs measured in the rendered DOM,
and screenshots saved for a human to look at. Runs in the ``browser`` tox env (``.ci/run``
installs Debian's chromium when it is missing); elsewhere it is skipped."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

pytestmark = pytest.mark.skipif(
    os.environ.get("RXINVOKE_BROWSER_TESTS") != "1", reason="the browser tox env runs these"
)

MEASURE = """
<script>
(function () {
  var found = Array.prototype.map.call(document.querySelectorAll('svg[aria-label]'), function (svg) {
    var box = svg.getBoundingClientRect();
    return [svg.getAttribute('aria-label'), box.width, box.height];
  });
  var pre = document.createElement('pre');
  pre.id = 'rxi-sizes';
  pre.style.display = 'none';  // for --dump-dom only: the screenshot shows the notebook alone
  pre.textContent = JSON.stringify(found);
  document.body.appendChild(pre);
})();
</script>
"""


def chromium() -> str:
    """Chromium's path; Debian's package is installed when it is missing (as root)."""
    for _ in range(2):
        for name in ("chromium", "chromium-browser", "google-chrome"):
            path = shutil.which(name)
            if path:
                return path
        if os.geteuid() != 0:
            break
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, timeout=900)
    pytest.fail("no chromium on PATH (apt-get install chromium)")


def page(name: str, folder: Path) -> Path:
    import nbconvert
    import nbformat

    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    html, _ = nbconvert.HTMLExporter().from_notebook_node(book)
    # the measuring script is ours and added here only: no rxinvoke rendering has a script
    target = folder / f"{name}.html"
    target.write_text(html.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    return target


def run_chromium(*args: str) -> str:
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--window-size=1280,2400", "--virtual-time-budget=3000"]
    done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("name", "timelines", "diagrams"),
    [("quickstart", 2, 0), ("pipelines", 12, 5), ("stored-runs", 4, 0), ("testing", 1, 1)],
)
def test_the_notebooks_render_their_svgs_in_a_real_browser(
    name: str, timelines: int, diagrams: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = Path(os.environ.get("RXINVOKE_SCREENSHOTS", str(tmp_path_factory.mktemp("browser"))))
    folder.mkdir(parents=True, exist_ok=True)
    html = page(name, folder)
    dom = run_chromium("--dump-dom", html.as_uri())
    found = re.search(r'<pre id="rxi-sizes"[^>]*>(.*?)</pre>', dom, re.S)
    assert found, "the page did not render (no measurement)"
    sizes = json.loads(found.group(1).replace("&quot;", '"'))
    timeline_boxes = [(w, h) for label, w, h in sizes if label == "run timeline"]
    marble_boxes = [(w, h) for label, w, h in sizes if label == "marble diagram"]
    assert len(timeline_boxes) >= timelines and len(marble_boxes) >= diagrams
    assert all(w > 0 and h > 0 for w, h in timeline_boxes + marble_boxes)
    shot = folder / f"{name}.png"
    run_chromium(f"--screenshot={shot}", html.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
