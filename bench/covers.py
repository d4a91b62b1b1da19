"""The cover benchmark: genre from a cover's title, its OCR reading, its picture and their fusion.

Listings are CSV in BookCover30's column order (quoted, no header: id, file name, picture URL, title,
author, class id, class name): BookCover30 itself (Iwana et al., "Judging a Book by its Cover"), and the
real OpenLibrary book covers and Discogs album covers of ``../shared/data/real-covers``. Pictures come
from ``--images`` (letterboxed to 180x180 on white by default, the Cdiscount shape) or are rendered at
180x180 from title and author (``--render``: BookCover30's pictures are not available offline).

Paths scored, each with top-1, top-3 and n: ``title_baseline`` (word and character TF-IDF with
logistic regression on the clean title and author), ``title`` (the books specialist on them; both when
the listing has titles), ``ocr`` (the specialist's reading part on what OCR read),
``image`` (its looking part: ImageNet CNN features and a linear probe), ``fused`` (the two weighed by
cross-validation on the training covers). For the reading: title-word recall (title words of 3 or more
letters, accents folded, found among the words read) and pictures/s. One train/test split, or K-fold
cross-validation on one listing (mean and standard deviation over folds).
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.catalog.listings import Cover
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
PATHS = ("title_baseline", "title", "ocr", "image", "fused")


def has_titles(covers: list[Cover]) -> bool:
    return sum(bool(c.title.strip()) for c in covers) >= 0.9 * len(covers)


def genre_taxonomy(covers: list[Cover], group: str = "LIBRAIRIE", source: str = "listing") -> Taxonomy:
    """The listing's classes as one level-1 group, so the books (or music) specialist applies."""
    names = {}
    for c in covers:
        names.setdefault(c.class_id, c.class_name)
    return Taxonomy.from_rows([(cid, group, name, name) for cid, name in names.items()], source=source)


def cover_pictures(covers: list[Cover], images: str | Path | None, size: int | None = 180, seed: int = 0,
                   progress: bool = False) -> list[np.ndarray]:
    """Covers as RGB arrays: the files of ``images`` letterboxed to ``size`` (None: as they are), or
    rendered at 180x180 from title and author (JPEG quality 75)."""
    from PIL import Image

    from etalage.catalog.pictures import letterbox
    from etalage.synth.covers import render_cover

    out = []
    for i, c in enumerate(progress_bar(covers, desc="covers", unit="cover", enabled=progress)):
        if images is None:
            out.append(render_cover(c.title, c.author, np.random.default_rng([seed, i])))
            continue
        path = Path(images) / c.filename
        try:
            pic = np.asarray(Image.open(path).convert("RGB"))
        except OSError:
            raise DataError(f"{path}: cover of {c.key} is missing or unreadable") from None
        out.append(letterbox(pic, size) if size else pic)
    return out


# ---------------------------------------------------------------------------------------------
# reading


def fold_words(text: str) -> list[str]:
    """Lower-case words with accents folded (``Futé`` -> ``fute``)."""
    text = unicodedata.normalize("NFKD", text.lower())
    return re.findall(r"[a-z0-9]+", "".join(c for c in text if not unicodedata.combining(c)))


def title_word_recall(boxes_per_cover: list[list], texts: list[str]) -> tuple[float, int, int]:
    """(recall, found, total): the words of ``texts`` (3 or more letters) found among the words read."""
    found = total = 0
    for boxes, text in zip(boxes_per_cover, texts, strict=True):
        want = {w for w in fold_words(text) if len(w) >= 3 and w.isalpha()}
        got = {w for b in boxes for w in fold_words(b.text)}
        found += len(want & got)
        total += len(want)
    return (found / total if total else float("nan")), found, total


def read_covers(pictures: list[np.ndarray], engine, cache, batch: int = 16, progress: bool = False
                ) -> tuple[list[list], float | None]:
    """OCR boxes of every cover (through the cache, keyed by the picture's pixels) and the pictures/s of
    the ones read in this call (None when all were cached)."""
    from etalage.ocr.cache import read_cached

    out, fresh, seconds = [], 0, 0.0
    for start in progress_bar(range(0, len(pictures), batch), desc=f"read {engine.name}", unit="batch",
                              enabled=progress):
        part = pictures[start:start + batch]
        keys = [hashlib.md5(p.tobytes()).digest() for p in part]
        todo = len(set(keys) - set(cache.get_many(keys, engine.cache_key)))  # distinct pictures not read yet
        t0 = time.perf_counter()
        out.extend(read_cached(engine, cache, part, keys))
        if todo:
            fresh += todo
            seconds += time.perf_counter() - t0
    return out, (fresh / seconds if fresh else None)


def readings_of(boxes_per_cover: list[list], pictures: list[np.ndarray] | None):
    from etalage.ocr.features import picture_features
    from etalage.specialists.base import ProductReading

    return [ProductReading(i, [boxes], picture_features(boxes, 180, 180)[None],
                           None if pictures is None else [pictures[i]]) for i, boxes in enumerate(boxes_per_cover)]


