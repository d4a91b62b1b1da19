"""The BookCover30 benchmark (Iwana et al., "Judging a Book by its Cover"): 30 genres of Amazon books.

Listings are the public CSV format (quoted, no header): ASIN, filename, image URL, title, author,
class id, class name. Covers come from a folder of the real pictures (``--images``) or are drawn
at 180x180 from title and author (``--render``; the real pictures are not available offline, and
the report says which). Four ways to classify a book are scored: ``title`` (the books specialist on
the clean title and author), ``ocr`` (the same specialist on what OCR reads from the cover),
``image`` (ImageNet CNN features of the cover + logistic regression) and ``fused`` (OCR and image
probabilities averaged).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.catalog.taxonomy import Taxonomy
from etalage.errors import DataError
from etalage.progress import bar as progress_bar

PUBLISHED = {  # top-1 on BookCover30's test set; all trained on 51,300 books
    "Iwana et al. AlexNet (cover)": 0.247,
    "Lucieri et al. NASNet (cover)": 0.305,
    "CTU thesis ResNet50 (cover)": 0.282,
    "EXAN title text": 0.652,
    "multimodal (cover + title)": 0.6909,
}


@dataclass
class Book:
    asin: str
    filename: str
    title: str
    author: str
    class_id: int
    class_name: str


def read_listing(path: str | Path) -> list[Book]:
    path = Path(path)
    books = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            for line_no, row in enumerate(csv.reader(fh), start=1):
                if not row:
                    continue
                if len(row) != 7:
                    raise DataError(f"{path}: line {line_no}: expected 7 fields (ASIN, filename, image URL, title, "
                                    f"author, class id, class name), got {len(row)}")
                try:
                    class_id = int(row[5])
                except ValueError:
                    raise DataError(f"{path}: line {line_no}: class id {row[5]!r} is not an integer") from None
                books.append(Book(row[0], row[1], row[3], row[4], class_id, row[6]))
    except OSError as exc:
        raise DataError(f"{path}: cannot read listing: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not books:
        raise DataError(f"{path}: empty listing")
    return books


def genre_taxonomy(books: list[Book]) -> Taxonomy:
    """The 30 genres as a one-group taxonomy (level-1 LIBRAIRIE), so the books specialist applies."""
    names = {}
    for b in books:
        names.setdefault(b.class_id, b.class_name)
    return Taxonomy.from_rows([(cid, "LIBRAIRIE", name, name) for cid, name in names.items()], source="BookCover30")


def cover_pictures(books: list[Book], images: str | Path | None, seed: int = 0) -> list[np.ndarray]:
    """Covers as 180x180 RGB arrays: the real files from ``images``, or rendered (JPEG quality 75)."""
    from PIL import Image

    from etalage.synth.covers import SIZE, render_cover

    out = []
    for i, b in enumerate(books):
        if images is not None:
            path = Path(images) / b.filename
            try:
                img = Image.open(path).convert("RGB")
            except OSError:
                raise DataError(f"{path}: cover of {b.asin} is missing or unreadable") from None
            img.thumbnail((SIZE, SIZE))
            canvas = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
            canvas.paste(img, ((SIZE - img.width) // 2, (SIZE - img.height) // 2))
            out.append(np.asarray(canvas))
        else:
            out.append(render_cover(b.title, b.author, np.random.default_rng([seed, i])))
    return out


def text_readings(texts: list[str]):
    """Readings made of clean text (one box per word), for the ``title`` path."""
    from etalage.ocr.base import TextBox, box_quad
    from etalage.ocr.features import PICTURE_FEATURE_NAMES
    from etalage.specialists.base import ProductReading

    zeros = np.zeros((1, len(PICTURE_FEATURE_NAMES)), np.float32)
    return [ProductReading(i, [[TextBox(w, 1.0, box_quad(0, 0, 1, 1), None) for w in t.split()]], zeros)
            for i, t in enumerate(texts)]


def ocr_readings(pictures: list[np.ndarray], engine, cache, progress: bool = False):
    import hashlib

    from etalage.ocr.cache import read_cached
    from etalage.ocr.features import picture_features
    from etalage.specialists.base import ProductReading

    out = []
    for start in progress_bar(range(0, len(pictures), 32), desc="ocr covers", enabled=progress):
        part = pictures[start:start + 32]
        keys = [hashlib.md5(p.tobytes()).digest() for p in part]
        for j, (pic, boxes) in enumerate(zip(part, read_cached(engine, cache, part, keys), strict=True)):
            out.append(ProductReading(start + j, [boxes], picture_features(boxes, *pic.shape[:2])[None]))
    return out


def image_features(pictures: list[np.ndarray], batch: int = 64, progress: bool = False) -> np.ndarray:
    """Pooled ImageNet features of efficientnet_lite0 (offline weights), one row per cover."""
    import torch

    from etalage.core.backbones import create_backbone

    bb = create_backbone("efficientnet_lite0", "imagenet")
    model = bb.model.eval()
    mean = torch.tensor(bb.mean).view(1, 3, 1, 1)
    std = torch.tensor(bb.std).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for i in progress_bar(range(0, len(pictures), batch), desc="cnn covers", enabled=progress):
            x = torch.from_numpy(np.stack(pictures[i:i + batch])).permute(0, 3, 1, 2).float() / 255
            out.append(model((x - mean) / std).numpy())
    return np.concatenate(out).astype(np.float32)


def topk_scores(proba: np.ndarray, classes: np.ndarray, truth: np.ndarray) -> dict:
    order = np.argsort(-proba, axis=1)
    top = classes[order[:, :3]]
    return {"top1": float((top[:, 0] == truth).mean()), "top3": float((top == truth[:, None]).any(1).mean()),
            "n": int(len(truth))}


def run_bookcover(train: list[Book], test: list[Book], images: str | Path | None, work: str | Path,
                  ocr_engine: str = "easyocr", seed: int = 0, progress: bool = True) -> dict:
    """Train on ``train`` and score ``test``; returns the report (without writing it)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from etalage.ocr import load_engine
    from etalage.ocr.cache import OcrCache
    from etalage.specialists import create_specialist

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    tax = genre_taxonomy(train + test)
    y_train = tax.indices_of(np.array([b.class_id for b in train]))
    y_test = tax.indices_of(np.array([b.class_id for b in test]))
    timings: dict[str, float] = {}
    report: dict = {"covers": "real pictures from " + str(images) if images else
                    "rendered 180x180 from title and author (JPEG q75): the real covers are not available",
                    "train_books": len(train), "test_books": len(test), "published_top1": PUBLISHED}

    def clean(b: Book) -> str:
        return f"{b.title} {b.author}"

    t0 = time.perf_counter()
    spec = create_specialist("books")
    spec.fit(text_readings([clean(b) for b in train]), y_train, tax)
    title_out = spec.predict(text_readings([clean(b) for b in test]))
    report["title"] = topk_scores(title_out.scores, title_out.class_indices, y_test)
    timings["title_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pics_train = cover_pictures(train, images, seed)
    pics_test = cover_pictures(test, images, seed + 1)
    timings["covers_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    engine = load_engine(ocr_engine)
    with OcrCache(work / "ocr-cache.sqlite") as cache:
        r_train = ocr_readings(pics_train, engine, cache, progress)
        r_test = ocr_readings(pics_test, engine, cache, progress)
    timings["ocr_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    spec_ocr = create_specialist("books")
    spec_ocr.fit(r_train, y_train, tax)
    ocr_out = spec_ocr.predict(r_test)
    report["ocr"] = topk_scores(ocr_out.scores, ocr_out.class_indices, y_test)
    timings["ocr_fit_predict_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    f_train, f_test = image_features(pics_train, progress=progress), image_features(pics_test, progress=progress)
    scaler = StandardScaler().fit(f_train)
    clf = LogisticRegression(C=0.05, max_iter=2000).fit(scaler.transform(f_train), y_train)
    image_proba = np.zeros_like(ocr_out.scores)
    col = {int(c): j for j, c in enumerate(ocr_out.class_indices)}
    image_proba[:, [col[int(c)] for c in clf.classes_]] = clf.predict_proba(scaler.transform(f_test))
    report["image"] = topk_scores(image_proba, ocr_out.class_indices, y_test)
    timings["image_s"] = time.perf_counter() - t0

    fused = 0.5 * ocr_out.scores + 0.5 * image_proba
    report["fused"] = topk_scores(fused, ocr_out.class_indices, y_test)
    report["timings"] = timings
    report["_confusion"] = (ocr_out.class_indices[fused.argmax(1)], y_test, tax)
    return report


def confusion_png(pred: np.ndarray, truth: np.ndarray, tax: Taxonomy, path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = tax.n_classes
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (truth, pred), 1)
    fig, ax = plt.subplots(figsize=(11, 10))
    ax.imshow(m / np.maximum(1, m.sum(1, keepdims=True)), cmap="Blues", vmin=0, vmax=1)
    names = [tax.level3_names[i][:22] for i in range(n)]
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
