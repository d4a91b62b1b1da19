"""The looking part of the cover specialists: probe the ImageNet backbone or fine-tune it?

On one stratified 80/20 split of a real-cover listing (pictures letterboxed to 180x180), compares
(a) a linear probe: efficientnet_lite0's pooled ImageNet features (each picture averaged with its
mirror) + a strongly regularised logistic regression (what the books and music specialists do), and
(b) fine-tuning the same network end to end with etalage's own core training (the covers written as
a Cdiscount-shaped BSON dump, ``etalage.core.train``), for a few epochs on this machine. Top-1 on the held-out 20% and the seconds each took.

    python benchmarks/bench_cover_cnn.py --listing ../shared/data/real-covers/books-dev/listing.csv \\
        --images ../shared/data/real-covers/books-dev/images --epochs 3
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_dump(path: Path, pictures: list[np.ndarray], labels: np.ndarray, first_id: int, with_labels: bool) -> None:
    import bson
    from PIL import Image

    with path.open("wb") as fh:
        for i, (pic, label) in enumerate(zip(pictures, labels, strict=True)):
            buf = io.BytesIO()
            Image.fromarray(pic).save(buf, format="JPEG", quality=90)
            doc = {"_id": first_id + i, "imgs": [{"picture": buf.getvalue()}]}
            if with_labels:
                doc["category_id"] = int(label)
            fh.write(bson.encode(doc))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listing", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON results (default: print only)")
    args = p.parse_args(argv)
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from etalage.bench.covers import cover_pictures, genre_taxonomy, has_titles
    from etalage.catalog import Catalog
    from etalage.catalog.listings import read_listing
    from etalage.core.config import TrainConfig
    from etalage.core.predict import CorePredictor
    from etalage.core.train import train
    from etalage.specialists.encoders import PictureEncoder

    covers = read_listing(args.listing)
    tax = genre_taxonomy(covers, "LIBRAIRIE" if has_titles(covers) else "MUSIQUE")
    y_ids = np.array([c.class_id for c in covers])
    pictures = cover_pictures(covers, args.images, 180)
    tr, te = train_test_split(np.arange(len(covers)), test_size=0.2, stratify=y_ids, random_state=args.seed)
    results = {"listing": args.listing, "train": len(tr), "test": len(te)}

    t0 = time.perf_counter()
    enc = PictureEncoder()
    feats = enc.encode([[p] for p in pictures], flip=True)
    scaler = StandardScaler().fit(feats[tr])
    clf = LogisticRegression(C=0.001, max_iter=3000).fit(scaler.transform(feats[tr]), y_ids[tr])
    results["probe"] = {"top1": float((clf.predict(scaler.transform(feats[te])) == y_ids[te]).mean()),
                        "seconds": time.perf_counter() - t0}
    print(f"probe: top-1 {results['probe']['top1']:.3f} in {results['probe']['seconds']:.0f}s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tax.save(tmp / "category_names.csv")
        write_dump(tmp / "train.bson", [pictures[i] for i in tr], y_ids[tr], 1, True)
        write_dump(tmp / "test.bson", [pictures[i] for i in te], y_ids[te], 10**6, False)
        t0 = time.perf_counter()
        cfg = TrainConfig(train=str(tmp / "train.bson"), out=str(tmp / "run"), picture_size=180, crop=160,
                          batch_size=args.batch, epochs=args.epochs, lr=args.lr, val_fraction=0.05, seed=args.seed,
                          level1_weight=0.0, level2_weight=0.0)
        res = train(cfg, progress=True)
        ranking = CorePredictor(tmp / "run").predict_catalog(Catalog.open(tmp / "test.bson"), tmp / "pred",
                                                             progress=False)
        pred = tax.category_ids[ranking.top1()]
        results["fine_tune"] = {"top1": float((pred == y_ids[te]).mean()), "seconds": time.perf_counter() - t0,
                                "epochs": args.epochs, "val_top1": res.metrics.get("val_top1")}
    print(f"fine-tune ({args.epochs:g} epochs): top-1 {results['fine_tune']['top1']:.3f} in "
          f"{results['fine_tune']['seconds']:.0f}s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
