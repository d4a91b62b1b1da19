"""Which reading to use by default: title-word recall and speed of OCR candidates on real covers.

Sources: N real book covers of ../shared/data/real-covers/books-dev (letterboxed to 180x180 on white,
the Cdiscount shape; a fixed random sample), the 9 book and CD covers of Cdiscount's own
train_example.bson (title words transcribed in benchmarks/data/cdiscount_sample_covers.json), and covers
rendered from BookCover30 titles (the regression check of the earlier benchmark). Candidates are timed
interleaved, batch by batch on the same pictures, so the machine's drift hits them all alike; the
baseline is plain EasyOCR ``readtext``. Recall = title words of 3 or more letters (accents folded)
found among the words read.

    python benchmarks/bench_reading.py --covers 300 --out benchmarks/results/reading.json
    python benchmarks/bench_reading.py --candidates versions --out benchmarks/results/reading_rapidocr3.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

RAPID = {"scale": 1.5, "det_side": 400}
EASY_ONE_PASS = {"scale": 2.0, "detect_scale": 1.0}
CANDIDATES = {  # name -> (engine, options, lexicon); engine None: load_engine() (the default reading)
    "default reading: rapidocr + easyocr one pass + lexicon": (None, {}, False),
    "easyocr (two int8 passes, the previous default)": ("easyocr", {}, False),
    "easyocr + lexicon": ("easyocr", {}, True),
    "easyocr one pass": ("easyocr", EASY_ONE_PASS, False),
    "rapidocr as shipped (det 736, lines)": ("rapidocr", {"split_words": False, "upside_down": True}, False),
    "rapidocr 1.5x, det 400, words split": ("rapidocr", RAPID, False),
    "rapidocr + lexicon": ("rapidocr", RAPID, True),
    "tesseract (fra+eng)": ("tesseract", {}, False),
    "tesseract + lexicon": ("tesseract", {}, True),
    "rapidocr + easyocr (two passes) + lexicon": ("ensemble", {"members": [["rapidocr", RAPID], ["easyocr", {}]]},
                                                  True),
    "rapidocr + easyocr + tesseract + lexicon": ("ensemble", {"members": [
        ["rapidocr", RAPID], ["easyocr", {}], ["tesseract", {}]]}, True),
}
OLD_RAPID = "rapidocr-1.4.4"  # RapidOCR 1.4.4 with PP-OCRv4, etalage's model up to 0.1 (RapidOcr144)
VERSIONS = {  # RapidOCR 3.10 (PP-OCRv6 small, the engine now) against 1.4.4 (PP-OCRv4), the same settings
    "default reading with rapidocr 1.4.4 (PP-OCRv4)": ("ensemble", {"members": [
        [OLD_RAPID, RAPID], ["easyocr", EASY_ONE_PASS]]}, True),
    "rapidocr 1.4.4 (PP-OCRv4) 1.5x, det 400, words split": (OLD_RAPID, RAPID, False),
}
CANDIDATES.update(VERSIONS)
VERSIONS_RUN = ";".join(["default reading: rapidocr + easyocr one pass + lexicon", *VERSIONS,
                         "rapidocr 1.5x, det 400, words split"])


class RapidOcr144:
    """The ``rapidocr`` engine as etalage ran it up to 0.1 (RapidOCR 1.4.4, PP-OCRv4 inside the
    ``rapidocr-onnxruntime`` wheel, installed with ``--no-deps``; pictures passed as RGB), kept to
    compare the models: its lines go through the same word splitting as PP-OCRv6's."""

    @staticmethod
    def register() -> bool:
        """Make ``load_engine("rapidocr-1.4.4")`` (and ensemble members of that name) available, where
        ``rapidocr_onnxruntime`` is installed."""
        import importlib.util

        if importlib.util.find_spec("rapidocr_onnxruntime") is None:
            return False
        from etalage.ocr.base import register_engine
        from etalage.ocr.rapidocr_engine import Line, RapidOcrEngine

        class Engine(RapidOcrEngine):
            name = "rapidocr-1.4.4"

            def _load(self, det_side, rec_batch):
                from rapidocr_onnxruntime import RapidOCR

                return RapidOCR(det_limit_side_len=det_side, det_limit_type="min", det_box_thresh=self.box_thresh,
                                det_unclip_ratio=self.unclip_ratio, text_score=self.text_score,
                                print_verbose=False, rec_batch_num=rec_batch), "1.4.4"

            @property
            def version(self):
                return f"rapidocr-{self._lib_version}+ppocrv4"

            def _lines(self, pic):
                result, _ = self._ocr(pic, use_cls=self.upside_down, return_word_box=self.split_words,
                                      text_score=self.text_score, box_thresh=self.box_thresh,
                                      unclip_ratio=self.unclip_ratio)
                lines = []
                for line in result or []:
                    out = Line(np.asarray(line[0], np.float32), str(line[1]), float(line[2]))
                    if self.split_words and len(line) >= 6 and line[3]:
                        chars = [(q, s) for q, c, s in zip(line[3], line[4], line[5], strict=True) if c != " "]
                        out.text = "".join(line[4])
                        out.char_quads, out.char_scores = [q for q, _ in chars], [s for _, s in chars]
                    lines.append(out)
                return lines

        register_engine(Engine.name)(Engine)
        return True


