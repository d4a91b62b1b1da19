"""RapidOCR: PaddleOCR's PP-OCRv6 (small) detector and recogniser as ONNX models, run by onnxruntime.

The models ship inside the ``rapidocr`` wheel (Apache-2.0) and are given to RapidOCR by path: its
download code (it fetches any model it does not find by name) never runs. ``rapidocr`` 3.10 is the
first release that asks for ``opencv-python-headless``, as EasyOCR does (earlier ones, and
``rapidocr-onnxruntime``, ask for ``opencv-python``: two packages installing ``cv2``), so plain
``pip install etalage`` gives this engine. PP-OCR's recogniser reads a whole text line and can drop
the spaces between words ("POPULARINVESTMENTSTRATEGIES"); it also says where each character lies, so
lines are split into words where the gap between two characters is much wider than the line's usual
gap. PP-OCRv6's recogniser is multilingual (Latin scripts with their accents, Chinese, Japanese).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from etalage.errors import ConfigError
from etalage.ocr.base import OcrEngine
from etalage.ocr.boxes import TextBox
from etalage.resources import package_file

PACKAGE = "rapidocr"
MODEL = "ppocrv6-small"  # in the cache key: results change with the model
MODEL_FILES = {"Det": "PP-OCRv6_det_small.onnx", "Rec": "PP-OCRv6_rec_small.onnx",
               "Cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx"}  # the files inside the wheel's models/
LIBRARY_LOGGER = "RapidOCR"


@contextlib.contextmanager
def quiet_library_log(name: str = LIBRARY_LOGGER):
    """RapidOCR logs every model it loads and warns on every picture without text, and ``RapidOCR()``
    sets its logger's level from its config: keep it at ERROR while we use it, then give the caller
    back the level it had."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


@dataclass
class Line:
    """One recognised line: its quad, text (with the spaces the recogniser read), confidence, and
    the quads and confidences of its non-space characters (None when RapidOCR gave none)."""

    quad: np.ndarray
    text: str
    score: float
    char_quads: list | None = None
    char_scores: list | None = None


class RapidOcrEngine(OcrEngine):
    """Options: ``det_side`` (the detector sees the picture scaled so that its shorter side is this
    long; PP-OCR's default 736 upscales a 180px picture 4x), ``text_score`` (lines read below this
    confidence are dropped), ``box_thresh`` and ``unclip_ratio`` (the detector's), ``split_words``
    (a box per word, lines cut at the spaces read and at wide gaps between characters; off: a box per
    line), ``gap_ratio`` (a gap this many times the line's median gap within words splits), ``scale``
    (the picture is upscaled this much first: the recogniser reads crops of it), ``upside_down`` (run
    PP-OCR's 180-degree classifier on each line: covers are upright, and it costs a fifth of the time),
    ``rec_batch`` (lines per recogniser batch).

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
        self.text_score, self.box_thresh, self.unclip_ratio = text_score, box_thresh, unclip_ratio
        self.split_words, self.gap_ratio = split_words, gap_ratio
        self.det_side, self.rec_batch = det_side, rec_batch
        self._models = self._check_installed()
        self._lib_version = metadata.version(PACKAGE)
        self._pipeline = None  # the ONNX sessions load on the first read: an engine whose pictures are all cached
                               # costs nothing (a cluster's actors, a rerun)

    @staticmethod
    def _check_installed():
        """The folder of the model files inside RapidOCR's wheel; a missing package or file names the fix."""
        import importlib.util

        if importlib.util.find_spec("rapidocr") is None:
            raise ConfigError(f"the rapidocr engine needs the PyPI package {PACKAGE} (pip install '{PACKAGE}>=3.10,<4')")
        models = package_file("rapidocr", "models", PACKAGE)
        missing = [f for f in MODEL_FILES.values() if not (models / f).is_file()]
        if missing:
            raise ConfigError(f"{models} lacks {', '.join(missing)}: reinstall the PyPI package "
                              f"{PACKAGE}>=3.10,<4 (its wheel carries them)")
        return models

    def _ocr(self, *args, **kwargs):
        """The RapidOCR pipeline on the wheel's own model files, loaded on first use."""
        if self._pipeline is None:
            from rapidocr import RapidOCR

            params = {f"{stage}.model_path": str(self._models / file) for stage, file in MODEL_FILES.items()}
            params.update({"Global.log_level": "error", "Global.text_score": self.text_score,
                           "Det.limit_side_len": self.det_side, "Det.limit_type": "min",
                           "Det.box_thresh": self.box_thresh, "Det.unclip_ratio": self.unclip_ratio,
                           "Rec.rec_batch_num": self.rec_batch})
            self._pipeline = RapidOCR(params=params)
        return self._pipeline(*args, **kwargs)

    @property
    def version(self) -> str:
        return f"rapidocr-{self._lib_version}+{MODEL}"

    def _read(self, pictures: list[np.ndarray]) -> list[list[TextBox]]:
        import cv2

        out = []
        with quiet_library_log():
            for pic in pictures:
                if self.scale != 1:  # the recogniser reads crops of this picture: more pixels per letter
                    pic = cv2.resize(pic, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_CUBIC)
                boxes = [box for line in self._lines(pic) for box in self._boxes(line)]
                if self.scale != 1:
                    for b in boxes:
                        b.quad = b.quad / self.scale
                out.append(boxes)
        return out

    def _lines(self, pic: np.ndarray) -> list[Line]:
        """PP-OCR's lines on one RGB picture (RapidOCR takes arrays as BGR, as OpenCV does)."""
        res = self._ocr(np.ascontiguousarray(pic[:, :, ::-1]), use_cls=self.upside_down,
                        return_word_box=self.split_words, return_single_char_box=self.split_words,
                        text_score=self.text_score, box_thresh=self.box_thresh, unclip_ratio=self.unclip_ratio)
        if getattr(res, "txts", None) is None or getattr(res, "boxes", None) is None:
            return []
        lines = [Line(np.asarray(q, np.float32), str(t), float(s))
                 for q, t, s in zip(res.boxes, res.txts, res.scores, strict=True)]
        if self.split_words:
            attach_characters(lines, res.word_results or ())
        return lines

    def _boxes(self, line: Line) -> list[TextBox]:
        if self.split_words and line.char_quads:
            return split_line(line.text, line.char_quads, line.char_scores, self.gap_ratio)
        text = line.text.strip()
        return [TextBox(text, float(np.clip(line.score, 0, 1)), line.quad, None)] if text else []


