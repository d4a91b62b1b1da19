"""The OCR interface: engines turn RGB pictures into ``TextBox`` lists, one list per picture.

Specialists read book and CD covers through this one door (``load_engine``), whatever the engine.
An engine is pre-processing + model + post-processing, like doctr's predictors; ``name``,
``version`` and ``options`` identify its results in the cache.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from etalage.errors import ConfigError
from etalage.options import DEFAULT_OCR_ENGINE

MIN_SIDE = 8  # pictures with a shorter side are not read (too small to hold a word)


@dataclass
class TextBox:
    """One word or line found on a picture."""

    text: str
    confidence: float            # in [0, 1]
    quad: np.ndarray             # (4, 2) float32 corners in picture pixels, clockwise from top-left
    features: np.ndarray | None  # float32 recogniser features (EasyOCR: pooled CRNN sequence output)


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


def box_quad(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


class OcrEngine(ABC):
    """Reads text boxes from pictures. Subclasses set ``name`` and fill ``options``."""

    name: str = ""

    def __init__(self, **options):
        self.options = dict(sorted(options.items()))

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
        return self._read(pictures)

    @abstractmethod
    def _read(self, pictures: list[np.ndarray]) -> list[list[TextBox]]:
        ...


_ENGINES: dict[str, Callable[..., OcrEngine]] = {}


def register_engine(name: str):
    def wrap(factory):
        _ENGINES[name] = factory
        return factory
    return wrap


def _register_builtins() -> None:
    from etalage.ocr import easyocr_engine, rapidocr_engine, tesseract_engine  # noqa: F401 - they register


def load_engine(name: str | None = None, **options) -> OcrEngine:
    """The single door to OCR engines: ``"easyocr"``, ``"rapidocr"`` or ``"tesseract"``; no name gives
    the default reading (``etalage.options.DEFAULT_OCR_ENGINE``, chosen by measurement on real covers).

    >>> engine = load_engine()
    >>> boxes = engine.read([picture])[0]
    >>> " ".join(b.text for b in boxes)
    """
    _register_builtins()
    name = name or DEFAULT_OCR_ENGINE
    if name not in _ENGINES:
        raise ConfigError(f"unknown OCR engine {name!r}; known: {', '.join(sorted(_ENGINES))}")
    return _ENGINES[name](**options)


def engine_names() -> list[str]:
    _register_builtins()
    return sorted(_ENGINES)
