"""Per-picture OCR features: one fixed-length float32 vector summarising a picture's text boxes.

Fusion and the specialists need the same numbers for every picture whatever it holds, including no
text at all, so the layout is fixed and named by ``PICTURE_FEATURE_NAMES``: box statistics in
picture-relative units, character-class ratios of the text, then the CRNN features pooled over the
boxes (zeros for engines without them, such as Tesseract).
"""

from __future__ import annotations

import numpy as np

from etalage.ocr.boxes import TextBox

CRNN_DIM = 256
SUMMARY_NAMES = (
    "box_count",          # boxes found
    "text_length",        # characters over all boxes
    "confidence_mean",
    "confidence_max",
    "height_mean",        # box height / picture height
    "height_max",
    "area_sum",           # box areas / picture area, summed (text coverage)
    "area_mean",
    "center_x_mean",      # box centres / picture size
    "center_y_mean",
    "center_y_std",       # vertical spread: title and author far apart on covers
    "digit_ratio",        # digits / characters
    "upper_ratio",        # upper-case letters / letters
    "letter_ratio",       # letters / characters
)
PICTURE_FEATURE_NAMES = SUMMARY_NAMES + tuple(f"crnn_{i}" for i in range(CRNN_DIM))


def picture_features(boxes: list[TextBox], height: int, width: int) -> np.ndarray:
    """The ``PICTURE_FEATURE_NAMES`` vector (float32) of one picture's boxes."""
    out = np.zeros(len(PICTURE_FEATURE_NAMES), np.float32)
    if not boxes:
        return out
    quads = np.stack([b.quad for b in boxes]).astype(np.float32)
    heights = (quads[:, :, 1].max(1) - quads[:, :, 1].min(1)) / height
    widths = (quads[:, :, 0].max(1) - quads[:, :, 0].min(1)) / width
    areas = heights * widths
    cx = quads[:, :, 0].mean(1) / width
    cy = quads[:, :, 1].mean(1) / height
    conf = np.array([b.confidence for b in boxes], np.float32)
    text = "".join(b.text for b in boxes)
    letters = sum(c.isalpha() for c in text)
    n_chars = max(1, len(text))
    summary = [len(boxes), len(text), conf.mean(), conf.max(), heights.mean(), heights.max(), areas.sum(),
               areas.mean(), cx.mean(), cy.mean(), cy.std(), sum(c.isdigit() for c in text) / n_chars,
               sum(c.isupper() for c in text) / max(1, letters), letters / n_chars]
    out[: len(SUMMARY_NAMES)] = summary
    feats = [b.features for b in boxes if b.features is not None]
    if feats:
        out[len(SUMMARY_NAMES):] = np.mean(feats, axis=0)[:CRNN_DIM]
    return out


# Per product, over all its pictures: what fusion sees of the reading (one summary for every specialist).
OCR_SUMMARY_NAMES = ("ocr_text_length", "ocr_box_count", "ocr_confidence_mean")


def text_summary(boxes_per_picture: list[list[TextBox]]) -> np.ndarray:
    """``OCR_SUMMARY_NAMES`` of one product (float32): characters and boxes over all its pictures,
    confidence averaged over its boxes (0 when nothing was read)."""
    boxes = [b for pic in boxes_per_picture for b in pic]
    conf = float(np.mean([b.confidence for b in boxes])) if boxes else 0.0
    return np.array([sum(len(b.text) for b in boxes), len(boxes), conf], np.float32)
