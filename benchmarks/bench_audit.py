"""The audit with known errors, on the real fashion photos (the dev split's training part only; the held-out
parts are never read).

1. Flip 3% of the training part's labels (seeded: half to another class of the same level-2 parent, half to
   any other class), pack the flipped listing, train K fold runs of the default core on it (each
   time-boxed), audit: precision and recall of the flagged products against the flipped ones, and the
   precision of the top-N list (N = number flipped), beside ranking by the given label's probability alone.
2. Clean then retrain: the core trained on the noisy labels, and on the noisy labels less the suspects,
   scored on the dev split's clean test part.
3. ``--clean``: the same fold runs on the unflipped training part and its audit, whose top suspects a
   person judges in ``audit.html`` (a real catalogue has real errors).

Writes ``benchmarks/results/audit_fashion.json``; the audits under ``../exp/audit``. Run nothing heavy beside
it; ``--lock`` is held throughout.

    python benchmarks/bench_audit.py --minutes 6 --folds 4 --retrain-minutes 10 --clean
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "real-products" / "fashion-dev"
WORK = ROOT.parent / "exp" / "audit"
FLIP_SHARE = 0.03


def flip_listing(listing: Path, taxonomy, out: Path, seed: int = 0) -> dict[int, tuple[int, int]]:
    """Write ``listing`` with ``FLIP_SHARE`` of its products' categories changed; returns product id ->
    (true category, given category) of the flipped ones."""
    from etalage.bench.core import read_listing_rows
    from etalage.files import atomic_write

    header, rows = read_listing_rows(listing)
    col = {h: i for i, h in enumerate(header)}
    ids = sorted({int(r[col["_id"]]) for r in rows})
    cat = {int(r[col["_id"]]): int(r[col["category_id"]]) for r in rows}
    rng = np.random.default_rng(seed)
    chosen = rng.choice(ids, int(round(FLIP_SHARE * len(ids))), replace=False)
    flips = {}
    for n, pid in enumerate(sorted(chosen)):
        c = taxonomy.index_of(cat[pid])
        same = np.flatnonzero((taxonomy.level2_of == taxonomy.level2_of[c]) & (np.arange(taxonomy.n_classes) != c))
        pool = same if (n % 2 == 0 and len(same)) else np.flatnonzero(np.arange(taxonomy.n_classes) != c)
        flips[int(pid)] = (cat[pid], int(taxonomy.category_ids[int(rng.choice(pool))]))
    with atomic_write(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            pid = int(r[col["_id"]])
            if pid in flips:
                r = list(r)
                r[col["category_id"]] = str(flips[pid][1])
            w.writerow(r)
    return flips


def _folds_and_audit(train: Path, work: Path, minutes: float, folds: int) -> dict:
    from etalage.compute import Compute
    from etalage.core.config import TrainConfig
    from etalage.core.train import train_folds
    from etalage.pipeline.audit import AuditOptions, audit

    train_folds(TrainConfig(train=str(train), out=str(work / "folds"), max_minutes=minutes, folds=folds, fold=0),
                progress=False)
    return audit(work / "folds", train, work / "audit", AuditOptions(limit=50), Compute(progress=False))


def _suspect_ids(audit_dir: Path) -> list[int]:
    with (audit_dir / "suspects.csv").open() as fh:
        return [int(r["product_id"]) for r in csv.DictReader(fh)]


def _given_prob_ranking(audit_dir: Path, train: Path) -> list[int]:
    """Product ids by the given label's out-of-fold probability, lowest first (the plain baseline)."""
    from etalage.catalog import Catalog
    from etalage.core.confident import outside_bound, prob_of
    from etalage.core.ensemble import CoreModel
    from etalage.core.ranking import CoreRanking

    model = CoreModel.open(audit_dir.parent / "folds")
    pos, run_of = model.holdout()
    parts = [CoreRanking.load(audit_dir / "core" / model.name / f"run{i}") for i in range(len(model.runs))]
    ranking = CoreRanking.concat(parts).take(np.argsort(np.concatenate([pos[run_of == i]
                                                                        for i in range(len(model.runs))]),
                                                        kind="stable"))
    tax = model.runs[0].taxonomy()
    catalog = Catalog.open(train)
    labels = tax.indices_of(catalog.category_ids[pos])
    given = prob_of(ranking.topk_class, ranking.topk_prob, labels, outside_bound(ranking.topk_prob))
    return catalog.product_ids[pos][np.argsort(given, kind="stable")].tolist()


