"""The built-in title specialist: every class of the taxonomy from a product's title, fitted on and
scoring only products that have one; the others get missing features and no candidates from it."""

import json

import numpy as np
import pytest

from etalage.catalog import Catalog
from etalage.errors import ConfigError
from etalage.specialists.readings import make_reading, read_products
from etalage.specialists.testing import check_specialist
from etalage.specialists.title import TitleSpecialist
from etalage.synth import SynthConfig, default_taxonomy, write_synthetic_catalogue

WORDS = {0: "roman dragon chateau", 14: "souris optique usb", 30: "collier perle argent", 41: "casque velo route"}


def _readings(seed=0, per_class=8):
    rng = np.random.default_rng(seed)
    readings, labels = [], []
    for cls, words in WORDS.items():
        for _ in range(per_class):
            title = " ".join([str(rng.choice(["Arvento", "Belmar", "Nordika"])), str(rng.choice(["red", "bleu"])),
                              *rng.choice(words.split(), 2, replace=False)])
            readings.append(make_reading("", len(readings), [], title=title))
            labels.append(cls)
    return readings, np.array(labels, np.int32)


def _fitted():
    spec = TitleSpecialist()
    spec.name = "title"
    readings, labels = _readings()
    return spec.fit(readings, labels, default_taxonomy()), readings, labels


def test_title_specialist_passes_the_plugin_checks():
    check_specialist(TitleSpecialist, name="title")


def test_fits_predicts_over_every_group_and_loads_as_data(tmp_path):
    from etalage.specialists.persist import load_specialist

    tax = default_taxonomy()
    spec, readings, labels = _fitted()
    assert len({int(tax.level1_of[c]) for c in WORDS}) == 4, "classes of four level-1 groups"
    assert spec.classes(tax).tolist() == list(range(tax.n_classes))
    assert spec.level1_indices(tax) == list(range(tax.n_level1))
    new = [make_reading("", 0, [], title=t) for t in ("Souris usb", "Collier argent bleu", "Zzyzx qwop", None)]
    out = spec.predict(new)
    assert out.class_indices.tolist() == sorted(WORDS)
    assert out.class_indices[out.scores.argmax(1)][:2].tolist() == [14, 30]
    names = dict(zip(out.feature_names, out.features.T, strict=True))
    assert names["words"].tolist() == [2, 3, 2, 0]
    assert names["known_words"].tolist() == [1, 1, 0, 0], "unseen words: an unfamiliar title"
    assert names["top1_prob"][0] > 0.5 and names["margin"][0] > 0.2
    spec.save(tmp_path / "title")
    again = load_specialist(TitleSpecialist, tmp_path / "title")
    assert np.allclose(again.predict(new).scores, out.scores, atol=1e-6)
    assert json.loads((tmp_path / "title" / "specialist.json").read_text())["groups"] == ["*"]


@pytest.fixture(scope="module")
def titled(tmp_path_factory):
    """A synthetic catalogue of 8 classes where 70% of the products have a title."""
    out = tmp_path_factory.mktemp("titled")
    write_synthetic_catalogue(out, SynthConfig(products=160, seed=4, workers=1, titles=0.7, classes=8))
    return out


def _ranking(n, n_level1):
    from etalage.core.ranking import CoreRanking

    k = 3
    return CoreRanking(np.arange(n), np.zeros((n, k), np.int32), np.full((n, k), 0.3, np.float16),
                       np.ones(n, np.int8), np.zeros((n, 4, k), np.int32), np.zeros((n, 4, k), np.float16),
                       np.zeros((n, n_level1), np.float16), None, {"n_products": n, "chunk": 16})


def test_fitted_on_every_titled_product_scores_only_those_and_fusion_sees_them_missing(titled, tmp_path):
    from etalage.fusion.table import specialist_candidates, specialist_features
    from etalage.specialists.runner import (
        FitSettings,
        SpecialistRanking,
        SpecialistScorer,
        fit_specialists,
        load_fitted,
    )

    tax = default_taxonomy()
    train, test = Catalog.open(titled / "train.bson"), Catalog.open(titled / "test.bson")
    rows = fit_specialists(train, tax, ["title"], tmp_path / "specs", None, None, FitSettings(max_train=5),
                           progress=False)
    assert rows[0]["train_products"] == train.titled.sum() > 5, "no OCR to bound: every titled product"
    assert rows[0]["settings"]["max_train"] is None and "engine" not in rows[0]["settings"]
    fitted_on = np.load(tmp_path / "specs" / "title" / "train_positions.npy")
    assert fitted_on.tolist() == np.flatnonzero(train.titled).tolist()
    n = len(test)
    scorer = SpecialistScorer(load_fitted(tmp_path / "specs"), tax, tmp_path / "work")
    scorer.claim(n, n, None)
    done = scorer.score(_ranking(n, tax.n_level1), test, np.arange(n), (0, n))
    assert done.scored["title"] == test.titled.sum() < n
    out = SpecialistRanking.load(tmp_path / "work" / "title")
    assert out.rows.tolist() == np.flatnonzero(test.titled).tolist(), "every titled product, whatever the core says"
    assert np.isnan(out.ocr).all(), "it reads no picture: no OCR summary to give"
    c_owner, _ = specialist_candidates([out])
    assert set(c_owner.tolist()) == set(out.rows.tolist()), "no candidates for products without a title"
    owner = np.repeat(np.arange(n), 2)
    feats = specialist_features([out], owner, np.tile([0, 1], n).astype(np.int32), n, tax.level1_of)
    untitled = ~test.titled[owner]
    for name in ("title_top1_prob", "title_margin", "title_words", "title_known_words", "title_score"):
        assert np.isnan(feats[name][untitled]).all() and not np.isnan(feats[name][~untitled]).any(), name
    top1 = out.topk_class[:, 0] == tax.indices_of(np.array([int(c) for c in _labels(titled, test)]))[out.rows]
    assert top1.mean() > 0.5, f"the titles name the class: top-1 {top1.mean():.2f}"


def _labels(folder, test):
    import csv

    with open(folder / "test_labels.csv", newline="") as fh:
        key = {int(r["_id"]): int(r["category_id"]) for r in csv.DictReader(fh)}
    return [key[int(p)] for p in test.product_ids]


def test_title_readings_decode_no_picture(titled, monkeypatch):
    import etalage.specialists.readings as readings_module

    def no_pictures(*args, **kwargs):
        raise AssertionError("pictures decoded for a specialist that needs only titles")

    monkeypatch.setattr(readings_module, "product_pictures", no_pictures)
    test = Catalog.open(titled / "test.bson")
    got = read_products(test, np.arange(len(test)), None, None, ("title",))
    assert [r.title for r in got] == test.titles() and all(r.pictures is None and r.boxes == [] for r in got)


def test_a_dump_without_titles_is_refused_with_the_fix(synth_dir, tmp_path):
    from etalage.specialists.runner import fit_specialists

    train = Catalog.open(synth_dir / "train.bson")
    with pytest.raises(ConfigError, match="0 training products with a title .*title column"):
        fit_specialists(train, default_taxonomy(), ["title"], tmp_path, None, None, progress=False)


def test_listed_among_the_builtins(capsys):
    from etalage.cli import main

    assert main(["specialists", "list"]) == 0
    line = [row for row in capsys.readouterr().out.splitlines() if row.startswith("title ")]
    assert line and "etalage" in line[0] and "*" in line[0] and line[0].rstrip().endswith("ok")
