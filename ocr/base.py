"""The OCR interface: engines turn RGB pictures into ``TextBox`` lists, one list per picture.

Specialists read book and CD covers through one door (``etalage.ocr.zoo.load_engine``), whatever the engine.
An engine is pre-processing + model + post-processing, like doctr's predictors; ``name``,
``version`` and ``options`` identify its results in the cache.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod

import numpy as np

from etalage.errors import ConfigError
from etalage.ocr.boxes import TextBox

MIN_SIDE = 8  # pictures with a shorter side are not read (too small to hold a word)


def check_pictures(pictures) -> list[np.ndarray]:
    """Validate ``engine.read``'s input: a list of (H, W, 3) uint8 RGB arrays, each side >= ``MIN_SIDE``."""
    if isinstance(pictures, np.ndarray):
        raise ConfigError("read() takes a list of pictures, not one array; wrap it: read([picture])")
    out = []
    for i, pic in enumerate(pictures):
        if not isinstance(pic, np.ndarray):
            raise ConfigError(f"picture {i}: expected a numpy array, got {type(pic).__name__}")
        if pic.size == 0:
            raise ConfigError(f"picture {i}: empty array")
        if pic.ndim != 3 or pic.shape[2] != 3:
            raise ConfigError(f"picture {i}: expected an (H, W, 3) RGB array, got shape {pic.shape}")
        if pic.dtype != np.uint8:
            raise ConfigError(f"picture {i}: expected uint8 values, got {pic.dtype}")
        if min(pic.shape[:2]) < MIN_SIDE:
            raise ConfigError(f"picture {i}: {pic.shape[1]}x{pic.shape[0]} is too small to read (min {MIN_SIDE}px)")
        out.append(pic)
    return out


class OcrEngine(ABC):
    """Reads text boxes from pictures. Subclasses set ``name`` and fill ``options``.

    ``lexicon`` (any engine, through ``load_engine``): words that are not dictionary words get their
    likely dictionary words as extra boxes (``etalage.ocr.lexicon``)."""

    name: str = ""
    lexicon: bool = False

    def __init__(self, **options):
        self.options = dict(sorted(options.items()))

    def use_lexicon(self) -> OcrEngine:
        from etalage.ocr.lexicon import VERSION

        self.lexicon = True
        self.options = dict(sorted({**self.options, "lexicon": VERSION}.items()))  # the cache key says which
        return self

    @property
    @abstractmethod
    def version(self) -> str:
        """Changes whenever the same picture could give other boxes (library, weights, settings)."""

    @property
    def cache_key(self) -> str:
        """Engine identity for the cache: name, version and a digest of the options."""
        digest = hashlib.sha1(json.dumps(self.options, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return f"{self.name}/{self.version}/{digest}"

    def read(self, pictures: list[np.ndarray]) -> list[list[TextBox]]:
        pictures = check_pictures(pictures)
        if not pictures:
            return []
        boxes = self._read(pictures)
        for pic, found in zip(pictures, boxes, strict=True):
            # detectors pad their boxes (EasyOCR's by a few pixels past the edge): corners stay on the picture
            h, w = pic.shape[:2]
            for b in found:
                b.quad = np.stack([np.clip(b.quad[:, 0], 0, w), np.clip(b.quad[:, 1], 0, h)], 1).astype(np.float32)
        if self.lexicon:
            from etalage.ocr.lexicon import with_corrections

            boxes = [with_corrections(b) for b in boxes]
        return boxes

    @abstractmethod
    def _read(self, pictures: list[np.ndarray]) -> list[list[TextBox]]:
        ...


def merge_readings(readings: list[list[TextBox]]) -> list[TextBox]:
    """Boxes of the first reading, plus those of later readings that read something new: a box whose
    text (case aside) an earlier box overlapping it already read is dropped."""
    kept: list[TextBox] = []
    for boxes in readings:
        new = [b for b in boxes if not any(_same_reading(b, k) for k in kept)]
        kept.extend(new)
    return kept


def _same_reading(a: TextBox, b: TextBox) -> bool:
    if a.text.strip().lower() != b.text.strip().lower():
        return False
    (ax0, ay0), (ax1, ay1) = a.quad.min(0), a.quad.max(0)
    (bx0, by0), (bx1, by1) = b.quad.min(0), b.quad.max(0)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    return inter > 0
