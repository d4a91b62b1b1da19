"""Real book and album covers as the pictures of the synthetic catalogue's LIBRAIRIE and MUSIQUE
products (``etalage synth --book-covers DIR --music-covers DIR``), so that the specialists and fusion
are exercised on real pictures end to end.

DIR holds ``listing.csv`` (BookCover30 column order) and ``images/``, the layout of
``../shared/data/real-covers/``. Each genre of the listing becomes a real Cdiscount class of the group
(``GENRE_CLASSES``: the level-1, level-2 and level-3 names of the real taxonomy); each product of such a
class shows one cover of its genre, letterboxed to 180x180 on white, and no cover is used twice while
any is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.errors import ConfigError

# genre of the real-cover listings -> (level-1, level-2, level-3) of the real Cdiscount taxonomy
GENRE_CLASSES = {
    "business": ("LIBRAIRIE", "ENTREPRISE - MARKETING - FINANCE", "MANAGEMENT"),
    "fantasy": ("LIBRAIRIE", "SCIENCE-FICTION", "FANTASY"),
    "romance": ("LIBRAIRIE", "LITTERATURE", "LITTERATURE SENTIMENTALE "),
    "science_fiction": ("LIBRAIRIE", "SCIENCE-FICTION", "SCIENCE-FICTION"),
    "textbooks": ("LIBRAIRIE", "ETUDES SUPERIEURES", "UNIVERSITAIRE"),
    "Country": ("MUSIQUE", "CD", "CD VARIETE INTERNATIONALE"),
    "Electronic": ("MUSIQUE", "CD", "CD TECHNO - CD ELECTRO"),
    "HipHop": ("MUSIQUE", "CD", "CD RAP - CD HIP HOP"),
    "Pop": ("MUSIQUE", "CD", "CD POP ROCK - CD ROCK INDE"),
    "Rock": ("MUSIQUE", "CD", "CD HARD ROCK - CD METAL"),
}


@dataclass(frozen=True)
class CoverSource:
    """The covers of one folder, by the class names their genre maps to."""

    folder: Path
    group: str
    files: dict[tuple[str, str, str], list[str]]  # (level-1, level-2, level-3) -> cover file names

    @classmethod
    def open(cls, folder: str | Path, group: str) -> CoverSource:
        from etalage.catalog.listings import read_listing

        folder = Path(folder)
        listing = folder / "listing.csv"
        if not listing.exists() or not (folder / "images").is_dir():
            raise ConfigError(f"{folder}: expected listing.csv and images/ (the layout of "
                              f"../shared/data/real-covers/books-dev)")
        files: dict[tuple[str, str, str], list[str]] = {}
        for cover in read_listing(listing):
            names = GENRE_CLASSES.get(cover.class_name)
            if names is None:
                raise ConfigError(f"{listing}: genre {cover.class_name!r} has no Cdiscount class; known: "
                                  f"{', '.join(GENRE_CLASSES)}")
            if names[0] != group:
                raise ConfigError(f"{listing}: genre {cover.class_name!r} is a {names[0]} class, not {group}")
            files.setdefault(names, []).append(cover.filename)
        return cls(folder, group, {k: sorted(v) for k, v in files.items()})

    def assign(self, classes_of_products: dict[tuple[str, str, str], np.ndarray], seed: int) -> dict[int, Path]:
        """Product number -> cover file: each class's products take its covers in a seeded random order,
        reusing them only when the products outnumber the covers."""
        out = {}
        rng = np.random.default_rng([seed, 5])
        for names, products in classes_of_products.items():
            files = self.files[names]
            order = rng.permutation(len(files))
            for j, product in enumerate(products):
                out[int(product)] = self.folder / "images" / files[order[j % len(files)]]
        return out


def cover_jpeg(path: Path, quality: int) -> bytes:
    """The cover at ``path`` letterboxed to 180x180 on white, as JPEG bytes."""
    import io

    from PIL import Image

    from etalage.catalog.pictures import letterbox

    try:
        pic = np.asarray(Image.open(path).convert("RGB"))
    except OSError:
        raise ConfigError(f"{path}: cover missing or unreadable") from None
    buf = io.BytesIO()
    Image.fromarray(letterbox(pic, 180)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
