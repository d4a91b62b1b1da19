"""Books specialist quality, cross-validated on the BookCover30 dev listing (3,780 books, 30 genres).

In the same folds (stratified, seeded):
- baseline: word TF-IDF (1-2 grams) + logistic regression on the clean title and author;
- etalage title: the books specialist (character TF-IDF + MiniLM embedding + logistic regression)
  on the same clean text;
- etalage ocr: the same specialist on what OCR reads from covers rendered at 180x180 (JPEG q75)
  from title and author (the real pictures are not available offline).

Goals: etalage title >= baseline + 8 points; etalage ocr within 6 points of etalage title.

Usage: python bench/bench_bookcover_cv.py [--folds 5] [--ocr-engine easyocr] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

LISTING = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "book30-listing-dev.csv"


def main() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from etalage.bench.covers import (
        cover_pictures,
        genre_taxonomy,
        ocr_readings,
        read_listing,
        text_readings,
    )
    from etalage.ocr import load_engine
    from etalage.ocr.cache import OcrCache
    from etalage.specialists import create_specialist

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listing", default=str(LISTING))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--ocr-engine", default="easyocr")
    ap.add_argument("--limit", type=int, help="use a stratified subset of this many books")
    ap.add_argument("--box-weight", type=float, help="specialist option (default: the specialist's)")
    ap.add_argument("--C", type=float, help="specialist option (default: the specialist's)")
    ap.add_argument("--work", default="/tmp/etalage-bench-bookcover")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bookcover_cv.json"))
    args = ap.parse_args()

    books = read_listing(args.listing)
    rng = np.random.default_rng(0)
    if args.limit and args.limit < len(books):
        by_class: dict[int, list[int]] = {}
        for i, b in enumerate(books):
            by_class.setdefault(b.class_id, []).append(i)
        per = args.limit // len(by_class)
        keep = sorted(j for idx in by_class.values() for j in rng.choice(idx, min(per, len(idx)), replace=False))
        books = [books[i] for i in keep]
    tax = genre_taxonomy(books)
    y = tax.indices_of(np.array([b.class_id for b in books]))
    texts = [f"{b.title} {b.author}" for b in books]
    t0 = time.perf_counter()
    pictures = cover_pictures(books, None, seed=0)
    t_render = time.perf_counter() - t0
    Path(args.work).mkdir(parents=True, exist_ok=True)
    engine = load_engine(args.ocr_engine)
    t0 = time.perf_counter()
    with OcrCache(Path(args.work) / "ocr-cache.sqlite") as cache:
        ocr = ocr_readings(pictures, engine, cache, progress=True)
    t_ocr = time.perf_counter() - t0
    clean = text_readings(texts)
    scores = {"baseline tfidf+lr (clean title)": [], "etalage title": [], "etalage ocr": []}
    folds = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    for k, (tr, te) in enumerate(folds.split(texts, y)):
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        base = LogisticRegression(C=10, max_iter=2000).fit(vec.fit_transform([texts[i] for i in tr]), y[tr])
        scores["baseline tfidf+lr (clean title)"].append(
            float((base.predict(vec.transform([texts[i] for i in te])) == y[te]).mean()))
        for name, readings in (("etalage title", clean), ("etalage ocr", ocr)):
            options = {k: v for k, v in (("box_weight", args.box_weight), ("C", args.C)) if v is not None}
            spec = create_specialist("books", **options)
            spec.fit([readings[i] for i in tr], y[tr], tax)
            top = spec.predict([readings[i] for i in te]).topk(1)[0][:, 0]
            scores[name].append(float((top == y[te]).mean()))
        print(f"fold {k + 1}: " + ", ".join(f"{n} {v[-1]:.3f}" for n, v in scores.items()), flush=True)
    res = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores", "books": len(books),
           "folds": args.folds, "ocr_engine": engine.cache_key, "specialist_options": {"box_weight": args.box_weight,
                                                                                        "C": args.C}, "render_s": t_render, "ocr_s": t_ocr,
           "covers": "rendered 180x180 from title and author, JPEG q75",
           "top1": {n: {"mean": float(np.mean(v)), "std": float(np.std(v)), "folds": v} for n, v in scores.items()}}
    b, t, o = (res["top1"][n]["mean"] for n in scores)
    res["title_minus_baseline_points"] = 100 * (t - b)
    res["ocr_minus_title_points"] = 100 * (o - t)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
