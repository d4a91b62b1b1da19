"""Several OCR engines on the same pictures, their boxes merged: engines fail on different words
(EasyOCR's CRNN misreads letters PP-OCR gets right, PP-OCR runs words together that EasyOCR
separates), so what one misses the other often reads."""

from __future__ import annotations

import numpy as np

from etalage.errors import ConfigError
from etalage.ocr.base import OcrEngine, TextBox, merge_readings, register_engine

DEFAULT_MEMBERS = (("rapidocr", {}), ("easyocr", {}))


@register_engine("ensemble")
class EnsembleEngine(OcrEngine):
    """Options: ``members``, a list of (engine name, options) pairs read in that order; the first one's
    boxes are kept, later ones add the boxes that read something new (``merge_readings``).

    >>> engine = load_engine("ensemble", members=[("rapidocr", {"scale": 2}), ("easyocr", {})])
    """

    name = "ensemble"

    def __init__(self, members=DEFAULT_MEMBERS):
        from etalage.ocr.base import load_engine

        members = [(str(n), dict(o or {})) for n, o in members]
        if not members or any(n == "ensemble" for n, _ in members):
            raise ConfigError(f"ensemble members must be one or more other engines, got {[n for n, _ in members]}")
        self.members = [load_engine(n, **o) for n, o in members]
        super().__init__(members=[[m.name, m.options] for m in self.members])  # enough to rebuild it

    @property
    def version(self) -> str:
        return "+".join(m.version for m in self.members)

    def _read(self, pictures: list[np.ndarray]) -> list[list[TextBox]]:
        readings = [m.read(pictures) for m in self.members]
        return [merge_readings([r[i] for r in readings]) for i in range(len(pictures))]
