import numpy as np
import pytest

from etalage.errors import ConfigError
from etalage.specialists import create_specialist
from etalage.specialists.encoders import letterbox, normalise
from etalage.specialists.testing import make_reading
from etalage.synth import default_taxonomy

VOCAB = {0: "dragon chateau royaume", 1: "cuisine recettes gateaux", 2: "physics chemistry lessons",
         3: "voyage ocean island"}
COLOURS = {0: (200, 30, 30), 1: (30, 200, 30), 2: (30, 30, 200), 3: (200, 200, 30)}


def _data(tax, n, seed, noise=0.25, text=True):
    """Books of 4 classes whose words (text=True) or cover colours (text=False) tell them apart."""
    rng = np.random.default_rng(seed)
    books = tax.classes_under("LIBRAIRIE")[:4]
    readings, labels = [], []
    for i in range(n):
        k = int(rng.integers(0, 4))
        words = VOCAB[k if text else int(rng.integers(0, 4))].split()
        t = " ".join(str(rng.choice(words)) if rng.random() > noise else str(rng.choice(VOCAB[(k + 1) % 4].split()))
                     for _ in range(3))
        colour = COLOURS[k] if not text else COLOURS[int(rng.integers(0, 4))]
        pic = np.clip(np.array(colour) + rng.integers(-25, 25, (120, 90, 3)), 0, 255).astype(np.uint8)
        readings.append(make_reading(t.replace("a", "@") if rng.random() < 0.2 else t, i, [pic]))
        labels.append(books[k])
    return readings, np.array(labels)


@pytest.mark.parametrize("encoder", ["none", "default"])
def test_books_specialist_learns_from_text(encoder, tmp_path):
    tax = default_taxonomy()
    train, y = _data(tax, 120, 0)
    test, y_test = _data(tax, 60, 1)
    spec = create_specialist("books", encoder=encoder, image="off")
    assert spec.needs == ("text",), "no pictures decoded for a specialist that does not look"
    spec.fit(train, y, tax)
    out = spec.predict(test)
    assert out.scores.shape == (60, len(tax.classes_under("LIBRAIRIE")))
    assert np.allclose(out.scores.sum(1), 1, atol=1e-4)
    top, _ = out.topk(1)
    assert (top[:, 0] == y_test).mean() > 0.8
    assert out.features.shape == (60, len(out.feature_names))
    spec.save(tmp_path / "books")
    again = type(spec).load(tmp_path / "books").predict(test)
    assert np.allclose(again.scores, out.scores, atol=1e-5)


def test_the_looking_part_is_weighed_by_cross_validation():
    tax = default_taxonomy()
    by_text = create_specialist("books", encoder="none").fit(*_data(tax, 120, 0), tax)
    assert by_text.weight_ >= 0.5, "covers that differ by their words: reading weighs most"
    train, y = _data(tax, 120, 0, text=False)
    test, y_test = _data(tax, 60, 1, text=False)
    spec = create_specialist("books", encoder="none").fit(train, y, tax)
    assert spec.weight_ <= 0.5 and spec.oof_top1_["image"] > spec.oof_top1_["text"], spec.oof_top1_
    parts = spec.path_scores(test)
    acc = {k: float((spec.class_indices_[parts[k].argmax(1)] == y_test).mean()) for k in ("text", "image", "fused")}
    assert acc["image"] > 0.8 and acc["fused"] >= max(acc["text"], acc["image"]) - 0.05, acc


def test_nearest_neighbour_finds_a_seen_title():
    tax = default_taxonomy()
    train, y = _data(tax, 80, 0)
    spec = create_specialist("books", encoder="none", image="off")
    spec.fit(train, y, tax)
    out = spec.predict([train[5]])
    sim = out.features[0, out.feature_names.index("knn_max_similarity")]
    assert sim == pytest.approx(1.0, abs=1e-5)


def test_fit_rejects_foreign_classes_and_unfitted_predict():
    tax = default_taxonomy()
    spec = create_specialist("music", encoder="none")
    with pytest.raises(ConfigError, match="not fitted"):
        spec.predict([make_reading("x")])
    train, y = _data(tax, 10, 0)  # book classes
    with pytest.raises(ConfigError, match="is not under MUSIQUE"):
        spec.fit(train, y, tax)
    with pytest.raises(ConfigError, match="image must be one of auto, off"):
        create_specialist("music", image="maybe")


def test_normalise_and_letterbox():
    assert normalise("L'ÉTÉ — Crytng Freeman: Vol. 2 ~~ x") == "ete crytng freeman vol 2"
    tall = np.zeros((224, 112, 3), np.uint8)
    box = letterbox(tall, 180)
    assert box.shape == (180, 180, 3) and (box[:, :40] == 255).all() and (box[:, 50:130] == 0).all()


def test_a_cover_specialist_saved_before_the_blend_rename_still_loads(tmp_path):
    import json

    import skops.io as sio

    tax = default_taxonomy()
    train, y = _data(tax, 40, 0)
    spec = create_specialist("books", encoder="none", image="off", blend_folds=2).fit(train, y, tax)
    spec.save(tmp_path / "books")
    assert "fusion_" not in spec.learned_state() and spec.get_params()["blend_folds"] == 2
    # what etalage wrote before: the option fuse_folds, the learned blend as fusion_
    manifest = json.loads((tmp_path / "books" / "specialist.json").read_text())
    manifest["params"]["fuse_folds"] = manifest["params"].pop("blend_folds")
    (tmp_path / "books" / "specialist.json").write_text(json.dumps(manifest))
    state = spec.learned_state()
    state["fusion_"] = state.pop("blend_")
    (tmp_path / "books" / "state.skops").write_bytes(sio.dumps(state))
    old = type(spec).load(tmp_path / "books")
    assert old.blend_folds == 2 and old.blend_ == spec.blend_
    assert np.allclose(old.predict(train[:5]).scores, spec.predict(train[:5]).scores)
    with pytest.raises(ConfigError, match="bad options"):
        create_specialist("books", no_such_option=1)
