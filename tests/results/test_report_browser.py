"""The rendered comparison as a reader opens it: every picture embedded and decodable, and the
page drawn by a real headless browser (Debian's ``chromium``) into a screenshot that is not blank.

CI installs chromium (``apt-get install -y chromium``) and must run this test: there, a missing
browser fails it. Elsewhere it is skipped when no browser is installed.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tree
from PIL import Image
from record_factory import predictions_for, write_per_tile, write_runs_with_visuals

from loveda_utils.results.report import render_comparison
from loveda_utils.results.store import load_records

pytestmark = pytest.mark.slow

#: Executable names of a Chromium-based browser, Debian's first.
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
#: The window the page is photographed in (a laptop-wide column, several screens tall).
WINDOW = (1400, 4000)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture
def browser() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        message = (
            f"no headless browser found (looked for {', '.join(BROWSERS)} on PATH); install it "
            "with `apt-get update && apt-get install -y chromium`"
        )
        if _in_ci():
            pytest.fail(f"{message}: CI must install it to check the rendered report")
        pytest.skip(message)
    return found


def screenshot(browser: str, page: Path, png: Path, profile: Path) -> np.ndarray:
    """The page as ``browser`` draws it in a :data:`WINDOW` window (grey levels)."""
    width, height = WINDOW
    proc = subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={png}",
            f"--window-size={width},{height}", page.resolve().as_uri(),
        ],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert png.is_file(), f"{browser} wrote no screenshot (exit {proc.returncode}):\n{proc.stderr}"
    return np.asarray(Image.open(png).convert("L"), dtype=np.float64)


def embedded_images(html: str) -> list[Image.Image]:
    """Every ``<img>`` of the page, decoded from its data URI (a broken one fails here)."""
    pictures = []
    for n, tag in enumerate(re.findall(r"<img\b[^>]*>", html)):
        source = re.search(r'\bsrc="([^"]*)"', tag)
        assert source, f"<img> #{n} has no src: {tag[:120]}"
        uri = source.group(1)
        assert uri.startswith("data:image/"), f"<img> #{n} is not embedded: {uri[:80]}"
        header, _, data = uri.partition(",")
        assert header.endswith(";base64"), f"<img> #{n}: {header} is not base64"
        try:
            picture = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
            picture.load()
        except (binascii.Error, OSError) as err:
            pytest.fail(f"<img> #{n} ({header}) does not decode: {err}")
        pictures.append(picture)
    return pictures


def test_the_rendered_report_in_a_browser(tmp_path: Path, browser: str) -> None:
    tree = write_tree(tmp_path / "loveda", splits=("Val",), n=2, size=64)
    results = tmp_path / "results"
    write_runs_with_visuals(results, tree)
    for record in load_records(results)[0]:  # the per-tile matrices the differences come from
        write_per_tile(record["_run_dir"], tree, predictions_for(tree))
    html_path = render_comparison(results, data_root=tree, max_tiles=2)["html"]
    html = html_path.read_text(encoding="utf-8")

    pictures = embedded_images(html)
    assert len(pictures) >= 5  # heatmap, urban vs rural, speed, differences, segmentations
    for picture in pictures:
        assert min(picture.size) >= 100, picture.size  # drawn at a size one can read
        assert np.asarray(picture.convert("L")).std() > 5  # a chart, not an empty canvas
    # The segmentation visuals fill the page's width, each panel large enough to read.
    assert max(p.size[0] for p in pictures) >= 1000

    shot = screenshot(browser, html_path, tmp_path / "page.png", tmp_path / "profile")
    assert shot.shape == (WINDOW[1], WINDOW[0])
    # Not blank: text, tables and charts vary the page, screen after screen.
    assert shot.std() > 20, f"the screenshot is nearly uniform (std {shot.std():.1f})"
    first_screen = shot[:900]
    assert first_screen.std() > 20 and (first_screen < 100).mean() > 0.005  # dark text on top
