"""A small stand-in for ``etalage.pipeline.classify.Classifier`` with its exact interface, to test the HTTP
layer alone: it decodes each product's first picture and proposes the categories whose colours are
nearest its mean colour (so an answer depends on the pictures sent), and records the batches it saw."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
from PIL import Image

from etalage.errors import DataError
from etalage.serve.model import Category, Listing, Proposal

COLOURS = {  # category id -> (names, RGB)
    1000010653: (("LIBRAIRIE", "LITTERATURE", "ROMAN"), (200, 30, 30)),
    1000010667: (("LIBRAIRIE", "JEUNESSE", "ALBUM"), (30, 200, 30)),
    1000004085: (("MUSIQUE", "CD", "ROCK"), (30, 30, 200)),
    1000004079: (("MUSIQUE", "CD", "JAZZ"), (220, 220, 30)),
    1000018290: (("MAISON", "DECORATION", "COUSSIN"), (30, 200, 200)),
    1000015309: (("JEUX", "PLEIN AIR", "BALLON"), (200, 30, 200)),
    1000010100: (("TELEPHONIE", "ACCESSOIRE", "COQUE"), (128, 128, 128)),
}


def picture(rgb=(200, 30, 30), size=(64, 48), fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, fmt)
    return buf.getvalue()


def expected_top(rgb) -> int:
    """The category the fake proposes first for a picture of colour ``rgb``."""
    ids = list(COLOURS)
    return ids[int(np.argmin([np.abs(np.subtract(COLOURS[i][1], rgb)).sum() for i in ids]))]


class FakeClassifier:
    def __init__(self, max_batch: int = 8, delay_s: float = 0.0, per_product_s: float = 0.0):
        self.max_batch = max_batch
        self.delay_s = delay_s
        self.per_product_s = per_product_s
        self.batches: list[int] = []
        self.closed = False
        self._lock = threading.Lock()

    def classify(self, listings: list[Listing]) -> list[Proposal]:
        assert 1 <= len(listings) <= self.max_batch, f"a batch of {len(listings)} over max_batch {self.max_batch}"
        with self._lock:
            self.batches.append(len(listings))
        time.sleep(self.delay_s + self.per_product_s * len(listings))
        out = []
        for n, listing in enumerate(listings):
            if listing.title == "unreadable":
                raise DataError(f"listing {n} (product {listing.product_id}): picture 1 cannot be decoded")
            mean = np.asarray(Image.open(io.BytesIO(listing.pictures[0])).convert("RGB")).reshape(-1, 3).mean(0)
            distance = np.array([np.abs(np.subtract(rgb, mean)).sum() for _, rgb in COLOURS.values()])
            scores = np.exp(-distance / 60.0)
            probs = scores / scores.sum()
            order = np.argsort(-probs, kind="stable")[:5]
            ids = list(COLOURS)
            cats = [Category(ids[i], COLOURS[ids[i]][0], float(probs[i])) for i in order]
            signals = ["core"] + (["title"] if listing.title else []) + (["id"] if listing.product_id else [])
            out.append(Proposal(cats, signals))
        return out

    def close(self) -> None:
        self.closed = True


def slow() -> FakeClassifier:
    """For the real-server tests (``--classifier tests.serve.fakes:slow``): 0.3 s a batch."""
    return FakeClassifier(max_batch=8, delay_s=0.3)


def quick() -> FakeClassifier:
    return FakeClassifier(max_batch=16, per_product_s=0.002)


def slower() -> FakeClassifier:
    """1 s a batch: requests are surely in flight when a test stops the server."""
    return FakeClassifier(max_batch=8, delay_s=1.0)


def steady() -> FakeClassifier:
    """For the Ray Serve test: 50 ms a batch, so requests are in flight when a replica is killed."""
    return FakeClassifier(max_batch=8, delay_s=0.05)
