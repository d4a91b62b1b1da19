import json

import numpy as np
import pytest

from etalage.bench.covers import genre_taxonomy, title_word_recall
from etalage.catalog.listings import read_listing
from etalage.cli import main
from etalage.errors import DataError
from etalage.ocr.boxes import TextBox, box_quad


@pytest.fixture
def listings(shared_data, tmp_path):
    """Two small listings in the BookCover30 format: 3 genres, 16 + 6 books each."""
    rows = (shared_data / "book30-listing-dev.csv").read_text(encoding="utf-8").splitlines()
    by_class = {}
    for r in rows:
        by_class.setdefault(r.rsplit('","', 2)[1], []).append(r)
    chosen = [by_class[k] for k in sorted(by_class)[:3]]
    (tmp_path / "train.csv").write_text("\n".join(r for rs in chosen for r in rs[:16]) + "\n", encoding="utf-8")
    (tmp_path / "test.csv").write_text("\n".join(r for rs in chosen for r in rs[16:22]) + "\n", encoding="utf-8")
    return tmp_path / "train.csv", tmp_path / "test.csv"


def test_bench_bookcover_command(listings, tmp_path, capsys):
    train, test = listings
    out = tmp_path / "report.json"
    assert main(["bench", "bookcover", "--train-listing", str(train), "--test-listing", str(test), "--render",
                 "--out", str(out), "--ocr-engine", "tesseract", "-q"]) == 0
    report = json.loads(out.read_text())
    for key in ("title_baseline", "title", "ocr", "image", "fused"):
        assert {"top1", "top3", "n"} <= set(report[key]) and report[key]["n"] == 18
        assert 0 <= report[key]["top1"] <= report[key]["top3"] <= 1
    assert report["title"]["top1"] > 1 / 3, "better than chance over 3 genres"
    assert "rendered" in report["covers"] and "timings" in report
    assert 0 < report["reading"]["title_word_recall"] <= 1 and report["reading"]["pictures_per_s"] > 0
    assert (tmp_path / "report.png").stat().st_size > 1000 and "| fused |" in (tmp_path / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "EXAN title text" in printed and "fused" in printed


def test_bench_covers_cross_validates_real_album_covers(shared_data, tmp_path, capsys):
    albums = shared_data / "real-covers" / "albums-dev"
    rows = (albums / "listing.csv").read_text(encoding="utf-8").splitlines()
    small = tmp_path / "albums.csv"
    by_class = {}
    for r in rows:
        by_class.setdefault(r.rsplit('","', 1)[1], []).append(r)
    small.write_text("\n".join(r for rs in by_class.values() for r in rs[:12]) + "\n", encoding="utf-8")
    out = tmp_path / "albums.json"
    assert main(["bench", "covers", "--listing", str(small), "--images", str(albums / "images"), "--cv", "3",
                 "--ocr-engine", "tesseract", "--out", str(out), "-q"]) == 0
    report = json.loads(out.read_text())
    assert report["group"] == "MUSIQUE" and report["protocol"] == "3-fold CV" and "title" not in report
    assert report["image"]["n"] == 60 and len(report["folds"]) == 3 and report["image"]["top1_sd"] >= 0
    assert "letterboxed to 180x180" in report["covers"]


def test_title_word_recall_folds_accents_and_short_words():
    boxes = [[TextBox("PETIT", 1, box_quad(0, 0, 1, 1), None), TextBox("FUTE", 1, box_quad(0, 0, 1, 1), None)]]
    assert title_word_recall(boxes, ["Petit Futé Morbihan de"]) == (2 / 3, 2, 3)


def test_listing_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('"1","a.jpg","u","Title","Author","x","Arts"\n')
    with pytest.raises(DataError, match="line 1: class id 'x' is not an integer"):
        read_listing(bad)
    bad.write_text('"1","a.jpg","Title"\n')
    with pytest.raises(DataError, match="line 1: expected 7 fields"):
        read_listing(bad)
    with pytest.raises(DataError, match="cannot read listing"):
        read_listing(tmp_path / "missing.csv")
    bad.write_text('"1","a.jpg","u","T","A","4","Arts"\n"2","b.jpg","u","T","A","9","Law"\n')
    assert genre_taxonomy(read_listing(bad)).n_classes == 2
    assert np.array_equal(genre_taxonomy(read_listing(bad), "MUSIQUE").classes_under("MUSIQUE"), [0, 1])


def test_bench_needs_images_or_render(tmp_path, capsys):
    assert main(["bench", "bookcover", "--train-listing", "a", "--test-listing", "b", "--out", "r.json"]) == 1
    assert "exactly one of --images DIR or --render" in capsys.readouterr().err
