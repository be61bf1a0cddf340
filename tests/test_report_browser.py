"""Issue 21: the demo's report.html in a real browser (headless Chromium): its size (under 1 MB), how
many screens it is unfolded by default (under 10), a screenshot of its first screen
(``first_screen.png`` beside the report, checked not blank), and the time the report took to write.

Needs the Debian package ``chromium`` (``apt-get install -y chromium``; scripts/setup.sh installs it
where missing); skipped without it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

WIDTH, HEIGHT = 1280, 800  # one screen


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _flags(profile: str) -> list[str]:
    flags = ["--headless", "--disable-gpu", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
             f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=5000"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")
    return flags


def page_height(html: Path) -> int:
    """The page's scroll height in CSS pixels, as Chromium lays it out (folded sections closed)."""
    probe = html.with_name(".height_probe.html")
    text = html.read_text(encoding="utf-8")
    script = ("<script>window.addEventListener('load',function(){var p=document.createElement('pre');"
              "p.id='clipfair-height';p.textContent='HEIGHT='+document.documentElement.scrollHeight;"
              "document.body.appendChild(p);});</script>")
    probe.write_text(text.replace("</body>", script + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([chromium(), *_flags(profile), "--dump-dom", probe.as_uri()], capture_output=True,
                             text=True, timeout=120)
    probe.unlink()
    m = re.search(r"HEIGHT=(\d+)", out.stdout)
    assert m, f"no height from chromium: {out.stderr[-500:]}"
    return int(m.group(1))


def screenshot(html: Path, png: Path) -> Path:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), *_flags(profile), f"--screenshot={png}", html.as_uri()], capture_output=True,
                       timeout=120, check=True)
    return png


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="needs chromium (apt-get install -y chromium)")
def test_demo_report_in_a_browser(demo_run):
    out = demo_run
    wall = float((out / ".wall_s").read_text())
    html = out / "report.html"
    height = page_height(html)
    screens = height / HEIGHT
    shot = screenshot(html, out / "first_screen.png")
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (WIDTH, HEIGHT)
        assert len(set(im.convert("RGB").getdata())) > 20  # something was drawn
        grey = list(im.convert("L").getdata())
    assert sum(v < 128 for v in grey) > 0.01 * len(grey)  # dark pixels: text, not a blank page
    size = html.stat().st_size
    report_s = float(json.loads((out / "run.json").read_text())["timings_s"]["report"])
    print(f"report.html: {size / 1e6:.2f} MB, {screens:.1f} screens of {HEIGHT}px, run {wall:.0f} s "
          f"(report stage {report_s:.1f} s)")
    assert size < 1_000_000, f"report.html is {size / 1e6:.2f} MB"
    # figures are compact SVG embedded as text; every other plot (confusion matrices) is linked, not embedded
    assert '<img src="data:image/png' not in html.read_text()
    # writing the report (plots, summary.md, report.html): under 10 s on an idle machine; the bound here is
    # loose because the test machine is shared (the measured value is printed above)
    assert report_s < 60, f"report stage {report_s:.1f} s"
    # the first screens answer what differs and whether the model works (a working model's findings lead):
    # both before any folded section
    page = html.read_text()
    assert page.index("Key findings") < page.index("Does the model work?") < page.index('<details class="fold">')
    assert screens < 10, f"{screens:.1f} screens unfolded by default"
