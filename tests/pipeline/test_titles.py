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
    blanked = report["titles_blanked"]["title"]
    assert blanked["share"] == 0.25 and blanked["products"] == round(0.25 * report["products"]), blanked
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
    # one product at a time (etalage serve's classifier): the listing's title reaches the title specialist, and
    # the answer is the submission's
    from etalage.pipeline.classify import Classifier, Listing

    clf = Classifier.load(fusion=fusion)
    try:
        products = [test[i] for i in range(len(test))]
        proposals = clf.classify([Listing(p.pictures, p.title, p.product_id) for p in products])
    finally:
        clf.close()
    submitted = dict(zip(*(a.tolist() for a in read_id_category_csv(tmp_path / "sub.csv")), strict=True))
    same = [pr.categories[0].category_id == submitted[p.product_id] for p, pr in zip(products, proposals, strict=True)]
    assert np.mean(same) >= 0.99, f"the classifier agrees with submit on {np.mean(same):.3f} of the products"
    titled = [("specialists:title" in pr.signals) == (p.title is not None) for p, pr in zip(products, proposals,
                                                                                             strict=True)]
    assert all(titled), "the title specialist spoke exactly for the products with a title"
