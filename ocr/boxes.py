"""What OCR finds on a picture: ``TextBox`` (one word or line, its confidence and corners), the one record
every engine returns, the cache stores and the specialists read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TextBox:
    """One word or line found on a picture."""

    text: str
    confidence: float            # in [0, 1]
    quad: np.ndarray             # (4, 2) float32 corners in picture pixels, clockwise from top-left
    features: np.ndarray | None  # float32 recogniser features (EasyOCR: pooled CRNN sequence output)


def box_quad(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
