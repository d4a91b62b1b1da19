"""OCR results cached by picture: one SQLite file keyed by (picture MD5, engine name/version/options).

A picture read once is never read again by any stage or re-run, and duplicate pictures (40% of the
real catalogue's are) are read once. SQLite in WAL mode with a busy timeout lets several processes
(``etalage ocr`` shards, workers) read and write the same file safely.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
from etalage.ocr.base import OcrEngine, TextBox

SCHEMA = """CREATE TABLE IF NOT EXISTS boxes (
    md5 BLOB NOT NULL, engine TEXT NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (md5, engine)
) WITHOUT ROWID"""


def encode_boxes(boxes: list[TextBox]) -> bytes:
    head = {"text": [b.text for b in boxes], "conf": [b.confidence for b in boxes],
            "quad": [np.asarray(b.quad, np.float32).ravel().tolist() for b in boxes],
            "dim": next((int(b.features.shape[0]) for b in boxes if b.features is not None), 0)}
    feats = b"".join(np.asarray(b.features, np.float32).tobytes() for b in boxes if b.features is not None) \
        if head["dim"] else b""
    return json.dumps(head, ensure_ascii=False).encode() + b"\0" + feats


def decode_boxes(payload: bytes) -> list[TextBox]:
    cut = payload.index(b"\0")
    head = json.loads(payload[:cut])
    dim = head["dim"]
    feats = np.frombuffer(payload[cut + 1:], np.float32).reshape(-1, dim) if dim else None
    return [TextBox(t, float(c), np.array(q, np.float32).reshape(4, 2), None if feats is None else feats[i].copy())
            for i, (t, c, q) in enumerate(zip(head["text"], head["conf"], head["quad"], strict=True))]


class OcrCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=120)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> OcrCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_many(self, md5s: list[bytes], engine_key: str) -> dict[bytes, list[TextBox]]:
        out = {}
        for start in range(0, len(md5s), 500):
            part = [bytes(m) for m in md5s[start:start + 500]]
            marks = ",".join("?" * len(part))
            rows = self._db.execute(f"SELECT md5, payload FROM boxes WHERE engine = ? AND md5 IN ({marks})",
                                    [engine_key, *part])
            out.update({bytes(m): decode_boxes(p) for m, p in rows})
        return out

    def put_many(self, items: list[tuple[bytes, list[TextBox]]], engine_key: str) -> None:
        with self._db:  # one transaction: all of a batch or nothing
            self._db.executemany("INSERT OR REPLACE INTO boxes (md5, engine, payload) VALUES (?, ?, ?)",
                                 [(bytes(m), engine_key, encode_boxes(b)) for m, b in items])

    def count(self, engine_key: str | None = None) -> int:
        if engine_key is None:
            return self._db.execute("SELECT COUNT(*) FROM boxes").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM boxes WHERE engine = ?", [engine_key]).fetchone()[0]


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
