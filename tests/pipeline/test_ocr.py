import bson
import numpy as np
import pytest

from etalage.catalog import Catalog, Taxonomy
from etalage.cli import main
from etalage.compute import Compute
from etalage.errors import ConfigError
from etalage.ocr.cache import OcrCache
from etalage.pipeline.ocr import OcrJob, run_ocr, select_products


def test_ocr_command_fills_the_cache_and_resumes(synth_dir, tmp_path, capsys):
    cache = tmp_path / "ocr.sqlite"
    argv = ["ocr", "--data", str(synth_dir / "train.bson"), "--ocr-engine", "tesseract", "--groups", "MUSIQUE",
            "--ocr-cache", str(cache), "-q"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    tax = Taxonomy.load(synth_dir / "category_names.csv")
    cat = Catalog.open(synth_dir / "train.bson")
    chosen = select_products(cat, tax, ["MUSIQUE"])
    assert len(chosen) and all(tax.names_of(tax.index_of(cat[int(p)].category_id))[0] == "MUSIQUE" for p in chosen)
    with OcrCache(cache) as c:
        n = c.count()
    assert n > 0 and f"{n} read" in first
    assert main(argv) == 0
    assert f"{n} already cached, 0 read" in capsys.readouterr().out


def test_corrupt_pictures_are_counted(tmp_path, synth_dir):
    tax = Taxonomy.load(synth_dir / "category_names.csv")
    books = tax.category_ids[tax.classes_under("LIBRAIRIE")]
    good = Catalog.open(synth_dir / "train.bson")[0].pictures[0]
    docs = [{"_id": 5, "imgs": [{"picture": b"\xff\xd8 broken"}, {"picture": good}], "category_id": int(books[0])}]
    path = tmp_path / "t.bson"
    path.write_bytes(b"".join(bson.encode(d) for d in docs))
    s = run_ocr(path, tax, OcrJob(["LIBRAIRIE"], "tesseract", cache_path=tmp_path / "c.sqlite"),
                Compute(progress=False))
    assert (s.products, s.pictures, s.read, s.unreadable) == (1, 2, 1, 1)
    assert s.unreadable_examples == [(5, 0)]


def test_test_files_need_predictions(synth_dir, tiny_run, tmp_path):
    tax = Taxonomy.load(synth_dir / "category_names.csv")
    test = Catalog.open(synth_dir / "test.bson")
    with pytest.raises(ConfigError, match="pass --predictions PRED"):
        select_products(test, tax, ["LIBRAIRIE"])
    from etalage.core.predict import CorePredictor

    CorePredictor(tiny_run, workers=0).predict_catalog(test, tmp_path / "pred", progress=False)
    chosen = select_products(test, tax, ["LIBRAIRIE", "MUSIQUE"], predictions=str(tmp_path / "pred"))
    truth = tax.level1_of[tax.indices_of(np.loadtxt(synth_dir / "test_labels.csv", delimiter=",", skiprows=1,
                                                    dtype=np.int64)[:, 1])]
    in_groups = np.isin(truth, [tax.level1_index("LIBRAIRIE"), tax.level1_index("MUSIQUE")])
    assert in_groups[chosen].mean() > in_groups.mean(), "prediction picks products of the groups"
