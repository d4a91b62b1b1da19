"""A catalogue with titles end to end: the title specialist fitted (no OCR), fusion fitted with its
scores and features, a submission."""

import json

import numpy as np

from etalage.catalog import Catalog
from etalage.catalog.submission import read_id_category_csv
from etalage.cli import main
from etalage.synth import SynthConfig, write_synthetic_catalogue


def test_titles_through_specialists_fusion_and_submit(tiny_run, synth_dir, tmp_path):
    from etalage.specialists.runner import SpecialistRanking

    # The session catalogue with titles: the same seed draws the same products and pictures, so the
    # session's tiny run is this catalogue's core as well.
    data = tmp_path / "titled"
    write_synthetic_catalogue(data, SynthConfig(products=400, seed=3, workers=2, titles=0.8))
    train, test = Catalog.open(data / "train.bson"), Catalog.open(data / "test.bson")
    assert (train.product_ids == Catalog.open(synth_dir / "train.bson").product_ids).all()
    specs, fusion = tmp_path / "specs", tmp_path / "fusion"
    assert main(["specialists", "fit", "--train", str(data / "train.bson"), "--run", str(tiny_run), "--out",
                 str(specs), "--names", "title", "-q"]) == 0
    assert main(["fusion", "fit", "--run", str(tiny_run), "--train", str(data / "train.bson"), "--specialists",
                 str(specs), "--out", str(fusion), "--workers", "0", "-q"]) == 0
    report = json.loads((fusion / "fit_report.json").read_text())
    assert {"title_score", "title_top1_prob", "title_known_words"} <= set(report["importance"])
    best = max(report["valid_top1_by_kind"].values())
    assert best > report["core_top1"] + 0.1, f"titles lift fusion over the tiny core: {best} vs {report['core_top1']}"
    assert main(["submit", "--fusion", str(fusion), "--data", str(data / "test.bson"), "--out",
                 str(tmp_path / "sub.csv"), "--workers", "0", "-q"]) == 0
    ids, _ = read_id_category_csv(tmp_path / "sub.csv")
    assert sorted(ids.tolist()) == sorted(test.product_ids.tolist())
    looked = SpecialistRanking.load(tmp_path / "sub_work" / "specialists" / "title")
    assert looked.rows.tolist() == np.flatnonzero(test.titled).tolist(), "every titled test product, no other"
    assert main(["score", "--submission", str(tmp_path / "sub.csv"), "--labels", str(data / "test_labels.csv"),
                 "-q"]) == 0