def text_readings(texts: list[str]):
    """Readings made of clean text (one box per word), for the ``title`` path."""
    from etalage.specialists.readings import make_reading

    return [make_reading(t, i, []) for i, t in enumerate(texts)]


# ---------------------------------------------------------------------------------------------
# the paths


def topk_scores(proba: np.ndarray, classes: np.ndarray, truth: np.ndarray) -> dict:
    order = np.argsort(-proba, axis=1, kind="stable")
    top = classes[order[:, :3]]
    return {"top1": float((top[:, 0] == truth).mean()), "top3": float((top == truth[:, None]).any(1).mean()),
            "n": int(len(truth))}


def title_baseline(train_texts: list[str], y_train: np.ndarray, test_texts: list[str], y_test: np.ndarray) -> dict:
    """The stronger plain baseline on clean titles: word (1-2) and character (2-5) TF-IDF, logistic
    regression."""
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
    X = sparse.hstack([words.fit_transform(train_texts), chars.fit_transform(train_texts)]).tocsr()
    clf = LogisticRegression(C=10, max_iter=2000).fit(X, y_train)
    proba = clf.predict_proba(sparse.hstack([words.transform(test_texts), chars.transform(test_texts)]).tocsr())
    return topk_scores(proba, clf.classes_, y_test)


def score_split(specialist: str, tax: Taxonomy, train: list[int], test: list[int], covers: list[Cover],
                readings: list, titles: bool, options: dict | None = None) -> tuple[dict, np.ndarray, dict]:
    """Fit on the ``train`` covers and score the ``test`` covers on every path; returns the scores, the
    fused predictions (class indices) and the fitted weights."""
    from etalage.specialists import create_specialist

    options = options or {}
    y = tax.indices_of(np.array([c.class_id for c in covers]))
    scores = {}
    if titles:
        texts = [covers[i].text for i in range(len(covers))]
        scores["title_baseline"] = title_baseline([texts[i] for i in train], y[train], [texts[i] for i in test],
                                                  y[test])
        clean = text_readings(texts)
        spec = create_specialist(specialist, image="off", **options).fit([clean[i] for i in train], y[train], tax)
        out = spec.predict([clean[i] for i in test])
        scores["title"] = topk_scores(out.scores, out.class_indices, y[test])
    spec = create_specialist(specialist, **options).fit([readings[i] for i in train], y[train], tax)
    parts = spec.path_scores([readings[i] for i in test])
    for key, part in (("ocr", "text"), ("image", "image"), ("fused", "fused")):
        scores[key] = topk_scores(parts[part], spec.class_indices_, y[test])
    fused_pred = spec.class_indices_[parts["fused"].argmax(1)]
    return scores, fused_pred, {"text_weight": spec.weight_, **{f"oof_{k}": v for k, v in spec.oof_top1_.items()}}


@dataclass
class CoversSettings:
    """How the cover benchmark runs: the pictures (``images``: the listing's folder; None: rendered from title
    and author), ``test`` covers to score (None: ``cv``-fold cross-validation), the side pictures are letterboxed
    to (None: their own size), the level-1 ``group`` and its specialist (default: LIBRAIRIE when the listing has
    titles, else MUSIQUE), the OCR engine (None: the default reading), the seed, the specialist's options."""

    images: str | Path | None = None
    test: list[Cover] | None = None
    cv: int = 5
    size: int | None = 180
    group: str | None = None
    ocr_engine: str | None = None
    seed: int = 0
    options: dict | None = None


