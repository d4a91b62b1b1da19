import io

import numpy as np
import pytest
from PIL import Image

from etalage.synth import draw_cover

TITLES = [("Basics of Video Lighting", "Des Lyver"), ("Watercolor Solutions", "Charles Reid"),
          ("Aircraft The Jet as Art", "Jeffrey Milstein"), ("Pattern Book of New Orleans", "Roulhac Toledano")]


def render(title: str, author: str, seed: int) -> np.ndarray:
    """A 180x180 cover as the benchmark makes them (JPEG quality 75)."""
    img = draw_cover(title, author, np.random.default_rng(seed))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.fixture(scope="session")
def covers() -> list[np.ndarray]:
    return [render(t, a, i) for i, (t, a) in enumerate(TITLES)]


@pytest.fixture(scope="session")
def easyocr_engine():
    from etalage.ocr import load_engine

    return load_engine("easyocr")


@pytest.fixture(scope="session")
def rapidocr_engine():
    from etalage.ocr import load_engine

    return load_engine("rapidocr")


@pytest.fixture(scope="session")
def tesseract_engine():
    from etalage.ocr import load_engine

    return load_engine("tesseract")


def words(boxes) -> set[str]:
    return {w.lower().strip(":,.") for b in boxes for w in b.text.split()}
