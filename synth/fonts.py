"""TrueType fonts for drawing text on pictures (synthetic covers, rendered benchmark covers).

The DejaVu and STIX families ship inside matplotlib, a dependency, so every machine draws the
same covers for the same seed; the system's DejaVu fonts and Pillow's built-in font are
fallbacks.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from PIL import ImageFont

COVER_FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
)


@functools.cache
def cover_font_paths() -> tuple[str, ...]:
    """Paths of the available cover fonts, in a fixed order (empty if none is found)."""
    dirs = []
    spec = importlib.util.find_spec("matplotlib")  # locate without importing matplotlib
    if spec and spec.submodule_search_locations:
        dirs.append(Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf")
    dirs.append(Path("/usr/share/fonts/truetype/dejavu"))
    found = []
    for name in COVER_FONT_FILES:
        for d in dirs:
            if (d / name).exists():
                found.append(str(d / name))
                break
    return tuple(found)


@functools.cache
def load_font(index: int, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Font number ``index`` (modulo the available ones) at ``size`` pixels."""
    paths = cover_font_paths()
    if not paths:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(paths[index % len(paths)], size=size)
