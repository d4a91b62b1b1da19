"""OCR results cached by picture: one SQLite file keyed by (picture MD5, engine name/version/options).

A picture read once is never read again by any stage or re-run, and duplicate pictures (40% of the
real catalogue's are) are read once. SQLite in WAL mode with a busy timeout lets several processes
(``etalage ocr`` shards, workers) read and write the same file safely.

The tables are plain, for any SQL tool (``sqlite3``, duckdb, pandas): ``pictures`` says which
pictures an engine has read (and how many boxes it found, 0 included); ``boxes`` has one row per text
box: ``text``, ``confidence``, the quad's corners ``x0 y0 ... x3 y3`` in picture pixels (clockwise
from top-left) and ``features`` (the recogniser's float32 vector as bytes, NULL for engines without).
``SELECT hex(md5), text, confidence FROM boxes`` lists what was read. A cache of the older one-column
layout is converted on first open.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np

from etalage.errors import DataError
from etalage.ocr.base import OcrEngine
from etalage.ocr.boxes import TextBox

SCHEMA = """
CREATE TABLE IF NOT EXISTS pictures (
    md5 BLOB NOT NULL, engine TEXT NOT NULL, n_boxes INTEGER NOT NULL, PRIMARY KEY (md5, engine)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS boxes (
    md5 BLOB NOT NULL, engine TEXT NOT NULL, box INTEGER NOT NULL, text TEXT NOT NULL, confidence REAL NOT NULL,
    x0 REAL, y0 REAL, x1 REAL, y1 REAL, x2 REAL, y2 REAL, x3 REAL, y3 REAL, features BLOB,
    PRIMARY KEY (md5, engine, box)
) WITHOUT ROWID;
"""
_BOX_COLUMNS = "md5, engine, box, text, confidence, x0, y0, x1, y1, x2, y2, x3, y3, features"


def _box_rows(md5: bytes, engine_key: str, boxes: list[TextBox]) -> list[tuple]:
    return [(md5, engine_key, i, b.text, float(b.confidence), *np.asarray(b.quad, np.float32).ravel().tolist(),
             None if b.features is None else np.asarray(b.features, np.float32).tobytes())
            for i, b in enumerate(boxes)]


def _box_of(row) -> TextBox:
    text, conf, *quad, feats = row
    return TextBox(text, float(conf), np.array(quad, np.float32).reshape(4, 2),
                   None if feats is None else np.frombuffer(feats, np.float32).copy())


class OcrCache:
    """The cache of what OCR read, by picture MD5 and engine: one SQLite file (plain tables). Usable from the
    thread that opened it and others (a server loads its models in one thread and classifies in another): its
    calls are serialised by a lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=120, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._upgrade()
            self._db.executescript(SCHEMA)
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path}: not a usable OCR cache ({exc}); delete it or pass another --ocr-cache"
                            ) from None

    def _upgrade(self) -> None:
        """Convert a cache of the older layout (one JSON + bytes payload per picture) in place."""
        cols = [r[1] for r in self._db.execute("PRAGMA table_info(boxes)")]
        if "payload" not in cols:
            return
        old = self._db.execute("SELECT md5, engine, payload FROM boxes").fetchall()
        with self._db:
            self._db.execute("ALTER TABLE boxes RENAME TO boxes_v1")
            self._db.executescript(SCHEMA)
            for md5, engine, payload in old:
                self._put(bytes(md5), engine, _decode_v1(payload))
            self._db.execute("DROP TABLE boxes_v1")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> OcrCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_many(self, md5s: list[bytes], engine_key: str) -> dict[bytes, list[TextBox]]:
        with self._lock:
            return self._get_many(md5s, engine_key)

    def _get_many(self, md5s: list[bytes], engine_key: str) -> dict[bytes, list[TextBox]]:
        out: dict[bytes, list[TextBox]] = {}
        for start in range(0, len(md5s), 500):
            part = [bytes(m) for m in md5s[start:start + 500]]
            marks = ",".join("?" * len(part))
            for (m,) in self._db.execute(f"SELECT md5 FROM pictures WHERE engine = ? AND md5 IN ({marks})",
                                         [engine_key, *part]):
                out[bytes(m)] = []
            rows = self._db.execute(f"SELECT md5, text, confidence, x0, y0, x1, y1, x2, y2, x3, y3, features "
                                    f"FROM boxes WHERE engine = ? AND md5 IN ({marks}) ORDER BY md5, box",
                                    [engine_key, *part])
            for m, *rest in rows:
                out.setdefault(bytes(m), []).append(_box_of(rest))
        return out

    def _put(self, md5: bytes, engine_key: str, boxes: list[TextBox]) -> None:
        self._db.execute("DELETE FROM boxes WHERE md5 = ? AND engine = ?", (md5, engine_key))
        self._db.execute("INSERT OR REPLACE INTO pictures (md5, engine, n_boxes) VALUES (?, ?, ?)",
                         (md5, engine_key, len(boxes)))
        self._db.executemany(f"INSERT INTO boxes ({_BOX_COLUMNS}) VALUES ({','.join('?' * 14)})",
                             _box_rows(md5, engine_key, boxes))

    def put_many(self, items: list[tuple[bytes, list[TextBox]]], engine_key: str) -> None:
        with self._lock, self._db:  # one transaction: all of a batch or nothing
            for m, boxes in items:
                self._put(bytes(m), engine_key, boxes)

    def count(self, engine_key: str | None = None) -> int:
        """Pictures read (by ``engine_key``, or by any engine)."""
        if engine_key is None:
            return self._db.execute("SELECT COUNT(*) FROM pictures").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM pictures WHERE engine = ?", [engine_key]).fetchone()[0]


def _decode_v1(payload: bytes) -> list[TextBox]:
    cut = payload.index(b"\0")
    head = json.loads(payload[:cut])
    dim = head["dim"]
    feats = np.frombuffer(payload[cut + 1:], np.float32).reshape(-1, dim) if dim else None
    return [TextBox(t, float(c), np.array(q, np.float32).reshape(4, 2), None if feats is None else feats[i].copy())
            for i, (t, c, q) in enumerate(zip(head["text"], head["conf"], head["quad"], strict=True))]


def read_cached(engine: OcrEngine, cache: OcrCache, pictures: list[np.ndarray], md5s: list[bytes]
                ) -> list[list[TextBox]]:
    """``engine.read`` through the cache: only pictures never read with this engine are read."""
    found = cache.get_many(md5s, engine.cache_key)
    todo = [i for i, m in enumerate(md5s) if bytes(m) not in found]
    if todo:
        fresh = engine.read([pictures[i] for i in todo])
        cache.put_many([(md5s[i], boxes) for i, boxes in zip(todo, fresh, strict=True)], engine.cache_key)
        found.update({bytes(md5s[i]): boxes for i, boxes in zip(todo, fresh, strict=True)})
    return [found[bytes(m)] for m in md5s]


def default_cache_path(data: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The OCR cache every command uses unless told otherwise: ``ocr-cache.sqlite`` beside the data file
    (one per folder, so training and test pictures share it: 42% of real test products share a picture
    with training), or in the cache folder when the data's folder is read-only."""
    from etalage.catalog.derived import derived_path

    return derived_path(data, "ocr-cache.sqlite", cache_dir)
