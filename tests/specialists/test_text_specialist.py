import numpy as np
import pytest

from etalage.errors import ConfigError
from etalage.ocr.base import TextBox, box_quad
from etalage.ocr.features import PICTURE_FEATURE_NAMES
from etalage.specialists import ProductReading, create_specialist
from etalage.specialists.text import normalise
from etalage.synth import default_taxonomy

VOCAB = {0: "dragon chateau royaume", 1: "cuisine recettes gateaux", 2: "physics chemistry lessons",
         3: "voyage ocean island"}


def _reading(pid: int, text: str) -> ProductReading:
    boxes = [TextBox(w, 0.9, box_quad(10, 10 + 20 * i, 100, 28 + 20 * i), np.full(256, i, np.float32))
             for i, w in enumerate(text.split())]
    return ProductReading(pid, [boxes], np.zeros((1, len(PICTURE_FEATURE_NAMES)), np.float32))


def _data(tax, n, seed, noise=0.25):
    rng = np.random.default_rng(seed)
    books = tax.classes_under("LIBRAIRIE")[:4]
    readings, labels = [], []
    for i in range(n):
        k = int(rng.integers(0, 4))
        words = VOCAB[k].split()
        text = " ".join(str(rng.choice(words)) if rng.random() > noise else str(rng.choice(VOCAB[(k + 1) % 4].split()))
                        for _ in range(3))
        readings.append(_reading(i, text.replace("a", "@") if rng.random() < 0.2 else text))  # OCR-like slips
        labels.append(books[k])
    return readings, np.array(labels)


@pytest.mark.parametrize("encoder", ["none", "default"])
def test_books_specialist_learns_from_text(encoder, tmp_path):
    tax = default_taxonomy()
    train, y = _data(tax, 120, 0)
    test, y_test = _data(tax, 60, 1)
    spec = create_specialist("books", encoder=encoder)
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


def test_nearest_neighbour_finds_a_seen_title():
    tax = default_taxonomy()
    train, y = _data(tax, 80, 0)
    spec = create_specialist("books", encoder="none")
    spec.fit(train, y, tax)
    out = spec.predict([train[5]])
    sim = out.features[0, out.feature_names.index("knn_max_similarity")]
    assert sim == pytest.approx(1.0, abs=1e-5)


def test_fit_rejects_foreign_classes_and_unfitted_predict():
    tax = default_taxonomy()
    spec = create_specialist("music", encoder="none")
    with pytest.raises(ConfigError, match="not fitted"):
        spec.predict([_reading(1, "x")])
    train, y = _data(tax, 10, 0)  # book classes
    with pytest.raises(ValueError, match="is not under MUSIQUE"):
        spec.fit(train, y, tax)


def test_normalise():
    assert normalise("L'ÉTÉ — Crytng Freeman: Vol. 2 ~~ x") == "ete crytng freeman vol 2"
