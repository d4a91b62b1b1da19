"""What choosing the reranker by cross-validation costs: `FusionModel.fit_best` with 5-fold
cross-validation (2 kinds x 2 capacities, trees followed one by one, refit on all products) against
the single 20% split it replaces (2 kinds, early stopping), on the same tables, in one process.

Tables are synthetic with the real table's shape: ~12 candidate rows per product, 32 features, one
strong signal (the core), one that matters on a sixth of the products (a specialist), noise. Sizes:
the demo's (1,600 products) up to CV_MAX_PRODUCTS (50,000), where fit_best switches to the split.
Also reports each method's top-1 on 20,000 fresh products, so the cost comes with what it buys.

Usage: python benchmarks/bench_fusion_fit.py [--sizes 1600,10000,50000] [--out benchmarks/results/fusion_fit.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from etalage.files import write_json_atomic
from etalage.fusion import model as fusion_model
from etalage.fusion.model import FusionModel
from etalage.fusion.table import CandidateTable

ROWS_PER_PRODUCT, FEATURES = 12, 32


def make_table(products: int, seed: int) -> tuple[CandidateTable, np.ndarray, tuple[str, ...]]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, ROWS_PER_PRODUCT, products)
    owner = np.repeat(np.arange(products), ROWS_PER_PRODUCT)
    classes = np.tile(np.arange(ROWS_PER_PRODUCT), products)
    true = (classes == truth[owner]).astype(np.float32)
    covered = (rng.random(products) < 1 / 6)[owner]           # products a specialist looks at
    feats = {"core": true * 1.2 + rng.normal(0, 1, len(owner)),
             "specialist": np.where(covered, true * 2.0 + rng.normal(0, 1, len(owner)), np.nan)}
    for j in range(FEATURES - 2):
        feats[f"noise_{j}"] = rng.normal(0, 1, len(owner))
    feats = {k: np.asarray(v, np.float32) for k, v in feats.items()}
    return CandidateTable(owner, classes, feats), truth, tuple(feats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1600,10000,50000")
    ap.add_argument("--out", default="benchmarks/results/fusion_fit.json")
    args = ap.parse_args()
    fresh, fresh_truth, names = make_table(20_000, seed=99)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        table, truth, _ = make_table(n, seed=n)
        row = {"products": n, "rows": len(table.owner)}
        for method, limit in (("split", 0), ("cv", n)):
            fusion_model.CV_MAX_PRODUCTS = limit
            t0 = time.perf_counter()
            model, chosen = FusionModel.fit_best(table, truth, names, seed=0)
            row[f"{method}_s"] = time.perf_counter() - t0
            row[f"{method}_test_top1"] = float((model.predict(fresh, len(fresh_truth)) == fresh_truth).mean())
            row[f"{method}_trees"] = int(chosen["trees"])
        row["cv_over_split_time"] = row["cv_s"] / row["split_s"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = {"machine": platform.processor() or platform.machine(), "rows": rows}
    write_json_atomic(Path(args.out), out)


if __name__ == "__main__":
    main()
