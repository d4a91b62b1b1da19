"""How a product's pictures are pooled, measured where products have several: the synthetic catalogue
(1-4 drawn pictures per product, as Cdiscount's; the real photo sets have one picture per product, where
every pooling is the same network). Each pooling trains the default core for the same wall-clock budget on
the same catalogue, then scores product top-1 on its test dump, split by the number of pictures.

The 2017 winner's ``mosaic`` (a product's pictures tiled 2x2 into one picture: +1.3 points over averaging
in 2017) against etalage's default learned ``gate``, ``attention`` and the plain ``prob-mean``.

    python benchmarks/bench_pooling.py --products 4000 --minutes 4 gate mosaic prob-mean

Writes ``benchmarks/results/pooling_synthetic.json`` (a finished pooling is not rerun). Run nothing else heavy
beside it (``--lock`` is held while a pooling trains: the budget is wall-clock time).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def by_pictures(submission: Path, labels: Path, test: Path) -> dict:
    """Top-1 per number of pictures of the product (1, 2, 3, 4)."""
    from etalage.catalog import Catalog
    from etalage.catalog.submission import align_by_id, read_id_category_csv

    cat = Catalog.open(test)
    pred, _ = align_by_id(*read_id_category_csv(submission), cat.product_ids)
    truth, _ = align_by_id(*read_id_category_csv(labels), cat.product_ids)
    n_pics = cat.index.products["n_pictures"]
    return {int(k): {"products": int((n_pics == k).sum()), "top1": float((pred == truth)[n_pics == k].mean())}
            for k in sorted(set(n_pics.tolist())) if k > 0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("poolings", nargs="*", default=["gate", "mosaic", "prob-mean"])
    ap.add_argument("--products", type=int, default=4000)
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT.parent / "exp" / "pooling"))
    ap.add_argument("--lock", default="/tmp/etalage-cpu.lock")
    args = ap.parse_args(argv)
    from etalage.catalog.submission import score_submission
    from etalage.compute import Compute
    from etalage.core.config import TrainConfig
    from etalage.core.rundir import RunDir
    from etalage.core.train import train
    from etalage.files import write_json_atomic
    from etalage.pipeline.submit import submit

    work = Path(args.work)
    cat = work / f"synth{args.products}"
    if not (cat / "test.bson").exists():
        from etalage.synth import SynthConfig, write_synthetic_catalogue

        write_synthetic_catalogue(cat, SynthConfig(products=args.products, seed=args.seed), progress=False)
    out = RESULTS / "pooling_synthetic.json"
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update(machine=f"{platform.machine()}, 2 cores", data=f"synthetic (etalage synth --products "
                  f"{args.products} --seed {args.seed})", minutes=args.minutes)
    rows = result.setdefault("poolings", {})
    for pooling in args.poolings:
        if pooling in rows:
            continue
        run = RunDir(work / f"run_{pooling}")
        with open(args.lock, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not run.finished:
                train(TrainConfig(train=str(cat / "train.bson"), out=str(run.path), max_minutes=args.minutes,
                                  picture_pooling=pooling, seed=args.seed), progress=False)
        sub = work / f"sub_{pooling}.csv"
        submit(cat / "test.bson", sub, run=run.path, compute=Compute(progress=False))
        metrics = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines() if line]
        last = metrics[-1] if metrics else {"epoch": 1, "epoch_fraction": 0.0}
        epochs = last["epoch"] - 1 + last.get("epoch_fraction", 1.0)
        rows[pooling] = {"top1": score_submission(sub, cat / "test_labels.csv").accuracy,
                         "by_pictures": by_pictures(sub, cat / "test_labels.csv", cat / "test.bson"),
                         "epochs": float(epochs)}
        print(pooling, json.dumps(rows[pooling]), flush=True)
        write_json_atomic(out, result)
    best = max(rows, key=lambda k: rows[k]["top1"])
    result["best"] = best
    if "gate" in rows and "mosaic" in rows:
        result["mosaic_over_gate"] = rows["mosaic"]["top1"] - rows["gate"]["top1"]
    if "prob-mean" in rows and "mosaic" in rows:
        result["mosaic_over_prob_mean"] = rows["mosaic"]["top1"] - rows["prob-mean"]["top1"]
    write_json_atomic(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "poolings"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
