"""JPEG bytes -> uint8 RGB arrays, and the crops training uses.

Decoding is Pillow's libjpeg-turbo; a corrupt picture raises ``CorruptPicture`` here and is
counted (with its product id) by the caller's ``DecodeStats``, so one bad JPEG in 12M never
stops a long job. Pictures are bounded: a JPEG larger than ``MAX_SIDE`` is decoded at a reduced
scale (libjpeg's DCT scaling, cheap), and any picture that would still exceed ``MAX_PIXELS`` (a
20000x20000 PNG, a decompression bomb) is refused as corrupt before a pixel is decoded. Cdiscount's
pictures are 180x180.
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)


MAX_SIDE = 2048          # larger JPEGs are decoded at 1/2, 1/4 or 1/8 scale
MAX_PIXELS = 4096 * 4096  # larger pictures (after that scaling) are refused: 50 MB of RGB at most


class CorruptPicture(ValueError):
    """Picture bytes that cannot be decoded, or a picture too large to decode safely."""


def decode_picture(data: bytes | memoryview) -> np.ndarray:
    """Decode JPEG (or any Pillow-readable) bytes to an ``(H, W, 3)`` uint8 RGB array."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if max(im.size) > MAX_SIDE and im.format == "JPEG":
                w, h = im.size
                im.draft("RGB", (w * MAX_SIDE // max(w, h), h * MAX_SIDE // max(w, h)))
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise CorruptPicture(f"{im.size[0]}x{im.size[1]} pixels is over the limit of {MAX_PIXELS:,}")
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptPicture(str(exc)) from None


def random_crop(picture: np.ndarray, size: int, rng: np.random.Generator, flip: bool = True) -> np.ndarray:
    """A random ``size`` x ``size`` crop (and horizontal flip); pictures smaller than ``size`` are padded.

    Returns a view when no flip or pad is needed, so the caller pays for one copy at most.
    """
    h, w = picture.shape[:2]
    if h < size or w < size:
        padded = np.full((max(h, size), max(w, size), 3), 255, np.uint8)
        padded[:h, :w] = picture
        picture, h, w = padded, padded.shape[0], padded.shape[1]
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    out = picture[y:y + size, x:x + size]
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def letterbox(picture: np.ndarray, size: int) -> np.ndarray:
    """``picture`` scaled to fit ``size`` x ``size`` (aspect kept) and centred on white."""
    h, w = picture.shape[:2]
    if (h, w) == (size, size):
        return picture
    scale = size / max(h, w)
    img = Image.fromarray(picture).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return np.asarray(canvas)


@dataclass
class DecodeStats:
    """Counts decoded and corrupt pictures; remembers the first few corrupt product ids to report."""

    decoded: int = 0
    corrupt: int = 0
    examples: list[tuple[int, int]] = field(default_factory=list)  # (product id, picture number)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_corrupt(self, product_id: int, picture: int) -> None:
        with self._lock:
            self.corrupt += 1
            if len(self.examples) < 20:
                self.examples.append((int(product_id), int(picture)))
        log.warning("corrupt picture %d of product %d skipped", picture, product_id)

    def summary(self) -> str:
        if not self.corrupt:
            return f"{self.decoded} pictures decoded, none corrupt"
        shown = ", ".join(f"{p}#{k}" for p, k in self.examples[:5])
        return f"{self.decoded} pictures decoded, {self.corrupt} corrupt (product#picture: {shown})"
