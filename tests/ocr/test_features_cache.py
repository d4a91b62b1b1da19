import multiprocessing as mp

import numpy as np
import pytest

from etalage.ocr.base import OcrEngine
from etalage.ocr.boxes import TextBox, box_quad
from etalage.ocr.cache import OcrCache, read_cached
from etalage.ocr.features import PICTURE_FEATURE_NAMES, SUMMARY_NAMES, picture_features


def _boxes():
    f = np.arange(256, dtype=np.float32)
    return [TextBox("ABC 12", 0.9, box_quad(0, 0, 90, 18), f), TextBox("roman", 0.5, box_quad(0, 162, 45, 180), -f)]


def test_picture_features_layout_and_values():
    assert len(PICTURE_FEATURE_NAMES) == len(SUMMARY_NAMES) + 256
    assert not picture_features([], 180, 180).any()
    v = dict(zip(PICTURE_FEATURE_NAMES, picture_features(_boxes(), 180, 180), strict=True))
    assert v["box_count"] == 2 and v["text_length"] == len("ABC 12roman")
    assert np.isclose(v["confidence_mean"], 0.7) and np.isclose(v["confidence_max"], 0.9)
    assert np.isclose(v["height_max"], 0.1) and np.isclose(v["digit_ratio"], 2 / 11)
    assert np.isclose(v["upper_ratio"], 3 / 8)
    assert np.isclose(v["center_y_mean"], 0.5) and v["center_y_std"] > 0.4
    assert v["crnn_5"] == 0.0, "features of the two boxes cancel in the mean"


def test_boxes_roundtrip_through_the_cache_in_plain_columns(tmp_path):
    import sqlite3

    with OcrCache(tmp_path / "c.sqlite") as cache:
        cache.put_many([(b"a" * 16, _boxes()), (b"b" * 16, [TextBox("é", 1.0, box_quad(1, 2, 3, 4), None)]),
                        (b"c" * 16, [])], "engine/x")
        got = cache.get_many([b"a" * 16, b"b" * 16, b"c" * 16, b"d" * 16], "engine/x")
    back = got[b"a" * 16]
    assert [b.text for b in back] == ["ABC 12", "roman"]
    assert np.array_equal(back[1].features, -np.arange(256, dtype=np.float32))
    assert np.array_equal(back[0].quad, box_quad(0, 0, 90, 18))
    assert got[b"b" * 16][0].text == "é" and got[b"b" * 16][0].features is None
    assert got[b"c" * 16] == [] and b"d" * 16 not in got, "read with no text is not the same as never read"
    rows = sqlite3.connect(tmp_path / "c.sqlite").execute(
        "SELECT text, confidence, x0, y2 FROM boxes WHERE engine = 'engine/x' ORDER BY md5, box").fetchall()
    assert rows == [("ABC 12", pytest.approx(0.9), 0.0, 18.0), ("roman", 0.5, 0.0, 180.0), ("é", 1.0, 1.0, 4.0)]


def test_a_cache_of_the_older_layout_is_converted(tmp_path):
    import json
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE boxes (md5 BLOB NOT NULL, engine TEXT NOT NULL, payload BLOB NOT NULL, "
               "PRIMARY KEY (md5, engine)) WITHOUT ROWID")
    head = {"text": ["old"], "conf": [0.8], "quad": [[0, 0, 1, 0, 1, 1, 0, 1]], "dim": 0}
    db.execute("INSERT INTO boxes VALUES (?, ?, ?)", (b"m" * 16, "e/1", json.dumps(head).encode() + b"\0"))
    db.commit()
    db.close()
    with OcrCache(path) as cache:
        assert [b.text for b in cache.get_many([b"m" * 16], "e/1")[b"m" * 16]] == ["old"]
        assert cache.count("e/1") == 1


class CountingEngine(OcrEngine):
    name = "counting"

    def __init__(self):
        super().__init__()
        self.calls = 0

    @property
    def version(self):
        return "1"

    def _read(self, pictures):
        self.calls += len(pictures)
        return [[TextBox(str(int(p[0, 0, 0])), 1.0, box_quad(0, 0, 1, 1), None)] for p in pictures]


def test_read_cached_reads_each_picture_once(tmp_path):
    engine = CountingEngine()
    pics = [np.full((20, 20, 3), v, np.uint8) for v in (1, 2, 3)]
    md5s = [bytes([v]) * 16 for v in (1, 2, 3)]
    with OcrCache(tmp_path / "c.sqlite") as cache:
        first = read_cached(engine, cache, pics[:2], md5s[:2])
        assert engine.calls == 2
        both = read_cached(engine, cache, pics, md5s)
        assert engine.calls == 3 and [b[0].text for b in both] == ["1", "2", "3"]
        assert [b[0].text for b in first] == ["1", "2"]
        assert cache.count(engine.cache_key) == 3


def _writer(path, start):
    with OcrCache(path) as cache:
        for i in range(start, start + 50):
            cache.put_many([(i.to_bytes(16, "big"), [])], "engine/x")


def test_parallel_writers_share_the_cache(tmp_path):
    path = tmp_path / "shared.sqlite"
    procs = [mp.get_context("fork").Process(target=_writer, args=(path, s)) for s in (0, 50, 100)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    with OcrCache(path) as cache:
        assert cache.count("engine/x") == 150
