"""OCR benchmark on rendered book covers: title-word recall and pictures/s on CPU.

Covers are drawn at 180x180 (JPEG quality 75, varied fonts, colours and layouts, seeded) from the
titles and authors of the BookCover30 listing (../shared/data/book30-listing-dev.csv); the real
cover pictures are not available offline. Recall counts the title words of >= 3 letters found
among the words read (case and accents folded). Compared in one run:

- baseline: the default `easyocr.Reader(...).readtext` loop, one picture at a time;
- etalage easyocr: the default (two passes, int8 networks on CPU), the same in float, one pass,
  and the previous default (one pass: CRAFT at 1x, crops of the 2x picture, float);
- etalage tesseract (fra+eng, 3x, sparse-text mode);
- easyocr + tesseract: the union of both readings.

Usage: python benchmarks/bench_ocr.py [--books 100] [--out benchmarks/results/ocr_cpu.json]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import re
import time
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image

LISTING = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "book30-listing-dev.csv"


def fold(text: str) -> list[str]:
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.findall(r"[a-z0-9]+", text)


def title_words(title: str) -> set[str]:
    return {w for w in fold(title) if len(w) >= 3 and w.isalpha()}


def render_books(listing: Path, n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    from etalage.synth import draw_cover

    with open(listing, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    pick = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    pictures, titles = [], []
    for i in pick:
        title, author = rows[i][3], rows[i][4]
        img = draw_cover(title, author, np.random.default_rng([seed, int(i)]))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=75)
        pictures.append(np.asarray(Image.open(buf).convert("RGB")))
        titles.append(title)
    return pictures, titles


def recall(readings: list[set[str]], titles: list[str]) -> float:
    found = total = 0
    for words, title in zip(readings, titles, strict=True):
        want = title_words(title)
        found += len(want & words)
        total += len(want)
    return found / max(1, total)


_POOL_ENGINE = {}


def _pool_init(options: dict) -> None:
    import torch

    from etalage.ocr import load_engine

    torch.set_num_threads(1)
    _POOL_ENGINE["engine"] = load_engine("easyocr", **options)


def _pool_read(pictures: list[np.ndarray]) -> list:
    return _POOL_ENGINE["engine"].read(pictures)


def read_in_processes(pictures: list[np.ndarray], processes: int, options: dict) -> tuple[list, float]:
    """What `etalage ocr --workers N` does: N readers of one thread each, batches of 8 pictures."""
    import multiprocessing as mp

    with mp.get_context("fork").Pool(processes, _pool_init, (options,)) as pool:
        pool.map(_pool_read, [pictures[:2]] * processes)  # load models and warm up in every process
        t0 = time.perf_counter()
        parts = pool.map(_pool_read, [pictures[i:i + 8] for i in range(0, len(pictures), 8)])
        dt = time.perf_counter() - t0
    return [boxes for part in parts for boxes in part], dt


def timed(fn, pictures):
    t0 = time.perf_counter()
    out = fn(pictures)
    return out, time.perf_counter() - t0


def main() -> None:
    import torch

    from etalage.ocr import load_engine
    from etalage.ocr.easyocr_engine import default_model_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--books", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--listing", default=str(LISTING))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ocr_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    pictures, titles = render_books(Path(args.listing), args.books, args.seed)
    res = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores", "books": len(pictures),
           "covers": "rendered 180x180 from title + author, JPEG q75 (no real cover pictures offline)", "methods": {}}

    import easyocr

    reader = easyocr.Reader(["en"], gpu=False, model_storage_directory=str(default_model_dir()),
                            download_enabled=False, recog_network="english_g2", verbose=False)
    base_read, t = timed(lambda ps: [reader.readtext(p) for p in ps], pictures)
    base_words = [{w for _, text, _ in r for w in fold(text)} for r in base_read]
    res["methods"]["baseline easyocr readtext loop"] = {"recall": recall(base_words, titles),
                                                        "pictures_per_s": len(pictures) / t}
    readings = {}
    configs = [("two passes, int8 (default)", {}),
               ("two passes, float", {"int8": ()}),
               ("one pass: detect 1.5x, recognise 2x, int8", {"passes": ((1.5, 2.0),)}),
               ("one pass: detect 1x, recognise 2x, float (previous default)",
                {"passes": ((1.0, 2.0),), "int8": (), "low_text": 0.4, "contrast_ths": 0.1})]
    for label, options in configs:
        engine = load_engine("easyocr", **options)
        engine.read(pictures[:4])  # warm-up
        out, t = timed(engine.read, pictures)
        words = [{w for b in boxes for w in fold(b.text)} for boxes in out]
        readings[label] = (words, t)
        res["methods"][f"etalage easyocr, {label}"] = {"recall": recall(words, titles),
                                                       "pictures_per_s": len(pictures) / t,
                                                       "options": {k: v for k, v in options.items()}}
    workers = os.cpu_count() or 1
    if workers > 1:
        out, t = read_in_processes(pictures, workers, {})
        words = [{w for b in boxes for w in fold(b.text)} for boxes in out]
        res["methods"][f"etalage easyocr, default, {workers} reader processes"] = {
            "recall": recall(words, titles), "pictures_per_s": len(pictures) / t}
    tess = load_engine("tesseract")
    out, t_tess = timed(tess.read, pictures)
    tess_words = [{w for b in boxes for w in fold(b.text)} for boxes in out]
    res["methods"]["etalage tesseract"] = {"recall": recall(tess_words, titles), "pictures_per_s": len(pictures) / t_tess}
    best = "two passes, int8 (default)"
    words, t_best = readings[best]
    union = [a | b for a, b in zip(words, tess_words, strict=True)]
    res["methods"][f"etalage {best} + tesseract"] = {"recall": recall(union, titles),
                                                     "pictures_per_s": len(pictures) / (t_best + t_tess)}
    base = res["methods"]["baseline easyocr readtext loop"]
    for m in res["methods"].values():
        m["recall_points_over_baseline"] = 100 * (m["recall"] - base["recall"])
        m["speed_ratio_over_baseline"] = m["pictures_per_s"] / base["pictures_per_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
