"""From catalogue products to ``ProductReading``s: their readable pictures (``etalage.ocr.pictures``),
the text on them through the OCR cache (each picture read once, ever, per engine), the per-picture
box features, for specialists that look the decoded pictures, and for those that need it the
product's title (read from the dump at the index's offset: no picture is decoded for a specialist
that needs nothing else)."""

from __future__ import annotations

import numpy as np

from etalage.catalog import Catalog
from etalage.ocr.base import OcrEngine
from etalage.ocr.boxes import TextBox, box_quad
from etalage.ocr.cache import OcrCache, read_cached
from etalage.ocr.features import PICTURE_FEATURE_NAMES, picture_features
from etalage.ocr.pictures import product_pictures
from etalage.progress import bar as progress_bar
from etalage.specialists.base import ProductReading


def read_products(catalog: Catalog, positions: np.ndarray, engine: OcrEngine | None, cache: OcrCache | None,
                  needs: tuple[str, ...] = ("text",), batch: int = 32, progress: bool = False) -> list[ProductReading]:
    """Readings of the products at ``positions``: with ``"text"`` in ``needs`` their pictures are read
    by ``engine`` through ``cache``; with ``"pictures"`` the decoded pictures come along; with
    ``"title"`` the product's title."""
    reads = "text" in needs
    titles = catalog.titles(positions) if "title" in needs else [None] * len(positions)
    if not reads and "pictures" not in needs:
        no_picture = np.zeros((1, len(PICTURE_FEATURE_NAMES)), np.float32)
        return [ProductReading(int(catalog.product_ids[pos]), [], no_picture, None, title)
                for pos, title in zip(positions, titles, strict=True)]
    out = []
    desc = f"read {engine.name}" if reads and engine is not None else "pictures"
    for start in progress_bar(range(0, len(positions), batch), desc=desc, unit="batch", enabled=progress):
        pp = product_pictures(catalog, positions[start:start + batch])
        boxes = read_cached(engine, cache, pp.pictures, pp.md5) if reads and pp.pictures else \
            [[] for _ in pp.pictures]
        for j, pos in enumerate(positions[start:start + batch]):
            mine = pp.of(j)
            feats = np.stack([picture_features(boxes[i], *pp.pictures[i].shape[:2]) for i in mine]) if mine else \
                np.zeros((1, len(PICTURE_FEATURE_NAMES)), np.float32)
            out.append(ProductReading(int(catalog.product_ids[pos]), [boxes[i] for i in mine], feats,
                                      [pp.pictures[i] for i in mine] if "pictures" in needs else None,
                                      titles[start + j]))
    return out


def make_reading(text: str = "", product_id: int = 0, pictures: list[np.ndarray] | None = None,
                 confidence: float = 0.9, title: str | None = None) -> ProductReading:
    """A ``ProductReading`` whose one picture shows ``text`` (one box per word, top to bottom), and the
    given decoded ``pictures`` (default: one plain 180x180 picture) for specialists that look, and
    ``title``."""
    boxes = [TextBox(w, confidence, box_quad(10, 10 + 20 * i, 10 + 9 * len(w), 28 + 20 * i), None)
             for i, w in enumerate(text.split())]
    pictures = pictures if pictures is not None else [np.full((180, 180, 3), 200, np.uint8)]
    feats = np.stack([picture_features(boxes if j == 0 else [], *p.shape[:2]) for j, p in enumerate(pictures)]) \
        if pictures else np.zeros((1, len(PICTURE_FEATURE_NAMES)), np.float32)
    return ProductReading(product_id, [boxes] + [[] for _ in pictures[1:]], feats, pictures, title)
