"""`etalage audit`: every product of the fold runs' dump scored out of fold, suspects sorted, the page opened
in a real browser; a single run audits its validation products only, and says so."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from etalage.catalog import Catalog
from etalage.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def audited(fold_sets, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "a"
    assert main(["audit", "--run", str(fold_sets / "a"), "--data", str(synth_dir / "train.bson"), "--out", str(out),
                 "--limit", "12", "--workers", "0", "-q"]) == 0
    return out


def test_every_product_is_scored_and_suspects_come_sorted(audited, synth_dir):
    report = json.loads((audited / "report.json").read_text())
    catalog = Catalog.open(synth_dir / "train.bson")
    assert report["scored"] == len(catalog) and "out of fold" in report["protocol"]
    with (audited / "suspects.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == report["flagged"] > 0
    scores = [float(r["suspicion"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    ids = set(catalog.product_ids.tolist())
    cats = dict(zip(catalog.product_ids.tolist(), catalog.category_ids.tolist(), strict=True))
    for r in rows:
        assert int(r["product_id"]) in ids and cats[int(r["product_id"])] == int(r["given_category_id"])
        assert r["given_category_id"] != r["suggested_category_id"]
        assert float(r["suggested_probability"]) > float(r["given_probability"])
    import pyarrow.parquet as pq

    table = pq.read_table(audited / "suspects.parquet").to_pydict()
    assert table["product_id"] == [int(r["product_id"]) for r in rows]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it)")
def test_the_page_opens_in_a_real_browser(audited, tmp_path):
    page = audited / "audit.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text
    for _ in range(3):
        res = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                              "--virtual-time-budget=20000", "--dump-dom", f"file://{page}"],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        if "data-pictures-loaded=" in res.stdout:
            break
    dom = res.stdout
    report = json.loads((audited / "report.json").read_text())
    cards = int(re.search(r'data-cards="(\d+)"', dom).group(1))
    loaded = int(re.search(r'data-pictures-loaded="(\d+)"', dom).group(1))
    assert cards == min(12, report["flagged"]) and loaded >= cards
    assert dom.count("filed under") == cards and "the core says" in dom


def test_a_single_run_audits_its_validation_products(tiny_run, synth_dir, tmp_path, capsys):
    out = tmp_path / "single"
    assert main(["audit", "--run", str(tiny_run), "--data", str(synth_dir / "train.bson"), "--out", str(out),
                 "--workers", "0", "-q"]) == 0
    assert "validation products only" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["scored"] == len(np.load(tiny_run / "val_positions.npy"))
    assert main(["audit", "--run", str(tiny_run), "--data", str(synth_dir / "test.bson"), "--out", str(out),
                 "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "audit the dump they were trained on" in err[0]
