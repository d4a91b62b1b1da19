"""`etalage explain`: the page is one self-contained HTML file that a real browser loads, shows the
pictures of, and filters (headless Chromium from Debian; skipped where it is not installed)."""

import json
import re
import shutil
import subprocess

import pytest

from etalage.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(fitted_pipeline, tmp_path_factory):
    fitted, synth_dir, work = fitted_pipeline
    out = tmp_path_factory.mktemp("explain") / "explain.html"
    assert main(["explain", "--work", str(work), "--labels", str(synth_dir / "test_labels.csv"), "--out", str(out),
                 "--ocr-cache", str(fitted / "ocr.sqlite"), "-q"]) == 0
    return out


def test_the_page_holds_everything(page):
    text = page.read_text()
    assert "data:image/jpeg;base64," in text and "http://" not in text and "https://" not in text
    assert "what moved fusion" in text and "fixed by fusion" in text
    assert ".card[hidden] { display: none; }" in text, "a filtered-out card is hidden despite display: flex"
    assert text.count('"status": ') >= 1 and '"moved": [["' in text, "features that moved fusion's choice"

    def refuse(constant):
        raise AssertionError(f"{constant} in the page's data: the browser's JSON.parse refuses it")

    data = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S).group(1)
    assert json.loads(data, parse_constant=refuse)


def _dom(page, tmp_path, fragment="", wait_for="data-shown="):
    """The page's DOM after its scripts ran. Pictures decode on Chromium's own threads, in real time, so
    on a loaded machine the virtual-time budget can end first: tried again (3 times) before failing."""
    for _ in range(3):
        res = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                              "--virtual-time-budget=20000", "--dump-dom", f"file://{page}{fragment}"],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        if wait_for in res.stdout:
            break
    return res.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it)")
def test_a_real_browser_loads_shows_pictures_and_filters(page, tmp_path):
    dom = _dom(page, tmp_path, wait_for="data-pictures-loaded=")
    # the rendered cards and pictures, not the page script's templates for them
    cards = len(re.findall(r'<div class="card (?:fixed|broken|wrong|right)"', dom))
    pictures = dom.count('<img src="data:image/jpeg;base64,')
    shown = int(re.search(r'data-shown="(\d+)"', dom).group(1))
    loaded = int(re.search(r'data-pictures-loaded="(\d+)"', dom).group(1))
    assert cards > 0 and shown == cards, "every card shown without a filter"
    assert pictures >= cards and loaded == pictures, "every picture decoded"
    dom = _dom(page, tmp_path, "#group=LIBRAIRIE")
    books = int(re.search(r'data-shown="(\d+)"', dom).group(1))
    assert 0 < books < cards and dom.count('data-group="LIBRAIRIE"') == books
    dom = _dom(page, tmp_path, "#status=right")
    right = int(re.search(r'data-shown="(\d+)"', dom).group(1))
    assert right < cards
