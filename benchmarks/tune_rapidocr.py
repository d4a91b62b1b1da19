"""Tune the RapidOCR member of the default reading (scale, det_side, word splitting) on real book covers.

The protocol of bench_reading.py (the same fixed random sample of ../shared/data/real-covers/books-dev,
letterboxed to 180x180; title-word recall), made cheap: each (scale, det_side) is read once, into
PP-OCR's lines with their characters' boxes, and every word splitting is scored on those lines; the
default reading (RapidOCR, then EasyOCR one pass adding missed words, then the lexicon) is rebuilt from
one EasyOCR reading, as the ensemble engine merges them. Times are of the PP-OCR readings alone, read
interleaved batch by batch (compare them with each other, not across runs).

    python benchmarks/tune_rapidocr.py --covers 300 --grid 1.5x400,2x400,1.5x480 --old
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reading import RAPID, SHARED, RapidOcr144  # noqa: E402

SPLITS = {"lines (split_words off)": None, "min_gap 0.5 (the engine's)": 0.5, "min_gap 0.75": 0.75,
          "min_gap 1.0": 1.0, "min_gap 1.5": 1.5, "recognised spaces only": float("inf")}


def real_books(n: int, seed: int):
    from etalage.bench.covers import cover_pictures
    from etalage.catalog.listings import read_listing

    books = read_listing(SHARED / "real-covers" / "books-dev" / "listing.csv")
    pick = np.random.default_rng(seed).choice(len(books), min(n, len(books)), replace=False)
    chosen = [books[i] for i in sorted(pick)]
    return cover_pictures(chosen, SHARED / "real-covers" / "books-dev" / "images", 180), [c.title for c in chosen]


def read_lines(engines: dict, pictures, batch: int = 8):
    """PP-OCR's lines on each picture (upscaled as each engine does) and each engine's seconds, read
    interleaved batch by batch so the machine's drift hits them all alike."""
    import cv2

    from etalage.ocr.rapidocr_engine import quiet_library_log

    lines = {name: [] for name in engines}
    seconds = dict.fromkeys(engines, 0.0)
    with quiet_library_log():
        for start in range(0, len(pictures), batch):
            for name, engine in engines.items():
                t0 = time.perf_counter()
                for pic in pictures[start:start + batch]:
                    if engine.scale != 1:
                        pic = cv2.resize(pic, None, fx=engine.scale, fy=engine.scale, interpolation=cv2.INTER_CUBIC)
                    lines[name].append(engine._lines(pic))
                seconds[name] += time.perf_counter() - t0
            print(f"\r{min(start + batch, len(pictures))}/{len(pictures)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return lines, seconds


def boxes_of(lines, picture, scale: float, min_gap: float | None):
    from etalage.ocr.base import TextBox
    from etalage.ocr.rapidocr_engine import split_line

    boxes = []
    for line in lines:
        if min_gap is not None and line.char_quads:
            boxes.extend(split_line(line.text, line.char_quads, line.char_scores, 2.5, min_gap))
        elif line.text.strip():
            boxes.append(TextBox(line.text.strip(), float(np.clip(line.score, 0, 1)), line.quad, None))
    h, w = picture.shape[:2]
    for b in boxes:  # as OcrEngine.read: back to the picture's pixels, corners on the picture
        q = b.quad / scale
        b.quad = np.stack([np.clip(q[:, 0], 0, w), np.clip(q[:, 1], 0, h)], 1).astype(np.float32)
    return boxes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--covers", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", default="1.5x400", help="comma-separated SCALExDET_SIDE readings of PP-OCRv6")
    p.add_argument("--old", action="store_true", help="also RapidOCR 1.4.4 (PP-OCRv4) at the current settings")
    p.add_argument("--out", default=None, help="JSON file for the table")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    from etalage.bench.covers import title_word_recall
    from etalage.ocr import load_engine
    from etalage.ocr.base import merge_readings
    from etalage.ocr.lexicon import with_corrections

    pictures, titles = real_books(args.covers, args.seed)
    easy = load_engine("easyocr", scale=2.0, detect_scale=1.0).read(pictures)
    readings = {}
    if args.old and RapidOcr144.register():
        readings["PP-OCRv4 (1.4.4) 1.5x det 400"] = (load_engine("rapidocr-1.4.4", **RAPID), RAPID["scale"])
    for cell in args.grid.split(","):
        scale, side = cell.split("x")
        readings[f"PP-OCRv6 {scale}x det {side}"] = (load_engine("rapidocr", scale=float(scale), det_side=int(side)),
                                                     float(scale))
    for engine, _scale in readings.values():
        engine.read(pictures[:2])  # load the networks before timing
    lines, seconds = read_lines({name: engine for name, (engine, _scale) in readings.items()}, pictures)
    rows = []
    for name, (_engine, scale) in readings.items():
        for split, min_gap in SPLITS.items():
            alone = [boxes_of(ls, pic, scale, min_gap) for ls, pic in zip(lines[name], pictures, strict=True)]
            default = [with_corrections(merge_readings([a, e])) for a, e in zip(alone, easy, strict=True)]
            rows.append({"reading": name, "split": split, "alone": title_word_recall(alone, titles)[0],
                         "alone + lexicon": title_word_recall([with_corrections(a) for a in alone], titles)[0],
                         "default reading": title_word_recall(default, titles)[0],
                         "pictures_per_s": len(pictures) / seconds[name]})
            r = rows[-1]
            print(f"{name:<32}{split:<28}{r['alone']:>8.3f}{r['alone + lexicon']:>8.3f}{r['default reading']:>8.3f}"
                  f"{r['pictures_per_s']:>8.2f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"covers": len(pictures), "seed": args.seed, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
