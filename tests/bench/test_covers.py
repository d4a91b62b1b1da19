import json

import pytest

from etalage.bench.covers import genre_taxonomy, read_listing
from etalage.cli import main
from etalage.errors import DataError


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
    for key in ("title", "ocr", "image", "fused"):
        assert set(report[key]) == {"top1", "top3", "n"} and report[key]["n"] == 18
        assert 0 <= report[key]["top1"] <= report[key]["top3"] <= 1
    assert report["title"]["top1"] > 1 / 3, "better than chance over 3 genres"
    assert "rendered" in report["covers"] and "timings" in report
    assert (tmp_path / "report.confusion.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "EXAN title text" in printed and "etalage fused" in printed


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


def test_bench_needs_images_or_render(tmp_path, capsys):
    assert main(["bench", "bookcover", "--train-listing", "a", "--test-listing", "b", "--out", "r.json"]) == 1
    assert "exactly one of --images DIR or --render" in capsys.readouterr().err
