"""The real product photos (../shared/data/real-products: fashion catalogue photos, grocery store photos)
through pack, a tiny time-boxed train, a core-only submission and its score; and pack's bad inputs on
them, each one line (skipped when ../shared/data is absent)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from etalage.catalog import Catalog, Taxonomy
from etalage.catalog.submission import read_id_category_csv
from etalage.cli import main
from tests.conftest import TINY

SETS = ("fashion-dev", "grocery-dev")


def _subset(src, dest, n, offset=0):
    """The first product of each class, then every k-th product, up to ``n``: a listing of real rows."""
    with (src / "listing.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1 + offset:]
    seen, picked = set(), []
    for r in body:
        if r[1] not in seen:
            seen.add(r[1])
            picked.append(r)
    picked += body[:: max(1, len(body) // n)][: max(0, n - len(picked))]
    picked = sorted({r[0]: r for r in picked}.values(), key=lambda r: int(r[0]))[:n]
    with dest.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(picked)
    return dest


@pytest.mark.parametrize("name", SETS)
def test_pack_train_submit_score_on_real_photos(shared_data, tmp_path, name, capsys):
    src = shared_data / "real-products" / name
    train_listing = _subset(src, tmp_path / "train.csv", 240)
    test_listing = _subset(src, tmp_path / "test.csv", 60, offset=5000 if name == "fashion-dev" else 700)
    assert main(["pack", "--listing", str(train_listing), "--images", str(src / "images"), "--taxonomy",
                 str(src / "category_names.csv"), "--out", str(tmp_path / "d" / "train.bson"), "--size", "180",
                 "-q"]) == 0
    assert main(["pack", "--listing", str(test_listing), "--images", str(src / "images"), "--taxonomy",
                 str(src / "category_names.csv"), "--out", str(tmp_path / "d" / "test.bson"), "--size", "180",
                 "--no-labels", "-q"]) == 0
    out = capsys.readouterr().out
    assert "pictures/s" in out and "answer key" in out
    train = Catalog.open(tmp_path / "d" / "train.bson")
    assert len(train) >= 200 and train.has_labels and not Catalog.open(tmp_path / "d" / "test.bson").has_labels
    tax = Taxonomy.load(tmp_path / "d" / "category_names.csv")
    assert set(train.category_ids.tolist()) <= set(tax.category_ids.tolist())
    run = tmp_path / "run"
    args = ["train", "--train", str(tmp_path / "d" / "train.bson"), "--out", str(run), "--max-minutes", "0.15", "-q"]
    for key, value in TINY.items():
        if key != "workers":
            args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args) == 0
    assert (run / "curves.png").exists()
    sub = tmp_path / "sub.csv"
    assert main(["submit", "--run", str(run), "--data", str(tmp_path / "d" / "test.bson"), "--out", str(sub),
                 "-q"]) == 0
    ids, cats = read_id_category_csv(sub)
    assert np.array_equal(ids, Catalog.open(tmp_path / "d" / "test.bson").product_ids)
    assert main(["score", "--submission", str(sub), "--labels", str(tmp_path / "d" / "test_labels.csv")]) == 0
    assert "product top-1 accuracy" in capsys.readouterr().out


def test_pack_refuses_bad_real_rows_in_one_line(shared_data, tmp_path, capsys):
    src = shared_data / "real-products" / "fashion-dev"
    good = _subset(src, tmp_path / "good.csv", 6).read_text().splitlines()
    cases = {
        "missing picture": (good[:2] + ["99999991,2000000062,no-such-photo.jpg,x"], "line 3", "not found"),
        "category outside": (good[:2] + ["99999992,7,1163.jpg,x"], "line 3: category_id 7", "taxonomy"),
        "rows apart": (good[:3] + [good[1]], "line 4", "put the rows of a product together"),
        "no picture column": (["_id,category_id,title", "1163,2000000062,x"], "line 1", "no column picture"),
    }
    for case, (lines, where, why) in cases.items():
        listing = tmp_path / f"{case}.csv"
        listing.write_text("\n".join(lines) + "\n")
        out = tmp_path / "bad" / f"{case}.bson"
        code = main(["pack", "--listing", str(listing), "--images", str(src / "images"), "--taxonomy",
                     str(src / "category_names.csv"), "--out", str(out), "-q"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and where in err[0] and why in err[0], (case, err)
        assert not out.exists(), case