def attach_characters(lines: list[Line], word_results) -> None:
    """Give each line its characters' quads from RapidOCR's ``word_results`` (one tuple of
    (character, score, quad) per line, spaces left out). RapidOCR drops the entry of a line it could
    not place characters on, so entries are matched to lines by their characters, in order; a line
    without a match keeps no characters (it is not split)."""
    entries = [e for e in word_results if e]
    j = 0
    for line in lines:
        if j >= len(entries):
            return
        chars = [c for c, _score, _quad in entries[j]]
        if "".join(chars) == "".join(line.text.split()) and all(len(c) == 1 for c in chars):
            line.char_quads = [q for _c, _score, q in entries[j]]
            line.char_scores = [float(s) for _c, s, _quad in entries[j]]
            j += 1


def split_line(text: str, char_quads, char_scores, gap_ratio: float, min_gap: float = 0.5) -> list[TextBox]:
    """Words of one recognised line from its non-space characters' boxes: a new word starts after a
    space or where the gap to the previous character exceeds ``gap_ratio`` times the line's median
    gap within words and ``min_gap`` times the median character width (so tight typefaces are not cut
    between letters)."""
    chars, after_space, space = [], [], False
    for ch in text:
        if ch.isspace():
            space = True
            continue
        chars.append(ch)
        after_space.append(space)
        space = False
    quads = np.asarray(char_quads, np.float32).reshape(-1, 4, 2)
    if len(quads) != len(chars):
        raise ValueError(f"{len(chars)} characters in {text!r} but {len(quads)} character boxes")
    x0, x1 = quads[:, :, 0].min(1), quads[:, :, 0].max(1)
    gaps = x0[1:] - x1[:-1]
    inside = np.clip(gaps[~np.asarray(after_space[1:], bool)], 0, None)
    width = float(np.median(x1 - x0)) if len(x0) else 0.0
    typical = float(np.median(inside)) if len(inside) else 0.0
    cut = max(gap_ratio * typical, min_gap * width, 1.0)
    words: list[list[int]] = []
    for i in range(len(chars)):
        if not words or after_space[i] or gaps[i - 1] > cut:
            words.append([])
        words[-1].append(i)
    out = []
    for w in words:
        q = quads[w]
        xs, ys = q[:, :, 0], q[:, :, 1]
        quad = np.array([[xs.min(), ys.min()], [xs.max(), ys.min()], [xs.max(), ys.max()], [xs.min(), ys.max()]],
                        np.float32)
        out.append(TextBox("".join(chars[i] for i in w), float(np.clip(np.mean([char_scores[i] for i in w]), 0, 1)),
                           quad, None))
    return out
