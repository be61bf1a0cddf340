"""report.html in a real browser: headless Chromium loads it from file://, with no network.

The fixture installs Debian's ``chromium`` when it is missing and we are root (apt-get);
otherwise the tests are skipped with the reason. Checks: no console messages (errors,
uncaught exceptions), the tables and every embedded image present and decoded, sortable
tables working, and a screenshot that is not blank.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipfair.stats.metrics import disparities, group_metrics
from clipfair.report.render import ReportContext, write_report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--enable-logging=stderr", "--v=0"]


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = _find_chromium()
    if path is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600, env=env)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, capture_output=True,
                           timeout=1200, env=env)
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"chromium is not installed and apt-get could not install it: {e}")
        path = _find_chromium()
    if path is None:
        pytest.skip("chromium is not installed (install Debian's 'chromium' package, or run the tests as root "
                    "so that the fixture installs it)")
    return path


def run_chromium(chromium: str, page: Path, tmp_path: Path, *extra: str) -> tuple[str, list[str]]:
    """(stdout, console lines) of one headless run with a fresh profile."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()
    proc = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


# a probe appended to a copy of the page: runs after load, records what rendered
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var th = document.querySelector('table.sortable th.num');
  var before = '', after = '';
  if (th) {
    var t = th.closest('table'), col = Array.prototype.indexOf.call(th.parentNode.children, th);
    before = t.tBodies[0].rows[0].children[col].textContent;
    th.click();  /* ascending */
    after = t.tBodies[0].rows[0].children[col].textContent;
  }
  document.body.setAttribute('data-probe', imgs.length + '/' + ok + '/' +
      document.querySelectorAll('table').length + '|' + before + '|' + after);
});
</script></body>"""


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    n = 300
    race = rng.choice(["White", "Black", "Latino_Hispanic", "Southeast Asian"], n)
    age = rng.choice(["3-9", "20-29", "more than 70"], n, p=[0.3, 0.6, 0.1])
    harm = rng.random(n) < np.where(race == "Black", 0.35, 0.05)
    true = rng.choice(["Male", "Female"], n)
    correct = rng.random(n) < np.where(race == "Southeast Asian", 0.6, 0.95)
    rows = []
    for i in range(n):
        rows.append({"image_id": str(i), "taxonomy": "gender", "method": "zero_shot", "predicted_category": "gender",
                     "predicted_label": true[i] if correct[i] else "x", "true_label": true[i],
                     "correct": bool(correct[i]), "race": race[i], "age": age[i], "gender": true[i]})
        rows.append({"image_id": str(i), "taxonomy": "probe", "method": "zero_shot",
                     "predicted_category": "non_human" if harm[i] else "human", "race": race[i], "age": age[i],
                     "gender": true[i]})
    preds = pd.DataFrame(rows)
    slices = ["overall", "race", "age", ("race", "gender")]
    met = group_metrics(preds, {"gender": ["gender"], "probe": ["human", "non_human"]}, slices=slices)
    harms = {"probe": {"non_human": True, "human": False}}
    out = tmp_path_factory.mktemp("report")
    ctx = ReportContext(title="clipfair results: test model", model="test model", demo=True,
                        header=[("model", "`test/model`"), ("images", "300 evaluated, 0 skipped")],
                        harms=harms, n_classes={"gender": 2})
    write_report(met, disparities(met, harms=harms), out, ctx)
    return out


def test_report_html_renders_in_chromium(chromium, report_dir, tmp_path):
    page = report_dir / "report.html"
    html = page.read_text(encoding="utf-8")
    n_png = len(list(report_dir.glob("*.svg")))  # the report's figures are SVG
    assert n_png >= 4 and html.count('<img src="data:image/svg+xml,') == n_png  # every plot, embedded
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing from the network
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE, 1), encoding="utf-8")
    dom, console = run_chromium(chromium, probe, tmp_path, "--dump-dom", "--virtual-time-budget=5000")
    assert console == [], console
    m = re.search(r'data-probe="(\d+)/(\d+)/(\d+)\|([^|]*)\|([^"]*)"', dom)
    assert m, dom[:500]
    n_img, n_ok, n_tables = int(m.group(1)), int(m.group(2)), int(m.group(3))
    assert n_img == n_png and n_ok == n_png  # every image decoded
    assert n_tables == html.count("<table") and n_tables >= 5
    assert m.group(4) and m.group(4) != m.group(5)  # a click on a header re-sorts the rows
    for text in ("Key findings", "Accuracy", "Predicted categories", "Largest differences between groups",
                 "toy model", "non_human (harm)", "chance"):
        assert text in dom, text
    # the page as the user sees it: a screenshot that is not blank
    shot = tmp_path / "shot.png"
    _, console = run_chromium(chromium, page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400",
                              "--hide-scrollbars")
    assert console == [], console
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("L"), dtype=float)
        rgb = np.asarray(im.convert("RGB"))
    assert arr.shape == (2400, 1280)
    assert arr.std() > 20  # text, tables and plots; a blank page has std 0
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 200
    assert (arr < 128).mean() > 0.01  # dark pixels: text


def test_console_errors_are_caught(chromium, tmp_path):
    """The console check above can fail: a page with a script error is reported."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>undefinedFunction();</script></body></html>")
    _, console = run_chromium(chromium, bad, tmp_path, "--dump-dom")
    assert any("undefinedFunction" in line for line in console)
