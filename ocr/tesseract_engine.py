"""Tesseract through pytesseract: word boxes with confidences, French and English by default.

Tesseract wants letters of 20-30px; 180px covers carry 10-15px ones, so pictures are upscaled
(3x by default) before reading, and boxes are mapped back to picture pixels.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from etalage.errors import ConfigError
from etalage.ocr.base import OcrEngine, TextBox, box_quad, register_engine

DEBIAN_PACKAGES = "tesseract-ocr tesseract-ocr-fra tesseract-ocr-eng"


@register_engine("tesseract")
class TesseractEngine(OcrEngine):
    """Options: ``lang`` ("fra+eng"), ``scale`` (3.0), ``psm`` (page segmentation mode; 11 = sparse
    text, suited to covers), ``min_confidence`` (0-100; words below are dropped)."""

    name = "tesseract"

    def __init__(self, lang: str = "fra+eng", scale: float = 3.0, psm: int = 11, min_confidence: float = 0.0):
        super().__init__(lang=lang, scale=scale, psm=psm, min_confidence=min_confidence)
        import pytesseract

        self._tess = pytesseract
        os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # one core per reader; parallelism is ours
        try:
            self._version = str(pytesseract.get_tesseract_version()).split()[0]
            available = set(pytesseract.get_languages(config=""))
        except (pytesseract.TesseractNotFoundError, OSError):
            raise ConfigError(f"tesseract is not installed; install the Debian packages {DEBIAN_PACKAGES} "
                              f"(apt-get install {DEBIAN_PACKAGES})") from None
        missing = [code for code in lang.split("+") if code not in available]
        if missing:
            pkgs = " ".join(f"tesseract-ocr-{m}" for m in missing)
            raise ConfigError(f"tesseract has no language {', '.join(missing)}; install the Debian package {pkgs}")
        self.lang, self.scale, self.psm, self.min_confidence = lang, scale, psm, min_confidence

    @property
    def version(self) -> str:
        return f"tesseract-{self._version}"

    def _read(self, pictures: list[np.ndarray]) -> list[list[TextBox]]:
        out = []
        for pic in pictures:
            h, w = pic.shape[:2]
            img = Image.fromarray(pic).convert("L")
            if self.scale != 1:
                img = img.resize((int(w * self.scale), int(h * self.scale)), Image.BICUBIC)
            data = self._tess.image_to_data(img, lang=self.lang, config=f"--psm {self.psm}",
                                            output_type=self._tess.Output.DICT)
            boxes = []
            for text, conf, x, y, bw, bh in zip(data["text"], data["conf"], data["left"], data["top"],
                                                data["width"], data["height"], strict=True):
                conf = float(conf)
                if not text.strip() or conf < max(0.0, self.min_confidence):
                    continue
                s = self.scale
                boxes.append(TextBox(text.strip(), conf / 100.0, box_quad(x / s, y / s, (x + bw) / s, (y + bh) / s),
                                     None))
            out.append(boxes)
        return out
