"""How far from training a validation part held out by groups of near-duplicates is (``--val-groups``), on the
dev splits of real photos: what the threshold of ``etalage train --val-groups`` was chosen on.

Photos taken in one session look alike, and a part held out at random shares sessions with training: on
GroceryStore's training photos a product's nearest training neighbour (cosine of pretrained features) is of
its class 95% of the time, against 58% for its official val photos, taken in other sessions. For each
threshold the training products are grouped (``near_duplicate_groups``: connected components of cosine >=
threshold within a class) and a part held out by whole groups (``grouped_validation_split``, seeds 0-4); the
report gives the groups (how many, the largest, the share of products alone), the part (products, classes) and
how well the nearest training neighbour predicts its class (1-NN top-1), against a random part and, for
grocery, the official val part. A threshold is right when its part is as far from training as the official val.
On fashion (catalogue photos, split by picture), the random part is already what the test part is: the closer
its grouped part stays to it, the less the grouping costs there.

    python benchmarks/bench_val_groups.py --set grocery
    python benchmarks/bench_val_groups.py --set fashion --thresholds 0.8,0.85,0.9

Features: the training run's own probe pass (EfficientNet-Lite0, ImageNet, letterboxed to 180 px, averaged over
a product's pictures), kept in ``../exp/val-groups-SET/``. Results: ``benchmarks/results/val_groups_SET.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def nearest_neighbour_top1(features: np.ndarray, labels: np.ndarray, held: np.ndarray) -> float:
    """Share of held-out products whose most similar remaining product (cosine) is of their class."""
    u = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    best = np.concatenate([(u[held][a:a + 1024] @ u[~held].T).argmax(1) for a in range(0, int(held.sum()), 1024)])
    return float((labels[~held][best] == labels[held]).mean())


def features_of(data: Path, work: Path) -> np.ndarray:
    from etalage.bench.core import cached_features
    from etalage.catalog import Catalog

    return cached_features(Catalog.open(data), "efficientnet_lite0", work, progress=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True, choices=("fashion", "grocery"))
    ap.add_argument("--thresholds", default="0.75,0.8,0.85,0.9,0.95")
    ap.add_argument("--fraction", type=float, default=0.1, help="share held out (0.1: a steadier figure than 0.05)")
    args = ap.parse_args(argv)
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_core_recipe import prepare

    from etalage.bench.core import answer_key
    from etalage.catalog import Catalog
    from etalage.catalog.split import grouped_validation_split, near_duplicate_groups, validation_split
    from etalage.catalog.taxonomy import taxonomy_beside

    files = prepare(args.set)
    work = ROOT.parent / "exp" / f"val-groups-{args.set}"
    work.mkdir(parents=True, exist_ok=True)
    tax = taxonomy_beside(files["train"], None, required=True)
    x = features_of(files["train"], work)
    y = answer_key(Catalog.open(files["train"]), None, tax)
    out = {"set": args.set, "train_products": len(y), "fraction": args.fraction, "seeds": 5,
           "random": float(np.mean([nearest_neighbour_top1(x, y, validation_split(y, args.fraction, s))
                                    for s in range(5)]))}
    if args.set == "grocery":  # the official val photos against every training photo
        vx, vy = features_of(files["test"], work), answer_key(Catalog.open(files["test"]), files["labels"], tax)
        both, held = np.concatenate([x, vx]), np.r_[np.zeros(len(y), bool), np.ones(len(vy), bool)]
        out["official_val"] = nearest_neighbour_top1(both, np.r_[y, vy], held)
    out["thresholds"] = {}
    for th in (float(t) for t in args.thresholds.split(",")):
        t0 = time.perf_counter()
        groups = near_duplicate_groups(x, th, y)
        seconds = time.perf_counter() - t0
        sizes = np.bincount(groups)
        parts = [grouped_validation_split(y, groups, args.fraction, s) for s in range(5)]
        row = {"groups": len(sizes), "largest": int(sizes.max()), "alone": float((sizes[groups] == 1).mean()),
               "grouping_seconds": seconds, "held_out": float(np.mean([p.sum() for p in parts])),
               "classes_held_out": float(np.mean([len(np.unique(y[p])) for p in parts])),
               "nn_top1": float(np.mean([nearest_neighbour_top1(x, y, p) for p in parts]))}
        out["thresholds"][f"{th:g}"] = row
        print(f"{th:g}: {row['groups']} groups (largest {row['largest']}, {100 * row['alone']:.0f}% alone), "
              f"{row['held_out']:.0f} held out of {row['classes_held_out']:.0f} classes, 1-NN top-1 "
              f"{row['nn_top1']:.3f} (random part {out['random']:.3f}"
              + (f", official val {out['official_val']:.3f})" if "official_val" in out else ")"), flush=True)
    from etalage.files import write_json_atomic

    write_json_atomic(RESULTS / f"val_groups_{args.set}.json", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