class ReadText:
    """The baseline: plain ``easyocr.Reader(["en"]).readtext`` on each picture (offline weights)."""

    name = "readtext"

    def __init__(self):
        import easyocr

        from etalage.ocr.easyocr_engine import default_model_dir

        self.reader = easyocr.Reader(["en"], gpu=False, model_storage_directory=str(default_model_dir()),
                                     download_enabled=False, recog_network="english_g2", verbose=False)

    def read(self, pictures):
        from etalage.ocr.boxes import TextBox

        return [[TextBox(t, float(c), np.asarray(q, np.float32), None) for q, t, c in self.reader.readtext(p)]
                for p in pictures]


def sources(n_books: int, n_rendered: int, seed: int) -> dict[str, tuple[list[np.ndarray], list[str]]]:
    from etalage.bench.covers import cover_pictures
    from etalage.catalog import Catalog
    from etalage.catalog.listings import read_listing

    out = {}
    books = read_listing(SHARED / "real-covers" / "books-dev" / "listing.csv")
    pick = np.random.default_rng(seed).choice(len(books), min(n_books, len(books)), replace=False)
    chosen = [books[i] for i in sorted(pick)]
    out["real books (books-dev)"] = (cover_pictures(chosen, SHARED / "real-covers" / "books-dev" / "images", 180),
                                     [c.title for c in chosen])
    truth = json.loads((ROOT / "benchmarks" / "data" / "cdiscount_sample_covers.json").read_text())
    cat = Catalog.open(SHARED / "cdiscount" / "train_example.bson")
    from etalage.catalog.pictures import decode_picture

    keys = [k for k in truth if not k.startswith("_")]
    pics = [decode_picture(cat.get(int(k.split("/")[0])).pictures[int(k.split("/")[1])]) for k in keys]
    out["Cdiscount sample covers"] = (pics, [truth[k]["text"] for k in keys])
    rows = list(csv.reader((SHARED / "book30-listing-dev.csv").open(encoding="utf-8")))
    pick = np.random.default_rng(seed + 1).choice(len(rows), min(n_rendered, len(rows)), replace=False)
    rendered = read_listing_rows([rows[i] for i in sorted(pick)])
    out["rendered covers (BookCover30 titles)"] = (cover_pictures(rendered, None, seed=seed),
                                                   [c.title for c in rendered])
    return out


def read_listing_rows(rows):
    from etalage.catalog.listings import Cover

    return [Cover(r[0], r[1], r[3], r[4], int(r[5]), r[6]) for r in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--covers", type=int, default=300, help="real book covers to read")
    p.add_argument("--rendered", type=int, default=100, help="rendered covers to read")
    p.add_argument("--candidates", default=";".join(c for c in CANDIDATES if c not in VERSIONS),
                   help=f"semicolon-separated names (see CANDIDATES); 'versions': {VERSIONS_RUN}")
    p.add_argument("--batch", type=int, default=8, help="pictures per interleaved step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reading.json"))
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    from etalage.bench.covers import title_word_recall
    from etalage.ocr import load_engine

    names = [c for c in (VERSIONS_RUN if args.candidates == "versions" else args.candidates).split(";") if c]
    if any(OLD_RAPID in json.dumps(CANDIDATES[n]) for n in names) and not RapidOcr144.register():
        p.error("the rapidocr 1.4.4 candidates need rapidocr_onnxruntime 1.4.4 (pip install --no-deps "
                "rapidocr-onnxruntime==1.4.4)")
    data = sources(args.covers, args.rendered, args.seed)
    engines = {"readtext (baseline)": ReadText()}
    for name in names:
        engine, options, lexicon = CANDIDATES[name]
        engines[name] = load_engine(engine, lexicon=lexicon, **options)
    warm = next(iter(data.values()))[0][:2]
    for e in engines.values():  # load networks and calibrate before timing
        e.read(warm)
    results = {name: {} for name in engines}
    for source, (pictures, titles) in data.items():
        boxes = {name: [] for name in engines}
        seconds = dict.fromkeys(engines, 0.0)
        for start in range(0, len(pictures), args.batch):
            part = pictures[start:start + args.batch]
            for name, e in engines.items():
                t0 = time.perf_counter()
                boxes[name].extend(e.read(part))
                seconds[name] += time.perf_counter() - t0
            print(f"\r{source}: {min(start + args.batch, len(pictures))}/{len(pictures)}", end="", file=sys.stderr,
                  flush=True)
        print(file=sys.stderr)
        for name in engines:
            recall, found, total = title_word_recall(boxes[name], titles)
            results[name][source] = {"recall": recall, "found": found, "words": total,
                                     "pictures_per_s": len(pictures) / seconds[name], "pictures": len(pictures)}
    base = results["readtext (baseline)"]
    first = next(iter(data))
    print(f"{'reading':<44}" + "".join(f"{s[:26]:>28}" for s in data) + f"{'pictures/s':>12}{'vs readtext':>12}")
    for name, r in results.items():
        speed = r[first]["pictures_per_s"]
        print(f"{name:<44}" + "".join(f"{r[s]['recall']:>28.3f}" for s in data) +
              f"{speed:>12.2f}{speed / base[first]['pictures_per_s']:>11.2f}x")
    report = {"sources": {s: len(v[0]) for s, v in data.items()}, "seed": args.seed,
              "engines": {n: getattr(e, "cache_key", n) for n, e in engines.items()}, "results": results,
              "note": "recall = title words of >= 3 letters (accents folded) found among the words read; "
                      "speeds measured interleaved in one process on this machine",
              "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs), "
                         f"Python {platform.python_version()}",
              "command": "python benchmarks/bench_reading.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
