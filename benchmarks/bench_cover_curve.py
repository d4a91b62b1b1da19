"""How many training covers the cover specialists need: top-1 of each path against the number of
training covers, on the dev parts of the real covers.

Per listing, a fixed random 1,000 covers are the test set; the specialist is fitted on the first N of
the remaining covers (same order for every N). Pictures letterboxed to 180x180 on white, read by the
default reading through the cover benchmark's OCR cache (``etalage bench covers --out DIR/NAME.json``
leaves it in ``DIR/NAME/``; without it the covers are read here, about 6 pictures/s on 2 cores). This
is the question the demo raises: its catalogue gives a specialist 150-300 covers, the real one
thousands.

    python benchmarks/bench_cover_curve.py --work /tmp/covers --out benchmarks/results/cover_curve.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from etalage.bench.covers import (
    cover_pictures,
    genre_taxonomy,
    has_titles,
    read_covers,
    readings_of,
    score_split,
)
from etalage.catalog.listings import read_listing
from etalage.files import write_json_atomic
from etalage.ocr import load_engine
from etalage.ocr.cache import OcrCache

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "real-covers"
LISTINGS = (("books-dev", "LIBRAIRIE", "books"), ("albums-dev", "MUSIQUE", "music"))


def curve(name: str, group: str, specialist: str, work: Path, sizes: list[int], test_size: int, seed: int) -> dict:
    covers = read_listing(SHARED / name / "listing.csv")
    pictures = cover_pictures(covers, SHARED / name / "images", 180, seed, False)
    folder = work / name.replace("-", "_")
    folder.mkdir(parents=True, exist_ok=True)
    with OcrCache(folder / "ocr-cache.sqlite") as cache:
        boxes, _ = read_covers(pictures, load_engine(None), cache, progress=True)
    readings = readings_of(boxes, pictures)
    tax = genre_taxonomy(covers, group)
    order = np.random.default_rng(seed).permutation(len(covers))
    test = order[:test_size].tolist()
    out = {}
    for n in sizes:
        train = order[test_size:test_size + n].tolist()
        t0 = time.perf_counter()
        scores, _, weights = score_split(specialist, tax, train, test, covers, readings, has_titles(covers), None)
        out[str(len(train))] = {"paths": scores, "combination": weights, "seconds": time.perf_counter() - t0}
        print(name, len(train), {k: round(v["top1"], 3) for k, v in scores.items()}, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/covers", help="folder of the cover benchmark's OCR caches")
    ap.add_argument("--sizes", default="150,300,600,1200", help="training covers per point")
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cover_curve.json"))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    report = {"protocol": f"fixed random {args.test_size} test covers per listing, first N of the rest to train",
              "pictures": "real, letterboxed to 180x180 on white; default reading",
              **{name: curve(name, group, spec, Path(args.work), sizes, args.test_size, args.seed)
                 for name, group, spec in LISTINGS}}
    write_json_atomic(args.out, report)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