def run_covers(covers: list[Cover], work: str | Path, settings: CoversSettings | None = None,
               progress: bool = True) -> dict:
    """The benchmark: ``settings.test`` given, one split (train on ``covers``, score ``test``); else ``cv``-fold
    cross-validation on ``covers``. Returns the report (see ``write_report``)."""
    from sklearn.model_selection import StratifiedKFold

    from etalage.ocr import load_engine
    from etalage.ocr.cache import OcrCache

    st = settings or CoversSettings()
    images, test, cv, size, group, ocr_engine, seed, options = (st.images, st.test, st.cv, st.size, st.group,
                                                                st.ocr_engine, st.seed, st.options)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    every = covers + (test or [])
    titles = has_titles(every)
    group = group or ("LIBRAIRIE" if titles else "MUSIQUE")
    specialist = {"LIBRAIRIE": "books", "MUSIQUE": "music"}.get(group, "books")
    tax = genre_taxonomy(every, group)
    t0 = time.perf_counter()
    pictures = cover_pictures(every, images, size, seed, progress)
    timings = {"pictures_s": time.perf_counter() - t0}
    engine = load_engine(ocr_engine)
    t0 = time.perf_counter()
    with OcrCache(work / "ocr-cache.sqlite") as cache:
        boxes, speed = read_covers(pictures, engine, cache, progress=progress)
    timings["ocr_s"] = time.perf_counter() - t0
    readings = readings_of(boxes, pictures)
    y = np.array([c.class_id for c in every])
    if test is not None:
        splits = [(list(range(len(covers))), list(range(len(covers), len(every))))]
    else:
        splits = [(list(tr), list(va)) for tr, va in
                  StratifiedKFold(cv, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)]
    per_fold, weights = [], []
    pred = np.zeros(len(every), np.int32)
    scored = np.zeros(len(every), bool)
    t0 = time.perf_counter()
    for tr, te in progress_bar(splits, desc="folds", unit="fold", enabled=progress):
        scores, fused_pred, w = score_split(specialist, tax, tr, te, every, readings, titles, options)
        per_fold.append(scores)
        weights.append(w)
        pred[te], scored[te] = fused_pred, True
    timings["fit_predict_s"] = time.perf_counter() - t0
    recall = title_word_recall(boxes, [c.title for c in every]) if titles else (float("nan"), 0, 0)
    truth = tax.indices_of(y)
    return {"covers": "real pictures from " + str(images) + (f", letterboxed to {size}x{size} on white" if size else
                                                             ", at their own size") if images else
            "rendered 180x180 from title and author (JPEG q75)",
            "listing_covers": len(covers), "test_covers": len(test or []), "classes": tax.n_classes,
            "group": group, "specialist": specialist, "protocol": "train/test" if test is not None else f"{cv}-fold CV",
            "folds": per_fold, **summarise(per_fold), "weights": weights,
            "reading": {"engine": engine.cache_key, "title_word_recall": recall[0], "title_words_found": recall[1],
                        "title_words": recall[2], "pictures_per_s": speed},
            "timings": timings, "_confusion": (pred[scored], truth[scored], tax)}


def summarise(per_fold: list[dict]) -> dict:
    """Each path's top-1 and top-3: the value (one split) or mean and standard deviation over folds."""
    out = {}
    for path in PATHS:
        rows = [f[path] for f in per_fold if path in f]
        if rows:
            out[path] = {"top1": float(np.mean([r["top1"] for r in rows])),
                         "top1_sd": float(np.std([r["top1"] for r in rows])),
                         "top3": float(np.mean([r["top3"] for r in rows])), "n": int(sum(r["n"] for r in rows))}
    return out


# ---------------------------------------------------------------------------------------------
# the report


def write_report(report: dict, out: str | Path, listing_name: str) -> dict[str, Path]:
    """``out`` (JSON), ``out`` with ``.md`` (tables) and ``.png`` (the fused confusion matrix with
    counts); titles name ``listing_name``."""
    from etalage.files import atomic_write, write_json_atomic

    out = Path(out)
    pred, truth, tax = report.pop("_confusion")
    png = out.with_suffix(".png")
    fused = report.get("fused", {})
    confusion_png(pred, truth, tax, png, f"{listing_name}: fused top-1 {fused.get('top1', float('nan')):.3f} "
                                         f"({report['protocol']}, n={len(truth)})")
    write_json_atomic(out, report)
    lines = [f"# Cover benchmark: {listing_name}", "", f"{report['covers']}; {report['classes']} classes; "
             f"{report['protocol']}; specialist `{report['specialist']}`.", "",
             "| path | top-1 | sd | top-3 | n |", "|---|---:|---:|---:|---:|"]
    for path in PATHS:
        if path in report:
            r = report[path]
            lines.append(f"| {path} | {r['top1']:.3f} | {r['top1_sd']:.3f} | {r['top3']:.3f} | {r['n']} |")
    rd = report["reading"]
    lines += ["", f"Reading ({rd['engine']}): title-word recall {rd['title_word_recall']:.3f} "
              f"({rd['title_words_found']}/{rd['title_words']}), "
              + (f"{rd['pictures_per_s']:.2f} pictures/s." if rd["pictures_per_s"] else "all pictures cached."),
              "", f"![confusion matrix]({png.name})", ""]
    md = out.with_suffix(".md")
    with atomic_write(md, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    return {"json": out, "markdown": md, "png": png}


def confusion_png(pred: np.ndarray, truth: np.ndarray, tax: Taxonomy, path: str | Path, title: str) -> None:
    """Row-normalised confusion matrix with the counts written in the cells and a colour bar."""
    from matplotlib.figure import Figure  # not pyplot: its figures and backend are the caller's

    from etalage.files import atomic_write

    n = tax.n_classes
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (truth, pred), 1)
    share = m / np.maximum(1, m.sum(1, keepdims=True))
    side = max(5.0, 0.32 * n + 3)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's covers")
    if n <= 40:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7 if n > 15 else 9,
                            color="white" if share[i, j] > 0.5 else "black")
    names = [tax.level3_names[i][:22] for i in range(n)]
    ax.set_xticks(range(n), names, rotation=90, fontsize=7 if n > 15 else 9)
    ax.set_yticks(range(n), names, fontsize=7 if n > 15 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
