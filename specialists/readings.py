"""From catalog products to ``ProductReading``s: decode, OCR through the cache, box features."""

from __future__ import annotations

import numpy as np
from etalage.catalog import Catalog
from etalage.catalog.pictures import CorruptPicture, decode_picture
from etalage.ocr.base import OcrEngine
from etalage.ocr.cache import OcrCache, read_cached
from etalage.ocr.features import PICTURE_FEATURE_NAMES, picture_features
from etalage.specialists.base import ProductReading


def read_products(catalog: Catalog, positions: np.ndarray, engine: OcrEngine, cache: OcrCache, md5: np.ndarray,
                  batch: int = 32, progress: bool = False) -> list[ProductReading]:
    """Readings of the products at ``positions`` (pictures read once, ever, per engine)."""
    from tqdm import tqdm

    first = catalog.index.products["first_picture"]
    out = []
    for start in tqdm(range(0, len(positions), batch), desc=f"read {engine.name}", unit="batch",
                      disable=not progress, leave=False):
        part = positions[start:start + batch]
        pics, keys, owner = [], [], []
        for j, pos in enumerate(part):
            for k, data in enumerate(catalog.picture_bytes(int(pos))):
                try:
                    pic = decode_picture(data)
                except CorruptPicture:
                    continue
                if min(pic.shape[:2]) < 8:
                    continue
                pics.append(pic)
                keys.append(md5[first[pos] + k].tobytes())
                owner.append(j)
        boxes = read_cached(engine, cache, pics, keys) if pics else []
        for j, pos in enumerate(part):
            mine = [i for i, o in enumerate(owner) if o == j]
            feats = np.stack([picture_features(boxes[i], *pics[i].shape[:2]) for i in mine]) if mine else \
                np.zeros((1, len(PICTURE_FEATURE_NAMES)), np.float32)
            out.append(ProductReading(int(catalog.product_ids[pos]), [boxes[i] for i in mine], feats))
    return out
