"""Book and CD cover pictures drawn from a title and an author: the synthetic catalogue's covers,
the rendered covers of the book-cover benchmark, and the OCR engine's int8 calibration pictures.

Colours, fonts and layouts are random but drawn from one distribution per kind, so only the printed
words tell two covers apart.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image, ImageDraw

from etalage.synth.fonts import load_font

SIZE = 180


def hsv_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return int(r * 255), int(g * 255), int(b * 255)


def _fit_lines(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def draw_cover(title: str, person: str, rng: np.random.Generator, kind: str = "book") -> Image.Image:
    """A 180x180 product photo of a book (portrait) or CD (square, disc showing) cover.

    Colours, fonts and layouts are random but drawn from one distribution per kind, so only the
    printed words tell two classes apart. Also used to render covers for the OCR benchmarks.
    """
    img = Image.new("RGB", (SIZE, SIZE), hsv_rgb(0, 0, 0.93 + 0.07 * rng.random()))
    draw = ImageDraw.Draw(img)
    if kind == "music":
        side = int(rng.integers(140, 168))
        x0, y0 = int(rng.integers(2, SIZE - side - 1)), int(rng.integers(2, SIZE - side - 1))
        w, h = side, side
        dx = x0 + side - side // 3
        draw.ellipse([dx, y0 + 8, dx + side - 16, y0 + side - 8], fill=(200, 200, 205), outline=(120, 120, 120))
    else:
        w, h = int(rng.integers(108, 132)), int(rng.integers(158, 176))
        x0, y0 = int(rng.integers(2, SIZE - w - 1)), int(rng.integers(2, SIZE - h - 1))
    dark = rng.random() < 0.5
    bg = hsv_rgb(rng.random(), 0.3 + 0.5 * rng.random(), 0.15 + 0.25 * rng.random() if dark else 0.8 + 0.2 * rng.random())
    ink = hsv_rgb(rng.random(), 0.2 * rng.random(), 0.95 if dark else 0.08)
    draw.rectangle([x0, y0, x0 + w, y0 + h], fill=bg, outline=(60, 60, 60))
    if rng.random() < 0.5:  # a decorative band
        by = y0 + int(rng.integers(h // 3, 2 * h // 3))
        draw.rectangle([x0, by, x0 + w, by + int(rng.integers(8, 24))], fill=hsv_rgb(rng.random(), 0.5, 0.7))
    font_id = int(rng.integers(0, 64))
    title_size = int(rng.integers(15, 22))
    person_font = load_font(font_id + int(rng.integers(0, 3)), int(rng.integers(12, 16)))
    title = title.upper() if rng.random() < 0.4 else title
    while True:  # shrink the title until its longest word and all its lines fit the cover
        title_font = load_font(font_id, title_size)
        title_lines = _fit_lines(draw, title, title_font, w - 10)
        fits_width = max(draw.textlength(t, font=title_font) for t in title_lines) <= w - 10
        fits_height = len(title_lines) * (title_size + 3) <= 0.65 * h
        if title_size <= 10 or (fits_width and fits_height):
            break
        title_size -= 1
    title_lines = title_lines[: max(1, int(0.65 * h) // (title_size + 3))]  # a long subtitle is cut, as on covers
    layout = rng.integers(0, 3)  # title top, middle or bottom; the name opposite
    line_h = title_font.size + 3
    ty = {0: y0 + 8, 1: y0 + h // 2 - line_h * len(title_lines) // 2, 2: y0 + h - 8 - line_h * len(title_lines)}[
        int(layout)]
    for k, line in enumerate(title_lines):
        draw.text((x0 + 5, ty + k * line_h), line, font=title_font, fill=ink)
    py = y0 + h - person_font.size - 8 if layout == 0 else y0 + 6
    draw.text((x0 + 5, py), person, font=person_font, fill=ink)
    return img


def render_cover(title: str, person: str, rng: np.random.Generator, kind: str = "book", quality: int = 75
                 ) -> np.ndarray:
    """``draw_cover`` through a JPEG of ``quality`` and back: an (180, 180, 3) uint8 RGB array with the
    compression artefacts a real listing picture has."""
    buf = io.BytesIO()
    draw_cover(title, person, rng, kind).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))
