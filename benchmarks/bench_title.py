"""How well the ``title`` specialist classifies products from their titles alone, on the real fashion
catalogue's titles (../shared/data/real-products/fashion-dev/listing.csv: 29,943 products, 86 classes):
a stratified 80/20 split of the dev part (the held-out part is not on this machine).

Rows: the TF-IDF specialist (word 1-2 + character 2-5 n-grams -> logistic regression) for each ``--C``;
with ``--embedding``, the best of them with the bundled all-MiniLM-L6-v2 sentence embedding of the
title added (``encoder=default``); and the best with 30% of the test titles blanked (those products get
no answer from the title alone and count as wrong, as where a catalogue's listings lack titles and the
core's pictures must answer; no refit). The specialist is used through its plugin API
(``ProductReading`` with a title), as the pipeline calls it. Each run adds its rows under its data size
to ``benchmarks/results/title_fashion_dev.json``. Times are given only as ratios to the best TF-IDF row
of the same run (the machine is shared).

    python benchmarks/bench_title.py --C 10                                # all products (~4 CPU minutes)
    python benchmarks/bench_title.py --limit 10000 --C 3,10,30 --embedding  # the choices, on 10k products
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT.parent / "shared" / "data" / "real-products" / "fashion-dev"
RESULTS = ROOT / "benchmarks" / "results" / "title_fashion_dev.json"
BLANKED = 0.3


def load_titles(listing: Path) -> tuple[list[str], np.ndarray]:
    """Each product's title (its first row) and category id."""
    titles, categories, seen = [], [], set()
    with listing.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["_id"] in seen:
                continue
            seen.add(row["_id"])
            titles.append(row["title"].strip())
            categories.append(int(row["category_id"]))
    return titles, np.array(categories, np.int64)


def readings(titles: list[str]):
    from etalage.specialists.readings import make_reading

    return [make_reading("", i, [], title=t) for i, t in enumerate(titles)]


def run_row(options: dict, train: tuple, test_titles: list[str], taxonomy) -> tuple[np.ndarray, float]:
    """Fit the specialist with ``options`` on ``train``; its top-5 classes of ``test_titles`` and the
    seconds fit and prediction took."""
    from etalage.specialists.title import TitleSpecialist

    spec = TitleSpecialist(**options)
    spec.name = "title"
    t0 = time.perf_counter()
    spec.fit(readings(train[0]), train[1], taxonomy)
    top, _ = spec.predict(readings(test_titles)).topk(5)
    return top, time.perf_counter() - t0


def scores(options: dict, top: np.ndarray, truth: np.ndarray, answered: np.ndarray) -> dict:
    """Top-1 and top-5 over every test product (one without an answer is wrong), top-1 over the answered."""
    hit1 = answered & (top[:, 0] == truth)
    hit5 = answered & (top == truth[:, None]).any(1)
    return {"options": options, "top1": float(hit1.mean()), "top5": float(hit5.mean()),
            "top1_answered": float(hit1[answered].mean()), "answered": int(answered.sum())}


def measure(titles, labels, taxonomy, index, c_values, embedding: bool) -> dict:
    """The rows of one run over the products ``index``."""
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(index, test_size=0.2, stratify=labels[index], random_state=0)
    train = ([titles[i] for i in tr], labels[tr])
    test_titles, truth = [titles[i] for i in te], labels[te]
    everyone = np.ones(len(te), bool)
    rows, seconds, tops = {}, {}, {}
    for c in c_values:
        key = f"tfidf_C{c:g}"
        tops[key], seconds[key] = run_row({"C": c}, train, test_titles, taxonomy)
        rows[key] = scores({"C": c}, tops[key], truth, everyone)
        print(key, rows[key], flush=True)
    best = max(rows, key=lambda k: rows[k]["top1"])
    best_c = rows[best]["options"]["C"]
    if embedding:
        top, seconds["tfidf_minilm"] = run_row({"C": best_c, "encoder": "default"}, train, test_titles, taxonomy)
        rows["tfidf_minilm"] = scores({"C": best_c, "encoder": "default"}, top, truth, everyone)
        print("tfidf_minilm", rows["tfidf_minilm"], flush=True)
    titled = np.random.default_rng(0).random(len(te)) >= BLANKED
    rows["blanked_30pct"] = scores({"C": best_c, "blanked": BLANKED}, tops[best], truth, titled)
    print("blanked_30pct", rows["blanked_30pct"], flush=True)
    for key, s in seconds.items():
        rows[key]["time_ratio_to_best_tfidf"] = s / seconds[best]
    return {"products": int(len(index)), "classes": int(len(np.unique(labels[index]))), "train": int(len(tr)),
            "test": int(len(te)), "best_tfidf": best, "rows": rows}


def main() -> int:
    from sklearn.model_selection import train_test_split
    from threadpoolctl import threadpool_limits

    from etalage.catalog.taxonomy import Taxonomy
    from etalage.files import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(FASHION), help="a folder with listing.csv and category_names.csv")
    ap.add_argument("--limit", type=int, help="use only this many products (a stratified subsample)")
    ap.add_argument("--C", default="10", help="comma-separated C values of the TF-IDF rows")
    ap.add_argument("--embedding", action="store_true", help="add the sentence-embedding row (~100 titles/s "
                                                             "on one busy core)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS, OpenMP and torch threads of this process")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    data = Path(args.data)
    taxonomy = Taxonomy.load(data / "category_names.csv")
    titles, categories = load_titles(data / "listing.csv")
    labels = taxonomy.indices_of(categories)
    index = np.arange(len(titles))
    if args.limit and args.limit < len(titles):
        index, _ = train_test_split(index, train_size=args.limit, stratify=labels, random_state=1)
    import torch

    torch.set_num_threads(args.threads)  # this script's own process: a shared machine is faster on one thread
    with threadpool_limits(args.threads):
        run = measure(titles, labels, taxonomy, index, [float(v) for v in args.C.split(",")], args.embedding)
    run.update(command="python benchmarks/bench_title.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{k}"
        for k, v in vars(args).items() if v not in (None, False) and k not in ("data", "out")),
        date=datetime.date.today().isoformat())
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update(data=f"{os.path.relpath(data / 'listing.csv', ROOT)}: each product's title (its first row); stratified 80/20 split "
                       f"(random_state 0) of all products or of a stratified subsample (--limit, random_state 1)",
                  machine=f"{platform.machine()}, 2 CPU cores shared with other jobs (load 4-8)",
                  note=f"blanked_30pct: {BLANKED:.0%} of the test titles blanked (seed 0) with the best TF-IDF model "
                       f"(no refit); top1/top5 count them wrong, top1_answered is over the others")
    result.setdefault("runs", {})[str(len(index))] = run
    write_json_atomic(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
