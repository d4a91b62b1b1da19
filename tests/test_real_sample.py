"""The real thing: Cdiscount's public sample (train_example.bson, 82 products, 110 pictures) with the
real 5,270-class taxonomy, through index, info, hash, train, predict and a core-only submission; and
the OCR engines on real covers (skipped when ../shared/data is absent)."""

import json
from pathlib import Path

import numpy as np
import pytest

from etalage.catalog import Catalog, Taxonomy
from etalage.catalog.submission import read_id_category_csv
from etalage.cli import main
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample(shared_data, tmp_path_factory, monkeypatch_module):
    """The sample's dump and taxonomy; derived files go to this module's cache folder (../shared is
    read-only to etalage)."""
    monkeypatch_module.setenv("ETALAGE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    return shared_data / "cdiscount" / "train_example.bson", shared_data / "category_names.csv"


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_index_info_hash_on_the_real_sample(sample, capsys):
    dump, taxonomy = sample
    assert main(["index", str(dump), "--md5", "--taxonomy", str(taxonomy), "-q"]) == 0
    out = capsys.readouterr().out
    assert "82 products, 110 pictures" in out and "110 picture MD5s" in out
    assert not (dump.parent / "train_example.bson.idx.npz").exists(), "the input folder is never written to"
    assert main(["hash", str(dump), "-q"]) == 0
    capsys.readouterr()
    assert main(["info", str(dump), "--taxonomy", str(taxonomy), "-q"]) == 0
    out = capsys.readouterr().out
    assert "categories used 36" in out
    assert "TELEPHONIE - GPS" in out.split("level-1 distribution:")[1].splitlines()[1], "phone cases lead"
    tax = Taxonomy.load(taxonomy)
    assert tax.n_classes == 5270 and tax.n_level1 == 49 and tax.n_level2 == 483
    cat = Catalog.open(dump, tax, md5=True)
    assert len(cat) == 82 and len(cat.md5) == 110 and cat.has_labels
    assert len({bytes(m) for m in cat.md5}) <= 110


def test_train_predict_submit_on_the_real_sample(sample, tmp_path, capsys):
    dump, taxonomy = sample
    run = tmp_path / "run"
    args = ["train", "--train", str(dump), "--taxonomy", str(taxonomy), "--out", str(run), "--epochs", "1", "-q"]
    for key, value in TINY.items():
        if key != "workers":
            args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args) == 0
    assert main(["predict", "--run", str(run), "--data", str(dump), "--out", str(tmp_path / "pred"), "--topk", "5",
                 "-q"]) == 0
    import pyarrow.parquet as pq

    ranking = pq.read_table(tmp_path / "pred" / "ranking.parquet").to_pydict()
    assert len(ranking["category_id"]) == 82 * 5
    assert set(ranking["category_id"]) <= set(Taxonomy.load(taxonomy).category_ids.tolist())
    out = tmp_path / "submission.csv"
    assert main(["submit", "--run", str(run), "--data", str(dump), "--out", str(out), "-q"]) == 0
    ids, cats = read_id_category_csv(out)
    assert np.array_equal(ids, Catalog.open(dump).product_ids)
    assert set(cats.tolist()) <= set(Taxonomy.load(taxonomy).category_ids.tolist())


@pytest.fixture(scope="module")
def sample_covers(sample):
    from etalage.catalog.pictures import decode_picture

    dump, _ = sample
    truth = json.loads((ROOT / "benchmarks" / "data" / "cdiscount_sample_covers.json").read_text())
    keys = [k for k in truth if not k.startswith("_")]
    cat = Catalog.open(dump)
    pics = [decode_picture(cat.get(int(k.split("/")[0])).pictures[int(k.split("/")[1])]) for k in keys]
    return pics, [truth[k]["text"] for k in keys]


@pytest.mark.parametrize("name, floor", [("easyocr", 0.25), ("rapidocr", 0.25), ("tesseract", 0.15), (None, 0.45)])
def test_engines_read_real_covers(sample_covers, name, floor):
    from etalage.bench.covers import title_word_recall
    from etalage.ocr import load_engine

    pictures, texts = sample_covers
    boxes = load_engine(name).read(pictures)
    recall, found, total = title_word_recall(boxes, texts)
    assert recall >= floor, f"{name or 'default reading'} found {found}/{total} title words"
    for pic, bs in zip(pictures, boxes, strict=True):
        h, w = pic.shape[:2]
        for b in bs:
            assert -2 <= b.quad[:, 0].min() and b.quad[:, 0].max() <= w + 2 and b.quad[:, 1].max() <= h + 2
