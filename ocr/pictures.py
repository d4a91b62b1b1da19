"""The pictures of catalogue products as OCR reads them: decoded, with their MD5 (the cache key), the
corrupt and too-small ones set aside and counted. Every stage that reads products' text (specialists,
``etalage ocr``) takes its pictures from here."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from etalage.catalog import Catalog
from etalage.catalog.pictures import CorruptPicture, decode_picture
from etalage.ocr.base import MIN_SIDE


@dataclass
class ProductPictures:
    """The readable pictures of some products, flat: picture j belongs to product ``owner[j]`` (an
    index into the positions asked for) and is picture ``number[j]`` of it."""

    pictures: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8 RGB
    md5: list[bytes] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    number: list[int] = field(default_factory=list)
    unreadable: list[tuple[int, int]] = field(default_factory=list)  # (product id, picture number)

    def of(self, i: int) -> list[int]:
        """Indices (into ``pictures``) of product ``i``'s pictures."""
        return [j for j, o in enumerate(self.owner) if o == i]


def decode_for_ocr(data: bytes) -> np.ndarray:
    """One picture's bytes -> RGB array; ``CorruptPicture`` when it cannot be decoded or is too small."""
    pic = decode_picture(data)
    if min(pic.shape[:2]) < MIN_SIDE:
        raise CorruptPicture(f"{pic.shape[1]}x{pic.shape[0]} is too small to read (min {MIN_SIDE}px)")
    return pic


def product_pictures(catalog: Catalog, positions, only: list[int] | None = None) -> ProductPictures:
    """The readable pictures of the products at ``positions``; with ``only``, just picture ``only[i]``
    of product ``positions[i]`` (one distinct picture each, as ``etalage ocr`` reads them)."""
    out = ProductPictures()
    first = catalog.index.products["first_picture"]
    md5 = catalog.md5
    for i, pos in enumerate(int(p) for p in positions):
        blobs = catalog.picture_bytes(pos)
        numbers = range(len(blobs)) if only is None else [only[i]]
        for k in numbers:
            try:
                pic = decode_for_ocr(blobs[k])
            except CorruptPicture:
                out.unreadable.append((int(catalog.product_ids[pos]), k))
                continue
            out.pictures.append(pic)
            out.md5.append(md5[first[pos] + k].tobytes())
            out.owner.append(i)
            out.number.append(k)
    return out
