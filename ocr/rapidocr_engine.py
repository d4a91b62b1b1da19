"""RapidOCR: PaddleOCR's PP-OCRv4 detector and recogniser as ONNX models, run by onnxruntime.

The models ship inside the ``rapidocr-onnxruntime`` wheel (Apache-2.0), so nothing is downloaded.
PP-OCRv4's recogniser reads a whole text line and often drops the spaces between words
("POPULARINVESTMENTSTRATEGIES"); it also says where each character lies, so lines are split into
words where the gap between two characters is much wider than the line's usual gap. Its character
set is Chinese and ASCII: it reads no accents (as EasyOCR's english_g2; Tesseract's ``fra`` does).

``rapidocr-onnxruntime`` asks for ``opencv-python``, which would clash with the
``opencv-python-headless`` EasyOCR uses (both install ``cv2``): install it with ``--no-deps``
(``scripts/setup.sh`` does); its other requirements are etalage's own.
"""

from __future__ import annotations

import logging

import numpy as np

from etalage.errors import ConfigError
from etalage.ocr.base import OcrEngine
from etalage.ocr.boxes import TextBox

PACKAGE = "rapidocr-onnxruntime"


class RapidOcrEngine(OcrEngine):
    """Options: ``det_side`` (the detector sees the picture scaled so that its shorter side is this
    long; PP-OCR's default 736 upscales a 180px picture 4x), ``text_score`` (lines read below this
    confidence are dropped), ``box_thresh`` and ``unclip_ratio`` (the detector's), ``split_words``
    (split lines at wide gaps between characters), ``gap_ratio`` (a gap this many times the line's
    median gap splits), ``scale`` (the picture is upscaled this much first: the recogniser reads crops of it),
    ``upside_down`` (run PP-OCR's 180-degree classifier on each line: covers are upright, and it costs a
    fifth of the time), ``rec_batch`` (lines per recogniser batch).

    >>> engine = load_engine("rapidocr")
    >>> [b.text for b in engine.read([cover])[0]]
    """

    name = "rapidocr"

    def __init__(self, det_side: int = 736, text_score: float = 0.5, box_thresh: float = 0.5,
                 unclip_ratio: float = 1.6, split_words: bool = True, gap_ratio: float = 2.5,
                 scale: float = 1.0, upside_down: bool = False, rec_batch: int = 6):
        super().__init__(det_side=det_side, text_score=text_score, box_thresh=box_thresh, unclip_ratio=unclip_ratio,
                         split_words=split_words, gap_ratio=gap_ratio, scale=scale, upside_down=upside_down,
                         rec_batch=rec_batch)
        self.scale, self.upside_down = scale, upside_down
        try:
            import rapidocr_onnxruntime
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise ConfigError(f"the rapidocr engine needs the PyPI package {PACKAGE} (pip install --no-deps {PACKAGE}"
                              f"; scripts/setup.sh does): {exc}") from None
        logging.getLogger("RapidOCR").setLevel(logging.WARNING)
        self._ocr = RapidOCR(det_limit_side_len=det_side, det_limit_type="min", det_box_thresh=box_thresh,
                             det_unclip_ratio=unclip_ratio, text_score=text_score, print_verbose=False,
                             rec_batch_num=rec_batch)
        self._lib_version = getattr(rapidocr_onnxruntime, "__version__", "1.4")
        self.text_score, self.box_thresh, self.unclip_ratio = text_score, box_thresh, unclip_ratio
        self.split_words, self.gap_ratio = split_words, gap_ratio

    @property
    def version(self) -> str:
        return f"rapidocr-{self._lib_version}+ppocrv4"

    def _read(self, pictures: list[np.ndarray]) -> list[list[TextBox]]:
        import cv2

        out = []
        for pic in pictures:
            if self.scale != 1:  # the recogniser reads crops of this picture: more pixels per letter
                pic = cv2.resize(pic, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_CUBIC)
            result, _ = self._ocr(pic, use_cls=self.upside_down, return_word_box=self.split_words,
                                  text_score=self.text_score,
                                  box_thresh=self.box_thresh, unclip_ratio=self.unclip_ratio)
            boxes = []
            for line in result or []:
                quad, text, score = line[0], str(line[1]), float(line[2])
                if self.split_words and len(line) >= 6 and line[3]:
                    boxes.extend(split_line(line[3], line[4], line[5], self.gap_ratio))
                elif text.strip():
                    boxes.append(TextBox(text.strip(), float(np.clip(score, 0, 1)), np.asarray(quad, np.float32),
                                         None))
            if self.scale != 1:
                for b in boxes:
                    b.quad = b.quad / self.scale
            out.append(boxes)
        return out


def split_line(char_quads, chars, scores, gap_ratio: float) -> list[TextBox]:
    """Words of one recognised line from its characters' boxes: a new word starts after a space or
    where the gap to the previous character exceeds ``gap_ratio`` times the line's median gap (and
    half a median character width, so tight typefaces are not cut between letters)."""
    quads = np.asarray(char_quads, np.float32).reshape(-1, 4, 2)
    x0, x1 = quads[:, :, 0].min(1), quads[:, :, 0].max(1)
    gaps = x0[1:] - x1[:-1]
    width = float(np.median(x1 - x0)) if len(x0) else 0.0
    typical = float(np.median(np.clip(gaps, 0, None))) if len(gaps) else 0.0
    cut = max(gap_ratio * typical, 0.5 * width, 1.0)
    words: list[list[int]] = [[]]
    for i, ch in enumerate(chars):
        if ch == " ":
            words.append([])
            continue
        if i and words[-1] and gaps[i - 1] > cut:
            words.append([])
        words[-1].append(i)
    out = []
    for w in words:
        if not w:
            continue
        q = quads[w]
        xs, ys = q[:, :, 0], q[:, :, 1]
        quad = np.array([[xs.min(), ys.min()], [xs.max(), ys.min()], [xs.max(), ys.max()], [xs.min(), ys.max()]],
                        np.float32)
        out.append(TextBox("".join(chars[i] for i in w), float(np.clip(np.mean([scores[i] for i in w]), 0, 1)),
                           quad, None))
    return out
