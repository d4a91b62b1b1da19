"""Several OCR engines on the same pictures, their boxes merged: engines fail on different words
(EasyOCR's CRNN misreads letters PP-OCR gets right, PP-OCR runs words together that EasyOCR
separates), so what one misses the other often reads."""

from __future__ import annotations

import numpy as np

from etalage.errors import ConfigError
from etalage.ocr.base import OcrEngine, merge_readings
from etalage.ocr.boxes import TextBox

DEFAULT_MEMBERS = (("rapidocr", {}), ("easyocr", {}))


class EnsembleEngine(OcrEngine):
    """Several engines read in order: the first one's boxes are kept, later ones add the boxes that read
    something new (``merge_readings``). Built by ``load_engine("ensemble", members=[(name, options), ...])``.

    >>> engine = load_engine("ensemble", members=[("rapidocr", {"scale": 2}), ("easyocr", {})])
    """

    name = "ensemble"

    def __init__(self, members: list[OcrEngine]):
        if not members or any(m.name == "ensemble" for m in members):
            raise ConfigError(f"ensemble members must be one or more other engines, got {[m.name for m in members]}")
        self.members = list(members)
        super().__init__(members=[[m.name, m.options] for m in self.members])  # enough to rebuild it

    @property
    def version(self) -> str:
        return "+".join(m.version for m in self.members)

    def _read(self, pictures: list[np.ndarray]) -> list[list[TextBox]]:
        readings = [m.read(pictures) for m in self.members]
        return [merge_readings([r[i] for r in readings]) for i in range(len(pictures))]
