"""Core quality on the synthetic catalogue: which choices matter, at equal training steps.

Trains one run per variant on the same catalogue, split and number of steps, then scores product
top-1 on the synthetic test set (answer key test_labels.csv) overall and on the generic, book and
CD groups:

- gate:        learned sigmoid gate over pictures, ImageNet init, level-1/2 heads (the default)
- prob-mean:   average of per-picture probabilities (the floor of 2017)
- random-init: as gate, but random initial weights
- no-levels:   as gate, without the level-1/2 losses
- mean / max / attention (with --all): the other poolings

Usage: python benchmarks/bench_core_quality.py --device cuda --products 12000 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = {
    "gate": {},
    "prob-mean": {"picture_pooling": "prob-mean"},
    "random-init": {"weights": "none"},
    "no-levels": {"level1_weight": 0.0, "level2_weight": 0.0},
}
MORE = {"mean": {"picture_pooling": "mean"}, "max": {"picture_pooling": "max"}, "attention": {"picture_pooling": "attention"}}


def main() -> None:
    from etalage.catalog import Catalog, Taxonomy
    from etalage.catalog.bsonindex import build_index
    from etalage.catalog.submission import read_id_category_csv
    from etalage.core.predict import CorePredictor
    from etalage.core.train import TrainConfig, train
    from etalage.synth import SynthConfig, write_synthetic_catalogue

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--products", type=int, default=12000)
    ap.add_argument("--epochs", type=float, default=4)
    ap.add_argument("--noise", type=float, default=0.9, help="synthetic picture noise (harder than the demo)")
    ap.add_argument("--picture-size", type=int, default=180)
    ap.add_argument("--crop", type=int, default=160)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--all", action="store_true", help="also mean, max and attention pooling")
    ap.add_argument("--variants", help="comma-separated subset")
    ap.add_argument("--work", default="/tmp/etalage-bench-quality")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "core_quality.json"))
    args = ap.parse_args()
    work = Path(args.work)
    data = work / f"synth_{args.products}_{args.noise:g}"
    if not (data / "test.bson").exists():
        write_synthetic_catalogue(data, SynthConfig(products=args.products, seed=21, noise=args.noise), progress=True)
    for name in ("train.bson", "test.bson"):
        build_index(data / name)
    tax = Taxonomy.load(data / "category_names.csv")
    ids, cats = read_id_category_csv(data / "test_labels.csv")
    truth = tax.indices_of(cats)
    group = np.array(["generic"] * len(truth), dtype=object)
    group[tax.level1_of[truth] == tax.level1_index("LIBRAIRIE")] = "books"
    group[tax.level1_of[truth] == tax.level1_index("MUSIQUE")] = "music"
    test = Catalog.open(data / "test.bson")
    assert np.array_equal(test.product_ids, ids)
    variants = dict(VARIANTS, **(MORE if args.all else {}))
    if args.variants:
        variants = {k: v for k, v in {**VARIANTS, **MORE}.items() if k in args.variants.split(",")}
    results = {}
    for name, overrides in variants.items():
        run = work / f"run_{name}"
        shutil.rmtree(run, ignore_errors=True)
        cfg = TrainConfig(train=str(data / "train.bson"), out=str(run), device=args.device, epochs=args.epochs,
                          picture_size=args.picture_size, crop=args.crop, batch_size=args.batch, val_fraction=0.1,
                          seed=1, **overrides)
        t0 = time.perf_counter()
        res = train(cfg, progress=False)
        t_train = time.perf_counter() - t0
        pred = CorePredictor(run, device=args.device).predict_catalog(test, work / f"pred_{name}", progress=False)
        shutil.rmtree(work / f"pred_{name}")
        top1 = pred.top1()
        ok = top1 == truth
        results[name] = {"test_top1": float(ok.mean()),
                         **{f"test_top1_{g}": float(ok[group == g].mean()) for g in ("generic", "books", "music")},
                         "val_top1": res.metrics["val_top1"], "steps": res.metrics["step"], "train_s": t_train,
                         "config": overrides}
        print(name, json.dumps(results[name]), flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else \
        f"{platform.machine()} CPU, {os.cpu_count()} cores"
    out = {"device": device, "products": args.products, "test_products": len(truth), "epochs": args.epochs,
           "picture_size": args.picture_size, "crop": args.crop, "batch": args.batch, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