def _retrain(listing: Path, drop: set[int], work: Path, name: str, minutes: float, files: dict) -> float:
    """Top-1 on the clean test part of the core trained on ``listing`` less the products ``drop``."""
    from etalage.bench.core import read_listing_rows
    from etalage.catalog.pack import PackOptions, pack_listing
    from etalage.catalog.submission import score_submission
    from etalage.compute import Compute
    from etalage.core.config import TrainConfig
    from etalage.core.rundir import RunDir
    from etalage.core.train import train
    from etalage.files import atomic_write
    from etalage.pipeline.submit import submit

    header, rows = read_listing_rows(listing)
    kept = work / f"{name}_listing.csv"
    with atomic_write(kept, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(r for r in rows if int(r[header.index("_id")]) not in drop)
    dump = work / name / "train.bson"
    if not dump.exists():
        pack_listing(kept, SHARED / "images", dump, PackOptions(taxonomy=files["taxonomy"], size=180), progress=False)
    run = RunDir(work / name / "run")
    if not run.finished:
        train(TrainConfig(train=str(dump), out=str(run.path), max_minutes=minutes), progress=False)
    sub = work / name / "submission.csv"
    submit(files["test"], sub, run=run.path, compute=Compute(progress=False))
    return score_submission(sub, files["labels"]).accuracy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget of each fold run")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--retrain-minutes", type=float, default=10.0)
    ap.add_argument("--clean", action="store_true", help="also audit the unflipped training part")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lock", default="/tmp/etalage-cpu.lock")
    args = ap.parse_args(argv)
    from bench_core_recipe import prepare

    from etalage.catalog import Taxonomy
    from etalage.catalog.pack import PackOptions, pack_listing
    from etalage.files import write_json_atomic

    files = prepare("fashion")
    tax = Taxonomy.load(files["taxonomy"])
    listing = Path(files["train"]).parent / "train_listing.csv"
    work = WORK / "flipped"
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"set": "fashion-dev split, training part", "flip_share": FLIP_SHARE, "folds": args.folds,
                    "minutes_per_fold": args.minutes}
    with open(args.lock, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        flips = flip_listing(listing, tax, work / "flipped_listing.csv", args.seed)
        dump = work / "train.bson"
        if not dump.exists():
            pack_listing(work / "flipped_listing.csv", SHARED / "images", dump,
                         PackOptions(taxonomy=files["taxonomy"], size=180), progress=False)
        report = _folds_and_audit(dump, work, args.minutes, args.folds)
        suspects = _suspect_ids(work / "audit")
        flipped = set(flips)
        hit = [s in flipped for s in suspects]
        n = len(flipped)
        plain = _given_prob_ranking(work / "audit", dump)[:n]
        result.update(products=report["scored"], flipped=n, flagged=len(suspects),
                      precision=float(np.mean(hit)) if hit else 0.0, recall=sum(hit) / n,
                      top_n_precision=float(np.mean(hit[:n])) if hit else 0.0,
                      top_n_precision_given_probability=float(np.mean([p in flipped for p in plain])),
                      flips_same_level2_found=sum(1 for s in suspects if s in flipped and
                                                  tax.level2_of[tax.index_of(flips[s][0])] ==
                                                  tax.level2_of[tax.index_of(flips[s][1])]),
                      audit_seconds=report["seconds"])
        result["retrain"] = {"noisy": _retrain(work / "flipped_listing.csv", set(), work, "noisy",
                                               args.retrain_minutes, files),
                             "noisy_less_suspects": _retrain(work / "flipped_listing.csv", set(suspects), work,
                                                             "cleaned", args.retrain_minutes, files),
                             "minutes": args.retrain_minutes, "removed": len(suspects)}
        if args.clean:
            clean = WORK / "clean"
            clean.mkdir(parents=True, exist_ok=True)
            rep = _folds_and_audit(Path(files["train"]), clean, args.minutes, args.folds)
            result["clean"] = {"flagged": rep["flagged"], "scored": rep["scored"],
                               "page": str(clean / "audit" / "audit.html")}
    write_json_atomic(ROOT / "benchmarks" / "results" / "audit_fashion.json", result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
