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


@pytest.fixture(scope="module")
def core_page(tiny_run, synth_dir, tmp_path_factory):
    """The page of a core-only submission (``submit --run``, no fusion), as the README's quick start makes it."""
    d = tmp_path_factory.mktemp("explain_core")
    work = d / "work"
    assert main(["submit", "--run", str(tiny_run), "--data", str(synth_dir / "test.bson"), "--out",
                 str(d / "sub.csv"), "--work", str(work), "--workers", "0", "-q"]) == 0
    out = d / "explain.html"
    assert main(["explain", "--work", str(work), "--labels", str(synth_dir / "test_labels.csv"), "--out", str(out),
                 "-q"]) == 0
    return out, d / "sub.csv"


def test_a_core_only_work_folder_gets_the_core_its_pictures_and_the_truth(core_page, synth_dir):
    from etalage.catalog.submission import read_id_category_csv

    page, submission = core_page
    text = page.read_text()
    records = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S).group(1))
    assert "core only: no fusion" in text and "fusion top-1" not in text and "fixed by fusion" not in text
    ids, cats = read_id_category_csv(submission)
    truth = dict(zip(*read_id_category_csv(synth_dir / "test_labels.csv"), strict=True))
    wrong = {int(i) for i, c in zip(ids, cats, strict=True) if truth[int(i)] != int(c)}
    assert len(records) == len(ids), "every product of a small set is shown"
    assert {r["id"] for r in records if r["status"] == "wrong"} == wrong, "wrong at core = the submission's errors"
    for r in records:
        assert r["fused"] is None and r["specialists"] == {} and r["moved"] == []
        assert len(r["core"]) == 5 and r["pictures"] and all(p["boxes"] == [] for p in r["pictures"])
        assert (r["core"][0][0] == r["truth"]) == (r["status"] == "right")
    summary = re.findall(r"<tr><td>[^<]+</td><td>(\d+)</td><td>([0-9.]+)</td></tr>", text)
    assert sum(int(n) for n, _ in summary) == len(ids)
    assert abs(sum(int(n) * float(t) for n, t in summary) - (len(ids) - len(wrong))) < 0.01 * len(summary)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it)")
def test_a_core_only_page_loads_and_filters_by_the_core(core_page, tmp_path):
    page, _ = core_page
    text = page.read_text()
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S).group(1))
    dom = _dom(page, tmp_path, "#status=wrong")
    assert int(re.search(r'data-shown="(\d+)"', dom).group(1)) == sum(r["status"] == "wrong" for r in data)
    rendered = re.sub(r"<script.*?</script>", "", dom, flags=re.S)  # the cards, not the script's templates
    assert rendered.count('<img src="data:image/jpeg;base64,') == sum(len(r["pictures"]) for r in data)
    assert len(re.findall(r'<div class="card (?:right|wrong)"', rendered)) == len(data)
    assert rendered.count("<h3>core</h3>") == len(data) and "fusion" not in rendered.replace("no fusion", "")
